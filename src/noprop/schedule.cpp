#include "noprop/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <stdexcept>

namespace noprop {

CosineSchedule::CosineSchedule(const ScheduleOptions& opt) : T_(opt.T) {
  if (opt.T < 1) throw std::invalid_argument("schedule: T must be >= 1");
  auto f = [&](double tau) {
    double c = std::cos(std::numbers::pi / 2 * (tau + opt.s) / (1 + opt.s));
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

double CosineSchedule::a(int t) const {
  double ab = alpha_bar(t), ab_prev = alpha_bar(t - 1), alpha_prev = ab_prev / ab;
  return std::sqrt(ab) * (1 - alpha_prev) / (1 - ab_prev);
}

double CosineSchedule::b(int t) const {
  double ab = alpha_bar(t), ab_prev = alpha_bar(t - 1), alpha_prev = ab_prev / ab;
  return std::sqrt(alpha_prev) * (1 - ab) / (1 - ab_prev);
}

double CosineSchedule::c(int t) const {
  double ab = alpha_bar(t), ab_prev = alpha_bar(t - 1), alpha_prev = ab_prev / ab;
  return (1 - ab) * (1 - alpha_prev) / (1 - ab_prev);
}

}  // namespace noprop
