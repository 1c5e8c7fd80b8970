#include "noprop/methods/dt.h"

#include <cmath>

namespace noprop {

DTMethod::DTMethod(const Config& cfg, NoPropNet net)
    : cfg_(cfg),
      net_(std::move(net)),
      schedule_(ScheduleOptions{cfg.num_layers, cfg.cosine_s, cfg.noise_schedule_min, cfg.noise_schedule_max}),
      sequential_(cfg.block_order == "sequential") {
  for (int t = 1; t <= net_->T(); ++t) {
    block_params_.push_back(net_->block(t)->parameters());
    block_opts_.push_back(make_optimizer(cfg_, block_params_.back()));
  }
  shared_params_ = net_->head->parameters();
  if (net_->embed->learned) shared_params_.push_back(net_->embed->weight);
  shared_opt_ = make_optimizer(cfg_, shared_params_);
}

std::vector<std::string> DTMethod::loss_names() const {
  std::vector<std::string> names;
  for (int t = 1; t <= net_->T(); ++t) names.push_back("loss_block_" + std::to_string(t));
  names.insert(names.end(), {"loss_ce", "loss_kl", "loss_total"});
  return names;
}

torch::Tensor DTMethod::block_loss(int t, const torch::Tensor& u_hat, const torch::Tensor& u_y) const {
  const double weight = 0.5 * schedule_.T() * cfg_.eta * schedule_.snr_delta(t);
  return weight * (u_hat - u_y).pow(2).sum(1).mean();
}

std::vector<torch::Tensor> DTMethod::train_step(const torch::Tensor& x, const torch::Tensor& y, int pass) {
  const int T = net_->T();
  const int first = sequential_ ? pass + 1 : 1, last = sequential_ ? pass + 1 : T;
  // Blocks not trained in this step keep an undefined entry: the trainer averages each
  // loss over the steps that produced it.
  std::vector<torch::Tensor> out(T + 3);
  auto zero = torch::zeros({}, x.options());
  torch::Tensor ce_sum = zero, kl_sum = zero;
  int steps = 0;  // blocks actually updated (a non-finite step is skipped)
  for (int t = first; t <= last; ++t) {
    auto u_y = net_->embed->forward(y);
    const double ab_prev = schedule_.alpha_bar(t - 1), ab_T = schedule_.alpha_bar(T);
    auto z_prev = std::sqrt(ab_prev) * u_y + std::sqrt(1 - ab_prev) * torch::randn_like(u_y);
    auto u_hat = net_->denoise(t, x, z_prev);
    auto loss_t = block_loss(t, u_hat, u_y);
    // Shared terms of Algorithm 1: they train the head (and learned embeddings) only.
    auto z_T = std::sqrt(ab_T) * u_y + std::sqrt(1 - ab_T) * torch::randn_like(u_y);
    auto ce = torch::nll_loss(net_->head->log_prob(z_T, net_->embed->weight), y);
    auto kl = net_->embed->kl(y, schedule_.alpha_bar(0));
    auto total = loss_t + ce + kl;

    block_opts_[t - 1]->zero_grad();
    shared_opt_->zero_grad();
    total.backward();
    if (!clip_and_check({block_params_[t - 1], shared_params_}, cfg_.grad_clip_max_norm, total,
                        "block " + std::to_string(t)))
      continue;
    block_opts_[t - 1]->step();
    shared_opt_->step();

    out[t - 1] = loss_t.detach();
    ce_sum = ce_sum + ce.detach();
    kl_sum = kl_sum + kl.detach();
    ++steps;
  }
  if (steps == 0) return out;
  out[T] = ce_sum / steps;
  out[T + 1] = kl_sum / steps;
  auto total = out[T] + out[T + 1];
  for (int t = first; t <= last; ++t)
    if (out[t - 1].defined()) total = total + out[t - 1];
  out[T + 2] = total;
  return out;
}

torch::Tensor DTMethod::inference_step(int t, const torch::Tensor& u_hat, const torch::Tensor& z_prev,
                                       const torch::Tensor& eps) const {
  auto z = schedule_.a(t) * u_hat + schedule_.b(t) * z_prev;
  return eps.defined() ? z + std::sqrt(schedule_.c(t)) * eps : z;
}

torch::Tensor DTMethod::predict(const torch::Tensor& x, const InferenceOptions& opt, at::Generator& gen) {
  const bool noise = opt.noise;
  torch::NoGradGuard no_grad;
  const int64_t B = x.size(0), d = net_->embed->dim();
  auto z = torch::zeros({B, d}, x.options());
  if (noise) z = normal_like(z, gen);
  for (int t = 1; t <= net_->T(); ++t) {
    auto u_hat = net_->denoise(t, x, z);
    z = inference_step(t, u_hat, z, noise ? normal_like(z, gen) : torch::Tensor());
  }
  return net_->head->log_prob(z, net_->embed->weight);
}

void DTMethod::save(torch::serialize::OutputArchive& ar) {
  save_module(ar, "model", *net_);
  for (std::size_t i = 0; i < block_opts_.size(); ++i) save_optimizer(ar, "optim_block_" + std::to_string(i + 1), *block_opts_[i]);
  save_optimizer(ar, "optim_shared", *shared_opt_);
}

void DTMethod::load(torch::serialize::InputArchive& ar) {
  load_module(ar, "model", *net_);
  for (std::size_t i = 0; i < block_opts_.size(); ++i) load_optimizer(ar, "optim_block_" + std::to_string(i + 1), *block_opts_[i]);
  load_optimizer(ar, "optim_shared", *shared_opt_);
}


}  // namespace noprop
