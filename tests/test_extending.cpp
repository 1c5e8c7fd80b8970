// The worked examples of docs/extending.md: a data set, a block and a method added from outside
// the library, each registered in one statement, then trained and evaluated through the real
// trainer with no other change. If this file stops compiling or passing, the guide is wrong.
#include <gtest/gtest.h>

#include <algorithm>

#include <nlohmann/json.hpp>

#include "noprop/blocks/block.h"
#include "noprop/blocks/registry.h"
#include "noprop/checkpoint.h"
#include "noprop/datasets.h"
#include "noprop/methods/helpers.h"
#include "noprop/methods/method.h"
#include "noprop/methods/registry.h"
#include "noprop/predict.h"
#include "noprop/runs.h"
#include "noprop/trainer.h"
#include "test_util.h"

namespace noprop {
namespace {

// --- A block: a two-layer perceptron on the flattened image, with the noised label joined in
// before the output layer. Discrete time only (no make_time): CT and FM refuse it.
struct MlpBlockImpl : BlockImpl {
  explicit MlpBlockImpl(const BlockOptions& o) : opt(o) {
    image = register_module("image", torch::nn::Linear(int64_t(o.channels) * o.height * o.width, kHidden));
    out = register_module("out", torch::nn::Linear(kHidden + o.embed_dim, o.num_classes));
  }
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& z) override {
    auto h = torch::relu(image->forward(x.flatten(1)));
    return out->forward(torch::cat({h, z.flatten(1)}, 1));
  }
  double forward_flops() const override {
    return 2.0 * (double(opt.channels) * opt.height * opt.width * kHidden +
                  double(kHidden + opt.embed_dim) * opt.num_classes);
  }
  static constexpr int kHidden = 64;
  BlockOptions opt;
  torch::nn::Linear image{nullptr}, out{nullptr};
};

// --- A method: every block t learns, in one joint step, to recover u_y from
// z = u_y + σ_t ε with σ_t = 1 − t/(T+1) (an unweighted, un-scheduled NoProp); inference runs the
// chain z_t = û_t(z_{t−1}, x) from z_0 and reads the last block's class probabilities.
class DenoiseAllMethod : public Method {
 public:
  DenoiseAllMethod(const Config& cfg, NoPropNet net) : cfg_(cfg), net_(std::move(net)) {
    opt_ = make_optimizer(cfg_, net_->parameters());
  }
  std::vector<std::string> loss_names() const override { return {"loss_total"}; }
  std::vector<torch::Tensor> train_step(const torch::Tensor& x, const torch::Tensor& y, int) override {
    const auto u = net_->embed->weight.index_select(0, y).detach();
    const int T = net_->T();
    auto loss = torch::zeros({}, x.options());
    for (int t = 1; t <= T; ++t) {
      const double sigma = 1.0 - double(t) / (T + 1);
      auto z = u + sigma * cpu_randn(u.sizes(), u);
      loss = loss + (net_->denoise(t, x, z) - u).pow(2).sum(1).mean();
    }
    opt_->zero_grad();
    loss.backward();
    if (clip_and_check({net_->parameters()}, cfg_.grad_clip_max_norm, loss, "network")) opt_->step();
    return {loss.detach()};
  }
  torch::Tensor predict(const torch::Tensor& x, const InferenceOptions& opt, at::Generator& gen) override {
    torch::NoGradGuard no_grad;
    auto z = torch::zeros({x.size(0), net_->embed->dim()}, x.options());
    if (opt.noise) z = normal_like(z, gen);
    torch::Tensor logits;
    for (int t = 1; t <= net_->T(); ++t) {
      logits = net_->block(t)->forward(x, z);
      z = torch::softmax(logits, 1).matmul(net_->embed->weight);
    }
    return torch::log_softmax(logits, 1);
  }
  void set_training(bool on) override { net_->train(on); }
  void save(torch::serialize::OutputArchive& ar) override {
    save_module(ar, "model", *net_);
    save_optimizer(ar, "optim", *opt_);
  }
  void load(torch::serialize::InputArchive& ar) override {
    load_module(ar, "model", *net_);
    load_optimizer(ar, "optim", *opt_);
  }
  std::vector<torch::Tensor> parameters() override { return net_->parameters(); }
  NoPropNet network() override { return net_; }
  std::vector<torch::optim::Optimizer*> optimizers() override { return {opt_.get()}; }

