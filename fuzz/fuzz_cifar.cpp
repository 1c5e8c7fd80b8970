// CIFAR-10 and CIFAR-100 binary batches.
#include "fuzz_common.h"
#include "noprop/data.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto path = noprop::fuzz::input_file("input-cifar", data, size);
  noprop::fuzz::expect_clean([&] { noprop::read_cifar({path}, false); });
  noprop::fuzz::expect_clean([&] { noprop::read_cifar({path}, true); });
  return 0;
}
