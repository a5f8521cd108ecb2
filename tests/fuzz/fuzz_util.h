// Shared by the fuzz targets: an invariant check that survives NDEBUG, and scratch files for the
// parsers whose public entry point takes a path.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <set>
#include <string>
#include <string_view>

#include "vecseal/core/status.h"

// A broken invariant is a finding: abort, so that libFuzzer saves the input as a crash.
#define VECSEAL_FUZZ_CHECK(condition, ...)                                            \
  do {                                                                                \
    if (!(condition)) {                                                               \
      std::fprintf(stderr, "fuzz invariant failed at %s:%d: %s\n", __FILE__, __LINE__, \
                   #condition);                                                       \
      std::fprintf(stderr, "  " __VA_ARGS__);                                         \
      std::fprintf(stderr, "\n");                                                     \
      std::abort();                                                                   \
    }                                                                                 \
  } while (0)

namespace vecseal::fuzz {

// A private directory for this process, on tmpfs when there is one. Removed at a normal exit;
// after a crash it stays, as part of the evidence.
inline const std::string& ScratchDir() {
  static const std::string dir = [] {
    const char* base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    std::string pattern = std::string(base) + "/vecseal-fuzz-XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) {
      std::perror("mkdtemp");
      std::abort();
    }
    return pattern;
  }();
  static const bool cleanup_registered = [] {
    return std::atexit([] {
      std::error_code ignored;
      std::filesystem::remove_all(ScratchDir(), ignored);
    }) == 0;
  }();
  (void)cleanup_registered;
  return dir;
}

// Replaces `name` in the scratch directory with `data`; returns its path.
inline std::string WriteScratchFile(const std::string& name, const uint8_t* data, size_t size) {
  const std::string path = ScratchDir() + "/" + name;
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  VECSEAL_FUZZ_CHECK(fd >= 0, "cannot create %s", path.c_str());
  size_t written = 0;
  while (written < size) {
    const ssize_t n = write(fd, data + written, size - written);
    VECSEAL_FUZZ_CHECK(n > 0, "cannot write %s", path.c_str());
    written += static_cast<size_t>(n);
  }
  close(fd);
  return path;
}

// An error from untrusted input must be typed: a known code, a snake_case reason and a sentence.
inline void CheckTypedError(const vecseal::Status& status, const std::set<std::string>& reasons) {
  VECSEAL_FUZZ_CHECK(!status.ok(), "expected an error");
  VECSEAL_FUZZ_CHECK(status.code() != vecseal::Code::kInternal, "kInternal from input: %s",
                     status.ToString().c_str());
  VECSEAL_FUZZ_CHECK(!status.message().empty(), "error without a message: %s",
                     status.reason().c_str());
  if (!reasons.empty()) {
    VECSEAL_FUZZ_CHECK(reasons.count(status.reason()) == 1, "unexpected reason: %s",
                       status.ToString().c_str());
  }
  for (char c : status.reason()) {
    VECSEAL_FUZZ_CHECK((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_',
                       "reason is not snake_case: %s", status.reason().c_str());
  }
}

}  // namespace vecseal::fuzz
