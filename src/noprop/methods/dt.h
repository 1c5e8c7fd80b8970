// NoProp-DT (Eq. 8, Algorithm 1; inference Eq. 3).
//
// Block t learns to denoise z_{t−1} = √ᾱ_{t−1} u_y + √(1 − ᾱ_{t−1}) ε:
//   L_t = (T/2) η (SNR(t) − SNR(t−1)) ‖û_θt(z_{t−1}, x) − u_y‖²
// and every step adds the terms shared by all blocks,
//   CE = −log p̂_θout(y | z_T), z_T ~ q(z_T | y),   KL(q(z_0|y) ‖ N(0, I)),
// all batch means. One AdamW per block updates θt; one more updates θout and W_embed.
// Nothing flows between blocks: each block's graph starts from a freshly sampled z_{t−1}.
#pragma once

#include <memory>
#include <vector>

#include "noprop/methods/method.h"
#include "noprop/schedule.h"

namespace noprop {

// NoProp-DT's options, typed, from the config keys of the same names (config.h says what each does).
struct DTOptions {
  enum class Order { interleaved, sequential } block_order = Order::interleaved;
  enum class SharedUpdate { per_block, per_batch } shared_update = SharedUpdate::per_block;
  enum class ClipScaling { none, loss_weight } grad_clip_scaling = ClipScaling::none;
  bool stacked_blocks = false;
  double eta = 0.1;
  double grad_clip_max_norm = 1.0;
  bool fused_kernels = true;
  bool data_parallel = false;  // parallel: data (else block) in distributed runs
  // Error naming the key for a value this method does not know.
  static DTOptions from(const Config& cfg);
};

class DTMethod : public Method {
 public:
  DTMethod(const Config& cfg, NoPropNet net);

  std::vector<std::string> loss_names() const override;
  int passes_per_epoch() const override { return sequential_ ? net_->T() : 1; }
  std::vector<torch::Tensor> train_step(const torch::Tensor& x, const torch::Tensor& y, int pass) override;
  torch::Tensor predict(const torch::Tensor& x, const InferenceOptions& opt, at::Generator& gen) override;
  void set_training(bool on) override { net_->train(on); }
  void save(torch::serialize::OutputArchive& ar) override;
  void load(torch::serialize::InputArchive& ar) override;
  std::vector<torch::Tensor> parameters() override { return net_->parameters(); }
  NoPropNet network() override { return net_; }
  std::vector<torch::optim::Optimizer*> optimizers() override;
  double step_flops(int64_t batch) override;

  // Whether this rank trains block t (always, in one process).
  bool owns(int t) const { return parallel_->trains_block(t); }

  // The loss of block t for given û and u_y (exposed for tests), and its weight ½Tη(SNR(t) − SNR(t−1)).
  torch::Tensor block_loss(int t, const torch::Tensor& u_hat, const torch::Tensor& u_y) const;
  double loss_weight(int t) const;
  // The gradient-norm clips of block t's step: its own parameters, the head, the embeddings.
  std::vector<double> clip_norms(int t) const;
  // One step of Eq. 3: z_t = a_t û + b_t z_{t−1} + √c_t ε.
  torch::Tensor inference_step(int t, const torch::Tensor& u_hat, const torch::Tensor& z_prev,
                               const torch::Tensor& eps) const;
  const CosineSchedule& schedule() const { return schedule_; }
  NoPropNet net() { return net_; }

 protected:
  // Block-parallel (parallel: block, the default): rank r trains blocks t with (t − 1) mod P = r;
  // the ranks then exchange each block's gradient of the head and embeddings, and every rank
  // applies the T steps in block order (shared_update: per_batch, interleaved order). Noise and
  // dropout of block t are drawn from a seed every rank derives alike, so a P-rank run takes the
  // same steps as one process with shared_update: per_batch. parallel: data is data-parallel.
  std::unique_ptr<Parallelism> make_parallelism(Distributed& dist) override;

 private:
  // Block t's loss plus the shared terms on a batch: gradients, clipping, check, and the block's
  // own optimizer step. Noise and dropout come from `seed`. The shared gradients are returned,
  // not applied. stepped = false: skipped (non-finite), nothing changed.
  struct BlockStep {
    bool stepped = false;
    torch::Tensor loss, ce, kl;
    std::vector<torch::Tensor> shared_grads;  // in shared_params_ order (undefined: none)
  };
  BlockStep step_block(int t, const torch::Tensor& x, const torch::Tensor& y, uint64_t seed);
  // The same for blocks ts at once (stacked_blocks): one forward and backward over their stacked
  // weights, then each block's shared terms, clip, check and step as step_block does. Noise comes
  // from seeds + t as in step_block; dropout from `seeds` (LibTorch's generator).
  std::vector<BlockStep> step_blocks_stacked(const std::vector<int>& ts, const torch::Tensor& x, const torch::Tensor& y,
                                             uint64_t seeds);
  // Given block t's gradients (its parameters', then the shared ones) and its total loss: averages
  // them over the ranks (parallel: data), clips, checks and steps block t's optimizer.
  BlockStep finish_block(int t, std::vector<torch::Tensor> grads, const torch::Tensor& total,
                         const torch::Tensor& loss_t, const torch::Tensor& ce, const torch::Tensor& kl);
  // CE and KL of Algorithm 1 with z_T = √ᾱ_T u_y + √(1 − ᾱ_T) eps_T.
  std::pair<torch::Tensor, torch::Tensor> shared_losses(const torch::Tensor& y, const torch::Tensor& eps_T);
  std::vector<torch::Tensor> train_step_per_batch(const torch::Tensor& x, const torch::Tensor& y);
  static uint64_t block_seeds();

  Config cfg_;  // for the optimizers
  DTOptions opt_;
  NoPropNet net_;
  CosineSchedule schedule_;
  bool sequential_;
  std::vector<std::unique_ptr<torch::optim::Optimizer>> block_opts_;
  std::unique_ptr<torch::optim::Optimizer> shared_opt_;  // head and (learned) embeddings
  std::vector<std::vector<torch::Tensor>> block_params_;
  std::vector<torch::Tensor> shared_params_;  // the head's, then the learned embeddings (if any)
  std::size_t head_param_count_ = 0;
};

}  // namespace noprop
