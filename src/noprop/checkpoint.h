// Checkpoints: one file holding the method (parameters, buffers, optimizer states), the
// resolved config, the epoch and the RNG state, so that --resume continues bit-identically.
// Written to a temporary file, flushed and renamed into place. Format 2 appends a trailer
// ("NPCKSUM1", the archive's length and its CRC-32) to the LibTorch archive, so that a
// truncated or corrupted file is refused before any of it is parsed.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "noprop/methods/method.h"

namespace noprop {

constexpr int64_t kCheckpointVersion = 2;

struct TrainingState {
  int64_t epoch = 0;  // completed epochs
  int64_t step = 0;   // optimisation steps taken
  double best_test_accuracy = -1;
  int64_t best_epoch = 0;
  std::string config_yaml;
  std::string config_name;

  // Where an interrupted epoch stopped (in_epoch_batches < 0: at an epoch boundary): batches
  // done in epoch `epoch + 1`, the pass and its batch order, and the running loss sums, so that
  // a resumed run continues bit-identically.
  int64_t in_epoch_batches = -1;
  int64_t pass = 0;
  torch::Tensor permutation;
  torch::Tensor loss_sums;    // float, NaN where a loss has no value yet
  torch::Tensor loss_counts;  // int64
  int64_t samples = 0, skipped = 0;
  double train_seconds = 0;
};

void save_checkpoint(const std::filesystem::path& path, Method& method, const TrainingState& state);

// Reads only the metadata (state and config); Error naming the file when it is not a
// readable checkpoint of this format.
TrainingState read_checkpoint_state(const std::filesystem::path& path);

// Loads the method's parameters and optimizer states, and the RNG state when `restore_rng`.
TrainingState load_checkpoint(const std::filesystem::path& path, Method& method, bool restore_rng);

}  // namespace noprop
