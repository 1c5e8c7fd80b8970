#include "noprop/methods/method.h"

#include <sstream>
#include <type_traits>

#include "noprop/blocks/registry.h"
#include "noprop/kernels.h"
#include "noprop/methods/helpers.h"
#include "noprop/methods/registry.h"
#include "noprop/util.h"

namespace noprop {

namespace {
kernels::ConvPath conv_path(const std::string& precision) {
  return precision == "bf16"       ? kernels::ConvPath::bf16
         : precision == "winograd" ? kernels::ConvPath::winograd
                                   : kernels::ConvPath::torch;
}
}  // namespace

std::string conv_precision(const Config& cfg) {
  const bool fused = cfg.kernels == "fused";
  const std::string& want = cfg.conv_precision;
  // A stacked NoProp-DT step runs LibTorch's ops on the stacked weights, in fp32: the blocks' own
  // forward, which evaluates them, must compute what trained them (and the run must say so).
  const bool stacked = cfg.stacked_blocks && cfg.method == "dt";
  if (stacked && (want == "bf16" || want == "winograd"))
    throw Error("config key 'conv_precision': " + want +
                " does not apply with stacked_blocks: true, whose steps run LibTorch's fp32 ops");
  if (want == "bf16" && !(fused && kernels::conv_bf16_supported()))
    throw Error(
        "config key 'conv_precision': bf16 needs kernels: fused, a build with oneDNN and a CPU with "
        "AVX512-BF16 or AMX");
  if (want == "winograd" && !(fused && kernels::conv_winograd_supported()))
    throw Error(
        "config key 'conv_precision': winograd needs kernels: fused, a build with oneDNN and a CPU with AVX-512");
  // The kernels are CPU ones: on a GPU the blocks run LibTorch's ops, in fp32.
  if (cfg.device != "cpu" || !fused || stacked) return "fp32";
  if (want != "auto") return want;
  // bf16 where AMX runs it; else fp32 Winograd where oneDNN has it (AVX-512): 1.1-1.4× faster
  // NoProp-DT steps than LibTorch's direct convolutions (docs/speed.md).
  return kernels::conv_bf16_fast() ? "bf16" : kernels::conv_winograd_supported() ? "winograd" : "fp32";
}

BlockOptions block_options(const Config& cfg, const DataInfo& info) {
  const bool proto = cfg.embedding == "prototype";
  const int m = info.num_classes;
  const int d = cfg.embedding == "one-hot" ? m : proto ? info.channels * info.height * info.width : cfg.embedding_dim;
  return BlockOptions{cfg.architecture,
                      info.channels,
                      info.height,
                      info.width,
                      d,
                      m,
                      cfg.dropout,
                      proto,
                      cfg.kernels == "fused",
                      conv_path(conv_precision(cfg))};
}

NoPropNetImpl::NoPropNetImpl(const Config& cfg, const DataInfo& info, const torch::Tensor& prototypes) {
  block_options = noprop::block_options(cfg, info);
  const int m = block_options.num_classes, d = block_options.embed_dim;
  blocks = register_module("blocks", torch::nn::ModuleList());
  const auto& block = block_spec(cfg.architecture);
  if (method_spec(cfg.method).continuous_time) {
    if (!block.make_time)
      throw Error("config key 'architecture': block '" + cfg.architecture + "' has no continuous-time form (method " +
                  cfg.method + ")");
    cblock = register_module("block", block.make_time(block_options));
  } else {
    if (!block.make)
      throw Error("config key 'architecture': block '" + cfg.architecture + "' has no discrete-time form (method " +
                  cfg.method + ")");
    for (int t = 1; t <= cfg.num_layers; ++t) blocks->push_back(block.make(block_options));
  }
  embed = register_module("embed", ClassEmbedding(cfg.embedding, m, d, prototypes));
  head = register_module("head", Head(cfg.head, d, m, cfg.head_sigma));
  // After the Linear's own random init, so that every other parameter draws the same numbers
  // whichever head_init is chosen.
  if (cfg.head_init == "embedding") init_head_from_embedding(head, embed->weight, cfg.head_init_scale);
}

void init_head_from_embedding(Head& head, const torch::Tensor& embed_weight, double beta) {
  torch::NoGradGuard no_grad;
  auto u = embed_weight.detach().to(torch::kFloat64);
  auto sq = u.pow(2).sum(1);  // ‖u_k‖²
  const double r2 = std::max(sq.mean().item<double>(), 1e-12);
  head->fc->weight.copy_(u * (beta / r2));
  head->fc->bias.copy_(sq * (-beta / (2 * r2)));
}

torch::Tensor NoPropNetImpl::denoise(int t, const torch::Tensor& x, const torch::Tensor& z) {
  return torch::softmax(block(t)->forward(x, z), 1).matmul(embed->weight);
}

void Method::set_learning_rate(double lr) {
  for (auto* opt : optimizers())
    for (auto& group : opt->param_groups()) group.options().set_lr(lr);
}

int64_t Method::parameter_count() {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

double Method::step_flops(int64_t batch) {
  auto net = network();
  double block = 0;
  if (net->cblock)
    block = net->cblock->forward_flops();
  else
    for (int t = 1; t <= net->T(); ++t) block += net->block(t)->forward_flops();
  return 3.0 * double(batch) * block;
}

double Method::inference_flops(const InferenceOptions& opt) {
  auto net = network();
  if (net->cblock) return double(opt.steps) * net->cblock->forward_flops();  // an upper bound for CT
  double blocks = 0;
  for (int t = 1; t <= net->T(); ++t) blocks += net->block(t)->forward_flops();
  return blocks;
}

std::unique_ptr<Method> make_method(const Config& cfg, const DataInfo& info, const Dataset* train,
                                    torch::Device device) {
  method_spec(cfg.method);  // an unknown name fails before anything is built
  torch::Tensor prototypes;
  if (cfg.embedding == "prototype") {
    if (!train) throw Error("prototype embeddings need the training set");
    auto idx = select_prototypes(train->normalised(), train->labels, info.num_classes);
    prototypes = train->select(idx);
  }
  NoPropNet net(cfg, info, prototypes);
  net->to(device);
  return method_spec(cfg.method).make(cfg, net.ptr());
}

namespace {
// The key of a parameter in Optimizer::state_: its TensorImpl's address, printed (LibTorch 1.x)
// or as the pointer itself (2.x).
template <typename Key>
Key state_key(c10::TensorImpl* impl) {
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream os;
    os << impl;
    return os.str();
  } else {
    return impl;
  }
}

// AdamW whose step is one fused pass per parameter (kernels::adamw_update) on CPU float32;
// the state, options and checkpoints are LibTorch's AdamW's own. Anything else (CUDA, amsgrad)
// takes LibTorch's step.
class FusedAdamW : public torch::optim::AdamW {
 public:
  using AdamW::AdamW;
  torch::Tensor step(LossClosure closure = nullptr) override {
    for (auto& group : param_groups_) {
      if (static_cast<torch::optim::AdamWOptions&>(group.options()).amsgrad()) return AdamW::step(closure);
      for (auto& p : group.params())
        if (p.grad().defined() && !(kernels::adamw_supported(p) && kernels::adamw_supported(p.grad())))
          return AdamW::step(closure);
    }
    torch::NoGradGuard no_grad;
    torch::Tensor loss;
    if (closure) {
      at::AutoGradMode enable_grad(true);
      loss = closure();
    }
    using Key = typename std::decay_t<decltype(state_)>::key_type;
    for (auto& group : param_groups_) {
      const auto& o = static_cast<torch::optim::AdamWOptions&>(group.options());
      for (auto& p : group.params()) {
        if (!p.grad().defined()) continue;
        const Key key = state_key<Key>(p.unsafeGetTensorImpl());
        auto it = state_.find(key);
        if (it == state_.end()) {
          auto fresh = std::make_unique<torch::optim::AdamWParamState>();
          fresh->step(0);
          fresh->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
          fresh->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
          state_[key] = std::move(fresh);
          it = state_.find(key);
        }
        auto& s = static_cast<torch::optim::AdamWParamState&>(*it->second);
        s.step(s.step() + 1);
        kernels::adamw_update(p, p.grad(), s.exp_avg(), s.exp_avg_sq(), o.lr(), std::get<0>(o.betas()),
                              std::get<1>(o.betas()), o.eps(), o.weight_decay(), s.step());
      }
    }
    return loss;
  }
};
}  // namespace

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const Config& cfg, std::vector<torch::Tensor> params) {
  if (cfg.optimizer == "adamw" && cfg.kernels == "fused")
    return std::make_unique<FusedAdamW>(params,
                                        torch::optim::AdamWOptions(cfg.learning_rate).weight_decay(cfg.weight_decay));
  if (cfg.optimizer == "adam")
    return std::make_unique<torch::optim::Adam>(
        params, torch::optim::AdamOptions(cfg.learning_rate).weight_decay(cfg.weight_decay));
  return std::make_unique<torch::optim::AdamW>(
      params, torch::optim::AdamWOptions(cfg.learning_rate).weight_decay(cfg.weight_decay));
}

