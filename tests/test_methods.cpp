#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cmath>

#include "noprop/blocks/conv.h"
#include "noprop/methods/backprop.h"
#include "noprop/methods/dt.h"
#include "noprop/methods/helpers.h"
#include "test_util.h"

using namespace noprop;

namespace {
using test::tiny_info;
Config tiny_cfg(const std::string& method) { return test::tiny_method_config(method); }
}  // namespace

// L_t = (T/2) η ΔSNR(t) ‖û − u_y‖², batch mean, checked against numbers worked by hand.
TEST(DT, BlockLossByHand) {
  Config c = tiny_cfg("dt");
  c.num_layers = 10;
  c.eta = 0.1;
  DTMethod m(c, NoPropNet(c, tiny_info(), torch::Tensor()));
  auto u_hat = torch::tensor({{0.5f, 0.5f, 0.0f, 0.0f}, {0.0f, 0.0f, 1.0f, 0.0f}});
  auto u_y = torch::tensor({{1.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 1.0f, 0.0f}});
  // ‖·‖² = 0.5 and 0 → mean 0.25; weight = 5 · 0.1 · ΔSNR(t).
  for (int t : {1, 5, 10}) {
    double expected = 5 * 0.1 * m.schedule().snr_delta(t) * 0.25;
    EXPECT_NEAR(m.block_loss(t, u_hat, u_y).item<double>(), expected, 1e-6 * std::max(1.0, expected)) << t;
  }
  EXPECT_NEAR(m.block_loss(10, u_hat, u_y).item<double>(), 5 * 0.1 * 964.1670 * 0.25, 0.01);
}

// With a perfect denoiser (û = u_y), the chain of Eq. 3 from z_0 ~ N(0, I) reproduces q(z_t|y):
// mean √ᾱ_t u_y, variance 1 − ᾱ_t (up to the ᾱ_0 = 0.001 of the start), checked by sampling.
TEST(DT, PerfectDenoiserReproducesMarginals) {
  Config c = tiny_cfg("dt");
  c.num_layers = 10;
  DTMethod m(c, NoPropNet(c, tiny_info(), torch::Tensor()));
  torch::manual_seed(3);
  const int64_t n = 200000;
  auto u = torch::zeros({n, 2});
  u.select(1, 0).fill_(1.0);
  auto z = torch::randn({n, 2}, torch::kFloat64).to(torch::kFloat32);
  for (int t = 1; t <= 10; ++t) {
    z = m.inference_step(t, u, z, torch::randn({n, 2}));
    double ab = m.schedule().alpha_bar(t);
    EXPECT_NEAR(z.select(1, 0).mean().item<double>(), std::sqrt(ab), 0.01) << t;
    EXPECT_NEAR(z.select(1, 1).mean().item<double>(), 0.0, 0.01) << t;
    EXPECT_NEAR(z.select(1, 0).var().item<double>(), 1 - ab, 0.01) << t;
  }
  // No noise: a deterministic chain that ends near u_y.
  auto d = m.inference_step(10, u.slice(0, 0, 1), u.slice(0, 0, 1) * std::sqrt(m.schedule().alpha_bar(9)), {});
  EXPECT_NEAR(d[0][0].item<double>(), std::sqrt(0.999), 1e-5);
}

// Algorithm 1's sequential order: pass p updates block p+1 (and the head) and no other block.
TEST(DT, SequentialPassTouchesOnlyItsBlock) {
  Config c = tiny_cfg("dt");
  c.block_order = "sequential";
  torch::manual_seed(4);
  NoPropNet net(c, tiny_info(), torch::Tensor());
  DTMethod m(c, net);
  EXPECT_EQ(m.passes_per_epoch(), 3);
  std::vector<torch::Tensor> before;
  for (int t = 1; t <= 3; ++t) before.push_back(net->block_as<DenoiseBlockImpl>(t)->fused->parameters()[0].clone());
  auto head_before = net->head->fc->weight.clone();
  auto x = torch::randn({6, 1, 8, 8});
  auto y = torch::tensor({0, 1, 2, 3, 0, 1}, torch::kInt64);
  auto losses = m.train_step(x, y, 1);
  ASSERT_EQ(losses.size(), m.loss_names().size());
  EXPECT_FALSE(losses[0].defined());
  EXPECT_TRUE(losses[1].defined());
  EXPECT_FALSE(losses[2].defined());
  EXPECT_TRUE(torch::equal(before[0], net->block_as<DenoiseBlockImpl>(1)->fused->parameters()[0]));
  EXPECT_FALSE(torch::equal(before[1], net->block_as<DenoiseBlockImpl>(2)->fused->parameters()[0]));
  EXPECT_TRUE(torch::equal(before[2], net->block_as<DenoiseBlockImpl>(3)->fused->parameters()[0]));
  EXPECT_FALSE(torch::equal(head_before, net->head->fc->weight));
  // total = block 2's loss + CE + KL
  double total = losses[1].item<double>() + losses[3].item<double>() + losses[4].item<double>();
  EXPECT_NEAR(losses.back().item<double>(), total, 1e-5);
}

