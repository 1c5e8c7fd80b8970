#include "noprop/data.h"

#include "noprop/datasets.h"

#include <zlib.h>

#include <cstdlib>
#include <cstring>

#include "noprop/util.h"

namespace noprop {
namespace fs = std::filesystem;

namespace {

// Upper bound on a decompressed file: CIFAR-100 train is 150 MB, MNIST 47 MB.
constexpr std::size_t kMaxFileBytes = std::size_t(2) << 30;

[[noreturn]] void fail(const fs::path& p, const std::string& what) { throw Error(p.string() + ": " + what); }

// Reads a whole file, transparently gunzipping; truncated or corrupt gzip streams are errors.
std::vector<uint8_t> read_maybe_gz(const fs::path& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) fail(path, "no such file");
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) fail(path, std::string("cannot open: ") + std::strerror(errno));
  gzbuffer(f, 1 << 20);
  std::vector<uint8_t> out;
  std::vector<uint8_t> chunk(1 << 20);
  for (;;) {
    int n = gzread(f, chunk.data(), static_cast<unsigned>(chunk.size()));
    if (n < 0) {
      int code = 0;
      std::string msg = gzerror(f, &code);
      gzclose(f);
      fail(path, "corrupt or truncated gzip data (" + msg + ")");
    }
    if (n == 0) break;
    if (out.size() + n > kMaxFileBytes) {
      gzclose(f);
      fail(path, "larger than the 2 GiB a data file may have");
    }
    out.insert(out.end(), chunk.begin(), chunk.begin() + n);
  }
  int code = 0;
  const char* msg = gzerror(f, &code);
  if (code != Z_OK && code != Z_STREAM_END) {
    std::string m = msg;
    gzclose(f);
    fail(path, "corrupt or truncated gzip data (" + m + ")");
  }
  if (gzclose(f) != Z_OK) fail(path, "corrupt or truncated gzip data");
  return out;
}

uint32_t be32(const uint8_t* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

// An IDX file with the expected magic; returns its dimensions after checking the payload
// length against them.
std::vector<int64_t> idx_dims(const std::vector<uint8_t>& bytes, const fs::path& path, int ndims) {
  if (bytes.empty()) fail(path, "empty file");
  if (bytes.size() < 4) fail(path, "truncated header");
  uint32_t magic = be32(bytes.data());
  uint32_t expected = 0x00000800u | uint32_t(ndims);
  if (magic != expected) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "wrong magic 0x%08x (expected 0x%08x)", magic, expected);
    fail(path, buf);
  }
  std::size_t header = 4 + 4 * std::size_t(ndims);
  if (bytes.size() < header) fail(path, "truncated header");
  std::vector<int64_t> dims;
  uint64_t total = 1;
  for (int i = 0; i < ndims; ++i) {
    dims.push_back(be32(bytes.data() + 4 + 4 * i));
    total *= uint64_t(dims.back());
    if (total > kMaxFileBytes) fail(path, "header claims more data than a data file may have");
  }
  if (dims[0] == 0) fail(path, "holds no items");
  uint64_t have = bytes.size() - header;
  if (have < total)
    fail(path, "truncated: header claims " + std::to_string(total) + " data bytes, file has " + std::to_string(have));
  if (have > total)
    fail(path, "has " + std::to_string(have - total) + " trailing bytes after the data its header claims");
  return dims;
}

fs::path find_file(const fs::path& dir, const std::string& base) {
  for (const auto& cand : {dir / base, dir / (base + ".gz")}) {
    std::error_code ec;
    if (fs::is_regular_file(cand, ec)) return cand;
  }
  return {};
}

std::vector<std::string> required_files(const DatasetSpec& spec) {
  auto files = spec.train_files;
  files.insert(files.end(), spec.test_files.begin(), spec.test_files.end());
  return files;
}

bool has_all(const fs::path& dir, const DatasetSpec& spec) {
  for (const auto& f : required_files(spec))
    if (find_file(dir, f).empty()) return false;
  return true;
}

// A uint8 tensor that owns `bytes` (no copy).
torch::Tensor bytes_tensor(std::vector<uint8_t>&& bytes, at::IntArrayRef sizes) {
  auto* owner = new std::vector<uint8_t>(std::move(bytes));
  return torch::from_blob(
      owner->data(), sizes, [owner](void*) { delete owner; }, torch::kUInt8);
}

Dataset make_split(std::vector<uint8_t>&& pixels, int64_t count, std::vector<uint8_t> labels, const DataInfo& info) {
  auto lab = torch::from_blob(labels.data(), {int64_t(labels.size())}, torch::kUInt8).to(torch::kInt64);
  return make_dataset(bytes_tensor(std::move(pixels), {count, info.channels, info.height, info.width}), lab, info);
}

// Per channel, the float32 scale and shift of x/255·(1/std) − mean/std: one definition for the
// data sets and for normalise_images, so that both give the same bits.
void channel_affine(const DataInfo& info, std::vector<float>& scale, std::vector<float>& shift) {
  scale.resize(info.channels), shift.resize(info.channels);
  for (int c = 0; c < info.channels; ++c)
    scale[c] = float(1.0 / (255.0 * info.stddev[c])), shift[c] = float(info.mean[c] / info.stddev[c]);
}

