// Using a trained model: a checkpoint loaded for inference, and class probabilities for a batch
// of images. This is what `noprop predict` and the embedding example (examples/) call.
#pragma once

#include <torch/torch.h>

#include <filesystem>
#include <memory>
#include <string>

#include "noprop/checkpoint.h"
#include "noprop/config.h"
#include "noprop/data.h"
#include "noprop/methods/method.h"

namespace noprop {

struct LoadedModel {
  Config cfg;                      // the run's config, as stored in the checkpoint
  DataInfo info;                   // input shape, classes and normalisation of its data set
  TrainingState state;             // epoch, step, best accuracy
  std::unique_ptr<Method> method;  // in evaluation mode
  torch::Device device = torch::kCPU;
};

// Loads any checkpoint (best.pt, final.pt) for inference on `device` ("cpu", "cuda", ...; empty:
// the run's own device); no data set is needed. Error naming the file when it is not a readable checkpoint.
LoadedModel load_model(const std::filesystem::path& checkpoint, const std::string& device = "");

// Class probabilities p̂(y | x), B×m on the CPU, averaged over `runs` inference runs (noise
// from a generator seeded with `seed`; one run is enough when opt.noise is off). `x` holds
// normalised images, B×C×H×W, as normalise_images() makes them.
torch::Tensor predict_probabilities(LoadedModel& model, const torch::Tensor& x, const InferenceOptions& opt, int runs,
                                    int64_t seed);

}  // namespace noprop
