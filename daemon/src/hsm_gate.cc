#include "vecseal/daemon/hsm_gate.h"

#include <string>

#include "vecseal/pkcs11/cryptoki.h"

namespace vecseal::daemon {

void HsmGate::Open(pkcs11::Hsm& hsm) { hsm_.store(&hsm, std::memory_order_release); }

void HsmGate::SetWaiting(const Status& why) {
  std::lock_guard lock(mutex_);
  waiting_ = why.message();
}

Status HsmGate::Refusal() const {
  std::lock_guard lock(mutex_);
  return Status(Code::kUnavailable, "hsm_unavailable",
                "the HSM has not answered since vecseald started (" +
                    (waiting_.empty() ? std::string("not tried yet") : waiting_) +
                    "); vecseald keeps trying, and requests that need it succeed once it does");
}

Result<std::vector<pkcs11::KeyInfo>> HsmGate::ListKeys() {
  if (pkcs11::Hsm* hsm = hsm_.load(std::memory_order_acquire)) return hsm->ListKeys();
  return Refusal();
}

Result<pkcs11::KeyInfo> HsmGate::CreateKey(std::string_view name,
                                           const pkcs11::KeyParams& params) {
  if (pkcs11::Hsm* hsm = hsm_.load(std::memory_order_acquire)) return hsm->CreateKey(name, params);
  return Refusal();
}

Result<pkcs11::KeyInfo> HsmGate::RotateKey(std::string_view name, core::KeyFormat format) {
  if (pkcs11::Hsm* hsm = hsm_.load(std::memory_order_acquire)) {
    return hsm->RotateKey(name, format);
  }
  return Refusal();
}

Result<pkcs11::ModelKey> HsmGate::FindKey(std::string_view name,
                                          std::optional<uint32_t> version) {
  if (pkcs11::Hsm* hsm = hsm_.load(std::memory_order_acquire)) return hsm->FindKey(name, version);
  return Refusal();
}

Result<uint32_t> HsmGate::FixDimension(std::string_view name, uint32_t dimension) {
  if (pkcs11::Hsm* hsm = hsm_.load(std::memory_order_acquire)) {
    return hsm->FixDimension(name, dimension);
  }
  return Refusal();
}

Result<pkcs11::KeyConfig> HsmGate::ReadKeyConfig(std::string_view name) {
  if (pkcs11::Hsm* hsm = hsm_.load(std::memory_order_acquire)) return hsm->ReadKeyConfig(name);
  return Refusal();
}

Result<pkcs11::KeyConfig> HsmGate::ConfigureKey(std::string_view name,
                                                const pkcs11::KeyConfig& config) {
  if (pkcs11::Hsm* hsm = hsm_.load(std::memory_order_acquire)) {
    return hsm->ConfigureKey(name, config);
  }
  return Refusal();
}

Result<std::vector<uint32_t>> HsmGate::DeleteKey(std::string_view name) {
  if (pkcs11::Hsm* hsm = hsm_.load(std::memory_order_acquire)) return hsm->DeleteKey(name);
  return Refusal();
}

Status HsmGate::Ping() {
  if (pkcs11::Hsm* hsm = hsm_.load(std::memory_order_acquire)) return hsm->Ping();
  return Refusal();
}

std::vector<std::pair<std::string, uint64_t>> HsmGate::CallCounts() const {
  std::vector<std::pair<std::string, uint64_t>> counts;
  const pkcs11::Hsm* hsm = hsm_.load(std::memory_order_acquire);
  if (hsm == nullptr) return counts;
  for (size_t i = 0; i < static_cast<size_t>(pkcs11::HsmCall::kCount); ++i) {
    const auto call = static_cast<pkcs11::HsmCall>(i);
    counts.emplace_back(pkcs11::HsmCallName(call), hsm->calls().Get(call));
  }
  return counts;
}

}  // namespace vecseal::daemon
