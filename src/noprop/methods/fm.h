// NoProp-FM (Eqs. 10-13, Algorithm 3).
//
// z_0 ~ N(0, I), z_1 = u_y, t ~ U(0, 1), z_t = t z_1 + (1 − t) z_0 + σ ε (σ: config key
// fm_sigma, ours). The network gives the vector field v_θ(z_t, x, t) = logits · W_embed (no
// softmax), trained on ‖v_θ − (z_1 − z_0)‖² (sum over dimensions, batch mean). With learned
// (or prototype) embeddings the anchor −log p̂_θout(y | z̃_1), z̃_1 = z_t + (1 − t) v_θ, keeps
// the embeddings from collapsing; with one-hot embeddings the head is not used.
//
// Inference integrates dz/dt = v_θ from z_0 ~ N(0, I) (z_0 = 0 without noise) to t = 1 by
// Euler or Heun and predicts the class whose embedding is nearest to z_1; the scores are
// log softmax(−‖z_1 − u_c‖²).
#pragma once

#include "noprop/methods/continuous.h"

namespace noprop {

class FMMethod : public ContinuousMethod {
 public:
  FMMethod(const Config& cfg, NoPropNet net);

  std::vector<std::string> loss_names() const override { return {"loss_flow", "loss_anchor", "loss_total"}; }
  std::vector<torch::Tensor> train_step(const torch::Tensor& x, const torch::Tensor& y, int pass) override;
  torch::Tensor predict(const torch::Tensor& x, const InferenceOptions& opt, at::Generator& gen) override;

  // ‖v − (z_1 − z_0)‖², batch mean (exposed for tests).
  static torch::Tensor flow_loss(const torch::Tensor& v, const torch::Tensor& z0, const torch::Tensor& z1);
  // log softmax of −‖z − u_c‖² over the classes c.
  static torch::Tensor nearest_embedding_scores(const torch::Tensor& z, const torch::Tensor& W);

 private:
  bool anchor_;  // embeddings are learned: add the anchor cross-entropy
};

}  // namespace noprop