// CE on z_T ~ q(z_T|y) and the KL term as the step reports them (one-hot, T = 3).
TEST(DT, InterleavedStepReportsAllTerms) {
  Config c = tiny_cfg("dt");
  c.head_init = "random";
  torch::manual_seed(5);
  DTMethod m(c, NoPropNet(c, tiny_info(), torch::Tensor()));
  auto x = torch::randn({6, 1, 8, 8});
  auto y = torch::tensor({0, 1, 2, 3, 0, 1}, torch::kInt64);
  auto l = m.train_step(x, y, 0);
  ASSERT_EQ(l.size(), 6u);
  for (const auto& v : l) EXPECT_TRUE(v.defined());
  // One-hot: ‖u_y‖² = 1, d = 4 → KL = ½ [4(−ᾱ_0 − ln(1 − ᾱ_0)) + ᾱ_0].
  double ab0 = m.schedule().alpha_bar(0);
  EXPECT_NEAR(l[4].item<double>(), 0.5 * (4 * (-ab0 - std::log1p(-ab0)) + ab0), 1e-7);
  EXPECT_GT(l[3].item<double>(), 0.5);  // an untrained random head is near ln 4
  EXPECT_LT(l[3].item<double>(), 3.0);
  // The nearest-embedding head reads z_T ≈ u_y (ᾱ_T = 0.999) right from the start:
  // CE ≈ −ln(e⁵ / (e⁵ + 3)) = 0.020.
  c.head_init = "embedding";
  torch::manual_seed(5);
  DTMethod e(c, NoPropNet(c, tiny_info(), torch::Tensor()));
  EXPECT_LT(e.train_step(x, y, 0)[3].item<double>(), 0.1);
}

