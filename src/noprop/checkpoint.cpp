#include "noprop/checkpoint.h"

#include <zlib.h>

#include <cstring>
#include <sstream>

#include "noprop/util.h"

namespace noprop {
namespace {

const char* kFormat = "noprop-checkpoint";
constexpr char kTrailerMagic[8] = {'N', 'P', 'C', 'K', 'S', 'U', 'M', '1'};
constexpr std::size_t kTrailerSize = 8 + 8 + 4;  // magic, archive length, CRC-32 (little endian)

// The first line of an exception's message (c10::Error without its backtrace).
std::string first_line(const std::exception& e) {
  const auto* c10e = dynamic_cast<const c10::Error*>(&e);
  std::string what = c10e ? c10e->what_without_backtrace() : e.what();
  return what.substr(0, what.find('\n'));
}

// CRC-32 continued over n more bytes (zlib takes at most 4 GB a call); start from crc32_start().
uLong crc32_update(uLong crc, const void* data, std::size_t n) {
  for (std::size_t i = 0; i < n;) {
    const uInt chunk = uInt(std::min<std::size_t>(n - i, 1u << 30));
    crc = crc32(crc, static_cast<const Bytef*>(data) + i, chunk);
    i += chunk;
  }
  return crc;
}
uLong crc32_start() { return crc32(0L, Z_NULL, 0); }

void append_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(char((v >> (8 * i)) & 0xff));
}

uint64_t read_le(const char* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= uint64_t(uint8_t(p[i])) << (8 * i);
  return v;
}

torch::serialize::InputArchive open_archive(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) throw Error(path.string() + ": no such checkpoint file");
  std::string bytes = read_text_file(path);
  torch::serialize::InputArchive ar;
  // LibTorch's archive importer is not hardened (a malformed archive can crash it), so no byte
  // reaches it before the checksum has been verified.
  if (bytes.size() < kTrailerSize ||
      std::memcmp(bytes.data() + bytes.size() - kTrailerSize, kTrailerMagic, sizeof kTrailerMagic) != 0)
    throw Error(path.string() +
                ": not a readable checkpoint (no checksum trailer: truncated, corrupt, or not written "
                "by noprop format " +
                std::to_string(kCheckpointVersion) + ")");
  const char* t = bytes.data() + bytes.size() - kTrailerSize;
  const std::size_t body = bytes.size() - kTrailerSize;
  if (read_le(t + 8, 8) != body)
    throw Error(path.string() + ": checkpoint length does not match its trailer (truncated or corrupt)");
  if (uint32_t(read_le(t + 16, 4)) != uint32_t(crc32_update(crc32_start(), bytes.data(), body)))
    throw Error(path.string() + ": checkpoint checksum mismatch (the file is corrupt)");
  try {
    ar.load_from(bytes.data(), body);
  } catch (const std::exception&) {  // c10::Error, and the TorchScript parser's own errors
    throw Error(path.string() + ": not a readable checkpoint (truncated or corrupt)");
  }
  return ar;
}

c10::IValue read_value(torch::serialize::InputArchive& ar, const std::filesystem::path& path, const char* key) {
  c10::IValue v;
  if (!ar.try_read(key, v)) throw Error(path.string() + ": checkpoint lacks '" + key + "'");
  return v;
}

int64_t read_int(torch::serialize::InputArchive& ar, const std::filesystem::path& path, const char* key) {
  auto v = read_value(ar, path, key);
  if (!v.isInt()) throw Error(path.string() + ": checkpoint field '" + key + "' is not an integer");
  return v.toInt();
}

double read_double(torch::serialize::InputArchive& ar, const std::filesystem::path& path, const char* key) {
  auto v = read_value(ar, path, key);
  if (!v.isDouble()) throw Error(path.string() + ": checkpoint field '" + key + "' is not a number");
  return v.toDouble();
}

std::string read_string(torch::serialize::InputArchive& ar, const std::filesystem::path& path, const char* key) {
  auto v = read_value(ar, path, key);
  if (!v.isString()) throw Error(path.string() + ": checkpoint field '" + key + "' is not a string");
  return v.toStringRef();
}

