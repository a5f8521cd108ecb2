// A real `vecseald --dev` for fault tests: unlike tests/daemon's DevDaemon it can be killed and
// restarted on the same state directory, and started with extra environment (the faulty PKCS#11
// module's control file, an LD_PRELOAD fault shim). Plus the /proc and audit-log probes the
// reliability tests assert on.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace vecseal::reliability {

// A private directory under /tmp, removed with everything in it.
class ScratchDir {
 public:
  ScratchDir();
  ~ScratchDir();
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

struct DaemonOptions {
  std::string state_dir;     // --state-dir; kept across restarts
  std::string overlay_path;  // --config; empty: none
  std::map<std::string, std::string> env;  // added to (or replacing in) the inherited environment
};

class DaemonProcess {
 public:
  explicit DaemonProcess(DaemonOptions options) : options_(std::move(options)) {}
  ~DaemonProcess();  // SIGKILL if still running

  // Spawns the daemon and waits for its ready line. False when it exited or never became
  // ready; then `error` holds why, with its stderr.
  bool Start(std::string* error);
  // Spawns and waits for the process to end on its own (a start that must fail); returns the
  // wait status.
  int StartExpectingExit();
  // Sends `signal_number` and reaps the process; returns the wait status.
  int KillAndWait(int signal_number);
  // Waits up to `timeout` for the process to end by itself and reaps it; returns the wait
  // status, or nullopt when it is still running.
  std::optional<int> WaitForExit(std::chrono::milliseconds timeout);
  void Signal(int signal_number) const;
  bool Running() const;

  pid_t pid() const { return pid_; }
  std::string socket_path() const { return options_.state_dir + "/vecseald.sock"; }
  std::string audit_dir() const { return options_.state_dir + "/audit"; }
  std::string audit_pubkey() const { return options_.state_dir + "/audit-key.pem"; }
  std::string policy_path() const { return options_.state_dir + "/policy.json"; }
  // Everything the daemon wrote to stderr, across restarts.
  std::string Log() const;

 private:
  pid_t Spawn(int stdout_fd);

  DaemonOptions options_;
  pid_t pid_ = -1;
};

// Writes `text` to `path` (mode 0600) through a temporary file and rename(2), so that a reader
// sees either the old or the new content.
void ReplaceFile(const std::string& path, const std::string& text);
std::string ReadFileText(const std::string& path);

// From /proc: open descriptors and resident set size of a process; nullopt when it is gone.
std::optional<size_t> OpenFdCount(pid_t pid);
std::optional<size_t> RssKib(pid_t pid);

// Every record of the audit files in `dir` (or of the one file `dir` names), in file order.
std::vector<nlohmann::json> AuditRecords(const std::string& path);

struct CommandResult {
  int exit_code = -1;  // -1: did not exit normally
  std::string output;  // stdout and stderr together
};
CommandResult RunCommand(const std::vector<std::string>& argv);

// `vecseal audit verify --json [OPTIONS...]` on the daemon's audit directory.
CommandResult VerifyAuditLog(const DaemonProcess& daemon,
                             const std::vector<std::string>& options = {});

}  // namespace vecseal::reliability
