#include "noprop/embeddings.h"

#include <cmath>

namespace noprop {

ClassEmbeddingImpl::ClassEmbeddingImpl(const std::string& k, int num_classes, int dim, const torch::Tensor& prototypes)
    : kind(k) {
  torch::Tensor w;
  if (kind == "one-hot") {
    w = torch::eye(num_classes);
  } else if (kind == "learned") {
    w = torch::empty({num_classes, dim});
    if (num_classes <= dim)
      torch::nn::init::orthogonal_(w);  // orthonormal rows
    else
      w.normal_(0.0, 1.0 / std::sqrt(double(dim)));
    learned = true;
  } else if (kind == "prototype") {
    TORCH_CHECK(prototypes.defined() && prototypes.size(0) == num_classes, "prototype embeddings need m images");
    w = prototypes.reshape({num_classes, -1}).clone();
    learned = true;
  } else {
    TORCH_CHECK(false, "unknown embedding '", kind, "'");
  }
  weight = learned ? register_parameter("weight", w) : register_buffer("weight", w);
}

torch::Tensor ClassEmbeddingImpl::kl(const torch::Tensor& y, double ab0) {
  return kl(y, torch::scalar_tensor(ab0, weight.options().requires_grad(false)));
}

torch::Tensor ClassEmbeddingImpl::kl(const torch::Tensor& y, const torch::Tensor& ab0) {
  const double d = double(dim());
  auto sq = forward(y).pow(2).sum(1);
  return (0.5 * (d * (-ab0 - torch::log1p(-ab0)) + ab0 * sq)).mean();
}

torch::Tensor select_prototypes(const torch::Tensor& images, const torch::Tensor& labels, int num_classes,
                                int64_t max_per_class) {
  torch::NoGradGuard no_grad;
  auto flat = images.reshape({images.size(0), -1});
  std::vector<int64_t> chosen;
  for (int c = 0; c < num_classes; ++c) {
    auto idx = (labels == c).nonzero().view(-1);
    TORCH_CHECK(idx.numel() > 0, "class ", c, " has no training image for its prototype");
    if (idx.numel() > max_per_class) idx = idx.slice(0, 0, max_per_class);
    auto x = flat.index_select(0, idx).to(torch::kFloat64);  // per class: never the whole set in float64
    auto dist = torch::cdist(x, x);
    // Median over the *other* images: drop the zero self-distance by sorting it to the front.
    auto sorted = std::get<0>(dist.sort(1));
    auto others = sorted.slice(1, 1);
    torch::Tensor med = others.size(1) > 0 ? std::get<0>(others.median(1)) : torch::zeros({1}, torch::kFloat64);
    chosen.push_back(idx[med.argmin().item<int64_t>()].item<int64_t>());
  }
  return torch::tensor(chosen, torch::kInt64);
}

HeadImpl::HeadImpl(const std::string& k, int dim, int num_classes, double s) : kind(k), sigma(s) {
  TORCH_CHECK(kind == "softmax" || kind == "radial", "unknown head '", kind, "'");
  fc = register_module("fc", torch::nn::Linear(dim, num_classes));
}

torch::Tensor HeadImpl::log_prob(const torch::Tensor& z, const torch::Tensor& embed_weight) {
  auto logits = fc->forward(z);
  if (kind == "softmax") return torch::log_softmax(logits, 1);
  auto y_tilde = torch::softmax(logits, 1).matmul(embed_weight);               // B×d
  auto sq = (y_tilde.unsqueeze(1) - embed_weight.unsqueeze(0)).pow(2).sum(2);  // B×m
  return torch::log_softmax(-sq / (2 * sigma * sigma), 1);
}

}  // namespace noprop
