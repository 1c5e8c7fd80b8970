// The interface every training method implements (NoProp-DT, back-propagation, ...). The
// trainer only talks to Method; methods are found by name in methods/registry.h, build their
// network from methods/network.h and share the helpers of methods/helpers.h.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "noprop/config.h"
#include "noprop/data.h"
#include "noprop/methods/inference.h"
#include "noprop/methods/network.h"
#include "noprop/parallel.h"

namespace noprop {

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
  // FLOPs of one training step on `batch` samples and of inference on one image, from the
  // blocks' own counts (the benchmark's GFLOP/s; backward counted as twice the forward). By
  // default every block is trained each step and inference runs each block once (discrete
  // time) or the time-conditioned block once per step (continuous time).
  virtual double step_flops(int64_t batch);
  virtual double inference_flops(const InferenceOptions& opt);

  // The parts ("block 3", "network", ...) whose update the last train_step skipped because the
  // loss or a gradient was NaN or infinite; clears the list. A skipped part's loss is left
  // undefined in train_step's result and its weights and optimizer state are untouched.
  std::vector<std::string> take_nonfinite() {
    std::lock_guard<std::mutex> lock(nonfinite_mutex_);
    return std::exchange(nonfinite_, {});
  }

  // Training across processes (parallel.h), called once before training with the run's
  // processes (nullptr: one process).
  void set_distributed(Distributed* dist) { parallel_ = dist ? make_parallelism(*dist) : single_process(); }
  // How this method's training is spread over the processes; the trainer asks it which rows of a
  // batch to give this rank and calls its synchronise() before evaluation and checkpoints.
  Parallelism& parallelism() { return *parallel_; }

 protected:
  // A distributed run's strategy. By default a method is data-parallel: every rank trains on its
  // share of each batch and clip_and_check averages the gradients, so all ranks take the same
  // steps. NoProp-DT may train its blocks in parallel instead.
  virtual std::unique_ptr<Parallelism> make_parallelism(Distributed& dist) {
    return data_parallel(dist, [this] { return parameters(); });
  }

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

  std::unique_ptr<Parallelism> parallel_ = single_process();

 private:
  std::mutex nonfinite_mutex_;
  std::vector<std::string> nonfinite_;
};

// The factory of a MethodSpec (methods/registry.h) for a method constructed from (cfg, net).
template <class M>
auto method_factory() {
  return [](const Config& cfg, std::shared_ptr<NoPropNetImpl> net) -> std::unique_ptr<Method> {
    return std::make_unique<M>(cfg, NoPropNet(std::move(net)));
  };
}

// Builds the configured method on `device`; `train` supplies prototype images when needed.
std::unique_ptr<Method> make_method(const Config& cfg, const DataInfo& info, const Dataset* train,
                                    torch::Device device);

}  // namespace noprop
