// IDX images and labels (raw or gzip).
#include "fuzz_common.h"
#include "noprop/data.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto path = noprop::fuzz::input_file("input-idx", data, size);
  noprop::fuzz::expect_clean([&] { noprop::read_idx_images(path); });
  noprop::fuzz::expect_clean([&] { noprop::read_idx_labels(path, 10); });
  return 0;
}
