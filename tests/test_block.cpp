#include <gtest/gtest.h>

#include "noprop/blocks/conv.h"

using namespace noprop;

namespace {
int64_t count_params(torch::nn::Module& m) {
  int64_t n = 0;
  for (const auto& p : m.parameters()) n += p.numel();
  return n;
}
}  // namespace

TEST(Block, OutputShapesForEveryVariant) {
  struct Case {
    const char* arch;
    int c, h, d, m;
    bool image_label;
  };
  const Case cases[] = {{"paper", 1, 28, 10, 10, false},  {"seed", 1, 28, 10, 10, false},
                        {"paper", 3, 32, 20, 100, false}, {"seed", 3, 32, 100, 100, false},
                        {"paper", 1, 28, 784, 10, true},  {"seed", 3, 32, 3072, 10, true}};
  for (const auto& k : cases) {
    BlockOptions o{k.arch, k.c, k.h, k.h, k.d, k.m, 0.2, k.image_label};
    DenoiseBlock b(o);
    auto x = torch::randn({4, k.c, k.h, k.h});
    auto z = torch::randn({4, k.d});
    auto out = b->forward(x, z);
    EXPECT_EQ(out.sizes(), (std::vector<int64_t>{4, k.m})) << k.arch << " " << k.h << " d=" << k.d;
    EXPECT_EQ(bool(b->label_conv), k.image_label);
  }
}

// Parameter counts computed by hand from Fig. 6: they pin the architecture down.
TEST(Block, ParameterCountsMatchFigure6) {
  auto bn = [](int64_t n) { return 2 * n; };
  auto fc = [](int64_t i, int64_t o) { return i * o + o; };
  auto conv = [](int64_t i, int64_t o) { return i * o * 9 + o; };
  int64_t label = fc(10, 256) + bn(256) + fc(256, 256) + bn(256) + fc(256, 256) + bn(256);
  int64_t fused = fc(512, 256) + bn(256) + fc(256, 128) + bn(128) + fc(128, 10);
  int64_t paper = conv(1, 32) + conv(32, 64) + conv(64, 128) + fc(128 * 7 * 7, 256) + bn(256);
  int64_t seed = conv(1, 32) + conv(32, 64) + fc(64 * 7 * 7, 256) + bn(256);
  DenoiseBlock p(BlockOptions{"paper", 1, 28, 28, 10, 10});
  DenoiseBlock s(BlockOptions{"seed", 1, 28, 28, 10, 10});
  EXPECT_EQ(count_params(*p), paper + label + fused);
  EXPECT_EQ(count_params(*s), seed + label + fused);
}

TEST(Block, DropoutOnlyInTraining) {
  torch::manual_seed(0);
  DenoiseBlock b(BlockOptions{"seed", 1, 28, 28, 10, 10, 0.5});
  auto x = torch::randn({8, 1, 28, 28}), z = torch::randn({8, 10});
  b->eval();
  auto a1 = b->forward(x, z), a2 = b->forward(x, z);
  EXPECT_TRUE(torch::equal(a1, a2));
  b->train();
  EXPECT_FALSE(torch::equal(b->forward(x, z), b->forward(x, z)));
}

TEST(Block, FlopCount) {
  // Seed block on MNIST: convs 9·(1·32·784 + 32·64·196), FC 3136·256, label 10·256 + 2·256²,
  // fused 512·256 + 256·128 + 128·10 multiply-adds, ×2.
  double mac = 9.0 * (32 * 784 + 32 * 64 * 196) + 3136.0 * 256 + 2560 + 2 * 65536.0 + 131072 + 32768 + 1280;
  EXPECT_DOUBLE_EQ(block_forward_flops(BlockOptions{"seed", 1, 28, 28, 10, 10}), 2 * mac);
}

// Fig. 6 (right) counted by hand: image path ending FC 256 → ReLU, label FC 256, time
// FC 64 → 256, fused 768 → 256 → 128 → m; no batch norm anywhere.
TEST(ContinuousBlock, ParameterCountAndNoBatchNorm) {
  auto fc = [](int64_t i, int64_t o) { return i * o + o; };
  auto conv = [](int64_t i, int64_t o) { return i * o * 9 + o; };
  int64_t image = conv(1, 32) + conv(32, 64) + conv(64, 128) + fc(128 * 7 * 7, 256);
  int64_t rest = fc(20, 256) + fc(64, 256) + fc(768, 256) + fc(256, 128) + fc(128, 10);
  ContinuousBlock b(BlockOptions{"paper", 1, 28, 28, 20, 10});
  EXPECT_EQ(count_params(*b), image + rest);
  for (const auto& m : b->modules()) EXPECT_EQ(m->name().find("BatchNorm"), std::string::npos) << m->name();
  double mac = 9.0 * (32 * 784 + 32 * 64 * 196 + 64 * 128 * 196) + 6272.0 * 256 + 20 * 256 + 64 * 256 + 768 * 256 +
               256 * 128 + 128 * 10;
  EXPECT_DOUBLE_EQ(continuous_block_forward_flops(BlockOptions{"paper", 1, 28, 28, 20, 10}), 2 * mac);
}

// The split first fused layer (image part prepared once) equals the plain concat form, and
// one shared time broadcasts like a per-sample time.
TEST(ContinuousBlock, PreparedFormEqualsConcat) {
  torch::manual_seed(1);
  ContinuousBlock b(BlockOptions{"seed", 1, 28, 28, 10, 10, 0.2});
  b->eval();
  torch::NoGradGuard g;
  auto x = torch::randn({5, 1, 28, 28}), z = torch::randn({5, 10});
  auto t = torch::full({5}, 0.3);
  auto cat =
      torch::cat({b->image_path->forward(x), b->label_in->forward(z), b->time_in->forward(time_embedding(t, 64))}, 1);
  auto expected = b->fused->forward(b->fused_in->forward(cat));
  EXPECT_TRUE(torch::allclose(b->forward(x, z, t), expected, 1e-4, 1e-5));
  EXPECT_TRUE(torch::allclose(b->forward_prepared(b->prepare(x), z, torch::full({1}, 0.3)), expected, 1e-4, 1e-5));
  // A prototype label path takes z as an image.
  ContinuousBlock p(BlockOptions{"seed", 1, 28, 28, 784, 10, 0.2, true});
  EXPECT_EQ(p->forward(x, torch::randn({5, 784}), t).sizes(), (std::vector<int64_t>{5, 10}));
}

TEST(ContinuousBlock, TimeEmbeddingValues) {
  auto e = time_embedding(torch::tensor({0.0, 0.5}, torch::kFloat64), 4);
  // frequencies 1 and 10000^(−1/2) = 0.01; arguments 1000·t·f.
  EXPECT_NEAR(e[0][0].item<double>(), 0.0, 1e-12);
  EXPECT_NEAR(e[0][2].item<double>(), 1.0, 1e-12);
  EXPECT_NEAR(e[1][0].item<double>(), std::sin(500.0), 1e-9);
  EXPECT_NEAR(e[1][1].item<double>(), std::sin(5.0), 1e-9);
  EXPECT_NEAR(e[1][3].item<double>(), std::cos(5.0), 1e-9);
}
