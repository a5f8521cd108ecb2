#include <limits.h>
#include <pwd.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "policy_internal.h"
#include "vecseal/policy/policy.h"

namespace vecseal::policy {
namespace internal {
namespace {

std::string Mode(mode_t mode) {
  char text[8];
  std::snprintf(text, sizeof text, "%04o", static_cast<unsigned>(mode & 07777));
  return text;
}

Status Untrusted(std::string message) {
  return Status(Code::kPermissionDenied, "file_untrusted", std::move(message));
}

Status CheckOne(const std::string& path, const struct stat& st, bool is_file) {
  uid_t euid = geteuid();
  if (st.st_uid != 0 && st.st_uid != euid) {
    std::string owners = euid == 0 ? std::string("root")
                                   : "root or the daemon's user (uid " + std::to_string(euid) + ")";
    return Untrusted(path + " is owned by uid " + std::to_string(st.st_uid) + ", not by " +
                     owners + "; run: chown root " + path);
  }
  // Others may write to a sticky directory such as /tmp, but cannot replace entries they do not
  // own, and the entry below is checked in turn.
  bool sticky_dir = !is_file && (st.st_mode & S_ISVTX);
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) && !sticky_dir) {
    return Untrusted(path + " is writable by group or others (mode " + Mode(st.st_mode) +
                     "); run: chmod go-w " + path);
  }
  return Status::Ok();
}

}  // namespace

Status CheckTrustedFileStat(const std::string& path, struct stat* file_stat) {
  std::unique_ptr<char, decltype(&free)> resolved(realpath(path.c_str(), nullptr), &free);
  if (!resolved) {
    int err = errno;
    return Status(err == ENOENT ? Code::kNotFound : Code::kUnavailable, "file_unreadable",
                  "cannot resolve " + path + ": " + std::strerror(err));
  }
  std::string current = resolved.get();
  bool is_file = true;
  while (true) {
    struct stat st;
    if (lstat(current.c_str(), &st) != 0) {
      int err = errno;
      return Status(err == ENOENT ? Code::kNotFound : Code::kUnavailable, "file_unreadable",
                    "cannot examine " + current + ": " + std::strerror(err));
    }
    if (is_file) {
      if (!S_ISREG(st.st_mode)) {
        return Untrusted(current + " is not a regular file; point the path at a regular file");
      }
      *file_stat = st;
    }
    VECSEAL_RETURN_IF_ERROR(CheckOne(current, st, is_file));
    if (current == "/") break;
    size_t slash = current.rfind('/');
    current = slash == 0 ? "/" : current.substr(0, slash);
    is_file = false;
  }
  return Status::Ok();
}

}  // namespace internal

Status CheckTrustedFile(const std::string& path) {
  struct stat st;
  return internal::CheckTrustedFileStat(path, &st);
}

}  // namespace vecseal::policy
