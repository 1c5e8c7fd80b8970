// noprop_bench_dnnl: the blocks' convolutions through oneDNN directly, against LibTorch's op, as JSON.
//
// Measures the levers for faster convolutions on the CPU (docs/speed.md, "Convolutions through
// oneDNN directly"): for each convolution of a block's image path (batch 128), the forward,
// backward-data and backward-weights times of
//   torch          LibTorch's at::convolution / at::convolution_backward on NCHW fp32;
//   torch-bf16     the same on bf16 copies of the operands (the casts timed);
//   f32-nchw       oneDNN fp32, plain layouts (no reorders);
//   f32-blocked    oneDNN fp32, its preferred blocked layouts, kept between calls (reorders not timed);
//   f32-winograd   the same with the Winograd algorithm, where oneDNN offers it;
//   bf16-blocked   bf16 activations and weights (fp32 weight gradients), blocked layouts;
//   f32-as-bf16    fp32 tensors with fpmath_mode bf16 (oneDNN may compute in bf16 internally).
// (kernels::conv3x3 in bf16 is bf16-blocked plus its reorders, as a whole in noprop_bench.)
// plus the reorders the blocked variants would add at the path's ends, the implementation oneDNN
// chose, and each variant's largest error against LibTorch's result (relative to its largest
// magnitude). The same libdnnl.so.2 as Debian's LibTorch, so the kernels are the ones it can reach.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <oneapi/dnnl/dnnl.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <iostream>
#include <optional>

#include "noprop/runtime.h"

