#include "noprop/methods/ct.h"

#include <cmath>

#include "noprop/methods/helpers.h"
#include "noprop/methods/registry.h"
#include "noprop/util.h"

namespace noprop {

CTMethod::CTMethod(const Config& cfg, NoPropNet net) : ContinuousMethod(cfg, std::move(net)) {
  schedule_ = LearnedSchedule(cfg.noise_schedule_min, cfg.noise_schedule_max, cfg.schedule_hidden);
  schedule_->to(net_->embed->weight.device());
  auto shared = net_->head->parameters();
  if (net_->embed->learned) shared.push_back(net_->embed->weight);
  make_optimizer_for({net_->cblock->parameters(), shared, schedule_->parameters()});
}

std::vector<torch::Tensor> CTMethod::train_step(const torch::Tensor& x, const torch::Tensor& y, int) {
  const auto& W = net_->embed->weight;
  auto u_y = net_->embed->forward(y);
  auto t = cpu_rand({x.size(0)}, x);
  auto ab = schedule_->alpha_bar(t).unsqueeze(1);
  auto z_t = ab.sqrt() * u_y + (1 - ab).sqrt() * cpu_randn(u_y.sizes(), u_y);
  auto u_hat = torch::softmax(net_->cblock->forward(x, z_t, t), 1).matmul(W);
  auto denoise = (0.5 * cfg_.eta * schedule_->snr_derivative(t) * (u_hat - u_y).pow(2).sum(1)).mean();

  auto ends = schedule_->alpha_bar(torch::tensor({0.0f, 1.0f}, x.options()));
  auto z_1 = ends[1].sqrt() * u_y + (1 - ends[1]).sqrt() * cpu_randn(u_y.sizes(), u_y);
  auto ce = torch::nll_loss(net_->head->log_prob(z_1, W), y);
  auto kl = net_->embed->kl(y, ends[0]);
  auto total = denoise + ce + kl;
  if (!optimise(total)) return std::vector<torch::Tensor>(4);
  return {denoise.detach(), ce.detach(), kl.detach(), total.detach()};
}

torch::Tensor CTMethod::sample(const Denoiser& denoise, torch::Tensor z, const InferenceOptions& opt,
                               at::Generator& gen) {
  torch::NoGradGuard no_grad;
  const int N = opt.steps;
  if (N < 1) throw Error("inference steps must be >= 1");
  // The schedule on the grid, in double: consecutive ᾱ differ by little when N is large.
  auto grid =
      torch::linspace(0.0, 1.0, N + 1, torch::TensorOptions().dtype(torch::kFloat64)).to(schedule_->gamma0.device());
  auto on_host = [N](const torch::Tensor& v) {
    auto c = v.to(torch::kCPU, torch::kFloat64).contiguous();
    return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + N + 1);
  };
  const std::vector<double> ab = on_host(schedule_->alpha_bar(grid));
  auto time = [&](int k) { return torch::full({1}, double(k) / N, z.options()); };

  if (opt.sampler == Sampler::ancestral) {
    for (int k = 1; k <= N; ++k) {
      auto u_hat = denoise(z, time(k - 1));
      auto c = step_coefficients(ab[k - 1], ab[k]);
      z = c.a * u_hat + c.b * z;
      if (opt.noise) z = z + std::sqrt(c.c) * normal_like(z, gen);
    }
    return z;
  }
  // dᾱ/dt = −γ′(t) ᾱ (1 − ᾱ).
  std::vector<double> dab = on_host(-schedule_->gamma_derivative(grid));
  for (int k = 0; k <= N; ++k) dab[k] = dab[k] * ab[k] * (1 - ab[k]);
  return integrate_ode(z, N, opt.solver, [&](const torch::Tensor& zk, int k) {
    const double s = std::sqrt(ab[k]), sigma = std::sqrt(1 - ab[k]);
    const double ds = dab[k] / (2 * s), dsigma = -dab[k] / (2 * sigma);
    auto u_hat = denoise(zk, time(k));
    return ds * u_hat + (dsigma / sigma) * (zk - s * u_hat);
  });
}

torch::Tensor CTMethod::predict(const torch::Tensor& x, const InferenceOptions& opt, at::Generator& gen) {
  torch::NoGradGuard no_grad;
  const auto& W = net_->embed->weight;
  // The image features in pieces, as the other methods' inference: a batch of 1000 paper-
  // architecture images at once held ~270 MB of convolution activations, the run's peak.
  auto prepared =
      in_chunks(x.size(0), x.device(), [&](int64_t b, int64_t e) { return net_->cblock->prepare(x.slice(0, b, e)); });
  auto z1 = sample(
      [&](const torch::Tensor& z, const torch::Tensor& t) {
        return torch::softmax(net_->cblock->forward_prepared(prepared, z, t), 1).matmul(W);
      },
      initial_latent(x, opt, gen), opt, gen);
  return net_->head->log_prob(z1, W);
}

MethodSpec ct_method_spec() {
  return {.name = "ct",
          .title = "NoProp-CT",
          .summary = "continuous-time NoProp: one time-conditioned block, a learned noise schedule (Eq. 11-13)",
          .continuous_time = true,
          .inference = {.steps = true, .solver = true, .sampler = true},
          .make = method_factory<CTMethod>()};
}

}  // namespace noprop
