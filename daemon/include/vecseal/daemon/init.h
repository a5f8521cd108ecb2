// `vecseald --init` (docs/operations.md, "First start"): checks the config, the policy, the token
// (login and mechanisms) and the audit directory, creates the audit key pair when missing and
// exports its public key. Safe to repeat: a second run changes nothing.
#pragma once

#include <iosfwd>
#include <string>

#include "vecseal/daemon/config.h"

namespace vecseal::daemon {

inline constexpr std::string_view kDefaultAuditKeyExport = "/etc/vecseal/audit-key.pem";

struct InitOptions {
  std::string config_path{kDefaultConfigPath};
  std::string export_audit_key{kDefaultAuditKeyExport};
};

// Prints one line per check and the next steps; returns 0 when ready, 1 when a check failed.
int Init(const InitOptions& options, std::ostream& out);

}  // namespace vecseal::daemon
