// Image files in and out, for `noprop predict` and `noprop data image`: PNG, binary PGM/PPM,
// JPEG and BMP decoded by stb_image (Debian's libstb; its other decoders are not exposed),
// conversion to a data set's channels and size, and PNG output of data-set images.
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

#include "noprop/data.h"

namespace noprop {

// Reads an image and converts it to the data set's pixels as the readers deliver them:
// info.channels × info.height × info.width bytes, channel-major. Colour becomes luminance for
// one-channel data sets (grey is replicated for three), and other sizes are resized (area
// averaging when shrinking, bilinear when enlarging; the aspect ratio is not kept). `invert`
// maps v to 255 − v: MNIST digits are light on dark, most photographed digits dark on light.
// Error naming the file when it cannot be read or decoded.
std::vector<uint8_t> read_image(const std::filesystem::path& file, const DataInfo& info, bool invert = false);

// Writes C×H×W bytes (C = 1 or 3, channel-major as the readers deliver them) as a PNG file,
// atomically.
void write_png(const std::filesystem::path& file, const uint8_t* chw, int channels, int height, int width);

}  // namespace noprop
