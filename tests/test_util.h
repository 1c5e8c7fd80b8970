// Helpers for the tests: temporary directories and small synthetic data sets written in the
// real file formats, so that tests never depend on downloaded data.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "noprop/config.h"
#include "noprop/data.h"
#include "noprop/util.h"

namespace noprop::test {

// The message of the noprop::Error that `f` throws, or "(no error)".
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

inline std::filesystem::path temp_dir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("noprop-test-" + name + "-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// A fixture with a fresh temporary directory `dir` per test, named after the test and removed
// afterwards.
class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    for (char& c : name)
      if (c == '/') c = '-';  // parameterised tests
    dir = temp_dir(name);
  }
  void TearDown() override { std::filesystem::remove_all(dir); }
  std::filesystem::path dir;
};

inline void write_bytes(const std::filesystem::path& p, const std::vector<uint8_t>& bytes, bool gz = false) {
  if (gz) {
    gzFile f = gzopen(p.c_str(), "wb");
    gzwrite(f, bytes.data(), unsigned(bytes.size()));
    gzclose(f);
  } else {
    std::ofstream(p, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  }
}

inline void put_be32(std::vector<uint8_t>& v, uint32_t x) {
  for (int s = 24; s >= 0; s -= 8) v.push_back(uint8_t(x >> s));
}

inline std::vector<uint8_t> idx_images(uint32_t n, uint32_t rows, uint32_t cols, const std::vector<uint8_t>& pixels) {
  std::vector<uint8_t> v;
  put_be32(v, 0x803), put_be32(v, n), put_be32(v, rows), put_be32(v, cols);
  v.insert(v.end(), pixels.begin(), pixels.end());
  return v;
}

inline std::vector<uint8_t> idx_labels(const std::vector<uint8_t>& labels) {
  std::vector<uint8_t> v;
  put_be32(v, 0x801), put_be32(v, uint32_t(labels.size()));
  v.insert(v.end(), labels.begin(), labels.end());
  return v;
}

// An MNIST-shaped data set (28×28, 10 classes) whose class c is a bright 6×6 square at one of
// ten positions plus pixel noise: learnable in a few steps, far from trivial for chance.
inline void write_synthetic_mnist(const std::filesystem::path& dir, int n_train, int n_test, unsigned seed = 1,
                                  bool gz = true) {
  std::filesystem::create_directories(dir);
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> noise(0, 60), cls(0, 9), jitter(-1, 1);
  auto make = [&](int n, const std::string& prefix) {
    std::vector<uint8_t> pixels(size_t(n) * 784), labels(n);
    for (int i = 0; i < n; ++i) {
      int c = cls(rng);
      labels[i] = uint8_t(c);
      uint8_t* img = pixels.data() + size_t(i) * 784;
      for (int k = 0; k < 784; ++k) img[k] = uint8_t(noise(rng));
      int y0 = 3 + (c / 5) * 13 + jitter(rng), x0 = 2 + (c % 5) * 5 + jitter(rng);
      for (int y = y0; y < y0 + 6; ++y)
        for (int x = x0; x < x0 + 4; ++x) img[y * 28 + x] = 255;
    }
    std::string ext = gz ? ".gz" : "";
    write_bytes(dir / (prefix + "-images-idx3-ubyte" + ext), idx_images(n, 28, 28, pixels), gz);
    write_bytes(dir / (prefix + "-labels-idx1-ubyte" + ext), idx_labels(labels), gz);
  };
  make(n_train, "train");
  make(n_test, "t10k");
}

// A run directory as training leaves it: config.yaml, the given metrics.csv, and summary.json
// with `final_runs` as the final inference runs (none: an unfinished run, no summary).
inline std::filesystem::path write_run(const std::filesystem::path& dir, const std::string& method,
                                       const std::string& embedding, long long seed, const std::string& metrics_csv,
                                       const std::vector<double>& final_runs) {
  std::filesystem::create_directories(dir);
  Config c;
  c.method = method, c.embedding = embedding, c.seed = seed;
  write_file_atomic(dir / "config.yaml", to_yaml(c));
  write_file_atomic(dir / "metrics.csv", metrics_csv);
  if (!final_runs.empty()) {
    std::string runs;
    for (double v : final_runs) runs += (runs.empty() ? "" : ", ") + std::to_string(v);
    write_file_atomic(dir / "summary.json", "{\"test_accuracy_runs\": [" + runs + "], \"peak_rss_mb\": 321.4}\n");
  }
  return dir;
}

// A small, fast configuration for tests on the synthetic data.
inline Config tiny_config(const std::filesystem::path& data_dir) {
  Config c;
  c.dataset = "mnist";
  c.data_dir = data_dir.string();
  c.architecture = "seed";
  c.num_layers = 3;
  c.batch_size = 64;
  c.epochs = 2;
  c.threads = 1;
  c.inference_runs = 2;
  c.eval_batch_size = 256;
  return c;
}

// An 8×8 one-channel, 4-class data shape for method-level tests on random tensors.
inline DataInfo tiny_info() { return DataInfo{"mnist", 1, 8, 8, 4, {0.0}, {1.0}}; }

// A small configuration of `method` (seed architecture, T = 3) for method-level tests.
inline Config tiny_method_config(const std::string& method) {
  Config c;
  c.method = method;
  c.num_layers = 3;
  c.architecture = "seed";
  c.threads = 1;
  return c;
}

}  // namespace noprop::test
