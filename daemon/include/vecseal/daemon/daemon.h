// vecseald as a process: command line, config and policy loading (with StrictModes checks),
// the listening socket (systemd socket activation or our own), signals (SIGTERM drains, SIGHUP
// reloads), sd_notify, process hardening and dev mode.
#pragma once

#include <iosfwd>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "vecseal/core/status.h"
#include "vecseal/daemon/config.h"

namespace vecseal::daemon {

struct CommandLine {
  enum class Mode { kServe, kInit, kCheckConfig, kCheckPolicy, kVersion, kHelp };
  Mode mode = Mode::kServe;
  std::string config_path;   // --config or --check-config; empty: default (serve) / none (dev)
  bool dev = false;
  std::string state_dir;     // --state-dir (dev mode); empty: a fresh temp dir
  std::string export_audit_key;  // --export-audit-key (--init); empty: the default path
  std::vector<std::string> check_policy_args;  // after --check-policy
};

// Errors are usage errors (kInvalidArgument "usage") with a sentence for stderr.
Result<CommandLine> ParseCommandLine(std::span<const std::string> args);
std::string UsageText();

// Everything dev mode sets up under `state_dir` (see docs/configuration.md, "Dev mode"):
// a SoftHSM2 token with a random PIN, an audit key, the model key `demo`, a policy granting the
// invoking user everything. `overlay` carries the tunables (limits, threads, derivation, audit
// sync); dev mode replaces its socket, token, PIN, policy and audit paths.
struct DevState {
  std::string dir;
  Config config;
};
Result<DevState> PrepareDevState(std::string state_dir, Config overlay);

// Runs the daemon until SIGTERM/SIGINT; returns the process exit status.
int Serve(const CommandLine& command_line);

// `vecseald --check-config FILE`: prints "FILE: ok" or the problem; exit status 0 or 1.
int CheckConfig(const std::string& path, std::ostream& out, std::ostream& err);

// The whole program; main() only converts argv.
int Main(std::span<const std::string> args);

}  // namespace vecseal::daemon
