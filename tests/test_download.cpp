// The downloader against a small HTTP/1.1 server run inside the test on 127.0.0.1, which serves
// each path well or in one of the ways real mirrors fail. No test touches the network or any
// downloaded data.
#include <archive.h>
#include <archive_entry.h>
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdlib>
#include <fstream>
#include <future>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "noprop/download.h"
#include "noprop/util.h"

using namespace noprop;
namespace fs = std::filesystem;

namespace {

enum class Mode { good, truncated, corrupt, missing, stall };

struct Resource {
  std::string body;
  Mode mode = Mode::good;
};

// Serves `files` (path → resource) on an ephemeral port, one thread per connection, one response
// per connection (Connection: close).
class HttpServer {
 public:
  explicit HttpServer(std::map<std::string, Resource> files) : files_(std::move(files)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd_, 16) != 0 ||
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
      throw std::runtime_error("test server: cannot listen on 127.0.0.1");
    port_ = ntohs(addr.sin_port);
    acceptor_ = std::thread([this] { serve(); });
  }

  ~HttpServer() {
    {
      std::lock_guard<std::mutex> lock(m_);
      stopping_ = true;
    }
    cv_.notify_all();            // releases stalled responses
    ::shutdown(fd_, SHUT_RDWR);  // makes the blocked accept() return
    acceptor_.join();            // after this nobody adds workers
    for (auto& t : workers_) t.join();
    ::close(fd_);
  }

  // Base URL of a "mirror": every path served lives under some prefix.
  std::string mirror(const std::string& prefix) const {
    return "http://127.0.0.1:" + std::to_string(port_) + "/" + prefix + "/";
  }

  int hits(const std::string& path) {
    std::lock_guard<std::mutex> lock(m_);
    return hits_[path];
  }

 private:
  void serve() {
    for (;;) {
      int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) {
        if (errno == EINTR) continue;
        return;  // shut down
      }
      std::lock_guard<std::mutex> lock(m_);
      workers_.emplace_back([this, c] {
        respond(c);
        ::close(c);
      });
    }
  }

  static void send_all(int c, const std::string& s) {
    for (std::size_t off = 0; off < s.size();) {
      ssize_t n = ::send(c, s.data() + off, s.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return;  // the client gave up
      off += std::size_t(n);
    }
  }

  void respond(int c) {
    std::string request;
    char buf[4096];
    while (request.find("\r\n\r\n") == std::string::npos) {
      ssize_t n = ::recv(c, buf, sizeof buf, 0);
      if (n <= 0) return;
      request.append(buf, std::size_t(n));
    }
    // "GET /path HTTP/1.1"
    std::size_t a = request.find(' ') + 1, b = request.find(' ', a);
    std::string path = request.substr(a, b - a);
    Resource r{"not found", Mode::missing};
    {
      std::lock_guard<std::mutex> lock(m_);
      ++hits_[path];
      if (auto it = files_.find(path); it != files_.end()) r = it->second;
    }
    if (r.mode == Mode::missing) {
      send_all(c, "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found");
      return;
    }
    std::string head = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: " +
                       std::to_string(r.body.size()) + "\r\nConnection: close\r\n\r\n";
    std::string half = r.body.substr(0, r.body.size() / 2);
    switch (r.mode) {
      case Mode::good:
        send_all(c, head + r.body);
        break;
      case Mode::corrupt:
        r.body[r.body.size() / 3] ^= 0x55;
        send_all(c, head + r.body);
        break;
      case Mode::truncated:
        send_all(c, head + half);
        break;
      case Mode::stall: {
        send_all(c, head + half);
        std::unique_lock<std::mutex> lock(m_);
        cv_.wait(lock, [this] { return stopping_; });
        break;
      }
      case Mode::missing:
        break;
    }
  }

  std::map<std::string, Resource> files_;
  int fd_ = -1;
  int port_ = 0;
  std::thread acceptor_;
  std::vector<std::thread> workers_;
  std::mutex m_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::map<std::string, int> hits_;
};

std::string random_bytes(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& ch : s) ch = char(rng() & 0xff);
  return s;
}

void write_file(const fs::path& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// Every file under `root`, relative to it.
std::set<std::string> files_under(const fs::path& root) {
  std::set<std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(root))
    if (!e.is_directory()) out.insert(fs::relative(e.path(), root).string());
  return out;
}

