// Helpers shared by the methods: optimizers, gradient clipping, chunked inference, noise, and
// saving modules and optimizers into checkpoint archives.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "noprop/config.h"

namespace noprop {

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const Config& cfg, std::vector<torch::Tensor> params);
// Scales gradients to a total norm ≤ max_norm (none when max_norm ≤ 0) without a host
// synchronisation; returns the norm before scaling (a 0-dim tensor, 0 without gradients).
torch::Tensor clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm);
// The same on the gradients themselves (undefined entries are skipped).
torch::Tensor clip_grads(const std::vector<torch::Tensor>& grads, double max_norm);
// f(begin, end) over row ranges of at most kInferenceChunk rows on the CPU (one range on other
// devices), concatenated: inference of big batches in cache-sized pieces.
constexpr int64_t kInferenceChunk = 256;
torch::Tensor in_chunks(int64_t rows, const torch::Device& device,
                        const std::function<torch::Tensor(int64_t, int64_t)>& f);
// Standard normal noise of `like`'s shape from `gen` (on `like`'s device).
torch::Tensor normal_like(const torch::Tensor& like, at::Generator& gen);
// Training noise, N(0, 1) or U[0, 1), from the default CPU generator whatever the device, then
// moved to `like`'s device: a seed means the same draws on every device, so that a CUDA step can
// be checked against the CPU's (tests/test_gpu.cpp); on the CPU these are randn/rand as before.
torch::Tensor cpu_randn(at::IntArrayRef sizes, const torch::Tensor& like);
torch::Tensor cpu_rand(at::IntArrayRef sizes, const torch::Tensor& like);
void save_module(torch::serialize::OutputArchive& ar, const std::string& key, torch::nn::Module& module);
// Loads parameters and buffers in place; a stored tensor of another shape is an error (LibTorch
// itself would silently resize the parameter).
void load_module(torch::serialize::InputArchive& ar, const std::string& key, torch::nn::Module& module);
void save_optimizer(torch::serialize::OutputArchive& ar, const std::string& key, torch::optim::Optimizer& opt);
void load_optimizer(torch::serialize::InputArchive& ar, const std::string& key, torch::optim::Optimizer& opt);

}  // namespace noprop
