#include <limits.h>
#include <pwd.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

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

constexpr int kMaxSymlinks = 40;  // as the kernel's ELOOP limit

Status CheckSymlinkOwnersFrom(std::string path, int links) {
  if (path.empty() || path.front() != '/') {
    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof cwd) == nullptr) return Status::Ok();
    path = std::string(cwd) + "/" + path;
  }
  std::string prefix;
  size_t at = 1;
  while (at <= path.size()) {
    const size_t end = std::min(path.find('/', at), path.size());
    const std::string component = path.substr(at, end - at);
    at = end + 1;
    if (component.empty() || component == ".") continue;
    prefix += "/" + component;
    struct stat st;
    if (lstat(prefix.c_str(), &st) != 0) return Status::Ok();
    if (!S_ISLNK(st.st_mode)) continue;
    // Whoever may write the link's directory may replace the link.
    const std::string parent = prefix.substr(0, std::max<size_t>(prefix.rfind('/'), 1));
    struct stat parent_st;
    if (lstat(parent.c_str(), &parent_st) == 0) {
      VECSEAL_RETURN_IF_ERROR(CheckOne(parent, parent_st, /*is_file=*/false));
    }
    const uid_t euid = geteuid();
    if (st.st_uid != 0 && st.st_uid != euid) {
      return Untrusted(prefix + " is a symlink owned by uid " + std::to_string(st.st_uid) +
                       ", who decides where it points; use a path without it, or chown -h root " +
                       prefix);
    }
    if (++links > kMaxSymlinks) return Untrusted(path + " has too many levels of symlinks");
    char target[PATH_MAX];
    const ssize_t length = readlink(prefix.c_str(), target, sizeof target - 1);
    if (length < 0) return Status::Ok();
    std::string next(target, static_cast<size_t>(length));
    if (next.front() != '/') next = prefix.substr(0, prefix.rfind('/') + 1) + next;
    const std::string rest = at <= path.size() ? path.substr(at - 1) : std::string();
    return CheckSymlinkOwnersFrom(next + rest, links);
  }
  return Status::Ok();
}

}  // namespace

Status CheckTrustedFileStat(const std::string& path, struct stat* file_stat) {
  VECSEAL_RETURN_IF_ERROR(CheckSymlinkOwners(path));
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

Status CheckDirectoriesAbove(const std::string& directory) {
  std::unique_ptr<char, decltype(&free)> resolved(realpath(directory.c_str(), nullptr), &free);
  if (!resolved) return Status::Ok();  // the caller reports a missing directory itself
  std::string current = resolved.get();
  while (current != "/") {
    const size_t slash = current.rfind('/');
    current = slash == 0 ? "/" : current.substr(0, slash);
    struct stat st;
    if (lstat(current.c_str(), &st) != 0) continue;
    VECSEAL_RETURN_IF_ERROR(CheckOne(current, st, /*is_file=*/false));
  }
  return Status::Ok();
}

}  // namespace internal

Status CheckTrustedDirectory(const std::string& directory) {
  VECSEAL_RETURN_IF_ERROR(CheckSymlinkOwners(directory));
  return internal::CheckDirectoriesAbove(directory);
}

Status CheckTrustedFile(const std::string& path) {
  struct stat st;
  return internal::CheckTrustedFileStat(path, &st);
}

Status CheckSymlinkOwners(const std::string& path) {
  return internal::CheckSymlinkOwnersFrom(path, 0);
}

}  // namespace vecseal::policy
