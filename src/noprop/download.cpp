#include "noprop/download.h"

#include "noprop/datasets.h"

#ifdef NOPROP_WITH_DOWNLOAD
#include <archive.h>
#include <archive_entry.h>
#include <curl/curl.h>
#include <openssl/evp.h>
#endif
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <set>

#include "noprop/util.h"

namespace noprop {
namespace fs = std::filesystem;

#ifdef NOPROP_WITH_DOWNLOAD
namespace {

using Clock = std::chrono::steady_clock;
using File = std::unique_ptr<FILE, int (*)(FILE*)>;

// Incremental MD5 through OpenSSL 3's EVP interface (the low-level MD5_* calls are deprecated).
class Md5 {
 public:
  Md5() : ctx_(EVP_MD_CTX_new(), EVP_MD_CTX_free) {
    if (!ctx_ || EVP_DigestInit_ex(ctx_.get(), EVP_md5(), nullptr) != 1)
      throw Error("OpenSSL provides no MD5 (FIPS mode?): cannot verify downloads");
  }
  void update(const void* p, std::size_t n) { EVP_DigestUpdate(ctx_.get(), p, n); }
  std::string hex() {
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned n = 0;
    EVP_DigestFinal_ex(ctx_.get(), d, &n);
    static const char digits[] = "0123456789abcdef";
    std::string s;
    for (unsigned i = 0; i < n; ++i) s += {digits[d[i] >> 4], digits[d[i] & 15]};
    return s;
  }

 private:
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx_;
};

// A temporary file that is removed when it goes out of scope unless it was renamed into place,
// so that no failure path, exceptions included, leaves a partial file behind.
struct TempFile {
  fs::path path;
  bool kept = false;
  ~TempFile() {
    std::error_code ec;
    if (!kept) fs::remove(path, ec);
  }
  void rename_to(const fs::path& target) {
    std::error_code ec;
    fs::rename(path, target, ec);
    if (ec) throw Error(target.string() + ": cannot rename into place: " + ec.message());
    kept = true;
  }
};

std::string pid_suffix() { return std::to_string(::getpid()); }

// A run killed mid-download (SIGKILL, or Ctrl-C outside training) leaves name.part.<pid>; remove
// those whose process is gone, but not a live process's that is downloading the same file.
void remove_stale_parts(const fs::path& folder, const std::string& name) {
  const std::string prefix = name + ".part.";
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(folder, ec)) {
    std::string f = e.path().filename().string();
    if (f.rfind(prefix, 0) != 0) continue;
    std::string pid = f.substr(prefix.size());
    if (pid.empty() || pid.size() > 9 || pid.find_first_not_of("0123456789") != std::string::npos) continue;
    if (::kill(pid_t(std::stol(pid)), 0) != 0 && errno == ESRCH) fs::remove(e.path(), ec);
  }
}

// Messages must stay on one line; libcurl's error buffer occasionally ends in a newline.
std::string one_line(std::string s) {
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s;
}

// State shared with libcurl's callbacks for one transfer. Callbacks must not throw through C
// code, so a local failure (disk full, write error) is recorded here and thrown afterwards.
struct Transfer {
  CURL* curl = nullptr;
  FILE* out = nullptr;
  fs::path part;
  std::string name;
  Md5 md5;
  bool space_checked = false;
  std::string local_error;
  curl_off_t bytes = 0, total = 0;
  // Progress: a TTY gets a line rewritten in place twice a second; a log gets a line every 5 s.
  bool progress = false, tty = false, printed = false;
  Clock::time_point last = Clock::now();

