#include "noprop/blocks/conv.h"

#include "noprop/blocks/registry.h"

#include <cmath>
#include <memory>

#include "noprop/kernels.h"

namespace noprop {
namespace nn = torch::nn;

namespace {
constexpr int kFeatures = 256;  // width of the image, label and fused paths (Fig. 6)
constexpr int kTimeDim = 64;    // sinusoidal time embedding (continuous-time model)

nn::Conv2d conv3x3(int in, int out) { return nn::Conv2d(nn::Conv2dOptions(in, out, 3).padding(1)); }
nn::MaxPool2d pool2() { return nn::MaxPool2d(nn::MaxPool2dOptions(2)); }

int conv_out_channels(const BlockOptions& opt) { return opt.architecture == "seed" ? 64 : 128; }

// The options of the label paths and the fused head: their linear layers stay fp32 whatever the
// convolutions' precision, through oneDNN where the convolutions go through it (kernels::linear).
BlockOptions fp32_options(BlockOptions opt) {
  if (opt.conv == kernels::ConvPath::bf16) opt.conv = kernels::ConvPath::winograd;
  return opt;
}
}  // namespace

nn::Sequential make_conv_path(const BlockOptions& opt, bool batch_norm) {
  TORCH_CHECK(opt.height % 4 == 0 && opt.width % 4 == 0, "image size must be a multiple of 4");
  const double p = opt.dropout;
  nn::Sequential s;
  s->push_back(conv3x3(opt.channels, 32));
  s->push_back(nn::ReLU(nn::ReLUOptions(true)));
  s->push_back(pool2());
  s->push_back(nn::Dropout(p));
  s->push_back(conv3x3(32, 64));
  s->push_back(nn::ReLU(nn::ReLUOptions(true)));
  if (opt.architecture == "seed") {
    s->push_back(pool2());
    s->push_back(nn::Dropout(p));
  } else {
    s->push_back(nn::Dropout(p));
    s->push_back(conv3x3(64, 128));
    s->push_back(nn::ReLU(nn::ReLUOptions(true)));
    s->push_back(pool2());
    s->push_back(nn::Dropout(p));
  }
  s->push_back(nn::Flatten());
  const int flat = conv_out_channels(opt) * (opt.height / 4) * (opt.width / 4);
  s->push_back(nn::Linear(flat, kFeatures));
  if (batch_norm)
    s->push_back(nn::BatchNorm1d(kFeatures));
  else
    s->push_back(nn::ReLU(nn::ReLUOptions(true)));
  return s;
}

torch::Tensor path_forward(nn::Sequential& path, const torch::Tensor& x, const BlockOptions& opt) {
  if (!opt.fused_kernels) return path->forward(x);
  const size_t n = path->size();
  auto is = [&](size_t i, auto* type) {
    using M = std::remove_pointer_t<decltype(type)>;
    return i < n && (path->begin() + i)->ptr()->as<M>() != nullptr;
  };
  auto dropout_p = [&](size_t i) {
    const auto& d = *path->ptr<nn::DropoutImpl>(i);
    return d.is_training() ? d.options.p() : 0.0;
  };
  const nn::ReLUImpl* relu = nullptr;
  const nn::MaxPool2dImpl* pool = nullptr;
  const nn::DropoutImpl* dropout = nullptr;
  const nn::Conv2dImpl* conv = nullptr;
  const nn::LinearImpl* linear = nullptr;
  auto pool_tail = [&](size_t i) {  // ReLU → max-pool 2×2 → dropout at i
    return is(i, relu) && is(i + 1, pool) && is(i + 2, dropout) &&
           *path->ptr<nn::MaxPool2dImpl>(i + 1)->options.kernel_size() == *torch::ExpandingArray<2>(2) &&
           *path->ptr<nn::MaxPool2dImpl>(i + 1)->options.stride() == *torch::ExpandingArray<2>(2);
  };
  auto dropout_tail = [&](size_t i) { return is(i, relu) && is(i + 1, dropout); };
  // Activations stay channel-blocked from a convolution through its fused tail into the next
  // convolution (kernels.h); anything else gets them plain.
  torch::Tensor h = x;
  for (size_t i = 0; i < n;) {
    if (is(i, conv)) {  // every convolution here is conv3x3: 3×3, stride 1, padding 1
      const auto& c = *path->ptr<nn::Conv2dImpl>(i);
      h = kernels::conv3x3(h, c.weight, c.bias, opt.conv, pool_tail(i + 1) || dropout_tail(i + 1));
      ++i;
    } else if (pool_tail(i)) {
      h = kernels::relu_pool_dropout(h, dropout_p(i + 2));
      i += 3;
    } else if (dropout_tail(i)) {
      h = kernels::relu_dropout(h, dropout_p(i + 1));
      i += 2;
    } else if (is(i, linear)) {  // the flattened features → 256, the path's largest matrix product
      const auto& l = *path->ptr<nn::LinearImpl>(i);
      h = kernels::linear(kernels::to_plain(h), l.weight, l.bias, opt.conv);
      ++i;
    } else {
      h = (path->begin() + i)->forward(kernels::to_plain(h));
      ++i;
    }
  }
  return kernels::to_plain(h);
}

DenoiseBlockImpl::DenoiseBlockImpl(const BlockOptions& opt) : options(opt) {
  TORCH_CHECK(opt.architecture == "paper" || opt.architecture == "seed", "unknown block architecture '",
              opt.architecture, "'");
  image_path = register_module("image_path", make_conv_path(opt));
  if (opt.label_is_image) {
    label_conv = register_module("label_conv", make_conv_path(opt));
  } else {
    label_in = register_module(
        "label_in", nn::Sequential(nn::Linear(opt.embed_dim, kFeatures), nn::BatchNorm1d(kFeatures), nn::ReLU()));
    label_res = register_module("label_res",
                                nn::Sequential(nn::Linear(kFeatures, kFeatures), nn::BatchNorm1d(kFeatures), nn::ReLU(),
                                               nn::Linear(kFeatures, kFeatures), nn::BatchNorm1d(kFeatures)));
  }
  fused = register_module("fused", nn::Sequential(nn::Linear(2 * kFeatures, kFeatures), nn::BatchNorm1d(kFeatures),
                                                  nn::ReLU(), nn::Linear(kFeatures, 128), nn::BatchNorm1d(128),
                                                  nn::ReLU(), nn::Linear(128, opt.num_classes)));
}

torch::Tensor DenoiseBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& z) {
  auto img = path_forward(image_path, x, options);
  const auto dense = fp32_options(options);
  torch::Tensor lab;
  if (options.label_is_image) {
    lab = path_forward(label_conv, z.view({z.size(0), options.channels, options.height, options.width}), options);
  } else {
    auto h = path_forward(label_in, z, dense);
    lab = path_forward(label_res, h, dense) + h;
  }
  return path_forward(fused, torch::cat({img, lab}, 1), dense);
}

