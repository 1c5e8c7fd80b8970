// The choices the paper leaves open that decide how fast the methods learn: the head's
// initialisation, NoProp-DT's readout, the gradient-clipping groups and the learning-rate
// schedule. Expected values are computed here independently of the library's code paths.
#include <gtest/gtest.h>

#include <cmath>

#include "noprop/methods/backprop.h"
#include "noprop/methods/dt.h"
#include "noprop/trainer.h"
#include "test_util.h"

using namespace noprop;
using noprop::test::error_of;
using noprop::test::tiny_info;

namespace {
Config tiny_cfg(const std::string& method) { return test::tiny_method_config(method); }
}  // namespace

// One-hot: the nearest-embedding head is β·I with bias −β/2, so corner k reads as class k
// (a permutation-free readout, whatever the seed).
TEST(HeadInit, OneHotIsScaledIdentity) {
  for (int seed : {1, 2, 3}) {
    Config c = tiny_cfg("backprop");
    c.head_init_scale = 5.0;
    torch::manual_seed(seed);
    NoPropNet net(c, tiny_info(), torch::Tensor());
    EXPECT_TRUE(torch::allclose(net->head->fc->weight, 5.0 * torch::eye(4))) << net->head->fc->weight;
    EXPECT_TRUE(torch::allclose(net->head->fc->bias, torch::full({4}, -2.5))) << net->head->fc->bias;
    auto corners = net->head->log_prob(torch::eye(4), net->embed->weight).argmax(1);
    EXPECT_TRUE(torch::equal(corners, torch::arange(4))) << corners;
    // p(k | z = e_k) = e^5 / (e^5 + 3).
    const double p = std::exp(net->head->log_prob(torch::eye(4), net->embed->weight)[2][2].item<double>());
    EXPECT_NEAR(p, std::exp(5.0) / (std::exp(5.0) + 3), 1e-5);
  }
}

// Learned embeddings: logit_k = −β ‖z − u_k‖² / (2 r²) + (the same for every k), r² = mean ‖u_k‖².
TEST(HeadInit, LearnedEmbeddingFormula) {
  Config c = tiny_cfg("dt");
  c.embedding = "learned";
  c.embedding_dim = 6;
  c.head_init_scale = 3.0;
  torch::manual_seed(7);
  NoPropNet net(c, tiny_info(), torch::Tensor());
  auto u = net->embed->weight.detach().to(torch::kFloat64);
  double r2 = 0;
  for (int k = 0; k < 4; ++k) r2 += u[k].pow(2).sum().item<double>() / 4;
  auto z = torch::randn({5, 6}, torch::kFloat64);
  auto logits = net->head->fc->forward(z.to(torch::kFloat32)).to(torch::kFloat64);
  for (int i = 0; i < 5; ++i)
    for (int k = 1; k < 4; ++k) {
      const double dk = (z[i] - u[k]).pow(2).sum().item<double>(), d0 = (z[i] - u[0]).pow(2).sum().item<double>();
      EXPECT_NEAR((logits[i][k] - logits[i][0]).item<double>(), -3.0 * (dk - d0) / (2 * r2), 1e-4) << i << " " << k;
    }
}

// head_init: random keeps LibTorch's Linear init, and either choice leaves every other
// parameter as the same seed draws it.
TEST(HeadInit, RandomKeepsOtherParameters) {
  Config a = tiny_cfg("dt"), b = tiny_cfg("dt");
  b.head_init = "random";
  torch::manual_seed(11);
  NoPropNet na(a, tiny_info(), torch::Tensor());
  torch::manual_seed(11);
  NoPropNet nb(b, tiny_info(), torch::Tensor());
  EXPECT_FALSE(torch::allclose(nb->head->fc->weight, 5.0 * torch::eye(4)));
  for (int t = 1; t <= 3; ++t) {
    auto pa = na->block(t)->parameters(), pb = nb->block(t)->parameters();
    ASSERT_EQ(pa.size(), pb.size());
    for (std::size_t i = 0; i < pa.size(); ++i) EXPECT_TRUE(torch::equal(pa[i], pb[i])) << t << " " << i;
  }
}

