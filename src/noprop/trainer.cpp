#include "noprop/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <cstdio>
#include <fstream>
#include <iomanip>
#include <memory>
#include <sstream>

#include "noprop/checkpoint.h"
#include "noprop/distributed.h"
#include "noprop/methods/registry.h"
#include "noprop/plot.h"
#include "noprop/runtime.h"
#include "noprop/util.h"

namespace noprop {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// The first line's note on how the convolutions run, where it is not LibTorch's fp32.
std::string conv_note(const std::string& precision) {
  return precision == "bf16" ? " (bf16 convolutions)" : precision == "winograd" ? " (fp32 Winograd convolutions)" : "";
}

double tensor_bytes(const torch::Tensor& t) { return t.defined() ? double(t.nbytes()) : 0.0; }

// Bytes of an optimizer's per-parameter state (Adam's and AdamW's moments, SGD's momentum).
double optimizer_state_bytes(torch::optim::Optimizer& opt) {
  double bytes = 0;
  for (const auto& [key, state] : opt.state()) {
    if (auto* a = dynamic_cast<torch::optim::AdamWParamState*>(state.get()))
      bytes += tensor_bytes(a->exp_avg()) + tensor_bytes(a->exp_avg_sq()) + tensor_bytes(a->max_exp_avg_sq());
    else if (auto* b = dynamic_cast<torch::optim::AdamParamState*>(state.get()))
      bytes += tensor_bytes(b->exp_avg()) + tensor_bytes(b->exp_avg_sq()) + tensor_bytes(b->max_exp_avg_sq());
    else if (auto* c = dynamic_cast<torch::optim::SGDParamState*>(state.get()))
      bytes += tensor_bytes(c->momentum_buffer());
  }
  return bytes;
}

std::string format_duration(double s) {
  char buf[32];
  int si = int(s + 0.5);
  if (si >= 3600)
    std::snprintf(buf, sizeof buf, "%dh%02dm", si / 3600, si / 60 % 60);
  else
    std::snprintf(buf, sizeof buf, "%dm%02ds", si / 60, si % 60);
  return buf;
}

// A live line on a terminal (rewritten in place), plain lines every `interval` batches otherwise.
class Progress {
 public:
  Progress(bool quiet, int interval) : quiet_(quiet), tty_(::isatty(STDERR_FILENO)), interval_(interval) {}

  void update(const std::string& prefix, int64_t done, int64_t total, double samples_per_s, double eta_s,
              const std::string& extra) {
    if (quiet_) return;
    bool due = tty_ ? seconds_since(last_) > 0.25 || done == total : done % interval_ == 0 || done == total;
    if (!due) return;
    last_ = Clock::now();
    std::fprintf(stderr, "%s%s %lld/%lld  %.0f samples/s  ETA %s%s%s", tty_ ? "\r\033[K" : "", prefix.c_str(),
                 (long long)done, (long long)total, samples_per_s, format_duration(eta_s).c_str(), extra.c_str(),
                 tty_ ? "" : "\n");
    std::fflush(stderr);
  }
  void line(const std::string& text) {
    if (quiet_) return;
    std::fprintf(stderr, "%s%s\n", tty_ ? "\r\033[K" : "", text.c_str());
    std::fflush(stderr);
  }

 private:
  bool quiet_, tty_;
  int interval_;
  Clock::time_point last_ = Clock::now();
};

std::string csv_number(double v) {
  std::ostringstream ss;
  ss << std::setprecision(8) << v;
  return ss.str();
}

// Keeps metrics.csv rows in memory and rewrites the file atomically after each epoch.
class CsvLog {
 public:
  CsvLog(fs::path path, std::vector<std::string> columns) : path_(std::move(path)), columns_(std::move(columns)) {}

  // On resume: keep the rows of epochs ≤ `epoch` that the file already has.
  void load_existing(int64_t epoch) {
    std::ifstream in(path_);
    std::string line;
    if (!std::getline(in, line)) return;
    while (std::getline(in, line)) {
      if (std::stoll(line.substr(0, line.find(','))) <= epoch) rows_.push_back(line);
    }
  }
  void add(const std::vector<double>& values) {
    std::string row;
    for (std::size_t i = 0; i < values.size(); ++i) {
      if (i) row += ',';
      row += csv_number(values[i]);
    }
    rows_.push_back(row);
  }
  void flush() const {
    std::string text;
    for (std::size_t i = 0; i < columns_.size(); ++i) text += (i ? "," : "") + columns_[i];
    text += "\n";
    for (const auto& r : rows_) text += r + "\n";
    write_file_atomic(path_, text);
  }

