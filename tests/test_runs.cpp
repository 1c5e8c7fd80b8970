// Run directories as data: metrics.csv parsing, wall-clock time, the loss columns worth
// plotting, and the tables of `noprop compare` and `noprop report` against hand-computed values.
#include <gtest/gtest.h>

#include <cmath>

#include "noprop/runs.h"
#include "test_util.h"

using namespace noprop;
using namespace noprop::test;
namespace fs = std::filesystem;

namespace {

class RunsTest : public TempDirTest {};

const char* kDtMetrics =
    "epoch,loss_block_1,loss_block_2,loss_ce,loss_kl,loss_total,nonfinite_skipped,test_accuracy,train_accuracy,"
    "seconds,eval_seconds,samples_per_second\n"
    "1,0.5,0.25,0.1,0,0.85,0,97.5,nan,100,10,600\n"
    "2,0.25,0.125,0.05,0,0.425,0,98.5,nan,110,12,545\n"
    "3,0.2,0.1,0.04,0,0.34,0,98.25,nan,90,8,666\n";

}  // namespace

TEST_F(RunsTest, ReadsMetricsSummaryAndConfig) {
  auto run = write_run(dir / "dt", "dt", "one-hot", 7, kDtMetrics, {98.0, 98.5});
  auto r = read_run(run);
  EXPECT_EQ(r.name, "dt");
  EXPECT_EQ(r.cfg.seed, 7);
  ASSERT_EQ(r.rows.size(), 3u);
  EXPECT_EQ(r.column("test_accuracy"), (std::vector<double>{97.5, 98.5, 98.25}));
  EXPECT_TRUE(std::isnan(r.column("train_accuracy")[0]));
  EXPECT_EQ(r.wall_seconds(), (std::vector<double>{110, 232, 330}));
  // loss_kl is zero throughout (nothing to draw on a log axis); loss_total is the sum of the rest.
  EXPECT_EQ(r.loss_columns(), (std::vector<std::string>{"loss_block_1", "loss_block_2", "loss_ce"}));
  EXPECT_EQ(r.method_label(), "NoProp-DT");
  EXPECT_EQ(r.embedding_label(), "one-hot");
  EXPECT_EQ(r.dataset_label(), "MNIST");
  EXPECT_EQ(r.summary["test_accuracy_runs"].size(), 2u);
}

TEST_F(RunsTest, MalformedRunsAreNamed) {
  auto run =
      write_run(dir / "bad", "dt", "one-hot", 1, "epoch,test_accuracy,seconds,eval_seconds\n1,97,10,1\n2,98,10\n", {});
  EXPECT_NE(error_of([&] { read_run(run); }).find("metrics.csv: line 3 has 3 values, the header 4"), std::string::npos);
  write_file_atomic(run / "metrics.csv", "epoch,test_accuracy,seconds,eval_seconds\n1,9x7,10,1\n");
  EXPECT_NE(error_of([&] { read_run(run); }).find("line 2: '9x7' is not a number"), std::string::npos);
  write_file_atomic(run / "metrics.csv", "epoch,seconds,eval_seconds\n1,10,1\n");
  EXPECT_NE(error_of([&] { read_run(run); }).find("no column 'test_accuracy'"), std::string::npos);
  write_file_atomic(run / "metrics.csv", "epoch,test_accuracy,seconds,eval_seconds\n1,97,10,1\n");
  write_file_atomic(run / "summary.json", "{\"test_accuracy\": ");
  EXPECT_NE(error_of([&] { read_run(run); }).find("summary.json: not a JSON object"), std::string::npos);
  fs::remove(run / "config.yaml");
  EXPECT_NE(error_of([&] { read_run(run); }).find("config.yaml"), std::string::npos);
  EXPECT_NE(error_of([&] { read_run(dir / "missing"); }).find("not a run directory"), std::string::npos);
}

TEST_F(RunsTest, CompareTableCountsEpochsAndSecondsToTheTarget) {
  auto a = read_run(write_run(dir / "dt", "dt", "one-hot", 1, kDtMetrics, {98.0, 98.5}));
  auto b = read_run(write_run(dir / "bp", "backprop", "one-hot", 1,
                              "epoch,loss_ce,loss_total,test_accuracy,train_accuracy,seconds,eval_seconds,"
                              "samples_per_second\n1,1,1,96,nan,50,5,1\n2,0.5,0.5,98.25,nan,50,5,1\n",
                              {}));
  // Lowest best accuracy: min(98.5, 98.25).
  EXPECT_DOUBLE_EQ(default_target({a, b}), 98.25);
  auto table = compare_table({a, b}, 98.25);
  // dt reaches 98.25 at epoch 2 after 100+10+110+12 s; best 98.5 at epoch 2; final = mean(98, 98.5);
  // 100 s per epoch on average; peak memory from the summary.
  EXPECT_NE(table.find("| dt | NoProp-DT one-hot | MNIST | 3 | 98.50 (2) | 98.25 | 2 | 232 | 100.0 | 321 |"),
            std::string::npos)
      << table;
  // bp has no summary: its final accuracy is the last epoch's, its memory unknown.
  EXPECT_NE(table.find("| bp | backprop one-hot | MNIST | 2 | 98.25 (2) | 98.25 | 2 | 110 | 50.0 | — |"),
            std::string::npos)
      << table;
  auto strict = compare_table({a}, 99.0);
  EXPECT_NE(strict.find("| 98.25 | — | — | 100.0 |"), std::string::npos) << strict;
}

TEST_F(RunsTest, ReportPoolsSeedsAndInferenceRunsLikeTableOne) {
  std::vector<RunRecord> runs{
      read_run(write_run(dir / "dt1", "dt", "one-hot", 1, kDtMetrics, {99.0, 98.0})),
      read_run(write_run(dir / "dt2", "dt", "one-hot", 2, kDtMetrics, {97.0, 96.0})),
      read_run(write_run(dir / "dt3", "dt", "learned", 1, kDtMetrics, {95.5})),
      read_run(write_run(dir / "bp", "backprop", "one-hot", 1, kDtMetrics, {99.4})),
      read_run(write_run(dir / "open", "fm", "one-hot", 1, kDtMetrics, {})),
  };
  auto table = report_table(runs);
  // one-hot DT: mean of {99, 98, 97, 96} = 97.5, sample std sqrt(5/3) = 1.29.
  EXPECT_NE(table.find("| method | MNIST |\n|---|---|\n| backprop one-hot | 99.40 ± 0.00 |\n"
                       "| NoProp-DT one-hot / dim=20 | 97.50 ± 1.29 / 95.50 ± 0.00 |\n"),
            std::string::npos)
      << table;
  EXPECT_NE(table.find("- NoProp-DT one-hot, MNIST: 2 run(s) (seed 1, 2), 4 values: dt1, dt2; epochs 3, paper "
                       "architecture\n"),
            std::string::npos)
      << table;
  EXPECT_NE(table.find("Left out (no summary.json: unfinished): open"), std::string::npos) << table;
}
