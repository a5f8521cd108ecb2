// A KeyStore in memory: each key version a core::SoftwareDeriver over a fresh random key, with
// pkcs11::Hsm's contracts (validation, versions, minimum versions, fixed dimensions) and its
// errors, word for word, for unknown keys and versions, existing keys and bad configurations.
// Test code: the keys exist only in this process.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "vecseal/core/deriver.h"
#include "vecseal/daemon/key_store.h"

namespace vecseal::daemon::testing {

class FakeKeyStore final : public KeyStore {
 public:
  Result<std::vector<pkcs11::KeyInfo>> ListKeys() override;
  Result<pkcs11::KeyInfo> CreateKey(std::string_view name,
                                    const pkcs11::KeyParams& params) override;
  Result<pkcs11::KeyInfo> RotateKey(std::string_view name, core::KeyFormat format) override;
  Result<pkcs11::ModelKey> FindKey(std::string_view name,
                                   std::optional<uint32_t> version = {}) override;
  Result<uint32_t> FixDimension(std::string_view name, uint32_t dimension) override;
  Result<pkcs11::KeyConfig> ReadKeyConfig(std::string_view name) override;
  Result<pkcs11::KeyConfig> ConfigureKey(std::string_view name,
                                         const pkcs11::KeyConfig& config) override;
  Result<std::vector<uint32_t>> DeleteKey(std::string_view name) override;
  Status Ping() override;
  // Each operation of this interface and how often it was called.
  std::vector<std::pair<std::string, uint64_t>> CallCounts() const override;

  // Every later call fails with `status` (an HSM that stopped answering) until it is Ok again.
  void FailWith(Status status);

 private:
  struct Version {
    pkcs11::KeyInfo info;
    std::shared_ptr<core::Deriver> deriver;
  };
  struct Key {
    std::vector<Version> versions;  // version i + 1 at index i
    pkcs11::KeyConfig config;
  };

  // The failure set by FailWith, counting the call `operation`; Ok when there is none.
  Status Enter(const char* operation);
  Result<Key*> KeyNamed(const std::string& name);
  Result<pkcs11::KeyInfo> AddVersion(Key& key, const std::string& name,
                                     pkcs11::KeyParams params);

  mutable std::mutex mutex_;
  std::map<std::string, Key, std::less<>> keys_;
  std::map<std::string, uint64_t> calls_;
  Status failure_;
};

}  // namespace vecseal::daemon::testing
