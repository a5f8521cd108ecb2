// A real `vecseald --dev` process for tests.
#pragma once

#include <sys/types.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "support/http_client.h"

namespace vecseal::daemon::testing {

struct DevDaemonOptions {
  std::string overlay_json;  // written to a file and passed as --config; empty: none
};

class DevDaemon {
 public:
  // Starts the daemon and waits for its "vecseald ready" line. On failure returns null and
  // fills `error` (including the daemon's stderr).
  static std::unique_ptr<DevDaemon> Start(const DevDaemonOptions& options, std::string* error);
  ~DevDaemon();

  const std::string& socket_path() const { return socket_path_; }
  const std::string& state_dir() const { return state_dir_; }
  const std::string& root() const { return root_; }
  const std::string& overlay_path() const { return overlay_path_; }
  pid_t pid() const { return pid_; }

  void Signal(int signal_number) const;
  // SIGTERM, then the exit status (or 128+signal).
  int Stop();
  // Whatever the daemon wrote to stderr so far.
  std::string Log() const;
  // Every record of the audit log, parsed.
  std::vector<nlohmann::json> AuditRecords() const;

 private:
  DevDaemon() = default;

  std::string root_;
  std::string state_dir_;
  std::string socket_path_;
  std::string overlay_path_;
  pid_t pid_ = -1;
};

}  // namespace vecseal::daemon::testing