 private:
  Config cfg_;
  NoPropNet net_;
  std::unique_ptr<torch::optim::Optimizer> opt_;
};

// --- A data set: MNIST's file layout and shape under another name, with its own class names
// (the synthetic squares of test_util.h; no download).
DatasetSpec squares_spec() {
  DatasetSpec s = dataset_spec("mnist");
  s.name = "squares", s.title = "Squares";
  s.class_names = {"square 0", "square 1", "square 2", "square 3", "square 4",
                   "square 5", "square 6", "square 7", "square 8", "square 9"};
  s.mean = {0.15}, s.stddev = {0.3};
  s.subfolders = {"squares"};
  s.download = {}, s.system_dir = "";
  return s;
}

// The one registration statement of each.
const bool kRegistered =
    register_block({"mlp", "two-layer perceptron on the flattened image (the extending guide's example)",
                    [](const BlockOptions& o) { return std::make_shared<MlpBlockImpl>(o); }, nullptr}) &&
    register_method({.name = "denoise-all",
                     .title = "DenoiseAll",
                     .summary = "every block denoises a fixed-noise label, one joint step",
                     .make = method_factory<DenoiseAllMethod>()}) &&
    register_dataset(squares_spec());

using ExtendingTest = test::TempDirTest;

TEST_F(ExtendingTest, RegisteredMethodBlockAndDataSetTrainThroughTheTrainer) {
  ASSERT_TRUE(kRegistered);
  test::write_synthetic_mnist(dir / "data" / "squares", 640, 200);
  Config cfg;
  apply_yaml(cfg,
             "dataset: squares\nmethod: denoise-all\narchitecture: mlp\nnum_layers: 3\nepochs: 3\n"
             "batch_size: 64\nthreads: 1\ninference_runs: 2\nplot: false\nlearning_rate: 0.003\n",
             "toy.yaml");
  cfg.data_dir = (dir / "data").string();
  auto summary = train(RunOptions{cfg, "toy", dir / "run", false, true});
  EXPECT_EQ(summary["method"], "denoise-all");
  EXPECT_EQ(summary["dataset"], "squares");
  EXPECT_EQ(summary["epochs"], 3);
  // 10 classes: chance is 10 %; the squares are easy for a perceptron.
  EXPECT_GT(summary["test_accuracy"].get<double>(), 80.0) << summary.dump();
  // Three blocks of 784·64 + 64 + (64 + 10)·10 + 10 parameters, the 10×10 head, no learned embedding.
  EXPECT_EQ(summary["parameters"], 3 * (784 * 64 + 64 + 74 * 10 + 10) + 10 * 10 + 10);

  // The run tools read the titles from the registries.
  auto run = read_run(dir / "run");
  EXPECT_EQ(run.method_label(), "DenoiseAll");
  EXPECT_EQ(run.dataset_label(), "Squares");

  // The checkpoint reloads into the same method, block and data set, and gives the same accuracy.
  auto model = load_model(dir / "run" / "final.pt", "cpu");
  auto data = load_dataset("squares", dir / "data");
  auto again = evaluate(*model.method, data.test, 2, inference_options(model.cfg), model.cfg.inference_seed,
                        model.cfg.eval_batch_size, torch::kCPU);
  EXPECT_DOUBLE_EQ(again.mean, summary["test_accuracy"].get<double>());
  EXPECT_EQ(class_names("squares")[3], "square 3");
}

TEST(Extending, RegistriesListAndRefuse) {
  ASSERT_TRUE(kRegistered);
  // Config validation reads the registries: the new names are valid values, the old ones stay.
  Config c;
  apply_yaml(c, "method: denoise-all\narchitecture: mlp\ndataset: squares\n", "x.yaml");
  EXPECT_NO_THROW(validate(c));
  apply_yaml(c, "method: dt\narchitecture: paper\ndataset: mnist\n", "x.yaml");
  EXPECT_NO_THROW(validate(c));
  // A name given twice, an unknown name, and a block without the form a method needs.
  EXPECT_THROW(register_block({"mlp", "", nullptr, nullptr}), Error);
  EXPECT_NE(test::error_of([] { method_spec("denoise-al"); }).find("did you mean 'denoise-all'"), std::string::npos);
  EXPECT_NE(test::error_of([] {
              Config d;
              apply_yaml(d, "architecture: mpl\n", "y.yaml");
            }).find("y.yaml: config key 'architecture': 'mpl' is not one of paper, seed, mlp (did you mean 'mlp'?)"),
            std::string::npos);
  Config ct;
  apply_yaml(ct, "method: ct\narchitecture: mlp\n", "z.yaml");
  EXPECT_NE(test::error_of([&] { validate(ct); }).find("block 'mlp' has no continuous-time form"), std::string::npos);
  // The downloader offers only data sets that have mirrors.
  const auto downloadable = download_datasets();
  EXPECT_EQ(std::count(downloadable.begin(), downloadable.end(), "squares"), 0);
  EXPECT_EQ(std::count(downloadable.begin(), downloadable.end(), "mnist"), 1);
}

// The block reports its own FLOPs, which the methods sum for the benchmark: T blocks, forward
// plus a backward of twice the forward.
TEST(Extending, MethodFlopsComeFromTheBlocks) {
  ASSERT_TRUE(kRegistered);
  Config c = test::tiny_method_config("denoise-all");
  c.architecture = "mlp";
  const auto info = test::tiny_info();  // 8×8, one channel, 4 classes
  auto m = make_method(c, info, nullptr, torch::kCPU);
  const double block = 2.0 * (64.0 * 64 + (64 + 4) * 4);
  EXPECT_DOUBLE_EQ(m->step_flops(32), 3.0 * 32 * 3 * block);
  EXPECT_DOUBLE_EQ(m->inference_flops(InferenceOptions{}), 3 * block);
}

}  // namespace
}  // namespace noprop
