// The back-propagation baseline (Eq. 17-19): the same blocks and head chained end to end,
//   z_0 ~ N(0, I),  z_t = (1 − α_t) z_{t−1} + α_t û_θt(z_{t−1}, x),  α_t = tanh(w_t),
// trained on −log p̂_θout(y | z_T) with one optimizer over every parameter.
#pragma once

#include <memory>

#include "noprop/methods/method.h"

namespace noprop {

struct BackpropNetImpl : torch::nn::Module {
  BackpropNetImpl(NoPropNet net, double alpha_init);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& z0);  // log p̂(y|x)
  NoPropNet net;
  torch::Tensor w;  // T learned scalars
};
TORCH_MODULE(BackpropNet);

class BackpropMethod : public Method {
 public:
  BackpropMethod(const Config& cfg, NoPropNet net);

  std::vector<std::string> loss_names() const override { return {"loss_ce", "loss_total"}; }
  std::vector<torch::Tensor> train_step(const torch::Tensor& x, const torch::Tensor& y, int pass) override;
  torch::Tensor predict(const torch::Tensor& x, const InferenceOptions& opt, at::Generator& gen) override;
  void set_training(bool on) override { model_->train(on); }
  void save(torch::serialize::OutputArchive& ar) override;
  void load(torch::serialize::InputArchive& ar) override;
  std::vector<torch::Tensor> parameters() override { return params_; }
  NoPropNet network() override { return model_->net; }
  std::vector<torch::optim::Optimizer*> optimizers() override { return {opt_.get()}; }
  BackpropNet model() { return model_; }

 private:
  Config cfg_;
  BackpropNet model_;
  std::vector<torch::Tensor> params_;
  std::unique_ptr<torch::optim::Optimizer> opt_;
};

}  // namespace noprop
