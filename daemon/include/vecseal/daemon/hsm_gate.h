// How Service reaches the HSM. vecseald may start before its HSM answers (docs/hsm.md): until
// the daemon opens the gate, every call is refused at once with hsm_unavailable (HTTP 503), so
// that Service runs the same code, policy and audit included, whether the HSM is there or not.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "vecseal/core/status.h"
#include "vecseal/daemon/key_store.h"
#include "vecseal/pkcs11/hsm.h"

namespace vecseal::daemon {

class HsmGate final : public KeyStore {
 public:
  // Closed: every call is refused.
  HsmGate() = default;
  // Open on `hsm` from the start.
  explicit HsmGate(pkcs11::Hsm& hsm) { Open(hsm); }
  HsmGate(const HsmGate&) = delete;
  HsmGate& operator=(const HsmGate&) = delete;

  // Lets every later call through to `hsm`, which must outlive them. Opens once; never closes:
  // an HSM lost afterwards is pkcs11::Hsm's to recover.
  void Open(pkcs11::Hsm& hsm);
  bool open() const { return hsm_.load(std::memory_order_acquire) != nullptr; }
  // While closed: the last reason the HSM could not be reached, quoted in every refusal.
  void SetWaiting(const Status& why);

  // pkcs11::Hsm's operations, or kUnavailable "hsm_unavailable" while closed.
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
  // Every counted Cryptoki function and its calls so far; empty while closed.
  std::vector<std::pair<std::string, uint64_t>> CallCounts() const override;

 private:
  Status Refusal() const;

  std::atomic<pkcs11::Hsm*> hsm_{nullptr};
  mutable std::mutex mutex_;
  std::string waiting_;  // guarded by mutex_
};

}  // namespace vecseal::daemon
