// The interface every training method implements (NoProp-DT, back-propagation, ...), and the
// network parts they share: T denoising blocks, the class embedding and the output head.
// The trainer only talks to Method; adding a method means one new file and one line in
// make_method().
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "noprop/block.h"
#include "noprop/config.h"
#include "noprop/data.h"
#include "noprop/embeddings.h"

namespace noprop {

class Distributed;

// The block options a config asks for on a data set (d follows the embedding).
BlockOptions block_options(const Config& cfg, const DataInfo& info);

// Blocks, embedding and head, registered under one root so that one Module::save covers them.
// The discrete-time methods have T blocks; the continuous-time ones (ct, fm) have no discrete
// blocks and one time-conditioned network `cblock` instead.
struct NoPropNetImpl : torch::nn::Module {
  NoPropNetImpl(const Config& cfg, const DataInfo& info, const torch::Tensor& prototypes);
  int T() const { return int(blocks->size()); }
  DenoiseBlock block(int t) { return DenoiseBlock(blocks->ptr<DenoiseBlockImpl>(t - 1)); }  // t = 1..T
  // û_θt = softmax(logits) · W_embed.
  torch::Tensor denoise(int t, const torch::Tensor& x, const torch::Tensor& z);

  BlockOptions block_options;
  torch::nn::ModuleList blocks{nullptr};
  ContinuousBlock cblock{nullptr};
  ClassEmbedding embed{nullptr};
  Head head{nullptr};
};
TORCH_MODULE(NoPropNet);

// How predict() runs inference; steps, solver and sampler concern the continuous-time methods.
struct InferenceOptions {
  bool noise = true;                  // false: z_0 = 0 and no noise on the way
  int steps = 1000;                   // discretisation of t ∈ [0, 1]
  std::string solver = "euler";       // euler | heun: the FM ODE and CT's probability flow
  std::string sampler = "ancestral";  // CT: ancestral (Eq. 3 on the learned schedule) | flow
  std::string readout = "blocks";     // DT: blocks (mean of the blocks' probabilities) | head (on z_T)
};
// The options a config asks for (inference_noise, inference_steps, solver, ct_sampler, readout).
InferenceOptions inference_options(const Config& cfg);

class Method {
 public:
  virtual ~Method() = default;

  // Names of the values train_step returns, e.g. loss_block_1 .. loss_block_T, loss_ce,
  // loss_kl, loss_total. The last one is the total.
  virtual std::vector<std::string> loss_names() const = 0;
  // Passes over the training set per epoch: T for Algorithm 1's block-by-block order, else 1.
  virtual int passes_per_epoch() const { return 1; }
  // One optimisation step on a batch (for pass `pass` of the epoch). Returns detached 0-dim
  // loss tensors in loss_names() order, never synchronising with the host.
  virtual std::vector<torch::Tensor> train_step(const torch::Tensor& x, const torch::Tensor& y, int pass) = 0;
  // Class scores (log p̂(y | x)) of one inference run, B×m; noise from `gen` (unused when
  // noise is off).
  virtual torch::Tensor predict(const torch::Tensor& x, const InferenceOptions& opt, at::Generator& gen) = 0;

  virtual void set_training(bool on) = 0;
  // Everything needed to continue training: parameters, buffers and optimizer state.
  virtual void save(torch::serialize::OutputArchive& ar) = 0;
  virtual void load(torch::serialize::InputArchive& ar) = 0;
  // Every trained parameter (blocks, head, embeddings, method-specific ones).
  virtual std::vector<torch::Tensor> parameters() = 0;
  // The blocks, embedding and head.
  virtual NoPropNet network() = 0;
  // Every optimizer the method steps (the trainer's learning-rate schedule sets their rate).
  virtual std::vector<torch::optim::Optimizer*> optimizers() = 0;
  // Sets the learning rate of every parameter group of every optimizer.
  void set_learning_rate(double lr);
  int64_t parameter_count();

  // The parts ("block 3", "network", ...) whose update the last train_step skipped because the
  // loss or a gradient was NaN or infinite; clears the list. A skipped part's loss is left
  // undefined in train_step's result and its weights and optimizer state are untouched.
  std::vector<std::string> take_nonfinite() {
    std::lock_guard<std::mutex> lock(nonfinite_mutex_);
    return std::exchange(nonfinite_, {});
  }

