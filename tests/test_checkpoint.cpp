#include <gtest/gtest.h>
#include <zlib.h>

#include <algorithm>
#include <csignal>
#include <fstream>
#include <sstream>

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

class CheckpointTest : public TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    write_synthetic_mnist(dir / "data", 192, 64);
  }
};

class ResumeTest : public CheckpointTest, public ::testing::WithParamInterface<std::string> {
 protected:
  // "dt", "ct", "fm", or "dt-sequential" (Algorithm 1's T passes per epoch).
  Config param_config() {
    Config cfg = tiny_config(dir / "data");
    apply_override(cfg, "method=" + GetParam().substr(0, GetParam().find('-')));
    if (GetParam().find("sequential") != std::string::npos) cfg.block_order = "sequential";
    cfg.inference_steps = 5;
    cfg.epochs = 2;
    return cfg;
  }
};

// Two epochs straight, against one epoch then --resume for the second: the same weights,
// optimizer states and metrics, bit for bit (CT: the learned schedule too).
TEST_P(ResumeTest, ResumeIsBitIdentical) {
  Config cfg = param_config();
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

// A SIGINT in the middle of an epoch (raised by the trainer itself after step 4, through the
// real handler) saves a mid-epoch checkpoint; resuming it ends with the same weights, metrics
// and per-batch log as the uninterrupted run.
TEST_P(ResumeTest, InterruptedRunResumesBitIdentically) {
  Config cfg = param_config();
  cfg.batch_size = 64;  // 3 batches per pass
  cfg.detailed_logging = true;
  auto sa = train(RunOptions{cfg, "tiny", dir / "a", false, true});

  ::setenv("NOPROP_INTERRUPT_AT_STEP", "4", 1);
  int signal = 0;
  try {
    train(RunOptions{cfg, "tiny", dir / "b", false, true});
  } catch (const Interrupted& e) {
    signal = e.signal;
    EXPECT_NE(std::string(e.what()).find("continue with: noprop train --resume"), std::string::npos) << e.what();
  }
  ::unsetenv("NOPROP_INTERRUPT_AT_STEP");
  ASSERT_EQ(signal, SIGINT);
  auto st = read_checkpoint_state(dir / "b" / "final.pt");
  EXPECT_EQ(st.step, 4);
  EXPECT_GE(st.in_epoch_batches, 1);
  Config resumed;
  apply_yaml(resumed, st.config_yaml, "ckpt");
  auto sb = train(RunOptions{resumed, "tiny", dir / "b", true, true});

  EXPECT_EQ(sa["test_accuracy"], sb["test_accuracy"]);
  EXPECT_EQ(sa["steps"], sb["steps"]);
  auto data = load_dataset("mnist", dir / "data");
  auto ta = model_tensors(dir / "a" / "final.pt", cfg, data), tb = model_tensors(dir / "b" / "final.pt", cfg, data);
  ASSERT_EQ(ta.size(), tb.size());
  for (size_t i = 0; i < ta.size(); ++i) EXPECT_TRUE(torch::equal(ta[i], tb[i])) << "tensor " << i;
  EXPECT_EQ(csv_rows_without_timing(dir / "a" / "metrics.csv"), csv_rows_without_timing(dir / "b" / "metrics.csv"));
  EXPECT_EQ(read_text_file(dir / "a" / "batches.csv"), read_text_file(dir / "b" / "batches.csv"));
}

INSTANTIATE_TEST_SUITE_P(Methods, ResumeTest, ::testing::Values("dt", "dt-sequential", "ct", "fm"));

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
  std::string bytes = read_text_file(dir / "r" / "final.pt");
  // Streamed to the file, its checksum computed on the way: the trailer gives the archive's
  // length and CRC-32 as computed here from the bytes on disk.
  {
    ASSERT_GT(bytes.size(), 20u);
    const std::size_t body = bytes.size() - 20;
    EXPECT_EQ(bytes.substr(body, 8), "NPCKSUM1");
    uint64_t n = 0;
    uint32_t crc = 0;
    for (int i = 0; i < 8; ++i) n |= uint64_t(uint8_t(bytes[body + 8 + i])) << (8 * i);
    for (int i = 0; i < 4; ++i) crc |= uint32_t(uint8_t(bytes[body + 16 + i])) << (8 * i);
    EXPECT_EQ(n, body);
    EXPECT_EQ(crc, uint32_t(crc32(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(bytes.data()), uInt(body))));
  }
  // Truncated.
  write_file_atomic(dir / "cut.pt", bytes.substr(0, bytes.size() / 2));
  expect_error([&] { read_checkpoint_state(dir / "cut.pt"); }, "cut.pt: not a readable checkpoint");
  // One flipped byte in the middle: the checksum catches it before anything is loaded.
  std::string flipped = bytes;
  flipped[flipped.size() / 2] ^= 0x40;
  write_file_atomic(dir / "flip.pt", flipped);
  expect_error([&] { read_checkpoint_state(dir / "flip.pt"); }, "flip.pt: checkpoint checksum mismatch");
  // The trailer cut off: the archive alone is never handed to LibTorch's parser.
  write_file_atomic(dir / "notrailer.pt", bytes.substr(0, bytes.size() - 20));
  expect_error([&] { read_checkpoint_state(dir / "notrailer.pt"); },
               "notrailer.pt: not a readable checkpoint (no checksum trailer");
  // Another format version, with a valid trailer: refused by version.
  auto write_version = [&](int64_t version, const fs::path& p) {
    torch::serialize::OutputArchive ar;
    ar.write("format", c10::IValue(std::string("noprop-checkpoint")));
    ar.write("format_version", c10::IValue(version));
    for (auto key : {"epoch", "step", "best_epoch"}) ar.write(key, c10::IValue(int64_t(3)));
    ar.write("best_test_accuracy", c10::IValue(50.0));
    ar.write("config", c10::IValue(std::string("method: dt\n")));
    ar.write("config_name", c10::IValue(std::string("old")));
    std::ostringstream out;
    ar.save_to(out);
    std::string body = out.str(), trailer = "NPCKSUM1";
    const uint64_t n = body.size();
    const uint32_t crc = uint32_t(crc32(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(body.data()), uInt(n)));
    for (int i = 0; i < 8; ++i) trailer.push_back(char((n >> (8 * i)) & 0xff));
    for (int i = 0; i < 4; ++i) trailer.push_back(char((crc >> (8 * i)) & 0xff));
    write_file_atomic(p, body + trailer);
  };
  write_version(99, dir / "v99.pt");
  expect_error([&] { read_checkpoint_state(dir / "v99.pt"); },
               "v99.pt: checkpoint format version 99, this program reads 2");
  write_version(2, dir / "v2.pt");  // this trailer, written independently, is accepted
  EXPECT_EQ(read_checkpoint_state(dir / "v2.pt").epoch, 3);
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
  // Nothing half-written is left behind, neither by training nor by a write abandoned half-way
  // (an exception between the first byte and commit()).
  {
    AtomicFile half(dir / "r" / "half.pt");
    half.write("abc", 3);
  }
  EXPECT_FALSE(fs::exists(dir / "r" / "half.pt"));
  for (const auto& e : fs::directory_iterator(dir / "r"))
    EXPECT_EQ(e.path().string().find(".tmp."), std::string::npos) << e.path();
}
