// Image files for `noprop predict` (stb_image decoding, conversion and resizing).
#include "fuzz_common.h"
#include "noprop/image.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto path = noprop::fuzz::input_file("input-image", data, size);
  for (const char* name : {"mnist", "cifar10"})
    noprop::fuzz::expect_clean([&] { noprop::read_image(path, noprop::dataset_info(name)); });
  return 0;
}
