#include <gtest/gtest.h>

#include "noprop/data.h"
#include "noprop/util.h"
#include "test_util.h"

using namespace noprop;
using namespace noprop::test;
namespace fs = std::filesystem;

namespace {
class DataTest : public TempDirTest {};
}  // namespace

TEST_F(DataTest, ReadsIdxRawAndGzip) {
  std::vector<uint8_t> px{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
  write_bytes(dir / "a", idx_images(3, 2, 2, px));
  write_bytes(dir / "a.gz", idx_images(3, 2, 2, px), true);
  for (auto name : {"a", "a.gz"}) {
    auto img = read_idx_images(dir / name);
    EXPECT_EQ(img.count, 3);
    EXPECT_EQ(img.rows, 2);
    EXPECT_EQ(img.cols, 2);
    EXPECT_EQ(img.pixels, px);
  }
  write_bytes(dir / "l", idx_labels({3, 0, 9}));
  EXPECT_EQ(read_idx_labels(dir / "l", 10), (std::vector<uint8_t>{3, 0, 9}));
}

TEST_F(DataTest, IdxMalformedFilesAreNamedErrors) {
  auto expect_error = [&](const std::vector<uint8_t>& bytes, const std::string& what, bool images = true) {
    write_bytes(dir / "f", bytes);
    auto msg = error_of([&] { images ? (void)read_idx_images(dir / "f") : (void)read_idx_labels(dir / "f", 10); });
    EXPECT_NE(msg.find((dir / "f").string()), std::string::npos) << msg;
    EXPECT_NE(msg.find(what), std::string::npos) << "wanted '" << what << "' in: " << msg;
  };
  std::vector<uint8_t> px(8, 7);
  expect_error({}, "empty file");
  expect_error(idx_labels({1, 2}), "wrong magic");  // a label file read as images
  expect_error({0, 0, 8, 3, 0, 0}, "truncated header");
  auto truncated = idx_images(2, 2, 2, px);
  truncated.pop_back();
  expect_error(truncated, "truncated: header claims 8 data bytes, file has 7");
  auto trailing = idx_images(2, 2, 2, px);
  trailing.push_back(0);
  expect_error(trailing, "trailing bytes");
  expect_error(idx_images(0, 2, 2, {}), "holds no items");
  // A header claiming 2^31 images of 2^16 pixels is refused before any allocation.
  std::vector<uint8_t> huge;
  put_be32(huge, 0x803), put_be32(huge, 0x80000000u), put_be32(huge, 256), put_be32(huge, 256);
  expect_error(huge, "more data than");
  expect_error(idx_labels({1, 12}), "label 12 at index 1 is out of range 0..9", false);
}

TEST_F(DataTest, CorruptAndTruncatedGzip) {
  std::vector<uint8_t> raw(2000);
  for (size_t i = 0; i < raw.size(); ++i) raw[i] = uint8_t(i * 7);
  write_bytes(dir / "x.gz", idx_images(20, 10, 10, raw), true);
  std::vector<uint8_t> gz;
  {
    std::ifstream in(dir / "x.gz", std::ios::binary);
    gz.assign(std::istreambuf_iterator<char>(in), {});
  }
  auto cut = gz;
  cut.resize(gz.size() / 2);
  write_bytes(dir / "cut.gz", cut);
  auto msg = error_of([&] { read_idx_images(dir / "cut.gz"); });
  EXPECT_NE(msg.find("cut.gz: corrupt or truncated gzip"), std::string::npos) << msg;
  auto bad = gz;
  for (size_t i = 20; i < 40; ++i) bad[i] ^= 0x5a;
  write_bytes(dir / "bad.gz", bad);
  msg = error_of([&] { read_idx_images(dir / "bad.gz"); });
  EXPECT_NE(msg.find("bad.gz"), std::string::npos) << msg;
  msg = error_of([&] { read_idx_images(dir / "missing"); });
  EXPECT_NE(msg.find("no such file"), std::string::npos) << msg;
}

TEST_F(DataTest, LoadsMnistLayoutNormalised) {
  write_synthetic_mnist(dir, 50, 20, 3, /*gz=*/false);
  auto d = load_dataset("mnist", dir);
  EXPECT_EQ(d.train.size(), 50);
  EXPECT_EQ(d.test.size(), 20);
  EXPECT_EQ(d.train.images.sizes(), (std::vector<int64_t>{50, 1, 28, 28}));
  EXPECT_EQ(d.train.labels.dtype(), torch::kInt64);
  // A 255 pixel maps to (1 − 0.1307)/0.3081.
  EXPECT_NEAR(d.train.normalised().max().item<float>(), (1 - 0.1307) / 0.3081, 1e-5);
  auto raw = read_idx_images(dir / "train-images-idx3-ubyte");
  EXPECT_NEAR(d.train.normalised().view(-1)[100].item<float>(), (raw.pixels[100] / 255.0 - 0.1307) / 0.3081, 1e-5);
  // Held as the file's bytes; a batch taken by rows or by index is the same float32 values, bit
  // for bit, as normalising the whole set at once (what the data sets held before).
  EXPECT_EQ(d.train.images.scalar_type(), torch::kUInt8);
  EXPECT_TRUE(torch::equal(d.train.images.view(-1), torch::from_blob(raw.pixels.data(), {50 * 784}, torch::kUInt8)));
  const auto all = normalise_images(raw.pixels.data(), 50, d.info);
  EXPECT_TRUE(torch::equal(d.train.rows(7, 19), all.slice(0, 7, 19)));
  const auto idx = torch::tensor(std::vector<int64_t>{42, 3, 3, 17}, torch::kInt64);
  EXPECT_TRUE(torch::equal(d.train.select(idx), all.index_select(0, idx)));
  // Also found one folder down, under a conventional name.
  fs::create_directories(dir / "mnist");
  for (auto f :
       {"train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"})
    fs::rename(dir / f, dir / "mnist" / f);
  EXPECT_EQ(locate_dataset("mnist", dir), dir / "mnist");
  EXPECT_EQ(load_dataset("mnist", dir).test.size(), 20);
}

TEST_F(DataTest, ImageLabelCountMismatch) {
  write_synthetic_mnist(dir, 30, 10, 3, false);
  write_bytes(dir / "t10k-labels-idx1-ubyte", idx_labels({1, 2, 3}));
  auto msg = error_of([&] { load_dataset("mnist", dir); });
  EXPECT_NE(msg.find("t10k-labels-idx1-ubyte: has 3 labels but t10k-images-idx3-ubyte has 10 images"),
            std::string::npos)
      << msg;
}

TEST_F(DataTest, WrongImageSize) {
  write_synthetic_mnist(dir, 30, 10, 3, false);
  write_bytes(dir / "t10k-images-idx3-ubyte", idx_images(10, 2, 5, std::vector<uint8_t>(100)));
  auto msg = error_of([&] { load_dataset("mnist", dir); });
  EXPECT_NE(msg.find("images are 2x5, expected 28x28"), std::string::npos) << msg;
}

namespace {
std::vector<uint8_t> cifar_records(int n, bool c100, uint8_t label_base) {
  std::vector<uint8_t> v;
  for (int i = 0; i < n; ++i) {
    if (c100) v.push_back(uint8_t(i % 20));
    v.push_back(uint8_t((label_base + i) % (c100 ? 100 : 10)));
    for (int k = 0; k < 3072; ++k) v.push_back(uint8_t((k + i) % 256));
  }
  return v;
}
}  // namespace

TEST_F(DataTest, ReadsCifar10And100) {
  for (int b = 1; b <= 5; ++b)
    write_bytes(dir / ("data_batch_" + std::to_string(b) + ".bin"), cifar_records(4, false, b));
  write_bytes(dir / "test_batch.bin", cifar_records(3, false, 0));
  auto d = load_dataset("cifar10", dir);
  EXPECT_EQ(d.train.size(), 20);
  EXPECT_EQ(d.test.size(), 3);
  EXPECT_EQ(d.train.images.sizes(), (std::vector<int64_t>{20, 3, 32, 32}));
  EXPECT_EQ(d.train.labels[0].item<int64_t>(), 1);
  // Pixel k of record 0 in channel c is byte c·1024 + k: check one in the green plane.
  EXPECT_NEAR(d.test.normalised()[0][1][0][5].item<float>(), ((1024 + 5) % 256 / 255.0 - 0.4822) / 0.2435, 1e-5);
  // Each channel with its own statistics, from the bytes as stored.
  EXPECT_EQ(d.test.images[2][2][1][3].item<int>(), (2048 + 32 + 3 + 2) % 256);
  EXPECT_NEAR(d.test.rows(2, 3)[0][2][1][3].item<float>(), ((2048 + 32 + 3 + 2) % 256 / 255.0 - 0.4465) / 0.2616, 1e-5);

  fs::path c100 = dir / "cifar-100-binary";
  fs::create_directories(c100);
  write_bytes(c100 / "train.bin", cifar_records(7, true, 90));
  write_bytes(c100 / "test.bin", cifar_records(2, true, 0));
  auto e = load_dataset("cifar100", dir);
  EXPECT_EQ(e.train.size(), 7);
  EXPECT_EQ(e.train.labels[5].item<int64_t>(), 95);  // the fine label
  EXPECT_EQ(e.info.num_classes, 100);
  // The same files read with their superclasses: record i's coarse byte is i % 20.
  auto f = load_dataset("cifar100-coarse", dir);
  EXPECT_EQ(f.info.num_classes, 20);
  EXPECT_EQ(f.train.size(), 7);
  EXPECT_EQ(f.train.labels[5].item<int64_t>(), 5);
  EXPECT_TRUE(torch::equal(f.train.images, e.train.images));
  EXPECT_EQ(class_names("cifar100-coarse").size(), 20u);
}

TEST_F(DataTest, CifarMalformed) {
  auto rec = cifar_records(2, false, 0);
  rec.pop_back();
  write_bytes(dir / "t.bin", rec);
  auto msg = error_of([&] { read_cifar({dir / "t.bin"}, false); });
  EXPECT_NE(msg.find("t.bin: size 6145 is not a multiple of the 3073-byte record"), std::string::npos) << msg;
  rec = cifar_records(2, false, 0);
  rec[3073] = 10;
  write_bytes(dir / "t.bin", rec);
  msg = error_of([&] { read_cifar({dir / "t.bin"}, false); });
  EXPECT_NE(msg.find("label 10 of record 1 is out of range 0..9"), std::string::npos) << msg;
  write_bytes(dir / "e.bin", {});
  EXPECT_NE(error_of([&] { read_cifar({dir / "e.bin"}, true); }).find("e.bin: empty file"), std::string::npos);
  rec = cifar_records(1, true, 0);
  rec[0] = 25;
  write_bytes(dir / "c.bin", rec);
  EXPECT_NE(error_of([&] { read_cifar({dir / "c.bin"}, true); }).find("coarse label 25"), std::string::npos);
}

TEST_F(DataTest, MissingDataSetListsWhereItLooked) {
  auto msg = error_of([&] { load_dataset("cifar100", dir); });
  EXPECT_NE(msg.find("cifar100 not found (looked for train.bin[.gz], test.bin[.gz]"), std::string::npos) << msg;
  EXPECT_NE(error_of([&] { dataset_info("svhn"); }).find("unknown data set 'svhn'"), std::string::npos);
}

TEST(Data, ResolveDataDirOrder) {
  unsetenv("NOPROP_DATA");
  EXPECT_EQ(resolve_data_dir("mnist", "/x"), fs::path("/x"));
  EXPECT_EQ(resolve_data_dir("mnist", ""), fs::path("data"));
  setenv("NOPROP_DATA", "/from/env", 1);
  EXPECT_EQ(resolve_data_dir("mnist", ""), fs::path("/from/env"));
  unsetenv("NOPROP_DATA");
  EXPECT_EQ(resolve_data_dir("fashion-mnist", ""), fs::path("/usr/share/datasets"));
}

TEST(Data, AugmentCropsAndFlipsWithinBounds) {
  torch::manual_seed(5);
  auto img = torch::arange(2 * 3 * 8 * 8, torch::kFloat32).view({2, 3, 8, 8}).contiguous();
  auto out = img.clone();
  augment_batch(out, 0);  // no padding: only flips remain
  for (int i = 0; i < 2; ++i) {
    bool same = torch::equal(out[i], img[i]), flipped = torch::equal(out[i], img[i].flip({2}));
    EXPECT_TRUE(same || flipped);
  }
  out = img.clone();
  augment_batch(out, 4);
  // Every output pixel is either zero padding or a pixel of the same image and channel.
  for (int i = 0; i < 2; ++i)
    for (int c = 0; c < 3; ++c) {
      auto src = img[i][c].flatten();
      auto o = out[i][c].flatten();
      for (int k = 0; k < 64; ++k) {
        float v = o[k].item<float>();
        EXPECT_TRUE(v == 0 || (src == v).any().item<bool>());
      }
    }
}