namespace {
// The modules at position i of K Sequentials of the same layout, as type M.
template <class M>
std::vector<const M*> layer(const std::vector<nn::Sequential*>& paths, size_t i) {
  std::vector<const M*> out;
  for (auto* p : paths) out.push_back(dynamic_cast<const M*>((*p)->ptr(i).get()));
  return out;
}

template <class M, class F>
torch::Tensor stack_of(const std::vector<const M*>& ms, F member, bool concat) {
  std::vector<torch::Tensor> ts;
  for (const auto* m : ms) ts.push_back(member(*m));
  return concat ? torch::cat(ts) : torch::stack(ts);
}

// K blocks' activations side by side: image-shaped ones as B × K·C × H × W (block k's channels
// at k·C), features as K × B × F. `shared`: h is still the input common to all K (B×C×H×W).
torch::Tensor stacked_sequential(const std::vector<nn::Sequential*>& paths, torch::Tensor h, bool shared) {
  const auto K = int64_t(paths.size());
  const nn::Sequential& first = *paths.front();
  for (size_t i = 0; i < first->size(); ++i) {
    const auto* m = (first->begin() + std::ptrdiff_t(i))->ptr().get();
    if (auto* c = dynamic_cast<const nn::Conv2dImpl*>(m)) {
      const auto ms = layer<nn::Conv2dImpl>(paths, i);
      const auto w = stack_of(
          ms, [](const auto& l) { return l.weight; }, true);
      const auto b = stack_of(
          ms, [](const auto& l) { return l.bias; }, true);
      h = nn::functional::conv2d(h, w,
                                 nn::functional::Conv2dFuncOptions()
                                     .bias(b)
                                     .stride(c->options.stride())
                                     .padding(c->options.padding())
                                     .dilation(c->options.dilation())
                                     .groups(shared ? 1 : K));
      shared = false;
    } else if (dynamic_cast<const nn::LinearImpl*>(m)) {
      const auto ms = layer<nn::LinearImpl>(paths, i);
      const auto w = stack_of(
          ms, [](const auto& l) { return l.weight; }, false);  // K × out × in
      const auto b = stack_of(
          ms, [](const auto& l) { return l.bias; }, false);  // K × out
      if (shared) h = h.unsqueeze(0).expand({K, h.size(0), h.size(1)});
      h = torch::baddbmm(b.unsqueeze(1), h, w.transpose(1, 2));
      shared = false;
    } else if (auto* bn = dynamic_cast<const nn::BatchNorm1dImpl*>(m)) {
      TORCH_CHECK(!shared && h.dim() == 3, "stacked blocks: batch norm on a common input");
      const auto ms = layer<nn::BatchNorm1dImpl>(paths, i);
      const int64_t B = h.size(1), F = h.size(2);
      auto rm = stack_of(
          ms, [](const auto& l) { return l.running_mean; }, true);
      auto rv = stack_of(
          ms, [](const auto& l) { return l.running_var; }, true);
      const bool train = bn->is_training();
      double momentum = bn->options.momentum().value_or(0.0);
      if (train) {
        torch::NoGradGuard no_grad;
        for (const auto* b : ms) b->num_batches_tracked.add_(1);
        if (!bn->options.momentum()) momentum = 1.0 / double(bn->num_batches_tracked.item<int64_t>());
      }
      h = torch::batch_norm(h.transpose(0, 1).reshape({B, K * F}),
                            stack_of(
                                ms, [](const auto& l) { return l.weight; }, true),
                            stack_of(
                                ms, [](const auto& l) { return l.bias; }, true),
                            rm, rv, train, momentum, bn->options.eps(), at::globalContext().userEnabledCuDNN())
              .view({B, K, F})
              .transpose(0, 1);
      if (train) {
        torch::NoGradGuard no_grad;
        for (int64_t k = 0; k < K; ++k) {
          ms[size_t(k)]->running_mean.copy_(rm.slice(0, k * F, (k + 1) * F));
          ms[size_t(k)]->running_var.copy_(rv.slice(0, k * F, (k + 1) * F));
        }
      }
    } else if (dynamic_cast<const nn::ReLUImpl*>(m)) {
      h = torch::relu(h);
    } else if (auto* pool = dynamic_cast<const nn::MaxPool2dImpl*>(m)) {
      h = torch::max_pool2d(h, pool->options.kernel_size(), pool->options.stride(), pool->options.padding(),
                            pool->options.dilation(), pool->options.ceil_mode());
    } else if (auto* d = dynamic_cast<const nn::DropoutImpl*>(m)) {
      h = torch::dropout(h, d->options.p(), d->is_training());
    } else if (dynamic_cast<const nn::FlattenImpl*>(m)) {
      TORCH_CHECK(!shared, "stacked blocks: flatten of a common input");
      h = h.reshape({h.size(0), K, -1}).transpose(0, 1);
    } else {
      TORCH_CHECK(false, "stacked blocks: no stacked form of module ", m->name());
    }
  }
  return h;
}
}  // namespace

