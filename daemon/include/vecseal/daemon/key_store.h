// The model keys as Service sees them: HsmGate in the daemon, a software fake in tests. Every
// implementation answers with pkcs11::Hsm's errors (the reasons listed above pkcs11::Hsm), so
// that Service maps one set of outcomes to HTTP whatever holds the keys.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "vecseal/core/status.h"
#include "vecseal/pkcs11/hsm.h"

namespace vecseal::daemon {

class KeyStore {
 public:
  virtual ~KeyStore() = default;

  // pkcs11::Hsm's operations, with its contracts.
  virtual Result<std::vector<pkcs11::KeyInfo>> ListKeys() = 0;
  virtual Result<pkcs11::KeyInfo> CreateKey(std::string_view name,
                                            const pkcs11::KeyParams& params) = 0;
  virtual Result<pkcs11::KeyInfo> RotateKey(std::string_view name, core::KeyFormat format) = 0;
  virtual Result<pkcs11::ModelKey> FindKey(std::string_view name,
                                           std::optional<uint32_t> version = {}) = 0;
  virtual Result<uint32_t> FixDimension(std::string_view name, uint32_t dimension) = 0;
  virtual Result<pkcs11::KeyConfig> ReadKeyConfig(std::string_view name) = 0;
  virtual Result<pkcs11::KeyConfig> ConfigureKey(std::string_view name,
                                                 const pkcs11::KeyConfig& config) = 0;
  virtual Result<std::vector<uint32_t>> DeleteKey(std::string_view name) = 0;
  virtual Status Ping() = 0;
  // Every counted backend call and its count so far, for /metrics; empty when none is counted.
  virtual std::vector<std::pair<std::string, uint64_t>> CallCounts() const = 0;
};

}  // namespace vecseal::daemon