// A source named "toy" whose files are `bodies` (name → bytes) with their MD5s.
DownloadSource toy(std::vector<std::string> mirrors, const std::map<std::string, std::string>& bodies) {
  DownloadSource s;
  s.dataset = "toy";
  s.subdir = "toy";
  s.mirrors = std::move(mirrors);
  for (const auto& [name, body] : bodies) s.files.push_back({name, md5_hex(body)});
  return s;
}

class DownloadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static int counter = 0;
    dir = fs::temp_directory_path() / ("noprop-dl-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    fs::remove_all(dir);
    fs::create_directories(dir);
    opt.progress = false;
    opt.connect_timeout_s = 5;
    opt.stall_timeout_s = 2;
  }
  void TearDown() override { fs::remove_all(dir); }
  fs::path dir;
  DownloadOptions opt;
};

}  // namespace

TEST_F(DownloadTest, Md5MatchesPublishedTestVectors) {
  EXPECT_EQ(md5_hex(""), "d41d8cd98f00b204e9800998ecf8427e");
  EXPECT_EQ(md5_hex("The quick brown fox jumps over the lazy dog"), "9e107d9d372bb6826bd81d3542a419d6");
  write_file(dir / "fox", "The quick brown fox jumps over the lazy dog");
  EXPECT_EQ(md5_hex_of_file(dir / "fox"), "9e107d9d372bb6826bd81d3542a419d6");
  // Longer than the 1 MiB read buffer; value from coreutils md5sum.
  write_file(dir / "a", std::string(3000000, 'a'));
  EXPECT_EQ(md5_hex_of_file(dir / "a"), "99ddc9a3a46ea62c95652bdf937a1fb8");
  auto msg = error_of([&] { md5_hex_of_file(dir / "absent"); });
  EXPECT_NE(msg.find((dir / "absent").string()), std::string::npos) << msg;
}

TEST_F(DownloadTest, GoodMirrorDownloadsEveryFileWithProgress) {
  std::string one = random_bytes(1500000, 1), two = random_bytes(3000, 2);
  HttpServer server({{"/m/one.bin", {one}}, {"/m/two.bin", {two}}});
  opt.progress = true;  // stderr is captured, hence not a TTY: plain lines
  testing::internal::CaptureStderr();
  fs::path got = download_dataset(toy({server.mirror("m")}, {{"one.bin", one}, {"two.bin", two}}), dir, opt);
  std::string err = testing::internal::GetCapturedStderr();
  EXPECT_EQ(got, dir / "toy");
  EXPECT_EQ(read_text_file(dir / "toy" / "one.bin"), one);
  EXPECT_EQ(read_text_file(dir / "toy" / "two.bin"), two);
  EXPECT_EQ(files_under(dir), (std::set<std::string>{"toy/one.bin", "toy/two.bin"}));  // no .part left
  EXPECT_NE(err.find("one.bin: 1.5 / 1.5 MB (100%)\n"), std::string::npos) << err;
  EXPECT_NE(err.find("two.bin: 0.0 / 0.0 MB (100%)\n"), std::string::npos) << err;
}

std::string mode_name(Mode m) {
  const char* names[] = {"good", "truncated", "corrupt", "missing", "stall"};
  return names[int(m)];
}

class BadMirrorTest : public DownloadTest, public ::testing::WithParamInterface<std::pair<Mode, std::string>> {};

// Each way a mirror fails: alone it is an Error and leaves nothing behind; followed by a good
// mirror it is a warning and the good copy arrives.
TEST_P(BadMirrorTest, FailsOverToTheNextMirror) {
  auto [mode, reason] = GetParam();
  std::string body = random_bytes(200000, 3);
  HttpServer server({{"/bad/f.bin", {body, mode}}, {"/good/f.bin", {body}}});
  const std::string bad = server.mirror("bad");

  // Both runs at once, into separate folders: curl notices a stall only after its speed window
  // (about 5 s) plus stall_timeout_s, and concurrent downloads must not disturb each other.
  auto alone = std::async(std::launch::async, [&] {
    return error_of([&] { download_dataset(toy({bad}, {{"f.bin", body}}), dir / "alone", opt); });
  });
  testing::internal::CaptureStderr();
  download_dataset(toy({bad, server.mirror("good")}, {{"f.bin", body}}), dir / "failover", opt);
  std::string err = testing::internal::GetCapturedStderr();
  std::string msg = alone.get();

  EXPECT_NE(msg.find(bad + "f.bin: " + reason), std::string::npos) << msg;
  EXPECT_EQ(read_text_file(dir / "failover" / "toy" / "f.bin"), body);
  EXPECT_EQ(files_under(dir), std::set<std::string>{"failover/toy/f.bin"});  // no .part anywhere
  EXPECT_NE(err.find("noprop: " + bad + "f.bin: " + reason), std::string::npos) << err;
  EXPECT_NE(err.find("; trying the next mirror\n"), std::string::npos) << err;
  EXPECT_EQ(server.hits("/bad/f.bin"), 2);
  EXPECT_EQ(server.hits("/good/f.bin"), 1);
}

