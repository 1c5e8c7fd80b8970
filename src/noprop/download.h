// Downloading the data sets: mirrors and published MD5s (each data set's spec), a libcurl
// downloader that falls back from mirror to mirror and never leaves a partial file behind, and
// libarchive extraction of the few members the readers need. Free of torch (it links libcurl,
// OpenSSL's libcrypto and libarchive only).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace noprop {

struct DownloadFile {
  std::string name;  // as on the server
  std::string md5;   // lower-case hex
};

struct DownloadSource {
  std::string dataset;               // "mnist", ...
  std::string subdir;                // folder created under the target directory for the files
  std::vector<std::string> mirrors;  // base URLs ending in '/', tried in order for each file
  std::vector<DownloadFile> files;
  // Archives (CIFAR): the member basenames to extract and the folder, next to subdir, they go
  // to. Empty: nothing to extract, the files are what the readers read.
  std::vector<std::string> extract;
  std::string extract_dir;
};

// The download of a registered data set (its DatasetSpec, datasets.h); an Error listing the
// data sets that have one otherwise.
DownloadSource download_source(const std::string& dataset);

// The data sets that have a download of their own, in registry order.
std::vector<std::string> download_datasets();

struct DownloadOptions {
  bool progress = true;  // progress on stderr
  long connect_timeout_s = 15;
  // A transfer receiving nothing for this long fails over to the next mirror (libcurl averages
  // the speed over about 5 s, so a stall is noticed that much later).
  long stall_timeout_s = 30;
  std::vector<std::string> extra_mirrors;  // tried before the catalogue's mirrors
};

// Downloads every file of `src` into dir/subdir (a file already there with the right MD5 is
// kept; nothing is fetched when the extracted members are all there), verifies each MD5 and
// extracts the archive members. Returns the folder the data set's
// readers should be pointed at: dir/subdir, or dir/extract_dir for archives. Throws Error when
// every mirror fails for a file; its message lists each URL with its reason and how to download
// the files by hand.
std::filesystem::path download_dataset(const DownloadSource& src, const std::filesystem::path& dir,
                                       const DownloadOptions& opt = {});

// Lower-case hex MD5 of a file's bytes; Error naming the file when it cannot be read.
std::string md5_hex_of_file(const std::filesystem::path& p);
std::string md5_hex(const std::string& bytes);

}  // namespace noprop
