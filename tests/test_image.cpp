// Image files: PNG round trip, colour to grey as stb_image defines it, resizing, inversion,
// binary PGM, and one-line Errors for files that are not images.
#include <gtest/gtest.h>

#include <random>

#include "noprop/image.h"
#include "test_util.h"

using namespace noprop;
using namespace noprop::test;
namespace fs = std::filesystem;

namespace {
class ImageTest : public TempDirTest {};

std::vector<uint8_t> random_bytes(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = uint8_t(rng());
  return v;
}
}  // namespace

TEST_F(ImageTest, PngRoundTripIsExact) {
  for (const char* name : {"mnist", "cifar10"}) {
    auto info = dataset_info(name);
    auto pixels = random_bytes(std::size_t(info.channels) * info.height * info.width, 3);
    write_png(dir / "x.png", pixels.data(), info.channels, info.height, info.width);
    EXPECT_EQ(read_image(dir / "x.png", info), pixels) << name;
  }
}

TEST_F(ImageTest, ColourBecomesLuminanceAndGreyIsReplicated) {
  auto mnist = dataset_info("mnist"), cifar = dataset_info("cifar10");
  // A 28×28 colour image: R, G and B planes of constants.
  std::vector<uint8_t> rgb(3 * 28 * 28);
  std::fill(rgb.begin(), rgb.begin() + 784, 200);
  std::fill(rgb.begin() + 784, rgb.begin() + 2 * 784, 100);
  std::fill(rgb.begin() + 2 * 784, rgb.end(), 40);
  write_png(dir / "rgb.png", rgb.data(), 3, 28, 28);
  // stb_image's luminance: (77 R + 150 G + 29 B) >> 8 = (15400 + 15000 + 1160) >> 8 = 123.
  auto grey = read_image(dir / "rgb.png", mnist);
  ASSERT_EQ(grey.size(), 784u);
  EXPECT_EQ(grey[0], 123);
  EXPECT_EQ(grey[783], 123);
  // Grey into a three-channel data set (resized 28 → 32): every channel equal.
  std::vector<uint8_t> g(784, 77);
  write_png(dir / "g.png", g.data(), 1, 28, 28);
  auto three = read_image(dir / "g.png", cifar);
  EXPECT_EQ(three, std::vector<uint8_t>(3 * 32 * 32, 77));
}

TEST_F(ImageTest, ResizeAveragesAreasAndInvertFlips) {
  auto info = dataset_info("mnist");
  // 56×56 made of 2×2 cells whose four pixels are 10, 20, 30, 40: each averages to 25.
  std::vector<uint8_t> big(56 * 56);
  for (int y = 0; y < 56; ++y)
    for (int x = 0; x < 56; ++x) big[y * 56 + x] = uint8_t(10 * (1 + (y % 2) * 2 + (x % 2)));
  write_png(dir / "big.png", big.data(), 1, 56, 56);
  EXPECT_EQ(read_image(dir / "big.png", info), std::vector<uint8_t>(784, 25));
  EXPECT_EQ(read_image(dir / "big.png", info, /*invert=*/true), std::vector<uint8_t>(784, 230));
}

TEST_F(ImageTest, BinaryPgmIsRead) {
  auto info = dataset_info("mnist");
  auto pixels = random_bytes(784, 5);
  std::string pgm = "P5\n# a comment\n28 28\n255\n" + std::string(pixels.begin(), pixels.end());
  write_file_atomic(dir / "x.pgm", pgm);
  EXPECT_EQ(read_image(dir / "x.pgm", info), pixels);
}

TEST_F(ImageTest, NonImagesAreNamedErrors) {
  auto info = dataset_info("mnist");
  write_file_atomic(dir / "empty.png", "");
  EXPECT_NE(error_of([&] { read_image(dir / "empty.png", info); }).find("empty.png: cannot decode image"),
            std::string::npos);
  write_file_atomic(dir / "text.png", "hello, this is not an image");
  EXPECT_NE(error_of([&] { read_image(dir / "text.png", info); }).find("text.png: cannot decode image"),
            std::string::npos);
  auto pixels = random_bytes(784, 7);
  write_png(dir / "ok.png", pixels.data(), 1, 28, 28);
  auto png = read_text_file(dir / "ok.png");
  write_file_atomic(dir / "cut.png", png.substr(0, png.size() / 2));
  EXPECT_NE(error_of([&] { read_image(dir / "cut.png", info); }).find("cut.png: cannot decode image"),
            std::string::npos);
  EXPECT_NE(error_of([&] { read_image(dir / "none.png", info); }).find("none.png: cannot open"), std::string::npos);
  // A fuzzer's find: a PGM that stb decodes to 4×0 pixels, which LibTorch cannot resize.
  write_file_atomic(dir / "odd.pgm", std::string("P5\n4 \0\x13\n622", 11) + std::string(8, '\xff'));
  EXPECT_NE(error_of([&] { read_image(dir / "odd.pgm", info); }).find("odd.pgm: image has no pixels"),
            std::string::npos);
  // Another: a 16-bit PGM header claiming 888884×4 pixels over 5 bytes (stb read past the end).
  write_file_atomic(dir / "short.pgm", "P5\n888884\n4\n488\n\x01\x33");
  EXPECT_NE(
      error_of([&] { read_image(dir / "short.pgm", info); }).find("short.pgm: truncated: the header claims 888884x4"),
      std::string::npos);
  // Another: a PPM header whose sides overflow stb's int parser (to negative numbers): the byte
  // count computed from them overflowed before the size was checked.
  write_file_atomic(dir / "huge.ppm", std::string("P675555555555 032333442690\x01"
                                                  "3"));
  const auto huge = error_of([&] { read_image(dir / "huge.ppm", info); });
  EXPECT_NE(huge.find("huge.ppm: image has no pixels (its header gives -"), std::string::npos) << huge;
  write_file_atomic(dir / "x.gif", "GIF89a\x01\x00\x01\x00\x00\x00\x00;");
  EXPECT_NE(error_of([&] { read_image(dir / "x.gif", info); }).find("not a PNG, binary PGM/PPM, JPEG or BMP file"),
            std::string::npos);
}