// stacked_blocks computes every block's step as one forward and backward over the blocks'
// stacked weights: without dropout it takes the steps of per_batch block by block, for both
// architectures, one-hot, learned and prototype embeddings, with LibTorch's ops and with the
// fused CPU kernels. The first step starts from the same weights: the same losses and batch-norm
// statistics up to rounding (grouped against separate convolutions), and the same parameters
// after it but for a few elements — AdamW's first step is ±lr per element, so an element whose
// gradient is ~0 may move the other way. Two more steps drift apart by little (up to 0.2 % seen).
TEST(DT, StackedBlocksTakeThePerBatchSteps) {
  for (const std::string arch : {"seed", "paper"})
    for (const std::string embedding : {"one-hot", "learned", "prototype"})
      for (const std::string kernels : {"torch", "fused"}) {
        if (arch == "paper" && kernels == "fused" && embedding != "one-hot") continue;  // enough cases
        const std::string what = arch + ", " + embedding + ", " + kernels;
        Config c = tiny_cfg("dt");
        c.architecture = arch, c.embedding = embedding, c.kernels = kernels, c.conv_precision = "fp32";
        if (embedding == "learned") c.embedding_dim = 6;
        c.dropout = 0.0, c.shared_update = "per_batch", c.grad_clip_max_norm = 1.0;
        const auto prototypes = embedding == "prototype" ? torch::rand({4, 64}) : torch::Tensor();
        std::vector<NoPropNet> nets;
        std::vector<std::unique_ptr<DTMethod>> methods;
        for (bool stacked : {false, true}) {
          c.stacked_blocks = stacked;
          torch::manual_seed(6);
          nets.push_back(NoPropNet(c, tiny_info(), prototypes));
          methods.push_back(std::make_unique<DTMethod>(c, nets.back()));
        }
        for (int step = 0; step < 3; ++step) {
          const auto x = torch::randn({6, 1, 8, 8});
          const auto y = torch::tensor({0, 1, 2, 3, 0, step % 4}, torch::kInt64);
          std::vector<std::vector<torch::Tensor>> losses;
          for (auto& m : methods) {
            torch::manual_seed(7 + step);
            losses.push_back(m->train_step(x, y, 0));
          }
          const double rel = step == 0 ? 1e-5 : 1e-2;
          ASSERT_EQ(losses[0].size(), losses[1].size());
          for (size_t i = 0; i < losses[0].size(); ++i) {
            ASSERT_TRUE(losses[0][i].defined() && losses[1][i].defined()) << what;
            EXPECT_TRUE(torch::allclose(losses[0][i], losses[1][i], rel, 1e-7))
                << what << ", step " << step + 1 << ", loss " << i << ": " << losses[0][i].item<double>()
                << " block by block, " << losses[1][i].item<double>() << " stacked";
          }
          if (step > 0) continue;
          const auto pa = nets[0]->named_parameters(), pb = nets[1]->named_parameters();
          int64_t off = 0, total = 0;
          for (const auto& p : pa) {
            off += (p.value() - pb[p.key()]).abs().gt(1e-4).sum().item<int64_t>();
            total += p.value().numel();
          }
          EXPECT_LE(off, total / 1000) << what << ": " << off << " of " << total
                                       << " parameters differ by more than 1e-4 after a step";
          const auto ba = nets[0]->named_buffers(), bb = nets[1]->named_buffers();
          for (const auto& p : ba)
            EXPECT_TRUE(torch::allclose(p.value().to(torch::kDouble), bb[p.key()].to(torch::kDouble), 1e-5, 1e-6))
                << what << ", buffer " << p.key();
        }
      }
}

// stacked_blocks needs per_batch; per_batch needs the interleaved order.
TEST(DT, StackedBlocksAndPerBatchRefuseOtherModes) {
  Config c = tiny_cfg("dt");
  c.stacked_blocks = true;
  EXPECT_NE(test::error_of([&] {
              DTMethod m(c, NoPropNet(c, tiny_info(), torch::Tensor()));
            }).find("config key 'stacked_blocks': needs shared_update: per_batch"),
            std::string::npos);
  c.stacked_blocks = false, c.shared_update = "per_batch", c.block_order = "sequential";
  EXPECT_NE(test::error_of([&] {
              DTMethod m(c, NoPropNet(c, tiny_info(), torch::Tensor()));
            }).find("config key 'shared_update': per_batch trains every block on every batch"),
            std::string::npos);
}

// Inference of a batch above kInferenceChunk rows runs in pieces; without noise every image's
// result is its own, so it must equal inference of the halves, each done in one piece.
TEST(Methods, ChunkedInferenceEqualsWholeBatches) {
  const int64_t n = kInferenceChunk + 44;
  for (std::string method : {"dt", "backprop"}) {
    Config c = tiny_cfg(method);
    torch::manual_seed(13);
    auto m = make_method(c, tiny_info(), nullptr, torch::kCPU);
    m->set_training(false);
    auto x = torch::randn({n, 1, 8, 8});
    InferenceOptions opt;
    opt.noise = false;
    auto gen = at::make_generator<at::CPUGeneratorImpl>(1);
    auto whole = m->predict(x, opt, gen);
    auto halves = torch::cat({m->predict(x.slice(0, 0, n / 2), opt, gen), m->predict(x.slice(0, n / 2), opt, gen)});
    ASSERT_EQ(whole.sizes(), halves.sizes());
    EXPECT_TRUE(torch::allclose(whole, halves, 1e-5, 1e-6)) << method;
  }
}

