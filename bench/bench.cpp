// noprop_bench: training and inference throughput of one configured method, as JSON.
//
// Times `--steps` training batches after `--warmup` untimed ones (median, min, max), then
// `--inference-batches` inference batches, and reports samples/s, seconds per epoch (median
// batch × batches per epoch), achieved GFLOP/s (from the architecture's FLOP count: forward
// plus backward counted as 3× forward, as usual), and memory: the resident set before the
// first step and its peak over training (CPU), or LibTorch's peak allocation (CUDA).
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>
#include <torch/version.h>

#if __has_include(<torch/csrc/autograd/profiler_legacy.h>)
#include <torch/csrc/autograd/profiler_legacy.h>
#define NOPROP_HAS_PROFILER 1
#endif

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>

#include "noprop/compat.h"
#include "noprop/config.h"
#include "noprop/blocks/registry.h"
#include "noprop/data.h"
#include "noprop/datasets.h"
#include "noprop/methods/method.h"
#include "noprop/methods/network.h"
#include "noprop/runtime.h"
#include "noprop/util.h"

namespace {
using noprop::Config;
using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Mixed precision through LibTorch's autocast (bf16 on CPU, fp16/bf16 on CUDA), on for the
// guard's lifetime.
class Autocast {
 public:
  Autocast(const std::string& precision, const torch::Device& device) : on_(precision != "fp32"), type_(device.type()) {
    if (on_) noprop::compat::set_autocast(type_, true, precision == "bf16" ? at::kBFloat16 : at::kHalf);
  }
  ~Autocast() {
    if (on_) noprop::compat::set_autocast(type_, false);
  }

 private:
  bool on_;
  c10::DeviceType type_;
};

void synchronise(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index() < 0 ? 0 : device.index());
}

struct Args {
  std::string profile, profile_inference;
  std::string config, method, architecture, dataset, data_dir, device = "cpu", precision = "fp32", kernels;
  std::vector<std::string> sets;
  int threads = 0, batch = 0, steps = 20, warmup = 3, inference_batches = 5, inference_batch = 1000;
  bool synthetic = false, channels_last = false;
};

