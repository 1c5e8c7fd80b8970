// Embedding a trained NoProp model in your own program: load a checkpoint, turn your data into
// the normalised tensor the model was trained on, and ask for class probabilities.
//
//   classify CHECKPOINT IMAGE      (e.g. runs/<run>/best.pt and a 28×28 PNG for MNIST)
//
// Build it with the project (target noprop_example_classify) or link your own program against
// noprop_lib the same way (see examples/CMakeLists.txt).
#include <cstdio>

#include "noprop/image.h"
#include "noprop/predict.h"
#include "noprop/runtime.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s CHECKPOINT IMAGE\n", argv[0]);
    return 2;
  }
  try {
    noprop::configure_threads(0);  // all cores
    // 1. The model: network, embedding and head as trained, in evaluation mode.
    noprop::LoadedModel model = noprop::load_model(argv[1]);
    // 2. A batch of images as a B×C×H×W float tensor, normalised as in training. Here one file;
    //    raw bytes from anywhere else go through normalise_images() the same way.
    std::vector<uint8_t> pixels = noprop::read_image(argv[2], model.info);
    torch::Tensor x = noprop::normalise_images(pixels.data(), 1, model.info);
    // 3. p(y | x): deterministic inference (no noise), so one run suffices.
    noprop::InferenceOptions inference = noprop::inference_options(model.cfg);
    inference.noise = false;
    torch::Tensor probs = noprop::predict_probabilities(model, x, inference, /*runs=*/1, /*seed=*/0);

    const auto names = noprop::class_names(model.info.name);
    const int64_t best = probs[0].argmax().item<int64_t>();
    std::printf("%s: class %s (p = %.4f)\n", argv[2], names[std::size_t(best)].c_str(), probs[0][best].item<double>());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "classify: %s\n", e.what());
    return 1;
  }
}
