#include "noprop/methods/fm.h"

#include "noprop/methods/helpers.h"
#include "noprop/methods/registry.h"

namespace noprop {

FMMethod::FMMethod(const Config& cfg, NoPropNet net) : ContinuousMethod(cfg, std::move(net)) {
  anchor_ = net_->embed->learned;
  std::vector<torch::Tensor> shared;
  if (anchor_) {
    shared = net_->head->parameters();
    shared.push_back(net_->embed->weight);
  }
  make_optimizer_for({net_->cblock->parameters(), shared});
}

torch::Tensor FMMethod::flow_loss(const torch::Tensor& v, const torch::Tensor& z0, const torch::Tensor& z1) {
  return (v - (z1 - z0)).pow(2).sum(1).mean();
}

torch::Tensor FMMethod::nearest_embedding_scores(const torch::Tensor& z, const torch::Tensor& W) {
  auto d2 = (z.unsqueeze(1) - W.unsqueeze(0)).pow(2).sum(2);
  return torch::log_softmax(-d2, 1);
}

std::vector<torch::Tensor> FMMethod::train_step(const torch::Tensor& x, const torch::Tensor& y, int) {
  const auto& W = net_->embed->weight;
  auto z1 = net_->embed->forward(y);
  auto z0 = cpu_randn(z1.sizes(), z1);
  auto t = cpu_rand({x.size(0)}, x);
  auto tt = t.unsqueeze(1);
  auto z_t = tt * z1 + (1 - tt) * z0;
  if (cfg_.fm_sigma > 0) z_t = z_t + cfg_.fm_sigma * cpu_randn(z1.sizes(), z1);
  auto v = net_->cblock->forward(x, z_t, t).matmul(W);
  auto flow = flow_loss(v, z0, z1);
  torch::Tensor anchor = torch::zeros({}, x.options());
  if (anchor_) anchor = torch::nll_loss(net_->head->log_prob(z_t + (1 - tt) * v, W), y);
  auto total = flow + anchor;
  if (!optimise(total)) return std::vector<torch::Tensor>(3);
  return {flow.detach(), anchor.detach(), total.detach()};
}

torch::Tensor FMMethod::predict(const torch::Tensor& x, const InferenceOptions& opt, at::Generator& gen) {
  torch::NoGradGuard no_grad;
  const auto& W = net_->embed->weight;
  // The image features in pieces, as the other methods' inference: a batch of 1000 paper-
  // architecture images at once held ~270 MB of convolution activations, the run's peak.
  auto prepared =
      in_chunks(x.size(0), x.device(), [&](int64_t b, int64_t e) { return net_->cblock->prepare(x.slice(0, b, e)); });
  const int N = opt.steps;
  auto z = integrate_ode(initial_latent(x, opt, gen), N, opt.solver, [&](const torch::Tensor& zk, int k) {
    auto t = torch::full({1}, double(k) / N, zk.options());
    return net_->cblock->forward_prepared(prepared, zk, t).matmul(W);
  });
  return nearest_embedding_scores(z, W);
}

MethodSpec fm_method_spec() {
  return {.name = "fm",
          .title = "NoProp-FM",
          .summary = "flow matching: one time-conditioned block learns the velocity z_1 − z_0 (Eq. 14-16)",
          .continuous_time = true,
          .inference = {.steps = true, .solver = true},
          .make = method_factory<FMMethod>()};
}

}  // namespace noprop
