// The denoising block û_θt(z_{t−1}, x) of paper Fig. 6 (discrete time). It returns logits over
// the m classes; callers form û = softmax(logits) · W_embed.
//
//  image path  (paper): conv3×3 32 → ReLU → maxpool2 → dropout → conv3×3 64 → ReLU → dropout
//                       → conv3×3 128 → ReLU → maxpool2 → dropout → flatten → FC 256 → BN
//              (seed):  conv3×3 32 → ReLU → maxpool2 → dropout → conv3×3 64 → ReLU → maxpool2
//                       → dropout → flatten → FC 256 → BN   (the PyTorch seed reproduction)
//  label path:  FC 256 → BN → ReLU → [FC 256 → BN → ReLU → FC 256 → BN] + skip
//               (prototype embeddings: the noised label is an image with its own conv path)
//  fused:       concat(512) → FC 256 → BN → ReLU → FC 128 → BN → ReLU → FC m
//
// ContinuousBlock is the continuous-time model û_θ(z_t, x, t) of Fig. 6 (right), shared by
// NoProp-CT and NoProp-FM: the same image path ending in FC 256 → ReLU, no batch norm
// anywhere, a label path FC 256 → ReLU, a time path (sinusoidal embedding 64 → FC 256 → ReLU)
// and concat(768) → FC 256 → ReLU → FC 128 → ReLU → FC m.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "noprop/blocks/block.h"

namespace noprop {

// Conv feature extractor ending in FC 256 → BN (or FC 256 → ReLU without batch norm for the
// continuous-time model); shared by the image path and the prototype label path.
torch::nn::Sequential make_conv_path(const BlockOptions& opt, bool batch_norm = true);
// Runs one of a block's paths: a conv path, the label path or the fused head. With
// opt.fused_kernels, each convolution goes through kernels::conv3x3 and each linear layer through
// kernels::linear (the way opt.conv says), and each ReLU → MaxPool2d → Dropout (or ReLU → Dropout)
// run of modules through one fused kernel instead; the parameters are the same either way.
torch::Tensor path_forward(torch::nn::Sequential& path, const torch::Tensor& x, const BlockOptions& opt);

struct DenoiseBlockImpl : BlockImpl {
  explicit DenoiseBlockImpl(const BlockOptions& opt);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& z) override;
  double forward_flops() const override;

  BlockOptions options;
  torch::nn::Sequential image_path{nullptr};
  torch::nn::Sequential label_in{nullptr};    // FC 256 → BN → ReLU (vector labels)
  torch::nn::Sequential label_res{nullptr};   // the residual branch (vector labels)
  torch::nn::Sequential label_conv{nullptr};  // prototype labels
  torch::nn::Sequential fused{nullptr};
};
TORCH_MODULE(DenoiseBlock);

// Training forward of K blocks of the same options as one computation over their stacked
// weights: the first convolution of the image path takes the K blocks' filters at once, the later
// ones are grouped (K groups), the linear layers batched matrix products and each batch norm one
// over the K blocks' features side by side (its running statistics written back to each block).
// x is the images (B×C×H×W, common to all), z the K blocks' inputs (K×B×d); logits K×B×m, the
// same as each block's forward up to rounding. Dropout draws from LibTorch's default generator.
// T× fewer and T× larger kernels than T forwards: for GPUs, where one block's kernels are
// too small to fill the device.
torch::Tensor stacked_forward(const std::vector<DenoiseBlockImpl*>& blocks, const torch::Tensor& x,
                              const torch::Tensor& z);

// Sinusoidal embedding of t ∈ [0, 1] (shape B), B×dim: sin and cos of 1000·t at dim/2
// frequencies 10000^(−i/(dim/2)), as in transformer position encodings.
torch::Tensor time_embedding(const torch::Tensor& t, int dim = 64);

struct ContinuousBlockImpl : TimeBlockImpl {
  explicit ContinuousBlockImpl(const BlockOptions& opt);
  // The image's contribution to the first fused layer.
  torch::Tensor prepare(const torch::Tensor& x) override;
  torch::Tensor forward_prepared(const torch::Tensor& prepared, const torch::Tensor& z,
                                 const torch::Tensor& t) override;
  double forward_flops() const override;

  BlockOptions options;
  torch::nn::Sequential image_path{nullptr};
  torch::nn::Sequential label_in{nullptr};    // vector labels
  torch::nn::Sequential label_conv{nullptr};  // prototype labels
  torch::nn::Sequential time_in{nullptr};
  torch::nn::Linear fused_in{nullptr};   // on concat(image, label, time)
  torch::nn::Sequential fused{nullptr};  // ReLU → FC 128 → ReLU → FC m
};
TORCH_MODULE(ContinuousBlock);

// Multiply-adds ×2 of one forward pass of one block on one sample (for GFLOP/s figures).
double block_forward_flops(const BlockOptions& opt);
double continuous_block_forward_flops(const BlockOptions& opt);

}  // namespace noprop
