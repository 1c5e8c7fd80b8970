// A checkpoint loaded for inference, without any data set, predicts exactly what the method
// that wrote it predicts; probabilities are normalised and averaged over inference runs.
#include <gtest/gtest.h>

#include "noprop/predict.h"
#include "test_util.h"

using namespace noprop;
using namespace noprop::test;
namespace fs = std::filesystem;

namespace {
class PredictTest : public TempDirTest {};

// A method with random (untrained, seeded) weights saved as a checkpoint of `cfg`.
std::unique_ptr<Method> saved_method(const Config& cfg, const fs::path& file) {
  torch::manual_seed(11);
  auto info = dataset_info(cfg.dataset);
  Dataset train{torch::randn({20, info.channels, info.height, info.width}), torch::arange(20, torch::kInt64) % 10};
  auto m = make_method(cfg, info, &train, torch::kCPU);
  TrainingState st;
  st.epoch = 3;
  st.config_yaml = to_yaml(cfg);
  st.config_name = "test";
  save_checkpoint(file, *m, st);
  m->set_training(false);
  return m;
}
}  // namespace

TEST_F(PredictTest, LoadedModelPredictsWhatTheSavedMethodPredicts) {
  for (const char* method : {"dt", "backprop", "fm"}) {
    for (const char* embedding : {"one-hot", "prototype"}) {
      Config cfg = tiny_method_config(method);
      cfg.embedding = embedding;
      cfg.inference_steps = 4;
      auto original = saved_method(cfg, dir / "m.pt");
      auto model = load_model(dir / "m.pt");
      EXPECT_EQ(model.state.epoch, 3);
      EXPECT_EQ(model.cfg.method, method);
      auto x = torch::randn({5, 1, 28, 28});
      InferenceOptions io = inference_options(cfg);
      io.noise = false;
      auto gen = at::make_generator<at::CPUGeneratorImpl>(0);
      torch::Tensor expected;
      {
        torch::NoGradGuard g;
        expected = torch::softmax(original->predict(x, io, gen), 1);
      }
      auto p = predict_probabilities(model, x, io, 3, 0);
      EXPECT_TRUE(torch::allclose(p, expected, 1e-5, 1e-6)) << method << " " << embedding;
      EXPECT_TRUE(torch::allclose(p.sum(1), torch::ones({5}), 1e-5, 1e-5));
    }
  }
}

TEST_F(PredictTest, NoisyRunsAreAveraged) {
  Config cfg = tiny_method_config("dt");
  auto original = saved_method(cfg, dir / "m.pt");
  auto model = load_model(dir / "m.pt");
  auto x = torch::randn({4, 1, 28, 28});
  InferenceOptions io = inference_options(cfg);
  // Three runs from one generator seeded 5 = the mean of three consecutive single runs.
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  torch::Tensor sum = torch::zeros({4, 10});
  {
    torch::NoGradGuard g;
    for (int r = 0; r < 3; ++r) sum += torch::softmax(original->predict(x, io, gen), 1);
  }
  EXPECT_TRUE(torch::allclose(predict_probabilities(model, x, io, 3, 5), sum / 3, 1e-5, 1e-6));
  EXPECT_THROW(predict_probabilities(model, torch::randn({1, 3, 28, 28}), io, 1, 0), c10::Error);
  EXPECT_NE(error_of([&] { load_model(dir / "none.pt"); }).find("none.pt"), std::string::npos);
}
