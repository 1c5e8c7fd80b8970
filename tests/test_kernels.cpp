// The fused kernels against LibTorch's relu / max_pool2d / dropout, forward and backward, with
// the dropout mask the kernel used rebuilt from its seed; the bf16 convolution against fp64
// convolutions of its bf16-rounded operands.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "noprop/blocks/conv.h"
#include "noprop/kernels.h"
#include "noprop/methods/helpers.h"
#include "noprop/methods/method.h"
#include "noprop/methods/network.h"
#include "noprop/util.h"

namespace noprop {
namespace {

struct Result {
  torch::Tensor out, grad;
};

// Output and input gradient of f(x) against the upstream gradient g.
template <typename F>
Result run(F f, const torch::Tensor& x0, const torch::Tensor& g) {
  auto x = x0.clone().requires_grad_(true);
  auto out = f(x);
  out.backward(g);
  return {out.detach(), x.grad()};
}

void expect_equal(const Result& a, const Result& b) {
  EXPECT_TRUE(torch::allclose(a.out, b.out, 1e-6, 1e-7)) << (a.out - b.out).abs().max();
  EXPECT_TRUE(torch::allclose(a.grad, b.grad, 1e-6, 1e-7)) << (a.grad - b.grad).abs().max();
}

// Two blocks built from `a` and `b` holding the same parameters.
std::pair<DenoiseBlock, DenoiseBlock> twin_blocks(const BlockOptions& a, const BlockOptions& b, uint64_t seed) {
  torch::manual_seed(seed);
  DenoiseBlock first(a), second(b);
  torch::NoGradGuard no_grad;
  auto src = first->parameters(), dst = second->parameters();
  for (size_t i = 0; i < src.size(); ++i) dst[i].copy_(src[i]);
  return {first, second};
}

torch::Tensor keep_mask_like(uint64_t seed, const torch::Tensor& like, double p) {
  return kernels::dropout_keep_mask(seed, like.numel(), p).view(like.sizes());
}

// Every kernel test runs twice: hand-written AVX-512 rows (where the CPU has AVX-512) and the
// portable loops.
class Kernels : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override { previous_ = kernels::set_vector_kernels(GetParam()); }
  void TearDown() override { kernels::set_vector_kernels(previous_); }
  bool previous_ = false;
};
INSTANTIATE_TEST_SUITE_P(Paths, Kernels, ::testing::Values(true, false),
                         [](const auto& info) { return info.param ? "vector" : "portable"; });

TEST_P(Kernels, ReluPoolMatchesLibTorchWithoutDropout) {
  torch::manual_seed(1);
  auto x = torch::randn({3, 5, 6, 10});
  auto g = torch::randn({3, 5, 3, 5});
  expect_equal(run([](auto& v) { return kernels::relu_pool_dropout(v, 0.0, 7); }, x, g),
               run([](auto& v) { return torch::max_pool2d(torch::relu(v), 2); }, x, g));
}

TEST_P(Kernels, ReluPoolTiesAndZerosFollowLibTorch) {
  // Small integers: many windows with tied maxima, exact zeros and all-negative windows.
  torch::manual_seed(2);
  auto x = torch::randint(-2, 3, {2, 4, 8, 8}).to(torch::kFloat32);
  auto g = torch::randn({2, 4, 4, 4});
  expect_equal(run([](auto& v) { return kernels::relu_pool_dropout(v, 0.0, 7); }, x, g),
               run([](auto& v) { return torch::max_pool2d(torch::relu(v), 2); }, x, g));
}

TEST_P(Kernels, ReluPoolDropoutMatchesLibTorchWithTheSameMask) {
  torch::manual_seed(3);
  const double p = 0.3;
  const uint64_t seed = 0x1234567890abcdefULL;
  // Rows of 6 and of 35 outputs (two full 16-lane chunks and a remainder).
  for (auto shape : {std::vector<int64_t>{4, 8, 12, 12}, std::vector<int64_t>{2, 3, 4, 70}}) {
    auto x = torch::randn(shape);
    auto g = torch::randn({shape[0], shape[1], shape[2] / 2, shape[3] / 2});
    auto mask = keep_mask_like(seed, g, p);
    expect_equal(run([&](auto& v) { return kernels::relu_pool_dropout(v, p, seed); }, x, g),
                 run([&](auto& v) { return torch::max_pool2d(torch::relu(v), 2) * mask / (1 - p); }, x, g));
  }
}

TEST_P(Kernels, ReluDropoutMatchesLibTorchWithTheSameMask) {
  torch::manual_seed(4);
  const double p = 0.2;
  const uint64_t seed = 99;
  auto x = torch::randn({3, 7, 9, 11});
  auto g = torch::randn({3, 7, 9, 11});
  auto mask = keep_mask_like(seed, x, p);
  expect_equal(run([&](auto& v) { return kernels::relu_dropout(v, p, seed); }, x, g),
               run([&](auto& v) { return torch::relu(v) * mask / (1 - p); }, x, g));
  expect_equal(run([&](auto& v) { return kernels::relu_dropout(v, 0.0, seed); }, x, g),
               run([&](auto& v) { return torch::relu(v); }, x, g));
}

// On channel-blocked activations (oneDNN's nChw16c) the kernels give exactly the plain
// layout's outputs, gradients and dropout masks, reordered; a plain rebuild by hand of the
// layout checks to_blocked and to_plain themselves.
TEST_P(Kernels, BlockedLayoutGivesThePlainResults) {
  torch::manual_seed(6);
  auto x = torch::randn({3, 32, 6, 10});
  // Element (n, c, h, w) sits at [n][c / 16][h][w][c % 16].
  auto blocked = kernels::to_blocked(x);
  ASSERT_EQ(blocked.sizes(), (std::vector<int64_t>{3, 2, 6, 10, 16}));
  EXPECT_EQ(blocked[2][1][4][7][5].item<float>(), x[2][21][4][7].item<float>());
  EXPECT_TRUE(torch::equal(kernels::to_plain(blocked), x));
  EXPECT_TRUE(kernels::blocked(blocked));
  EXPECT_FALSE(kernels::blocked(x));
  for (const double p : {0.0, 0.3}) {
    SCOPED_TRACE("p = " + std::to_string(p));
    auto gp = torch::randn({3, 32, 3, 5});
    auto plain = run([&](auto& v) { return kernels::relu_pool_dropout(v, p, 77); }, x, gp);
    auto blk = run([&](auto& v) { return kernels::relu_pool_dropout(v, p, 77); }, blocked, kernels::to_blocked(gp));
    EXPECT_TRUE(torch::equal(kernels::to_plain(blk.out), plain.out));
    EXPECT_TRUE(torch::equal(kernels::to_plain(blk.grad), plain.grad));
    auto gr = torch::randn_like(x);
    plain = run([&](auto& v) { return kernels::relu_dropout(v, p, 78); }, x, gr);
    blk = run([&](auto& v) { return kernels::relu_dropout(v, p, 78); }, blocked, kernels::to_blocked(gr));
    EXPECT_TRUE(torch::equal(kernels::to_plain(blk.out), plain.out));
    EXPECT_TRUE(torch::equal(kernels::to_plain(blk.grad), plain.grad));
    // Without autograd too (inference).
    torch::NoGradGuard no_grad;
    EXPECT_TRUE(torch::equal(kernels::to_plain(kernels::relu_pool_dropout(blocked, p, 5)),
                             kernels::relu_pool_dropout(x, p, 5)));
  }
}

TEST_P(Kernels, NonContiguousInputAndGradient) {
  torch::manual_seed(5);
  auto x = torch::randn({4, 6, 8, 3}).permute({0, 3, 1, 2});  // 4×3×6×8, not contiguous
  auto g = torch::randn({4, 3, 4, 3}).permute({0, 1, 3, 2});  // 4×3×3×4
  ASSERT_FALSE(x.is_contiguous());
  expect_equal(run([](auto& v) { return kernels::relu_pool_dropout(v, 0.0, 1); }, x, g),
               run([](auto& v) { return torch::max_pool2d(torch::relu(v), 2); }, x, g));
}

TEST_P(Kernels, MaskHasTheRightRateAndIsIndependent) {
  const int64_t n = 1 << 20;
  const double p = 0.2;
  auto a = kernels::dropout_keep_mask(11, n, p), b = kernels::dropout_keep_mask(12, n, p);
  // Binomial standard deviation of the mean: sqrt(0.16 / 2^20) ≈ 0.0004.
  EXPECT_NEAR(a.mean().item<double>(), 1 - p, 0.002);
  EXPECT_NEAR(b.mean().item<double>(), 1 - p, 0.002);
  // Different seeds: independent masks agree on (1-p)² + p² of the positions.
  EXPECT_NEAR((a == b).to(torch::kFloat64).mean().item<double>(), 0.68, 0.003);
  // Neighbours are uncorrelated: P(keep i and keep i+1) = (1-p)².
  EXPECT_NEAR((a.slice(0, 1) * a.slice(0, 0, n - 1)).mean().item<double>(), 0.64, 0.003);
  EXPECT_TRUE(torch::equal(a, kernels::dropout_keep_mask(11, n, p)));
}

TEST_P(Kernels, SeedsComeFromTheDefaultGenerator) {
  auto x = torch::randn({2, 3, 4, 4});
  torch::manual_seed(21);
  auto a = kernels::relu_pool_dropout(x, 0.5);
  auto a2 = kernels::relu_dropout(x, 0.5);
  torch::manual_seed(21);
  EXPECT_TRUE(torch::equal(a, kernels::relu_pool_dropout(x, 0.5)));
  EXPECT_TRUE(torch::equal(a2, kernels::relu_dropout(x, 0.5)));
  EXPECT_FALSE(torch::equal(a, kernels::relu_pool_dropout(x, 0.5)));  // the generator moved on
}

TEST_P(Kernels, NaNPropagatesAsInLibTorch) {
  auto x = torch::ones({1, 1, 2, 4});
  x[0][0][1][1] = std::nanf("");
  auto out = kernels::relu_pool_dropout(x, 0.0, 3);
  auto ref = torch::max_pool2d(torch::relu(x), 2);
  EXPECT_TRUE(std::isnan(out[0][0][0][0].item<float>()));
  EXPECT_TRUE(torch::equal(out.slice(3, 1), ref.slice(3, 1)));
  // Even where dropout drops it (LibTorch multiplies the NaN by a zero mask).
  auto nan = torch::full({1, 1, 8, 8}, std::nanf(""));
  EXPECT_TRUE(kernels::relu_dropout(nan, 0.9, 5).isnan().all().item<bool>());
}

TEST_P(Kernels, OtherTensorsGoToLibTorch) {
  auto x = torch::randn({2, 3, 4, 4}, torch::kFloat64);
  EXPECT_FALSE(kernels::supported(x));
  EXPECT_TRUE(torch::equal(kernels::relu_pool_dropout(x, 0.0), torch::max_pool2d(torch::relu(x), 2)));
  EXPECT_TRUE(torch::equal(kernels::relu_dropout(x, 0.0), torch::relu(x)));
  EXPECT_THROW(kernels::relu_pool_dropout(torch::randn({1, 1, 3, 4}), 0.0, 1), c10::Error);
}

// A whole block: the fused path and LibTorch's separate ops give the same outputs and the same
// parameter gradients (dropout off, so no masks differ), for both architectures.
TEST_P(Kernels, FusedBlockMatchesTheReferenceBlock) {
  for (const std::string arch : {"seed", "paper"}) {
    BlockOptions opt;
    opt.architecture = arch;
    opt.dropout = 0.0;
    auto reference = opt;
    reference.fused_kernels = false;
    auto [fused, ref] = twin_blocks(opt, reference, 6);
    auto x = torch::randn({8, 1, 28, 28}), z = torch::randn({8, 10});
    auto a = fused->forward(x, z), b = ref->forward(x, z);
    EXPECT_TRUE(torch::allclose(a, b, 1e-5, 1e-6)) << arch;
    a.pow(2).sum().backward();
    b.pow(2).sum().backward();
    auto pa = fused->parameters(), pb = ref->parameters();
    for (size_t i = 0; i < pa.size(); ++i)
      EXPECT_TRUE(torch::allclose(pa[i].grad(), pb[i].grad(), 1e-4, 1e-6)) << arch << " parameter " << i;
    fused->eval(), ref->eval();
    EXPECT_TRUE(torch::allclose(fused->forward(x, z), ref->forward(x, z), 1e-5, 1e-6)) << arch;
  }
}

}  // namespace
}  // namespace noprop

