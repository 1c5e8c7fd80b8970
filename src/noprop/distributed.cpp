#include "noprop/distributed.h"

#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "noprop/util.h"

extern char** environ;

namespace noprop {
namespace {

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

int env_int(const char* name, int lo, int hi, const std::string& fallback) {
  const std::string text = env_or(name, fallback);
  if (text.empty()) throw Error(std::string("distributed: ") + name + " is not set");
  char* end = nullptr;
  const long v = std::strtol(text.c_str(), &end, 10);
  if (*end || v < lo || v > hi)
    throw Error(std::string("distributed: ") + name + "='" + text + "' is not an integer in " + std::to_string(lo) +
                ".." + std::to_string(hi));
  return int(v);
}

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

}  // namespace

struct Distributed::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;

  // Runs a collective; any failure (a peer gone, a timeout) becomes one Error line.
  template <class F>
  void run(int rank, const char* what, F&& f) {
    try {
      f();
    } catch (const std::exception& e) {
      throw Error("distributed: rank " + std::to_string(rank) + ": " + what +
                  " failed (another worker stopped or timed out): " + first_line(e.what()));
    }
  }
};

Distributed::Distributed(int rank, int world, std::unique_ptr<Impl> impl)
    : rank_(rank), world_(world), impl_(std::move(impl)) {}
Distributed::~Distributed() = default;

std::unique_ptr<Distributed> Distributed::from_environment(std::chrono::seconds timeout) {
  const int world = env_int("WORLD_SIZE", 1, 65536, "1");
  if (world == 1) return nullptr;
  const int rank = env_int("RANK", 0, world - 1, "");
  const std::string addr = env_or("MASTER_ADDR", "127.0.0.1");
  const int port = env_int("MASTER_PORT", 1, 65535, "29500");
  auto impl = std::make_unique<Impl>();
  try {
    c10d::TCPStoreOptions so;
    so.port = uint16_t(port);
    so.isServer = rank == 0;
    so.numWorkers = world;
    so.waitWorkers = true;
    so.timeout = timeout;
    impl->store = c10::make_intrusive<c10d::TCPStore>(addr, so);
    auto opts = c10d::ProcessGroupGloo::Options::create();
    opts->timeout = timeout;
    // GLOO_SOCKET_IFNAME picks the interface as in PyTorch; a loopback rendezvous stays on loopback.
    if (const std::string ifname = env_or("GLOO_SOCKET_IFNAME", ""); !ifname.empty())
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    else if (addr == "localhost" || addr.rfind("127.", 0) == 0)
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    else
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    impl->group = c10::make_intrusive<c10d::ProcessGroupGloo>(impl->store, rank, world, opts);
  } catch (const std::exception& e) {
    throw Error("distributed: rank " + std::to_string(rank) + " of " + std::to_string(world) + ": rendezvous at " +
                addr + ":" + std::to_string(port) + " failed: " + first_line(e.what()));
  }
  auto d = std::unique_ptr<Distributed>(new Distributed(rank, world, std::move(impl)));
  d->local_rank_ = env_int("LOCAL_RANK", 0, 65535, std::to_string(rank));
  return d;
}

void Distributed::allreduce_sum(const std::vector<torch::Tensor>& tensors) {
  if (tensors.empty()) return;
  std::vector<torch::Tensor> flat;
  for (const auto& t : tensors) flat.push_back(t.detach().reshape({-1}).to(torch::kCPU, torch::kFloat32));
  std::vector<at::Tensor> buf{torch::cat(flat)};
  impl_->run(rank_, "all-reduce", [&] { impl_->group->allreduce(buf)->wait(); });
  int64_t at = 0;
  for (const auto& t : tensors) {
    const int64_t n = t.numel();
    torch::NoGradGuard g;
    t.copy_(buf[0].slice(0, at, at + n).view(t.sizes()));
    at += n;
  }
}

int64_t Distributed::max(int64_t value) {
  std::vector<at::Tensor> buf{torch::tensor({value}, torch::kInt64)};
  c10d::AllreduceOptions o;
  o.reduceOp = c10d::ReduceOp::MAX;
  impl_->run(rank_, "all-reduce", [&] { impl_->group->allreduce(buf, o)->wait(); });
  return buf[0].item<int64_t>();
}

