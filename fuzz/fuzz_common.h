// Shared by the libFuzzer targets: the readers take file paths, so each input is written to a
// file first. A noprop::Error (a clean one-line refusal) is the expected outcome for bad
// input; anything else — a crash, a sanitizer report, another exception — is a finding.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>

#include "noprop/util.h"

namespace noprop::fuzz {

inline std::filesystem::path input_file(const char* name, const uint8_t* data, size_t size) {
  static const std::filesystem::path dir = [] {
    auto d = std::filesystem::temp_directory_path() / ("noprop-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    return d;
  }();
  auto p = dir / name;
  FILE* f = std::fopen(p.c_str(), "wb");
  if (f) {
    std::fwrite(data, 1, size, f);
    std::fclose(f);
  }
  return p;
}

template <class F>
void expect_clean(F&& f) {
  try {
    f();
  } catch (const Error&) {
  }
}

}  // namespace noprop::fuzz
