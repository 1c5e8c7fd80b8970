#include "noprop/config.h"

#include <yaml-cpp/yaml.h>

#include <cstdlib>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include "noprop/blocks/registry.h"
#include "noprop/datasets.h"
#include "noprop/methods/registry.h"
#include "noprop/util.h"

namespace noprop {
namespace {

struct Key {
  std::string name;
  std::string help;
  std::function<void(Config&, const YAML::Node&, const std::string& where)> set;
  std::function<void(const Config&, YAML::Emitter&)> emit;
};

std::string scalar_text(const YAML::Node& n) {
  if (n.IsScalar()) return n.Scalar();
  std::ostringstream ss;
  ss << n;
  return ss.str();
}

[[noreturn]] void bad(const std::string& where, const std::string& key, const std::string& what) {
  throw Error(where + ": config key '" + key + "': " + what);
}

std::string number_text(double v) {
  std::ostringstream ss;
  ss << v;
  return ss.str();
}

template <class T>
Key number(const char* name, T Config::*member, double lo, double hi, const char* help) {
  return Key{
      name, help,
      [=](Config& c, const YAML::Node& n, const std::string& where) {
        T v{};
        bool is_int = std::is_integral_v<T>;
        try {
          if (!n.IsScalar()) throw YAML::BadConversion(n.Mark());
          v = n.as<T>();
        } catch (const YAML::Exception&) {
          bad(where, name,
              std::string("expected ") + (is_int ? "an integer" : "a number") + ", got '" + scalar_text(n) + "'");
        }
        if (static_cast<double>(v) < lo || static_cast<double>(v) > hi || v != v)
          bad(where, name,
              "must be between " + number_text(lo) + " and " + number_text(hi) + ", got " + scalar_text(n));
        c.*member = v;
      },
      [=](const Config& c, YAML::Emitter& e) { e << YAML::Key << name << YAML::Value << c.*member; }};
}

Key flag(const char* name, bool Config::*member, const char* help) {
  return Key{name, help,
             [=](Config& c, const YAML::Node& n, const std::string& where) {
               try {
                 if (!n.IsScalar()) throw YAML::BadConversion(n.Mark());
                 c.*member = n.as<bool>();
               } catch (const YAML::Exception&) {
                 bad(where, name, "expected true or false, got '" + scalar_text(n) + "'");
               }
             },
             [=](const Config& c, YAML::Emitter& e) { e << YAML::Key << name << YAML::Value << c.*member; }};
}

// A string key whose valid values come from `valid` (none: any string). A function, because
// registered names (methods, blocks, data sets) may be added to at start-up.
Key choice(const char* name, std::string Config::*member, std::function<std::vector<std::string>()> valid,
           const char* help) {
  return Key{
      name, help,
      [=](Config& c, const YAML::Node& n, const std::string& where) {
        if (!n.IsScalar()) bad(where, name, "expected a string, got '" + scalar_text(n) + "'");
        std::string v = n.Scalar();
        const std::vector<std::string> choices = valid();
        if (!choices.empty() && std::find(choices.begin(), choices.end(), v) == choices.end()) {
          std::string hint = closest_match(v, choices);
          bad(where, name,
              "'" + v + "' is not one of " + join(choices) + (hint.empty() ? "" : " (did you mean '" + hint + "'?)"));
        }
        c.*member = v;
      },
      [=](const Config& c, YAML::Emitter& e) { e << YAML::Key << name << YAML::Value << c.*member; }};
}
Key text(const char* name, std::string Config::*member, std::vector<std::string> choices, const char* help) {
  return choice(
      name, member, [choices] { return choices; }, help);
}

constexpr double kBig = 1e12;

const std::vector<Key>& keys() {
  static const std::vector<Key> k = {
      choice("dataset", &Config::dataset, dataset_names,
             "data set (cifar100-coarse: CIFAR-100's files with its 20 superclass labels)"),
      text("data_dir", &Config::data_dir, {}, "data directory (else --data-dir, $NOPROP_DATA, ./data)"),
      flag("augment", &Config::augment, "CIFAR random crop (padding 4) and horizontal flip"),
      number("train_samples", &Config::train_samples, 0, 1e9, "use only the first N training samples (0: all)"),
      number("test_samples", &Config::test_samples, 0, 1e9,
             "evaluate on the first N test samples only (0: all; quick runs, not results)"),
      choice("method", &Config::method, method_names, "training method"),
      number("num_layers", &Config::num_layers, 1, 1000, "T, the number of blocks"),
      number("eta", &Config::eta, 0, kBig, "η, weight of the denoising loss (Eq. 8)"),
      text("block_order", &Config::block_order, {"interleaved", "sequential"},
           "NoProp-DT: every block every batch, or Algorithm 1's one block per pass"),
      text("shared_update", &Config::shared_update, {"per_block", "per_batch"},
           "NoProp-DT: head/embedding gradients taken after each block's step, or all at the batch's start "
           "(block-parallel runs)"),
      flag("stacked_blocks", &Config::stacked_blocks,
           "NoProp-DT, per_batch: all blocks' training step as one computation on stacked weights (GPUs; "
           "LibTorch's fp32 ops, so conv_precision auto gives fp32)"),
      number("noise_schedule_min", &Config::noise_schedule_min, 1e-9, 0.5, "ᾱ_min of the cosine schedule"),
      number("noise_schedule_max", &Config::noise_schedule_max, 0.5, 1 - 1e-9, "ᾱ_max of the cosine schedule"),
      number("cosine_s", &Config::cosine_s, 0, 1, "offset s of the cosine schedule"),
      number("alpha_init", &Config::alpha_init, -0.999, 0.999, "backprop: initial α_t = tanh(w_t)"),
      number("schedule_hidden", &Config::schedule_hidden, 1, 100000,
             "CT: hidden width of the learned schedule network"),
      number("fm_sigma", &Config::fm_sigma, 0, 10, "FM: noise σ around the straight path z_t"),
      choice("architecture", &Config::architecture, block_names,
             "block: paper (Fig. 6, three convs) or seed (two convs)"),
      text("embedding", &Config::embedding, {"one-hot", "learned", "prototype"}, "class embeddings"),
      number("embedding_dim", &Config::embedding_dim, 1, 100000, "d of learned embeddings"),
      text("head", &Config::head, {"softmax", "radial"}, "output head (Eq. 14-16)"),
      number("head_sigma", &Config::head_sigma, 1e-6, kBig, "σ of the radial head"),
      text("head_init", &Config::head_init, {"embedding", "random"},
           "initial head: nearest-class-embedding readout (β·I − β/2 for one-hot) or random"),
      number("head_init_scale", &Config::head_init_scale, 0, 1e6, "β of head_init: embedding"),
      number("dropout", &Config::dropout, 0, 0.99, "dropout probability in the image path"),
      text("optimizer", &Config::optimizer, {"adamw", "adam"}, "optimizer"),
      number("batch_size", &Config::batch_size, 2, 1 << 20, "training batch size"),
      number("epochs", &Config::epochs, 1, 1000000, "number of epochs"),
      number("learning_rate", &Config::learning_rate, 1e-12, 10, "learning rate"),
      number("weight_decay", &Config::weight_decay, 0, 10, "weight decay"),
      number("grad_clip_max_norm", &Config::grad_clip_max_norm, 0, kBig, "gradient norm clip per block (0: off)"),
      text("grad_clip_scaling", &Config::grad_clip_scaling, {"none", "loss_weight"},
           "NoProp-DT: block t's clip as is, or times its loss weight ½Tη(SNR(t) − SNR(t−1))"),
      text("lr_schedule", &Config::lr_schedule, {"constant", "cosine"},
           "learning rate: constant, or cosine decay to 0 at the last epoch (after the warm-up)"),
      number("warmup_epochs", &Config::warmup_epochs, 0, 1e6, "linear learning-rate warm-up, in epochs"),
      text("on_nonfinite", &Config::on_nonfinite, {"skip", "stop"},
           "NaN/Inf loss or gradient: skip that block's update (counted) or stop the run"),
      number("seed", &Config::seed, 0, 9.2e18, "random seed"),
      flag("early_stopping", &Config::early_stopping, "stop when test accuracy reaches the target"),
      number("early_stopping_accuracy", &Config::early_stopping_accuracy, 0, 100,
             "target test accuracy (%) for early stopping"),
      flag("inference_noise", &Config::inference_noise, "sample z_0 and ε_t at inference (false: deterministic)"),
      number("inference_steps", &Config::inference_steps, 1, 1000000, "CT and FM: inference steps over t in [0, 1]"),
      text("solver", &Config::solver, {"euler", "heun"}, "CT probability flow and FM: ODE solver"),
      text("ct_sampler", &Config::ct_sampler, {"ancestral", "flow"},
           "CT: ancestral steps of Eq. 3 or the probability-flow ODE"),
      text("readout", &Config::readout, {"blocks", "head"},
           "NoProp-DT inference: the mean of the blocks' class probabilities, or the head on z_T (the paper's)"),
      number("inference_runs", &Config::inference_runs, 1, 1000, "stochastic inference runs averaged at the end"),
      number("inference_seed", &Config::inference_seed, 0, 9.2e18, "seed of the inference noise"),
      number("eval_batch_size", &Config::eval_batch_size, 1, 1 << 20, "evaluation batch size"),
      flag("train_eval", &Config::train_eval, "also measure training-set accuracy each epoch"),
      number("eval_every", &Config::eval_every, 1, 1e9,
             "test accuracy after every N epochs and after the last (the others: nan in metrics.csv)"),
      number("log_interval", &Config::log_interval, 1, 1 << 30, "batches between progress lines"),
      flag("detailed_logging", &Config::detailed_logging, "per-batch rows in batches.csv"),
      flag("save_best", &Config::save_best, "write best.pt"),
      flag("save_final", &Config::save_final, "write final.pt"),
      number("checkpoint_every", &Config::checkpoint_every, 0, 1e9, "also keep epoch_N.pt every N epochs (0: never)"),
      flag("plot", &Config::plot, "write curves.png and curves.svg into the run directory at the end (gnuplot)"),
      text("device", &Config::device, {}, "cpu, cuda or cuda:N"),
      number("threads", &Config::threads, 0, 4096, "CPU threads (0: all cores)"),
      text("kernels", &Config::kernels, {"fused", "torch"},
           "CPU: fused ReLU-pool-dropout kernels, or LibTorch's separate ops (the reference)"),
      text("conv_precision", &Config::conv_precision, {"auto", "fp32", "bf16", "winograd"},
           "CPU, kernels: fused: the image path's convolutions and first linear layer in bf16, fp32, or fp32 "
           "Winograd (auto: bf16 with AMX, else Winograd with AVX-512); but with fp32, the other linear "
           "layers through oneDNN (fp32)"),
      number("concurrent_blocks", &Config::concurrent_blocks, 0, 4096,
             "only 1 (blocks one after another); --workers N trains NoProp-DT blocks in parallel"),
      text("parallel", &Config::parallel, {"block", "data"},
           "distributed NoProp-DT: blocks spread over the ranks, or every batch split (others: data)"),
      number("dist_timeout", &Config::dist_timeout, 1, 86400, "seconds a distributed collective may wait"),
  };
  return k;
}

std::vector<std::string> key_names() {
  std::vector<std::string> names;
  for (const auto& k : keys()) names.push_back(k.name);
  return names;
}

void apply_key(Config& cfg, const std::string& name, const YAML::Node& value, const std::string& where) {
  for (const auto& k : keys()) {
    if (k.name == name) {
      k.set(cfg, value, where);
      return;
    }
  }
  std::string hint = closest_match(name, key_names());
  throw Error(where + ": unknown config key '" + name + "'" + (hint.empty() ? "" : " (did you mean '" + hint + "'?)"));
}

std::vector<std::filesystem::path> config_dirs() {
  std::vector<std::filesystem::path> dirs;
  if (const char* env = std::getenv("NOPROP_CONFIG_DIR")) dirs.emplace_back(env);
  dirs.emplace_back("configs");
  dirs.emplace_back(NOPROP_SOURCE_CONFIG_DIR);
  return dirs;
}

}  // namespace

void apply_yaml(Config& cfg, const std::string& yaml_text, const std::string& source) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    throw Error(source + ": invalid YAML at line " + std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
  if (root.IsNull()) return;  // an empty file changes nothing
  if (!root.IsMap()) throw Error(source + ": expected a mapping of config keys");
  std::set<std::string> seen;
  for (const auto& kv : root) {
    if (!kv.first.IsScalar())
      throw Error(source + ": config keys must be plain names, got '" + scalar_text(kv.first) + "'");
    std::string name = kv.first.Scalar();
    if (!seen.insert(name).second) throw Error(source + ": config key '" + name + "' given twice");
    apply_key(cfg, name, kv.second, source);
  }
}

void apply_override(Config& cfg, const std::string& assignment) {
  auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0) throw Error("--set '" + assignment + "': expected key=value");
  std::string name = assignment.substr(0, eq), value = assignment.substr(eq + 1);
  YAML::Node node;
  try {
    node = YAML::Load(value);
  } catch (const YAML::Exception&) {
    node = YAML::Node(value);
  }
  if (node.IsNull()) node = YAML::Node(value);  // "key=" means an empty string
  apply_key(cfg, name, node, "--set");
}