torch::Tensor stacked_forward(const std::vector<DenoiseBlockImpl*>& blocks, const torch::Tensor& x,
                              const torch::Tensor& z) {
  TORCH_CHECK(!blocks.empty() && z.dim() == 3 && z.size(0) == int64_t(blocks.size()), "stacked blocks: z is K×B×d");
  const auto K = int64_t(blocks.size());
  const auto& o = blocks.front()->options;
  auto paths = [&](nn::Sequential DenoiseBlockImpl::*member) {
    std::vector<nn::Sequential*> out;
    for (auto* b : blocks) out.push_back(&(b->*member));
    return out;
  };
  auto img = stacked_sequential(paths(&DenoiseBlockImpl::image_path), x, /*shared=*/true);
  torch::Tensor lab;
  if (o.label_is_image) {
    // K × B × (C·H·W) → B × K·C × H × W, block k's label image in its own channels.
    auto zi = z.reshape({K, z.size(1), o.channels, o.height, o.width}).transpose(0, 1);
    lab = stacked_sequential(paths(&DenoiseBlockImpl::label_conv),
                             zi.reshape({z.size(1), K * o.channels, o.height, o.width}), false);
  } else {
    auto h = stacked_sequential(paths(&DenoiseBlockImpl::label_in), z, false);
    lab = stacked_sequential(paths(&DenoiseBlockImpl::label_res), h, false) + h;
  }
  return stacked_sequential(paths(&DenoiseBlockImpl::fused), torch::cat({img, lab}, 2), false);
}

