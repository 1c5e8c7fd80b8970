#include "noprop/methods/continuous.h"

#include "noprop/methods/helpers.h"
#include "noprop/util.h"

namespace noprop {

ContinuousMethod::ContinuousMethod(const Config& cfg, NoPropNet net) : cfg_(cfg), net_(std::move(net)) {}

void ContinuousMethod::make_optimizer_for(std::vector<std::vector<torch::Tensor>> groups) {
  groups_ = std::move(groups);
  params_.clear();
  for (const auto& g : groups_) params_.insert(params_.end(), g.begin(), g.end());
  opt_ = make_optimizer(cfg_, params_);
}

bool ContinuousMethod::optimise(const torch::Tensor& loss) {
  opt_->zero_grad();
  loss.backward();
  if (!clip_and_check(groups_, cfg_.grad_clip_max_norm, loss, "network")) return false;
  opt_->step();
  return true;
}

torch::Tensor ContinuousMethod::initial_latent(const torch::Tensor& x, const InferenceOptions& opt,
                                               at::Generator& gen) {
  auto z = torch::zeros({x.size(0), net_->embed->weight.size(1)}, x.options());
  return opt.noise ? normal_like(z, gen) : z;
}

void ContinuousMethod::save(torch::serialize::OutputArchive& ar) {
  save_module(ar, "model", *net_);
  save_extra(ar);
  save_optimizer(ar, "optim", *opt_);
}

void ContinuousMethod::load(torch::serialize::InputArchive& ar) {
  load_module(ar, "model", *net_);
  load_extra(ar);
  load_optimizer(ar, "optim", *opt_);
}

torch::Tensor integrate_ode(torch::Tensor z, int steps, Solver solver,
                            const std::function<torch::Tensor(const torch::Tensor&, int)>& v) {
  if (steps < 1) throw Error("inference steps must be >= 1");
  const double h = 1.0 / steps;
  for (int k = 0; k < steps; ++k) {
    auto v1 = v(z, k);
    if (solver == Solver::euler) {
      z = z + h * v1;
    } else {
      auto v2 = v(z + h * v1, k + 1);
      z = z + (0.5 * h) * (v1 + v2);
    }
  }
  return z;
}

}  // namespace noprop
