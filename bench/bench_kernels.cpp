// Micro-benchmarks (Google Benchmark) of the fused kernels against the LibTorch ops they
// replace, on the seed architecture's activation shapes (batch 128), forward and backward.
//   build/noprop_bench_kernels [--benchmark_format=json] [--threads=N]
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <string>

#include "noprop/kernels.h"
#include "noprop/runtime.h"

namespace {

enum Mode { kTorch, kFused, kBlocked };  // LibTorch's ops; the fused kernels, on plain or blocked layouts

// Conv outputs of the seed architecture: after conv1 (32×28×28) and conv2 (64×14×14).
torch::Tensor input(const benchmark::State& state, Mode mode) {
  auto x = torch::randn({128, state.range(0), state.range(1), state.range(1)});
  return mode == kBlocked ? noprop::kernels::to_blocked(x) : x;
}

torch::Tensor reference_pool(const torch::Tensor& x, double p) {
  return torch::dropout(torch::max_pool2d(torch::relu(x), 2), p, true);
}

void BM_PoolForward(benchmark::State& state, Mode mode) {
  torch::NoGradGuard no_grad;
  auto x = input(state, mode);
  for (auto _ : state) {
    auto y = mode != kTorch ? noprop::kernels::relu_pool_dropout(x, 0.2) : reference_pool(x, 0.2);
    benchmark::DoNotOptimize(y.data_ptr());
  }
  state.SetBytesProcessed(state.iterations() * x.numel() * 4);
}

void BM_PoolForwardBackward(benchmark::State& state, Mode mode) {
  auto x = input(state, mode).requires_grad_(true);
  auto sizes = x.sizes().vec();
  sizes[2] /= 2, sizes[3] /= 2;
  auto g = torch::randn(sizes);
  for (auto _ : state) {
    auto y = mode != kTorch ? noprop::kernels::relu_pool_dropout(x, 0.2) : reference_pool(x, 0.2);
    y.backward(g);
    benchmark::DoNotOptimize(x.grad().data_ptr());
    x.mutable_grad() = torch::Tensor();
  }
  state.SetBytesProcessed(state.iterations() * x.numel() * 4);
}

void BM_ReluDropoutForwardBackward(benchmark::State& state, Mode mode) {
  auto x = input(state, mode).requires_grad_(true);
  auto g = torch::randn_like(x);
  for (auto _ : state) {
    auto y = mode != kTorch ? noprop::kernels::relu_dropout(x, 0.2) : torch::dropout(torch::relu(x), 0.2, true);
    y.backward(g);
    benchmark::DoNotOptimize(x.grad().data_ptr());
    x.mutable_grad() = torch::Tensor();
  }
  state.SetBytesProcessed(state.iterations() * x.numel() * 4);
}

}  // namespace

BENCHMARK_CAPTURE(BM_PoolForward, fused, kFused)->Args({32, 28})->Args({64, 14})->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_PoolForward, blocked, kBlocked)->Args({32, 28})->Args({64, 14})->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_PoolForward, torch, kTorch)->Args({32, 28})->Args({64, 14})->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_PoolForwardBackward, fused, kFused)->Args({32, 28})->Args({64, 14})->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_PoolForwardBackward, blocked, kBlocked)
    ->Args({32, 28})
    ->Args({64, 14})
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_PoolForwardBackward, torch, kTorch)->Args({32, 28})->Args({64, 14})->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_ReluDropoutForwardBackward, fused, kFused)->Args({64, 14})->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_ReluDropoutForwardBackward, blocked, kBlocked)->Args({64, 14})->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_ReluDropoutForwardBackward, torch, kTorch)->Args({64, 14})->Unit(benchmark::kMillisecond);

int main(int argc, char** argv) {
  noprop::init_process(argc, argv);
  int threads = 0;
  // --threads=N is ours; the rest goes to Google Benchmark.
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--threads=", 0) == 0)
      threads = std::stoi(a.substr(10));
    else
      rest.push_back(argv[i]);
  }
  int n = int(rest.size());
  noprop::configure_threads(threads);
  benchmark::Initialize(&n, rest.data());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
