#include "noprop/runtime.h"

#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iomanip>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>

#include "noprop/util.h"

namespace noprop {

namespace {
// The path of the first mapped file whose line in /proc/self/maps contains `part`, or "".
std::string mapped_file_containing(const std::string& part) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line))
    if (line.find(part) != std::string::npos) return line.substr(std::min(line.find('/'), line.size()));
  return "";
}

// The OpenBLAS kernels for this CPU (runtime.h): AVX-512 ones where it has the subsets they use
// (1.1-1.2× faster NoProp-DT steps than the AVX2 ones, docs/speed.md), else AVX2 ones, else none.
const char* openblas_coretype() {
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
  return nullptr;
}
}  // namespace

void init_process(int argc, char** argv) {
  (void)argc;
  const char* coretype = openblas_coretype();
  if (!std::getenv("OPENBLAS_CORETYPE") && !std::getenv("NOPROP_NO_REEXEC") && coretype &&
      // Debian's LibTorch runs on the system OpenBLAS; the pip package's on its own MKL, where
      // OPENBLAS_CORETYPE means nothing.
      !mapped_file_containing("openblas").empty()) {
    setenv("OPENBLAS_CORETYPE", coretype, 1);
    setenv("NOPROP_NO_REEXEC", "1", 1);  // never loop, whatever happens
    execv("/proc/self/exe", argv);       // returns only on failure: carry on as we are
  }
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  mallopt(M_TOP_PAD, 64 << 20);
  // Denormal floats cost ~100× per operation on x86. Confident softmax outputs and decaying
  // optimizer moments reach them late in training, so a run slows down epoch after epoch.
  // Flush them to zero, here, before any worker thread exists (threads inherit the mode).
  if (!std::getenv("NOPROP_KEEP_DENORMALS")) at::globalContext().setFlushDenormal(true);
}

namespace {
// Debian's LibTorch links libblas.so.3 and libopenblas.so.0; when the latter is OpenBLAS's
// pthread build, its thread pool fights LibTorch's OpenMP threads (measured: a 2-thread step
// 0.80 s instead of 0.36 s, and OPENBLAS_NUM_THREADS=1 does not help). Said once, on stderr.
void warn_about_pthread_openblas() {
  const std::string path = mapped_file_containing("openblas-pthread/");
  if (path.empty()) return;
  std::cerr << "noprop: warning: OpenBLAS's pthread build is loaded (" << path
            << ") beside LibTorch's OpenMP threads, which makes multi-threaded steps 2x slower; "
               "run scripts/setup.sh (it points libopenblas.so.0 at the openblas-openmp build)\n";
}
}  // namespace

namespace {
// A field of /proc/self/status ("VmRSS", "VmHWM") in MiB, or -1.
double proc_status_mb(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(field + ":", 0) == 0) return std::stod(line.substr(field.size() + 1)) / 1024.0;
  return -1;
}
}  // namespace

double rss_mb() { return proc_status_mb("VmRSS"); }
double peak_rss_since_restart_mb() { return proc_status_mb("VmHWM"); }

bool restart_peak_rss() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
  out.flush();
  return bool(out);
}

double malloc_in_use_mb() {
  const auto m = mallinfo2();
  return double(m.uordblks + m.hblkhd) / (1024.0 * 1024.0);
}

void release_free_memory() { malloc_trim(0); }

MemoryAccount::MemoryAccount() : before_mb_(peak_rss_since_restart_mb()) {
  separable_ = restart_peak_rss();
  current_ = "start-up";
  current_start_mb_ = rss_mb();
}

void MemoryAccount::close() {
  if (current_.empty()) return;
  Phase& p = phases_[current_];
  if (p.times++ == 0) order_.push_back(current_);
  const double peak = peak_rss_since_restart_mb();
  if (p.times == 1 || peak > p.peak_mb) {
    p.peak_mb = peak, p.start_mb = current_start_mb_, p.end_mb = rss_mb();
    p.in_use_mb = malloc_in_use_mb();
  }
}

void MemoryAccount::phase(const std::string& name) {
  close();
  if (separable_) separable_ = restart_peak_rss();
  current_ = name;
  current_start_mb_ = rss_mb();
}