// Eq. 17-19: z_t = (1 − α_t) z_{t−1} + α_t û_t with α_t = tanh(w_t), computed by hand here.
TEST(Backprop, ForwardMatchesRecurrence) {
  Config c = tiny_cfg("backprop");
  c.alpha_init = 0.3;
  torch::manual_seed(6);
  NoPropNet net(c, tiny_info(), torch::Tensor());
  BackpropMethod m(c, net);
  m.set_training(false);
  EXPECT_NEAR(torch::tanh(m.model()->w[0]).item<double>(), 0.3, 1e-6);
  auto x = torch::randn({5, 1, 8, 8});
  auto z = torch::randn({5, 4});
  auto z0 = z.clone();
  torch::NoGradGuard g;
  for (int t = 1; t <= 3; ++t) z = 0.7 * z + 0.3 * torch::softmax(net->block(t)->forward(x, z), 1);
  auto expected = torch::log_softmax(net->head->fc->forward(z), 1);
  EXPECT_TRUE(torch::allclose(m.model()->forward(x, z0), expected, 1e-5, 1e-6));
  EXPECT_EQ(m.loss_names(), (std::vector<std::string>{"loss_ce", "loss_total"}));
}

TEST(Backprop, StepUpdatesEveryBlockAndAlpha) {
  Config c = tiny_cfg("backprop");
  torch::manual_seed(7);
  NoPropNet net(c, tiny_info(), torch::Tensor());
  BackpropMethod m(c, net);
  auto w_before = m.model()->w.clone();
  auto b1 = net->block_as<DenoiseBlockImpl>(1)->fused->parameters()[0].clone();
  m.train_step(torch::randn({6, 1, 8, 8}), torch::tensor({0, 1, 2, 3, 0, 1}, torch::kInt64), 0);
  EXPECT_FALSE(torch::equal(w_before, m.model()->w));
  EXPECT_FALSE(torch::equal(b1, net->block_as<DenoiseBlockImpl>(1)->fused->parameters()[0]));
}

TEST(Methods, ClipGradNorm) {
  auto a = torch::zeros({2}, torch::requires_grad()), b = torch::zeros({1}, torch::requires_grad());
  a.mutable_grad() = torch::tensor({3.0f, 0.0f});
  b.mutable_grad() = torch::tensor({4.0f});
  clip_grad_norm({a, b}, 1.0);  // total norm 5 → scaled by ~1/5
  EXPECT_NEAR(a.grad()[0].item<double>(), 0.6, 1e-5);
  EXPECT_NEAR(b.grad()[0].item<double>(), 0.8, 1e-5);
  clip_grad_norm({a, b}, 10.0);  // under the limit: unchanged
  EXPECT_NEAR(b.grad()[0].item<double>(), 0.8, 1e-5);
}

// A NaN batch: every method refuses the update, names the parts it skipped, leaves weights and
// optimizer state as they were, and reports no loss for them; the next finite step trains.
TEST(Methods, NonFiniteStepIsSkipped) {
  auto x = torch::randn({6, 1, 8, 8});
  auto y = torch::tensor({0, 1, 2, 3, 0, 1}, torch::kInt64);
  auto bad = torch::full_like(x, NAN);
  for (std::string method : {"dt", "backprop", "ct", "fm"}) {
    Config c = tiny_cfg(method);
    torch::manual_seed(21);
    auto m = make_method(c, tiny_info(), nullptr, torch::kCPU);
    m->train_step(x, y, 0);  // optimizer state exists from here on
    std::vector<torch::Tensor> before;
    for (const auto& p : m->parameters()) before.push_back(p.detach().clone());
    auto losses = m->train_step(bad, y, 0);
    for (const auto& l : losses) EXPECT_FALSE(l.defined()) << method;
    auto parts = m->take_nonfinite();
    if (method == "dt")
      EXPECT_EQ(parts, (std::vector<std::string>{"block 1", "block 2", "block 3"}));
    else
      EXPECT_EQ(parts.size(), 1u) << method;
    EXPECT_TRUE(m->take_nonfinite().empty());
    auto params = m->parameters();
    for (size_t i = 0; i < params.size(); ++i) EXPECT_TRUE(torch::equal(before[i], params[i])) << method << " " << i;
    // Had the optimizer stepped on zero gradients, Adam's momentum would still move the weights:
    // one more finite step must move them (the state survived).
    losses = m->train_step(x, y, 0);
    EXPECT_TRUE(losses.back().defined()) << method;
    EXPECT_TRUE(m->take_nonfinite().empty());
  }
}