 private:
  fs::path path_;
  std::vector<std::string> columns_;
  std::vector<std::string> rows_;
};

void prepare_run_dir(const fs::path& dir) {
  std::error_code ec;
  if (fs::exists(dir, ec) && !fs::is_empty(dir, ec))
    throw Error(dir.string() + ": run directory exists and is not empty (use --resume to continue it)");
  fs::create_directories(dir, ec);
  if (ec) throw Error(dir.string() + ": cannot create run directory: " + ec.message());
  // Fail now, not after the first epoch, when the directory is not writable.
  write_file_atomic(dir / ".write-test", "");
  fs::remove(dir / ".write-test", ec);
}

// A run that cannot write its checkpoints should fail now, not after an epoch: each checkpoint
// holds the parameters and about two optimizer moments per parameter (4 bytes each), and
// best.pt, final.pt and a temporary copy may exist at once. NOPROP_FREE_BYTES overrides the
// measured free space (tests).
void check_free_space(const fs::path& dir, int64_t parameters) {
  const double checkpoint = 4.0 * 3.0 * double(parameters);
  const double needed = 3.0 * checkpoint + (16 << 20);
  std::error_code ec;
  fs::path existing = fs::absolute(dir, ec);
  while (!fs::exists(existing, ec) && existing.has_parent_path() && existing != existing.parent_path())
    existing = existing.parent_path();
  double available = double(fs::space(existing, ec).available);
  if (const char* env = std::getenv("NOPROP_FREE_BYTES"))
    available = std::atof(env);
  else if (ec)
    return;  // cannot tell: the atomic writes still fail cleanly
  if (available < needed) {
    char buf[256];
    std::snprintf(buf, sizeof buf, ": only %.0f MB free, the run's checkpoints need about %.0f MB", available / 1e6,
                  needed / 1e6);
    throw Error(dir.string() + buf);
  }
}

// The value of a test hook variable, or -1 when unset.
int64_t step_from_env(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::atoll(v) : -1;
}

// The error that ends an interrupted run, once its final.pt is saved.
Interrupted interrupted(int sig, const std::string& where, const fs::path& dir) {
  return Interrupted(std::string(sig == SIGINT ? "SIGINT" : "SIGTERM") + " at " + where + ": saved " +
                         (dir / "final.pt").string() + "; continue with: noprop train --resume " + dir.string(),
                     sig);
}

}  // namespace

EvalResult evaluate(Method& method, const Dataset& data, int runs, const InferenceOptions& inference, int64_t seed,
                    int batch_size, torch::Device device) {
  method.set_training(false);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(uint64_t(seed));
  EvalResult r;
  const int64_t n = data.size();
  for (int run = 0; run < runs; ++run) {
    auto correct = torch::zeros({}, torch::kInt64).to(device);
    for (int64_t i = 0; i < n; i += batch_size) {
      int64_t e = std::min(n, i + batch_size);
      auto x = data.rows(i, e).to(device);
      auto y = data.labels.slice(0, i, e).to(device);
      auto scores = method.predict(x, inference, gen);
      auto pred = scores.argmax(1);
      correct += (pred == y).sum();
      const int64_t m = scores.size(1);
      auto counts = torch::bincount(y * m + pred, {}, m * m).view({m, m});
      r.confusion = r.confusion.defined() ? r.confusion + counts : counts;  // stays on the device
    }
    r.runs.push_back(100.0 * double(correct.item<int64_t>()) / double(n));
  }
  if (r.confusion.defined()) r.confusion = r.confusion.to(torch::kCPU, torch::kInt64);
  double sum = 0, sq = 0;
  for (double v : r.runs) sum += v;
  r.mean = sum / runs;
  for (double v : r.runs) sq += (v - r.mean) * (v - r.mean);
  r.stddev = runs > 1 ? std::sqrt(sq / (runs - 1)) : 0.0;
  method.set_training(true);
  return r;
}

