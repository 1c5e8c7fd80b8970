// The training loop shared by every method: epochs over shuffled batches, evaluation on the
// test set each epoch, the run directory (config.yaml, metrics.csv, summary.json, best.pt,
// final.pt), early stopping, resumption and the progress line.
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>
#include <vector>

#include "noprop/config.h"
#include "noprop/data.h"
#include "noprop/methods/method.h"

namespace noprop {

struct EvalResult {
  double mean = 0, stddev = 0;  // accuracy in percent over the runs
  std::vector<double> runs;
  torch::Tensor confusion;  // m×m counts over every run: row = true class, column = predicted
};

// Accuracy of `runs` inference runs on `data` (one generator seeded with `seed`, drawn in
// sequence, so run r is reproducible); sample standard deviation over runs.
EvalResult evaluate(Method& method, const Dataset& data, int runs, const InferenceOptions& inference, int64_t seed,
                    int batch_size, torch::Device device);

// The learning rate of global step `step` (0-based) of a run of cfg.epochs epochs with
// `steps_per_epoch` steps each: cfg.learning_rate after a linear warm-up over warmup_epochs,
// then constant or cosine-decayed to 0 at the last step (lr_schedule).
double learning_rate_at(const Config& cfg, int64_t step, int64_t steps_per_epoch);

struct RunOptions {
  Config cfg;
  std::string config_name;
  std::filesystem::path out_dir;  // the run directory
  bool resume = false;            // continue the run in out_dir from its final.pt
  bool quiet = false;             // no progress output (tests)
  bool memory_report = false;     // print the memory account at the end (runtime.h)
};

// Runs (or resumes) training and returns the summary that is also written to summary.json.
nlohmann::json train(const RunOptions& opt);

// The run directory name for a new run: runs/<timestamp>-<config>.
std::filesystem::path default_run_dir(const std::string& config_name);

}  // namespace noprop
