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
#pragma once

#include <torch/torch.h>

#include <string>

namespace noprop {

struct BlockOptions {
  std::string architecture = "paper";  // paper | seed
  int channels = 1, height = 28, width = 28;
  int embed_dim = 10;     // d, the size of z
  int num_classes = 10;   // m, the size of the logits
  double dropout = 0.2;
  bool label_is_image = false;  // prototype embeddings: z has the image's shape
};

// Conv feature extractor ending in FC 256 → BN; shared by the image path and the
// prototype label path.
torch::nn::Sequential make_conv_path(const BlockOptions& opt);

struct DenoiseBlockImpl : torch::nn::Module {
  explicit DenoiseBlockImpl(const BlockOptions& opt);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& z);

  BlockOptions options;
  torch::nn::Sequential image_path{nullptr};
  torch::nn::Sequential label_in{nullptr};     // FC 256 → BN → ReLU (vector labels)
  torch::nn::Sequential label_res{nullptr};    // the residual branch (vector labels)
  torch::nn::Sequential label_conv{nullptr};   // prototype labels
  torch::nn::Sequential fused{nullptr};
};
TORCH_MODULE(DenoiseBlock);

// Multiply-adds ×2 of one forward pass of one block on one sample (for GFLOP/s figures).
double block_forward_flops(const BlockOptions& opt);

}  // namespace noprop
