#include "noprop/parallel.h"

#include <torch/torch.h>

#include "noprop/distributed.h"

namespace noprop {
namespace {

class DataParallel : public Parallelism {
 public:
  explicit DataParallel(Distributed& dist) : dist_(dist) {}
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

 private:
  Distributed& dist_;
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
std::unique_ptr<Parallelism> data_parallel(Distributed& dist) { return std::make_unique<DataParallel>(dist); }
std::unique_ptr<Parallelism> block_parallel(Distributed& dist, std::function<std::string(int)> pack,
                                            std::function<void(int, const std::string&)> unpack, int blocks) {
  return std::make_unique<BlockParallel>(dist, std::move(pack), std::move(unpack), blocks);
}

}  // namespace noprop