namespace noprop {
namespace {

// at::parallel_for runs in parallel only in code compiled with OpenMP (ATen's header tests
// _OPENMP; without it the loop silently runs on the calling thread): the fused kernels and
// concurrent blocks rely on it.
TEST(ParallelLoops, RunOnSeveralThreads) {
  const int threads = at::get_num_threads();
  at::set_num_threads(2);
  std::mutex mutex;
  std::set<std::thread::id> ids;
  int calls = 0;
  at::parallel_for(0, 2, 1, [&](int64_t, int64_t) {
    std::lock_guard lock(mutex);
    ids.insert(std::this_thread::get_id());
    ++calls;
  });
  at::set_num_threads(threads);
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(ids.size(), 2u);
}

// The fused AdamW step against LibTorch's AdamW: the same trajectory over several steps, and
// optimizer state that LibTorch's AdamW can load and continue from.
// Both rows, as the kernels': the AVX-512 one and the portable one (3 elements: masked tail).
class FusedAdamW : public Kernels {};
INSTANTIATE_TEST_SUITE_P(Paths, FusedAdamW, ::testing::Values(true, false),
                         [](const auto& info) { return info.param ? "vector" : "portable"; });

TEST_P(FusedAdamW, FollowsLibTorchsAdamW) {
  Config fused_cfg, torch_cfg;
  fused_cfg.weight_decay = torch_cfg.weight_decay = 0.05;
  fused_cfg.learning_rate = torch_cfg.learning_rate = 0.01;
  torch_cfg.kernels = "torch";
  torch::manual_seed(12);
  std::vector<torch::Tensor> a{torch::randn({37, 5}), torch::randn({1000}), torch::randn({3})}, b;
  for (auto& t : a) b.push_back(t.clone());
  for (auto& t : a) t.requires_grad_(true);
  for (auto& t : b) t.requires_grad_(true);
  auto fused = make_optimizer(fused_cfg, a), reference = make_optimizer(torch_cfg, b);
  auto step = [&](int k) {
    for (size_t i = 0; i < a.size(); ++i) {
      auto g = torch::randn_like(a[i]) * (k + 1);
      a[i].mutable_grad() = g.clone();
      b[i].mutable_grad() = g.clone();
    }
    fused->step();
    reference->step();
  };
  for (int k = 0; k < 5; ++k) step(k);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::allclose(a[i], b[i], 1e-5, 1e-7)) << i;
  // State written by the fused optimizer, continued by LibTorch's.
  std::stringstream buffer;
  torch::serialize::OutputArchive out;
  fused->save(out);
  out.save_to(buffer);
  auto continued = make_optimizer(torch_cfg, a);
  torch::serialize::InputArchive in;
  in.load_from(buffer);
  continued->load(in);
  fused = std::move(continued);
  for (int k = 5; k < 8; ++k) step(k);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::allclose(a[i], b[i], 1e-5, 1e-7)) << i;
}

}  // namespace
}  // namespace noprop