namespace {
std::vector<std::vector<torch::Tensor>> grads_of(const std::vector<std::vector<torch::Tensor>>& groups) {
  std::vector<std::vector<torch::Tensor>> grads;
  for (const auto& g : groups) {
    grads.emplace_back();
    for (const auto& p : g) grads.back().push_back(p.grad());
  }
  return grads;
}
}  // namespace

torch::Tensor clip_grads(const std::vector<torch::Tensor>& grads, double max_norm) {
  std::vector<torch::Tensor> norms;
  for (const auto& g : grads)
    if (g.defined()) norms.push_back(g.norm());
  if (norms.empty()) return torch::zeros({});
  auto total = torch::stack(norms).norm();
  if (max_norm <= 0) return total;
  auto coef = (max_norm / (total + 1e-6)).clamp_max(1.0);
  for (const auto& g : grads)
    if (g.defined()) g.mul_(coef);
  return total;
}

torch::Tensor clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm) {
  std::vector<torch::Tensor> grads;
  for (const auto& p : params) grads.push_back(p.grad());
  auto total = clip_grads(grads, max_norm);
  return params.empty() ? total : total.to(params[0].device());
}

bool Method::clip_and_check(const std::vector<std::vector<torch::Tensor>>& groups, double max_norm,
                            const torch::Tensor& loss, const std::string& part) {
  if (parallel_->shards_batches()) {
    // Every rank steps with the mean gradient, and all skip together when any rank's loss or
    // gradient is not finite.
    std::vector<torch::Tensor> all{loss.detach().reshape({1}).to(torch::kFloat).clone()};
    for (const auto& g : groups)
      for (const auto& p : g) {
        if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
        all.push_back(p.grad());
      }
    parallel_->average(all);
    return clip_and_check_grads(grads_of(groups), max_norm, all[0], part);
  }
  return clip_and_check_grads(grads_of(groups), max_norm, loss, part);
}

