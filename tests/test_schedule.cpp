#include <gtest/gtest.h>

#include <cmath>

#include "noprop/schedule.h"

using noprop::CosineSchedule;
using noprop::ScheduleOptions;

// Values of the method note's table (T = 10), computed independently in float64.
TEST(Schedule, MatchesMethodNoteTable) {
  CosineSchedule s(ScheduleOptions{});
  struct Row {
    int t;
    double ab, snr, dsnr, a, b, c;
  };
  const Row rows[] = {
      {1, 0.024092, 0.0247, 0.0237, 0.148921, 0.199026, 0.936337},
      {5, 0.493844, 0.9757, 0.4587, 0.330356, 0.637874, 0.237943},
      {9, 0.972093, 34.8330, 25.9607, 0.734819, 0.264904, 0.020799},
      {10, 0.999000, 999.0000, 964.1670, 0.964649, 0.035347, 0.000965},
  };
  EXPECT_NEAR(s.alpha_bar(0), 0.001, 1e-9);
  EXPECT_NEAR(s.snr(0), 0.0010, 1e-4);
  for (const auto& r : rows) {
    EXPECT_NEAR(s.alpha_bar(r.t), r.ab, 1e-6) << "t=" << r.t;
    EXPECT_NEAR(s.snr(r.t), r.snr, 1e-4) << "t=" << r.t;
    EXPECT_NEAR(s.snr_delta(r.t), r.dsnr, 1e-4) << "t=" << r.t;
    EXPECT_NEAR(s.a(r.t), r.a, 1e-6) << "t=" << r.t;
    EXPECT_NEAR(s.b(r.t), r.b, 1e-6) << "t=" << r.t;
    EXPECT_NEAR(s.c(r.t), r.c, 1e-6) << "t=" << r.t;
  }
}

TEST(Schedule, IncreasingAndClipped) {
  CosineSchedule s(ScheduleOptions{20, 0.008, 0.01, 0.99});
  for (int t = 1; t <= 20; ++t) EXPECT_GE(s.alpha_bar(t), s.alpha_bar(t - 1));
  EXPECT_DOUBLE_EQ(s.alpha_bar(0), 0.01);
  EXPECT_DOUBLE_EQ(s.alpha_bar(20), 0.99);
}

// If every block returned u_y exactly, Eq. 3 keeps q(z_t|y): the mean a_t u + b_t √ᾱ_{t−1} u
// must be √ᾱ_t u and the variance b_t²(1 − ᾱ_{t−1}) + c_t must be 1 − ᾱ_t.
TEST(Schedule, MarginalPropertyHoldsAnalytically) {
  for (int T : {3, 10, 50}) {
    CosineSchedule s(ScheduleOptions{T});
    for (int t = 1; t <= T; ++t) {
      double ab = s.alpha_bar(t), abp = s.alpha_bar(t - 1);
      EXPECT_NEAR(s.a(t) + s.b(t) * std::sqrt(abp), std::sqrt(ab), 1e-12) << "T=" << T << " t=" << t;
      EXPECT_NEAR(s.b(t) * s.b(t) * (1 - abp) + s.c(t), 1 - ab, 1e-12) << "T=" << T << " t=" << t;
    }
  }
}

TEST(Schedule, RejectsZeroSteps) { EXPECT_THROW(CosineSchedule(ScheduleOptions{0}), std::invalid_argument); }

// For random parameters (any seed), γ(t) is strictly decreasing, so ᾱ(t) increases, and it
// hits its learned endpoints: γ(0) = γ1, γ(1) = γ0.
TEST(LearnedSchedule, MonotoneWithExactEndpoints) {
  for (int seed = 0; seed < 20; ++seed) {
    torch::manual_seed(seed);
    noprop::LearnedSchedule s(1e-3, 0.999, 16);
    torch::NoGradGuard g;
    // Random raw weights, endpoints moved off their initial values.
    for (auto& p : s->parameters()) p.normal_(0.0, 2.0);
    s->gamma0.fill_(-3.0 + seed * 0.1);
    s->gamma1.fill_(4.0 + seed * 0.2);
    auto t = torch::linspace(0.0, 1.0, 1001, torch::kFloat64);
    auto gm = s->gamma(t);
    EXPECT_TRUE((gm.slice(0, 1) < gm.slice(0, 0, -1)).all().item<bool>()) << "seed " << seed;
    EXPECT_NEAR(gm[0].item<double>(), 4.0 + seed * 0.2, 1e-5);
    EXPECT_NEAR(gm[-1].item<double>(), -3.0 + seed * 0.1, 1e-5);
    auto ab = s->alpha_bar(t);
    EXPECT_NEAR(ab[0].item<double>(), 1 / (1 + std::exp(4.0 + seed * 0.2)), 1e-6);
  }
  // Initial endpoints are the DT schedule's ᾱ_min and ᾱ_max.
  noprop::LearnedSchedule s(1e-3, 0.999, 8);
  torch::NoGradGuard g;
  EXPECT_NEAR(s->alpha_bar(torch::tensor({0.0}, torch::kFloat64)).item<double>(), 1e-3, 1e-7);
  EXPECT_NEAR(s->alpha_bar(torch::tensor({1.0}, torch::kFloat64)).item<double>(), 0.999, 1e-7);
}

// The closed-form SNR′(t) agrees with central differences of SNR(t), and with autograd.
TEST(LearnedSchedule, SnrDerivativeMatchesFiniteDifferences) {
  torch::manual_seed(7);
  noprop::LearnedSchedule s(1e-3, 0.999, 32);
  torch::NoGradGuard g;
  for (auto& p : s->parameters()) p.add_(torch::randn_like(p) * 0.5);
  auto t = torch::linspace(0.02, 0.98, 25, torch::kFloat64);
  const double h = 1e-6;
  auto fd = (s->snr(t + h) - s->snr(t - h)) / (2 * h);
  auto closed = s->snr_derivative(t);
  EXPECT_TRUE(torch::allclose(closed, fd, 1e-5, 1e-6)) << (closed - fd).abs().max().item<double>();
  EXPECT_TRUE((closed > 0).all().item<bool>());
  {
    torch::AutoGradMode on(true);
    auto tt = torch::tensor({0.37}, torch::kFloat64).requires_grad_(true);
    auto snr = s->snr(tt);
    auto grad = torch::autograd::grad({snr}, {tt})[0];
    EXPECT_NEAR(grad.item<double>(), s->snr_derivative(tt.detach()).item<double>(),
                1e-8 * grad.abs().item<double>() + 1e-10);
  }
}

TEST(Schedule, StepCoefficientsAgreeWithCosine) {
  CosineSchedule s(ScheduleOptions{});
  auto c = noprop::step_coefficients(s.alpha_bar(4), s.alpha_bar(5));
  EXPECT_DOUBLE_EQ(c.a, s.a(5));
  EXPECT_NEAR(c.a, 0.330356, 1e-6);
  EXPECT_NEAR(c.b, 0.637874, 1e-6);
  EXPECT_NEAR(c.c, 0.237943, 1e-6);
}