fs::path default_run_dir(const std::string& config_name) {
  fs::path base = fs::path("runs") / (timestamp_now() + "-" + config_name);
  fs::path dir = base;
  for (int i = 2; fs::exists(dir); ++i) dir = base.string() + "-" + std::to_string(i);
  return dir;
}

double learning_rate_at(const Config& cfg, int64_t step, int64_t steps_per_epoch) {
  const double total = double(cfg.epochs) * double(steps_per_epoch);
  const double warm = cfg.warmup_epochs * double(steps_per_epoch);
  const double s = double(step) + 1;  // the rate of the step about to be taken
  double lr = cfg.learning_rate;
  if (s < warm) lr *= s / warm;
  if (cfg.lr_schedule == "cosine" && total > warm) {
    const double progress = std::clamp((double(step) - warm) / (total - warm), 0.0, 1.0);
    lr *= 0.5 * (1 + std::cos(M_PI * progress));
  }
  return lr;
}

namespace {

// Fault injection for tests, read once from the environment: NOPROP_INJECT_NAN_AT_STEP=N makes
// the images of global step N NaN (on_nonfinite); NOPROP_INTERRUPT_AT_STEP=N raises SIGINT after
// step N (interruption); NOPROP_EXIT_AT_STEP=N makes the last rank of a distributed run exit
// abruptly after step N (a lost worker). -1: off.
struct TestHooks {
  int64_t nan_step = -1, interrupt_step = -1, exit_step = -1;
  static TestHooks from_environment(bool last_rank) {
    return {step_from_env("NOPROP_INJECT_NAN_AT_STEP"), step_from_env("NOPROP_INTERRUPT_AT_STEP"),
            last_rank ? step_from_env("NOPROP_EXIT_AT_STEP") : -1};
  }
};

// One run, as a sequence: set-up (data, method, run directory, resumption), then per epoch the
// batches, the evaluation, the log and checkpoints and the stop decision, then the summary.
class Trainer {
 public:
  explicit Trainer(const RunOptions& opt);
  nlohmann::json run();

 private:
  // The running totals of an epoch, which an interruption saves and a resumption restores.
  struct EpochTotals {
    std::vector<torch::Tensor> sums;
    std::vector<int64_t> counts;
    int64_t samples = 0, done = 0, skipped = 0;
    double seconds_before = 0;  // training time of this epoch before an interruption
  };
  void load_data();
  void build_method();
  void open_logs();
  void check_resumed_epoch() const;
  EpochTotals resume_totals();
  // The epoch's batches; returns its training seconds.
  double train_epoch(int64_t epoch, EpochTotals& totals);
  void train_batch(int64_t epoch, int pass, int64_t b, const torch::Tensor& perm, EpochTotals& totals);
  void account_first_step();
  // Saves where the epoch stands into final.pt and returns the error that ends the run.
  Interrupted interrupt(int sig, int64_t epoch, int pass, const torch::Tensor& perm, const EpochTotals& totals,
                        double seconds);
  // Evaluation, metrics row, checkpoints and progress line at the end of an epoch.
  void finish_epoch(int64_t epoch, EpochTotals& totals, double train_s);
  // Whether to stop after `epoch` (early stopping); throws Interrupted on a pending signal.
  bool stop_after(int64_t epoch);
  void checkpoint(const fs::path& path);
  nlohmann::json summarise();

