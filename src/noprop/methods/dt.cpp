#include "noprop/methods/dt.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <sstream>

#include "noprop/blocks/conv.h"
#include "noprop/kernels.h"
#include "noprop/methods/helpers.h"
#include "noprop/methods/registry.h"
#include "noprop/util.h"

namespace noprop {

DTOptions DTOptions::from(const Config& cfg) {
  auto pick = [](const std::string& key, const std::string& value, const std::vector<std::string>& names) {
    for (std::size_t i = 0; i < names.size(); ++i)
      if (names[i] == value) return int(i);
    throw Error("config key '" + key + "': '" + value + "' is not one of " + join(names));
  };
  DTOptions o;
  o.block_order = Order(pick("block_order", cfg.block_order, {"interleaved", "sequential"}));
  o.shared_update = SharedUpdate(pick("shared_update", cfg.shared_update, {"per_block", "per_batch"}));
  o.grad_clip_scaling = ClipScaling(pick("grad_clip_scaling", cfg.grad_clip_scaling, {"none", "loss_weight"}));
  o.eta = cfg.eta, o.grad_clip_max_norm = cfg.grad_clip_max_norm;
  o.stacked_blocks = cfg.stacked_blocks;
  if (o.shared_update == SharedUpdate::per_batch && o.block_order == Order::sequential)
    throw Error(
        "config key 'shared_update': per_batch trains every block on every batch; block_order: sequential trains one "
        "block per pass and needs per_block");
  if (o.stacked_blocks && o.shared_update != SharedUpdate::per_batch)
    throw Error(
        "config key 'stacked_blocks': needs shared_update: per_batch (the blocks' gradients are all taken at the "
        "batch's start)");
  o.fused_kernels = cfg.kernels == "fused";
  o.data_parallel = pick("parallel", cfg.parallel, {"block", "data"}) == 1;
  return o;
}

DTMethod::DTMethod(const Config& cfg, NoPropNet net)
    : cfg_(cfg),
      opt_(DTOptions::from(cfg)),
      net_(std::move(net)),
      schedule_(ScheduleOptions{cfg.num_layers, cfg.cosine_s, cfg.noise_schedule_min, cfg.noise_schedule_max}),
      sequential_(opt_.block_order == DTOptions::Order::sequential) {
  for (int t = 1; t <= net_->T(); ++t) {
    block_params_.push_back(net_->block(t)->parameters());
    block_opts_.push_back(make_optimizer(cfg_, block_params_.back()));
  }
  shared_params_ = net_->head->parameters();
  head_param_count_ = shared_params_.size();
  if (net_->embed->learned) shared_params_.push_back(net_->embed->weight);
  shared_opt_ = make_optimizer(cfg_, shared_params_);
  if (opt_.stacked_blocks)
    for (int t = 1; t <= net_->T(); ++t)
      if (!net_->block_as<DenoiseBlockImpl>(t))
        throw Error("config key 'stacked_blocks': block '" + cfg.architecture + "' has no stacked form");
}

std::vector<std::string> DTMethod::loss_names() const {
  std::vector<std::string> names;
  for (int t = 1; t <= net_->T(); ++t) names.push_back("loss_block_" + std::to_string(t));
  names.insert(names.end(), {"loss_ce", "loss_kl", "loss_total"});
  return names;
}

std::vector<torch::optim::Optimizer*> DTMethod::optimizers() {
  std::vector<torch::optim::Optimizer*> all;
  for (auto& o : block_opts_) all.push_back(o.get());
  all.push_back(shared_opt_.get());
  return all;
}

double DTMethod::loss_weight(int t) const { return 0.5 * schedule_.T() * opt_.eta * schedule_.snr_delta(t); }

torch::Tensor DTMethod::block_loss(int t, const torch::Tensor& u_hat, const torch::Tensor& u_y) const {
  return loss_weight(t) * (u_hat - u_y).pow(2).sum(1).mean();
}

std::vector<double> DTMethod::clip_norms(int t) const {
  const double c = opt_.grad_clip_max_norm;
  return {opt_.grad_clip_scaling == DTOptions::ClipScaling::loss_weight ? c * loss_weight(t) : c, c, c};
}

namespace {
// Splits the shared gradients (head first, then embeddings) into their two clipping groups:
// the embeddings' gradient carries the blocks' loss weights (up to ~500 for the last blocks),
// and a joint clip would shrink the head's step with it.
std::pair<std::vector<torch::Tensor>, std::vector<torch::Tensor>> split_shared(const std::vector<torch::Tensor>& g,
                                                                               std::size_t head_count) {
  const auto mid = g.begin() + std::ptrdiff_t(std::min(head_count, g.size()));
  return {{g.begin(), mid}, {mid, g.end()}};
}
}  // namespace

DTMethod::BlockStep DTMethod::step_block(int t, const torch::Tensor& x, const torch::Tensor& y, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  // LibTorch's own dropout (CUDA, kernels: torch) draws from the default generator: seeded per
  // block too.
  torch::manual_seed(seed);
  auto u_y = net_->embed->forward(y);
  const double ab_prev = schedule_.alpha_bar(t - 1);
  auto z_prev = std::sqrt(ab_prev) * u_y + std::sqrt(1 - ab_prev) * normal_like(u_y, gen);
  torch::Tensor loss_t;
  {
    kernels::GeneratorScope dropout_seeds(gen);
    loss_t = block_loss(t, net_->denoise(t, x, z_prev), u_y);
  }
  auto [ce, kl] = shared_losses(y, normal_like(u_y, gen));
  auto total = loss_t + ce + kl;
  std::vector<torch::Tensor> inputs = block_params_[t - 1];
  inputs.insert(inputs.end(), shared_params_.begin(), shared_params_.end());
  // Gradients come back as tensors rather than accumulating into .grad: the shared ones are
  // applied by the caller (per block, or summed over the ranks first).
  auto grads = torch::autograd::grad({total}, inputs, {}, /*retain_graph=*/false, /*create_graph=*/false,
                                     /*allow_unused=*/true);
  return finish_block(t, std::move(grads), total, loss_t, ce, kl);
}

DTMethod::BlockStep DTMethod::finish_block(int t, std::vector<torch::Tensor> grads, const torch::Tensor& total,
                                           const torch::Tensor& loss_t, const torch::Tensor& ce,
                                           const torch::Tensor& kl) {
  torch::Tensor checked = total;
  if (parallel_->shards_batches()) {
    // parallel: data: every rank steps with the gradients averaged over the ranks' rows.
    std::vector<torch::Tensor> all{total.detach().reshape({1}).clone()};
    for (const auto& g : grads)
      if (g.defined()) all.push_back(g);
    parallel_->average(all);
    checked = all[0];
  }
  BlockStep r;
  r.ce = ce, r.kl = kl;
  const auto n = std::ptrdiff_t(block_params_[t - 1].size());
  std::vector<torch::Tensor> block_grads(grads.begin(), grads.begin() + n);
  r.shared_grads.assign(grads.begin() + n, grads.end());
  auto [head_grads, embed_grads] = split_shared(r.shared_grads, head_param_count_);
  if (!clip_and_check_grads({block_grads, head_grads, embed_grads}, clip_norms(t), checked,
                            "block " + std::to_string(t)))
    return {};
  // The clip scales in place: r.shared_grads now holds the clipped head and embedding gradients.
  for (std::ptrdiff_t i = 0; i < n; ++i) block_params_[t - 1][size_t(i)].mutable_grad() = block_grads[size_t(i)];
  block_opts_[t - 1]->step();
  // Block t's gradients are not needed once it has stepped: dropped, so that only one block's
  // gradients ever exist (back-propagation must hold every block's at once).
  for (auto& p : block_params_[t - 1]) p.mutable_grad() = torch::Tensor();
  r.stepped = true;
  r.loss = loss_t.detach();
  return r;
}

std::vector<DTMethod::BlockStep> DTMethod::step_blocks_stacked(const std::vector<int>& ts, const torch::Tensor& x,
                                                               const torch::Tensor& y, uint64_t seeds) {
  const auto K = int64_t(ts.size());
  if (K == 0) return {};
  const auto& W = net_->embed->weight;
  const bool learned = net_->embed->learned;
  // Learned embeddings: one copy of W_embed per block, so that each block's share of its gradient
  // comes back apart, to be clipped with that block's other shared gradients as in step_block.
  auto Wk = learned ? W.detach().unsqueeze(0).repeat({K, 1, 1}).requires_grad_()
                    : W.detach().unsqueeze(0).expand({K, W.size(0), W.size(1)});
  auto u_y = Wk.index_select(1, y);  // K × B × d
  // Block t's noise from its own generator, in step_block's order: z_{t−1}'s, then z_T's.
  std::vector<torch::Tensor> eps_prev, eps_T;
  std::vector<double> a, b, w;
  std::vector<DenoiseBlockImpl*> blocks;
  std::vector<torch::Tensor> inputs;
  for (int t : ts) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seeds + t);
    eps_prev.push_back(normal_like(u_y[0], gen));
    eps_T.push_back(normal_like(u_y[0], gen));
    const double ab = schedule_.alpha_bar(t - 1);
    a.push_back(std::sqrt(ab)), b.push_back(std::sqrt(1 - ab)), w.push_back(loss_weight(t));
    blocks.push_back(net_->block_as<DenoiseBlockImpl>(t).get());
    inputs.insert(inputs.end(), block_params_[t - 1].begin(), block_params_[t - 1].end());
  }
  auto column = [&](const std::vector<double>& v) { return torch::tensor(v, x.options()).view({K, 1, 1}); };
  auto z_prev = column(a) * u_y + column(b) * torch::stack(eps_prev);
  torch::manual_seed(seeds);
  auto u_hat = torch::softmax(stacked_forward(blocks, x, z_prev), 2).bmm(Wk);
  auto losses = column(w).view({K}) * (u_hat - u_y).pow(2).sum(2).mean(1);  // L_t of each block
  if (learned) inputs.push_back(Wk);
  // The blocks share no parameters: the gradient of the sum is each block's own.
  auto grads = torch::autograd::grad({losses.sum()}, inputs, {}, false, false, /*allow_unused=*/true);
  std::vector<BlockStep> out;
  size_t at = 0;
  for (int64_t k = 0; k < K; ++k) {
    const int t = ts[size_t(k)];
    auto [ce, kl] = shared_losses(y, eps_T[size_t(k)]);
    auto shared = torch::autograd::grad({ce + kl}, shared_params_, {}, false, false, /*allow_unused=*/true);
    if (learned) {
      auto& g = shared.back();  // W_embed's: add what block t's loss gave its copy
      g = g.defined() ? g + grads.back()[k] : grads.back()[k].clone();
    }
    const auto n = block_params_[t - 1].size();
    std::vector<torch::Tensor> g(grads.begin() + std::ptrdiff_t(at), grads.begin() + std::ptrdiff_t(at + n));
    at += n;
    g.insert(g.end(), shared.begin(), shared.end());
    out.push_back(finish_block(t, std::move(g), losses[k] + ce + kl, losses[k], ce, kl));
  }
  return out;
}