INSTANTIATE_TEST_SUITE_P(Modes, BadMirrorTest,
                         ::testing::Values(std::pair{Mode::truncated,
                                                     std::string("transfer closed with 100000 bytes remaining")},
                                           std::pair{Mode::corrupt, std::string("MD5 mismatch: got ")},
                                           std::pair{Mode::missing, std::string("HTTP 404")},
                                           std::pair{Mode::stall, std::string("Operation too slow")}),
                         [](const auto& info) { return mode_name(info.param.first); });

TEST_F(DownloadTest, EveryMirrorBadIsOneLineWithManualSteps) {
  std::string one = random_bytes(5000, 4), two = random_bytes(5000, 5);
  HttpServer server({{"/b/one.bin", {one, Mode::corrupt}}});
  const std::string a = server.mirror("a"), b = server.mirror("b");
  auto src = toy({a, b}, {{"one.bin", one}, {"two.bin", two}});
  testing::internal::CaptureStderr();
  auto msg = error_of([&] { download_dataset(src, dir, opt); });
  std::string err = testing::internal::GetCapturedStderr();
  EXPECT_EQ(err, "noprop: " + a + "one.bin: HTTP 404; trying the next mirror\n");  // none after the last
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  EXPECT_NE(msg.find("cannot download the toy data set"), std::string::npos) << msg;
  EXPECT_NE(msg.find(a + "one.bin: HTTP 404; " + b + "one.bin: MD5 mismatch: got "), std::string::npos) << msg;
  EXPECT_NE(msg.find(", expected " + md5_hex(one)), std::string::npos) << msg;
  EXPECT_NE(msg.find("download one.bin, two.bin by hand from " + a + " into " + (dir / "toy").string()),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("one.bin " + md5_hex(one) + ", two.bin " + md5_hex(two)), std::string::npos) << msg;
  EXPECT_NE(msg.find("and run the command again"), std::string::npos) << msg;
  EXPECT_EQ(files_under(dir), std::set<std::string>{});
  EXPECT_FALSE(fs::exists(dir / "toy"));  // not even the empty folder
}

TEST_F(DownloadTest, PresentFileWithRightMd5IsKept) {
  std::string body = random_bytes(5000, 6);
  HttpServer server({});  // 404 for everything
  fs::create_directories(dir / "toy");
  write_file(dir / "toy" / "f.bin", body);
  EXPECT_EQ(download_dataset(toy({server.mirror("m")}, {{"f.bin", body}}), dir, opt), dir / "toy");
  EXPECT_EQ(server.hits("/m/f.bin"), 0);
  EXPECT_EQ(read_text_file(dir / "toy" / "f.bin"), body);
}

TEST_F(DownloadTest, PresentFileWithWrongMd5IsReplaced) {
  std::string body = random_bytes(5000, 7);
  HttpServer server({{"/m/f.bin", {body}}});
  fs::create_directories(dir / "toy");
  write_file(dir / "toy" / "f.bin", "stale");
  testing::internal::CaptureStderr();
  download_dataset(toy({server.mirror("m")}, {{"f.bin", body}}), dir, opt);
  std::string err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("MD5 " + md5_hex("stale") + ", expected " + md5_hex(body) + "; downloading it again"),
            std::string::npos)
      << err;
  EXPECT_EQ(read_text_file(dir / "toy" / "f.bin"), body);
}

TEST_F(DownloadTest, StalePartFilesOfDeadProcessesAreRemoved) {
  std::string body = random_bytes(5000, 13);
  HttpServer server({{"/m/f.bin", {body}}});
  fs::create_directories(dir / "toy");
  const std::string dead = "f.bin.part.999999999";  // above Linux's pid_max: no such process
  const std::string alive = "f.bin.part." + std::to_string(::getppid());
  write_file(dir / "toy" / dead, "old");
  write_file(dir / "toy" / alive, "in progress elsewhere");
  download_dataset(toy({server.mirror("m")}, {{"f.bin", body}}), dir, opt);
  EXPECT_EQ(files_under(dir), (std::set<std::string>{"toy/f.bin", "toy/" + alive}));
}

