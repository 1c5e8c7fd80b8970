// CUDA: run only where LibTorch sees a GPU (scripts/gpu-check.sh builds against a CUDA LibTorch
// and runs them); skipped elsewhere.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "noprop/kernels.h"
#include "noprop/methods/method.h"
#include "test_util.h"

namespace noprop {
namespace {

#define REQUIRE_CUDA() \
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device"

// Off the CPU the kernels hand over to LibTorch's ops.
TEST(Gpu, KernelsFallBackToLibTorch) {
  REQUIRE_CUDA();
  auto x = torch::randn({4, 3, 8, 8}, torch::kCUDA);
  EXPECT_FALSE(kernels::supported(x));
  EXPECT_TRUE(torch::allclose(kernels::relu_pool_dropout(x, 0.0), torch::max_pool2d(torch::relu(x), 2)));
  EXPECT_TRUE(torch::allclose(kernels::relu_dropout(x, 0.0), torch::relu(x)));
}

// Without dropout, one training step of every method takes the same step on CUDA as on the CPU
// (the noise is drawn on the CPU for both).
TEST(Gpu, StepsMatchTheCpu) {
  REQUIRE_CUDA();
  for (std::string method : {"dt", "backprop", "ct", "fm"}) {
    std::vector<std::vector<torch::Tensor>> params;
    for (torch::Device device : {torch::Device(torch::kCPU), torch::Device(torch::kCUDA)}) {
      Config c = test::tiny_method_config(method);
      c.dropout = 0.0;
      torch::manual_seed(3);
      auto m = make_method(c, test::tiny_info(), nullptr, device);
      torch::manual_seed(4);
      auto x = torch::randn({6, 1, 8, 8}).to(device);
      auto y = torch::tensor({0, 1, 2, 3, 0, 1}, torch::kInt64).to(device);
      auto losses = m->train_step(x, y, 0);
      ASSERT_TRUE(losses.back().defined()) << method;
      params.emplace_back();
      for (const auto& p : m->parameters()) params.back().push_back(p.detach().cpu());
    }
    for (size_t i = 0; i < params[0].size(); ++i)
      EXPECT_TRUE(torch::allclose(params[0][i], params[1][i], 1e-3, 1e-4)) << method << " parameter " << i;
  }
}

}  // namespace
}  // namespace noprop
