// Training across processes and machines on LibTorch's c10d: a TCPStore rendezvous at
// MASTER_ADDR:MASTER_PORT and a Gloo process group (CPU tensors; CUDA tensors are staged
// through it too). The environment follows torchrun: RANK, WORLD_SIZE, LOCAL_RANK,
// MASTER_ADDR, MASTER_PORT; `noprop train --workers P` sets it for P local processes.
// Every collective either completes or throws an Error within the timeout: a worker that
// dies resets its connections and the others stop at their next collective.
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace noprop {

class Distributed {
 public:
  // nullptr unless WORLD_SIZE > 1. Error naming the variable when the environment is
  // incomplete or malformed, or when the rendezvous does not complete within `timeout`.
  static std::unique_ptr<Distributed> from_environment(std::chrono::seconds timeout);
  ~Distributed();

  int rank() const { return rank_; }
  int world() const { return world_; }
  int local_rank() const { return local_rank_; }  // LOCAL_RANK (default: RANK), e.g. the GPU index
  bool lead() const { return rank_ == 0; }

  // Element-wise sum over the ranks, in place, as one flat buffer (tensors of any shapes).
  void allreduce_sum(const std::vector<torch::Tensor>& tensors);
  // The largest of each rank's value (e.g. a pending signal number).
  int64_t max(int64_t value);
  // Replaces `bytes` on every rank by root's.
  void broadcast_bytes(std::string& bytes, int root);

 private:
  struct Impl;
  Distributed(int rank, int world, std::unique_ptr<Impl> impl);
  int rank_, world_, local_rank_ = 0;
  std::unique_ptr<Impl> impl_;
};

// `noprop train --workers P`: runs P copies of this program (argv without --workers) with the
// torchrun variables set for one machine, each with `threads` threads; the first worker that
// fails makes the others stop (SIGTERM, then SIGKILL after a grace period). Returns the exit
// code: 0, or the first failing worker's.
int launch_workers(int workers, int threads, const std::vector<std::string>& args);

}  // namespace noprop