void normalise_into(const uint8_t* pixels, int64_t n, int64_t channels, int64_t plane, const float* scale,
                    const float* shift, float* dst) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < channels; ++c) {
      const uint8_t* s = pixels + (i * channels + c) * plane;
      float* d = dst + (i * channels + c) * plane;
      const float a = scale[c], b = shift[c];
      for (int64_t k = 0; k < plane; ++k) d[k] = float(s[k]) * a - b;
    }
}

}  // namespace

DataInfo dataset_info(const std::string& name) {
  const auto& s = dataset_spec(name);
  return {s.name, s.channels, s.height, s.width, s.num_classes, s.mean, s.stddev};
}

std::vector<std::string> class_names(const std::string& name) {
  const auto& s = dataset_spec(name);
  if (!s.class_names.empty()) return s.class_names;
  std::vector<std::string> out;
  for (int i = 0; i < s.num_classes; ++i) out.push_back(std::to_string(i));
  return out;
}

IdxImages read_idx_images(const fs::path& path) {
  auto bytes = read_maybe_gz(path);
  auto dims = idx_dims(bytes, path, 3);
  if (dims[1] == 0 || dims[2] == 0) fail(path, "images have zero size");
  IdxImages out;
  out.count = dims[0], out.rows = dims[1], out.cols = dims[2];
  out.pixels.assign(bytes.begin() + 16, bytes.end());
  return out;
}

std::vector<uint8_t> read_idx_labels(const fs::path& path, int num_classes) {
  auto bytes = read_maybe_gz(path);
  idx_dims(bytes, path, 1);
  std::vector<uint8_t> labels(bytes.begin() + 8, bytes.end());
  for (std::size_t i = 0; i < labels.size(); ++i)
    if (labels[i] >= num_classes)
      fail(path, "label " + std::to_string(labels[i]) + " at index " + std::to_string(i) + " is out of range 0.." +
                     std::to_string(num_classes - 1));
  return labels;
}

CifarRecords read_cifar(const std::vector<fs::path>& files, bool cifar100, bool coarse) {
  const std::size_t label_bytes = cifar100 ? 2 : 1, pixels = 3 * 32 * 32, record = label_bytes + pixels;
  const int classes = cifar100 ? (coarse ? 20 : 100) : 10;
  CifarRecords out;
  for (const auto& path : files) {
    auto bytes = read_maybe_gz(path);
    if (bytes.empty()) fail(path, "empty file");
    if (bytes.size() % record != 0)
      fail(path, "size " + std::to_string(bytes.size()) + " is not a multiple of the " + std::to_string(record) +
                     "-byte record (truncated or not a CIFAR-" + (cifar100 ? "100" : "10") + " file)");
    std::size_t n = bytes.size() / record;
    for (std::size_t i = 0; i < n; ++i) {
      const uint8_t* r = bytes.data() + i * record;
      uint8_t label = cifar100 && coarse ? r[0] : r[label_bytes - 1];
      if (cifar100 && r[0] >= 20)
        fail(path,
             "coarse label " + std::to_string(r[0]) + " of record " + std::to_string(i) + " is out of range 0..19");
      if (label >= classes)
        fail(path, "label " + std::to_string(label) + " of record " + std::to_string(i) + " is out of range 0.." +
                       std::to_string(classes - 1));
      out.labels.push_back(label);
      out.pixels.insert(out.pixels.end(), r + label_bytes, r + record);
    }
    out.count += int64_t(n);
  }
  return out;
}

fs::path locate_dataset(const std::string& name, const fs::path& dir) {
  const auto& spec = dataset_spec(name);
  std::vector<fs::path> candidates{dir};
  for (const auto& s : spec.subfolders) candidates.push_back(dir / s);
  for (const auto& c : candidates)
    if (has_all(c, spec)) return c;
  std::vector<std::string> files;
  for (const auto& f : required_files(spec)) files.push_back(f + "[.gz]");
  throw Error(dir.string() + ": " + name + " not found (looked for " + join(files) + " in it and in its sub-folders " +
              join(spec.subfolders) + ")");
}

fs::path resolve_data_dir(const std::string& name, const std::string& explicit_dir) {
  if (!explicit_dir.empty()) return explicit_dir;
  if (const char* env = std::getenv("NOPROP_DATA"); env && *env) return env;
  const auto& spec = dataset_spec(name);
  if (spec.system_dir.empty()) return "data";
  try {
    locate_dataset(name, "data");
    return "data";
  } catch (const Error&) {
    return spec.system_dir;
  }
}

torch::Tensor normalise_images(const uint8_t* pixels, int64_t n, const DataInfo& info) {
  std::vector<float> scale, shift;
  channel_affine(info, scale, shift);
  auto out = torch::empty({n, info.channels, info.height, info.width}, torch::kFloat32);
  normalise_into(pixels, n, info.channels, int64_t(info.height) * info.width, scale.data(), shift.data(),
                 out.data_ptr<float>());
  return out;
}

