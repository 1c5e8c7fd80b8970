// NoProp-CT, NoProp-FM and the ODE integration they share.
#include <gtest/gtest.h>

#include <cmath>

#include "noprop/blocks/conv.h"
#include "noprop/methods/ct.h"
#include "noprop/methods/fm.h"
#include "noprop/util.h"
#include "test_util.h"

using namespace noprop;

namespace {
using test::tiny_info;

Config tiny_cfg(const std::string& method) {
  Config c = test::tiny_method_config(method);
  c.optimizer = "adam";
  c.eta = 1.0;
  return c;
}

// Integrates dz/dt = λ z (z(0) = 1) and returns |z(1) − e^λ|.
double linear_error(int steps, const std::string& solver) {
  const double lambda = -1.5;
  auto z = torch::ones({1}, torch::kFloat64);
  z = integrate_ode(z, steps, parse_solver(solver), [&](const torch::Tensor& zk, int) { return lambda * zk; });
  return std::abs(z.item<double>() - std::exp(lambda));
}
}  // namespace

// Halving the step divides the error by 2 for Euler (first order) and by 4 for Heun.
TEST(Ode, EulerAndHeunConvergeAtTheirOrder) {
  const double e1 = linear_error(20, "euler"), e2 = linear_error(40, "euler");
  const double h1 = linear_error(20, "heun"), h2 = linear_error(40, "heun");
  EXPECT_NEAR(e1 / e2, 2.0, 0.15);
  EXPECT_NEAR(h1 / h2, 4.0, 0.3);
  EXPECT_LT(h2, e2 / 50);
  // A field that depends only on time: dz/dt = 2t. Heun (the trapezoid rule) is exact; Euler
  // uses the left end of each interval and falls short by h.
  auto field = [](const torch::Tensor& z, int k) { return torch::full_like(z, 2.0 * k / 10.0); };
  auto zero = torch::zeros({1}, torch::kFloat64);
  EXPECT_NEAR(integrate_ode(zero, 10, Solver::heun, field).item<double>(), 1.0, 1e-12);
  EXPECT_NEAR(integrate_ode(zero, 10, Solver::euler, field).item<double>(), 0.9, 1e-12);
  EXPECT_THROW(parse_solver("rk4"), Error);
}

// With a perfect denoiser (û = u_y) both CT samplers carry z_0 ~ q(z_0 | y) to q(z_1 | y) =
// N(√ᾱ(1) u_y, 1 − ᾱ(1)), for a random learned schedule whose clean end is moved to
// ᾱ(1) = 0.5 or sigmoid(3), so the check is not dominated by ᾱ ≈ 1. (Inference starts from
// N(0, I) instead, which differs from q(z_0 | y) by ᾱ(0) = 0.001.)
TEST(CT, PerfectDenoiserReproducesMarginals) {
  Config c = tiny_cfg("ct");
  torch::manual_seed(11);
  CTMethod m(c, NoPropNet(c, tiny_info(), torch::Tensor()));
  {
    torch::NoGradGuard g;
    for (auto& p : m.schedule()->parameters()) p.add_(torch::randn_like(p));
  }
  const int64_t n = 100000;
  auto u = torch::zeros({n, 2});
  u.select(1, 0).fill_(1.0);
  auto perfect = [&](const torch::Tensor&, const torch::Tensor&) { return u; };
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  struct Case {
    double gamma0;
    const char* sampler;
    const char* solver;
    int steps;
  };
  for (Case k : {Case{0.0, "ancestral", "euler", 7}, Case{-3.0, "ancestral", "euler", 100},
                 Case{0.0, "flow", "heun", 200}, Case{-3.0, "flow", "euler", 1000}}) {
    {
      torch::NoGradGuard g;
      m.schedule()->gamma0.fill_(k.gamma0);
      m.schedule()->gamma1.fill_(6.9);
    }
    const double ab0 = 1 / (1 + std::exp(6.9));
    auto z0 = std::sqrt(ab0) * u + std::sqrt(1 - ab0) * torch::randn({n, 2}, gen);
    auto z =
        m.sample(perfect, z0, InferenceOptions{true, k.steps, parse_solver(k.solver), parse_sampler(k.sampler)}, gen);
    const double ab = 1 / (1 + std::exp(k.gamma0));
    const std::string what = std::string(k.sampler) + " " + k.solver + " " + std::to_string(k.steps);
    EXPECT_NEAR(z.select(1, 0).mean().item<double>(), std::sqrt(ab), 0.01) << what;
    EXPECT_NEAR(z.select(1, 1).mean().item<double>(), 0.0, 0.01) << what;
    EXPECT_NEAR(z.select(1, 0).var().item<double>(), 1 - ab, 0.01) << what;
    EXPECT_NEAR(z.select(1, 1).var().item<double>(), 1 - ab, 0.01) << what;
  }
}