// readout: blocks averages softmax(logits_t) over the T blocks of the Eq. 3 chain; worked here
// from the blocks themselves, without noise, with a_t, b_t from the schedule.
TEST(Readout, BlocksIsTheMeanOfTheBlocksProbabilities) {
  Config c = tiny_cfg("dt");
  torch::manual_seed(5);
  NoPropNet net(c, tiny_info(), torch::Tensor());
  DTMethod m(c, net);
  m.set_training(false);
  auto x = torch::randn({6, 1, 8, 8});
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1);
  InferenceOptions opt;
  opt.noise = false;
  opt.readout = Readout::blocks;
  auto got = m.predict(x, opt, gen);

  torch::NoGradGuard no_grad;
  auto z = torch::zeros({6, 4});
  auto sum = torch::zeros({6, 4});
  for (int t = 1; t <= 3; ++t) {
    auto p = torch::softmax(net->block(t)->forward(x, z), 1);
    sum += p;
    z = m.schedule().a(t) * p + m.schedule().b(t) * z;  // one-hot: û = p
  }
  EXPECT_TRUE(torch::allclose(got, torch::log(sum / 3), 1e-5, 1e-6)) << got << torch::log(sum / 3);
  // The head readout of the same chain differs (it reads z_T through the head).
  opt.readout = Readout::head;
  auto head = m.predict(x, opt, gen);
  EXPECT_TRUE(torch::allclose(head, net->head->log_prob(z, net->embed->weight), 1e-5, 1e-6));
  EXPECT_FALSE(torch::allclose(head, got));
}

namespace {
// Exposes the clipping step to the test.
struct ClipProbe : DTMethod {
  using DTMethod::clip_and_check_grads;
  using DTMethod::DTMethod;
};
}  // namespace

// Each group is clipped to its own norm: a large gradient in one group leaves the other's alone.
TEST(Clipping, GroupsAreClippedApart) {
  Config c = tiny_cfg("dt");
  ClipProbe m(c, NoPropNet(c, tiny_info(), torch::Tensor()));
  auto big = torch::full({4}, 5.0f);     // norm 10
  auto small = torch::full({4}, 0.05f);  // norm 0.1
  ASSERT_TRUE(m.clip_and_check_grads({{big}, {small}}, std::vector<double>{1.0, 1.0}, torch::zeros({}), "x"));
  EXPECT_NEAR(big.norm().item<double>(), 1.0, 1e-4);
  EXPECT_NEAR(small.norm().item<double>(), 0.1, 1e-6);
  // A joint clip, for contrast, shrinks both by 1 / ‖(10, 0.1)‖.
  auto a = torch::full({4}, 5.0f), b = torch::full({4}, 0.05f);
  ASSERT_TRUE(m.clip_and_check_grads({{a, b}}, 1.0, torch::zeros({}), "x"));
  EXPECT_NEAR(b.norm().item<double>(), 0.1 / std::sqrt(100.01), 1e-6);
}

// Block t's clip: the configured norm, or that norm times the block's loss weight; the head and
// the embeddings keep the configured norm.
TEST(Clipping, ScaledWithTheLossWeight) {
  Config c = tiny_cfg("dt");
  c.num_layers = 10;
  c.eta = 0.1;
  c.grad_clip_max_norm = 2.0;
  DTMethod plain(c, NoPropNet(c, tiny_info(), torch::Tensor()));
  EXPECT_EQ(plain.clip_norms(10), (std::vector<double>{2.0, 2.0, 2.0}));
  c.grad_clip_scaling = "loss_weight";
  DTMethod scaled(c, NoPropNet(c, tiny_info(), torch::Tensor()));
  // ½ · 10 · 0.1 · ΔSNR(10), ΔSNR(10) = 964.1670 (docs/method.md's table).
  EXPECT_NEAR(scaled.clip_norms(10)[0], 2.0 * 0.5 * 964.1670, 0.01);
  EXPECT_NEAR(scaled.clip_norms(1)[0], 2.0 * 0.5 * 0.0237, 1e-3);
  EXPECT_EQ(scaled.clip_norms(1)[1], 2.0);
  EXPECT_EQ(scaled.clip_norms(1)[2], 2.0);
}