void MemoryAccount::item(const std::string& name, double bytes) {
  items_.emplace_back(name, bytes / (1024.0 * 1024.0));
}

double MemoryAccount::peak_mb() {
  double peak = std::max(before_mb_, peak_rss_since_restart_mb());
  for (const auto& [name, p] : phases_) peak = std::max(peak, p.peak_mb);
  return peak;
}

nlohmann::json MemoryAccount::json() {
  nlohmann::json phases = nlohmann::json::array(), items = nlohmann::json::object();
  const double peak = peak_mb();
  auto round1 = [](double v) { return std::round(v * 10) / 10; };
  close();  // the phase now running ends here
  current_.clear();
  for (const auto& name : order_) {
    const Phase& p = phases_[name];
    phases.push_back({{"phase", name},
                      {"peak_mb", round1(p.peak_mb)},
                      {"rss_at_start_mb", round1(p.start_mb)},
                      {"rss_at_end_mb", round1(p.end_mb)},
                      {"allocated_at_end_mb", round1(p.in_use_mb)}});
  }
  for (const auto& [name, mb] : items_) items[name] = round1(mb);
  return {{"peak_rss_mb", round1(peak)}, {"phases_separable", separable_}, {"phases", phases}, {"sizes_mb", items}};
}

std::string MemoryAccount::table() {
  const auto j = json();
  std::ostringstream out;
  out << std::fixed << std::setprecision(0);
  out << "memory (MiB): whole-run peak " << j["peak_rss_mb"].get<double>()
      << (separable_ ? "" : " (this kernel cannot restart its peak count: phase peaks are cumulative)") << "\n";
  out << "  phase                 peak  at start  at end  allocated at end\n";
  for (const auto& p : j["phases"])
    out << "  " << std::left << std::setw(20) << p["phase"].get<std::string>() << std::right << std::setw(6)
        << p["peak_mb"].get<double>() << std::setw(10) << p["rss_at_start_mb"].get<double>() << std::setw(8)
        << p["rss_at_end_mb"].get<double>() << std::setw(18) << p["allocated_at_end_mb"].get<double>() << "\n";
  out << "  sizes:";
  for (const auto& [name, mb] : items_) out << "  " << name << " " << std::setprecision(1) << mb;
  out << "\n";
  return out.str();
}

int configure_threads(int requested) {
  int n = requested > 0 ? requested : int(std::max(1u, std::thread::hardware_concurrency()));
  static std::once_flag warned;
  if (n > 1) std::call_once(warned, warn_about_pthread_openblas);
  torch::set_num_threads(n);
  return torch::get_num_threads();
}

torch::Device select_device(const std::string& name) {
  if (name == "cpu") return torch::kCPU;
  if (name == "cuda" || name.rfind("cuda:", 0) == 0) {
    if (!torch::cuda::is_available())
      throw Error("device '" + name + "': CUDA is not available (this LibTorch " +
                  (torch::cuda::device_count() == 0 ? "sees no GPU" : "cannot use the GPU") + ")");
    torch::Device dev(name);
    if (dev.has_index() && dev.index() >= int(torch::cuda::device_count()))
      throw Error("device '" + name + "': only " + std::to_string(torch::cuda::device_count()) + " GPU(s)");
    return dev;
  }
  throw Error("device '" + name + "': expected cpu, cuda or cuda:N");
}

namespace {
volatile std::sig_atomic_t g_stop_signal = 0;

void on_stop_signal(int sig) {
  g_stop_signal = sig;
  std::signal(sig, SIG_DFL);  // a second signal ends the process
}
}  // namespace

StopSignals::StopSignals() {
  g_stop_signal = 0;
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &old_[0]);
  sigaction(SIGTERM, &sa, &old_[1]);
}

StopSignals::~StopSignals() {
  sigaction(SIGINT, &old_[0], nullptr);
  sigaction(SIGTERM, &old_[1], nullptr);
  g_stop_signal = 0;
}

int StopSignals::pending() { return g_stop_signal; }

std::string torch_version() {
  return std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
         std::to_string(TORCH_VERSION_PATCH);
}

}  // namespace noprop
