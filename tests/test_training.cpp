#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "noprop/runs.h"
#include "noprop/trainer.h"
#include "test_util.h"

using namespace noprop;
using namespace noprop::test;
namespace fs = std::filesystem;

class TrainingTest : public ::testing::TestWithParam<std::string> {};

// A short run (about 100 steps) on synthetic data must learn: chance is 10 %, 40 % is four times it.
TEST_P(TrainingTest, LearnsFarAboveChance) {
  auto dir = temp_dir("training-" + GetParam());
  write_synthetic_mnist(dir / "data", 640, 200, 11);
  Config cfg = tiny_config(dir / "data");
  apply_override(cfg, "method=" + GetParam().substr(0, GetParam().find('-')));
  if (GetParam().find("learned") != std::string::npos) cfg.embedding = "learned", cfg.embedding_dim = 16;
  if (GetParam().find("sequential") != std::string::npos) cfg.block_order = "sequential";
  if (GetParam().find("per_batch") != std::string::npos) cfg.shared_update = "per_batch";
  cfg.epochs = 5;
  cfg.batch_size = 32;
  if (cfg.method == "ct" || cfg.method == "fm") cfg.inference_steps = 20, cfg.eta = 1.0;
  // CT's head sees one Adam step per batch (DT's sees T): give it a larger step here.
  if (cfg.method == "ct") cfg.learning_rate = 3e-3;
  auto s = train(RunOptions{cfg, "tiny", dir / "run", false, true});
  EXPECT_GT(s["test_accuracy"].get<double>(), 40.0) << s.dump();
  EXPECT_EQ(s["test_accuracy_runs"].size(), 2u);
  for (auto f : {"config.yaml", "metrics.csv", "summary.json", "best.pt", "final.pt"})
    EXPECT_TRUE(fs::exists(dir / "run" / f)) << f;
  std::ifstream in(dir / "run" / "metrics.csv");
  std::string header;
  std::getline(in, header);
  EXPECT_EQ(header.rfind("epoch,loss_", 0), 0u) << header;
  EXPECT_NE(header.find("test_accuracy"), std::string::npos);
  fs::remove_all(dir);
}

// eval_every: the test set is evaluated after every N-th epoch and after the last; the other
// epochs have no test accuracy (nan), and the best epoch is one that was evaluated.
TEST(Training, EvaluatesEveryNEpochsAndAfterTheLast) {
  auto dir = temp_dir("training-eval-every");
  write_synthetic_mnist(dir / "data", 96, 100, 3);
  Config cfg = tiny_config(dir / "data");
  cfg.epochs = 5;
  cfg.batch_size = 32;
  cfg.eval_every = 2;
  auto s = train(RunOptions{cfg, "tiny", dir / "run", false, true});
  const auto acc = read_run(dir / "run").column("test_accuracy");
  ASSERT_EQ(acc.size(), 5u);
  for (int epoch : {1, 3}) EXPECT_TRUE(std::isnan(acc[size_t(epoch - 1)])) << epoch;
  for (int epoch : {2, 4, 5}) EXPECT_TRUE(std::isfinite(acc[size_t(epoch - 1)])) << epoch;
  const int best = s["best_epoch"].get<int>();
  EXPECT_TRUE(best == 2 || best == 4 || best == 5) << best;
  EXPECT_EQ(s["best_test_accuracy"].get<double>(), acc[size_t(best - 1)]);
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Methods, TrainingTest,
                         ::testing::Values("dt", "backprop", "dt-learned", "dt-sequential", "dt-per_batch",
                                           "dt-learned-per_batch", "ct", "ct-learned", "fm", "fm-learned"));
