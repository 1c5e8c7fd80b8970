#include "noprop/schedule.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace noprop {

namespace {
constexpr double kPi = 3.14159265358979323846;
}

CosineSchedule::CosineSchedule(const ScheduleOptions& opt) : T_(opt.T) {
  if (opt.T < 1) throw std::invalid_argument("schedule: T must be >= 1");
  auto f = [&](double tau) {
    double c = std::cos(kPi / 2 * (tau + opt.s) / (1 + opt.s));
    return c * c;
  };
  alpha_bar_.resize(T_ + 1);
  for (int t = 0; t <= T_; ++t) {
    double v = f(1.0 - static_cast<double>(t) / T_) / f(0.0);
    alpha_bar_[t] = std::clamp(v, opt.alpha_bar_min, opt.alpha_bar_max);
  }
}

double CosineSchedule::snr(int t) const {
  double ab = alpha_bar(t);
  return ab / (1 - ab);
}

StepCoefficients step_coefficients(double ab_prev, double ab) {
  const double alpha_prev = ab_prev / ab;
  return {std::sqrt(ab) * (1 - alpha_prev) / (1 - ab_prev), std::sqrt(alpha_prev) * (1 - ab) / (1 - ab_prev),
          (1 - ab) * (1 - alpha_prev) / (1 - ab_prev)};
}

double CosineSchedule::a(int t) const { return step_coefficients(alpha_bar(t - 1), alpha_bar(t)).a; }
double CosineSchedule::b(int t) const { return step_coefficients(alpha_bar(t - 1), alpha_bar(t)).b; }
double CosineSchedule::c(int t) const { return step_coefficients(alpha_bar(t - 1), alpha_bar(t)).c; }

LearnedScheduleImpl::LearnedScheduleImpl(double alpha_bar_min, double alpha_bar_max, int hidden) {
  if (hidden < 1) throw std::invalid_argument("schedule: hidden width must be >= 1");
  auto logit_gap = [](double ab) { return std::log((1 - ab) / ab); };  // γ with ᾱ = sigmoid(−γ)
  w1_raw = register_parameter("w1_raw", torch::randn({hidden}));
  b1 = register_parameter("b1", torch::randn({hidden}));
  w2_raw = register_parameter("w2_raw", torch::randn({hidden}) - 2.0);
  w0_raw = register_parameter("w0_raw", torch::zeros({1}));
  gamma0 = register_parameter("gamma0", torch::full({1}, logit_gap(alpha_bar_max)));
  gamma1 = register_parameter("gamma1", torch::full({1}, logit_gap(alpha_bar_min)));
}

torch::Tensor LearnedScheduleImpl::gamma_tilde(const torch::Tensor& t) {
  auto tt = t.unsqueeze(-1);
  auto hidden = torch::sigmoid(tt * torch::softplus(w1_raw) + b1);
  return (hidden * torch::softplus(w2_raw)).sum(-1) + t * torch::softplus(w0_raw);
}

torch::Tensor LearnedScheduleImpl::gamma_tilde_derivative(const torch::Tensor& t) {
  auto w1 = torch::softplus(w1_raw);
  auto s = torch::sigmoid(t.unsqueeze(-1) * w1 + b1);
  return (s * (1 - s) * w1 * torch::softplus(w2_raw)).sum(-1) + torch::softplus(w0_raw);
}

torch::Tensor LearnedScheduleImpl::gamma(const torch::Tensor& t) {
  auto ends = gamma_tilde(torch::tensor({0.0f, 1.0f}, t.options()));
  auto bar = (gamma_tilde(t) - ends[0]) / (ends[1] - ends[0]);
  return gamma0 + (gamma1 - gamma0) * (1 - bar);
}

torch::Tensor LearnedScheduleImpl::gamma_derivative(const torch::Tensor& t) {
  auto ends = gamma_tilde(torch::tensor({0.0f, 1.0f}, t.options()));
  return -(gamma1 - gamma0) * gamma_tilde_derivative(t) / (ends[1] - ends[0]);
}

}  // namespace noprop
