#include "startup.h"

#include "vecseal/policy/policy.h"

namespace vecseal::daemon {

Result<Config> LoadTrustedConfig(const std::string& path, ConfigKind kind) {
  VECSEAL_RETURN_IF_ERROR(policy::CheckTrustedFile(path));
  return LoadConfigFile(path, kind);
}

pkcs11::HsmConfig HsmConfigOf(const Config& config) {
  pkcs11::HsmConfig hsm_config;
  hsm_config.module_path = config.pkcs11.module;
  hsm_config.token_label = config.pkcs11.token_label;
  hsm_config.pin.file = config.pkcs11.pin.file;
  hsm_config.pin.credential = config.pkcs11.pin.credential;
  hsm_config.sessions = config.pkcs11.sessions;
  hsm_config.accept_imported_keys = config.pkcs11.accept_imported_keys;
  return hsm_config;
}

std::optional<pkcs11::HsmConfig> AuditHsmConfigOf(const Config& config) {
  const auto& token = config.audit.pkcs11;
  if (!token) return std::nullopt;
  pkcs11::HsmConfig hsm_config;
  hsm_config.module_path = token->module;
  hsm_config.token_label = token->token_label;
  hsm_config.pin.file = token->pin.file;
  hsm_config.pin.credential = token->pin.credential;
  hsm_config.sessions = 1;  // seals are signed one at a time, under the audit log's lock
  return hsm_config;
}

Status AuditTokenError(const Status& error) {
  const bool pin = error.reason() == "hsm_login_failed" || error.reason().starts_with("pin_");
  return Status(error.code(), error.reason(),
                std::string(pin ? "audit.pkcs11.pin" : "audit.pkcs11") + " (the audit key's token): " +
                    error.message());
}


}  // namespace vecseal::daemon
