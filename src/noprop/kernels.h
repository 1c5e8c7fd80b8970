// Fused CPU kernels for the element-wise tail of each convolution in the image path:
// ReLU → max-pool 2×2 → dropout, and ReLU → dropout. LibTorch runs these as three separate
// passes over memory forward and backward, plus a Bernoulli mask drawn element by element;
// on a 2-core CPU they took more time than the convolutions themselves. Here each is one
// multi-threaded pass forward and one backward, and the dropout mask is never stored: it is a
// counter-based hash of (seed, element index), so backward recomputes nothing it cannot
// rebuild from a 64-bit seed and, for pooling, a 1-byte argmax code per output.
//
// Both functions are autograd-aware and match LibTorch's ops exactly, masks aside (tests
// check them against relu / max_pool2d / dropout with the same mask). They handle CPU
// float32 tensors; anything else (CUDA, bf16) goes to the LibTorch ops unchanged.
#pragma once

#include <ATen/record_function.h>
#include <torch/torch.h>

#include <cstdint>

// A named range in LibTorch's operator profiler (`noprop_bench --profile`): these kernels are
// not LibTorch operators, and their forward passes would otherwise show only as gaps in the
// trace. Near free when no profiler runs.
#define NOPROP_RECORD(name) RECORD_FUNCTION(name, c10::ArrayRef<const c10::IValue>())

namespace noprop::kernels {

// Whether the fused kernels handle x: a 4-D float32 CPU tensor.
bool supported(const torch::Tensor& x);

// Channel-blocked activations: oneDNN's nChw16c layout, an N×C×H×W tensor stored as
// N×(C/16)×H×W×16 (16 channels side by side per pixel). The convolutions below can hand their
// output over in it and take it back, and the two kernels below run on it, so that the image
// path's convolutions and their ReLU/pool/dropout tails pass activations without reordering
// them (the reorders were ~15 % of a NoProp-DT step). A 5-D float32 CPU tensor whose last size
// is 16 is taken to be blocked; dropout masks are those of the plain layout.
constexpr int64_t kChannelBlock = 16;
bool blocked(const torch::Tensor& x);
torch::Tensor to_blocked(const torch::Tensor& x);  // N×C×H×W (C a multiple of 16) → blocked
torch::Tensor to_plain(const torch::Tensor& x);    // blocked → N×C×H×W (autograd-aware); else x

// dropout(max_pool2d(relu(x), 2), p) for N×C×H×W x with even H and W (or blocked x: blocked out). The mask comes from
// `seed`; the overloads without one draw it from LibTorch's default CPU generator (so
// torch::manual_seed makes runs repeatable). p = 0 (or evaluation) means no dropout.
torch::Tensor relu_pool_dropout(const torch::Tensor& x, double p, uint64_t seed);
torch::Tensor relu_pool_dropout(const torch::Tensor& x, double p);

// dropout(relu(x), p), any shape (blocked x: blocked out).
torch::Tensor relu_dropout(const torch::Tensor& x, double p, uint64_t seed);
torch::Tensor relu_dropout(const torch::Tensor& x, double p);

// While alive, the overloads above without a seed draw it, on this thread, from `gen` instead
// of the default generator: each NoProp-DT block draws its masks from its own stream, the same
// on whichever rank trains it.
class GeneratorScope {
 public:
  explicit GeneratorScope(at::Generator gen);
  ~GeneratorScope();
  GeneratorScope(const GeneratorScope&) = delete;
  GeneratorScope& operator=(const GeneratorScope&) = delete;

 private:
  at::Generator previous_;
};

// The keep (1) / drop (0) decisions the kernels make for the first n elements under `seed`,
// as a float tensor: lets tests rebuild exactly what a fused call did.
torch::Tensor dropout_keep_mask(uint64_t seed, int64_t n, double p);

// One AdamW step (LibTorch's algorithm: decoupled weight decay, bias-corrected moments, no
// amsgrad) on one parameter in a single pass over p, grad, exp_avg and exp_avg_sq, instead of
// LibTorch's eight element-wise ops. `step` counts this step (1 on the first). All four tensors
// must pass adamw_supported.
bool adamw_supported(const torch::Tensor& t);
void adamw_update(torch::Tensor& p, const torch::Tensor& grad, torch::Tensor& exp_avg, torch::Tensor& exp_avg_sq,
                  double lr, double beta1, double beta2, double eps, double weight_decay, int64_t step);

// How the image path's 3×3 convolutions (and its flattened-features layer) run on a CPU, from
// config key conv_precision: LibTorch's ops (fp32, the reference); bf16 operands through oneDNN
// directly; fp32 Winograd through oneDNN directly.
enum class ConvPath { torch, bf16, winograd };

// conv2d(x, w, b, stride 1, padding 1) for 3×3 weights, autograd-aware. With bf16 or winograd,
// through oneDNN directly (conv_dnnl.cpp): bf16 operands and fp32 results, or fp32 Winograd
// F(4×4, 3×3) (the direct kernel where oneDNN has no Winograd one); inputs of under 16 channels
// (the first convolution) take oneDNN's direct fp32 kernel on both. With torch, without oneDNN
// in the build, or for anything but CPU float32: LibTorch's conv2d. Through oneDNN, x may be
// blocked, and with blocked_out (and 16·k output channels) so is the result; LibTorch's
// conv2d takes and gives N×C×H×W only.
torch::Tensor conv3x3(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b, ConvPath path,
                      bool blocked_out = false);
// linear(x, w, b) for N×C x, autograd-aware, through oneDNN where it is in the build and x
// is CPU float32: bf16 operands and fp32 results (bf16), or fp32 through oneDNN's sgemm
// (winograd; 1.3-1.9× OpenBLAS on these shapes); else (torch) LibTorch's.
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b, ConvPath path);
// Whether conv3x3 can run in bf16 here (oneDNN in the build, a CPU with AVX512-BF16 or AMX), and
// whether it pays: with AMX, 1.3-1.9× faster NoProp-DT steps; with AVX512-BF16 alone, slower than
// fp32 (0.284 against 0.251 s per batch, seed architecture; docs/speed.md).
bool conv_bf16_supported();
bool conv_bf16_fast();
// Whether oneDNN has its fp32 Winograd kernels here (oneDNN in the build, AVX-512).
bool conv_winograd_supported();

// The pooling kernels use hand-written AVX-512 where the CPU has it, else portable loops.
// Turns the AVX-512 path off (false) or back on; returns the previous setting. For tests.
bool set_vector_kernels(bool on);

}  // namespace noprop::kernels