namespace {
using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;
using Clock = std::chrono::steady_clock;

struct Shape {
  int64_t n, c, k, h, w;  // batch, in channels, out channels, height, width (3x3, pad 1, stride 1)
};

struct Variant {
  std::string name;
  dt act, wei;                // activation and weight data types
  tag layout;                 // tag::any: oneDNN chooses (blocked); tag::nchw: plain
  dnnl::algorithm algorithm;  // direct or Winograd
  dnnl::fpmath_mode fpmath;   // strict, or bf16 (implicit down-conversion)
};

double median_ms(const std::function<void()>& f, int reps) {
  f();  // warm-up: first-touch, JIT
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    auto t0 = Clock::now();
    f();
    t.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// The largest |a - b| over the largest |b|.
double rel_error(const torch::Tensor& a, const torch::Tensor& b) {
  return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item<double>();
}

// A tensor's data copied into (or out of) a oneDNN memory through a plain fp32 NCHW/OIHW layout.
memory from_torch(const torch::Tensor& t, const memory::desc& md, const dnnl::engine& eng, dnnl::stream& s, tag plain) {
  auto src = t.contiguous();
  memory user({md.dims(), dt::f32, plain}, eng, src.data_ptr());
  memory m(md, eng);
  dnnl::reorder(user, m).execute(s, user, m);
  s.wait();
  return m;
}
torch::Tensor to_torch(memory m, const dnnl::engine& eng, dnnl::stream& s, tag plain) {
  auto dims = m.get_desc().dims();
  auto t = torch::empty(std::vector<int64_t>(dims.begin(), dims.end()));
  memory user({dims, dt::f32, plain}, eng, t.data_ptr());
  dnnl::reorder(m, user).execute(s, m, user);
  s.wait();
  return t;
}

nlohmann::json bench_variant(const Shape& sh, const Variant& v, const torch::Tensor& x, const torch::Tensor& wt,
                             const torch::Tensor& b, const torch::Tensor& gy, const std::vector<torch::Tensor>& ref,
                             int reps) {
  dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream s(eng);
  const memory::dims src_d{sh.n, sh.c, sh.h, sh.w}, wei_d{sh.k, sh.c, 3, 3}, bias_d{sh.k},
      dst_d{sh.n, sh.k, sh.h, sh.w}, strides{1, 1}, pad{1, 1};
  const tag wl = v.layout == tag::nchw ? tag::oihw : tag::any;
  memory::desc src_md(src_d, v.act, v.layout), wei_md(wei_d, v.wei, wl), bias_md(bias_d, dt::f32, tag::x),
      dst_md(dst_d, v.act, v.layout), dwei_md(wei_d, dt::f32, wl);
  dnnl::primitive_attr attr;
  attr.set_fpmath_mode(v.fpmath);
  nlohmann::json out{{"variant", v.name}};
  try {
    dnnl::convolution_forward::primitive_desc fwd_pd(
        dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training, v.algorithm, src_md, wei_md, bias_md, dst_md,
                                        strides, pad, pad),
        attr, eng);
    dnnl::convolution_backward_data::primitive_desc bwd_d_pd(
        dnnl::convolution_backward_data::desc(v.algorithm, src_md, wei_md, dst_md, strides, pad, pad), attr, eng,
        fwd_pd);
    dnnl::convolution_backward_weights::primitive_desc bwd_w_pd(
        dnnl::convolution_backward_weights::desc(v.algorithm, src_md, dwei_md, bias_md, dst_md, strides, pad, pad),
        attr, eng, fwd_pd);
    const tag plain_act = tag::nchw, plain_wei = tag::oihw;
    auto src = from_torch(x, fwd_pd.src_desc(), eng, s, plain_act);
    auto wei = from_torch(wt, fwd_pd.weights_desc(), eng, s, plain_wei);
    auto bias = from_torch(b, fwd_pd.bias_desc(), eng, s, tag::x);
    memory dst(fwd_pd.dst_desc(), eng);
    auto ddst = from_torch(gy, bwd_d_pd.diff_dst_desc(), eng, s, plain_act);
    auto ddst_w = from_torch(gy, bwd_w_pd.diff_dst_desc(), eng, s, plain_act);
    auto src_w = from_torch(x, bwd_w_pd.src_desc(), eng, s, plain_act);
    auto wei_d = from_torch(wt, bwd_d_pd.weights_desc(), eng, s, plain_wei);
    memory dsrc(bwd_d_pd.diff_src_desc(), eng), dwei(bwd_w_pd.diff_weights_desc(), eng),
        dbias(bwd_w_pd.diff_bias_desc(), eng);
    dnnl::convolution_forward fwd(fwd_pd);
    dnnl::convolution_backward_data bwd_d(bwd_d_pd);
    dnnl::convolution_backward_weights bwd_w(bwd_w_pd);
    auto run = [&](auto& p, std::unordered_map<int, memory> args) {
      return [&p, args, &s] {
        p.execute(s, args);
        s.wait();
      };
    };
    out["forward_ms"] = median_ms(
        run(fwd, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_BIAS, bias}, {DNNL_ARG_DST, dst}}), reps);
    out["backward_data_ms"] =
        median_ms(run(bwd_d, {{DNNL_ARG_DIFF_DST, ddst}, {DNNL_ARG_WEIGHTS, wei_d}, {DNNL_ARG_DIFF_SRC, dsrc}}), reps);
    out["backward_weights_ms"] = median_ms(run(bwd_w, {{DNNL_ARG_SRC, src_w},
                                                       {DNNL_ARG_DIFF_DST, ddst_w},
                                                       {DNNL_ARG_DIFF_WEIGHTS, dwei},
                                                       {DNNL_ARG_DIFF_BIAS, dbias}}),
                                           reps);
    // What a path kept in these layouts would still pay: the image into the first layer's layout
    // and the last activation (and its gradient) back to plain fp32 for the linear layer.
    memory::desc plain_src(src_d, dt::f32, tag::nchw), plain_dst(dst_d, dt::f32, tag::nchw);
    memory user_src(plain_src, eng), user_dst(plain_dst, eng);
    dnnl::reorder in(user_src, src), back(dst, user_dst);
    out["reorder_in_ms"] = median_ms(run(in, {{DNNL_ARG_FROM, user_src}, {DNNL_ARG_TO, src}}), reps);
    out["reorder_out_ms"] = median_ms(run(back, {{DNNL_ARG_FROM, dst}, {DNNL_ARG_TO, user_dst}}), reps);
    out["implementation"] = {{"forward", fwd_pd.impl_info_str()},
                             {"backward_data", bwd_d_pd.impl_info_str()},
                             {"backward_weights", bwd_w_pd.impl_info_str()}};
    out["error"] = {{"forward", rel_error(to_torch(dst, eng, s, plain_act), ref[0])},
                    {"backward_data", rel_error(to_torch(dsrc, eng, s, plain_act), ref[1])},
                    {"backward_weights", rel_error(to_torch(dwei, eng, s, plain_wei), ref[2])}};
  } catch (const dnnl::error& e) {
    out["unsupported"] = e.what();
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  // noprop's allocator settings: without them every large output page-faults afresh, which made
  // LibTorch's first convolution look 7× slower than oneDNN's (an artefact of the allocation).
  noprop::init_process(argc, argv);
  CLI::App app{"noprop_bench_dnnl: a block's convolutions through oneDNN directly against LibTorch's, as JSON"};
  std::string architecture = "seed", dataset = "mnist";
  int64_t batch = 128;
  int threads = 0, reps = 20;
  app.add_option("--architecture", architecture, "seed (two convolutions) or paper (three)")
      ->check(CLI::IsMember({"seed", "paper"}));
  app.add_option("--dataset", dataset, "mnist (1x28x28) or cifar10 (3x32x32)")
      ->check(CLI::IsMember({"mnist", "cifar10"}));
  app.add_option("--batch", batch, "batch size")->check(CLI::Range(1, 4096));
  app.add_option("--threads", threads, "threads (0: all cores)")->check(CLI::Range(0, 1024));
  app.add_option("--reps", reps, "timed repetitions per measurement (median)")->check(CLI::Range(1, 10000));
  CLI11_PARSE(app, argc, argv);
  noprop::configure_threads(threads);
  torch::NoGradGuard no_grad;
  torch::manual_seed(0);

  const int64_t c0 = dataset == "mnist" ? 1 : 3, hw = dataset == "mnist" ? 28 : 32;
  std::vector<Shape> layers{{batch, c0, 32, hw, hw}, {batch, 32, 64, hw / 2, hw / 2}};
  if (architecture == "paper") layers.push_back({batch, 64, 128, hw / 2, hw / 2});
  const auto direct = dnnl::algorithm::convolution_direct;
  const auto strict = dnnl::fpmath_mode::strict;
  const std::vector<Variant> variants{
      {"f32-nchw", dt::f32, dt::f32, tag::nchw, direct, strict},
      {"f32-blocked", dt::f32, dt::f32, tag::any, direct, strict},
      {"f32-winograd", dt::f32, dt::f32, tag::any, dnnl::algorithm::convolution_winograd, strict},
      {"bf16-blocked", dt::bf16, dt::bf16, tag::any, direct, strict},
      {"f32-as-bf16", dt::f32, dt::f32, tag::any, direct, dnnl::fpmath_mode::bf16},
  };

  nlohmann::json result{{"architecture", architecture},
                        {"dataset", dataset},
                        {"batch", batch},
                        {"threads", torch::get_num_threads()},
                        {"layers", nlohmann::json::array()}};
  for (const auto& sh : layers) {
    auto x = torch::randn({sh.n, sh.c, sh.h, sh.w}).relu();  // post-ReLU inputs, as in the path
    auto w = torch::randn({sh.k, sh.c, 3, 3}) * std::sqrt(2.0 / (9.0 * sh.c));
    auto b = torch::randn({sh.k}) * 0.1;
    auto gy = torch::randn({sh.n, sh.k, sh.h, sh.w}) * 1e-3;
    const std::vector<int64_t> stride{1, 1}, pad{1, 1}, dil{1, 1}, no_out_pad{0, 0};
    auto conv = [&] { return at::convolution(x, w, b, stride, pad, dil, false, no_out_pad, 1); };
    auto backward = [&](std::array<bool, 3> mask) {
      return at::convolution_backward(gy, x, w, std::vector<int64_t>{sh.k}, stride, pad, dil, false, no_out_pad, 1,
                                      mask);
    };
    auto y = conv();
    auto [gx, gw, gb] = backward({true, true, true});
    nlohmann::json torch_j{{"variant", "torch"},
                           {"forward_ms", median_ms([&] { conv(); }, reps)},
                           {"backward_data_ms", median_ms(
                                                    [&] {
                                                      backward({true, false, false});
                                                    },
                                                    reps)},
                           {"backward_weights_ms", median_ms(
                                                       [&] {
                                                         backward({false, true, true});
                                                       },
                                                       reps)}};
    // LibTorch's own op on bf16 copies (fp32 in and out, the casts timed): what an autograd
    // function around at::convolution could do without linking oneDNN.
    const auto bf = torch::kBFloat16;
    auto xb = x.to(bf), wb = w.to(bf), bb = b.to(bf), gyb = gy.to(bf);
    auto yb = at::convolution(xb, wb, bb, stride, pad, dil, false, no_out_pad, 1);
    auto gb16 = at::convolution_backward(gyb, xb, wb, std::vector<int64_t>{sh.k}, stride, pad, dil, false, no_out_pad,
                                         1, {true, true, true});
    nlohmann::json torch_bf16{
        {"variant", "torch-bf16"},
        {"forward_ms",
         median_ms(
             [&] {
               at::convolution(x.to(bf), w.to(bf), b.to(bf), stride, pad, dil, false, no_out_pad, 1).to(torch::kFloat);
             },
             reps)},
        {"backward_data_ms", median_ms(
                                 [&] {
                                   std::get<0>(at::convolution_backward(gy.to(bf), xb, w.to(bf),
                                                                        std::vector<int64_t>{sh.k}, stride, pad, dil,
                                                                        false, no_out_pad, 1, {true, false, false}))
                                       .to(torch::kFloat);
                                 },
                                 reps)},
        {"backward_weights_ms", median_ms(
                                    [&] {
                                      std::get<1>(at::convolution_backward(gy.to(bf), xb, wb,
                                                                           std::vector<int64_t>{sh.k}, stride, pad, dil,
                                                                           false, no_out_pad, 1, {false, true, true}))
                                          .to(torch::kFloat);
                                    },
                                    reps)},
        {"error",
         {{"forward", rel_error(yb.to(torch::kFloat), y)},
          {"backward_data", rel_error(std::get<0>(gb16).to(torch::kFloat), gx)},
          {"backward_weights", rel_error(std::get<1>(gb16).to(torch::kFloat), gw)}}}};
    const double madds = 9.0 * sh.c * sh.k * sh.h * sh.w * sh.n;
    nlohmann::json layer{{"shape", {{"n", sh.n}, {"c", sh.c}, {"k", sh.k}, {"h", sh.h}, {"w", sh.w}}},
                         {"gflop_per_pass", 2 * madds / 1e9},
                         {"variants", {torch_j, torch_bf16}}};
    for (const auto& v : variants) layer["variants"].push_back(bench_variant(sh, v, x, w, b, gy, {y, gx, gw}, reps));
    result["layers"].push_back(layer);
  }
  std::cout << result.dump(1) << "\n";
}
