// CUDA: run only where LibTorch sees a GPU (scripts/gpu-check.sh builds against a CUDA LibTorch
// and runs them); skipped elsewhere.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "noprop/compat.h"
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

// Without dropout and with TF32 off, two training steps of every method (and of NoProp-DT with
// stacked_blocks: grouped convolutions, batched products) take the same losses on
// CUDA as on the CPU (the noise is drawn on the CPU for both), and the parameters after them
// agree: AdamW's first steps are ±lr per element, so an element whose gradient is ~0 may take
// the other sign on either device; a few such elements are allowed, no more.
TEST(Gpu, StepsMatchTheCpu) {
  REQUIRE_CUDA();
  compat::NoTf32 no_tf32;
  for (std::string method : {"dt", "dt-stacked", "backprop", "ct", "fm"}) {
    std::vector<std::vector<torch::Tensor>> params, losses;
    for (torch::Device device : {torch::Device(torch::kCPU), torch::Device(torch::kCUDA)}) {
      Config c = test::tiny_method_config(method.substr(0, method.find('-')));
      c.dropout = 0.0;
      if (method == "dt-stacked") c.shared_update = "per_batch", c.stacked_blocks = true;
      torch::manual_seed(3);
      auto m = make_method(c, test::tiny_info(), nullptr, device);
      torch::manual_seed(4);
      auto x = torch::randn({6, 1, 8, 8}).to(device);
      auto y = torch::tensor({0, 1, 2, 3, 0, 1}, torch::kInt64).to(device);
      losses.emplace_back();
      for (int step = 0; step < 2; ++step)
        for (int pass = 0; pass < m->passes_per_epoch(); ++pass)
          for (const auto& l : m->train_step(x, y, pass)) {
            ASSERT_TRUE(l.defined()) << method;
            losses.back().push_back(l.detach().cpu());
          }
      params.emplace_back();
      for (const auto& p : m->parameters()) params.back().push_back(p.detach().cpu());
    }
    ASSERT_EQ(losses[0].size(), losses[1].size()) << method;
    for (size_t i = 0; i < losses[0].size(); ++i)
      EXPECT_TRUE(torch::allclose(losses[0][i], losses[1][i], 1e-4, 1e-5))
          << method << " loss " << i << ": " << losses[0][i] << " on the CPU, " << losses[1][i] << " on CUDA";
    int64_t off = 0, total = 0;
    for (size_t i = 0; i < params[0].size(); ++i) {
      off += (params[0][i] - params[1][i]).abs().gt(1e-4).sum().item<int64_t>();
      total += params[0][i].numel();
    }
    EXPECT_LE(off, total / 1000) << method << ": " << off << " of " << total << " parameters differ by more than 1e-4";
  }
}

}  // namespace
}  // namespace noprop