TEST_F(DownloadTest, UnreachableMirrorsAndTheOfflineCase) {
  std::string body = random_bytes(5000, 8);
  HttpServer server({{"/m/f.bin", {body}}});
  const std::string refused = "http://127.0.0.1:1/";  // nothing listens on port 1
  testing::internal::CaptureStderr();
  download_dataset(toy({refused, server.mirror("m")}, {{"f.bin", body}}), dir, opt);
  testing::internal::GetCapturedStderr();
  EXPECT_EQ(read_text_file(dir / "toy" / "f.bin"), body);

  fs::remove_all(dir / "toy");
  testing::internal::CaptureStderr();
  auto msg = error_of([&] { download_dataset(toy({refused, "http://127.0.0.1:2/"}, {{"f.bin", body}}), dir, opt); });
  testing::internal::GetCapturedStderr();
  EXPECT_NE(msg.find(refused + "f.bin: "), std::string::npos) << msg;
  EXPECT_NE(msg.find("http://127.0.0.1:2/f.bin: "), std::string::npos) << msg;
  EXPECT_NE(msg.find("onnect"), std::string::npos) << msg;  // "Failed to connect ..." / "Couldn't connect ..."
  EXPECT_NE(msg.find("download f.bin by hand from " + refused + " into " + (dir / "toy").string()), std::string::npos)
      << msg;
  EXPECT_EQ(files_under(dir), std::set<std::string>{});
}

TEST_F(DownloadTest, ExtraMirrorsAreTriedFirst) {
  std::string body = random_bytes(5000, 9);
  HttpServer server({{"/extra/f.bin", {body}}, {"/cat/f.bin", {body}}});
  opt.extra_mirrors = {server.mirror("extra")};
  download_dataset(toy({server.mirror("cat")}, {{"f.bin", body}}), dir, opt);
  EXPECT_EQ(server.hits("/extra/f.bin"), 1);
  EXPECT_EQ(server.hits("/cat/f.bin"), 0);
}

TEST_F(DownloadTest, TooLittleFreeSpaceStopsBeforeWriting) {
  std::string body = random_bytes(300000, 10);
  HttpServer server({{"/m/f.bin", {body}}, {"/n/f.bin", {body}}});
  ::setenv("NOPROP_FREE_BYTES", "100000", 1);
  auto src = toy({server.mirror("m"), server.mirror("n")}, {{"f.bin", body}});
  auto msg = error_of([&] { download_dataset(src, dir, opt); });
  ::unsetenv("NOPROP_FREE_BYTES");
  EXPECT_NE(msg.find((dir / "toy").string() + ": only 0.1 MB free, f.bin needs 0.3 MB"), std::string::npos) << msg;
  EXPECT_EQ(server.hits("/n/f.bin"), 0);  // a full disk is not the mirror's fault
  EXPECT_EQ(files_under(dir), std::set<std::string>{});
}

namespace {
// A .tar.gz written with libarchive: regular files (name → bytes) plus one symlink entry.
std::string tar_gz(const fs::path& scratch, const std::vector<std::pair<std::string, std::string>>& files,
                   const std::string& symlink_name) {
  archive* a = archive_write_new();
  archive_write_add_filter_gzip(a);
  archive_write_set_format_pax_restricted(a);
  EXPECT_EQ(archive_write_open_filename(a, scratch.c_str()), ARCHIVE_OK);
  archive_entry* e = archive_entry_new();
  for (const auto& [name, bytes] : files) {
    archive_entry_clear(e);
    archive_entry_set_pathname(e, name.c_str());
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    archive_entry_set_size(e, la_int64_t(bytes.size()));
    archive_write_header(a, e);
    archive_write_data(a, bytes.data(), bytes.size());
  }
  archive_entry_clear(e);
  archive_entry_set_pathname(e, symlink_name.c_str());
  archive_entry_set_filetype(e, AE_IFLNK);
  archive_entry_set_perm(e, 0777);
  archive_entry_set_symlink(e, "/etc/passwd");
  archive_write_header(a, e);
  archive_entry_free(e);
  archive_write_close(a);
  archive_write_free(a);
  std::string out = read_text_file(scratch);
  fs::remove(scratch);
  return out;
}
}  // namespace

