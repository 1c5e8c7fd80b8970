// The image path's 3×3 convolutions with bf16 operands through oneDNN directly (kernels.h:
// conv3x3), on CPUs that compute bf16 natively (AMX, AVX512-BF16).
//
// Why not LibTorch's op on bf16 tensors, which calls the same library (Debian's LibTorch links
// libdnnl.so.2)? Measured with bench/bench_dnnl.cpp (docs/speed.md): LibTorch casts every operand
// and reorders around every call, and its bf16 autocast made a step slower than fp32; oneDNN
// called directly runs its AMX kernels at 4-11× the fp32 speed. Each call here reorders its
// fp32 NCHW operands into the bf16 layouts oneDNN chooses, runs one primitive into fp32, and
// reorders back: fp32 in and out (weights, gradients and everything else stay fp32).
#include "noprop/kernels.h"

#ifdef NOPROP_WITH_DNNL
#include <oneapi/dnnl/dnnl.hpp>

#include <array>
#include <map>
#include <memory>
#include <mutex>
#endif

namespace noprop::kernels {

#ifdef NOPROP_WITH_DNNL
namespace {
using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

const dnnl::engine& engine() {
  static const dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

memory::dims dims_of(const torch::Tensor& t) { return memory::dims(t.sizes().begin(), t.sizes().end()); }

// The descriptors of one convolution: x N×C×H×W, w K×C×3×3, padding 1, stride 1. In bf16, the
// operands (x, w, the output's gradient) are bf16; results and gradients are computed into fp32.
struct Descs {
  memory::desc src, wei, bias, dst, dsrc, ddst, dwei;
  memory::dims strides{1, 1}, pad{1, 1};
  Descs(torch::IntArrayRef x, const torch::Tensor& w, bool bf16) {
    const dt in = bf16 ? dt::bf16 : dt::f32;
    const memory::dims y{x[0], w.size(0), x[2], x[3]};
    src = {memory::dims(x.begin(), x.end()), in, tag::any};
    wei = {dims_of(w), in, tag::any};
    bias = {{w.size(0)}, dt::f32, tag::x};
    dst = {y, dt::f32, tag::any};
    dsrc = {memory::dims(x.begin(), x.end()), dt::f32, tag::any};
    ddst = {y, in, tag::any};
    dwei = {dims_of(w), dt::f32, tag::any};
  }
};

// A oneDNN memory over a contiguous fp32 tensor in its plain layout (NCHW, OIHW or x).
memory plain(const torch::Tensor& t) {
  const tag layout = t.dim() == 4 ? tag::abcd : tag::a;
  return memory({dims_of(t), dt::f32, layout}, engine(), t.data_ptr());
}

// `user` in layout `want`: itself when they agree, else a reordered copy.
memory as(memory user, const memory::desc& want, dnnl::stream& s) {
  if (user.get_desc() == want) return user;
  memory m(want, engine());
  dnnl::reorder(user, m).execute(s, user, m);
  return m;
}

// Runs `prim` writing `out` (in `out_desc`'s layout) into a new fp32 tensor shaped `shape`.
torch::Tensor run(const dnnl::primitive& prim, std::unordered_map<int, memory> args, int out_arg,
                  const memory::desc& out_desc, torch::IntArrayRef shape, dnnl::stream& s) {
  auto result = torch::empty(shape);
  memory user = plain(result);
  const bool direct = out_desc == user.get_desc();
  memory out = direct ? user : memory(out_desc, engine());
  args[out_arg] = out;
  prim.execute(s, args);
  if (!direct) dnnl::reorder(out, user).execute(s, out, user);
  return result;
}

// The three primitives of one shape, made once: making a descriptor costs about as much as
// running a small convolution (measured: the backward pass took twice as long when it rebuilt them).
struct Primitives {
  dnnl::convolution_forward::primitive_desc fwd_pd;
  dnnl::convolution_backward_data::primitive_desc bwd_data_pd;
  dnnl::convolution_backward_weights::primitive_desc bwd_weights_pd;
  dnnl::convolution_forward fwd;
  dnnl::convolution_backward_data bwd_data;
  dnnl::convolution_backward_weights bwd_weights;
  explicit Primitives(const Descs& d)
      : fwd_pd({dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, d.src, d.wei, d.bias, d.dst,
                d.strides, d.pad, d.pad},
               engine()),
        bwd_data_pd({dnnl::algorithm::convolution_direct, d.dsrc, d.wei, d.ddst, d.strides, d.pad, d.pad}, engine(),
                    fwd_pd),
        bwd_weights_pd({dnnl::algorithm::convolution_direct, d.src, d.dwei, d.bias, d.ddst, d.strides, d.pad, d.pad},
                       engine(), fwd_pd),
        fwd(fwd_pd),
        bwd_data(bwd_data_pd),
        bwd_weights(bwd_weights_pd) {}
};

// x_shape: N×C×H×W.
const Primitives& primitives(torch::IntArrayRef x_shape, const torch::Tensor& w, bool bf16) {
  static std::mutex mutex;
  static std::map<std::array<int64_t, 6>, std::unique_ptr<Primitives>> cache;
  const std::array<int64_t, 6> key{x_shape[0], x_shape[1], x_shape[2], x_shape[3], w.size(0), bf16};
  std::lock_guard<std::mutex> lock(mutex);
  auto& p = cache[key];
  if (!p) p = std::make_unique<Primitives>(Descs(x_shape, w, bf16));
  return *p;
}

struct Conv3x3 : torch::autograd::Function<Conv3x3> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x_in, const torch::Tensor& w_in,
                               const torch::Tensor& b_in, bool bf16) {
    auto x = x_in.contiguous(), w = w_in.contiguous(), b = b_in.contiguous();
    const auto& p = primitives(x.sizes(), w, bf16);
    dnnl::stream s(engine());
    // x in the primitive's layout, kept for the weights' gradient (half of x's size in bf16).
    auto x_in_layout = torch::empty({int64_t(p.fwd_pd.src_desc().get_size())}, torch::kUInt8);
    memory src(p.fwd_pd.src_desc(), engine(), x_in_layout.data_ptr());
    dnnl::reorder(plain(x), src).execute(s, {{DNNL_ARG_FROM, plain(x)}, {DNNL_ARG_TO, src}});
    ctx->save_for_backward({x_in_layout, w});
    ctx->saved_data["shape"] = x.sizes();
    ctx->saved_data["bf16"] = bf16;
    ctx->saved_data["x_grad"] = x_in.requires_grad();
    auto y = run(
        p.fwd,
        {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, as(plain(w), p.fwd_pd.weights_desc(), s)}, {DNNL_ARG_BIAS, plain(b)}},
        DNNL_ARG_DST, p.fwd_pd.dst_desc(), {x.size(0), w.size(0), x.size(2), x.size(3)}, s);
    s.wait();
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &x_in_layout = saved[0], &w = saved[1];
    const auto shape = ctx->saved_data["shape"].toIntVector();
    const auto gy = grads[0].contiguous();
    const auto& p = primitives(shape, w, ctx->saved_data["bf16"].toBool());
    dnnl::stream s(engine());
    const auto gy_desc = p.bwd_weights_pd.diff_dst_desc();
    memory gy_user = plain(gy), gy_in = as(gy_user, gy_desc, s);
    torch::Tensor gx;
    if (ctx->saved_data["x_grad"].toBool()) {
      const auto& pd = p.bwd_data_pd;
      gx = run(p.bwd_data,
               {{DNNL_ARG_DIFF_DST, pd.diff_dst_desc() == gy_desc ? gy_in : as(gy_user, pd.diff_dst_desc(), s)},
                {DNNL_ARG_WEIGHTS, as(plain(w), pd.weights_desc(), s)}},
               DNNL_ARG_DIFF_SRC, pd.diff_src_desc(), shape, s);
    }
    auto gb = torch::empty({w.size(0)});
    auto gw = run(p.bwd_weights,
                  {{DNNL_ARG_SRC,
                    as(memory(p.fwd_pd.src_desc(), engine(), x_in_layout.data_ptr()), p.bwd_weights_pd.src_desc(), s)},
                   {DNNL_ARG_DIFF_DST, gy_in},
                   {DNNL_ARG_DIFF_BIAS, plain(gb)}},
                  DNNL_ARG_DIFF_WEIGHTS, p.bwd_weights_pd.diff_weights_desc(), w.sizes(), s);
    s.wait();
    return {gx, gw, gb, torch::Tensor()};
  }
};
}  // namespace

