// Data sets: IDX (MNIST, Fashion-MNIST; .gz or raw) and the CIFAR-10 / CIFAR-100 binary
// layouts. Files are read once into one tensor of bytes per split, as stored (a quarter of
// float32's memory: 47 MB instead of 188 for MNIST's training set, 154 instead of 614 for
// CIFAR-10's), and each batch is normalised to float32 when it is taken. Every size a header
// claims is checked against the bytes actually read before anything is allocated from it, and
// every malformed file is an Error naming the file and the problem.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace noprop {

struct Dataset {
  // N×C×H×W: the pixels as read from the files (uint8), normalised by rows() and select(); or,
  // for data built in memory (tests, synthetic benchmarks), float32 already normalised.
  torch::Tensor images;
  torch::Tensor labels;             // int64, N
  std::vector<float> scale, shift;  // per channel: image = pixel · scale − shift (uint8 images)
  int64_t size() const { return labels.size(0); }
  // Normalised float32 images of rows [begin, end), or of the rows in `index` (int64), on the
  // device the images are on.
  torch::Tensor rows(int64_t begin, int64_t end) const;
  torch::Tensor select(const torch::Tensor& index) const;
  torch::Tensor normalised() const { return rows(0, size()); }

 private:
  torch::Tensor normalise(const torch::Tensor& part) const;
};

struct DataInfo {
  std::string name;
  int channels = 1, height = 28, width = 28, num_classes = 10;
  std::vector<double> mean, stddev;  // per channel, applied as (x/255 − mean)/std
};

struct DataSplits {
  DataInfo info;
  Dataset train, test;
};

// Shape, class count and normalisation of a named data set; Error for unknown names.
DataInfo dataset_info(const std::string& name);

// Class names in label order ("0".."9" for MNIST, "airplane" ... for CIFAR-10; the indices for
// CIFAR-100, whose 100 names the binary files do not carry).
std::vector<std::string> class_names(const std::string& name);

// Raw readers, exposed for tests and tools.
struct IdxImages {
  int64_t count = 0, rows = 0, cols = 0;
  std::vector<uint8_t> pixels;  // count·rows·cols bytes
};
IdxImages read_idx_images(const std::filesystem::path& path);
std::vector<uint8_t> read_idx_labels(const std::filesystem::path& path, int num_classes);

struct CifarRecords {
  int64_t count = 0;
  std::vector<uint8_t> pixels;  // count·3·32·32 bytes, channel-major per record
  std::vector<uint8_t> labels;
};
// CIFAR-10 records are <label><3072 pixels>; CIFAR-100 <coarse><fine><3072 pixels> (the fine
// label, or the coarse one when `coarse`).
CifarRecords read_cifar(const std::vector<std::filesystem::path>& files, bool cifar100, bool coarse = false);

// Where the data set's files are: `dir` itself or a conventional sub-folder of it.
// Throws an Error listing where it looked.
std::filesystem::path locate_dataset(const std::string& name, const std::filesystem::path& dir);

// Data directory: `explicit_dir` (flag or config) if set, else $NOPROP_DATA, else ./data,
// else /usr/share/datasets (where Debian's dataset-fashion-mnist installs).
std::filesystem::path resolve_data_dir(const std::string& name, const std::string& explicit_dir);

DataSplits load_dataset(const std::string& name, const std::filesystem::path& dir);

// Converts raw bytes (N×C×H×W) to the normalised float tensor.
torch::Tensor normalise_images(const uint8_t* pixels, int64_t n, const DataInfo& info);
// A data set of `pixels` (uint8, N×C×H×W) and `labels` (int64, N), normalised as `info` says.
Dataset make_dataset(torch::Tensor pixels, torch::Tensor labels, const DataInfo& info);

// Random crop with zero padding `pad` and horizontal flip, in place, drawing from the
// default generator (so a resumed run replays it exactly).
void augment_batch(torch::Tensor& images, int pad);

}  // namespace noprop
