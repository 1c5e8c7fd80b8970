// noprop: train, evaluate and list configs for NoProp-DT, -CT, -FM and the back-propagation baseline.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <iostream>

#include "noprop/checkpoint.h"
#include "noprop/config.h"
#include "noprop/runtime.h"
#include "noprop/trainer.h"
#include "noprop/util.h"

namespace fs = std::filesystem;
using namespace noprop;

namespace {

struct TrainArgs {
  std::string name, config_file, resume, out, data_dir, device, lr_text;
  std::vector<std::string> sets;
  int epochs = 0, batch_size = 0, threads = -1;
  long long seed = -1;
  double lr = 0;
};

// The common flags are shorthands for --set; applied after the file and before --set.
void apply_flags(Config& cfg, const TrainArgs& a) {
  if (a.epochs) apply_override(cfg, "epochs=" + std::to_string(a.epochs));
  if (a.batch_size) apply_override(cfg, "batch_size=" + std::to_string(a.batch_size));
  if (!a.lr_text.empty()) apply_override(cfg, "learning_rate=" + a.lr_text);
  if (a.seed >= 0) apply_override(cfg, "seed=" + std::to_string(a.seed));
  if (!a.data_dir.empty()) cfg.data_dir = a.data_dir;
  if (!a.device.empty()) apply_override(cfg, "device=" + a.device);
  if (a.threads >= 0) apply_override(cfg, "threads=" + std::to_string(a.threads));
  for (const auto& s : a.sets) apply_override(cfg, s);
}

int run_train(const TrainArgs& a) {
  RunOptions opt;
  if (!a.resume.empty()) {
    // A resumed run keeps its config; only the run length and runtime settings may change.
    if (!a.name.empty() || !a.config_file.empty() || !a.sets.empty() || a.batch_size || !a.lr_text.empty() ||
        a.seed >= 0)
      throw Error("--resume continues a run with its own config; only --epochs, --threads, --device and --data-dir may be given");
    opt.out_dir = a.resume;
    auto state = read_checkpoint_state(opt.out_dir / "final.pt");
    apply_yaml(opt.cfg, state.config_yaml, (opt.out_dir / "final.pt").string());
    opt.config_name = state.config_name;
    opt.resume = true;
  } else {
    if (a.name.empty() == a.config_file.empty()) throw Error("train: give a config NAME or --config FILE (not both)");
    fs::path file = a.config_file.empty() ? find_named_config(a.name) : fs::path(a.config_file);
    opt.cfg = load_config_file(file);
    opt.config_name = a.name.empty() ? file.stem().string() : a.name;
    opt.out_dir = a.out.empty() ? default_run_dir(opt.config_name) : fs::path(a.out);
  }
  apply_flags(opt.cfg, a);
  train(opt);
  return 0;
}

struct EvalArgs {
  std::string checkpoint, data_dir, device;
  int runs = 0, threads = -1;
  bool no_noise = false;
  long long seed = -1;
  std::vector<int> steps;
  std::vector<std::string> solvers, samplers;
};

// One evaluation per combination of --steps, --solver and --sampler that the method uses.
int run_eval(const EvalArgs& a) {
  auto state = read_checkpoint_state(a.checkpoint);
  Config cfg;
  apply_yaml(cfg, state.config_yaml, a.checkpoint);
  if (!a.data_dir.empty()) cfg.data_dir = a.data_dir;
  if (!a.device.empty()) apply_override(cfg, "device=" + a.device);
  const bool continuous = cfg.method == "ct" || cfg.method == "fm";
  if (!continuous && (!a.steps.empty() || !a.solvers.empty() || !a.samplers.empty()))
    throw Error("--steps, --solver and --sampler apply to the ct and fm methods; this checkpoint is " + cfg.method);
  if (cfg.method == "fm" && !a.samplers.empty()) throw Error("--sampler applies to the ct method only");
  int used_threads = configure_threads(a.threads >= 0 ? a.threads : cfg.threads);
  auto device = select_device(cfg.device);
  auto dir = resolve_data_dir(cfg.dataset, cfg.data_dir);
  auto data = load_dataset(cfg.dataset, dir);
  auto method = make_method(cfg, data.info, &data.train, device);
  load_checkpoint(a.checkpoint, *method, /*restore_rng=*/false);

  InferenceOptions base = inference_options(cfg);
  base.noise = cfg.inference_noise && !a.no_noise;
  const int n = a.runs > 0 ? a.runs : (base.noise ? cfg.inference_runs : 1);
  const auto steps = a.steps.empty() ? std::vector<int>{base.steps} : a.steps;
  const auto solvers = a.solvers.empty() ? std::vector<std::string>{base.solver} : a.solvers;
  const auto samplers = a.samplers.empty() ? std::vector<std::string>{base.sampler} : a.samplers;
  nlohmann::json results = nlohmann::json::array();
  for (int st : steps) {
    for (const auto& sampler : samplers) {
      for (std::size_t si = 0; si < solvers.size(); ++si) {
        // CT's ancestral sampler has no solver: evaluate it once.
        if (cfg.method == "ct" && sampler == "ancestral" && si > 0) continue;
        InferenceOptions io = base;
        io.steps = st, io.sampler = sampler, io.solver = solvers[si];
        const auto t0 = std::chrono::steady_clock::now();
        auto r = evaluate(*method, data.test, n, io, a.seed >= 0 ? a.seed : cfg.inference_seed, cfg.eval_batch_size,
                          device);
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        nlohmann::json row = {{"test_accuracy", r.mean}, {"test_accuracy_std", r.stddev}, {"test_accuracy_runs", r.runs},
                              {"seconds", secs}};
        if (continuous) row["steps"] = st, row["solver"] = io.solver;
        if (cfg.method == "ct") row["sampler"] = sampler;
        if (cfg.method == "ct" && sampler == "ancestral") row.erase("solver");
        results.push_back(row);
      }
    }
  }
  nlohmann::json out = {{"checkpoint", a.checkpoint},
                        {"epoch", state.epoch},
                        {"method", cfg.method},
                        {"dataset", cfg.dataset},
                        {"test_accuracy", results[0]["test_accuracy"]},
                        {"test_accuracy_std", results[0]["test_accuracy_std"]},
                        {"test_accuracy_runs", results[0]["test_accuracy_runs"]},
                        {"inference_noise", base.noise},
                        {"threads", used_threads}};
  if (continuous) out["results"] = results;
  std::cout << out.dump(2) << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  init_process(argc, argv);
  CLI::App app{"NoProp: training neural networks without back-propagation (NoProp-DT, -CT, -FM and the backprop baseline)"};
  app.require_subcommand(1);

  TrainArgs ta;
  auto* train_cmd = app.add_subcommand("train", "Train a model: noprop train NAME | --config FILE | --resume DIR");
  train_cmd->add_option("name", ta.name, "named config (configs/NAME.yaml; 'noprop configs' lists them)");
  train_cmd->add_option("--config", ta.config_file, "config file")->check(CLI::ExistingFile);
  train_cmd->add_option("--set", ta.sets, "override a config key: --set key=value (repeatable)");
  train_cmd->add_option("--epochs", ta.epochs, "number of epochs")->check(CLI::Range(1, 1000000));
  train_cmd->add_option("--batch-size", ta.batch_size, "batch size")->check(CLI::Range(2, 1 << 20));
  train_cmd->add_option("--lr", ta.lr_text, "learning rate");
  train_cmd->add_option("--seed", ta.seed, "random seed")->check(CLI::NonNegativeNumber);
  train_cmd->add_option("--data-dir", ta.data_dir, "data directory (else $NOPROP_DATA, ./data, /usr/share/datasets)");
  train_cmd->add_option("--device", ta.device, "cpu, cuda or cuda:N");
  train_cmd->add_option("--threads", ta.threads, "CPU threads (0: all cores)")->check(CLI::Range(0, 4096));
  train_cmd->add_option("--out", ta.out, "run directory (default runs/<timestamp>-<config>)");
  train_cmd->add_option("--resume", ta.resume, "continue the run in DIR from its final.pt")->check(CLI::ExistingDirectory);

  EvalArgs ea;
  auto* eval_cmd = app.add_subcommand("eval", "Evaluate a checkpoint on the test set; prints JSON");
  eval_cmd->add_option("--checkpoint", ea.checkpoint, "checkpoint file (best.pt or final.pt)")->required();
  eval_cmd->add_option("--data-dir", ea.data_dir, "data directory");
  eval_cmd->add_option("--inference-runs", ea.runs, "stochastic inference runs (default: the config's)")
      ->check(CLI::Range(1, 1000));
  eval_cmd->add_flag("--no-noise", ea.no_noise, "deterministic inference: z_0 = 0, ε_t = 0");
  eval_cmd->add_option("--seed", ea.seed, "inference seed")->check(CLI::NonNegativeNumber);
  eval_cmd->add_option("--threads", ea.threads, "CPU threads (0: all cores)")->check(CLI::Range(0, 4096));
  eval_cmd->add_option("--device", ea.device, "cpu, cuda or cuda:N");
  eval_cmd->add_option("--steps", ea.steps, "ct, fm: inference step counts, e.g. 10,100,1000 (default: the config's)")
      ->delimiter(',')
      ->check(CLI::Range(1, 1000000));
  eval_cmd->add_option("--solver", ea.solvers, "ct flow, fm: ODE solvers, e.g. euler,heun")
      ->delimiter(',')
      ->check(CLI::IsMember({"euler", "heun"}));
  eval_cmd->add_option("--sampler", ea.samplers, "ct: samplers, e.g. ancestral,flow")
      ->delimiter(',')
      ->check(CLI::IsMember({"ancestral", "flow"}));

  auto* configs_cmd = app.add_subcommand("configs", "List the named configs");
  bool show_keys = false;
  configs_cmd->add_flag("--keys", show_keys, "list every config key instead");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  try {
    if (train_cmd->parsed()) return run_train(ta);
    if (eval_cmd->parsed()) return run_eval(ea);
    if (configs_cmd->parsed()) {
      if (show_keys) {
        for (const auto& [k, help] : config_keys()) std::printf("%-26s %s\n", k.c_str(), help.c_str());
      } else {
        for (const auto& c : list_named_configs()) std::printf("%-28s %s\n", c.name.c_str(), c.description.c_str());
      }
      return 0;
    }
  } catch (const Interrupted& e) {
    std::fprintf(stderr, "noprop: interrupted by %s\n", e.what());
    return 128 + e.signal;
  } catch (const Error& e) {
    std::fprintf(stderr, "noprop: error: %s\n", e.what());
    return 1;
  } catch (const c10::Error& e) {
    std::string what = e.what_without_backtrace();
    std::fprintf(stderr, "noprop: error: %s\n", what.substr(0, what.find('\n')).c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "noprop: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
