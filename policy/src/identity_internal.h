// What the /proc snapshot (peer_identity.cc) and the synthetic caller of --check-policy
// (synthetic_caller.cc) share: both must describe files exactly as the daemon does.
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <utility>

#include "vecseal/policy/identity.h"

namespace vecseal::policy::internal {

// Closes a file descriptor on scope exit.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&&) = delete;
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

// The canonical path of an open file, as the daemon sees it.
std::string PathOfFd(int fd);

// Whether the caller's credentials let it read `st`, by its mode bits (ACLs are not consulted, so
// an ACL-only grant reads as no). The daemon opens the script with its own rights; without this a
// caller could name any file on its command line and learn the file's digest from /v1/whoami.
bool MayRead(const CallerIdentity& id, const struct stat& st);

}  // namespace vecseal::policy::internal