TrainingState read_state_fields(torch::serialize::InputArchive& ar, const std::filesystem::path& path) {
  auto format = read_value(ar, path, "format");
  if (!format.isString() || format.toStringRef() != kFormat) throw Error(path.string() + ": not a noprop checkpoint");
  auto version = read_int(ar, path, "format_version");
  if (version != kCheckpointVersion)
    throw Error(path.string() + ": checkpoint format version " + std::to_string(version) + ", this program reads " +
                std::to_string(kCheckpointVersion));
  TrainingState s;
  s.epoch = read_int(ar, path, "epoch");
  s.step = read_int(ar, path, "step");
  s.best_test_accuracy = read_double(ar, path, "best_test_accuracy");
  s.best_epoch = read_int(ar, path, "best_epoch");
  s.config_yaml = read_string(ar, path, "config");
  s.config_name = read_string(ar, path, "config_name");
  if (s.epoch < 0 || s.step < 0) throw Error(path.string() + ": checkpoint has a negative epoch or step");
  c10::IValue v;
  if (ar.try_read("in_epoch_batches", v)) {
    if (!v.isInt() || v.toInt() < 0) throw Error(path.string() + ": checkpoint field 'in_epoch_batches' is invalid");
    s.in_epoch_batches = v.toInt();
    s.pass = read_int(ar, path, "in_epoch_pass");
    s.samples = read_int(ar, path, "samples");
    s.skipped = read_int(ar, path, "skipped");
    s.train_seconds = read_double(ar, path, "train_seconds");
    for (auto [key, t] :
         {std::pair{"permutation", &s.permutation}, {"loss_sums", &s.loss_sums}, {"loss_counts", &s.loss_counts}})
      if (!ar.try_read(key, *t)) throw Error(path.string() + ": checkpoint lacks '" + key + "'");
  }
  return s;
}

// Metadata, with anything LibTorch throws on a malformed archive turned into one line.
TrainingState read_state(torch::serialize::InputArchive& ar, const std::filesystem::path& path) {
  try {
    return read_state_fields(ar, path);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(path.string() + ": malformed checkpoint (" + first_line(e) + ")");
  }
}

}  // namespace

void save_checkpoint(const std::filesystem::path& path, Method& method, const TrainingState& s) {
  torch::serialize::OutputArchive ar;
  ar.write("format", c10::IValue(std::string(kFormat)));
  ar.write("format_version", c10::IValue(kCheckpointVersion));
  ar.write("epoch", c10::IValue(s.epoch));
  ar.write("step", c10::IValue(s.step));
  ar.write("best_test_accuracy", c10::IValue(s.best_test_accuracy));
  ar.write("best_epoch", c10::IValue(s.best_epoch));
  ar.write("config", c10::IValue(s.config_yaml));
  ar.write("config_name", c10::IValue(s.config_name));
  if (s.in_epoch_batches >= 0) {
    ar.write("in_epoch_batches", c10::IValue(s.in_epoch_batches));
    ar.write("in_epoch_pass", c10::IValue(s.pass));
    ar.write("samples", c10::IValue(s.samples));
    ar.write("skipped", c10::IValue(s.skipped));
    ar.write("train_seconds", c10::IValue(s.train_seconds));
    ar.write("permutation", s.permutation.cpu());
    ar.write("loss_sums", s.loss_sums.cpu());
    ar.write("loss_counts", s.loss_counts.cpu());
  }
  ar.write("rng_cpu", torch::globalContext().defaultGenerator(torch::kCPU).get_state());
  if (torch::cuda::is_available())
    ar.write("rng_cuda", torch::globalContext().defaultGenerator(torch::Device(torch::kCUDA, 0)).get_state());
  torch::serialize::OutputArchive m;
  method.save(m);
  ar.write("method", m);
  // Straight to the file, the checksum computed on the way: no copy of the model in memory
  // (an in-memory archive and its copies were up to three times the weights and optimizer state).
  AtomicFile file(path);
  uint64_t body = 0;
  uLong crc = crc32_start();
  ar.save_to([&](const void* data, std::size_t n) -> std::size_t {
    file.write(data, n);
    crc = crc32_update(crc, data, n);
    body += n;
    return n;
  });
  std::string trailer(kTrailerMagic, sizeof kTrailerMagic);
  append_le(trailer, body, 8);
  append_le(trailer, uint32_t(crc), 4);
  file.write(trailer.data(), trailer.size());
  file.commit();
}

TrainingState read_checkpoint_state(const std::filesystem::path& path) {
  auto ar = open_archive(path);
  return read_state(ar, path);
}

TrainingState load_checkpoint(const std::filesystem::path& path, Method& method, bool restore_rng) {
  auto ar = open_archive(path);
  auto s = read_state(ar, path);
  try {
    torch::serialize::InputArchive m;
    ar.read("method", m);
    method.load(m);
  } catch (const std::exception& e) {
    throw Error(path.string() + ": checkpoint does not match the configured model (" + first_line(e) + ")");
  }
  if (restore_rng) {
    torch::Tensor state;
    if (!ar.try_read("rng_cpu", state)) throw Error(path.string() + ": checkpoint lacks the RNG state");
    at::Generator cpu = torch::globalContext().defaultGenerator(torch::kCPU);  // a handle to the global one
    try {
      cpu.set_state(state);
    } catch (const c10::Error&) {
      throw Error(path.string() + ": checkpoint's RNG state is malformed");
    }
    if (torch::cuda::is_available() && ar.try_read("rng_cuda", state)) {
      at::Generator cuda = torch::globalContext().defaultGenerator(torch::Device(torch::kCUDA, 0));
      cuda.set_state(state);
    }
  }
  return s;
}

}  // namespace noprop