Dataset make_dataset(torch::Tensor pixels, torch::Tensor labels, const DataInfo& info) {
  Dataset d{std::move(pixels), std::move(labels), {}, {}};
  channel_affine(info, d.scale, d.shift);
  return d;
}

torch::Tensor Dataset::normalise(const torch::Tensor& part) const {
  if (part.scalar_type() != torch::kUInt8) return part;
  TORCH_CHECK(part.dim() == 4 && int64_t(scale.size()) == part.size(1), "dataset: no normalisation for its images");
  if (!part.device().is_cpu()) {
    const auto opt = torch::TensorOptions().dtype(torch::kFloat32).device(part.device());
    const auto c = part.size(1);
    return part.to(torch::kFloat32) * torch::tensor(scale).to(opt).view({1, c, 1, 1}) -
           torch::tensor(shift).to(opt).view({1, c, 1, 1});
  }
  auto src = part.contiguous();
  auto out = torch::empty(src.sizes(), torch::kFloat32);
  normalise_into(src.data_ptr<uint8_t>(), src.size(0), src.size(1), src.size(2) * src.size(3), scale.data(),
                 shift.data(), out.data_ptr<float>());
  return out;
}

torch::Tensor Dataset::rows(int64_t begin, int64_t end) const { return normalise(images.slice(0, begin, end)); }

torch::Tensor Dataset::select(const torch::Tensor& index) const { return normalise(images.index_select(0, index)); }

DataSplits load_dataset(const std::string& name, const fs::path& dir) {
  const auto& spec = dataset_spec(name);
  DataSplits splits;
  splits.info = dataset_info(name);
  const auto& info = splits.info;
  const fs::path where = locate_dataset(name, dir);
  auto paths = [&](const std::vector<std::string>& files) {
    std::vector<fs::path> out;
    for (const auto& f : files) out.push_back(find_file(where, f));
    return out;
  };
  if (spec.layout != FileLayout::idx) {
    const bool c100 = spec.layout != FileLayout::cifar10, coarse = spec.layout == FileLayout::cifar100_coarse;
    auto tr = read_cifar(paths(spec.train_files), c100, coarse);
    auto te = read_cifar(paths(spec.test_files), c100, coarse);
    splits.train = make_split(std::move(tr.pixels), tr.count, std::move(tr.labels), info);
    splits.test = make_split(std::move(te.pixels), te.count, std::move(te.labels), info);
    return splits;
  }
  // IDX: each split's files are its images and its labels.
  auto load_idx = [&](const std::vector<std::string>& files) {
    const auto p = paths(files);
    const fs::path &ip = p.at(0), &lp = p.at(1);
    auto imgs = read_idx_images(ip);
    if (imgs.rows != info.height || imgs.cols != info.width)
      fail(ip, "images are " + std::to_string(imgs.rows) + "x" + std::to_string(imgs.cols) + ", expected " +
                   std::to_string(info.height) + "x" + std::to_string(info.width));
    auto labels = read_idx_labels(lp, info.num_classes);
    if (int64_t(labels.size()) != imgs.count)
      fail(lp, "has " + std::to_string(labels.size()) + " labels but " + ip.filename().string() + " has " +
                   std::to_string(imgs.count) + " images");
    return make_split(std::move(imgs.pixels), imgs.count, std::move(labels), info);
  };
  splits.train = load_idx(spec.train_files);
  splits.test = load_idx(spec.test_files);
  return splits;
}

void augment_batch(torch::Tensor& images, int pad) {
  TORCH_CHECK(images.dim() == 4 && images.is_contiguous() && images.device().is_cpu());
  const int64_t n = images.size(0), c = images.size(1), h = images.size(2), w = images.size(3);
  // One draw per sample: crop offsets in [0, 2·pad] and a flip bit.
  auto draws = torch::randint(0, 2 * pad + 1, {n, 2}, torch::kInt64);
  auto flips = torch::randint(0, 2, {n}, torch::kInt64);
  auto* d = draws.data_ptr<int64_t>();
  auto* fl = flips.data_ptr<int64_t>();
  std::vector<float> plane(h * w);
  float* base = images.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t dy = d[2 * i] - pad, dx = d[2 * i + 1] - pad;
    const bool flip = fl[i] != 0;
    for (int64_t ch = 0; ch < c; ++ch) {
      float* p = base + (i * c + ch) * h * w;
      std::copy(p, p + h * w, plane.begin());
      for (int64_t y = 0; y < h; ++y)
        for (int64_t x = 0; x < w; ++x) {
          const int64_t sy = y + dy, sx0 = x + dx;
          const int64_t sx = flip ? (w - 1 - x) + dx : sx0;
          p[y * w + x] = (sy >= 0 && sy < h && sx >= 0 && sx < w) ? plane[sy * w + sx] : 0.0f;
        }
    }
  }
}

}  // namespace noprop