std::pair<torch::Tensor, torch::Tensor> DTMethod::shared_losses(const torch::Tensor& y, const torch::Tensor& eps_T) {
  // Shared terms of Algorithm 1: they train the head (and learned embeddings) only.
  auto u_y = net_->embed->forward(y);
  const double ab_T = schedule_.alpha_bar(net_->T());
  auto z_T = std::sqrt(ab_T) * u_y + std::sqrt(1 - ab_T) * eps_T;
  auto ce = torch::nll_loss(net_->head->log_prob(z_T, net_->embed->weight), y);
  auto kl = net_->embed->kl(y, schedule_.alpha_bar(0));
  return {ce, kl};
}

std::vector<torch::Tensor> DTMethod::train_step(const torch::Tensor& x, const torch::Tensor& y, int pass) {
  if (opt_.shared_update == DTOptions::SharedUpdate::per_batch) return train_step_per_batch(x, y);
  const int T = net_->T();
  const int first = sequential_ ? pass + 1 : 1, last = sequential_ ? pass + 1 : T;
  // Blocks not trained in this step keep an undefined entry: the trainer averages each
  // loss over the steps that produced it.
  std::vector<torch::Tensor> out(T + 3);
  auto zero = torch::zeros({}, x.options());
  torch::Tensor ce_sum = zero, kl_sum = zero;
  int steps = 0;  // blocks actually updated (a non-finite step is skipped)
  const uint64_t seeds = block_seeds();
  for (int t = first; t <= last; ++t) {
    const auto r = step_block(t, x, y, seeds + t);
    if (!r.stepped) continue;
    out[t - 1] = r.loss;  // the block stepped, whatever becomes of the head's step
    for (size_t i = 0; i < shared_params_.size(); ++i) shared_params_[i].mutable_grad() = r.shared_grads[i];
    shared_opt_->step();
    ce_sum = ce_sum + r.ce.detach();
    kl_sum = kl_sum + r.kl.detach();
    ++steps;
  }
  torch::manual_seed(seeds);  // the default generator's state no longer depends on the blocks
  if (steps == 0) return out;
  out[T] = ce_sum / steps;
  out[T + 1] = kl_sum / steps;
  auto total = out[T] + out[T + 1];
  for (int t = first; t <= last; ++t)
    if (out[t - 1].defined()) total = total + out[t - 1];
  out[T + 2] = total;
  return out;
}