void validate(const Config& cfg) {
  if (cfg.noise_schedule_min >= cfg.noise_schedule_max)
    throw Error("config: noise_schedule_min must be below noise_schedule_max");
  if (cfg.embedding == "prototype" && cfg.head == "radial")
    throw Error("config key 'head': radial head is not supported with prototype embeddings");
  if (cfg.warmup_epochs > cfg.epochs)
    throw Error("config key 'warmup_epochs': " + number_text(cfg.warmup_epochs) + " is longer than the run (" +
                std::to_string(cfg.epochs) + " epochs)");
  bool cpu = cfg.device == "cpu";
  bool cuda = cfg.device == "cuda" || cfg.device.rfind("cuda:", 0) == 0;
  if (!cpu && !cuda) throw Error("config key 'device': '" + cfg.device + "' is not cpu, cuda or cuda:N");
  const auto& block = block_spec(cfg.architecture);
  if (method_spec(cfg.method).continuous_time ? !block.make_time : !block.make)
    throw Error("config key 'architecture': block '" + cfg.architecture + "' has no " +
                (method_spec(cfg.method).continuous_time ? "continuous" : "discrete") + "-time form, which method '" +
                cfg.method + "' needs");
  if (cfg.concurrent_blocks != 1)
    throw Error(
        "config key 'concurrent_blocks': only 1 is accepted (blocks on concurrent threads of one process corrupt "
        "LibTorch's oneDNN convolutions); --workers N trains NoProp-DT blocks in parallel");
}

