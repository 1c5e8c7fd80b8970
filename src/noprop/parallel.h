// How training is spread over the processes of a distributed run (distributed.h). A method
// chooses its strategy (Method::make_parallelism); the trainer and the method's step then ask
// the strategy, so neither names the other's mode:
//   single         one process: every block, every row of every batch.
//   data-parallel  every rank trains its share of each batch; the loss and gradients are
//                  averaged over the ranks before each step, so all ranks take the same steps.
//   block-parallel rank r trains blocks t with (t − 1) mod P = r on the whole batch; the ranks
//                  sum what their blocks computed, and before evaluation and checkpoints each
//                  block travels from the rank that trains it to all others.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace noprop {

class Distributed;

class Parallelism {
 public:
  virtual ~Parallelism() = default;
  virtual std::string name() const { return "single"; }
  // Processes the run is spread over.
  virtual int world() const { return 1; }
  // Whether each rank trains only its share of each batch (data-parallel).
  virtual bool shards_batches() const { return false; }
  // The rows [begin, end) of an m-row batch that this rank trains.
  virtual std::pair<int64_t, int64_t> rows(int64_t m) const { return {0, m}; }
  // Whether this rank trains block t.
  virtual bool trains_block(int /*t*/) const { return true; }
  // Data-parallel: replaces each tensor by its mean over the ranks (a collective, one flat
  // buffer; NaN and Inf survive it). Otherwise nothing.
  virtual void average(const std::vector<at::Tensor>& /*tensors*/) {}
  // Block-parallel: sums each tensor over the ranks, each rank having filled in its own
  // blocks' part (a collective). Otherwise nothing.
  virtual void sum_block_parts(const std::vector<at::Tensor>& /*tensors*/) {}
  // Before evaluation and checkpoints: makes every rank's copy complete and identical
  // (parameters, buffers, optimizer states). A collective, called on every rank.
  virtual void synchronise() {}
};

std::unique_ptr<Parallelism> single_process();
// `parameters()` gives the model's parameters: synchronise() checks that every rank holds the same.
std::unique_ptr<Parallelism> data_parallel(Distributed& dist, std::function<std::vector<at::Tensor>()> parameters);
// `pack(t)` serialises block t (with its optimizer state) on the rank that trains it;
// `unpack(t, bytes)` loads it on every other rank.
std::unique_ptr<Parallelism> block_parallel(Distributed& dist, std::function<std::string(int)> pack,
                                            std::function<void(int, const std::string&)> unpack, int blocks);

}  // namespace noprop