uint64_t DTMethod::block_seeds() {
  // One draw from the common generator state gives every block its own stream (seed + t):
  // block t sees the same noise and dropout masks whichever rank trains it.
  return uint64_t(torch::randint(int64_t(1) << 62, {1}, torch::kInt64).item<int64_t>());
}

std::vector<torch::Tensor> DTMethod::train_step_per_batch(const torch::Tensor& x, const torch::Tensor& y) {
  const int T = net_->T();
  std::vector<torch::Tensor> out(T + 3);
  const uint64_t seeds = block_seeds();
  // What the ranks add up (each fills the rows of its blocks): every block's shared gradient
  // (clipped per block, as in per_block mode), its loss and whether it stepped; the CE and KL sums.
  int64_t shared_numel = 0;
  for (const auto& p : shared_params_) shared_numel += p.numel();
  auto grads = torch::zeros({T, shared_numel}, x.options().dtype(torch::kFloat32));
  auto stats = torch::zeros({2 * T + 2}, x.options().dtype(torch::kFloat32));
  std::vector<BlockStep> results(T);
  if (opt_.stacked_blocks) {
    std::vector<int> ts;
    for (int t = 1; t <= T; ++t)
      if (owns(t)) ts.push_back(t);
    auto stacked = step_blocks_stacked(ts, x, y, seeds);
    for (size_t k = 0; k < ts.size(); ++k) results[size_t(ts[k] - 1)] = std::move(stacked[k]);
  } else {
    for (int t = 1; t <= T; ++t)
      if (owns(t)) results[t - 1] = step_block(t, x, y, seeds + t);
  }
  torch::manual_seed(seeds);  // the same generator state on every rank from here on
  for (int t = 1; t <= T; ++t) {
    const auto& r = results[t - 1];
    if (!r.stepped) continue;
    int64_t at = 0;
    for (size_t i = 0; i < shared_params_.size(); ++i) {
      const auto n = shared_params_[i].numel();
      if (r.shared_grads[i].defined()) grads[t - 1].slice(0, at, at + n).copy_(r.shared_grads[i].reshape({-1}));
      at += n;
    }
    stats[t - 1] = r.loss;
    stats[T + t - 1] = 1;
    stats[2 * T] += r.ce.detach();
    stats[2 * T + 1] += r.kl.detach();
  }
  parallel_->sum_block_parts({grads, stats});
  const auto host = stats.to(torch::kCPU);
  const auto* h = host.data_ptr<float>();
  double stepped = 0;
  // The head and embeddings then take one step per block, in block order, as in per_block mode,
  // only with gradients taken at the state the batch started from.
  for (int t = 1; t <= T; ++t) {
    if (h[T + t - 1] == 0) continue;
    int64_t at = 0;
    for (auto& p : shared_params_) {
      p.mutable_grad() = grads[t - 1].slice(0, at, at + p.numel()).view(p.sizes()).clone();
      at += p.numel();
    }
    shared_opt_->step();
    ++stepped;
  }
  if (stepped == 0) return out;
  auto total = torch::zeros({}, x.options());
  for (int t = 1; t <= T; ++t)
    if (h[T + t - 1] > 0) out[t - 1] = stats[t - 1].detach().clone(), total = total + out[t - 1];
  out[T] = stats[2 * T] / stepped;
  out[T + 1] = stats[2 * T + 1] / stepped;
  out[T + 2] = total + out[T] + out[T + 1];
  return out;
}

