// LD_PRELOAD shim that makes write(2) and fdatasync(2) fail, on command, for files under one
// directory: the real daemon then meets EIO or a failed fdatasync on its real audit files, which
// no local file system can be made to produce on demand without device-mapper (not available in
// every CI container). Only the two libc entry points the audit library uses are wrapped.
//
//   VECSEAL_IOFAULT_DIR      faults apply to descriptors whose path starts with this
//   VECSEAL_IOFAULT_CONTROL  a file re-read when it changes, one rule per line:
//     write EIO | write ENOSPC | fdatasync EIO     that call fails with that errno
//     (empty or missing file: nothing fails)
#include <dlfcn.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>

namespace {

struct Faults {
  std::mutex mutex;
  struct stat seen {};
  bool have_seen = false;
  std::map<std::string, int> errno_of;  // call name -> errno
};

Faults& State() {
  static Faults faults;
  return faults;
}

int ParseErrno(const std::string& name) {
  if (name == "EIO") return EIO;
  if (name == "ENOSPC") return ENOSPC;
  if (name == "EROFS") return EROFS;
  return EIO;
}

void RefreshLocked(Faults& faults, const char* control) {
  struct stat now {};
  if (stat(control, &now) != 0) {
    faults.have_seen = false;
    faults.errno_of.clear();
    return;
  }
  if (faults.have_seen && now.st_ino == faults.seen.st_ino && now.st_size == faults.seen.st_size &&
      now.st_mtim.tv_sec == faults.seen.st_mtim.tv_sec &&
      now.st_mtim.tv_nsec == faults.seen.st_mtim.tv_nsec) {
    return;
  }
  faults.seen = now;
  faults.have_seen = true;
  faults.errno_of.clear();
  std::ifstream in(control);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::string call, code;
    if (words >> call >> code) faults.errno_of[call] = ParseErrno(code);
  }
}

// The errno that `call` on `fd` must fail with, or 0.
int FaultFor(const char* call, int fd) {
  const char* control = std::getenv("VECSEAL_IOFAULT_CONTROL");
  const char* dir = std::getenv("VECSEAL_IOFAULT_DIR");
  if (control == nullptr || dir == nullptr) return 0;
  int error = 0;
  {
    Faults& faults = State();
    std::lock_guard lock(faults.mutex);
    RefreshLocked(faults, control);
    const auto it = faults.errno_of.find(call);
    if (it == faults.errno_of.end()) return 0;
    error = it->second;
  }
  char path[4096];
  const std::string link = "/proc/self/fd/" + std::to_string(fd);
  const ssize_t n = readlink(link.c_str(), path, sizeof(path) - 1);
  if (n <= 0) return 0;
  path[n] = '\0';
  return std::strncmp(path, dir, std::strlen(dir)) == 0 ? error : 0;
}

template <typename F>
F Next(const char* name) {
  return reinterpret_cast<F>(dlsym(RTLD_NEXT, name));
}

}  // namespace

extern "C" __attribute__((visibility("default"))) ssize_t write(int fd, const void* data,
                                                                size_t size) {
  static const auto real = Next<ssize_t (*)(int, const void*, size_t)>("write");
  if (const int error = FaultFor("write", fd); error != 0) {
    errno = error;
    return -1;
  }
  return real(fd, data, size);
}

extern "C" __attribute__((visibility("default"))) int fdatasync(int fd) {
  static const auto real = Next<int (*)(int)>("fdatasync");
  if (const int error = FaultFor("fdatasync", fd); error != 0) {
    errno = error;
    return -1;
  }
  return real(fd);
}
