// The listening socket: the one systemd passed (socket activation), else one of our own, bound
// only in a directory nobody else can write.
#pragma once

#include <string>

#include "vecseal/core/status.h"
#include "vecseal/daemon/config.h"

namespace vecseal::daemon {

struct Listener {
  int fd = -1;
  std::string created_path;  // unlinked at exit; empty for a socket passed by systemd
};

// kUnavailable "socket_unavailable" with the cause and the fix.
Result<Listener> OpenListener(const SocketConfig& config);

}  // namespace vecseal::daemon
