// Finished (or running) training runs as data: a run directory's metrics.csv, config.yaml and
// summary.json, and what the tools make of several runs: the comparison table of
// `noprop compare` and the paper-style results table of `noprop report`.
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>
#include <vector>

#include "noprop/config.h"

namespace noprop {

struct RunRecord {
  std::filesystem::path dir;
  std::string name;                       // the directory's name
  Config cfg;                             // config.yaml
  nlohmann::json summary;                 // summary.json; null while the run has not finished
  std::vector<std::string> columns;       // metrics.csv header
  std::vector<std::vector<double>> rows;  // one per epoch; NaN for empty or "nan" cells

  // The named metrics column (Error naming the file when it is absent).
  std::vector<double> column(const std::string& name) const;
  bool has_column(const std::string& name) const;
  // Cumulative wall-clock seconds (training + evaluation) at the end of each epoch.
  std::vector<double> wall_seconds() const;
  // The training losses worth plotting: every loss_* column except loss_total, unless that is
  // the only one, and except columns with no positive value (a log axis cannot show them).
  std::vector<std::string> loss_columns() const;
  // "NoProp-DT", "backprop", ...
  std::string method_label() const;
  // "MNIST", "CIFAR-10", ...
  std::string dataset_label() const;
  // "one-hot", "dim=20", "prototype".
  std::string embedding_label() const;
};

// Reads a run directory; Error naming the file that is missing or malformed.
RunRecord read_run(const std::filesystem::path& dir);
std::vector<RunRecord> read_runs(const std::vector<std::string>& dirs);

// The accuracy `noprop compare` measures time to when --target is not given: the lowest of
// the runs' best accuracies, so that every run reaches it.
double default_target(const std::vector<RunRecord>& runs);

// Markdown table: best and final accuracy, epochs and seconds to `target`, seconds per epoch,
// peak memory, one row per run.
std::string compare_table(const std::vector<RunRecord>& runs, double target);

// Markdown table laid out like the paper's Table 1: one row per method, one column per data
// set, "mean ± std" per embedding joined by " / ", pooled over the runs (seeds) and their
// final inference runs. Runs without summary.json are left out with a note below the table.
std::string report_table(const std::vector<RunRecord>& runs);

}  // namespace noprop
