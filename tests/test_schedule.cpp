#include <gtest/gtest.h>

#include <cmath>

#include "noprop/schedule.h"

using noprop::CosineSchedule;
using noprop::ScheduleOptions;

// Values of the method note's table (T = 10), computed independently in float64.
TEST(Schedule, MatchesMethodNoteTable) {
  CosineSchedule s(ScheduleOptions{});
  struct Row { int t; double ab, snr, dsnr, a, b, c; };
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
