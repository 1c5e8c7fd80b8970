#include <gtest/gtest.h>

#include <cmath>

#include "noprop/embeddings.h"

using namespace noprop;

TEST(Embeddings, OneHotIsIdentityAndFixed) {
  ClassEmbedding e("one-hot", 10, 0);
  EXPECT_TRUE(torch::equal(e->weight, torch::eye(10)));
  EXPECT_FALSE(e->learned);
  EXPECT_TRUE(e->parameters().empty());
  auto u = e->forward(torch::tensor({3, 7}, torch::kInt64));
  EXPECT_EQ(u[0][3].item<float>(), 1.0f);
  EXPECT_EQ(u[1].sum().item<float>(), 1.0f);
}

TEST(Embeddings, LearnedOrthogonalWhenRoomy) {
  torch::manual_seed(1);
  ClassEmbedding e("learned", 10, 20);
  EXPECT_TRUE(e->learned);
  EXPECT_EQ(e->parameters().size(), 1u);
  auto gram = e->weight.matmul(e->weight.t());
  EXPECT_TRUE(torch::allclose(gram, torch::eye(10), 1e-4, 1e-5));
  ClassEmbedding r("learned", 100, 20);  // m > d: random
  EXPECT_EQ(r->weight.sizes(), (std::vector<int64_t>{100, 20}));
}

// KL(N(μ, σ²I) ‖ N(0, I)) = ½ Σ (σ² + μ² − 1 − ln σ²), with μ = √ᾱ_0 u_y and σ² = 1 − ᾱ_0.
TEST(Embeddings, KlMatchesGaussianFormula) {
  torch::manual_seed(2);
  ClassEmbedding e("learned", 5, 3);
  auto y = torch::tensor({0, 4, 2}, torch::kInt64);
  const double ab0 = 0.05;
  double expected = 0;
  for (int i = 0; i < 3; ++i) {
    auto u = e->weight[y[i].item<int64_t>()];
    for (int k = 0; k < 3; ++k) {
      double mu = std::sqrt(ab0) * u[k].item<double>(), var = 1 - ab0;
      expected += 0.5 * (var + mu * mu - 1 - std::log(var));
    }
  }
  EXPECT_NEAR(e->kl(y, ab0).item<double>(), expected / 3, 1e-6);
}

TEST(Embeddings, RadialHeadByHand) {
  Head h("radial", 2, 2, 0.5);
  torch::NoGradGuard g;
  h->fc->weight.copy_(torch::tensor({{1.0f, 0.0f}, {0.0f, 1.0f}}));
  h->fc->bias.zero_();
  auto W = torch::tensor({{1.0f, 0.0f}, {0.0f, 1.0f}});
  auto z = torch::tensor({{2.0f, 0.0f}});
  // softmax([2, 0]) = [p, 1−p]; ỹ = [p, 1−p]; distances² to e_0, e_1: 2(1−p)², 2p².
  double p = std::exp(2.0) / (std::exp(2.0) + 1);
  double l0 = -2 * (1 - p) * (1 - p) / 0.5, l1 = -2 * p * p / 0.5;
  double lse = std::log(std::exp(l0) + std::exp(l1));
  auto lp = h->log_prob(z, W);
  EXPECT_NEAR(lp[0][0].item<double>(), l0 - lse, 1e-5);
  EXPECT_NEAR(lp[0][1].item<double>(), l1 - lse, 1e-5);
  Head s("softmax", 2, 2, 1.0);
  EXPECT_NEAR(s->log_prob(z, W).exp().sum().item<double>(), 1.0, 1e-6);
}

TEST(Embeddings, PrototypeIsMedoidLike) {
  // Class 0: points 0, 1, 2, 10 on a line → medians of distances to others: 2, 1, 2, 9 → index 1.
  // Class 1: points 100, 103 → tie, first one.
  auto images = torch::tensor({0.0f, 100.0f, 1.0f, 2.0f, 103.0f, 10.0f}).view({6, 1, 1, 1});
  auto labels = torch::tensor({0, 1, 0, 0, 1, 0}, torch::kInt64);
  auto idx = select_prototypes(images, labels, 2);
  EXPECT_EQ(idx[0].item<int64_t>(), 2);
  EXPECT_EQ(idx[1].item<int64_t>(), 1);
  ClassEmbedding e("prototype", 2, 1, images.index_select(0, idx));
  EXPECT_EQ(e->weight[0][0].item<float>(), 1.0f);
  EXPECT_TRUE(e->learned);
}

// CE = −log p̂(y | z) of the softmax head, by hand: logits W z + b = [1, 3, 0] for z = (1, 1).
TEST(Embeddings, SoftmaxHeadCrossEntropyByHand) {
  Head h("softmax", 2, 3, 1.0);
  torch::NoGradGuard g;
  h->fc->weight.copy_(torch::tensor({{1.0f, 0.0f}, {1.0f, 2.0f}, {0.0f, 0.0f}}));
  h->fc->bias.zero_();
  auto z = torch::tensor({{1.0f, 1.0f}, {1.0f, 1.0f}});
  auto y = torch::tensor({1, 2}, torch::kInt64);
  double lse = std::log(std::exp(1.0) + std::exp(3.0) + 1.0);
  double expected = ((lse - 3.0) + (lse - 0.0)) / 2;
  EXPECT_NEAR(torch::nll_loss(h->log_prob(z, torch::eye(3)), y).item<double>(), expected, 1e-6);
}