std::unique_ptr<Parallelism> DTMethod::make_parallelism(Distributed& dist) {
  if (opt_.data_parallel) return Method::make_parallelism(dist);
  if (sequential_)
    throw Error(
        "config key 'block_order': block-parallel training needs interleaved (with sequential, one block "
        "trains per pass); set parallel: data or block_order: interleaved");
  if (opt_.shared_update != DTOptions::SharedUpdate::per_batch)
    throw Error(
        "config key 'shared_update': block-parallel training needs per_batch (every rank's blocks see the "
        "same head and embeddings)");
  // Each block travels with its optimizer state.
  auto pack = [this](int t) {
    torch::serialize::OutputArchive ar;
    save_module(ar, "block", *net_->block(t));
    save_optimizer(ar, "optim", *block_opts_[t - 1]);
    std::ostringstream os;
    ar.save_to(os);
    return os.str();
  };
  auto unpack = [this](int t, const std::string& bytes) {
    torch::serialize::InputArchive ar;
    std::istringstream is(bytes);
    ar.load_from(is, net_->parameters().front().device());
    load_module(ar, "block", *net_->block(t));
    load_optimizer(ar, "optim", *block_opts_[t - 1]);
  };
  return block_parallel(dist, pack, unpack, net_->T());
}

torch::Tensor DTMethod::inference_step(int t, const torch::Tensor& u_hat, const torch::Tensor& z_prev,
                                       const torch::Tensor& eps) const {
  auto z = schedule_.a(t) * u_hat + schedule_.b(t) * z_prev;
  return eps.defined() ? z + std::sqrt(schedule_.c(t)) * eps : z;
}

