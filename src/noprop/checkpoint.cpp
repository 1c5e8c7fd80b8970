#include "noprop/checkpoint.h"

#include <sstream>

#include "noprop/util.h"

namespace noprop {
namespace {

const char* kFormat = "noprop-checkpoint";

torch::serialize::InputArchive open_archive(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) throw Error(path.string() + ": no such checkpoint file");
  torch::serialize::InputArchive ar;
  try {
    ar.load_from(path.string());
  } catch (const c10::Error&) {
    throw Error(path.string() + ": not a readable checkpoint (truncated or corrupt)");
  }
  return ar;
}

c10::IValue read_value(torch::serialize::InputArchive& ar, const std::filesystem::path& path, const char* key) {
  c10::IValue v;
  if (!ar.try_read(key, v)) throw Error(path.string() + ": checkpoint lacks '" + key + "'");
  return v;
}

TrainingState read_state(torch::serialize::InputArchive& ar, const std::filesystem::path& path) {
  auto format = read_value(ar, path, "format");
  if (!format.isString() || format.toStringRef() != kFormat) throw Error(path.string() + ": not a noprop checkpoint");
  auto version = read_value(ar, path, "format_version").toInt();
  if (version != kCheckpointVersion)
    throw Error(path.string() + ": checkpoint format version " + std::to_string(version) + ", this program reads " +
                std::to_string(kCheckpointVersion));
  TrainingState s;
  s.epoch = read_value(ar, path, "epoch").toInt();
  s.step = read_value(ar, path, "step").toInt();
  s.best_test_accuracy = read_value(ar, path, "best_test_accuracy").toDouble();
  s.best_epoch = read_value(ar, path, "best_epoch").toInt();
  s.config_yaml = read_value(ar, path, "config").toStringRef();
  s.config_name = read_value(ar, path, "config_name").toStringRef();
  c10::IValue v;
  if (ar.try_read("in_epoch_batches", v)) {
    s.in_epoch_batches = v.toInt();
    s.pass = read_value(ar, path, "in_epoch_pass").toInt();
    s.samples = read_value(ar, path, "samples").toInt();
    s.skipped = read_value(ar, path, "skipped").toInt();
    s.train_seconds = read_value(ar, path, "train_seconds").toDouble();
    for (auto [key, t] : {std::pair{"permutation", &s.permutation}, {"loss_sums", &s.loss_sums},
                          {"loss_counts", &s.loss_counts}})
      if (!ar.try_read(key, *t)) throw Error(path.string() + ": checkpoint lacks '" + key + "'");
  }
  return s;
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
  std::ostringstream out;
  ar.save_to(out);
  write_file_atomic(path, out.str());
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
  } catch (const c10::Error& e) {
    std::string what = e.what_without_backtrace();
    throw Error(path.string() + ": checkpoint does not match the configured model (" +
                what.substr(0, what.find('\n')) + ")");
  }
  if (restore_rng) {
    torch::Tensor state;
    if (!ar.try_read("rng_cpu", state)) throw Error(path.string() + ": checkpoint lacks the RNG state");
    at::Generator cpu = torch::globalContext().defaultGenerator(torch::kCPU);  // a handle to the global one
    cpu.set_state(state);
    if (torch::cuda::is_available() && ar.try_read("rng_cuda", state)) {
      at::Generator cuda = torch::globalContext().defaultGenerator(torch::Device(torch::kCUDA, 0));
      cuda.set_state(state);
    }
  }
  return s;
}

}  // namespace noprop
