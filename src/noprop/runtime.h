// Process-wide set-up: allocator tuning, thread count, device choice.
#pragma once

#include <torch/torch.h>

#include <signal.h>

#include <csignal>
#include <string>

namespace noprop {

// Call first thing in main(). Two start-up fixes, both measured on the 2-core reference machine:
// - OpenBLAS picks its generic "Prescott" kernels on CPUs it does not recognise (~40 GFLOP/s
//   sgemm against ~135 with Haswell kernels). It reads OPENBLAS_CORETYPE only when the
//   library loads, so when the variable is unset and the CPU has AVX2 and FMA, the program
//   sets it to Haswell and re-executes itself once. A value already set is left alone.
// - glibc malloc's dynamic mmap threshold makes the large activation buffers page-fault on
//   every allocation depending on allocation history alone (2-3× slower steps): pinned here.
void init_process(int argc, char** argv);

// Sets LibTorch's intra-op threads (0: all cores) and returns the number in use.
int configure_threads(int requested);

// "cpu", "cuda" or "cuda:N"; an Error when CUDA is asked for but not available.
torch::Device select_device(const std::string& name);

std::string torch_version();

// While alive, SIGINT and SIGTERM only set a flag that the training loop polls between steps
// (it then saves a resumable checkpoint); a second signal ends the process at once. The
// previous handlers come back on destruction.
class StopSignals {
 public:
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
  // The signal received (SIGINT or SIGTERM), or 0.
  static int pending();

 private:
  struct sigaction old_[2];  // SIGINT's and SIGTERM's previous handlers
};

}  // namespace noprop
