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
#pragma once

#include <vector>

namespace noprop {

struct ScheduleOptions {
  int T = 10;
  double s = 0.008;           // cosine offset (ours: config key cosine_s)
  double alpha_bar_min = 1e-3;  // config key noise_schedule_min
  double alpha_bar_max = 0.999; // config key noise_schedule_max
};

class CosineSchedule {
 public:
  explicit CosineSchedule(const ScheduleOptions& opt);

  int T() const { return T_; }
  double alpha_bar(int t) const { return alpha_bar_.at(t); }  // t = 0..T
  double snr(int t) const;                                     // t = 0..T
  double snr_delta(int t) const { return snr(t) - snr(t - 1); }  // t = 1..T
  double a(int t) const;  // t = 1..T
  double b(int t) const;
  double c(int t) const;

 private:
  int T_;
  std::vector<double> alpha_bar_;
};

}  // namespace noprop
