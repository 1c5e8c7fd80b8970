// NoProp-CT (Eq. 9, Algorithm 2, Appendix B).
//
// One network û_θ(z_t, x, t) = softmax(logits) · W_embed, t ~ U(0, 1) per sample,
// z_t ~ q(z_t | y) = N(√ᾱ(t) u_y, (1 − ᾱ(t)) I) on the learned schedule. Loss, batch means:
//   (η/2) SNR′(t) ‖û_θ(z_t, x, t) − u_y‖²  +  CE(p̂_θout(y | z_1))  +  KL(q(z_0|y) ‖ N(0, I))
// with z_1 ~ q(z_1 | y). The schedule's parameters are trained jointly with the network, the
// head and (learned) embeddings by one optimizer (Adam in Table 3).
//
// Inference walks t_k = k/N, k = 0..N, from z_0 ~ N(0, I):
//   ancestral: Eq. 3 between ᾱ(t_{k−1}) and ᾱ(t_k), with û = û_θ(z_{k−1}, x, t_{k−1});
//   flow:      the probability-flow ODE dz/dt = (√ᾱ)′ û + (√(1−ᾱ))′ ε̂, ε̂ = (z − √ᾱ û)/√(1−ᾱ),
//              integrated by Euler or Heun.
// then predicts argmax p̂_θout(y | z_1).
#pragma once

#include "noprop/methods/continuous.h"
#include "noprop/schedule.h"

namespace noprop {

class CTMethod : public ContinuousMethod {
 public:
  CTMethod(const Config& cfg, NoPropNet net);

  std::vector<std::string> loss_names() const override { return {"loss_denoise", "loss_ce", "loss_kl", "loss_total"}; }
  std::vector<torch::Tensor> train_step(const torch::Tensor& x, const torch::Tensor& y, int pass) override;
  torch::Tensor predict(const torch::Tensor& x, const InferenceOptions& opt, at::Generator& gen) override;
  void set_training(bool on) override {
    net_->train(on);
    schedule_->train(on);
  }

  // The final latent z_1 of one inference run (before the head); exposed for tests.
  // `denoise(z, t)` stands for û_θ(z, x, t), so tests can substitute a perfect denoiser.
  using Denoiser = std::function<torch::Tensor(const torch::Tensor& z, const torch::Tensor& t)>;
  torch::Tensor sample(const Denoiser& denoise, torch::Tensor z0, const InferenceOptions& opt, at::Generator& gen);
  LearnedSchedule schedule() { return schedule_; }

 private:
  void save_extra(torch::serialize::OutputArchive& ar) override { save_module(ar, "schedule", *schedule_); }
  void load_extra(torch::serialize::InputArchive& ar) override { load_module(ar, "schedule", *schedule_); }

  LearnedSchedule schedule_{nullptr};
};

}  // namespace noprop