  // Training across processes (distributed.h), called once before training; nullptr: one
  // process. By default a method is data-parallel: every rank trains on its share of each
  // batch and clip_and_check averages the gradients, so all ranks take the same steps.
  // NoProp-DT overrides it to train blocks in parallel instead.
  virtual void set_distributed(Distributed* dist) { dist_ = dist; }
  // Whether the trainer gives this rank only its share of each batch.
  virtual bool data_parallel() const { return dist_ != nullptr; }
  // Makes every rank's copy complete and identical (parameters, buffers, optimizer states)
  // before evaluation and checkpoints; a collective, called on every rank.
  virtual void synchronise() {}

 protected:
  // After backward(): clips each group's gradients (to max_norm) and checks the loss
  // and every gradient for NaN and Inf, one host synchronisation. On failure it zeroes the
  // gradients, records `part` and returns false: the caller must not step.
  bool clip_and_check(const std::vector<std::vector<torch::Tensor>>& groups, double max_norm, const torch::Tensor& loss,
                      const std::string& part);
  // The same on gradients held apart from their parameters (undefined entries: no gradient),
  // clipped in place, without the data-parallel averaging; safe to call from several threads.
  bool clip_and_check_grads(const std::vector<std::vector<torch::Tensor>>& grads, double max_norm,
                            const torch::Tensor& loss, const std::string& part) {
    return clip_and_check_grads(grads, std::vector<double>(grads.size(), max_norm), loss, part);
  }
  // The same with a max norm per group.
  bool clip_and_check_grads(const std::vector<std::vector<torch::Tensor>>& grads, const std::vector<double>& max_norms,
                            const torch::Tensor& loss, const std::string& part);

  Distributed* dist_ = nullptr;

 private:
  std::mutex nonfinite_mutex_;
  std::vector<std::string> nonfinite_;
};

// Builds the configured method on `device`; `train` supplies prototype images when needed.
std::unique_ptr<Method> make_method(const Config& cfg, const DataInfo& info, const Dataset* train,
                                    torch::Device device);

// head_init: embedding — the nearest-class-embedding readout: fc.weight = β W_embed / r²,
// fc.bias_k = −β ‖u_k‖² / (2 r²) with r² the mean ‖u_k‖² (β·I and −β/2 for one-hot), so that
// logit_k = −β ‖z − u_k‖² / (2 r²) + a term common to all classes.
void init_head_from_embedding(Head& head, const torch::Tensor& embed_weight, double beta);

// Helpers shared by the methods.
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const Config& cfg, std::vector<torch::Tensor> params);
// Scales gradients to a total norm ≤ max_norm (none when max_norm ≤ 0) without a host
// synchronisation; returns the norm before scaling (a 0-dim tensor, 0 without gradients).
torch::Tensor clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm);
// The same on the gradients themselves (undefined entries are skipped).
torch::Tensor clip_grads(const std::vector<torch::Tensor>& grads, double max_norm);
// f(begin, end) over row ranges of at most kInferenceChunk rows on the CPU (one range on other
// devices), concatenated: inference of big batches in cache-sized pieces.
constexpr int64_t kInferenceChunk = 256;
torch::Tensor in_chunks(int64_t rows, const torch::Device& device,
                        const std::function<torch::Tensor(int64_t, int64_t)>& f);
// Standard normal noise of `like`'s shape from `gen` (on `like`'s device).
torch::Tensor normal_like(const torch::Tensor& like, at::Generator& gen);
// Training noise, N(0, 1) or U[0, 1), from the default CPU generator whatever the device, then
// moved to `like`'s device: a seed means the same draws on every device, so that a CUDA step can
// be checked against the CPU's (tests/test_gpu.cpp); on the CPU these are randn/rand as before.
torch::Tensor cpu_randn(at::IntArrayRef sizes, const torch::Tensor& like);
torch::Tensor cpu_rand(at::IntArrayRef sizes, const torch::Tensor& like);
void save_module(torch::serialize::OutputArchive& ar, const std::string& key, torch::nn::Module& module);
// Loads parameters and buffers in place; a stored tensor of another shape is an error (LibTorch
// itself would silently resize the parameter).
void load_module(torch::serialize::InputArchive& ar, const std::string& key, torch::nn::Module& module);
void save_optimizer(torch::serialize::OutputArchive& ar, const std::string& key, torch::optim::Optimizer& opt);
void load_optimizer(torch::serialize::InputArchive& ar, const std::string& key, torch::optim::Optimizer& opt);

}  // namespace noprop
