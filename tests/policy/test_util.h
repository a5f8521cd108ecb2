// Small helpers shared by the policy tests: temp directories and files, independent digests.
#pragma once

#include <sys/types.h>

#include <string>

namespace vecseal::policy::testing_util {

// A fresh 0700 directory under the test temp dir, removed (recursively) on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

void WriteFile(const std::string& path, const std::string& contents, mode_t mode = 0644);
std::string ReadFile(const std::string& path);
// SHA-256 of a file through OpenSSL's one-shot API, to check the resolver against.
std::string Sha256OfFile(const std::string& path);

}  // namespace vecseal::policy::testing_util
