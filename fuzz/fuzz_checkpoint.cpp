// Checkpoint files: trailer, checksum, archive and metadata.
#include "fuzz_common.h"
#include "noprop/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto path = noprop::fuzz::input_file("input.pt", data, size);
  noprop::fuzz::expect_clean([&] { noprop::read_checkpoint_state(path); });
  return 0;
}