namespace noprop {
namespace {

torch::Tensor bf16_rounded(const torch::Tensor& t) { return t.detach().to(torch::kBFloat16).to(torch::kDouble); }

// conv3x3 and linear in bf16 against fp64 ops on the same operands rounded to bf16: the kernels
// multiply bf16 values exactly and sum in fp32, so they agree to fp32 rounding; the input and
// weight gradients likewise from the upstream gradient rounded to bf16. A 3-channel input (the
// first convolution) runs in fp32: against fp64 on the operands as they are.
TEST(Conv3x3, Bf16MatchesAnFp64OpOnBf16Operands) {
  if (!kernels::conv_bf16_supported()) GTEST_SKIP() << "no bf16 on this CPU, or no oneDNN in this build";
  torch::manual_seed(7);
  for (int64_t batch : {5, 16})
    for (const std::string kind : {"conv3x3", "linear", "first conv3x3"}) {
      SCOPED_TRACE(kind);
      const bool conv = kind != "linear", fp32 = kind == "first conv3x3";
      const int64_t c = fp32 ? 3 : 32;
      auto x = (conv ? torch::randn({batch, c, 10, 12}) : torch::randn({batch, 300})).requires_grad_();
      auto w = ((conv ? torch::randn({48, c, 3, 3}) : torch::randn({48, 300})) * 0.1).requires_grad_();
      auto b = torch::randn({48}).requires_grad_();
      auto op = [&](const torch::Tensor& a, const torch::Tensor& k, const torch::Tensor& c) {
        return conv ? torch::conv2d(a, k, c, 1, 1) : torch::linear(a, k, c);
      };
      auto y =
          conv ? kernels::conv3x3(x, w, b, kernels::ConvPath::bf16) : kernels::linear(x, w, b, kernels::ConvPath::bf16);
      auto gy = torch::randn(y.sizes());
      y.backward(gy);

      auto rounded = [&](const torch::Tensor& t) { return fp32 ? t.detach().to(torch::kDouble) : bf16_rounded(t); };
      auto xr = rounded(x).requires_grad_(), wr = rounded(w).requires_grad_();
      auto br = b.detach().to(torch::kDouble).requires_grad_();
      auto yr = op(xr, wr, br);
      yr.backward(rounded(gy));
      auto close = [](const torch::Tensor& a, const torch::Tensor& ref) {
        return (a.to(torch::kDouble) - ref).abs().max().item<double>() / ref.abs().max().item<double>();
      };
      EXPECT_LT(close(y, yr), 1e-5) << batch;
      EXPECT_LT(close(x.grad(), xr.grad()), 1e-5) << batch;
      EXPECT_LT(close(w.grad(), wr.grad()), 1e-5) << batch;
      EXPECT_LT(close(b.grad(), br.grad()), 1e-5) << batch;
      // And against LibTorch's fp32 op, bf16's rounding apart.
      EXPECT_LT(close(y, op(x, w, b).to(torch::kDouble)), fp32 ? 1e-5 : 2e-2) << batch;
    }
}

// conv3x3 in fp32 Winograd F(4×4, 3×3) against an fp64 op on the same operands: the transforms
// add fp32 rounding of their own (~1e-6 of the largest value), no more. Sizes that do not tile
// by 4 included; a 3-channel input takes the direct kernel.
TEST(Conv3x3, WinogradMatchesAnFp64Op) {
  if (!kernels::conv_winograd_supported()) GTEST_SKIP() << "no AVX-512 on this CPU, or no oneDNN in this build";
  torch::manual_seed(17);
  for (const auto& [batch, c, h, w_] :
       std::vector<std::array<int64_t, 4>>{{5, 32, 14, 14}, {16, 64, 7, 9}, {3, 3, 10, 12}}) {
    SCOPED_TRACE(std::to_string(c) + " channels, " + std::to_string(h) + "x" + std::to_string(w_));
    auto x = torch::randn({batch, c, h, w_}).requires_grad_();
    auto w = (torch::randn({48, c, 3, 3}) * 0.1).requires_grad_();
    auto b = torch::randn({48}).requires_grad_();
    auto y = kernels::conv3x3(x, w, b, kernels::ConvPath::winograd);
    auto gy = torch::randn(y.sizes());
    y.backward(gy);
    auto as_double = [](const torch::Tensor& t) { return t.detach().to(torch::kDouble).requires_grad_(); };
    auto xr = as_double(x), wr = as_double(w), br = as_double(b);
    auto yr = torch::conv2d(xr, wr, br, 1, 1);
    yr.backward(gy.to(torch::kDouble));
    auto close = [](const torch::Tensor& a, const torch::Tensor& ref) {
      return (a.to(torch::kDouble) - ref).abs().max().item<double>() / ref.abs().max().item<double>();
    };
    EXPECT_LT(close(y, yr), 1e-5);
    EXPECT_LT(close(x.grad(), xr.grad()), 1e-5);
    EXPECT_LT(close(w.grad(), wr.grad()), 1e-5);
    EXPECT_LT(close(b.grad(), br.grad()), 1e-5);
    EXPECT_GT(close(y, yr), 0.0);  // not LibTorch's fp32 op on doubles: oneDNN ran, in fp32
  }
}

// Linear layers on the winograd path (fp32 through oneDNN's sgemm) against an fp64 op: the
// result and every gradient, for an input that needs none, one stored transposed and one row.
TEST(Linear, Fp32ThroughOneDnnMatchesAnFp64Op) {
  if (!kernels::conv_winograd_supported()) GTEST_SKIP() << "no AVX-512 on this CPU, or no oneDNN in this build";
  torch::manual_seed(23);
  for (const auto& [batch, in, out] : std::vector<std::array<int64_t, 3>>{{128, 3136, 256}, {7, 10, 3}, {1, 33, 17}})
    for (bool input_grad : {true, false}) {
      SCOPED_TRACE(std::to_string(batch) + "x" + std::to_string(in) + " → " + std::to_string(out) +
                   (input_grad ? "" : ", no input gradient"));
      auto x = torch::randn({in, batch}).t().requires_grad_(input_grad);  // not contiguous
      auto w = (torch::randn({out, in}) * 0.1).requires_grad_();
      auto b = torch::randn({out}).requires_grad_();
      const auto b_before = b.detach().clone();
      auto y = kernels::linear(x, w, b, kernels::ConvPath::winograd);
      EXPECT_TRUE(torch::equal(b, b_before));  // the bias is copied into the result, never written
      EXPECT_NE(y.grad_fn()->name().find("SgemmLinear"), std::string::npos) << y.grad_fn()->name();
      auto gy = torch::randn(y.sizes());
      y.backward(gy);
      auto as_double = [](const torch::Tensor& t, bool grad) {
        return t.detach().to(torch::kDouble).requires_grad_(grad);
      };
      auto xr = as_double(x, input_grad), wr = as_double(w, true), br = as_double(b, true);
      auto yr = torch::linear(xr, wr, br);
      yr.backward(gy.to(torch::kDouble));
      auto close = [](const torch::Tensor& a, const torch::Tensor& ref) {
        return (a.to(torch::kDouble) - ref).abs().max().item<double>() / ref.abs().max().item<double>();
      };
      EXPECT_LT(close(y, yr), 1e-5);
      EXPECT_EQ(x.grad().defined(), input_grad);
      if (input_grad) {
        EXPECT_LT(close(x.grad(), xr.grad()), 1e-5);
      }
      EXPECT_LT(close(w.grad(), wr.grad()), 1e-5);
      EXPECT_LT(close(b.grad(), br.grad()), 1e-5);
    }
}

// Channel-blocked inputs and outputs (kernels.h) through oneDNN: the plain layout's results
// (the plain path reorders into the same blocked layout, so they agree to the last bit), and
// LibTorch's convolution takes them back plain.
TEST(Conv3x3, BlockedLayoutsGiveThePlainResults) {
  torch::manual_seed(19);
  auto w1 = torch::randn({32, 1, 3, 3}), b1 = torch::randn({32});
  auto w2 = (torch::randn({64, 32, 3, 3}) * 0.1), b2 = torch::randn({64});
  auto x = torch::randn({4, 1, 12, 12});
  using kernels::ConvPath;
  for (auto path : {ConvPath::winograd, ConvPath::bf16, ConvPath::torch}) {
    if (path == ConvPath::winograd && !kernels::conv_winograd_supported()) continue;
    if (path == ConvPath::bf16 && !kernels::conv_bf16_supported()) continue;
    SCOPED_TRACE(int(path));
    auto two_convs = [&](bool blocked_out) {
      auto ps = std::vector<torch::Tensor>{w1.clone().requires_grad_(), b1.clone().requires_grad_(),
                                           w2.clone().requires_grad_(), b2.clone().requires_grad_()};
      auto h = kernels::conv3x3(x, ps[0], ps[1], path, blocked_out);
      EXPECT_EQ(kernels::blocked(h), blocked_out && path != ConvPath::torch);
      auto y = kernels::to_plain(kernels::conv3x3(h, ps[2], ps[3], path, blocked_out));
      EXPECT_EQ(y.dim(), 4);
      (y * torch::arange(y.numel()).view(y.sizes()).sin()).sum().backward();
      ps.insert(ps.begin(), y.detach());
      return ps;
    };
    auto plain = two_convs(false), blk = two_convs(true);
    for (size_t i = 0; i < plain.size(); ++i) {
      const auto& a = i == 0 ? plain[i] : plain[i].grad();
      const auto& b = i == 0 ? blk[i] : blk[i].grad();
      EXPECT_TRUE(torch::allclose(a, b, 1e-6, 1e-6)) << i << ": " << (a - b).abs().max();
    }
  }
}

// Without bf16, or on anything but CPU float32: LibTorch's ops, exactly.
TEST(Conv3x3, OtherwiseLibTorchsConvolution) {
  torch::manual_seed(8);
  auto w32 = torch::randn({8, 32, 3, 3}), b = torch::randn({8});
  auto x32 = torch::randn({2, 32, 6, 6});
  using kernels::ConvPath;
  EXPECT_TRUE(torch::equal(kernels::conv3x3(x32, w32, b, ConvPath::torch), torch::conv2d(x32, w32, b, 1, 1)));
  auto xd = x32.to(torch::kDouble), wd = w32.to(torch::kDouble), bd = b.to(torch::kDouble);
  for (auto path : {ConvPath::bf16, ConvPath::winograd})
    EXPECT_TRUE(torch::equal(kernels::conv3x3(xd, wd, bd, path), torch::conv2d(xd, wd, bd, 1, 1)));
  auto v = torch::randn({3, 20}), m = torch::randn({8, 20});
  EXPECT_TRUE(torch::equal(kernels::linear(v, m, b, ConvPath::torch), torch::linear(v, m, b)));
  for (auto path : {ConvPath::bf16, ConvPath::winograd})
    EXPECT_TRUE(torch::equal(kernels::linear(v.to(torch::kDouble), m.to(torch::kDouble), bd, path),
                             torch::linear(v.to(torch::kDouble), m.to(torch::kDouble), bd)));
}

// The bf16 and Winograd paths inside a block train like LibTorch's fp32 one: same loss after a
// few steps to within bf16's rounding, or to fp32's (the end-to-end accuracy check is in
// docs/speed.md).
TEST(Conv3x3, OneDnnBlockFollowsTheFp32Block) {
  if (!kernels::conv_bf16_supported() && !kernels::conv_winograd_supported())
    GTEST_SKIP() << "neither bf16 nor Winograd on this CPU, or no oneDNN in this build";
  for (auto path : {kernels::ConvPath::bf16, kernels::ConvPath::winograd}) {
    const bool bf16 = path == kernels::ConvPath::bf16;
    SCOPED_TRACE(bf16 ? "bf16" : "winograd");
    if (!(bf16 ? kernels::conv_bf16_supported() : kernels::conv_winograd_supported())) continue;
    BlockOptions opt;
    opt.architecture = "paper";
    opt.dropout = 0.0;
    auto other_opt = opt;
    other_opt.conv = path;
    auto [fp32, other] = twin_blocks(opt, other_opt, 9);
    auto x = torch::rand({16, 1, 28, 28}), z = torch::randn({16, 10});
    auto target = torch::randint(0, 10, {16});
    std::vector<double> losses[2];
    int k = 0;
    for (DenoiseBlock* block : {&fp32, &other}) {
      torch::optim::Adam opt_((*block)->parameters(), 1e-3);
      for (int step = 0; step < 5; ++step) {
        opt_.zero_grad();
        auto loss = torch::cross_entropy_loss((*block)->forward(x, z), target);
        loss.backward();
        opt_.step();
        losses[k].push_back(loss.item<double>());
      }
      ++k;
    }
    // Winograd: the first loss from the same weights to fp32 rounding; later ones drift as
    // Adam's normalised steps magnify the gradients' rounding (0.25 % by step 5).
    for (size_t i = 0; i < losses[0].size(); ++i)
      EXPECT_NEAR(losses[1][i], losses[0][i], (bf16 ? 0.02 : i == 0 ? 1e-5 : 1e-2) * losses[0][i]) << i;
    EXPECT_LT(losses[1].back(), losses[1].front());
  }
}

}  // namespace
}  // namespace noprop

