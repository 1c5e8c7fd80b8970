// The network the methods share: T denoising blocks (or one time-conditioned block for the
// continuous-time methods), the class embedding and the output head, registered under one root
// so that one Module::save covers them.
#pragma once

#include <torch/torch.h>

#include <memory>

#include "noprop/blocks/block.h"
#include "noprop/config.h"
#include "noprop/data.h"
#include "noprop/embeddings.h"

namespace noprop {

// The block options a config asks for on a data set (d follows the embedding).
BlockOptions block_options(const Config& cfg, const DataInfo& info);
// The convolutions' precision a run gets from config key conv_precision on this CPU and build:
// "bf16", "winograd" or "fp32" ("fp32" on a GPU); an Error when bf16 or winograd is asked for and
// cannot be had.
std::string conv_precision(const Config& cfg);

// The discrete-time methods have T blocks; the continuous-time ones (the method's spec says
// continuous_time) have no discrete blocks and one time-conditioned block `cblock` instead.
// Blocks are built by the registered block named by config key `architecture`.
struct NoPropNetImpl : torch::nn::Module {
  NoPropNetImpl(const Config& cfg, const DataInfo& info, const torch::Tensor& prototypes);
  int T() const { return int(blocks->size()); }
  std::shared_ptr<BlockImpl> block(int t) { return blocks->ptr<BlockImpl>(t - 1); }  // t = 1..T
  // Block t as its concrete type (tests, tools); nullptr if it is another kind of block.
  template <class B>
  std::shared_ptr<B> block_as(int t) {
    return std::dynamic_pointer_cast<B>(block(t));
  }
  template <class B>
  std::shared_ptr<B> cblock_as() {
    return std::dynamic_pointer_cast<B>(cblock);
  }
  // û_θt = softmax(logits) · W_embed.
  torch::Tensor denoise(int t, const torch::Tensor& x, const torch::Tensor& z);

  BlockOptions block_options;
  torch::nn::ModuleList blocks{nullptr};
  std::shared_ptr<TimeBlockImpl> cblock;
  ClassEmbedding embed{nullptr};
  Head head{nullptr};
};
TORCH_MODULE(NoPropNet);

// head_init: embedding — the nearest-class-embedding readout: fc.weight = β W_embed / r²,
// fc.bias_k = −β ‖u_k‖² / (2 r²) with r² the mean ‖u_k‖² (β·I and −β/2 for one-hot), so that
// logit_k = −β ‖z − u_k‖² / (2 r²) + a term common to all classes.
void init_head_from_embedding(Head& head, const torch::Tensor& embed_weight, double beta);

}  // namespace noprop