bool Method::clip_and_check_grads(const std::vector<std::vector<torch::Tensor>>& grads,
                                  const std::vector<double>& max_norms, const torch::Tensor& loss,
                                  const std::string& part) {
  TORCH_CHECK(max_norms.size() == grads.size(), "one max norm per gradient group");
  std::vector<torch::Tensor> checks{loss.detach().reshape({1}).to(torch::kFloat)};
  for (std::size_t i = 0; i < grads.size(); ++i)
    checks.push_back(clip_grads(grads[i], max_norms[i]).reshape({1}).to(loss.device(), torch::kFloat));
  if (torch::isfinite(torch::cat(checks)).all().item<bool>()) return true;
  for (const auto& g : grads)
    for (const auto& t : g)
      if (t.defined()) t.zero_();
  std::lock_guard<std::mutex> lock(nonfinite_mutex_);
  nonfinite_.push_back(part);
  return false;
}

torch::Tensor in_chunks(int64_t rows, const torch::Device& device,
                        const std::function<torch::Tensor(int64_t, int64_t)>& f) {
  // Measured (seed architecture, 2 threads, NoProp-DT): 765 images/s for a batch of 1000 in one
  // piece, 1177 in pieces of 256, whose activations stay in cache.
  if (!device.is_cpu() || rows <= kInferenceChunk) return f(0, rows);
  std::vector<torch::Tensor> parts;
  for (int64_t b = 0; b < rows; b += kInferenceChunk) parts.push_back(f(b, std::min(rows, b + kInferenceChunk)));
  return torch::cat(parts);
}

torch::Tensor normal_like(const torch::Tensor& like, at::Generator& gen) {
  // Drawn on the CPU so that one CPU generator serves every device.
  return torch::randn(like.sizes(), gen, like.options().device(torch::kCPU)).to(like.device());
}

torch::Tensor cpu_randn(at::IntArrayRef sizes, const torch::Tensor& like) {
  return torch::randn(sizes, like.options().device(torch::kCPU)).to(like.device());
}
torch::Tensor cpu_rand(at::IntArrayRef sizes, const torch::Tensor& like) {
  return torch::rand(sizes, like.options().device(torch::kCPU)).to(like.device());
}

void save_module(torch::serialize::OutputArchive& ar, const std::string& key, torch::nn::Module& module) {
  torch::serialize::OutputArchive sub;
  module.save(sub);
  ar.write(key, sub);
}

void load_module(torch::serialize::InputArchive& ar, const std::string& key, torch::nn::Module& module) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes;
  for (const auto& p : module.named_parameters()) shapes.emplace_back(p.key(), p.value().sizes().vec());
  for (const auto& b : module.named_buffers()) shapes.emplace_back(b.key(), b.value().sizes().vec());
  torch::serialize::InputArchive sub;
  ar.read(key, sub);
  module.load(sub);
  std::size_t i = 0;
  auto check = [&](const std::string& name, const torch::Tensor& t) {
    TORCH_CHECK(t.sizes().vec() == shapes[i].second, "stored ", name, " has shape ", t.sizes(), ", the model's is ",
                c10::IntArrayRef(shapes[i].second));
    ++i;
  };
  for (const auto& p : module.named_parameters()) check(p.key(), p.value());
  for (const auto& b : module.named_buffers()) check(b.key(), b.value());
}

void save_optimizer(torch::serialize::OutputArchive& ar, const std::string& key, torch::optim::Optimizer& opt) {
  torch::serialize::OutputArchive sub;
  opt.save(sub);
  ar.write(key, sub);
}

void load_optimizer(torch::serialize::InputArchive& ar, const std::string& key, torch::optim::Optimizer& opt) {
  torch::serialize::InputArchive sub;
  ar.read(key, sub);
  opt.load(sub);
}

}  // namespace noprop
