// Class embeddings W_embed ∈ R^{m×d} (§2.2.1) and the output heads p̂_θout(y | z) (Eq. 14-16).
#pragma once

#include <torch/torch.h>

#include <string>

namespace noprop {

// one-hot: W = I (d = m), fixed. learned: d = k, orthogonal init when m ≤ d, random otherwise.
// prototype: d = image size, row y initialised to the training image of class y with the
// smallest median distance to the other images of that class; learned thereafter.
struct ClassEmbeddingImpl : torch::nn::Module {
  ClassEmbeddingImpl(const std::string& kind, int num_classes, int dim, const torch::Tensor& prototypes = {});

  torch::Tensor forward(const torch::Tensor& y) { return weight.index_select(0, y); }  // u_y
  int dim() const { return int(weight.size(1)); }

  // KL(q(z_0|y) ‖ N(0, I)) = ½ [d(−ᾱ_0 − ln(1 − ᾱ_0)) + ᾱ_0 ‖u_y‖²], averaged over the batch.
  torch::Tensor kl(const torch::Tensor& y, double alpha_bar0);
  torch::Tensor kl(const torch::Tensor& y, const torch::Tensor& alpha_bar0);  // NoProp-CT: ᾱ_0 learned

  std::string kind;
  bool learned = false;
  torch::Tensor weight;
};
TORCH_MODULE(ClassEmbedding);

// For each class, the row index (into `images`) of the image with the smallest median
// Euclidean distance to the other images of its class; at most `max_per_class` images of a
// class are compared (the first ones), which bounds the m·n² distance matrix.
torch::Tensor select_prototypes(const torch::Tensor& images, const torch::Tensor& labels, int num_classes,
                                int64_t max_per_class = 4000);

// softmax: p̂(y|z) = softmax(f(z)). radial: ỹ = softmax(f(z)) W_embed,
// p̂(y|z) ∝ exp(−‖ỹ − u_y‖² / (2σ²)). f is one linear layer d → m.
struct HeadImpl : torch::nn::Module {
  HeadImpl(const std::string& kind, int dim, int num_classes, double sigma);
  // log p̂(· | z), B×m.
  torch::Tensor log_prob(const torch::Tensor& z, const torch::Tensor& embed_weight);

  std::string kind;
  double sigma;
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(Head);

}  // namespace noprop
