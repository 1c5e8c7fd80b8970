// The image path's 3×3 convolutions and its flattened-features layer through oneDNN directly
// (kernels.h: conv3x3, linear): with bf16 operands on CPUs that compute bf16 natively (AMX pays;
// AVX512-BF16 alone was slower than fp32), or in fp32 with oneDNN's Winograd kernels (AVX-512).
// On those paths every fp32 linear layer of the blocks runs on oneDNN's sgemm (SgemmLinear).
//
// Why not LibTorch's op, which calls the same library (Debian's LibTorch links libdnnl.so.2)?
// Measured with bench/bench_dnnl.cpp (docs/speed.md): LibTorch casts every operand and reorders
// around every call, and its bf16 autocast made a step slower than fp32; oneDNN called directly
// runs its AMX kernels at 4-11× the fp32 speed (the layer after the convolutions, 3136 or 6272 →
// 256, is fp32 otherwise). LibTorch never picks Winograd, 1.6-1.7× faster than its
// direct fp32 kernels on AVX-512. Each call here reorders its fp32 operands into the layouts
// oneDNN chooses (bf16 or fp32), runs one primitive into fp32, and reorders back: fp32 in and out
// (weights, gradients and everything else stay fp32). Activations may come and go in oneDNN's
// channel-blocked layout instead (kernels.h), which the fp32 primitives use themselves: then
// nothing is reordered between a convolution, its ReLU/pool/dropout tail and the next one.
#include "noprop/kernels.h"

#ifdef NOPROP_WITH_DNNL
#include <oneapi/dnnl/dnnl.hpp>

#include <map>
#include <tuple>
#include <vector>
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

// conv3x3: bf16 operands; conv3x3_fp32: fp32 operands, direct (the first convolution, see
// conv3x3); conv3x3_winograd: fp32 operands, Winograd F(4×4, 3×3) where oneDNN has it.
enum class Op { conv3x3, linear, conv3x3_fp32, conv3x3_winograd };

// The primitives of one operation and shape, made once: making a descriptor costs about as
// much as running a small convolution (the backward pass took twice as long when it rebuilt
// them). Operands (x, w, the output's gradient) in bf16 or fp32 (see Op), results and gradients
// into fp32, every layout oneDNN's choice; the bias stays fp32.
struct Primitives {
  dnnl::primitive_desc fwd_pd, bwd_data_pd, bwd_weights_pd;
  dnnl::primitive fwd, bwd_data, bwd_weights;

  // x: N×C×H×W and w: K×C×3×3 (padding 1, stride 1), or x: N×C and w: K×C.
  Primitives(Op op, const memory::dims& x, const memory::dims& w) {
    const bool conv = op != Op::linear;
    const dt in = op == Op::conv3x3_fp32 || op == Op::conv3x3_winograd ? dt::f32 : dt::bf16;
    memory::dims y{x[0], w[0]};
    if (conv) y.insert(y.end(), {x[2], x[3]});
    auto md = [](const memory::dims& d, dt type) { return memory::desc(d, type, tag::any); };
    const memory::desc src = md(x, in), wei = md(w, in), dst = md(y, dt::f32), dsrc = md(x, dt::f32), ddst = md(y, in),
                       dwei = md(w, dt::f32), bias({w[0]}, dt::f32, tag::x);
    const auto& eng = engine();
    if (conv) {
      const memory::dims strides{1, 1}, pad{1, 1};
      auto make = [&](dnnl::algorithm alg) {
        dnnl::convolution_forward::primitive_desc f(
            {dnnl::prop_kind::forward_training, alg, src, wei, bias, dst, strides, pad, pad}, eng);
        bwd_data_pd =
            dnnl::convolution_backward_data::primitive_desc({alg, dsrc, wei, ddst, strides, pad, pad}, eng, f);
        bwd_weights_pd =
            dnnl::convolution_backward_weights::primitive_desc({alg, src, dwei, bias, ddst, strides, pad, pad}, eng, f);
        fwd_pd = f;
      };
      if (op != Op::conv3x3_winograd) {
        make(dnnl::algorithm::convolution_direct);
      } else {
        try {
          make(dnnl::algorithm::convolution_winograd);
        } catch (const dnnl::error&) {  // no Winograd kernel for this shape or CPU: the direct one
          make(dnnl::algorithm::convolution_direct);
        }
      }
    } else {
      dnnl::inner_product_forward::primitive_desc f({dnnl::prop_kind::forward_training, src, wei, bias, dst}, eng);
      bwd_data_pd = dnnl::inner_product_backward_data::primitive_desc({dsrc, wei, ddst}, eng, f);
      bwd_weights_pd = dnnl::inner_product_backward_weights::primitive_desc({src, dwei, bias, ddst}, eng, f);
      fwd_pd = f;
    }
    fwd = dnnl::primitive(fwd_pd), bwd_data = dnnl::primitive(bwd_data_pd),
    bwd_weights = dnnl::primitive(bwd_weights_pd);
  }
};