TEST_F(DownloadTest, ExtractsOnlyListedRegularMembersByBasename) {
  std::string batch = random_bytes(10000, 11), evil = random_bytes(100, 12);
  std::string tgz = tar_gz(dir / "scratch.tar.gz",
                           {{"cifar-10-batches-bin/data_batch_1.bin", batch},
                            {"cifar-10-batches-bin/readme.html", "<html>"},
                            {"../evil.bin", evil}},
                           "cifar-10-batches-bin/test_batch.bin");
  HttpServer server({{"/m/c.tar.gz", {tgz}}});
  auto src = toy({server.mirror("m")}, {{"c.tar.gz", tgz}});
  src.extract = {"data_batch_1.bin"};
  src.extract_dir = "batches";
  EXPECT_EQ(download_dataset(src, dir, opt), dir / "batches");
  EXPECT_EQ(read_text_file(dir / "batches" / "data_batch_1.bin"), batch);
  EXPECT_EQ(files_under(dir), (std::set<std::string>{"toy/c.tar.gz", "batches/data_batch_1.bin"}));
  EXPECT_FALSE(fs::exists(dir.parent_path() / "evil.bin"));

  // A second run finds everything in place, even without the archive: no request, same answer.
  fs::remove(dir / "toy" / "c.tar.gz");
  EXPECT_EQ(download_dataset(src, dir, opt), dir / "batches");
  EXPECT_EQ(server.hits("/m/c.tar.gz"), 1);

  // The symlink entry named test_batch.bin is not a regular file: missing, and said so.
  src.extract = {"data_batch_1.bin", "test_batch.bin"};
  src.extract_dir = "batches2";
  auto msg = error_of([&] { download_dataset(src, dir, opt); });
  EXPECT_NE(msg.find((dir / "toy" / "c.tar.gz").string() + ": the archive lacks test_batch.bin ("), std::string::npos)
      << msg;
  EXPECT_EQ(server.hits("/m/c.tar.gz"), 2);
  EXPECT_FALSE(fs::is_symlink(dir / "batches2" / "test_batch.bin"));
  EXPECT_EQ(files_under(dir / "batches2"), std::set<std::string>{"data_batch_1.bin"});
}

TEST(DownloadCatalogue, PublishedChecksumsAndUnknownNames) {
  auto mnist = download_source("mnist");
  ASSERT_EQ(mnist.files.size(), 4u);
  EXPECT_EQ(mnist.files[0].name, "train-images-idx3-ubyte.gz");
  EXPECT_EQ(mnist.files[0].md5, "f68b3c2dcbeaaa9fbdd348bbdeb94873");
  EXPECT_EQ(mnist.files[1].md5, "d53e105ee54ea40749a09fcbcd1e9432");
  EXPECT_EQ(mnist.files[2].md5, "9fb629c4189551a2d022fa330f9573f3");
  EXPECT_EQ(mnist.files[3].md5, "ec29112dd5afa0611ce80d1b7f02629c");
  EXPECT_EQ(mnist.subdir, "mnist");
  EXPECT_TRUE(mnist.extract.empty());
  auto fashion = download_source("fashion-mnist");
  ASSERT_EQ(fashion.files.size(), 4u);
  EXPECT_EQ(fashion.files[0].md5, "8d4fb7e6c68d591d4c3dfef9ec88bf0d");
  EXPECT_EQ(fashion.files[3].md5, "bb300cfdad3c16e7a12a480ee83cd310");
  auto c10 = download_source("cifar10");
  ASSERT_EQ(c10.files.size(), 1u);
  EXPECT_EQ(c10.files[0].md5, "c32a1d4ab5d03f1284b67883e8d87530");
  EXPECT_EQ(c10.extract.size(), 6u);
  EXPECT_EQ(c10.extract_dir, "cifar-10-batches-bin");
  auto c100 = download_source("cifar100");
  EXPECT_EQ(c100.files[0].md5, "03b5dce01913d631647c71ecec9e9cb8");
  EXPECT_EQ(c100.extract, (std::vector<std::string>{"train.bin", "test.bin"}));
  for (const auto& name : download_datasets())
    for (const auto& m : download_source(name).mirrors) EXPECT_EQ(m.back(), '/') << m;
  auto msg = error_of([] { download_source("mnits"); });
  EXPECT_NE(msg.find("unknown data set 'mnits' (did you mean 'mnist'?)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("mnist, fashion-mnist, cifar10, cifar100"), std::string::npos) << msg;
}