// The loss terms the step reports: the KL on the learned ᾱ(0), CE near ln 4 for an untrained
// head, and a total that is their sum; every parameter group moves.
TEST(CT, StepReportsItsTermsAndTrainsEveryGroup) {
  Config c = tiny_cfg("ct");
  c.head_init = "random";  // CE of an untrained head near ln 4 (the embedding head starts near 0)
  torch::manual_seed(12);
  NoPropNet net(c, tiny_info(), torch::Tensor());
  CTMethod m(c, net);
  auto g0 = m.schedule()->gamma0.clone(), w = m.schedule()->w1_raw.clone();
  auto head = net->head->fc->weight.clone(), block = net->cblock_as<ContinuousBlockImpl>()->fused_in->weight.clone();
  auto l = m.train_step(torch::randn({6, 1, 8, 8}), torch::tensor({0, 1, 2, 3, 0, 1}, torch::kInt64), 0);
  ASSERT_EQ(l.size(), m.loss_names().size());
  const double ab0 = 1e-3;  // the initial ᾱ(0)
  EXPECT_NEAR(l[2].item<double>(), 0.5 * (4 * (-ab0 - std::log1p(-ab0)) + ab0), 1e-6);
  EXPECT_GT(l[1].item<double>(), 0.5);
  EXPECT_LT(l[1].item<double>(), 3.0);
  EXPECT_NEAR(l[3].item<double>(), l[0].item<double>() + l[1].item<double>() + l[2].item<double>(), 1e-4);
  EXPECT_FALSE(torch::equal(g0, m.schedule()->gamma0));
  EXPECT_FALSE(torch::equal(w, m.schedule()->w1_raw));
  EXPECT_FALSE(torch::equal(head, net->head->fc->weight));
  EXPECT_FALSE(torch::equal(block, net->cblock_as<ContinuousBlockImpl>()->fused_in->weight));
}

// ‖v − (z_1 − z_0)‖² is zero for the exact field and matches a hand computation otherwise.
TEST(FM, FlowLossZeroForExactField) {
  auto z0 = torch::randn({8, 5}), z1 = torch::randn({8, 5});
  EXPECT_EQ(FMMethod::flow_loss(z1 - z0, z0, z1).item<double>(), 0.0);
  auto z0b = torch::zeros({2, 2}), z1b = torch::tensor({{1.0f, 0.0f}, {0.0f, 1.0f}});
  auto v = torch::tensor({{0.0f, 0.0f}, {0.0f, 3.0f}});
  EXPECT_NEAR(FMMethod::flow_loss(v, z0b, z1b).item<double>(), (1.0 + 4.0) / 2, 1e-6);
}

TEST(FM, PredictsTheNearestEmbedding) {
  auto W = torch::tensor({{0.0f, 0.0f}, {1.0f, 0.0f}, {0.0f, 2.0f}});
  auto z = torch::tensor({{0.9f, 0.1f}, {0.1f, 1.5f}, {0.2f, -0.1f}});
  auto s = FMMethod::nearest_embedding_scores(z, W);
  EXPECT_TRUE(torch::equal(s.argmax(1), torch::tensor({1, 2, 0}, torch::kInt64)));
  EXPECT_NEAR(s.exp().sum(1)[0].item<double>(), 1.0, 1e-6);
}

// One-hot FM trains only the network (the head is unused); learned embeddings add the anchor
// and train the head and embeddings too.
TEST(FM, AnchorOnlyWithLearnedEmbeddings) {
  torch::manual_seed(13);
  auto x = torch::randn({6, 1, 8, 8});
  auto y = torch::tensor({0, 1, 2, 3, 0, 1}, torch::kInt64);
  Config c = tiny_cfg("fm");
  NoPropNet net(c, tiny_info(), torch::Tensor());
  FMMethod m(c, net);
  auto l = m.train_step(x, y, 0);
  EXPECT_EQ(l[1].item<double>(), 0.0);
  EXPECT_EQ(m.parameter_count(), [&] {
    int64_t k = 0;
    for (const auto& p : net->cblock->parameters()) k += p.numel();
    return k;
  }());
  c.embedding = "learned", c.embedding_dim = 6;
  NoPropNet net2(c, tiny_info(), torch::Tensor());
  FMMethod m2(c, net2);
  auto W = net2->embed->weight.clone(), head = net2->head->fc->weight.clone();
  l = m2.train_step(x, y, 0);
  EXPECT_GT(l[1].item<double>(), 0.1);
  EXPECT_NEAR(l[2].item<double>(), l[0].item<double>() + l[1].item<double>(), 1e-4);
  EXPECT_FALSE(torch::equal(W, net2->embed->weight));
  EXPECT_FALSE(torch::equal(head, net2->head->fc->weight));
}

// Prototype embeddings (z has the image's shape and its own conv path) work for both methods:
// a step trains the embeddings, and predict gives one score per class.
TEST(Continuous, PrototypeEmbeddings) {
  torch::manual_seed(14);
  auto protos = torch::rand({4, 1, 8, 8});
  auto x = torch::randn({6, 1, 8, 8});
  auto y = torch::tensor({0, 1, 2, 3, 0, 1}, torch::kInt64);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1);
  for (std::string method : {"ct", "fm"}) {
    Config c = tiny_cfg(method);
    c.embedding = "prototype";
    NoPropNet net(c, tiny_info(), protos);
    ASSERT_TRUE(bool(net->cblock_as<ContinuousBlockImpl>()->label_conv)) << method;
    std::unique_ptr<Method> m;
    if (method == "ct")
      m = std::make_unique<CTMethod>(c, net);
    else
      m = std::make_unique<FMMethod>(c, net);
    auto W = net->embed->weight.clone();
    EXPECT_EQ(W.sizes(), (std::vector<int64_t>{4, 64}));
    m->train_step(x, y, 0);
    EXPECT_FALSE(torch::equal(W, net->embed->weight)) << method;
    m->set_training(false);
    auto s = m->predict(x, InferenceOptions{true, 4, Solver::heun, Sampler::flow}, gen);
    EXPECT_EQ(s.sizes(), (std::vector<int64_t>{6, 4})) << method;
    EXPECT_TRUE(torch::isfinite(s).all().item<bool>()) << method;
  }
}