Config load_config_file(const std::filesystem::path& path) {
  Config cfg;
  apply_yaml(cfg, read_text_file(path), path.string());
  return cfg;
}

std::string to_yaml(const Config& cfg) {
  YAML::Emitter e;
  e << YAML::BeginMap;
  for (const auto& k : keys()) k.emit(cfg, e);
  e << YAML::EndMap;
  return std::string(e.c_str()) + "\n";
}

std::vector<NamedConfig> list_named_configs() {
  std::map<std::string, NamedConfig> found;
  for (const auto& dir : config_dirs()) {
    std::error_code ec;
    if (!std::filesystem::is_directory(dir, ec)) continue;
    for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
      if (entry.path().extension() != ".yaml") continue;
      std::string name = entry.path().stem().string();
      if (found.count(name)) continue;
      std::string desc;
      std::istringstream in(read_text_file(entry.path()));
      std::string line;
      if (std::getline(in, line) && line.rfind("#", 0) == 0) {
        auto start = line.find_first_not_of("# ");
        if (start != std::string::npos) desc = line.substr(start);
      }
      found[name] = {name, desc, entry.path()};
    }
    if (!found.empty()) break;  // the first directory that has configs wins
  }
  std::vector<NamedConfig> out;
  for (auto& [_, v] : found) out.push_back(v);
  return out;
}

std::filesystem::path find_named_config(const std::string& name) {
  auto all = list_named_configs();
  std::vector<std::string> names;
  for (const auto& c : all) {
    if (c.name == name) return c.path;
    names.push_back(c.name);
  }
  if (all.empty()) throw Error("config '" + name + "': no configs directory found (set NOPROP_CONFIG_DIR)");
  std::string hint = closest_match(name, names);
  throw Error("unknown config '" + name + "'" + (hint.empty() ? "" : " (did you mean '" + hint + "'?)") +
              "; 'noprop configs' lists them");
}

std::vector<std::pair<std::string, std::string>> config_keys() {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& k : keys()) out.emplace_back(k.name, k.help);
  return out;
}

}  // namespace noprop