const Primitives& primitives(Op op, torch::IntArrayRef x, torch::IntArrayRef w) {
  static std::mutex mutex;
  static std::map<std::tuple<Op, std::vector<int64_t>, std::vector<int64_t>>, std::unique_ptr<Primitives>> cache;
  const memory::dims xd(x.begin(), x.end()), wd(w.begin(), w.end());
  std::lock_guard<std::mutex> lock(mutex);
  auto& p = cache[{op, xd, wd}];
  if (!p) p = std::make_unique<Primitives>(op, xd, wd);
  return *p;
}

// A oneDNN memory over a contiguous fp32 tensor in its plain layout.
memory plain(const torch::Tensor& t) {
  static const tag layouts[] = {tag::undef, tag::a, tag::ab, tag::abc, tag::abcd};
  return memory({dims_of(t), dt::f32, layouts[t.dim()]}, engine(), t.data_ptr());
}

// A oneDNN memory over a contiguous fp32 tensor: blocked (kernels.h) as nChw16c, else plain.
memory user_memory(const torch::Tensor& t) {
  if (t.dim() != 5) return plain(t);
  return memory({{t.size(0), t.size(1) * kChannelBlock, t.size(2), t.size(3)}, dt::f32, tag::nChw16c}, engine(),
                t.data_ptr());
}

// `user` in layout `want`: itself when they agree, else a reordered copy.
memory as(memory user, const memory::desc& want, dnnl::stream& s) {
  if (user.get_desc() == want) return user;
  memory m(want, engine());
  dnnl::reorder(user, m).execute(s, user, m);
  return m;
}

// Runs `prim` writing `out` (in `out_desc`'s layout) into a new fp32 tensor shaped like it,
// plain or (4-D results) blocked.
torch::Tensor run(const dnnl::primitive& prim, std::unordered_map<int, memory> args, int out_arg,
                  const memory::desc& out_desc, dnnl::stream& s, bool blocked) {
  const auto dims = out_desc.dims();
  std::vector<int64_t> sizes(dims.begin(), dims.end());
  if (blocked) sizes = {sizes[0], sizes[1] / kChannelBlock, sizes[2], sizes[3], kChannelBlock};
  auto result = torch::empty(sizes);
  memory user = user_memory(result);
  const bool direct = out_desc == user.get_desc();
  memory out = direct ? user : memory(out_desc, engine());
  args[out_arg] = out;
  prim.execute(s, args);
  if (!direct) dnnl::reorder(out, user).execute(s, out, user);
  return result;
}