  void print(bool final) {
    char line[256];
    if (total > 0)
      std::snprintf(line, sizeof line, "%s: %.1f / %.1f MB (%d%%)", name.c_str(), double(bytes) / 1e6,
                    double(total) / 1e6, int(100 * bytes / total));
    else
      std::snprintf(line, sizeof line, "%s: %.1f MB", name.c_str(), double(bytes) / 1e6);
    if (tty)
      std::fprintf(stderr, "\r%s%s", line, final ? "\n" : "");
    else
      std::fprintf(stderr, "%s\n", line);
    printed = true;
  }
};

// Free bytes where `dir` lives; NOPROP_FREE_BYTES overrides it (tests), as for checkpoints.
double free_bytes(const fs::path& dir) {
  if (const char* env = std::getenv("NOPROP_FREE_BYTES")) return std::atof(env);
  std::error_code ec;
  auto info = fs::space(dir, ec);
  return ec ? -1.0 : double(info.available);
}

std::size_t on_data(char* p, std::size_t size, std::size_t n, void* user) {
  auto& t = *static_cast<Transfer*>(user);
  std::size_t len = size * n;
  if (!t.space_checked) {
    // The headers are in by the first body byte: fail before filling the disk when the server
    // says how large the file is (without a Content-Length there is nothing to check).
    t.space_checked = true;
    curl_off_t expected = -1;
    curl_easy_getinfo(t.curl, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &expected);
    if (expected > 0) t.total = expected;
    double avail = free_bytes(t.part.parent_path());
    if (expected > 0 && avail >= 0 && double(expected) > avail) {
      char buf[160];
      std::snprintf(buf, sizeof buf, ": only %.1f MB free, %s needs %.1f MB", avail / 1e6, t.name.c_str(),
                    double(expected) / 1e6);
      t.local_error = t.part.parent_path().string() + buf;
      return 0;  // any count but len aborts the transfer (CURL_WRITEFUNC_ERROR needs curl 7.87)
    }
  }
  if (std::fwrite(p, 1, len, t.out) != len) {
    t.local_error = t.part.string() + ": write failed: " + std::strerror(errno);
    return 0;
  }
  t.md5.update(p, len);
  t.bytes += curl_off_t(len);
  return len;
}

int on_progress(void* user, curl_off_t dltotal, curl_off_t, curl_off_t, curl_off_t) {
  auto& t = *static_cast<Transfer*>(user);
  if (dltotal > 0) t.total = dltotal;
  auto now = Clock::now();
  if (now - t.last >= (t.tty ? std::chrono::milliseconds(500) : std::chrono::milliseconds(5000))) {
    t.last = now;
    t.print(false);
  }
  return 0;
}

// One attempt at one URL into `part`. Returns "" when the file arrived with the right MD5, else
// why this mirror failed. Throws Error for local failures that no other mirror would fix.
std::string fetch(const std::string& url, const fs::path& part, const DownloadFile& f, const DownloadOptions& opt) {
  File out(std::fopen(part.c_str(), "wb"), std::fclose);
  if (!out) throw Error(part.string() + ": cannot write: " + std::strerror(errno));
  std::unique_ptr<CURL, void (*)(CURL*)> curl(curl_easy_init(), curl_easy_cleanup);
  if (!curl) throw Error("libcurl cannot create a transfer for " + url);
  Transfer t;
  t.curl = curl.get(), t.out = out.get(), t.part = part, t.name = f.name;
  t.progress = opt.progress, t.tty = ::isatty(STDERR_FILENO) == 1;
  char errbuf[CURL_ERROR_SIZE] = "";
  CURL* c = curl.get();
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &t);
  curl_easy_setopt(c, CURLOPT_FAILONERROR, 1L);  // an HTTP error page is not the file
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(c, CURLOPT_MAXREDIRS, 10L);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, opt.connect_timeout_s);
  // A dead transfer (no byte for stall_timeout_s) fails over instead of hanging forever; no
  // overall timeout, since a slow but moving link should finish.
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, opt.stall_timeout_s);
  curl_easy_setopt(c, CURLOPT_USERAGENT, "noprop");
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);  // no SIGALRM for DNS timeouts: we may be threaded
  curl_easy_setopt(c, CURLOPT_NOPROGRESS, opt.progress ? 0L : 1L);
  curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
  curl_easy_setopt(c, CURLOPT_XFERINFODATA, &t);
  CURLcode rc = curl_easy_perform(c);
  // No fsync before the rename: a file damaged by a crash fails its MD5 on the next run and is
  // downloaded again.
  int closed = std::fclose(out.release());
  if (!t.local_error.empty()) throw Error(t.local_error);
  if (closed != 0) throw Error(part.string() + ": write failed: " + std::strerror(errno));
  if (t.progress && (rc == CURLE_OK || t.printed)) t.print(true);
  if (rc == CURLE_HTTP_RETURNED_ERROR) {
    long code = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    return "HTTP " + std::to_string(code);
  }
  if (rc != CURLE_OK) return one_line(errbuf[0] ? errbuf : curl_easy_strerror(rc));
  std::string got = t.md5.hex();
  if (got != f.md5) return "MD5 mismatch: got " + got + ", expected " + f.md5;
  return "";
}

