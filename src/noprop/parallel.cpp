#include "noprop/parallel.h"

#include <torch/torch.h>

#include "noprop/distributed.h"
#include "noprop/util.h"

namespace noprop {
namespace {

class DataParallel : public Parallelism {
 public:
  DataParallel(Distributed& dist, std::function<std::vector<at::Tensor>()> parameters)
      : dist_(dist), parameters_(std::move(parameters)) {}
  std::string name() const override { return "data-parallel"; }
  int world() const override { return dist_.world(); }
  bool shards_batches() const override { return true; }
  std::pair<int64_t, int64_t> rows(int64_t m) const override {
    const int64_t r = dist_.rank(), p = dist_.world();
    return {r * m / p, (r + 1) * m / p};
  }
  void average(const std::vector<at::Tensor>& tensors) override {
    dist_.allreduce_sum(tensors);
    for (const auto& t : tensors) t.div_(double(dist_.world()));
  }
  // Every rank stepped with the same averaged gradients, so every rank must hold the same
  // parameters, bit for bit: a method that forgot to average would otherwise evaluate and save
  // the lead's model, trained on the lead's rows alone. Checked on a fingerprint (each
  // parameter's sum and sum of squares in double), the lead's broadcast and compared by all.
  void synchronise() override {
    std::vector<double> mine;
    for (const auto& p : parameters_()) {
      const auto d = p.detach().to(torch::kCPU, torch::kDouble);
      mine.push_back(d.sum().item<double>());
      mine.push_back(d.pow(2).sum().item<double>());
    }
    std::string bytes(reinterpret_cast<const char*>(mine.data()), mine.size() * sizeof(double));
    const std::string own = bytes;
    dist_.broadcast_bytes(bytes, 0);
    auto differs = torch::tensor({bytes == own ? 0.0f : 1.0f});
    dist_.allreduce_sum({differs});
    if (const int n = int(differs.item<float>()); n > 0)
      throw Error("data-parallel: " + std::to_string(n) + " of " + std::to_string(dist_.world()) +
                  " ranks hold other parameters than rank 0 (their steps were not averaged)");
  }

 private:
  Distributed& dist_;
  std::function<std::vector<at::Tensor>()> parameters_;
};

class BlockParallel : public Parallelism {
 public:
  BlockParallel(Distributed& dist, std::function<std::string(int)> pack,
                std::function<void(int, const std::string&)> unpack, int blocks)
      : dist_(dist), pack_(std::move(pack)), unpack_(std::move(unpack)), blocks_(blocks) {}
  std::string name() const override { return "block-parallel"; }
  int world() const override { return dist_.world(); }
  bool trains_block(int t) const override { return owner(t) == dist_.rank(); }
  void sum_block_parts(const std::vector<at::Tensor>& tensors) override { dist_.allreduce_sum(tensors); }
  void synchronise() override {
    for (int t = 1; t <= blocks_; ++t) {
      std::string bytes = owner(t) == dist_.rank() ? pack_(t) : std::string();
      dist_.broadcast_bytes(bytes, owner(t));
      if (owner(t) != dist_.rank()) unpack_(t, bytes);
    }
  }

 private:
  int owner(int t) const { return (t - 1) % dist_.world(); }
  Distributed& dist_;
  std::function<std::string(int)> pack_;
  std::function<void(int, const std::string&)> unpack_;
  int blocks_;
};

}  // namespace

std::unique_ptr<Parallelism> single_process() { return std::make_unique<Parallelism>(); }
std::unique_ptr<Parallelism> data_parallel(Distributed& dist, std::function<std::vector<at::Tensor>()> parameters) {
  return std::make_unique<DataParallel>(dist, std::move(parameters));
}
std::unique_ptr<Parallelism> block_parallel(Distributed& dist, std::function<std::string(int)> pack,
                                            std::function<void(int, const std::string&)> unpack, int blocks) {
  return std::make_unique<BlockParallel>(dist, std::move(pack), std::move(unpack), blocks);
}

}  // namespace noprop