struct DnnlOp : torch::autograd::Function<DnnlOp> {
  // x: plain or blocked (then so is its gradient); blocked_out: the result blocked.
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x_in, const torch::Tensor& w_in,
                               const torch::Tensor& b_in, int64_t op, bool blocked_out) {
    auto x = x_in.contiguous(), w = w_in.contiguous(), b = b_in.contiguous();
    memory user = user_memory(x);
    const auto shape = user.get_desc().dims();
    const auto& p = primitives(Op(op), shape, w.sizes());
    dnnl::stream s(engine());
    // x in the primitive's layout, kept for the weights' gradient (in bf16, half of x's size):
    // x itself when it is in that layout already (blocked fp32).
    auto x_in_layout = x;
    if (user.get_desc() != p.fwd_pd.src_desc()) {
      x_in_layout = torch::empty({int64_t(p.fwd_pd.src_desc().get_size())}, torch::kUInt8);
      memory m(p.fwd_pd.src_desc(), engine(), x_in_layout.data_ptr());
      dnnl::reorder(user, m).execute(s, user, m);
    }
    memory src(p.fwd_pd.src_desc(), engine(), x_in_layout.data_ptr());
    ctx->save_for_backward({x_in_layout, w});
    ctx->saved_data["shape"] = std::vector<int64_t>(shape.begin(), shape.end());
    ctx->saved_data["op"] = op;
    ctx->saved_data["blocked_in"] = x.dim() == 5;
    auto y = run(
        p.fwd,
        {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, as(plain(w), p.fwd_pd.weights_desc(), s)}, {DNNL_ARG_BIAS, plain(b)}},
        DNNL_ARG_DST, p.fwd_pd.dst_desc(), s, blocked_out);
    s.wait();
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &x_in_layout = saved[0], &w = saved[1];
    const auto gy = grads[0].contiguous();
    const auto& p = primitives(Op(ctx->saved_data["op"].toInt()), ctx->saved_data["shape"].toIntVector(), w.sizes());
    dnnl::stream s(engine());
    const auto gy_desc = p.bwd_weights_pd.diff_dst_desc();
    memory gy_user = user_memory(gy), gy_in = as(gy_user, gy_desc, s);
    torch::Tensor gx;
    if (ctx->needs_input_grad(0)) {
      const auto& pd = p.bwd_data_pd;
      gx = run(p.bwd_data,
               {{DNNL_ARG_DIFF_DST, pd.diff_dst_desc() == gy_desc ? gy_in : as(gy_user, pd.diff_dst_desc(), s)},
                {DNNL_ARG_WEIGHTS, as(plain(w), pd.weights_desc(), s)}},
               DNNL_ARG_DIFF_SRC, pd.diff_src_desc(), s, ctx->saved_data["blocked_in"].toBool());
    }
    auto gb = torch::empty({w.size(0)});
    auto gw = run(p.bwd_weights,
                  {{DNNL_ARG_SRC,
                    as(memory(p.fwd_pd.src_desc(), engine(), x_in_layout.data_ptr()), p.bwd_weights_pd.src_desc(), s)},
                   {DNNL_ARG_DIFF_DST, gy_in},
                   {DNNL_ARG_DIFF_BIAS, plain(gb)}},
                  DNNL_ARG_DIFF_WEIGHTS, p.bwd_weights_pd.diff_weights_desc(), s, false);
    s.wait();
    return {gx, gw, gb, torch::Tensor(), torch::Tensor()};
  }
};

