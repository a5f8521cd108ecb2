// A production-shaped vecseald for the security tests: not dev mode, but a real config file, a
// real policy file, a SoftHSM2 token with a PIN file, a socket owned by a group, and callers
// that are real child processes with the uid, gids and systemd unit (cgroup) a test gives them.
#pragma once

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "softhsm_fixture.h"

namespace vecseal::security_testing {

// Distinctive enough that finding it anywhere is a leak, not a coincidence.
inline constexpr const char* kTokenPin = "pin-canary-5f3e91c7";
inline constexpr const char* kAuditTokenPin = "audit-pin-canary-0b72d4e8";
inline constexpr const char* kAuditTokenLabel = "vecseal-audit";

class SecuredDaemon {
 public:
  struct Options {
    std::string policy_json;
    std::string socket_group;  // socket.group; empty: the daemon's own group
    // The audit key on a token of its own (audit.pkcs11): kAuditTokenLabel, PIN kAuditTokenPin.
    bool audit_token = false;
    // pkcs11.module, and audit.pkcs11.module; empty: SoftHSM2's.
    std::string module = {};
    // The config's "limits" object; null: the defaults.
    nlohmann::json limits = nullptr;
  };

  // Lays out the token, PIN file, config and policy under a fresh directory (mode 0755 so that
  // callers of other uids can reach the socket) without starting anything.
  static std::unique_ptr<SecuredDaemon> Prepare(const Options& options, std::string* error);
  ~SecuredDaemon();

  // Starts `vecseald --config` (a fresh stderr log each time) and waits for its sd_notify
  // READY=1. False when it exited instead (exit_status() and Log() say how) or did not become
  // ready.
  bool Start(std::string* error);
  // SIGHUP, then waits for the READY=1 that ends the reload, whatever its outcome.
  bool Reload(std::string* error);
  // SIGTERM, then the exit status (or 128+signal).
  int Stop();
  // SIGKILL, as a crash: no stop record, no final seal.
  void Kill();

  pid_t pid() const { return pid_; }
  std::optional<int> exit_status() const { return exit_status_; }
  const std::string& root() const { return root_; }
  const std::string& config_path() const { return config_path_; }
  const std::string& policy_path() const { return policy_path_; }
  const std::string& socket_path() const { return socket_path_; }
  const testing::SoftHsmToken& token() const { return *token_; }
  const std::string& audit_dir() const { return audit_dir_; }
  // The audit token's PIN file; empty without Options::audit_token.
  const std::string& audit_pin_file() const { return audit_pin_file_; }
  std::string Log() const;  // the daemon's stderr so far
  std::vector<nlohmann::json> AuditRecords() const;
  // Every byte of the audit log files, for leak checks.
  std::string AuditBytes() const;

 private:
  SecuredDaemon() = default;
  // Waits for a notify datagram containing `state`, or for the process to exit.
  bool WaitForState(const std::string& state, std::string* error);
  void Reap(int status);

  std::unique_ptr<testing::SoftHsmToken> token_;
  std::string root_;
  std::string config_path_;
  std::string policy_path_;
  std::string socket_path_;
  std::string audit_dir_;
  std::string audit_pin_file_;
  std::string notify_path_;
  int notify_fd_ = -1;
  int pidfd_ = -1;
  pid_t pid_ = -1;
  std::optional<int> exit_status_;
};

// Who a caller child runs as. The cgroup, when set, is a directory in the cgroup2 hierarchy
// that the child joins before it drops privileges (so its systemd unit is that directory).
struct CallerIdentity {
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;
  std::string cgroup_dir;
};

struct CallerRun {
  pid_t pid = -1;
  int exit_code = -1;  // -1 when it did not exit normally
  std::string output;  // its stdout
};

// Forks, joins the cgroup, sets groups, gid and uid (in that order), execs argv[0] with argv and
// `environment` ("NAME=value" entries; empty by default), and waits. Needs root.
CallerRun RunAs(const CallerIdentity& identity, const std::vector<std::string>& argv,
                const std::vector<std::string>& environment = {});

// One answer line of security_caller: "STATUS REQUEST_ID BODY".
struct Answer {
  unsigned status = 0;
  std::string request_id;
  std::string body;
};
std::vector<Answer> ParseAnswers(const std::string& output);

// A directory at the top of the cgroup2 hierarchy named like a system unit,
// "vecseal-security-PID-ROLE.service", so that vecseald reports that unit for the processes in
// it. Removed on destruction; ones left by killed test processes are removed by the next Create.
class TestUnit {
 public:
  // Null, with the reason in *why, when there is no writable cgroup2 hierarchy.
  static std::unique_ptr<TestUnit> Create(const std::string& role, std::string* why);
  ~TestUnit();
  const std::string& name() const { return name_; }
  const std::string& dir() const { return dir_; }

 private:
  TestUnit() = default;
  std::string name_;
  std::string dir_;
};

// "0.25" "0.250000" "2.500000e-01" ...: the ways a float may be printed, to look for in logs.
std::vector<std::string> PrintedForms(float value);

// The first of `needles` found in `haystack`, or nullopt.
std::optional<std::string> FindAny(const std::string& haystack,
                                   const std::vector<std::string>& needles);

}  // namespace vecseal::security_testing