  const RunOptions& opt_;
  Config cfg_;
  std::unique_ptr<Distributed> dist_;
  bool lead_ = true;
  int threads_ = 1;
  torch::Device device_ = torch::kCPU;
  fs::path dir_;
  MemoryAccount memory_;
  DataSplits data_;
  TrainingState state_;
  std::unique_ptr<Method> method_;
  std::vector<std::string> loss_names_;
  InferenceOptions inference_;
  std::unique_ptr<CsvLog> metrics_, batches_;
  std::unique_ptr<Progress> progress_;
  TestHooks hooks_;
  int64_t n_ = 0, batch_ = 0, batches_per_pass_ = 0;
  int passes_ = 1;
  bool scheduled_lr_ = false;
  double train_seconds_total_ = 0;
  int64_t epochs_run_ = 0;
  std::string stop_reason_ = "epochs";
  bool first_step_ = true;
  double last_test_accuracy_ = -1;
};

Trainer::Trainer(const RunOptions& opt) : opt_(opt), cfg_(opt.cfg) {
  validate(cfg_);
  // Several processes: rank 0 (the lead) writes the run directory and prints; the others train.
  dist_ = Distributed::from_environment(std::chrono::seconds(cfg_.dist_timeout));
  lead_ = !dist_ || dist_->lead();
  const bool block_parallel = dist_ && method_spec(cfg_.method).block_parallel && cfg_.parallel == "block";
  if (block_parallel) cfg_.shared_update = "per_batch";  // recorded in config.yaml
  // One GPU per local rank, as torchrun does.
  if (dist_ && cfg_.device == "cuda") cfg_.device = "cuda:" + std::to_string(dist_->local_rank());
  threads_ = configure_threads(cfg_.threads);
  device_ = select_device(cfg_.device);
  dir_ = opt.out_dir;
  hooks_ = TestHooks::from_environment(dist_ && dist_->rank() == dist_->world() - 1);
  // Everything that can fail on bad input happens before the run directory is touched.
  load_data();
  build_method();
  open_logs();
}

void Trainer::load_data() {
  const fs::path data_dir = resolve_data_dir(cfg_.dataset, cfg_.data_dir);
  cfg_.data_dir = data_dir.string();
  memory_.phase("data");
  data_ = load_dataset(cfg_.dataset, data_dir);
  auto first = [](Dataset& d, int64_t k) {
    if (k > 0 && k < d.size()) d.images = d.images.slice(0, 0, k), d.labels = d.labels.slice(0, 0, k);
  };
  first(data_.train, cfg_.train_samples);
  first(data_.test, cfg_.test_samples);
  // Whole storages: a train_samples slice keeps the whole split in memory.
  auto storage_bytes = [](const torch::Tensor& t) { return double(t.storage().nbytes()); };
  memory_.item("data sets", storage_bytes(data_.train.images) + storage_bytes(data_.train.labels) +
                                storage_bytes(data_.test.images) + storage_bytes(data_.test.labels));
}

void Trainer::build_method() {
  memory_.phase("model");
  torch::manual_seed(uint64_t(cfg_.seed));
  method_ = make_method(cfg_, data_.info, &data_.train, device_);
  if (lead_) check_free_space(dir_, method_->parameter_count());
  if (opt_.resume) {
    state_ = load_checkpoint(dir_ / "final.pt", *method_, /*restore_rng=*/true);
  } else {
    if (lead_) prepare_run_dir(dir_);
    state_.config_name = opt_.config_name;
  }
  method_->set_distributed(dist_.get());
  state_.config_yaml = to_yaml(cfg_);
  if (lead_) write_file_atomic(dir_ / "config.yaml", state_.config_yaml);
  // The training set lives on the device, except when augmentation (a CPU kernel) needs it.
  if (device_.is_cuda() && !cfg_.augment) {
    data_.train.images = data_.train.images.to(device_), data_.train.labels = data_.train.labels.to(device_);
  }
  loss_names_ = method_->loss_names();
  inference_ = inference_options(cfg_);
  n_ = data_.train.size(), batch_ = cfg_.batch_size;
  batches_per_pass_ = (n_ + batch_ - 1) / batch_;
  passes_ = method_->passes_per_epoch();
  scheduled_lr_ = cfg_.lr_schedule != "constant" || cfg_.warmup_epochs > 0;
  check_resumed_epoch();
}

void Trainer::open_logs() {
  std::vector<std::string> columns{"epoch"};
  columns.insert(columns.end(), loss_names_.begin(), loss_names_.end());
  columns.insert(columns.end(), {"nonfinite_skipped", "test_accuracy", "train_accuracy", "seconds", "eval_seconds",
                                 "samples_per_second"});
  metrics_ = std::make_unique<CsvLog>(dir_ / "metrics.csv", columns);
  std::vector<std::string> batch_columns{"epoch", "pass", "batch"};
  batch_columns.insert(batch_columns.end(), loss_names_.begin(), loss_names_.end());
  batches_ = std::make_unique<CsvLog>(dir_ / "batches.csv", batch_columns);
  if (opt_.resume) {
    metrics_->load_existing(state_.epoch);
    // An interrupted epoch flushed its per-batch rows up to the interruption.
    if (cfg_.detailed_logging) batches_->load_existing(state_.epoch + (state_.in_epoch_batches >= 0 ? 1 : 0));
  }
  progress_ = std::make_unique<Progress>(opt_.quiet || !lead_, cfg_.log_interval);
  progress_->line(
      "run " + dir_.string() + ": " + cfg_.method + " on " + cfg_.dataset + ", " +
      std::to_string(method_->parameter_count()) + " parameters, " + std::to_string(threads_) + " threads, device " +
      device_.str() + conv_note(conv_precision(cfg_)) +
      (dist_ ? ", " + std::to_string(dist_->world()) + " workers (" + method_->parallelism().name() + ")" : "") +
      (opt_.resume ? ", resuming after epoch " + std::to_string(state_.epoch) +
                         (state_.in_epoch_batches >= 0 ? " and " + std::to_string(state_.in_epoch_batches) +
                                                             " batches of epoch " + std::to_string(state_.epoch + 1)
                                                       : "")
                   : ""));
}

void Trainer::check_resumed_epoch() const {
  if (state_.in_epoch_batches < 0) return;
  const auto& p = state_.permutation;
  const auto k = int64_t(loss_names_.size());
  if (!p.defined() || p.dim() != 1 || p.numel() != n_ || p.scalar_type() != torch::kInt64 || state_.pass < 0 ||
      state_.pass >= passes_ || state_.in_epoch_batches > batches_per_pass_ * passes_ ||
      state_.in_epoch_batches < state_.pass * batches_per_pass_ || !state_.loss_sums.defined() ||
      state_.loss_sums.numel() != k || !state_.loss_counts.defined() || state_.loss_counts.numel() != k ||
      state_.loss_counts.scalar_type() != torch::kInt64)
    throw Error((dir_ / "final.pt").string() + ": its interrupted-epoch state does not match this run");
}

nlohmann::json Trainer::run() {
  StopSignals stop_signals;
  for (int64_t epoch = state_.epoch + 1; epoch <= cfg_.epochs; ++epoch) {
    release_free_memory();
    memory_.phase(first_step_ ? "first step" : "training");
    EpochTotals totals = resume_totals();
    const double train_s = train_epoch(epoch, totals);
    finish_epoch(epoch, totals, train_s);
    if (stop_after(epoch)) break;
  }
  if (!lead_) return nullptr;  // the lead evaluates and reports; the others are done
  return summarise();
}

Trainer::EpochTotals Trainer::resume_totals() {
  EpochTotals t;
  t.sums.resize(loss_names_.size());
  t.counts.assign(loss_names_.size(), 0);
  // Resuming inside this epoch: its position and running sums come back.
  if (state_.in_epoch_batches >= 0) {
    t.done = state_.in_epoch_batches, t.samples = state_.samples, t.skipped = state_.skipped;
    t.seconds_before = state_.train_seconds;
    for (std::size_t i = 0; i < t.sums.size(); ++i) {
      t.counts[i] = state_.loss_counts[int64_t(i)].item<int64_t>();
      if (t.counts[i]) t.sums[i] = state_.loss_sums[int64_t(i)].to(device_);
    }
  }
  return t;
}

double Trainer::train_epoch(int64_t epoch, EpochTotals& totals) {
  method_->set_training(true);
  const auto t0 = Clock::now();
  const bool mid = state_.in_epoch_batches >= 0;
  for (int pass = mid ? int(state_.pass) : 0; pass < passes_; ++pass) {
    const bool resumed_pass = mid && pass == state_.pass;
    auto perm = resumed_pass ? state_.permutation : torch::randperm(n_, torch::kInt64);
    perm = perm.to(data_.train.images.device());
    for (int64_t b = resumed_pass ? totals.done - pass * batches_per_pass_ : 0; b < batches_per_pass_; ++b) {
      int sig = StopSignals::pending();
      if (dist_) sig = int(dist_->max(sig));  // every rank stops at the same batch
      if (sig) throw interrupt(sig, epoch, pass, perm, totals, totals.seconds_before + seconds_since(t0));
      train_batch(epoch, pass, b, perm, totals);
      const double el = seconds_since(t0);
      const int64_t total = batches_per_pass_ * passes_;
      std::string extra;
      // Reading the loss synchronises; do it only when a line is printed anyway.
      if ((totals.done % cfg_.log_interval == 0 || totals.done == total) && totals.counts.back() > 0)
        extra = "  loss " + csv_number(totals.sums.back().item<double>() / double(totals.counts.back()));
      progress_->update("epoch " + std::to_string(epoch) + "/" + std::to_string(cfg_.epochs), totals.done, total,
                        double(totals.samples) / el, el / double(totals.done) * double(total - totals.done), extra);
    }
  }
  const double train_s = totals.seconds_before + seconds_since(t0);
  state_.in_epoch_batches = -1;
  auto& par = method_->parallelism();
  par.synchronise();
  if (par.shards_batches()) {
    // Each rank averaged its own rows: the epoch's losses are the mean over the ranks.
    for (auto& v : totals.sums)
      if (!v.defined()) v = torch::zeros({}, device_);
    par.average(totals.sums);
  }
  train_seconds_total_ += train_s;
  ++epochs_run_;
  return train_s;
}

void Trainer::train_batch(int64_t epoch, int pass, int64_t b, const torch::Tensor& perm, EpochTotals& totals) {
  auto idx = perm.slice(0, b * batch_, std::min(n_, (b + 1) * batch_));
  ++totals.done;
  const auto& par = method_->parallelism();
  const int64_t world = par.shards_batches() ? par.world() : 1;
  if (idx.size(0) < 2 * world) return;  // batch norm needs two samples (per rank)
  const auto [begin, end] = par.rows(idx.size(0));
  idx = idx.slice(0, begin, end);
  auto x = data_.train.select(idx);
  auto y = data_.train.labels.index_select(0, idx);
  if (cfg_.augment) augment_batch(x, 4);
  if (state_.step + 1 == hooks_.nan_step) x = torch::full_like(x, NAN);
  if (scheduled_lr_) method_->set_learning_rate(learning_rate_at(cfg_, state_.step, batches_per_pass_ * passes_));
  auto losses = method_->train_step(x.to(device_), y.to(device_), pass);
  ++state_.step;
  if (first_step_) account_first_step();
  if (state_.step == hooks_.interrupt_step) std::raise(SIGINT);
  if (state_.step == hooks_.exit_step) std::_Exit(3);
  if (auto bad = method_->take_nonfinite(); !bad.empty()) {
    const std::string where = join(bad) + " at epoch " + std::to_string(epoch) + ", batch " + std::to_string(b + 1) +
                              (passes_ > 1 ? " of pass " + std::to_string(pass + 1) : "");
    if (cfg_.on_nonfinite == "stop")
      throw Error("non-finite loss or gradient in " + where +
                  "; stopped before it reached the weights (on_nonfinite: stop). The last epoch's final.pt is intact");
    if (totals.skipped < 3) progress_->line("warning: non-finite loss or gradient in " + where + ": update skipped");
    totals.skipped += int64_t(bad.size());
  }
  totals.samples += idx.size(0) * world;
  for (std::size_t i = 0; i < losses.size(); ++i) {
    if (!losses[i].defined()) continue;
    totals.sums[i] = totals.sums[i].defined() ? totals.sums[i] + losses[i] : losses[i];
    ++totals.counts[i];
  }
  if (cfg_.detailed_logging) {
    std::vector<double> row{double(epoch), double(pass + 1), double(b + 1)};
    for (const auto& l : losses) row.push_back(l.defined() ? l.item<double>() : NAN);
    batches_->add(row);
  }
}

// Gradients and optimizer state exist from the first step on.
void Trainer::account_first_step() {
  first_step_ = false;
  double params = 0, grads = 0, opt_state = 0;
  for (const auto& p : method_->parameters()) params += tensor_bytes(p), grads += tensor_bytes(p.grad());
  for (auto* o : method_->optimizers()) opt_state += optimizer_state_bytes(*o);
  memory_.item("parameters", params);
  memory_.item("gradients", grads);
  memory_.item("optimizer state", opt_state);
  memory_.phase("training");
}

Interrupted Trainer::interrupt(int sig, int64_t epoch, int pass, const torch::Tensor& perm, const EpochTotals& totals,
                               double seconds) {
  // Save where this epoch stands and stop; --resume continues from this batch.
  method_->parallelism().synchronise();
  state_.in_epoch_batches = totals.done, state_.pass = pass, state_.permutation = perm;
  state_.samples = totals.samples, state_.skipped = totals.skipped, state_.train_seconds = seconds;
  state_.loss_sums = torch::full({int64_t(totals.sums.size())}, NAN);
  state_.loss_counts = torch::tensor(totals.counts, torch::kInt64);
  for (std::size_t i = 0; i < totals.sums.size(); ++i)
    if (totals.counts[i]) state_.loss_sums[int64_t(i)] = totals.sums[i].to(torch::kCPU);
  if (lead_) checkpoint(dir_ / "final.pt");
  if (lead_ && cfg_.detailed_logging) batches_->flush();
  return interrupted(sig,
                     "epoch " + std::to_string(epoch) + ", batch " + std::to_string(totals.done) + "/" +
                         std::to_string(batches_per_pass_ * passes_),
                     dir_);
}

void Trainer::checkpoint(const fs::path& path) {
  memory_.phase("checkpoint");  // each checkpoint is a phase of the memory account
  save_checkpoint(path, *method_, state_);
}

void Trainer::finish_epoch(int64_t epoch, EpochTotals& totals, double train_s) {
  release_free_memory();
  memory_.phase("evaluation");
  const auto te0 = Clock::now();
  const bool evaluated = epoch % cfg_.eval_every == 0 || epoch == cfg_.epochs;
  double test_acc = NAN, train_acc = NAN;
  if (evaluated)
    test_acc = evaluate(*method_, data_.test, 1, inference_, cfg_.inference_seed, cfg_.eval_batch_size, device_).mean;
  if (evaluated && cfg_.train_eval)
    train_acc = evaluate(*method_, data_.train, 1, inference_, cfg_.inference_seed, cfg_.eval_batch_size, device_).mean;
  const double eval_s = seconds_since(te0);

  std::vector<double> row{double(epoch)};
  for (std::size_t i = 0; i < totals.sums.size(); ++i)
    row.push_back(totals.counts[i] ? totals.sums[i].item<double>() / double(totals.counts[i]) : NAN);
  row.insert(row.end(),
             {double(totals.skipped), test_acc, train_acc, train_s, eval_s, double(totals.samples) / train_s});
  metrics_->add(row);
  if (lead_) metrics_->flush();
  if (lead_ && cfg_.detailed_logging) batches_->flush();

  state_.epoch = epoch;
  const bool improved = evaluated && test_acc > state_.best_test_accuracy;
  if (improved) state_.best_test_accuracy = test_acc, state_.best_epoch = epoch;
  if (evaluated) last_test_accuracy_ = test_acc;
  release_free_memory();
  if (lead_ && cfg_.save_final) checkpoint(dir_ / "final.pt");
  if (lead_ && cfg_.save_best && improved) checkpoint(dir_ / "best.pt");
  if (lead_ && cfg_.checkpoint_every > 0 && epoch % cfg_.checkpoint_every == 0)
    checkpoint(dir_ / ("epoch_" + std::to_string(epoch) + ".pt"));

  std::ostringstream msg;
  msg << std::fixed << std::setprecision(2) << "epoch " << epoch << "/" << cfg_.epochs << "  loss "
      << row[loss_names_.size()] << (totals.skipped ? "  skipped updates " + std::to_string(totals.skipped) : "");
  if (evaluated) msg << "  test accuracy " << test_acc << "%";
  if (evaluated && cfg_.train_eval) msg << "  train accuracy " << csv_number(train_acc) << "%";
  msg << "  " << std::setprecision(1) << train_s << " s (+" << eval_s << " s eval)  " << std::setprecision(0)
      << double(totals.samples) / train_s << " samples/s";
  progress_->line(msg.str());
}

bool Trainer::stop_after(int64_t epoch) {
  int sig = StopSignals::pending();
  // Ranks decide together: the lead's evaluation (data-parallel ranks differ in their
  // batch-norm statistics) and any rank's signal.
  bool reached = cfg_.early_stopping && last_test_accuracy_ >= cfg_.early_stopping_accuracy;
  if (dist_) sig = int(dist_->max(sig)), reached = dist_->max(lead_ && reached) != 0;
  if (sig && epoch < cfg_.epochs) {
    if (lead_ && !cfg_.save_final) checkpoint(dir_ / "final.pt");
    throw interrupted(sig, "the end of epoch " + std::to_string(epoch), dir_);
  }
  if (!reached) return false;
  stop_reason_ = "early_stopping";
  progress_->line("early stopping: test accuracy " + csv_number(last_test_accuracy_) + "% reached the target " +
                  csv_number(cfg_.early_stopping_accuracy) + "%");
  return true;
}

// Final evaluation (several stochastic inference runs of the final model), summary.json, the
// memory table and the figure.
nlohmann::json Trainer::summarise() {
  release_free_memory();
  memory_.phase("final evaluation");
  const auto tf0 = Clock::now();
  EvalResult final_eval = evaluate(*method_, data_.test, inference_.noise ? cfg_.inference_runs : 1, inference_,
                                   cfg_.inference_seed, cfg_.eval_batch_size, device_);
  const double final_eval_s = seconds_since(tf0);
  const double per_batch_eval = final_eval_s / double(final_eval.runs.size());

  nlohmann::json summary = {
      {"config", state_.config_name},
      {"method", cfg_.method},
      {"dataset", cfg_.dataset},
      {"architecture", cfg_.architecture},
      {"embedding", cfg_.embedding},
      {"test_accuracy", final_eval.mean},
      {"test_accuracy_std", final_eval.stddev},
      {"test_accuracy_runs", final_eval.runs},
      {"best_test_accuracy", state_.best_test_accuracy},
      {"best_epoch", state_.best_epoch},
      {"epochs", state_.epoch},
      {"stopped_by", stop_reason_},
      {"seconds_per_epoch", epochs_run_ ? train_seconds_total_ / double(epochs_run_) : NAN},
      {"samples_per_second", epochs_run_ ? double(n_) * passes_ * double(epochs_run_) / train_seconds_total_ : NAN},
      {"inference_images_per_second", double(data_.test.size()) / per_batch_eval},
      {"inference",
       {{"noise", inference_.noise},
        {"steps", inference_.steps},
        {"solver", to_string(inference_.solver)},
        {"sampler", to_string(inference_.sampler)}}},
      {"peak_rss_mb", memory_.peak_mb()},
      {"memory", memory_.json()},
      {"parameters", method_->parameter_count()},
      {"threads", threads_},
      {"conv_precision", conv_precision(cfg_)},
      {"workers", dist_ ? dist_->world() : 1},
      {"device", device_.str()},
      {"torch_version", torch_version()},
      {"steps", state_.step},
  };
  write_file_atomic(dir_ / "summary.json", summary.dump(2) + "\n");
  if (opt_.memory_report) progress_->line(memory_.table());
  std::ostringstream msg;
  msg << std::fixed << std::setprecision(2) << "final test accuracy " << final_eval.mean << "% ± " << final_eval.stddev
      << " over " << final_eval.runs.size() << " inference run(s); best " << state_.best_test_accuracy << "% (epoch "
      << state_.best_epoch << "); " << dir_.string() << "/summary.json";
  progress_->line(msg.str());
  if (cfg_.plot) {
    // A missing gnuplot must not fail a finished run: the figure can be drawn later (noprop plot).
    try {
      auto files = plot_run(read_run(dir_), dir_ / "curves");
      progress_->line("figures " + files[0].string() + ", " + files[1].string());
    } catch (const Error& e) {
      progress_->line(std::string("no figure: ") + e.what() + "; draw it later with: noprop plot " + dir_.string());
    }
  }
  return summary;
}

}  // namespace

nlohmann::json train(const RunOptions& opt) { return Trainer(opt).run(); }

}  // namespace noprop