bool conv_supported(const torch::Tensor& x, const torch::Tensor& w) {
  return x.device().is_cpu() && x.scalar_type() == torch::kFloat && x.dim() == 4 && w.dim() == 4 && w.size(2) == 3 &&
         w.size(3) == 3 && w.scalar_type() == torch::kFloat;
}

bool conv_bf16_supported() { return dnnl::get_effective_cpu_isa() >= dnnl::cpu_isa::avx512_core_bf16; }
bool conv_bf16_fast() { return dnnl::get_effective_cpu_isa() >= dnnl::cpu_isa::avx512_core_amx; }

torch::Tensor conv3x3(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b, bool bf16) {
  // In fp32 LibTorch's call into oneDNN was as fast as ours; so was bf16 with a 1- or 3-channel
  // input (no AMX kernel for so few channels: 1.6 ms against fp32's 1.1 ms forward).
  if (!bf16 || !conv_supported(x, w) || x.size(1) < 16) return torch::conv2d(x, w, b, 1, 1);
  return Conv3x3::apply(x, w, b, true);
}
#else
bool conv_supported(const torch::Tensor&, const torch::Tensor&) { return false; }
bool conv_bf16_supported() { return false; }
bool conv_bf16_fast() { return false; }
torch::Tensor conv3x3(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b, bool) {
  return torch::conv2d(x, w, b, 1, 1);
}
#endif

}  // namespace noprop::kernels
