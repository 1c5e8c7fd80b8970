#include "noprop/predict.h"

#include "noprop/runtime.h"

namespace noprop {

LoadedModel load_model(const std::filesystem::path& checkpoint, const std::string& device) {
  LoadedModel m;
  m.state = read_checkpoint_state(checkpoint);
  apply_yaml(m.cfg, m.state.config_yaml, checkpoint.string());
  m.info = dataset_info(m.cfg.dataset);
  m.device = select_device(device.empty() ? m.cfg.device : device);
  // Prototype embeddings are parameters stored in the checkpoint: placeholders do until it is loaded.
  Dataset placeholder;
  if (m.cfg.embedding == "prototype") {
    placeholder.images = torch::zeros({m.info.num_classes, m.info.channels, m.info.height, m.info.width});
    placeholder.labels = torch::arange(m.info.num_classes, torch::kInt64);
  }
  m.method = make_method(m.cfg, m.info, &placeholder, m.device);
  load_checkpoint(checkpoint, *m.method, /*restore_rng=*/false);
  m.method->set_training(false);
  return m;
}

torch::Tensor predict_probabilities(LoadedModel& model, const torch::Tensor& x, const InferenceOptions& opt, int runs,
                                    int64_t seed) {
  TORCH_CHECK(x.dim() == 4 && x.size(1) == model.info.channels && x.size(2) == model.info.height &&
                  x.size(3) == model.info.width,
              "predict: expected images of shape B×", model.info.channels, "×", model.info.height, "×",
              model.info.width, ", got ", x.sizes());
  torch::NoGradGuard no_grad;
  model.method->set_training(false);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(uint64_t(seed));
  const int n = opt.noise ? std::max(1, runs) : 1;
  auto input = x.to(model.device);
  torch::Tensor sum;
  for (int r = 0; r < n; ++r) {
    auto p = torch::softmax(model.method->predict(input, opt, gen), 1);
    sum = r ? sum + p : p;
  }
  return (sum / double(n)).to(torch::kCPU);
}

}  // namespace noprop
