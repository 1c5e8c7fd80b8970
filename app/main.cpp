// noprop: train, evaluate and list configs for NoProp-DT, -CT, -FM and the back-propagation baseline.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdlib>
#include <thread>
#include <cstdio>
#include <iostream>

#include "noprop/checkpoint.h"
#include "noprop/config.h"
#include "noprop/distributed.h"
#include "noprop/datasets.h"
#include "noprop/download.h"
#include "noprop/image.h"
#include "noprop/methods/registry.h"
#include "noprop/predict.h"
#include "noprop/plot.h"
#include "noprop/runs.h"
#include "noprop/runtime.h"
#include "noprop/trainer.h"
#include "noprop/util.h"

namespace fs = std::filesystem;
using namespace noprop;

namespace {

struct TrainArgs {
  std::string name, config_file, resume, out, data_dir, device, lr_text;
  std::vector<std::string> sets;
  int epochs = 0, batch_size = 0, threads = -1, workers = 1;
  long long seed = -1;
  double lr = 0;
  bool memory_report = false;
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

int run_train(const TrainArgs& a, int argc, char** argv) {
  if (a.workers > 1) {
    if (std::getenv("WORLD_SIZE"))
      throw Error("--workers starts its own workers; it cannot be used inside one (WORLD_SIZE is set)");
    // The workers get this command line without --workers, and an equal share of the cores.
    std::vector<std::string> args;
    for (int i = 1; i < argc; ++i) {
      std::string s = argv[i];
      if (s == "--workers" || s == "--threads")
        ++i;
      else if (s.rfind("--workers=", 0) != 0 && s.rfind("--threads=", 0) != 0)
        args.push_back(s);
    }
    const int cores = int(std::thread::hardware_concurrency());
    const int threads = a.threads > 0 ? a.threads : std::max(1, cores / a.workers);
    return launch_workers(a.workers, threads, args);
  }
  RunOptions opt;
  if (!a.resume.empty()) {
    // A resumed run keeps its config; only the run length and runtime settings may change.
    if (!a.name.empty() || !a.config_file.empty() || !a.sets.empty() || a.batch_size || !a.lr_text.empty() ||
        a.seed >= 0)
      throw Error(
          "--resume continues a run with its own config; only --epochs, --threads, --device and --data-dir may be "
          "given");
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
  opt.memory_report = a.memory_report;
  train(opt);
  return 0;
}

struct EvalArgs {
  std::string checkpoint, data_dir, device;
  int runs = 0, threads = -1;
  bool no_noise = false, noise = false, confusion = false;
  long long seed = -1;
  std::vector<int> steps;
  std::vector<std::string> solvers, samplers, readouts;
};

// A 2-D integer tensor as nested JSON arrays.
nlohmann::json tensor_rows(const torch::Tensor& t) {
  auto c = t.to(torch::kCPU, torch::kInt64).contiguous();
  nlohmann::json rows = nlohmann::json::array();
  for (int64_t i = 0; i < c.size(0); ++i) {
    const auto* p = c[i].data_ptr<int64_t>();
    rows.push_back(std::vector<int64_t>(p, p + c.size(1)));
  }
  return rows;
}

// One evaluation per combination of --steps, --solver, --sampler and --readout that the method uses.
int run_eval(const EvalArgs& a) {
  auto model = load_model(a.checkpoint, a.device);
  const Config& cfg = model.cfg;
  const auto uses = method_spec(cfg.method).inference;
  // A flag that the checkpoint's method does not read is an error naming the methods that do.
  using Uses = MethodSpec::Uses;
  auto refuse = [&](bool given, const std::string& flag, bool Uses::*field) {
    if (!given || uses.*field) return;
    std::vector<std::string> users;
    for (const auto& s : method_specs())
      if (s.inference.*field) users.push_back(s.name);
    throw Error(flag + ": options that apply to the " + join(users, " and ") + " methods; this checkpoint is " +
                cfg.method);
  };
  refuse(!a.steps.empty(), "--steps", &Uses::steps);
  refuse(!a.solvers.empty(), "--solver", &Uses::solver);
  refuse(!a.samplers.empty(), "--sampler", &Uses::sampler);
  refuse(!a.readouts.empty(), "--readout", &Uses::readout);
  int used_threads = configure_threads(a.threads >= 0 ? a.threads : cfg.threads);
  auto data = load_dataset(cfg.dataset, resolve_data_dir(cfg.dataset, a.data_dir.empty() ? cfg.data_dir : a.data_dir));

  InferenceOptions base = inference_options(cfg);
  base.noise = a.noise || (cfg.inference_noise && !a.no_noise);
  const int n = a.runs > 0 ? a.runs : (base.noise ? cfg.inference_runs : 1);
  const auto steps = a.steps.empty() ? std::vector<int>{base.steps} : a.steps;
  auto parsed = [](const std::vector<std::string>& names, auto fallback, auto parse) {
    std::vector<decltype(fallback)> out;
    for (const auto& n : names) out.push_back(parse(n));
    return out.empty() ? std::vector<decltype(fallback)>{fallback} : out;
  };
  const auto solvers = parsed(a.solvers, base.solver, parse_solver);
  const auto samplers = parsed(a.samplers, base.sampler, parse_sampler);
  const auto readouts = parsed(a.readouts, base.readout, parse_readout);
  nlohmann::json results = nlohmann::json::array();
  std::vector<InferenceOptions> combos;
  for (const auto& readout : readouts)
    for (int st : steps)
      for (const auto& sampler : samplers)
        for (std::size_t si = 0; si < solvers.size(); ++si) {
          // CT's ancestral sampler has no solver: evaluate it once.
          if (uses.sampler && sampler == Sampler::ancestral && si > 0) continue;
          InferenceOptions io = base;
          io.steps = st, io.sampler = sampler, io.solver = solvers[si], io.readout = readout;
          combos.push_back(io);
        }
  for (const auto& io : combos) {
    const auto t0 = std::chrono::steady_clock::now();
    auto r = evaluate(*model.method, data.test, n, io, a.seed >= 0 ? a.seed : cfg.inference_seed, cfg.eval_batch_size,
                      model.device);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    nlohmann::json row = {
        {"test_accuracy", r.mean}, {"test_accuracy_std", r.stddev}, {"test_accuracy_runs", r.runs}, {"seconds", secs}};
    if (uses.steps) row["steps"] = io.steps;
    if (uses.solver && !(uses.sampler && io.sampler == Sampler::ancestral)) row["solver"] = to_string(io.solver);
    if (uses.sampler) row["sampler"] = to_string(io.sampler);
    if (uses.readout) row["readout"] = to_string(io.readout);
    if (a.confusion) row["confusion"] = tensor_rows(r.confusion);
    results.push_back(row);
  }
  nlohmann::json out = {{"checkpoint", a.checkpoint},
                        {"epoch", model.state.epoch},
                        {"method", cfg.method},
                        {"dataset", cfg.dataset},
                        {"test_accuracy", results[0]["test_accuracy"]},
                        {"test_accuracy_std", results[0]["test_accuracy_std"]},
                        {"test_accuracy_runs", results[0]["test_accuracy_runs"]},
                        {"inference_noise", base.noise},
                        {"threads", used_threads}};
  if (uses.steps || results.size() > 1) out["results"] = results;
  if (a.confusion) {
    // Which class the head gives a perfect latent z = u_k, for each class k: a head that sends
    // two embeddings to one class cannot tell those classes apart, whatever the blocks learn.
    torch::NoGradGuard no_grad;
    auto net = model.method->network();
    auto u = net->embed->weight.detach();
    out["confusion"] = results[0]["confusion"];
    out["head_class_of_embedding"] = tensor_rows(net->head->log_prob(u, u).argmax(1).unsqueeze(0))[0];
  }
  std::cout << out.dump(2) << std::endl;
  return 0;
}

struct PredictArgs {
  std::string checkpoint, device;
  std::vector<std::string> images;
  bool invert = false, no_noise = false;
  int runs = 0, threads = -1;
  long long seed = -1;
};

// Class probabilities of each image file, as JSON.
int run_predict(const PredictArgs& a) {
  configure_threads(a.threads >= 0 ? a.threads : 0);
  auto model = load_model(a.checkpoint, a.device);
  const auto& info = model.info;
  std::vector<uint8_t> pixels;
  for (const auto& f : a.images) {
    auto img = read_image(f, info, a.invert);
    pixels.insert(pixels.end(), img.begin(), img.end());
  }
  auto x = normalise_images(pixels.data(), int64_t(a.images.size()), info);
  InferenceOptions io = inference_options(model.cfg);
  io.noise = model.cfg.inference_noise && !a.no_noise;
  const int runs = a.runs > 0 ? a.runs : model.cfg.inference_runs;
  auto probs = predict_probabilities(model, x, io, runs, a.seed >= 0 ? a.seed : model.cfg.inference_seed);
  const auto names = class_names(info.name);
  nlohmann::json preds = nlohmann::json::array();
  for (std::size_t i = 0; i < a.images.size(); ++i) {
    auto p = probs[int64_t(i)].contiguous();
    std::vector<double> pv(p.data_ptr<float>(), p.data_ptr<float>() + p.numel());
    const auto best = std::size_t(p.argmax().item<int64_t>());
    preds.push_back({{"file", a.images[i]},
                     {"class", best},
                     {"label", names[best]},
                     {"probability", pv[best]},
                     {"probabilities", pv}});
  }
  nlohmann::json out = {{"checkpoint", a.checkpoint},  {"method", model.cfg.method},
                        {"dataset", info.name},        {"inference_runs", io.noise ? runs : 1},
                        {"inference_noise", io.noise}, {"classes", names},
                        {"predictions", preds}};
  std::cout << out.dump(2) << std::endl;
  return 0;
}

struct ImageArgs {
  std::string dataset, split = "test", out, data_dir;
  int64_t index = 0;
};

// One data-set image as PNG, e.g. to try `noprop predict` on.
int run_data_image(const ImageArgs& a) {
  auto data = load_dataset(a.dataset, resolve_data_dir(a.dataset, a.data_dir));
  const Dataset& split = a.split == "train" ? data.train : data.test;
  if (a.index >= split.size())
    throw Error("--index " + std::to_string(a.index) + " is out of range: the " + a.split + " split has " +
                std::to_string(split.size()) + " images");
  const auto& info = data.info;
  auto raw = split.images[a.index].contiguous();  // the bytes of the file
  write_png(a.out, raw.data_ptr<uint8_t>(), info.channels, info.height, info.width);
  const int64_t label = split.labels[a.index].item<int64_t>();
  nlohmann::json out = {{"file", a.out},    {"dataset", a.dataset},
                        {"split", a.split}, {"index", a.index},
                        {"class", label},   {"label", class_names(a.dataset)[std::size_t(label)]}};
  std::cout << out.dump(2) << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  init_process(argc, argv);
  CLI::App app{
      "NoProp: training neural networks without back-propagation (NoProp-DT, -CT, -FM and the backprop baseline)",
      "noprop"};
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
  train_cmd
      ->add_option("--workers", ta.workers,
                   "processes on this machine: NoProp-DT trains its blocks in parallel, the other methods split "
                   "each batch (config key parallel); multi-machine runs set RANK, WORLD_SIZE, MASTER_ADDR, "
                   "MASTER_PORT instead")
      ->check(CLI::Range(1, 1024));
  train_cmd->add_option("--resume", ta.resume, "continue the run in DIR from its final.pt")
      ->check(CLI::ExistingDirectory);
  train_cmd->add_flag("--memory-report", ta.memory_report,
                      "print where the run's memory went: each phase's peak and the known sizes (always in "
                      "summary.json's \"memory\")");

  EvalArgs ea;
  auto* eval_cmd = app.add_subcommand("eval", "Evaluate a checkpoint on the test set; prints JSON");
  eval_cmd->add_option("--checkpoint", ea.checkpoint, "checkpoint file (best.pt or final.pt)")->required();
  eval_cmd->add_option("--data-dir", ea.data_dir, "data directory");
  eval_cmd->add_option("--inference-runs", ea.runs, "stochastic inference runs (default: the config's)")
      ->check(CLI::Range(1, 1000));
  auto* no_noise_flag = eval_cmd->add_flag("--no-noise", ea.no_noise, "deterministic inference: z_0 = 0, ε_t = 0");
  eval_cmd->add_flag("--noise", ea.noise, "stochastic inference (z_0 and ε_t drawn) whatever the config says")
      ->excludes(no_noise_flag);
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
  eval_cmd->add_flag(
      "--confusion", ea.confusion,
      "also print the confusion matrix (rows: true class) and the head's class for each class embedding");
  eval_cmd->add_option("--readout", ea.readouts, "dt: readouts, e.g. head,blocks (default: the config's)")
      ->delimiter(',')
      ->check(CLI::IsMember({"head", "blocks"}));

  auto* configs_cmd = app.add_subcommand("configs", "List the named configs");
  bool show_keys = false;
  configs_cmd->add_flag("--keys", show_keys, "list every config key instead");

  std::vector<std::string> plot_runs;
  std::string plot_out;
  auto* plot_cmd = app.add_subcommand(
      "plot", "Draw each run's test accuracy and training losses against epoch and wall-clock time (PNG and SVG)");
  plot_cmd->add_option("runs", plot_runs, "run directories")->required()->check(CLI::ExistingDirectory);
  plot_cmd->add_option("--out", plot_out,
                       "file prefix for a single run's figures (default RUN/curves: RUN/curves.png, RUN/curves.svg)");

  std::vector<std::string> compare_runs;
  std::string compare_out = "compare";
  double compare_target = -1;
  auto* compare_cmd = app.add_subcommand(
      "compare", "Compare runs: a Markdown table (accuracy, time to a target, s/epoch, memory) and a combined figure");
  compare_cmd->add_option("runs", compare_runs, "run directories")->required()->check(CLI::ExistingDirectory);
  compare_cmd
      ->add_option("--target", compare_target,
                   "test accuracy (%) to measure epochs and seconds to (default: the lowest best accuracy "
                   "among the runs, which every run reaches)")
      ->check(CLI::Range(0.0, 100.0));
  compare_cmd->add_option("--out", compare_out,
                          "file prefix of the figure (default compare: compare.png, compare.svg)");
  bool compare_no_plot = false;
  compare_cmd->add_flag("--no-plot", compare_no_plot, "print the table only");

  std::vector<std::string> report_runs;
  auto* report_cmd = app.add_subcommand(
      "report",
      "Results table in Markdown, laid out like the paper's Table 1 (mean ± std over seeds and inference runs)");
  report_cmd->add_option("runs", report_runs, "run directories")->required()->check(CLI::ExistingDirectory);

  PredictArgs pa;
  auto* predict_cmd = app.add_subcommand("predict", "Classify image files with a trained model; prints JSON");
  predict_cmd->add_option("images", pa.images, "image files: PNG, binary PGM/PPM (P5/P6), JPEG or BMP")
      ->required()
      ->check(CLI::ExistingFile);
  predict_cmd->add_option("--checkpoint", pa.checkpoint, "checkpoint file (best.pt or final.pt)")->required();
  predict_cmd->add_flag("--invert", pa.invert,
                        "invert the grey levels first (MNIST digits are light on dark; use for dark ink on paper)");
  predict_cmd->add_option("--inference-runs", pa.runs, "stochastic inference runs averaged (default: the config's)")
      ->check(CLI::Range(1, 1000));
  predict_cmd->add_flag("--no-noise", pa.no_noise, "deterministic inference: z_0 = 0, ε_t = 0");
  predict_cmd->add_option("--seed", pa.seed, "inference seed")->check(CLI::NonNegativeNumber);
  predict_cmd->add_option("--device", pa.device, "cpu, cuda or cuda:N");
  predict_cmd->add_option("--threads", pa.threads, "CPU threads (0: all cores)")->check(CLI::Range(0, 4096));

  auto* data_cmd = app.add_subcommand("data", "Data sets: download them, export images");
  data_cmd->require_subcommand(1);
  std::string dl_name, dl_dir = "data";
  std::vector<std::string> dl_mirrors;
  bool dl_quiet = false;
  auto* download_cmd = data_cmd->add_subcommand(
      "download",
      "Download a data set from its mirrors, verify the published MD5s and unpack it where the readers look");
  download_cmd->add_option("dataset", dl_name, join(download_datasets(), ", "))->required();
  download_cmd->add_option("--dir", dl_dir, "data directory (default ./data, where training looks first)");
  download_cmd->add_option("--mirror", dl_mirrors, "a base URL to try before the published mirrors (repeatable)");
  download_cmd->add_flag("--quiet", dl_quiet, "no progress output");

  ImageArgs ia;
  auto* image_cmd = data_cmd->add_subcommand("image", "Write one image of a data set as PNG; prints its label as JSON");
  image_cmd->add_option("dataset", ia.dataset, join(dataset_names(), ", "))
      ->required()
      ->check(CLI::IsMember(dataset_names()));
  image_cmd->add_option("--index", ia.index, "image index in the split (default 0)")->check(CLI::NonNegativeNumber);
  image_cmd->add_option("--split", ia.split, "test or train (default test)")->check(CLI::IsMember({"test", "train"}));
  image_cmd->add_option("--out", ia.out, "PNG file to write")->required();
  image_cmd->add_option("--data-dir", ia.data_dir, "data directory (else $NOPROP_DATA, ./data, /usr/share/datasets)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  try {
    if (train_cmd->parsed()) return run_train(ta, argc, argv);
    if (eval_cmd->parsed()) return run_eval(ea);
    if (predict_cmd->parsed()) return run_predict(pa);
    if (image_cmd->parsed()) return run_data_image(ia);
    if (download_cmd->parsed()) {
      DownloadOptions opt;
      opt.progress = !dl_quiet;
      for (auto m : dl_mirrors) opt.extra_mirrors.push_back(!m.empty() && m.back() == '/' ? m : m + "/");
      auto where = download_dataset(download_source(dl_name), dl_dir, opt);
      locate_dataset(dl_name, where);  // the readers find what was unpacked
      std::printf("%s: %s\n", dl_name.c_str(), where.c_str());
      return 0;
    }
    if (plot_cmd->parsed()) {
      if (!plot_out.empty() && plot_runs.size() > 1) throw Error("plot: --out needs a single run");
      for (const auto& r : read_runs(plot_runs)) {
        auto files = plot_run(r, plot_out.empty() ? r.dir / "curves" : fs::path(plot_out));
        std::printf("%s\n%s\n", files[0].c_str(), files[1].c_str());
      }
      return 0;
    }
    if (compare_cmd->parsed()) {
      auto runs = read_runs(compare_runs);
      std::printf("%s", compare_table(runs, compare_target >= 0 ? compare_target : default_target(runs)).c_str());
      if (!compare_no_plot) {
        auto files = plot_comparison(runs, compare_out);
        std::printf("\nfigures: %s, %s\n", files[0].c_str(), files[1].c_str());
      }
      return 0;
    }
    if (report_cmd->parsed()) {
      std::printf("%s", report_table(read_runs(report_runs)).c_str());
      return 0;
    }
    if (configs_cmd->parsed()) {
      if (show_keys) {
        for (const auto& [k, help] : config_keys()) std::printf("%-26s %s\n", k.c_str(), help.c_str());
      } else {
        for (const auto& c : list_named_configs()) std::printf("%-28s %s\n", c.name.c_str(), c.description.c_str());
      }
      return 0;
    }
  } catch (const Interrupted& e) {
    // In a distributed run every worker stops alike; the lead says so.
    if (const char* rank = std::getenv("RANK"); !rank || std::string(rank) == "0")
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
