#include "listener.h"

#include <grp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <vector>

#include "log.h"
#include "vecseal/policy/policy.h"

namespace vecseal::daemon {
namespace {

Status SocketError(std::string message) {
  return Status(Code::kUnavailable, "socket_unavailable", std::move(message));
}

// Anyone who can write the socket's directory can bind the path first, or replace the socket,
// and receive callers' plaintext: the sticky bit does not stop the first (issue #17 row 13). So
// the directory must be the daemon's (or root's) and writable by nobody else, and no symlink on
// the way may belong to another user.
Status CheckSocketDirectory(const std::string& socket_path) {
  const std::string dir = std::filesystem::path(socket_path).parent_path().string();
  if (Status above = policy::CheckTrustedDirectory(dir); !above.ok()) {
    return SocketError("the socket directory: " + above.message());
  }
  struct stat st {};
  if (stat(dir.c_str(), &st) != 0) {
    return SocketError("the socket directory " + dir + " does not exist: the package's "
                       "tmpfiles.d creates /run/vecseal at boot; by hand, see "
                       "docs/operations.md, \"Without systemd\"");
  }
  if (st.st_uid != 0 && st.st_uid != geteuid()) {
    return SocketError("the socket directory " + dir + " belongs to uid " +
                       std::to_string(st.st_uid) + ", not to the daemon's user or root; put the "
                       "socket in a directory of the daemon's, such as /run/vecseal");
  }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    return SocketError("the socket directory " + dir +
                       " is writable by group or others, so another user could bind the socket "
                       "path first; chmod go-w " + dir + " or use a directory of the daemon's");
  }
  return Status::Ok();
}

}  // namespace

Result<Listener> OpenListener(const SocketConfig& config) {
  const int passed = sd_listen_fds(1);
  if (passed < 0) return SocketError(std::string("sd_listen_fds: ") + std::strerror(-passed));
  if (passed > 1) {
    return SocketError("systemd passed " + std::to_string(passed) +
                       " sockets; vecseald.socket must declare exactly one ListenStream=");
  }
  if (passed == 1) {
    if (sd_is_socket_unix(SD_LISTEN_FDS_START, SOCK_STREAM, 1, nullptr, 0) <= 0) {
      return SocketError("the socket systemd passed is not a listening Unix stream socket");
    }
    LogLine("info", "socket", "source=systemd");
    return Listener{.fd = SD_LISTEN_FDS_START, .created_path = {}};
  }

  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (config.path.size() >= sizeof(address.sun_path)) {
    return SocketError("socket path " + config.path + " is longer than " +
                       std::to_string(sizeof(address.sun_path) - 1) + " bytes");
  }
  std::memcpy(address.sun_path, config.path.c_str(), config.path.size() + 1);
  VECSEAL_RETURN_IF_ERROR(CheckSocketDirectory(config.path));

  gid_t gid = static_cast<gid_t>(-1);
  if (!config.group.empty()) {
    std::vector<char> buffer(16384);
    group entry{};
    group* found = nullptr;
    if (getgrnam_r(config.group.c_str(), &entry, buffer.data(), buffer.size(), &found) != 0 ||
        found == nullptr) {
      return SocketError("socket.group '" + config.group + "' is not a known group");
    }
    gid = found->gr_gid;
  }

  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return SocketError(std::string("socket: ") + std::strerror(errno));
  const auto* raw_address = reinterpret_cast<const sockaddr*>(&address);
  struct stat st {};
  if (lstat(config.path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      close(fd);
      return SocketError(config.path + " exists and is not a socket; remove it");
    }
    // A stale socket from a crashed daemon is replaced; a live one means a second daemon.
    if (connect(fd, raw_address, sizeof(address)) == 0) {
      close(fd);
      return SocketError("another daemon is already listening on " + config.path);
    }
    unlink(config.path.c_str());
  }
  // Bind under a tight umask so that the socket is never reachable with looser permissions.
  const mode_t old_umask = umask(0177);
  const int bound = bind(fd, raw_address, sizeof(address));
  umask(old_umask);
  if (bound != 0) {
    const int error = errno;
    std::string message = "bind " + config.path + ": " + std::strerror(error);
    if (error == EACCES || error == EPERM) {
      message += "; uid " + std::to_string(geteuid()) + " may not create files in " +
                 std::filesystem::path(config.path).parent_path().string() +
                 ": start vecseald.socket (systemd binds the socket and passes it), or make the "
                 "directory the daemon user's (docs/operations.md, \"Without systemd\")";
    }
    close(fd);
    return SocketError(std::move(message));
  }
  if (gid != static_cast<gid_t>(-1) &&
      chown(config.path.c_str(), static_cast<uid_t>(-1), gid) != 0) {
    const int error = errno;
    std::string message =
        "giving " + config.path + " to group " + config.group + ": " + std::strerror(error);
    if (error == EPERM) {
      message += "; the daemon's user is not a member of " + config.group +
                 ": add it (usermod -aG " + config.group + " USER) or start it with that "
                 "group (docs/operations.md, \"Without systemd\")";
    }
    close(fd);
    unlink(config.path.c_str());
    return SocketError(std::move(message));
  }
  if (chmod(config.path.c_str(), config.mode) != 0 || listen(fd, SOMAXCONN) != 0) {
    const Status error = SocketError("setting up " + config.path + ": " + std::strerror(errno));
    close(fd);
    unlink(config.path.c_str());
    return error;
  }
  LogLine("info", "socket", "source=self path=" + LogValue(config.path));
  return Listener{.fd = fd, .created_path = config.path};
}


}  // namespace vecseal::daemon