// y = x·wᵀ + b in fp32 through oneDNN's sgemm, forward and backward: 1.3-1.9× LibTorch's
// OpenBLAS calls on the blocks' 128 × 256-wide products here (docs/speed.md).
struct SgemmLinear : torch::autograd::Function<SgemmLinear> {
  // Row-major c (m×n) = a·b with a m×k, b k×n, each transposed first where its flag is 'T'.
  static void gemm(char ta, char tb, const torch::Tensor& a, const torch::Tensor& b, float beta, torch::Tensor& c) {
    const int64_t m = c.size(0), n = c.size(1), k = ta == 'N' ? a.size(1) : a.size(0);
    TORCH_CHECK(dnnl_sgemm(ta, tb, m, n, k, 1.f, a.data_ptr<float>(), a.size(1), b.data_ptr<float>(), b.size(1), beta,
                           c.data_ptr<float>(), n) == dnnl_success,
                "oneDNN sgemm failed");
  }
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x_in, const torch::Tensor& w_in,
                               const torch::Tensor& b) {
    auto x = x_in.contiguous(), w = w_in.contiguous();
    // b in every row, then + x·wᵀ (a copy: with one row, expand would alias b itself).
    auto y = b.expand({x.size(0), w.size(0)}).clone(at::MemoryFormat::Contiguous);
    gemm('N', 'T', x, w, 1.f, y);
    ctx->save_for_backward({x, w});
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &w = saved[1];
    const auto g = grads[0].contiguous();
    torch::Tensor gx, gw, gb;
    if (ctx->needs_input_grad(0)) {
      gx = torch::empty_like(x);
      gemm('N', 'N', g, w, 0.f, gx);
    }
    if (ctx->needs_input_grad(1)) {
      gw = torch::empty_like(w);
      gemm('T', 'N', g, x, 0.f, gw);
    }
    if (ctx->needs_input_grad(2)) gb = g.sum(0);
    return {gx, gw, gb};
  }
};

bool cpu_float(const torch::Tensor& x, const torch::Tensor& w) {
  return x.device().is_cpu() && x.scalar_type() == torch::kFloat && w.scalar_type() == torch::kFloat;
}
}  // namespace

bool conv_bf16_supported() { return dnnl::get_effective_cpu_isa() >= dnnl::cpu_isa::avx512_core_bf16; }
bool conv_bf16_fast() { return dnnl::get_effective_cpu_isa() >= dnnl::cpu_isa::avx512_core_amx; }
// oneDNN 2.6's fp32 Winograd kernels (jit_wino_4x3) are AVX-512 ones.
bool conv_winograd_supported() { return dnnl::get_effective_cpu_isa() >= dnnl::cpu_isa::avx512_core; }

torch::Tensor conv3x3(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b, ConvPath path,
                      bool blocked_out) {
  NOPROP_RECORD("noprop::conv3x3");
  if (path == ConvPath::torch || !cpu_float(x, w) || (x.dim() != 4 && !blocked(x)) || w.size(2) != 3 || w.size(3) != 3)
    return torch::conv2d(to_plain(x), w, b, 1, 1);
  blocked_out = blocked_out && w.size(0) % kChannelBlock == 0;
  // A 1- or 3-channel input has no AMX kernel worth having (bf16 made NoProp-DT seed steps
  // slower: 0.167-0.169 s against 0.157-0.163 s) nor a fast Winograd one (4 ms forward against
  // 0.3); in fp32 oneDNN's blocked direct kernel beat LibTorch's call into the same library,
  // whose backward pass took 3.2 ms here against 0.8 ms.
  if (x.dim() == 4 && x.size(1) < 16) return DnnlOp::apply(x, w, b, int64_t(Op::conv3x3_fp32), blocked_out);
  return DnnlOp::apply(x, w, b, int64_t(path == ConvPath::bf16 ? Op::conv3x3 : Op::conv3x3_winograd), blocked_out);
}

torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b, ConvPath path) {
  NOPROP_RECORD("noprop::linear");
  if (path == ConvPath::torch || !cpu_float(x, w) || x.dim() != 2 || x.size(0) == 0 || !b.defined() ||
      b.scalar_type() != torch::kFloat)
    return torch::linear(x, w, b);
  if (path == ConvPath::bf16) return DnnlOp::apply(x, w, b, int64_t(Op::linear), false);
  return SgemmLinear::apply(x, w, b);
}
#else
bool conv_bf16_supported() { return false; }
bool conv_bf16_fast() { return false; }
bool conv_winograd_supported() { return false; }
torch::Tensor conv3x3(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b, ConvPath, bool) {
  return torch::conv2d(to_plain(x), w, b, 1, 1);
}
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b, ConvPath) {
  return torch::linear(x, w, b);
}
#endif

}  // namespace noprop::kernels
