// What the networks hold: the interfaces of a denoising block, and the options every block is
// built from. The methods, the trainer and the benchmark see blocks only through these, so a new
// backbone (a ResNet or transformer block) is one file implementing them plus one line in
// blocks/registry.cpp (or a register_block call); config key `architecture` names it.
//
//  BlockImpl      discrete time (NoProp-DT, back-prop): logits over the m classes from the image
//                 x and the noised label z_{t−1}; callers form û = softmax(logits) · W_embed.
//  TimeBlockImpl  continuous time (NoProp-CT, -FM): the same from (x, z_t, t), split into the
//                 part that depends on x alone (prepare, computed once per image at inference)
//                 and the rest.
// Both report the FLOPs of one forward pass (for the benchmark's GFLOP/s). Parameters are the
// Module's own: each block is one parameter group of its method's optimizer. A block may run a
// fused CPU fast path (BlockOptions::fused_kernels, kernels.h).
#pragma once

#include <torch/torch.h>

#include <string>

#include "noprop/kernels.h"

namespace noprop {

struct BlockOptions {
  std::string architecture = "paper";  // the registered block: paper | seed | ...
  int channels = 1, height = 28, width = 28;
  int embed_dim = 10;    // d, the size of z
  int num_classes = 10;  // m, the size of the logits
  double dropout = 0.2;
  bool label_is_image = false;  // prototype embeddings: z has the image's shape
  // CPU float32 fast paths (kernels.h) where the block has them; false: LibTorch's separate
  // ops, the reference.
  bool fused_kernels = true;
  // With fused_kernels: how the image path's convolutions and its flattened-features layer run
  // (LibTorch's ops, bf16 operands or fp32 Winograd through oneDNN; kernels::conv3x3, kernels::linear);
  // the other linear layers run in fp32, through oneDNN unless this says torch.
  kernels::ConvPath conv = kernels::ConvPath::torch;
};

struct BlockImpl : torch::nn::Module {
  virtual torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& z) = 0;
  // Multiply-adds ×2 of one forward pass on one sample.
  virtual double forward_flops() const = 0;
};

struct TimeBlockImpl : torch::nn::Module {
  // Logits, B×m; t has shape B, or 1 (the same time for every sample).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& z, const torch::Tensor& t) {
    return forward_prepared(prepare(x), z, t);
  }
  // What depends on the image alone; inference computes it once per image, not once per step.
  virtual torch::Tensor prepare(const torch::Tensor& x) = 0;
  virtual torch::Tensor forward_prepared(const torch::Tensor& prepared, const torch::Tensor& z,
                                         const torch::Tensor& t) = 0;
  virtual double forward_flops() const = 0;
};

}  // namespace noprop
