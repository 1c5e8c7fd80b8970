#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>

#include "noprop/checkpoint.h"
#include "noprop/methods/dt.h"
#include "noprop/trainer.h"
#include "noprop/util.h"
#include "test_util.h"

using namespace noprop;
using namespace noprop::test;
namespace fs = std::filesystem;

namespace {
// Parameters and buffers after loading a checkpoint. Equal values after the resumed epoch also
// prove the optimizer state was restored: epoch 2 moves the weights with it.
std::vector<torch::Tensor> model_tensors(const fs::path& ckpt, const Config& cfg, const DataSplits& data) {
  auto m = make_method(cfg, data.info, &data.train, torch::kCPU);
  load_checkpoint(ckpt, *m, false);
  std::vector<torch::Tensor> all;
  for (const auto& p : m->parameters()) all.push_back(p.detach().clone());
  if (auto* dt = dynamic_cast<DTMethod*>(m.get()))
    for (const auto& b : dt->net()->buffers()) all.push_back(b.clone());  // batch-norm statistics
  return all;
}

std::vector<std::string> csv_rows_without_timing(const fs::path& p) {
  std::ifstream in(p);
  std::string line;
  std::vector<std::string> rows;
  while (std::getline(in, line)) {
    // Drop the last three columns: seconds, eval_seconds, samples_per_second.
    for (int k = 0; k < 3; ++k) line = line.substr(0, line.rfind(','));
    rows.push_back(line);
  }
  return rows;
}
}  // namespace

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto name = std::string(::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::replace(name.begin(), name.end(), '/', '-');
    dir = temp_dir(name);
    write_synthetic_mnist(dir / "data", 192, 64);
  }
  void TearDown() override { fs::remove_all(dir); }
  fs::path dir;
};

class ResumeTest : public CheckpointTest, public ::testing::WithParamInterface<std::string> {};

// Two epochs straight, against one epoch then --resume for the second: the same weights,
// optimizer states and metrics, bit for bit (CT: the learned schedule too).
TEST_P(ResumeTest, ResumeIsBitIdentical) {
  Config cfg = tiny_config(dir / "data");
  apply_override(cfg, "method=" + GetParam());
  cfg.inference_steps = 5;
  cfg.epochs = 2;
  RunOptions a{cfg, "tiny", dir / "a", false, true};
  auto sa = train(a);

  RunOptions b{cfg, "tiny", dir / "b", false, true};
  b.cfg.epochs = 1;
  train(b);
  Config resumed;
  apply_yaml(resumed, read_checkpoint_state(dir / "b" / "final.pt").config_yaml, "ckpt");
  resumed.epochs = 2;
  RunOptions c{resumed, "tiny", dir / "b", true, true};
  auto sb = train(c);

  EXPECT_EQ(sa["test_accuracy"], sb["test_accuracy"]);
  EXPECT_EQ(sa["epochs"], 2);
  EXPECT_EQ(sb["epochs"], 2);
  EXPECT_EQ(sa["steps"], sb["steps"]);
  auto data = load_dataset("mnist", dir / "data");
  auto ta = model_tensors(dir / "a" / "final.pt", cfg, data), tb = model_tensors(dir / "b" / "final.pt", cfg, data);
  ASSERT_EQ(ta.size(), tb.size());
  ASSERT_GT(ta.size(), 10u);
  for (size_t i = 0; i < ta.size(); ++i) EXPECT_TRUE(torch::equal(ta[i], tb[i])) << "tensor " << i;
  auto ra = csv_rows_without_timing(dir / "a" / "metrics.csv"), rb = csv_rows_without_timing(dir / "b" / "metrics.csv");
  EXPECT_EQ(ra.size(), 3u);
  EXPECT_EQ(ra, rb);
}

INSTANTIATE_TEST_SUITE_P(Methods, ResumeTest, ::testing::Values("dt", "ct", "fm"));

TEST_F(CheckpointTest, RefusesBadCheckpoints) {
  Config cfg = tiny_config(dir / "data");
  cfg.epochs = 1;
  cfg.num_layers = 2;
  train(RunOptions{cfg, "tiny", dir / "r", false, true});
  auto state = read_checkpoint_state(dir / "r" / "final.pt");
  EXPECT_EQ(state.epoch, 1);
  EXPECT_EQ(state.config_name, "tiny");

  auto expect_error = [](const std::function<void()>& f, const std::string& what) {
    auto msg = error_of(f);
    EXPECT_NE(msg.find(what), std::string::npos) << msg;
  };
  // Truncated.
  std::string bytes = read_text_file(dir / "r" / "final.pt");
  write_file_atomic(dir / "cut.pt", bytes.substr(0, bytes.size() / 2));
  expect_error([&] { read_checkpoint_state(dir / "cut.pt"); }, "cut.pt: not a readable checkpoint");
  // Not a checkpoint at all.
  write_file_atomic(dir / "junk.pt", "hello");
  expect_error([&] { read_checkpoint_state(dir / "junk.pt"); }, "junk.pt: not a readable checkpoint");
  expect_error([&] { read_checkpoint_state(dir / "none.pt"); }, "no such checkpoint file");
  // A model of another shape.
  auto data = load_dataset("mnist", dir / "data");
  Config other = cfg;
  other.architecture = "paper";
  auto m = make_method(other, data.info, &data.train, torch::kCPU);
  expect_error([&] { load_checkpoint(dir / "r" / "final.pt", *m, false); }, "does not match the configured model");
  // Same keys, other shapes: learned embeddings of another dimension.
  Config emb = cfg;
  emb.embedding = "learned", emb.embedding_dim = 8;
  train(RunOptions{emb, "emb", dir / "e", false, true});
  emb.embedding_dim = 9;
  auto m9 = make_method(emb, data.info, &data.train, torch::kCPU);
  expect_error([&] { load_checkpoint(dir / "e" / "final.pt", *m9, false); }, "has shape");
  // Nothing half-written is left behind.
  for (const auto& e : fs::directory_iterator(dir / "r"))
    EXPECT_EQ(e.path().string().find(".tmp."), std::string::npos) << e.path();
}