nlohmann::json run(const Args& a) {
  Config cfg;
  if (!a.config.empty()) {
    const std::filesystem::path p = a.config;
    cfg = noprop::load_config_file(std::filesystem::exists(p) ? p : noprop::find_named_config(a.config));
  }
  auto set = [&](const std::string& key, const std::string& value) {
    if (!value.empty()) noprop::apply_override(cfg, key + "=" + value);
  };
  set("method", a.method), set("architecture", a.architecture), set("dataset", a.dataset);
  set("data_dir", a.data_dir), set("device", a.device), set("kernels", a.kernels);
  if (a.batch > 0) set("batch_size", std::to_string(a.batch));
  set("threads", std::to_string(a.threads));
  for (const auto& s : a.sets) noprop::apply_override(cfg, s);
  noprop::validate(cfg);
  if (a.precision != "fp32" && a.precision != "bf16" && a.precision != "fp16")
    throw noprop::Error("--precision '" + a.precision + "': expected fp32, bf16 or fp16");

  const int threads = noprop::configure_threads(cfg.threads);
  const torch::Device device = noprop::select_device(cfg.device);
  if (a.precision == "fp16" && device.is_cpu())
    throw noprop::Error("--precision fp16: LibTorch's CPU autocast has bf16 only");
  const int B = cfg.batch_size, total = a.warmup + a.steps;
  torch::manual_seed(uint64_t(cfg.seed));

  noprop::DataSplits data;
  if (a.synthetic) {
    data.info = noprop::dataset_info(cfg.dataset);
    const auto& i = data.info;
    data.train.images = torch::randn({int64_t(B) * total, i.channels, i.height, i.width});
    data.train.labels = torch::randint(i.num_classes, {int64_t(B) * total});
    data.test = data.train;
  } else {
    data = noprop::load_dataset(cfg.dataset, noprop::resolve_data_dir(cfg.dataset, cfg.data_dir));
  }
  const int64_t n_train = data.train.size();
  auto method = noprop::make_method(cfg, data.info, &data.train, device);
  method->set_training(true);
  // Channels-last: convolution weights and input batches in NHWC, which oneDNN and cuDNN
  // prefer; the fused CPU kernels take NCHW (use --kernels torch with it).
  const auto memory_format = a.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  if (a.channels_last) {
    torch::NoGradGuard no_grad;
    for (auto& p : method->parameters())
      if (p.dim() == 4) p.set_data(p.contiguous(memory_format));
  }
  const auto order = torch::randperm(n_train);
  auto batch_at = [&](int k) {
    const int64_t begin = (int64_t(k) * B) % std::max<int64_t>(1, n_train - B + 1);
    auto idx = order.slice(0, begin, begin + B);
    return std::make_pair(data.train.select(idx).to(device).contiguous(memory_format),
                          data.train.labels.index_select(0, idx).to(device));
  };

  const double rss_before = noprop::rss_mb();
  noprop::restart_peak_rss();
  if (device.is_cuda()) noprop::compat::reset_cuda_peak(device.index() < 0 ? 0 : device.index());
  std::vector<double> times;
#ifdef NOPROP_HAS_PROFILER
  // Operator-level trace of the timed steps (chrome://tracing format).
  std::unique_ptr<torch::autograd::profiler::RecordProfile> profiler;
#endif
  for (int k = 0; k < total; ++k) {
#ifdef NOPROP_HAS_PROFILER
    if (k == a.warmup && !a.profile.empty())
      profiler = std::make_unique<torch::autograd::profiler::RecordProfile>(a.profile);
#endif
    auto [x, y] = batch_at(k);
    synchronise(device);
    const auto t0 = Clock::now();
    {
      Autocast autocast(a.precision, device);
      method->train_step(x, y, k % method->passes_per_epoch());
    }
    synchronise(device);
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (k >= a.warmup) times.push_back(s);
    std::cerr << "step " << k + 1 << "/" << total << (k < a.warmup ? " (warm-up)" : "") << ": " << s << " s\n";
  }
#ifdef NOPROP_HAS_PROFILER
  profiler.reset();
#endif
  const double peak_rss = noprop::peak_rss_since_restart_mb();
  double gpu_peak_mb = -1;
  if (device.is_cuda())
    gpu_peak_mb = double(noprop::compat::cuda_peak_bytes(device.index() < 0 ? 0 : device.index())) / (1 << 20);

  // Inference: the method's own predict() with the configured inference options.
  method->set_training(false);
  const auto inference = noprop::inference_options(cfg);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(uint64_t(cfg.inference_seed));
  std::vector<double> inference_times;
  const int64_t ib = std::min<int64_t>(a.inference_batch, data.test.size());
  {
    torch::NoGradGuard no_grad;
#ifdef NOPROP_HAS_PROFILER
    std::unique_ptr<torch::autograd::profiler::RecordProfile> profiler;
#endif
    for (int k = 0; k <= a.inference_batches; ++k) {  // the first one warms up
#ifdef NOPROP_HAS_PROFILER
      if (k == 1 && !a.profile_inference.empty())
        profiler = std::make_unique<torch::autograd::profiler::RecordProfile>(a.profile_inference);
#endif
      auto x = data.test.rows(0, ib).to(device).contiguous(memory_format);
      synchronise(device);
      const auto t0 = Clock::now();
      {
        Autocast autocast(a.precision, device);
        method->predict(x, inference, gen);
      }
      synchronise(device);
      if (k > 0) inference_times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    }
  }

  // FLOPs of one training batch and of one inference pass over one image (CT: an upper bound).
  const double train_flops = method->step_flops(B), infer_flops = method->inference_flops(inference);
  const double med = median(times), inf_med = median(inference_times);
  const int64_t batches_per_epoch = (n_train + B - 1) / B * method->passes_per_epoch();
  nlohmann::json j = {
      {"method", cfg.method},
      {"architecture", cfg.architecture},
      {"dataset", cfg.dataset},
      {"data", a.synthetic ? "synthetic" : "real"},
      {"device", device.str()},
      {"threads", threads},
      {"precision", a.precision},
      {"memory_format", a.channels_last ? "channels-last" : "contiguous"},
      {"kernels", cfg.kernels},
      {"conv_precision", noprop::conv_precision(cfg)},
      {"torch", noprop::torch_version()},
      {"num_layers", cfg.num_layers},
      {"shared_update", cfg.shared_update},
      {"stacked_blocks", cfg.stacked_blocks},
      {"batch_size", B},
      {"steps", a.steps},
      {"warmup", a.warmup},
      {"seconds_per_batch", med},
      {"seconds_per_batch_min", *std::min_element(times.begin(), times.end())},
      {"seconds_per_batch_max", *std::max_element(times.begin(), times.end())},
      {"samples_per_second", B / med},
      {"seconds_per_epoch", med * double(batches_per_epoch)},
      {"gflop_per_batch", train_flops / 1e9},
      {"gflops", train_flops / med / 1e9},
      {"inference_batch_size", ib},
      {"inference_seconds_per_batch", inf_med},
      {"inference_images_per_second", double(ib) / inf_med},
      {"inference_gflops", infer_flops * double(ib) / inf_med / 1e9},
      {"rss_before_training_mb", rss_before},
      {"peak_rss_mb", peak_rss},
      {"training_memory_mb", peak_rss - rss_before},
      {"parameters", method->parameter_count()},
  };
  j["gpu_peak_allocated_mb"] = gpu_peak_mb >= 0 ? nlohmann::json(gpu_peak_mb) : nlohmann::json(nullptr);
  return j;
}
}  // namespace