torch::Tensor DTMethod::predict(const torch::Tensor& x, const InferenceOptions& opt, at::Generator& gen) {
  torch::NoGradGuard no_grad;
  const int64_t B = x.size(0), d = net_->embed->dim();
  const int T = net_->T();
  // All the noise first, in the order one pass over the whole batch draws it.
  auto z0 = torch::zeros({B, d}, x.options());
  std::vector<torch::Tensor> eps(T + 1);
  if (opt.noise) {
    z0 = normal_like(z0, gen);
    for (int t = 1; t <= T; ++t) eps[t] = normal_like(z0, gen);
  }
  const bool blocks = opt.readout == Readout::blocks;
  return in_chunks(B, x.device(), [&](int64_t b, int64_t e) {
    const auto xs = x.slice(0, b, e);
    auto z = z0.slice(0, b, e);
    torch::Tensor prob_sum;
    for (int t = 1; t <= T; ++t) {
      auto p = torch::softmax(net_->block(t)->forward(xs, z), 1);
      if (blocks) prob_sum = prob_sum.defined() ? prob_sum + p : p;
      z = inference_step(t, p.matmul(net_->embed->weight), z, opt.noise ? eps[t].slice(0, b, e) : torch::Tensor());
    }
    return blocks ? torch::log(prob_sum / T) : net_->head->log_prob(z, net_->embed->weight);
  });
}

void DTMethod::save(torch::serialize::OutputArchive& ar) {
  save_module(ar, "model", *net_);
  for (std::size_t i = 0; i < block_opts_.size(); ++i)
    save_optimizer(ar, "optim_block_" + std::to_string(i + 1), *block_opts_[i]);
  save_optimizer(ar, "optim_shared", *shared_opt_);
}

void DTMethod::load(torch::serialize::InputArchive& ar) {
  load_module(ar, "model", *net_);
  for (std::size_t i = 0; i < block_opts_.size(); ++i)
    load_optimizer(ar, "optim_block_" + std::to_string(i + 1), *block_opts_[i]);
  load_optimizer(ar, "optim_shared", *shared_opt_);
}

double DTMethod::step_flops(int64_t batch) {
  // Algorithm 1's sequential order trains one block per step.
  return sequential_ ? Method::step_flops(batch) / net_->T() : Method::step_flops(batch);
}

MethodSpec dt_method_spec() {
  return {.name = "dt",
          .title = "NoProp-DT",
          .summary = "discrete-time NoProp: T blocks, each learning to denoise the label on its own (Eq. 8)",
          .block_parallel = true,
          .inference = {.readout = true},
          .make = method_factory<DTMethod>()};
}

}  // namespace noprop
