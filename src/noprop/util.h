// Small helpers shared by every part of the library: the error type, checked file I/O,
// and string utilities. Deliberately free of torch so that it stays cheap to include.
#pragma once

#include <cstdio>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

namespace noprop {

// Every user-facing failure (bad file, bad config, bad flag) is an Error whose message is
// one line naming the file or key; the program prints it and exits non-zero.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Training stopped by SIGINT or SIGTERM after writing a resumable checkpoint; the program
// exits with 128 + signal.
struct Interrupted : Error {
  Interrupted(const std::string& what, int sig) : Error(what), signal(sig) {}
  int signal;
};

// A file written through a temporary file in the same directory, flushed and renamed into
// place by commit(), so readers never see a half-written file; destroyed uncommitted (an
// exception on the way), it leaves nothing behind. Errors name `path`.
class AtomicFile {
 public:
  explicit AtomicFile(const std::filesystem::path& path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  void write(const void* data, std::size_t n);
  void commit();

 private:
  std::filesystem::path path_, tmp_;
  std::FILE* f_ = nullptr;
  bool ok_ = true;
  int err_ = 0;
};

// Writes `contents` to `path` through an AtomicFile.
void write_file_atomic(const std::filesystem::path& path, const std::string& contents);

// Whole file into memory; throws Error naming the file on failure.
std::string read_text_file(const std::filesystem::path& path);

// "a, b, c".
std::string join(const std::vector<std::string>& parts, const std::string& sep = ", ");

// Edit distance counting a swap of neighbouring characters as one edit (optimal string
// alignment), for "did you mean" suggestions.
std::size_t edit_distance(const std::string& a, const std::string& b);

// The candidate closest to `word`, or "" when none is close enough to be a plausible typo.
std::string closest_match(const std::string& word, const std::vector<std::string>& candidates);

// Current time as 20261127-184501, for run directory names.
std::string timestamp_now();

}  // namespace noprop