torch::Tensor time_embedding(const torch::Tensor& t, int dim) {
  const int half = dim / 2;
  auto freqs = torch::exp(torch::arange(half, t.options()) * (-std::log(10000.0) / half));
  auto args = (1000.0 * t).unsqueeze(1) * freqs.unsqueeze(0);
  return torch::cat({torch::sin(args), torch::cos(args)}, 1);
}

ContinuousBlockImpl::ContinuousBlockImpl(const BlockOptions& opt) : options(opt) {
  TORCH_CHECK(opt.architecture == "paper" || opt.architecture == "seed", "unknown block architecture '",
              opt.architecture, "'");
  image_path = register_module("image_path", make_conv_path(opt, /*batch_norm=*/false));
  if (opt.label_is_image)
    label_conv = register_module("label_conv", make_conv_path(opt, /*batch_norm=*/false));
  else
    label_in = register_module("label_in", nn::Sequential(nn::Linear(opt.embed_dim, kFeatures), nn::ReLU()));
  time_in = register_module("time_in", nn::Sequential(nn::Linear(kTimeDim, kFeatures), nn::ReLU()));
  fused_in = register_module("fused_in", nn::Linear(3 * kFeatures, kFeatures));
  fused = register_module(
      "fused", nn::Sequential(nn::ReLU(), nn::Linear(kFeatures, 128), nn::ReLU(), nn::Linear(128, opt.num_classes)));
}

torch::Tensor ContinuousBlockImpl::prepare(const torch::Tensor& x) {
  // fused_in(concat(img, lab, time)) = img·W_imgᵀ + b + lab·W_labᵀ + time·W_timeᵀ.
  return torch::addmm(fused_in->bias, path_forward(image_path, x, options),
                      fused_in->weight.slice(1, 0, kFeatures).t());
}

torch::Tensor ContinuousBlockImpl::forward_prepared(const torch::Tensor& prepared, const torch::Tensor& z,
                                                    const torch::Tensor& t) {
  const auto dense = fp32_options(options);
  auto lab =
      options.label_is_image
          ? path_forward(label_conv, z.view({z.size(0), options.channels, options.height, options.width}), options)
          : path_forward(label_in, z, dense);
  auto tim = path_forward(time_in, time_embedding(t.to(z.scalar_type()).reshape({-1}), kTimeDim), dense);
  const auto& w = fused_in->weight;
  auto h = prepared + lab.matmul(w.slice(1, kFeatures, 2 * kFeatures).t()) +
           tim.matmul(w.slice(1, 2 * kFeatures, 3 * kFeatures).t());
  return path_forward(fused, h, dense);
}

namespace {
// Image-path multiply-adds of one sample.
double image_path_madds(const BlockOptions& opt) {
  const double hw = double(opt.height) * opt.width, hw4 = hw / 4, hw16 = hw / 16;
  double conv = 9.0 * (opt.channels * 32 * hw + 32 * 64 * hw4);
  if (opt.architecture != "seed") conv += 9.0 * 64 * 128 * hw4;
  return conv + conv_out_channels(opt) * hw16 * kFeatures;
}
}  // namespace

double continuous_block_forward_flops(const BlockOptions& opt) {
  double image = image_path_madds(opt);
  double label = opt.label_is_image ? image : double(opt.embed_dim) * kFeatures;
  double fused =
      double(kTimeDim) * kFeatures + 3.0 * kFeatures * kFeatures + kFeatures * 128.0 + 128.0 * opt.num_classes;
  return 2.0 * (image + label + fused);
}

double block_forward_flops(const BlockOptions& opt) {
  double image = image_path_madds(opt);
  double label = opt.label_is_image ? image : double(opt.embed_dim) * kFeatures + 2.0 * kFeatures * kFeatures;
  double fused = 2.0 * kFeatures * kFeatures + kFeatures * 128.0 + 128.0 * opt.num_classes;
  return 2.0 * (image + label + fused);
}

double DenoiseBlockImpl::forward_flops() const { return block_forward_flops(options); }
double ContinuousBlockImpl::forward_flops() const { return continuous_block_forward_flops(options); }

BlockSpec conv_block_spec(const std::string& architecture) {
  return {architecture,
          architecture == "seed" ? "two convolutions, as in the PyTorch seed reproduction"
                                 : "paper Fig. 6: three convolutions",
          [](const BlockOptions& o) { return std::make_shared<DenoiseBlockImpl>(o); },
          [](const BlockOptions& o) { return std::make_shared<ContinuousBlockImpl>(o); }};
}

}  // namespace noprop
