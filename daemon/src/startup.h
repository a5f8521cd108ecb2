// What serving and `vecseald --init` share about turning a config file into live parts.
#pragma once

#include <string>

#include "vecseal/core/status.h"
#include "vecseal/daemon/config.h"
#include "vecseal/pkcs11/hsm.h"

namespace vecseal::daemon {

// Loads a config file the way the daemon trusts it: StrictModes first, then the parser.
Result<Config> LoadTrustedConfig(const std::string& path, ConfigKind kind);

pkcs11::HsmConfig HsmConfigOf(const Config& config);

}  // namespace vecseal::daemon
