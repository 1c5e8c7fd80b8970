#include "noprop/methods/backprop.h"

#include <cmath>

#include "noprop/methods/helpers.h"
#include "noprop/methods/registry.h"

namespace noprop {

BackpropNetImpl::BackpropNetImpl(NoPropNet n, double alpha_init) : net(std::move(n)) {
  register_module("net", net);
  auto dev = net->embed->weight.device();
  w = register_parameter("w", torch::full({net->T()}, std::atanh(alpha_init), torch::TensorOptions().device(dev)));
}

torch::Tensor BackpropNetImpl::forward(const torch::Tensor& x, const torch::Tensor& z0) {
  auto z = z0;
  auto alpha = torch::tanh(w);
  for (int t = 1; t <= net->T(); ++t) {
    auto a = alpha[t - 1];
    z = (1 - a) * z + a * net->denoise(t, x, z);
  }
  return net->head->log_prob(z, net->embed->weight);
}

BackpropMethod::BackpropMethod(const Config& cfg, NoPropNet net)
    : cfg_(cfg), model_(BackpropNet(std::move(net), cfg.alpha_init)) {
  params_ = model_->parameters();
  opt_ = make_optimizer(cfg_, params_);
}

std::vector<torch::Tensor> BackpropMethod::train_step(const torch::Tensor& x, const torch::Tensor& y, int) {
  auto z0 = cpu_randn({x.size(0), int64_t(model_->net->embed->dim())}, x);
  auto loss = torch::nll_loss(model_->forward(x, z0), y);
  opt_->zero_grad();
  loss.backward();
  if (!clip_and_check({params_}, cfg_.grad_clip_max_norm, loss, "model")) return {torch::Tensor(), torch::Tensor()};
  opt_->step();
  auto l = loss.detach();
  return {l, l};
}

torch::Tensor BackpropMethod::predict(const torch::Tensor& x, const InferenceOptions& opt, at::Generator& gen) {
  torch::NoGradGuard no_grad;
  auto z0 = torch::zeros({x.size(0), int64_t(model_->net->embed->dim())}, x.options());
  if (opt.noise) z0 = normal_like(z0, gen);
  return in_chunks(x.size(0), x.device(),
                   [&](int64_t b, int64_t e) { return model_->forward(x.slice(0, b, e), z0.slice(0, b, e)); });
}

void BackpropMethod::save(torch::serialize::OutputArchive& ar) {
  save_module(ar, "model", *model_);
  save_optimizer(ar, "optim", *opt_);
}

void BackpropMethod::load(torch::serialize::InputArchive& ar) {
  load_module(ar, "model", *model_);
  load_optimizer(ar, "optim", *opt_);
}

MethodSpec backprop_method_spec() {
  return {.name = "backprop",
          .title = "backprop",
          .summary = "the baseline: the same blocks chained end to end, trained by back-propagation (Eq. 17-19)",
          .make = method_factory<BackpropMethod>()};
}

}  // namespace noprop
