#include "noprop/image.h"

#include <stb/stb_image.h>
#include <stb/stb_image_write.h>

#include <memory>

#include "noprop/util.h"

namespace fs = std::filesystem;

namespace noprop {
namespace {
constexpr int64_t kMaxImagePixels = int64_t(1) << 26;  // 8192 × 8192
}  // namespace

std::vector<uint8_t> read_image(const fs::path& file, const DataInfo& info, bool invert) {
  std::string bytes = read_text_file(file);
  // Only the formats documented (stb also decodes GIF, TGA, PSD, HDR and PIC: less exposure).
  auto starts = [&](const char* magic, std::size_t n) {
    return bytes.size() >= n && bytes.compare(0, n, magic, n) == 0;
  };
  const bool pnm = starts("P5", 2) || starts("P6", 2);
  if (!(starts("\x89PNG", 4) || pnm || starts("\xFF\xD8", 2) || starts("BM", 2)))
    throw Error(file.string() + ": cannot decode image: not a PNG, binary PGM/PPM, JPEG or BMP file");
  int w = 0, h = 0, n = 0;
  // Refuse absurd sizes from the header before stb allocates for them.
  const auto* data = reinterpret_cast<const stbi_uc*>(bytes.data());
  if (!stbi_info_from_memory(data, int(bytes.size()), &w, &h, &n))
    throw Error(file.string() + ": cannot decode image: " + stbi_failure_reason());
  // The sides first: the byte count below multiplies them, which must not overflow (a fuzzer's
  // find: PPM sides too long for stb's int parser came back negative). stb can also yield 0, and
  // stbi_load reads the same header, so its sides need no second check.
  if (w <= 0 || h <= 0)
    throw Error(file.string() + ": image has no pixels (its header gives " + std::to_string(w) + "x" +
                std::to_string(h) + ")");
  if (int64_t(w) * h > kMaxImagePixels)
    throw Error(file.string() + ": image is " + std::to_string(w) + "x" + std::to_string(h) + ", larger than " +
                std::to_string(kMaxImagePixels) + " pixels");
  // PGM/PPM pixels are stored raw: stb reads past the end of a file shorter than its header says.
  const int sample = pnm && stbi_is_16_bit_from_memory(data, int(bytes.size())) ? 2 : 1;
  if (pnm && int64_t(bytes.size()) < int64_t(w) * h * n * sample)
    throw Error(file.string() + ": truncated: the header claims " + std::to_string(w) + "x" + std::to_string(h) +
                " pixels, the file has " + std::to_string(bytes.size()) + " bytes");
  // stb converts to the requested channel count (luminance for 1) and reports failures.
  std::unique_ptr<stbi_uc, decltype(&stbi_image_free)> pixels(
      stbi_load_from_memory(data, int(bytes.size()), &w, &h, &n, info.channels), &stbi_image_free);
  if (!pixels) throw Error(file.string() + ": cannot decode image: " + stbi_failure_reason());
  const int c = info.channels;
  // HWC bytes → 1×C×H×W floats, resized, rounded back to bytes as the data sets store them.
  auto img =
      torch::from_blob(pixels.get(), {h, w, c}, torch::kUInt8).permute({2, 0, 1}).to(torch::kFloat32).unsqueeze(0);
  if (h != info.height || w != info.width) {
    namespace F = torch::nn::functional;
    const bool shrink = h >= info.height && w >= info.width;
    auto opt = F::InterpolateFuncOptions().size(std::vector<int64_t>{info.height, info.width});
    try {
      img = F::interpolate(img, shrink ? opt.mode(torch::kArea) : opt.mode(torch::kBilinear).align_corners(false));
    } catch (const c10::Error& e) {
      const std::string what = e.what_without_backtrace();
      throw Error(file.string() + ": cannot resize the " + std::to_string(w) + "x" + std::to_string(h) +
                  " image: " + what.substr(0, what.find('\n')));
    }
  }
  img = img.round().clamp(0, 255);
  if (invert) img = 255 - img;
  auto out = img.to(torch::kUInt8).contiguous();
  return std::vector<uint8_t>(out.data_ptr<uint8_t>(), out.data_ptr<uint8_t>() + out.numel());
}

void write_png(const fs::path& file, const uint8_t* chw, int channels, int height, int width) {
  std::vector<uint8_t> hwc(std::size_t(channels) * height * width);
  const std::size_t plane = std::size_t(height) * width;
  for (int ch = 0; ch < channels; ++ch)
    for (std::size_t i = 0; i < plane; ++i) hwc[i * channels + ch] = chw[ch * plane + i];
  std::string png;
  auto append = [](void* ctx, void* data, int size) {
    static_cast<std::string*>(ctx)->append(static_cast<const char*>(data), std::size_t(size));
  };
  if (!stbi_write_png_to_func(append, &png, width, height, channels, hwc.data(), width * channels))
    throw Error(file.string() + ": cannot encode PNG");
  write_file_atomic(file, png);
}

}  // namespace noprop
