// Process-wide set-up: allocator tuning, thread count, device choice.
#pragma once

#include <torch/torch.h>

#include <signal.h>

#include <csignal>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace noprop {

// Call first thing in main(). Two start-up fixes, both measured on the 2-core reference machine:
// - OpenBLAS picks its generic "Prescott" kernels on CPUs it does not recognise (~40 GFLOP/s
//   sgemm against ~135 with Haswell kernels). It reads OPENBLAS_CORETYPE only when the
//   library loads, so when the variable is unset the program sets it to the kernels the CPU
//   can run (SkylakeX with AVX-512 F/BW/DQ/VL, else Haswell with AVX2 and FMA) and
//   re-executes itself once. A value already set is left alone.
// - glibc malloc's dynamic mmap threshold makes the large activation buffers page-fault on
//   every allocation depending on allocation history alone (2-3× slower steps): pinned here.
void init_process(int argc, char** argv);

// Sets LibTorch's intra-op threads (0: all cores) and returns the number in use.
int configure_threads(int requested);

// "cpu", "cuda" or "cuda:N"; an Error when CUDA is asked for but not available.
torch::Device select_device(const std::string& name);

std::string torch_version();

// The resident set now (VmRSS) and its peak since the start or the last restart (VmHWM), in MiB;
// -1 where /proc does not say.
double rss_mb();
double peak_rss_since_restart_mb();
// Restarts the kernel's peak count from the current resident set (Linux ≥ 4.0); false where the
// kernel refuses, and then peaks cannot be told apart by phase.
bool restart_peak_rss();
// Memory in live malloc allocations (tensors on the CPU among them), in MiB: the resident set
// less this is the runtime's code and data plus what malloc keeps of freed memory.
double malloc_in_use_mb();
// Gives the freed memory that malloc keeps back to the system. The pinned thresholds of
// init_process() keep freed pages for the next step's buffers, which is what makes steps fast;
// between phases (after an epoch's training, an evaluation, a checkpoint) nothing reuses them
// soon, and holding them would stack one phase's leftovers under the next one's peak.
void release_free_memory();

// Where a run's memory goes: the peak resident set of each phase of the run (the kernel's peak
// count restarted at every phase boundary), with the sizes of what is known to live through it
// (data sets, parameters, gradients, optimizer state). Phases that recur (every epoch's
// training, evaluation, checkpoint) keep their highest peak.
class MemoryAccount {
 public:
  MemoryAccount();
  // Ends the current phase and begins `name`.
  void phase(const std::string& name);
  // A known size, in bytes.
  void item(const std::string& name, double bytes);
  // The highest resident set of the whole run so far, in MiB.
  double peak_mb();
  // The account; ends the phase then running (call at the end of the run).
  nlohmann::json json();
  // The same, one line per phase and the sizes on one line, for a terminal.
  std::string table();

 private:
  struct Phase {
    double start_mb = 0, peak_mb = 0, end_mb = 0, in_use_mb = 0;
    int times = 0;
  };
  void close();
  bool separable_;
  std::string current_;
  double current_start_mb_ = 0, before_mb_ = 0;
  std::vector<std::string> order_;
  std::map<std::string, Phase> phases_;
  std::vector<std::pair<std::string, double>> items_;
};

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
