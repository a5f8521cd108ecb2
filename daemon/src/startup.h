// What serving and `vecseald --init` share about turning a config file into live parts.
#pragma once

#include <optional>
#include <string>

#include "vecseal/core/status.h"
#include "vecseal/daemon/config.h"
#include "vecseal/pkcs11/hsm.h"

namespace vecseal::daemon {

// Loads a config file the way the daemon trusts it: StrictModes first, then the parser.
Result<Config> LoadTrustedConfig(const std::string& path, ConfigKind kind);

pkcs11::HsmConfig HsmConfigOf(const Config& config);

// The audit key's own token (audit.pkcs11), or nullopt when the key shares the model-key token.
std::optional<pkcs11::HsmConfig> AuditHsmConfigOf(const Config& config);

// An error from the audit key's own token, naming audit.pkcs11 (audit.pkcs11.pin for a refused
// or unreadable PIN) so that nobody looks for it on the model-key token. Code and reason stay.
Status AuditTokenError(const Status& error);

}  // namespace vecseal::daemon
