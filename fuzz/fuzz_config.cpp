// YAML configs: every key, type and range check, then the relations between keys.
#include <string>

#include "fuzz_common.h"
#include "noprop/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  noprop::fuzz::expect_clean([&] {
    noprop::Config cfg;
    noprop::apply_yaml(cfg, std::string(reinterpret_cast<const char*>(data), size), "fuzz.yaml");
    noprop::validate(cfg);
    noprop::Config again;
    noprop::apply_yaml(again, noprop::to_yaml(cfg), "round-trip");
  });
  return 0;
}
