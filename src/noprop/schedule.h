// Discrete-time noise schedule of NoProp-DT (method note, "Noise schedule" and Eq. 3).
//
// ᾱ_t, t = 0..T, increases with t (t = T is the cleanest latent):
//   ᾱ_t = clip(f(1 − t/T) / f(0), ᾱ_min, ᾱ_max),  f(τ) = cos²(π/2 · (τ + s)/(1 + s)).
// Marginal q(z_t | y) = N(√ᾱ_t u_y, (1 − ᾱ_t) I), SNR(t) = ᾱ_t / (1 − ᾱ_t).
// The inference update (Eq. 3) is z_t = a_t û_t + b_t z_{t−1} + √c_t ε with α_{t−1} = ᾱ_{t−1}/ᾱ_t,
//   a_t = √ᾱ_t (1 − α_{t−1}) / (1 − ᾱ_{t−1}),
//   b_t = √α_{t−1} (1 − ᾱ_t) / (1 − ᾱ_{t−1}),
//   c_t = (1 − ᾱ_t)(1 − α_{t−1}) / (1 − ᾱ_{t−1}).
// Computed in double; callers cast to the tensor dtype.
//
// NoProp-CT learns its schedule instead (Appendix B), see LearnedSchedule below.
#pragma once

#include <torch/torch.h>

#include <vector>

namespace noprop {

struct ScheduleOptions {
  int T = 10;
  double s = 0.008;              // cosine offset (ours: config key cosine_s)
  double alpha_bar_min = 1e-3;   // config key noise_schedule_min
  double alpha_bar_max = 0.999;  // config key noise_schedule_max
};

// The coefficients of Eq. 3 between two signal levels ᾱ_prev < ᾱ (any schedule).
struct StepCoefficients {
  double a, b, c;
};
StepCoefficients step_coefficients(double alpha_bar_prev, double alpha_bar);

class CosineSchedule {
 public:
  explicit CosineSchedule(const ScheduleOptions& opt);

  int T() const { return T_; }
  double alpha_bar(int t) const { return alpha_bar_.at(t); }     // t = 0..T
  double snr(int t) const;                                       // t = 0..T
  double snr_delta(int t) const { return snr(t) - snr(t - 1); }  // t = 1..T
  double a(int t) const;                                         // t = 1..T
  double b(int t) const;
  double c(int t) const;

 private:
  int T_;
  std::vector<double> alpha_bar_;
};

// NoProp-CT's learned, monotone noise schedule (Appendix B), t ∈ [0, 1] with t = 1 the
// cleanest:
//   γ(t) = γ0 + (γ1 − γ0)(1 − γ̄(t)),  γ̄(t) = (γ̃(t) − γ̃(0)) / (γ̃(1) − γ̃(0)),
//   ᾱ(t) = sigmoid(−γ(t)),  SNR(t) = exp(−γ(t)),
// so γ(0) = γ1 (noisiest) and γ(1) = γ0. γ̃ is a two-layer network with positive weights
// (softplus of free parameters) and a sigmoid hidden layer, plus a positive linear term,
//   γ̃(t) = w0 t + Σ_j w2_j sigmoid(w1_j t + b_j),
// hence strictly increasing for any parameter values. γ0 and γ1 are learned too and start
// at the DT cosine schedule's ends (ᾱ_max and ᾱ_min). The hidden width is ours (config key
// schedule_hidden).
struct LearnedScheduleImpl : torch::nn::Module {
  LearnedScheduleImpl(double alpha_bar_min, double alpha_bar_max, int hidden);

  // All take t of any shape and return the same shape.
  torch::Tensor gamma_tilde(const torch::Tensor& t);
  torch::Tensor gamma(const torch::Tensor& t);
  torch::Tensor alpha_bar(const torch::Tensor& t) { return torch::sigmoid(-gamma(t)); }
  torch::Tensor snr(const torch::Tensor& t) { return torch::exp(-gamma(t)); }
  // dγ/dt and dSNR/dt = −γ′(t) exp(−γ(t)), in closed form (differentiable in the parameters).
  torch::Tensor gamma_derivative(const torch::Tensor& t);
  torch::Tensor snr_derivative(const torch::Tensor& t) { return -gamma_derivative(t) * snr(t); }

  torch::Tensor w1_raw, b1, w2_raw, w0_raw, gamma0, gamma1;

 private:
  torch::Tensor gamma_tilde_derivative(const torch::Tensor& t);
};
TORCH_MODULE(LearnedSchedule);

}  // namespace noprop
