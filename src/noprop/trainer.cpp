#include "noprop/trainer.h"

#include <unistd.h>

#include <chrono>
#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <cstdio>
#include <fstream>
#include <iomanip>
#include <sstream>

#include "noprop/checkpoint.h"
#include "noprop/distributed.h"
#include "noprop/plot.h"
#include "noprop/runtime.h"
#include "noprop/util.h"

namespace noprop {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

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

nlohmann::json train(const RunOptions& opt) {
  Config cfg = opt.cfg;
  validate(cfg);
  // Several processes: rank 0 (the lead) writes the run directory and prints; the others train.
  auto dist = Distributed::from_environment(std::chrono::seconds(cfg.dist_timeout));
  const bool lead = !dist || dist->lead();
  const bool block_parallel = dist && cfg.method == "dt" && cfg.parallel == "block";
  if (block_parallel) cfg.shared_update = "per_batch";  // recorded in config.yaml
  // One GPU per local rank, as torchrun does.
  if (dist && cfg.device == "cuda") cfg.device = "cuda:" + std::to_string(dist->local_rank());
  const int threads = configure_threads(cfg.threads);
  const torch::Device device = select_device(cfg.device);
  const fs::path dir = opt.out_dir;
  MemoryAccount memory;

  // Everything that can fail on bad input happens before the run directory is touched.
  const fs::path data_dir = resolve_data_dir(cfg.dataset, cfg.data_dir);
  cfg.data_dir = data_dir.string();
  memory.phase("data");
  DataSplits data = load_dataset(cfg.dataset, data_dir);
  if (cfg.train_samples > 0 && cfg.train_samples < data.train.size()) {
    data.train.images = data.train.images.slice(0, 0, cfg.train_samples);
    data.train.labels = data.train.labels.slice(0, 0, cfg.train_samples);
  }
  if (cfg.test_samples > 0 && cfg.test_samples < data.test.size()) {
    data.test.images = data.test.images.slice(0, 0, cfg.test_samples);
    data.test.labels = data.test.labels.slice(0, 0, cfg.test_samples);
  }
  TrainingState state;
  // Whole storages: a train_samples slice keeps the whole split in memory.
  auto storage_bytes = [](const torch::Tensor& t) { return double(t.storage().nbytes()); };
  memory.item("data sets", storage_bytes(data.train.images) + storage_bytes(data.train.labels) +
                               storage_bytes(data.test.images) + storage_bytes(data.test.labels));

  memory.phase("model");
  torch::manual_seed(uint64_t(cfg.seed));
  auto method = make_method(cfg, data.info, &data.train, device);
  if (lead) check_free_space(dir, method->parameter_count());
  if (opt.resume) {
    state = load_checkpoint(dir / "final.pt", *method, /*restore_rng=*/true);
  } else {
    if (lead) prepare_run_dir(dir);
    state.config_name = opt.config_name;
  }
  method->set_distributed(dist.get());
  state.config_yaml = to_yaml(cfg);
  if (lead) write_file_atomic(dir / "config.yaml", state.config_yaml);
  // The training set lives on the device, except when augmentation (a CPU kernel) needs it.
  if (device.is_cuda() && !cfg.augment) {
    data.train.images = data.train.images.to(device), data.train.labels = data.train.labels.to(device);
  }

  const auto loss_names = method->loss_names();
  const InferenceOptions inference = inference_options(cfg);
  std::vector<std::string> columns{"epoch"};
  columns.insert(columns.end(), loss_names.begin(), loss_names.end());
  columns.insert(columns.end(), {"nonfinite_skipped", "test_accuracy", "train_accuracy", "seconds", "eval_seconds",
                                 "samples_per_second"});
  CsvLog metrics(dir / "metrics.csv", columns);
  std::vector<std::string> batch_columns{"epoch", "pass", "batch"};
  batch_columns.insert(batch_columns.end(), loss_names.begin(), loss_names.end());
  CsvLog batches(dir / "batches.csv", batch_columns);
  if (opt.resume) {
    metrics.load_existing(state.epoch);
    // An interrupted epoch flushed its per-batch rows up to the interruption.
    if (cfg.detailed_logging) batches.load_existing(state.epoch + (state.in_epoch_batches >= 0 ? 1 : 0));
  }

  Progress progress(opt.quiet || !lead, cfg.log_interval);
  progress.line("run " + dir.string() + ": " + cfg.method + " on " + cfg.dataset + ", " +
                std::to_string(method->parameter_count()) + " parameters, " + std::to_string(threads) +
                " threads, device " + device.str() +
                (dist ? ", " + std::to_string(dist->world()) + " workers (" +
                            (method->data_parallel() ? "data" : "block") + "-parallel)"
                      : "") +
                (opt.resume
                     ? ", resuming after epoch " + std::to_string(state.epoch) +
                           (state.in_epoch_batches >= 0 ? " and " + std::to_string(state.in_epoch_batches) +
                                                              " batches of epoch " + std::to_string(state.epoch + 1)
                                                        : "")
                     : ""));

  // Fault injection for tests: NOPROP_INJECT_NAN_AT_STEP=N makes the images of global step N
  // NaN (on_nonfinite); NOPROP_INTERRUPT_AT_STEP=N raises SIGINT after step N (interruption).
  const int64_t inject_step = step_from_env("NOPROP_INJECT_NAN_AT_STEP");
  const int64_t interrupt_step = step_from_env("NOPROP_INTERRUPT_AT_STEP");
  // NOPROP_EXIT_AT_STEP=N makes the last rank of a distributed run exit abruptly after step N.
  const int64_t exit_step = dist && dist->rank() == dist->world() - 1 ? step_from_env("NOPROP_EXIT_AT_STEP") : -1;
  // Data-parallel: this rank's rows of each batch.
  const bool shard = dist && method->data_parallel();
  const int64_t n = data.train.size(), B = cfg.batch_size;
  const int64_t batches_per_pass = (n + B - 1) / B;
  const int passes = method->passes_per_epoch();
  if (state.in_epoch_batches >= 0) {
    const auto& p = state.permutation;
    const auto k = int64_t(loss_names.size());
    if (!p.defined() || p.dim() != 1 || p.numel() != n || p.scalar_type() != torch::kInt64 || state.pass < 0 ||
        state.pass >= passes || state.in_epoch_batches > batches_per_pass * passes ||
        state.in_epoch_batches < state.pass * batches_per_pass || !state.loss_sums.defined() ||
        state.loss_sums.numel() != k || !state.loss_counts.defined() || state.loss_counts.numel() != k ||
        state.loss_counts.scalar_type() != torch::kInt64)
      throw Error((dir / "final.pt").string() + ": its interrupted-epoch state does not match this run");
  }
  const bool scheduled_lr = cfg.lr_schedule != "constant" || cfg.warmup_epochs > 0;
  double train_seconds_total = 0;
  int64_t epochs_run = 0;
  std::string stop_reason = "epochs";
  EvalResult last_eval;
  double last_eval_acc = -1;

  // Each checkpoint is a phase of the memory account.
  auto checkpoint = [&](const fs::path& path) {
    memory.phase("checkpoint");
    save_checkpoint(path, *method, state);
  };
  bool first_step = true;
  StopSignals stop_signals;
  for (int64_t epoch = state.epoch + 1; epoch <= cfg.epochs; ++epoch) {
    release_free_memory();
    memory.phase(first_step ? "first step" : "training");
    method->set_training(true);
    const auto t0 = Clock::now();
    std::vector<torch::Tensor> sums(loss_names.size());
    std::vector<int64_t> counts(loss_names.size(), 0);
    int64_t samples = 0, done = 0, skipped = 0;
    double seconds_before = 0;  // training time of this epoch before an interruption
    // Resuming inside this epoch: its batch order, position and running sums come back.
    const bool mid = state.in_epoch_batches >= 0;
    if (mid) {
      done = state.in_epoch_batches, samples = state.samples, skipped = state.skipped;
      seconds_before = state.train_seconds;
      for (std::size_t i = 0; i < sums.size(); ++i) {
        counts[i] = state.loss_counts[int64_t(i)].item<int64_t>();
        if (counts[i]) sums[i] = state.loss_sums[int64_t(i)].to(device);
      }
    }
    const int64_t total = batches_per_pass * passes;
    for (int pass = mid ? int(state.pass) : 0; pass < passes; ++pass) {
      const bool resumed_pass = mid && pass == state.pass;
      auto perm = resumed_pass ? state.permutation : torch::randperm(n, torch::kInt64);
      perm = perm.to(data.train.images.device());
      for (int64_t b = resumed_pass ? done - pass * batches_per_pass : 0; b < batches_per_pass; ++b) {
        int sig = StopSignals::pending();
        if (dist) sig = int(dist->max(sig));  // every rank stops at the same batch
        if (sig) {
          // Save where this epoch stands and stop; --resume continues from this batch.
          method->synchronise();
          state.in_epoch_batches = done, state.pass = pass, state.permutation = perm;
          state.samples = samples, state.skipped = skipped, state.train_seconds = seconds_before + seconds_since(t0);
          state.loss_sums = torch::full({int64_t(sums.size())}, NAN);
          state.loss_counts = torch::tensor(counts, torch::kInt64);
          for (std::size_t i = 0; i < sums.size(); ++i)
            if (counts[i]) state.loss_sums[int64_t(i)] = sums[i].to(torch::kCPU);
          if (lead) checkpoint(dir / "final.pt");
          if (lead && cfg.detailed_logging) batches.flush();
          throw interrupted(
              sig, "epoch " + std::to_string(epoch) + ", batch " + std::to_string(done) + "/" + std::to_string(total),
              dir);
        }
        auto idx = perm.slice(0, b * B, std::min(n, (b + 1) * B));
        ++done;
        const int64_t world = shard ? dist->world() : 1;
        if (idx.size(0) < 2 * world) continue;  // batch norm needs two samples (per rank)
        if (shard) {
          const int64_t m = idx.size(0), r = dist->rank();
          idx = idx.slice(0, r * m / world, (r + 1) * m / world);
        }
        auto x = data.train.select(idx);
        auto y = data.train.labels.index_select(0, idx);
        if (cfg.augment) augment_batch(x, 4);
        if (state.step + 1 == inject_step) x = torch::full_like(x, NAN);
        if (scheduled_lr) method->set_learning_rate(learning_rate_at(cfg, state.step, batches_per_pass * passes));
        auto losses = method->train_step(x.to(device), y.to(device), pass);
        ++state.step;
        if (first_step) {
          // Gradients and optimizer state exist from the first step on.
          first_step = false;
          double params = 0, grads = 0, opt_state = 0;
          for (const auto& p : method->parameters()) params += tensor_bytes(p), grads += tensor_bytes(p.grad());
          for (auto* o : method->optimizers()) opt_state += optimizer_state_bytes(*o);
          memory.item("parameters", params);
          memory.item("gradients", grads);
          memory.item("optimizer state", opt_state);
          memory.phase("training");
        }
        if (state.step == interrupt_step) std::raise(SIGINT);
        if (state.step == exit_step) std::_Exit(3);
        if (auto bad = method->take_nonfinite(); !bad.empty()) {
          const std::string where = join(bad) + " at epoch " + std::to_string(epoch) + ", batch " +
                                    std::to_string(b + 1) + (passes > 1 ? " of pass " + std::to_string(pass + 1) : "");
          if (cfg.on_nonfinite == "stop")
            throw Error(
                "non-finite loss or gradient in " + where +
                "; stopped before it reached the weights (on_nonfinite: stop). The last epoch's final.pt is intact");
          if (skipped < 3) progress.line("warning: non-finite loss or gradient in " + where + ": update skipped");
          skipped += int64_t(bad.size());
        }
        samples += idx.size(0) * world;
        for (std::size_t i = 0; i < losses.size(); ++i) {
          if (!losses[i].defined()) continue;
          sums[i] = sums[i].defined() ? sums[i] + losses[i] : losses[i];
          ++counts[i];
        }
        if (cfg.detailed_logging) {
          std::vector<double> row{double(epoch), double(pass + 1), double(b + 1)};
          for (const auto& l : losses) row.push_back(l.defined() ? l.item<double>() : NAN);
          batches.add(row);
        }
        const double el = seconds_since(t0);
        std::string extra;
        // Reading the loss synchronises; do it only when a line is printed anyway.
        if ((done % cfg.log_interval == 0 || done == total) && counts.back() > 0)
          extra = "  loss " + csv_number(sums.back().item<double>() / double(counts.back()));
        progress.update("epoch " + std::to_string(epoch) + "/" + std::to_string(cfg.epochs), done, total,
                        double(samples) / el, el / double(done) * double(total - done), extra);
      }
    }
    const double train_s = seconds_before + seconds_since(t0);
    state.in_epoch_batches = -1;
    method->synchronise();
    if (shard) {
      // Each rank averaged its own rows: the epoch's losses are the mean over the ranks.
      for (std::size_t i = 0; i < sums.size(); ++i)
        if (!sums[i].defined()) sums[i] = torch::zeros({}, device);
      dist->allreduce_sum(sums);
      for (auto& v : sums) v.div_(double(dist->world()));
    }
    train_seconds_total += train_s;
    ++epochs_run;

    release_free_memory();
    memory.phase("evaluation");
    const auto te0 = Clock::now();
    last_eval = evaluate(*method, data.test, 1, inference, cfg.inference_seed, cfg.eval_batch_size, device);
    last_eval_acc = last_eval.mean;
    double train_acc = NAN;
    if (cfg.train_eval)
      train_acc = evaluate(*method, data.train, 1, inference, cfg.inference_seed, cfg.eval_batch_size, device).mean;
    const double eval_s = seconds_since(te0);

    std::vector<double> row{double(epoch)};
    for (std::size_t i = 0; i < sums.size(); ++i)
      row.push_back(counts[i] ? sums[i].item<double>() / double(counts[i]) : NAN);
    row.insert(row.end(), {double(skipped), last_eval_acc, train_acc, train_s, eval_s, double(samples) / train_s});
    metrics.add(row);
    if (lead) metrics.flush();
    if (lead && cfg.detailed_logging) batches.flush();

    state.epoch = epoch;
    bool improved = last_eval_acc > state.best_test_accuracy;
    if (improved) state.best_test_accuracy = last_eval_acc, state.best_epoch = epoch;
    release_free_memory();
    if (lead && cfg.save_final) checkpoint(dir / "final.pt");
    if (lead && cfg.save_best && improved) checkpoint(dir / "best.pt");
    if (lead && cfg.checkpoint_every > 0 && epoch % cfg.checkpoint_every == 0)
      checkpoint(dir / ("epoch_" + std::to_string(epoch) + ".pt"));

    std::ostringstream msg;
    msg << std::fixed << std::setprecision(2) << "epoch " << epoch << "/" << cfg.epochs << "  loss "
        << row[loss_names.size()] << (skipped ? "  skipped updates " + std::to_string(skipped) : "")
        << "  test accuracy " << last_eval_acc << "%"
        << (cfg.train_eval ? "  train accuracy " + csv_number(train_acc) + "%" : "") << "  " << std::setprecision(1)
        << train_s << " s (+" << eval_s << " s eval)  " << std::setprecision(0) << double(samples) / train_s
        << " samples/s";
    progress.line(msg.str());

    int sig = StopSignals::pending();
    // Ranks decide together: the lead's evaluation (data-parallel ranks differ in their
    // batch-norm statistics) and any rank's signal.
    bool reached = cfg.early_stopping && last_eval_acc >= cfg.early_stopping_accuracy;
    if (dist) sig = int(dist->max(sig)), reached = dist->max(lead && reached) != 0;
    if (sig && epoch < cfg.epochs) {
      if (lead && !cfg.save_final) checkpoint(dir / "final.pt");
      throw interrupted(sig, "the end of epoch " + std::to_string(epoch), dir);
    }
    if (reached) {
      stop_reason = "early_stopping";
      progress.line("early stopping: test accuracy " + csv_number(last_eval_acc) + "% reached the target " +
                    csv_number(cfg.early_stopping_accuracy) + "%");
      break;
    }
  }

  if (!lead) return nullptr;  // the lead evaluates and reports; the others are done

  // Final evaluation: several stochastic inference runs of the final model.
  release_free_memory();
  memory.phase("final evaluation");
  const auto tf0 = Clock::now();
  EvalResult final_eval = evaluate(*method, data.test, inference.noise ? cfg.inference_runs : 1, inference,
                                   cfg.inference_seed, cfg.eval_batch_size, device);
  const double final_eval_s = seconds_since(tf0);
  const double per_batch_eval = final_eval_s / double(final_eval.runs.size());

  nlohmann::json summary = {
      {"config", state.config_name},
      {"method", cfg.method},
      {"dataset", cfg.dataset},
      {"architecture", cfg.architecture},
      {"embedding", cfg.embedding},
      {"test_accuracy", final_eval.mean},
      {"test_accuracy_std", final_eval.stddev},
      {"test_accuracy_runs", final_eval.runs},
      {"best_test_accuracy", state.best_test_accuracy},
      {"best_epoch", state.best_epoch},
      {"epochs", state.epoch},
      {"stopped_by", stop_reason},
      {"seconds_per_epoch", epochs_run ? train_seconds_total / double(epochs_run) : NAN},
      {"samples_per_second", epochs_run ? double(n) * passes * double(epochs_run) / train_seconds_total : NAN},
      {"inference_images_per_second", double(data.test.size()) / per_batch_eval},
      {"inference",
       {{"noise", inference.noise},
        {"steps", inference.steps},
        {"solver", inference.solver},
        {"sampler", inference.sampler}}},
      {"peak_rss_mb", memory.peak_mb()},
      {"memory", memory.json()},
      {"parameters", method->parameter_count()},
      {"threads", threads},
      {"workers", dist ? dist->world() : 1},
      {"device", device.str()},
      {"torch_version", torch_version()},
      {"steps", state.step},
  };
  write_file_atomic(dir / "summary.json", summary.dump(2) + "\n");
  if (opt.memory_report) progress.line(memory.table());
  std::ostringstream msg;
  msg << std::fixed << std::setprecision(2) << "final test accuracy " << final_eval.mean << "% ± " << final_eval.stddev
      << " over " << final_eval.runs.size() << " inference run(s); best " << state.best_test_accuracy << "% (epoch "
      << state.best_epoch << "); " << dir.string() << "/summary.json";
  progress.line(msg.str());
  if (cfg.plot) {
    // A missing gnuplot must not fail a finished run: the figure can be drawn later (noprop plot).
    try {
      auto files = plot_run(read_run(dir), dir / "curves");
      progress.line("figures " + files[0].string() + ", " + files[1].string());
    } catch (const Error& e) {
      progress.line(std::string("no figure: ") + e.what() + "; draw it later with: noprop plot " + dir.string());
    }
  }
  return summary;
}

}  // namespace noprop