namespace noprop {
namespace {

// conv_precision: auto takes bf16 only where it pays (AMX), else Winograd where oneDNN has it
// (AVX-512), never with LibTorch's kernels or on a GPU; an explicit bf16 or winograd that cannot
// be had is an error naming the key, not a silent fp32 run.
TEST(Conv3x3, ConvPrecisionResolvesPerCpuAndKernels) {
  Config cfg;
  const std::string cpu_auto = kernels::conv_bf16_fast()            ? "bf16"
                               : kernels::conv_winograd_supported() ? "winograd"
                                                                    : "fp32";
  EXPECT_EQ(conv_precision(cfg), cpu_auto);
  cfg.conv_precision = "fp32";
  EXPECT_EQ(conv_precision(cfg), "fp32");
  cfg.kernels = "torch";
  cfg.conv_precision = "auto";
  EXPECT_EQ(conv_precision(cfg), "fp32");
  cfg.conv_precision = "bf16";
  try {
    conv_precision(cfg);
    FAIL() << "bf16 with kernels: torch accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'conv_precision'"), std::string::npos) << e.what();
  }
  cfg.conv_precision = "winograd";
  EXPECT_THROW(conv_precision(cfg), Error);
  cfg.kernels = "fused";
  if (kernels::conv_winograd_supported()) {
    EXPECT_EQ(conv_precision(cfg), "winograd");
    cfg.device = "cuda";  // the oneDNN paths are CPU ones
    EXPECT_EQ(conv_precision(cfg), "fp32");
    cfg.device = "cpu";
  } else {
    EXPECT_THROW(conv_precision(cfg), Error);
  }
  cfg.conv_precision = "auto";
  cfg.device = "cuda";
  EXPECT_EQ(conv_precision(cfg), "fp32");
  cfg.device = "cpu";
  cfg.conv_precision = "bf16";
  if (kernels::conv_bf16_supported()) {
    EXPECT_EQ(conv_precision(cfg), "bf16");
  }
  // Stacked NoProp-DT steps run LibTorch's fp32 ops: auto follows them, an explicit oneDNN path
  // is an error; other methods ignore the key.
  cfg.stacked_blocks = true;
  for (const std::string want : {"bf16", "winograd"}) {
    cfg.conv_precision = want;
    try {
      conv_precision(cfg);
      FAIL() << want << " with stacked_blocks accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("stacked_blocks"), std::string::npos) << e.what();
    }
  }
  cfg.conv_precision = "auto";
  EXPECT_EQ(conv_precision(cfg), "fp32");
  cfg.method = "backprop";
  EXPECT_EQ(conv_precision(cfg), cpu_auto);
}

}  // namespace
}  // namespace noprop
