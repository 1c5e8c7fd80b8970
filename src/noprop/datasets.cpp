#include "noprop/datasets.h"

#include "noprop/registry.h"

namespace noprop {
namespace {

// Functions, not globals: other files' static initialisers (registrations) may read the
// registry before this file's globals exist.
std::vector<std::string> idx_train() { return {"train-images-idx3-ubyte", "train-labels-idx1-ubyte"}; }
std::vector<std::string> idx_test() { return {"t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"}; }
// www.cs.toronto.edu/~kriz/ redirects to cave.cs.toronto.edu/kriz/; naming the latter too keeps
// the download working should the redirect go away.
std::vector<std::string> toronto() {
  return {"https://www.cs.toronto.edu/~kriz/", "https://cave.cs.toronto.edu/kriz/"};
}

// MD5s as published with each data set (and used by torchvision and others).
DatasetSpec mnist() {
  return {.name = "mnist",
          .title = "MNIST",
          .mean = {0.1307},
          .stddev = {0.3081},
          .layout = FileLayout::idx,
          .train_files = idx_train(),
          .test_files = idx_test(),
          .subfolders = {"mnist", "MNIST", "MNIST/raw"},
          .download = {
              .dataset = "mnist",
              .subdir = "mnist",
              .mirrors = {"https://ossci-datasets.s3.amazonaws.com/mnist/",
                          "https://storage.googleapis.com/cvdf-datasets/mnist/", "http://yann.lecun.com/exdb/mnist/"},
              .files = {{"train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"},
                        {"train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"},
                        {"t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"},
                        {"t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"}}}};
}

DatasetSpec fashion_mnist() {
  return {.name = "fashion-mnist",
          .title = "Fashion-MNIST",
          .mean = {0.2860},
          .stddev = {0.3530},
          .class_names = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                          "Ankle boot"},
          .layout = FileLayout::idx,
          .train_files = idx_train(),
          .test_files = idx_test(),
          .subfolders = {"fashion-mnist", "FashionMNIST", "FashionMNIST/raw"},
          .download = {.dataset = "fashion-mnist",
                       .subdir = "fashion-mnist",
                       .mirrors = {"http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                                   "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/"
                                   "fashion/"},
                       .files = {{"train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"},
                                 {"train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"},
                                 {"t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"},
                                 {"t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"}}},
          .system_dir = "/usr/share/datasets"};
}

DatasetSpec cifar10() {
  const std::vector<std::string> train{"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin",
                                       "data_batch_5.bin"};
  auto all = train;
  all.push_back("test_batch.bin");
  return {.name = "cifar10",
          .title = "CIFAR-10",
          .channels = 3,
          .height = 32,
          .width = 32,
          .mean = {0.4914, 0.4822, 0.4465},
          .stddev = {0.2470, 0.2435, 0.2616},
          .class_names = {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"},
          .layout = FileLayout::cifar10,
          .train_files = train,
          .test_files = {"test_batch.bin"},
          .subfolders = {"cifar10", "cifar-10", "cifar-10-batches-bin", "cifar-10-jpeg"},
          .download = {.dataset = "cifar10",
                       .subdir = "cifar10",
                       .mirrors = toronto(),
                       .files = {{"cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530"}},
                       .extract = all,
                       .extract_dir = "cifar-10-batches-bin"}};
}

// CIFAR-100's binary files do not carry the 100 fine class names: the indices stand for them.
DatasetSpec cifar100() {
  return {.name = "cifar100",
          .title = "CIFAR-100",
          .channels = 3,
          .height = 32,
          .width = 32,
          .num_classes = 100,
          .mean = {0.5071, 0.4865, 0.4409},
          .stddev = {0.2673, 0.2564, 0.2762},
          .layout = FileLayout::cifar100_fine,
          .train_files = {"train.bin"},
          .test_files = {"test.bin"},
          .subfolders = {"cifar100", "cifar-100", "cifar-100-binary"},
          .download = {.dataset = "cifar100",
                       .subdir = "cifar100",
                       .mirrors = toronto(),
                       .files = {{"cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8"}},
                       .extract = {"train.bin", "test.bin"},
                       .extract_dir = "cifar-100-binary"}};
}

// The same files labelled with their 20 superclasses (the record's first byte).
DatasetSpec cifar100_coarse() {
  DatasetSpec s = cifar100();
  s.name = "cifar100-coarse", s.title = "CIFAR-100 (20 superclasses)", s.num_classes = 20;
  s.layout = FileLayout::cifar100_coarse;
  s.class_names = {"aquatic mammals",
                   "fish",
                   "flowers",
                   "food containers",
                   "fruit and vegetables",
                   "household electrical devices",
                   "household furniture",
                   "insects",
                   "large carnivores",
                   "large man-made outdoor things",
                   "large natural outdoor scenes",
                   "large omnivores and herbivores",
                   "medium-sized mammals",
                   "non-insect invertebrates",
                   "people",
                   "reptiles",
                   "small mammals",
                   "trees",
                   "vehicles 1",
                   "vehicles 2"};
  return s;
}

Registry<DatasetSpec>& registry() {
  static Registry<DatasetSpec> r("data set", {mnist(), fashion_mnist(), cifar10(), cifar100(), cifar100_coarse()});
  return r;
}

}  // namespace

const std::vector<DatasetSpec>& dataset_specs() { return registry().all(); }
std::vector<std::string> dataset_names() { return registry().names(); }
const DatasetSpec& dataset_spec(const std::string& name) { return registry().get(name); }
bool register_dataset(DatasetSpec spec) { return registry().add(std::move(spec)); }

}  // namespace noprop
