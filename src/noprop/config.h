// Run configuration: one flat struct, read from YAML (configs/NAME.yaml), overridden by
// `--set key=value` and the common flags. Key names follow the PyTorch seed reproduction
// where it has them (batch_size, epochs, learning_rate, ...). Every key is validated on
// read: unknown keys, wrong types and out-of-range values are an Error naming the key.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace noprop {

struct Config {
  // Data.
  std::string dataset = "mnist";  // a registered data set (datasets.h): mnist | cifar10 | ...
  std::string data_dir;           // empty: --data-dir, $NOPROP_DATA, ./data, /usr/share/datasets
  bool augment = false;           // CIFAR random crop (pad 4) + horizontal flip; off as in the paper
  int train_samples = 0;          // use only the first N training samples (0: all), for quick runs
  int test_samples = 0;           // evaluate on the first N test samples only (0: all), for quick runs

  // Method.
  std::string method = "dt";                // a registered method (methods/registry.h): dt | backprop | ct | fm
  int num_layers = 10;                      // T, the number of blocks
  double eta = 0.1;                         // η of Eq. 8
  std::string block_order = "interleaved";  // interleaved | sequential (Algorithm 1)
  // NoProp-DT: the head and embeddings step after each block with a gradient taken after the
  // previous block's step (per_block, Algorithm 1's order), or take the same T steps with
  // gradients all taken at the batch's starting state (per_batch: what block-parallel runs do,
  // so that blocks need nothing from each other within a batch) (ours).
  std::string shared_update = "per_block";
  // NoProp-DT with shared_update: per_batch: the blocks' training forward and backward as one
  // computation over their stacked weights (blocks/conv.h, stacked_forward): the same steps in T×
  // fewer, T× larger kernels, for GPUs. Holds every block's activations at once (ours).
  bool stacked_blocks = false;
  double noise_schedule_min = 1e-3;   // ᾱ_min
  double noise_schedule_max = 0.999;  // ᾱ_max
  double cosine_s = 0.008;            // s of the cosine schedule
  double alpha_init = 0.5;            // backprop: initial α_t = tanh(w_t) (ours)
  int schedule_hidden = 64;           // CT: hidden width of the schedule network γ̃ (ours)
  double fm_sigma = 0.0;              // FM: σ of z_t ~ N(t z_1 + (1 − t) z_0, σ²) (ours)

  // Model.
  std::string architecture = "paper";  // a registered block (blocks/registry.h): paper | seed
  std::string embedding = "one-hot";   // one-hot | learned | prototype
  int embedding_dim = 20;              // d for learned embeddings
  std::string head = "softmax";        // softmax | radial (Eq. 14-16)
  double head_sigma = 1.0;             // σ of the radial head (ours)
  // The head's initial weights, which the paper leaves open: the nearest-class-embedding
  // readout (W_out = β W_embed / r², b_k = −β ‖u_k‖² / (2 r²), r² the mean ‖u_k‖²; β·I − β/2
  // for one-hot), or LibTorch's random Linear init. With a random head, two simplex corners can
  // share a class and the back-prop baseline stalls (docs/method.md) (ours).
  std::string head_init = "embedding";  // embedding | random
  double head_init_scale = 5.0;         // β
  double dropout = 0.2;

  // Optimisation.
  std::string optimizer = "adamw";  // adamw | adam
  int batch_size = 128;
  int epochs = 100;
  double learning_rate = 1e-3;
  double weight_decay = 1e-3;
  double grad_clip_max_norm = 1.0;  // per block; 0 disables
  // NoProp-DT: block t's clip is grad_clip_max_norm (none) or grad_clip_max_norm × its loss
  // weight ½Tη(SNR(t) − SNR(t−1)) (loss_weight), so that the clip acts alike on every block (ours).
  std::string grad_clip_scaling = "none";
  // Learning rate over the run: constant, or cosine decay to 0 at the last epoch; both after a
  // linear warm-up of warmup_epochs (fractions allowed) (ours; the paper uses a constant rate).
  std::string lr_schedule = "constant";
  double warmup_epochs = 0;
  std::string on_nonfinite = "skip";  // NaN/Inf loss or gradient: skip that update | stop the run
  long long seed = 42;
  bool early_stopping = false;  // stop once test accuracy reaches the target
  double early_stopping_accuracy = 99.5;

