// The data sets by name: one spec each (shape, classes and their names, normalisation, the
// files, their layout and where they may sit, and where to download them), read by the loader
// (data.h), the downloader (download.h), config validation, the CLI, the benchmark and the run
// tools. Torch-free. A new data set in an existing layout is one entry in datasets.cpp; a new
// layout also needs its reader in data.cpp.
#pragma once

#include <string>
#include <vector>

#include "noprop/download.h"

namespace noprop {

enum class FileLayout {
  idx,             // MNIST's: <split>-images-idx3-ubyte and <split>-labels-idx1-ubyte
  cifar10,         // records of <label><3072 pixels>
  cifar100_fine,   // records of <coarse><fine><3072 pixels>, the fine label
  cifar100_coarse  // the same files, the coarse (superclass) label
};

struct DatasetSpec {
  std::string name;   // the config value: mnist, cifar10, ...
  std::string title;  // in reports and figures: MNIST, CIFAR-10, ...
  int channels = 1, height = 28, width = 28, num_classes = 10;
  std::vector<double> mean, stddev;      // per channel, applied as (x/255 − mean)/std
  std::vector<std::string> class_names;  // in label order; empty: the label indices
  FileLayout layout = FileLayout::idx;
  std::vector<std::string> train_files, test_files;  // as read (a .gz of each is also accepted)
  std::vector<std::string> subfolders;               // where under a data directory the files may be
  // Where `noprop data download` gets the files (mirrors, published MD5s, archive members);
  // download.dataset names the data set whose files these are (cifar100-coarse reads
  // cifar100's), empty mirrors: no download.
  DownloadSource download;
  // Where a distribution package installs the files, tried when ./data lacks them (Debian's
  // dataset-fashion-mnist); empty: none.
  std::string system_dir;
};

const std::vector<DatasetSpec>& dataset_specs();
std::vector<std::string> dataset_names();
// The spec of `name`; an Error "unknown data set ..." naming the known ones otherwise.
const DatasetSpec& dataset_spec(const std::string& name);
// Adds a data set (programs, tests); an Error if the name is taken. Returns true.
bool register_dataset(DatasetSpec spec);

}  // namespace noprop