void Distributed::broadcast_bytes(std::string& bytes, int root) {
  c10d::BroadcastOptions o;
  o.rootRank = root;
  std::vector<at::Tensor> size{torch::tensor({int64_t(bytes.size())}, torch::kInt64)};
  impl_->run(rank_, "broadcast", [&] { impl_->group->broadcast(size, o)->wait(); });
  const int64_t n = size[0].item<int64_t>();
  std::vector<at::Tensor> data{torch::empty({n}, torch::kUInt8)};
  if (rank_ == root) std::memcpy(data[0].data_ptr(), bytes.data(), bytes.size());
  impl_->run(rank_, "broadcast", [&] { impl_->group->broadcast(data, o)->wait(); });
  if (rank_ != root) bytes.assign(static_cast<const char*>(data[0].data_ptr()), std::size_t(n));
}

// ---------------------------------------------------------------------------------------------
// The local launcher.

namespace {

volatile sig_atomic_t forwarded_signal = 0;
void remember_signal(int sig) { forwarded_signal = sig; }

// A port the kernel just handed out on loopback: free now, very likely still free when rank 0
// binds it a moment later.
int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    if (fd >= 0) ::close(fd);
    throw Error(std::string("--workers: no free port on 127.0.0.1: ") + std::strerror(errno));
  }
  const int port = ntohs(a.sin_port);
  ::close(fd);
  return port;
}

}  // namespace

int launch_workers(int workers, int threads, const std::vector<std::string>& args) {
  const std::string port = std::to_string(free_port());
  std::vector<pid_t> pids;
  // Ctrl-C reaches the workers through the terminal; a SIGTERM sent to the launcher alone is
  // passed on. Either way the launcher waits for them.
  struct sigaction sa {
  }, old_int{}, old_term{};
  sa.sa_handler = remember_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  for (int r = 0; r < workers; ++r) {
    std::vector<std::string> env;
    for (char** e = environ; *e; ++e) {
      std::string kv = *e;
      const std::string key = kv.substr(0, kv.find('='));
      if (key != "RANK" && key != "WORLD_SIZE" && key != "LOCAL_RANK" && key != "LOCAL_WORLD_SIZE" &&
          key != "MASTER_ADDR" && key != "MASTER_PORT")
        env.push_back(kv);
    }
    for (const auto& kv :
         {"RANK=" + std::to_string(r), "LOCAL_RANK=" + std::to_string(r), "WORLD_SIZE=" + std::to_string(workers),
          "LOCAL_WORLD_SIZE=" + std::to_string(workers), std::string("MASTER_ADDR=127.0.0.1"), "MASTER_PORT=" + port})
      env.push_back(kv);
    std::vector<std::string> argv_s{"/proc/self/exe"};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    argv_s.insert(argv_s.end(), {"--threads", std::to_string(threads)});
    std::vector<char*> argv, envp;
    for (auto& s : argv_s) argv.push_back(s.data());
    argv.push_back(nullptr);
    for (auto& s : env) envp.push_back(s.data());
    envp.push_back(nullptr);
    pid_t pid = 0;
    if (int rc = posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv.data(), envp.data()); rc != 0) {
      for (pid_t p : pids) ::kill(p, SIGTERM);
      throw Error(std::string("--workers: cannot start worker: ") + std::strerror(rc));
    }
    pids.push_back(pid);
  }

  int result = 0, running = workers;
  bool stopping = false;
  auto deadline = std::chrono::steady_clock::now();
  while (running > 0) {
    if (forwarded_signal && !stopping) {
      for (pid_t p : pids)
        if (p > 0) ::kill(p, forwarded_signal);
      forwarded_signal = 0;
    }
    int status = 0;
    pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid <= 0) {
      if (stopping && std::chrono::steady_clock::now() > deadline)
        for (pid_t p : pids)
          if (p > 0) ::kill(p, SIGKILL);
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      continue;
    }
    int r = 0;
    while (r < workers && pids[r] != pid) ++r;
    if (r == workers) continue;
    pids[r] = -1;
    --running;
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (code != 0 && result == 0) {
      result = code;
      // An interrupted worker means all were interrupted: the lead is saving the checkpoint,
      // and a second signal would cut that short.
      const bool interrupted = code == 128 + SIGINT || code == 128 + SIGTERM;
      if (running > 0 && !interrupted) {
        std::fprintf(stderr, "noprop: worker %d exited with code %d; stopping the other workers\n", r, code);
        for (pid_t p : pids)
          if (p > 0) ::kill(p, SIGTERM);
        stopping = true;
        deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      }
    }
  }
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  return result;
}

}  // namespace noprop