int main(int argc, char** argv) {
  noprop::init_process(argc, argv);
  CLI::App app{"Training and inference throughput of one NoProp configuration, printed as JSON"};
  app.name("noprop_bench");
  Args a;
  app.add_option("--config", a.config, "named config or YAML file (default: the built-in defaults)");
  app.add_option("--method", a.method, "dt | backprop | ct | fm");
  app.add_option("--architecture", a.architecture, noprop::join(noprop::block_names(), " | "));
  app.add_option("--dataset", a.dataset, noprop::join(noprop::dataset_names(), " | "));
  app.add_option("--data-dir", a.data_dir, "data directory (as for noprop train)");
  app.add_flag("--synthetic", a.synthetic, "random images and labels instead of the data set (throughput only)");
  app.add_option("--threads", a.threads, "CPU threads (0: all cores)")->check(CLI::NonNegativeNumber);
  app.add_option("--device", a.device, "cpu | cuda | cuda:N");
  app.add_option("--precision", a.precision, "fp32 | bf16 | fp16 (autocast)");
  app.add_option("--kernels", a.kernels, "fused | torch (CPU element-wise kernels)");
  app.add_flag("--channels-last", a.channels_last,
               "convolution weights and inputs in channels-last (NHWC) memory format");
  app.add_option("--batch", a.batch, "training batch size (default: the config's)")->check(CLI::PositiveNumber);
  app.add_option("--steps", a.steps, "timed training batches")->check(CLI::PositiveNumber);
  app.add_option("--warmup", a.warmup, "untimed training batches first")->check(CLI::NonNegativeNumber);
  app.add_option("--inference-batches", a.inference_batches, "timed inference batches")->check(CLI::PositiveNumber);
  app.add_option("--inference-batch", a.inference_batch, "inference batch size")->check(CLI::PositiveNumber);
  app.add_option("--profile", a.profile, "write an operator trace of the timed steps (Chrome trace JSON)");
  app.add_option("--profile-inference", a.profile_inference, "the same for the timed inference batches");
  app.add_option("--set", a.sets, "override a config key: --set key=value (repeatable)");
  CLI11_PARSE(app, argc, argv);
  try {
    std::cout << run(a).dump(2) << std::endl;
  } catch (const noprop::Error& e) {
    std::cerr << "noprop_bench: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "noprop_bench: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
