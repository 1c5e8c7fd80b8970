// What NoProp-CT and NoProp-FM share: one time-conditioned network û_θ(z_t, x, t) (the
// net's cblock) trained with one optimizer, t ∈ [0, 1] with t = 1 the clean end, and
// inference that walks t over a grid of `steps` intervals with the image features computed
// once per image.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "noprop/methods/helpers.h"
#include "noprop/methods/method.h"

namespace noprop {

class ContinuousMethod : public Method {
 public:
  ContinuousMethod(const Config& cfg, NoPropNet net);

  void set_training(bool on) override { net_->train(on); }
  void save(torch::serialize::OutputArchive& ar) override;
  void load(torch::serialize::InputArchive& ar) override;
  std::vector<torch::Tensor> parameters() override { return params_; }
  NoPropNet network() override { return net_; }
  std::vector<torch::optim::Optimizer*> optimizers() override { return {opt_.get()}; }
  NoPropNet net() { return net_; }

 protected:
  // Call at the end of the derived constructor, once every trained parameter is known. Each
  // group's gradient is clipped on its own (as DT clips each block and the shared head apart):
  // one joint clip would let the large denoising gradient drown the head's.
  void make_optimizer_for(std::vector<std::vector<torch::Tensor>> groups);
  // zero_grad, backward, clip each group, step; false (nothing stepped) when the loss or a
  // gradient is not finite.
  bool optimise(const torch::Tensor& loss);
  // z_0 of an inference run: N(0, I) from `gen`, or 0 without noise.
  torch::Tensor initial_latent(const torch::Tensor& x, const InferenceOptions& opt, at::Generator& gen);
  // The method's own modules beyond the net (CT's schedule), saved and loaded with it.
  virtual void save_extra(torch::serialize::OutputArchive&) {}
  virtual void load_extra(torch::serialize::InputArchive&) {}

  Config cfg_;
  NoPropNet net_;
  std::vector<torch::Tensor> params_;
  std::vector<std::vector<torch::Tensor>> groups_;
  std::unique_ptr<torch::optim::Optimizer> opt_;
};

// Integrates dz/dt = v(z, k) from t = 0 to t = 1 over `steps` equal intervals, where v is
// evaluated at grid point k (t_k = k / steps, k = 0..steps). solver: euler (first order) or
// heun (second order, two evaluations per step).
torch::Tensor integrate_ode(torch::Tensor z, int steps, Solver solver,
                            const std::function<torch::Tensor(const torch::Tensor&, int)>& v);

}  // namespace noprop