// Copies the regular-file members of `archive` whose basename is in `wanted` to to/<basename>.
// Entry paths are only compared, never used as paths, so entries like "../x", absolute names or
// links cannot write outside `to`. Returns the basenames extracted.
std::set<std::string> extract_members(const fs::path& archive, const std::set<std::string>& wanted,
                                      const fs::path& to) {
  std::unique_ptr<struct archive, int (*)(struct archive*)> a(archive_read_new(), archive_read_free);
  if (!a) throw Error(archive.string() + ": libarchive cannot allocate a reader");
  archive_read_support_filter_all(a.get());
  archive_read_support_format_all(a.get());
  auto fail = [&](const std::string& what) {
    const char* msg = archive_error_string(a.get());
    throw Error(archive.string() + ": " + what + ": " + one_line(msg ? msg : "unknown error"));
  };
  if (archive_read_open_filename(a.get(), archive.c_str(), 1 << 16) != ARCHIVE_OK) fail("cannot open archive");
  std::set<std::string> found;
  std::vector<char> buf(1 << 20);
  for (;;) {
    archive_entry* e = nullptr;
    int r = archive_read_next_header(a.get(), &e);
    if (r == ARCHIVE_EOF) break;
    if (r < ARCHIVE_WARN) fail("corrupt archive");
    const char* path = archive_entry_pathname(e);
    if (archive_entry_filetype(e) != AE_IFREG || !path) continue;
    std::string base = path;
    base = base.substr(base.find_last_of('/') + 1);
    if (!wanted.count(base)) continue;
    TempFile tmp{to / (base + ".tmp." + pid_suffix())};
    File out(std::fopen(tmp.path.c_str(), "wb"), std::fclose);
    if (!out) throw Error(tmp.path.string() + ": cannot write: " + std::strerror(errno));
    la_ssize_t n;
    while ((n = archive_read_data(a.get(), buf.data(), buf.size())) > 0)
      if (std::fwrite(buf.data(), 1, std::size_t(n), out.get()) != std::size_t(n))
        throw Error(tmp.path.string() + ": write failed: " + std::strerror(errno));
    if (n < 0) fail("corrupt member " + std::string(path));
    if (std::fclose(out.release()) != 0) throw Error(tmp.path.string() + ": write failed: " + std::strerror(errno));
    tmp.rename_to(to / base);
    found.insert(base);
  }
  return found;
}

std::once_flag curl_init_once;
CURLcode curl_init_result = CURLE_OK;

}  // namespace

std::string md5_hex(const std::string& bytes) {
  Md5 md5;
  md5.update(bytes.data(), bytes.size());
  return md5.hex();
}

std::string md5_hex_of_file(const fs::path& p) {
  File f(std::fopen(p.c_str(), "rb"), std::fclose);
  if (!f) throw Error(p.string() + ": cannot open: " + std::strerror(errno));
  Md5 md5;
  std::vector<char> buf(1 << 20);
  std::size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), f.get())) > 0) md5.update(buf.data(), n);
  if (std::ferror(f.get())) throw Error(p.string() + ": read failed: " + std::strerror(errno));
  return md5.hex();
}
#endif  // NOPROP_WITH_DOWNLOAD

std::vector<std::string> download_datasets() {
  std::vector<std::string> names;
  for (const auto& s : dataset_specs())
    if (!s.download.mirrors.empty() && s.download.dataset == s.name) names.push_back(s.name);
  return names;
}

DownloadSource download_source(const std::string& dataset) {
  for (const auto& s : dataset_specs())
    if (s.name == dataset && !s.download.mirrors.empty()) return s.download;
  std::string hint = closest_match(dataset, download_datasets());
  throw Error("unknown data set '" + dataset + "'" + (hint.empty() ? "" : " (did you mean '" + hint + "'?)") +
              "; known: " + join(download_datasets()));
}