  // Inference and evaluation.
  bool inference_noise = true;           // false: z_0 = 0 and ε_t = 0, a deterministic chain
  int inference_steps = 1000;            // CT and FM: steps over t ∈ [0, 1]
  std::string solver = "euler";          // CT flow and FM: euler | heun
  std::string ct_sampler = "ancestral";  // CT: ancestral (Eq. 3) | flow (probability-flow ODE)
  int inference_runs = 5;                // stochastic runs averaged at the end of training
  // NoProp-DT: the class scores of an inference run: the mean of the T blocks' class
  // probabilities softmax(logits_t) along the Eq. 3 chain (blocks; measured best, docs/results.md),
  // or the head on z_T (head, the paper's p̂_θout(y | z_T)). Training is Eq. 8 either way (ours).
  std::string readout = "blocks";
  long long inference_seed = 0;
  int eval_batch_size = 1000;
  bool train_eval = false;  // also measure training-set accuracy each epoch
  // Test accuracy after every N epochs and after the last: CT and FM with prototype embeddings run
  // a convolution at each of their 1000 inference steps (~531 TFLOP per CIFAR-10 evaluation).
  int eval_every = 1;

  // Logging and checkpoints.
  int log_interval = 100;         // batches between plain progress lines / per-batch rows
  bool detailed_logging = false;  // per-batch rows in batches.csv
  bool save_best = true;
  bool save_final = true;
  int checkpoint_every = 0;  // also keep epoch_N.pt every N epochs (0: never)
  bool plot = true;          // curves.png / curves.svg in the run directory at the end (gnuplot)

  // Runtime.
  std::string device = "cpu";  // cpu | cuda | cuda:N
  int threads = 0;             // 0: all cores
  // CPU, float32: the element-wise tail of each convolution (ReLU → max-pool → dropout) runs
  // as one fused kernel (fused), or as LibTorch's separate ops (torch, the reference) (ours).
  std::string kernels = "fused";
  // With kernels: fused, the image path's convolutions and its flattened-features layer take
  // bf16 operands (fp32 results and weights), or the convolutions run in fp32 Winograd, or
  // LibTorch's fp32; auto: bf16 where the CPU has AMX (where it pays), else Winograd where it
  // has AVX-512, else fp32.
  std::string conv_precision = "auto";
  // Only 1 (blocks one after another, every op on all threads): read so that config files that
  // name it stay valid. Blocks on concurrent threads of one process made LibTorch's oneDNN
  // convolutions return corrupt gradients (docs/speed.md); --workers N trains blocks in parallel.
  int concurrent_blocks = 1;
  // Distributed runs (--workers, or RANK/WORLD_SIZE): NoProp-DT trains its blocks in parallel
  // (block) or splits every batch (data); the other methods are always data-parallel.
  std::string parallel = "block";
  int dist_timeout = 300;  // seconds a collective may wait before the run stops
};

// Applies every key of a YAML mapping; `source` names the file (or "--set") in errors.
void apply_yaml(Config& cfg, const std::string& yaml_text, const std::string& source);
// "key=value", the value parsed as YAML.
void apply_override(Config& cfg, const std::string& assignment);
// Checks relations between keys (run after all overrides).
void validate(const Config& cfg);
Config load_config_file(const std::filesystem::path& path);
std::string to_yaml(const Config& cfg);

// Named configs: configs/NAME.yaml, found through $NOPROP_CONFIG_DIR, ./configs, or the
// source tree the program was built from.
struct NamedConfig {
  std::string name;
  std::string description;  // the first comment line of the file
  std::filesystem::path path;
};
std::vector<NamedConfig> list_named_configs();
std::filesystem::path find_named_config(const std::string& name);

// Every key with a one-line description, for --help and docs.
std::vector<std::pair<std::string, std::string>> config_keys();

}  // namespace noprop