TEST(LearningRate, WarmupThenCosine) {
  Config c;
  c.learning_rate = 1e-3;
  c.epochs = 10;
  // Constant, no warm-up: every step at the configured rate.
  EXPECT_DOUBLE_EQ(learning_rate_at(c, 0, 100), 1e-3);
  EXPECT_DOUBLE_EQ(learning_rate_at(c, 999, 100), 1e-3);
  c.warmup_epochs = 1;  // 100 steps
  EXPECT_NEAR(learning_rate_at(c, 0, 100), 1e-5, 1e-12);
  EXPECT_NEAR(learning_rate_at(c, 49, 100), 5e-4, 1e-12);
  EXPECT_DOUBLE_EQ(learning_rate_at(c, 100, 100), 1e-3);
  c.lr_schedule = "cosine";
  EXPECT_NEAR(learning_rate_at(c, 100, 100), 1e-3, 1e-12);    // decay starts after the warm-up
  EXPECT_NEAR(learning_rate_at(c, 550, 100), 0.5e-3, 1e-12);  // half-way through the decay
  EXPECT_NEAR(learning_rate_at(c, 999, 100), 1e-3 * 0.5 * (1 + std::cos(M_PI * 899.0 / 900)), 1e-12);
}

// set_learning_rate reaches every optimizer of a method (T blocks + the shared one for DT).
TEST(LearningRate, ReachesEveryOptimizer) {
  Config c = tiny_cfg("dt");
  DTMethod m(c, NoPropNet(c, tiny_info(), torch::Tensor()));
  ASSERT_EQ(m.optimizers().size(), 4u);
  m.set_learning_rate(0.25);
  for (auto* o : m.optimizers())
    for (auto& g : o->param_groups()) EXPECT_DOUBLE_EQ(g.options().get_lr(), 0.25);
}

TEST(Config, TrainingChoiceKeys) {
  Config c;
  EXPECT_EQ(c.head_init, "embedding");
  auto msg = error_of([&] { apply_yaml(c, "head_init: identity\n", "x.yaml"); });
  EXPECT_NE(msg.find("x.yaml: config key 'head_init': 'identity' is not one of embedding, random"), std::string::npos)
      << msg;
  msg = error_of([&] { apply_yaml(c, "readout: mean\n", "x.yaml"); });
  EXPECT_NE(msg.find("config key 'readout'"), std::string::npos) << msg;
  msg = error_of([&] { apply_yaml(c, "lr_schedule: step\n", "x.yaml"); });
  EXPECT_NE(msg.find("config key 'lr_schedule'"), std::string::npos) << msg;
  msg = error_of([&] { apply_yaml(c, "grad_clip_scaling: per_block\n", "x.yaml"); });
  EXPECT_NE(msg.find("config key 'grad_clip_scaling'"), std::string::npos) << msg;
  msg = error_of([&] { apply_yaml(c, "head_init_scale: -1\n", "x.yaml"); });
  EXPECT_NE(msg.find("config key 'head_init_scale': must be between 0"), std::string::npos) << msg;
  msg = error_of([&] { apply_yaml(c, "checkpoint_every: -2\n", "x.yaml"); });
  EXPECT_NE(msg.find("config key 'checkpoint_every'"), std::string::npos) << msg;
  Config w;
  w.epochs = 2;
  w.warmup_epochs = 3;
  msg = error_of([&] { validate(w); });
  EXPECT_NE(msg.find("config key 'warmup_epochs': 3 is longer than the run (2 epochs)"), std::string::npos) << msg;
}

// The confusion matrix of an evaluation: rows are true classes, its diagonal the correct
// predictions, its total every image of every run.
TEST(Evaluate, ConfusionMatrix) {
  Config c = tiny_cfg("backprop");
  torch::manual_seed(2);
  BackpropMethod m(c, NoPropNet(c, tiny_info(), torch::Tensor()));
  Dataset d;
  d.images = torch::randn({50, 1, 8, 8});
  d.labels = torch::randint(0, 4, {50}, torch::kInt64);
  auto r = evaluate(m, d, 2, InferenceOptions{}, 0, 16, torch::kCPU);
  ASSERT_EQ(r.confusion.sizes(), (std::vector<int64_t>{4, 4}));
  EXPECT_EQ(r.confusion.sum().item<int64_t>(), 100);
  EXPECT_NEAR(r.confusion.diag().sum().item<double>(), (r.runs[0] + r.runs[1]) / 2, 1e-9);
  for (int k = 0; k < 4; ++k)
    EXPECT_EQ(r.confusion[k].sum().item<int64_t>(), 2 * (d.labels == k).sum().item<int64_t>()) << k;
}