#ifndef NOPROP_WITH_DOWNLOAD
// Built with -DNOPROP_DOWNLOAD=OFF (no libcurl, libarchive or OpenSSL, e.g. on a bare GPU machine).
[[noreturn]] static void not_built(const std::string& what) {
  throw Error(what +
              ": this noprop was built without downloads (cmake -DNOPROP_DOWNLOAD=ON needs libcurl, "
              "libarchive and OpenSSL); copy the data files by hand");
}
std::string md5_hex(const std::string&) { not_built("md5"); }
std::string md5_hex_of_file(const fs::path& p) { not_built(p.string()); }
fs::path download_dataset(const DownloadSource& src, const fs::path& dir, const DownloadOptions&) {
  not_built("cannot download the " + src.dataset + " data set into " + (dir / src.subdir).string());
}
#else
fs::path download_dataset(const DownloadSource& src, const fs::path& dir, const DownloadOptions& opt) {
  std::call_once(curl_init_once, [] { curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT); });
  if (curl_init_result != CURLE_OK)
    throw Error(std::string("libcurl cannot start: ") + curl_easy_strerror(curl_init_result));
  const fs::path folder = dir / src.subdir;
  std::error_code ec;
  fs::create_directories(folder, ec);
  if (ec) throw Error(folder.string() + ": cannot create: " + ec.message());
  // Extracted members are renamed into place, so present means whole: nothing to do, even when
  // the archive has been deleted since.
  const fs::path out = dir / src.extract_dir;
  if (!src.extract.empty() && std::all_of(src.extract.begin(), src.extract.end(),
                                          [&](const std::string& m) { return fs::is_regular_file(out / m, ec); }))
    return out;
  std::vector<std::string> mirrors = opt.extra_mirrors;
  mirrors.insert(mirrors.end(), src.mirrors.begin(), src.mirrors.end());
  if (mirrors.empty()) throw Error("the " + src.dataset + " data set has no mirror to download from");

  // A file already there with the right MD5 (an earlier run, or copied by hand) is kept.
  std::vector<const DownloadFile*> todo;
  for (const auto& f : src.files) {
    fs::path p = folder / f.name;
    if (fs::exists(p, ec)) {
      std::string got = md5_hex_of_file(p);
      if (got == f.md5) continue;
      std::fprintf(stderr, "noprop: %s: MD5 %s, expected %s; downloading it again\n", p.c_str(), got.c_str(),
                   f.md5.c_str());
    }
    todo.push_back(&f);
  }

  for (std::size_t i = 0; i < todo.size(); ++i) {
    const DownloadFile& f = *todo[i];
    remove_stale_parts(folder, f.name);
    std::vector<std::string> failures;
    bool done = false;
    for (std::size_t m = 0; m < mirrors.size() && !done; ++m) {
      const std::string url = mirrors[m] + f.name;
      TempFile part{folder / (f.name + ".part." + pid_suffix())};
      std::string why = fetch(url, part.path, f, opt);
      if (why.empty()) {
        part.rename_to(folder / f.name);
        done = true;
      } else {
        if (m + 1 < mirrors.size())
          std::fprintf(stderr, "noprop: %s: %s; trying the next mirror\n", url.c_str(), why.c_str());
        failures.push_back(url + ": " + why);
      }
    }
    if (done) continue;
    // Offline, or every mirror broken: say exactly what to fetch by hand and where to put it.
    std::vector<std::string> names, sums;
    for (std::size_t j = i; j < todo.size(); ++j) {
      names.push_back(todo[j]->name);
      sums.push_back(todo[j]->name + " " + todo[j]->md5);
    }
    const std::string& first = src.mirrors.empty() ? mirrors.front() : src.mirrors.front();
    fs::remove(folder, ec);  // only if empty: a folder this call created and left nothing in
    throw Error("cannot download the " + src.dataset + " data set: " + join(failures, "; ") + "; download " +
                join(names) + " by hand from " + first + " into " + folder.string() + " (MD5s: " + join(sums) +
                ") and run the command again");
  }

  if (src.extract.empty()) return folder;
  std::set<std::string> wanted(src.extract.begin(), src.extract.end()), found;
  fs::create_directories(out, ec);
  if (ec) throw Error(out.string() + ": cannot create: " + ec.message());
  std::vector<std::string> archives;
  for (const auto& f : src.files) {
    if (opt.progress) std::fprintf(stderr, "noprop: extracting %s into %s\n", f.name.c_str(), out.c_str());
    found.merge(extract_members(folder / f.name, wanted, out));
    archives.push_back((folder / f.name).string());
  }
  std::vector<std::string> missing;
  for (const auto& name : src.extract)
    if (!found.count(name)) missing.push_back(name);
  if (!missing.empty())
    throw Error(join(archives) + ": the archive lacks " + join(missing) + " (the " + src.dataset + " data set needs " +
                join(src.extract) + ")");
  return out;
}
#endif  // NOPROP_WITH_DOWNLOAD

}  // namespace noprop
