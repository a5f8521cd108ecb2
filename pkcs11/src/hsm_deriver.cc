// The derivations of a model key inside the token, through the session pool: HMAC-SHA256 for
// format v1, AES-256-ECB for v2, with a v2 encryption kept open across calls.
#include "hsm_state.h"

namespace vecseal::pkcs11 {
namespace {

class HsmDeriver final : public core::Deriver {
 public:
  HsmDeriver(std::shared_ptr<Hsm::State> state, std::string label, core::KeyFormat format)
      : state_(std::move(state)), label_(std::move(label)), format_(format) {}

  core::KeyFormat format() const override { return format_; }
  Status Derive(std::span<const std::span<const uint8_t>> messages,
                std::span<core::Seed> out) override;
  Status EncryptBlocks(std::span<const uint8_t> blocks, std::span<uint8_t> out) override;

 private:
  // Runs `operation(slot, key)` on a pooled session, looking a stale key handle up once more.
  // The operation returns its CK_RV and the name of the Cryptoki call it comes from.
  template <typename F>
  Status WithKey(F&& operation);

  std::shared_ptr<Hsm::State> state_;
  std::string label_;
  core::KeyFormat format_;
};

}  // namespace

template <typename F>
Status HsmDeriver::WithKey(F&& operation) {
  auto result = state_->Pooled<bool>([&](PoolSlot& slot) -> Result<bool> {
    // A handle that went stale (the key object was replaced), or an open operation the module
    // dropped, is set up once more.
    for (int attempt = 0; attempt < 2; ++attempt) {
      auto key = state_->KeyHandle(slot, label_, CKO_SECRET_KEY);
      if (!key.ok()) return std::move(key).TakeStatus();
      const auto [rv, function] = operation(slot, *key);
      if (rv == CKR_OK) return true;
      const bool stale = rv == CKR_KEY_HANDLE_INVALID || rv == CKR_OBJECT_HANDLE_INVALID ||
                         rv == CKR_OPERATION_NOT_INITIALIZED;
      if (stale && attempt == 0) {
        slot.keys.erase(CacheKey(label_, CKO_SECRET_KEY));
        slot.open_encryption.clear();
        continue;
      }
      return CkrStatus(function, rv);
    }
    return Status(Code::kInternal, "hsm_error", "unreachable");
  });
  return result.ok() ? Status::Ok() : std::move(result).TakeStatus();
}

Status HsmDeriver::Derive(std::span<const std::span<const uint8_t>> messages,
                          std::span<core::Seed> out) {
  if (format_ != core::KeyFormat::kV1) return Deriver::Derive(messages, out);
  // Refused, not asserted: under NDEBUG a short `out` would be written past its end.
  if (messages.size() != out.size()) {
    for (auto& seed : out) core::SecureWipe(seed.data(), seed.size());
    return Status(Code::kInternal, "invalid_length",
                  "Derive was given " + std::to_string(messages.size()) +
                      " messages but room for " + std::to_string(out.size()) + " seeds");
  }
  Status status = WithKey([&](PoolSlot& slot, CK_OBJECT_HANDLE key) {
    state_->EndEncryption(slot);
    CK_RV rv = CKR_OK;
    for (size_t i = 0; i < messages.size() && rv == CKR_OK; ++i) {
      CK_ULONG length = 0;
      rv = slot.session.SignRaw(CKM_SHA256_HMAC, key, messages[i], out[i], &length);
      if (rv == CKR_OK && length != core::kSeedSize) rv = CKR_FUNCTION_FAILED;
    }
    return std::pair<CK_RV, const char*>(rv, "C_Sign");
  });
  if (!status.ok()) {
    for (auto& seed : out) core::SecureWipe(seed.data(), seed.size());
  }
  return status;
}

Status HsmDeriver::EncryptBlocks(std::span<const uint8_t> blocks, std::span<uint8_t> out) {
  if (format_ != core::KeyFormat::kV2) return Deriver::EncryptBlocks(blocks, out);
  if (blocks.size() != out.size() || blocks.size() % core::kBlockSize != 0) {
    core::SecureWipe(out.data(), out.size());
    return Status(Code::kInternal, "invalid_length",
                  "EncryptBlocks was given " + std::to_string(blocks.size()) +
                      " bytes for room of " + std::to_string(out.size()) +
                      "; both must be the same whole number of 16-byte blocks");
  }
  if (blocks.empty()) return Status::Ok();
  Status status = WithKey([&](PoolSlot& slot, CK_OBJECT_HANDLE key) {
    if (slot.open_encryption != label_) {
      state_->EndEncryption(slot);
      const CK_RV rv = slot.session.EncryptInit(CKM_AES_ECB, key);
      if (rv != CKR_OK) return std::pair<CK_RV, const char*>(rv, "C_EncryptInit");
      slot.open_encryption = label_;
    }
    CK_RV rv = slot.session.EncryptUpdate(blocks, out, state_->part_bytes.load());
    // A module with a smaller limit per call than kDerivationPartBytes refuses the part with
    // CKR_DATA_LEN_RANGE: halve it until the module takes it, and keep that size. The failed
    // call ended the operation; ECB has no chaining, so starting over gives the same bytes.
    while (rv == CKR_DATA_LEN_RANGE && state_->part_bytes.load() > core::kBlockSize) {
      const size_t half = state_->part_bytes.load() / 2;
      state_->part_bytes.store(std::max(core::kBlockSize, half - half % core::kBlockSize));
      rv = slot.session.EncryptInit(CKM_AES_ECB, key);
      if (rv != CKR_OK) break;
      rv = slot.session.EncryptUpdate(blocks, out, state_->part_bytes.load());
    }
    if (rv != CKR_OK) slot.open_encryption.clear();  // the module has ended the operation
    return std::pair<CK_RV, const char*>(rv, "C_EncryptUpdate");
  });
  if (!status.ok()) core::SecureWipe(out.data(), out.size());
  return status;
}

std::shared_ptr<core::Deriver> MakeHsmDeriver(std::shared_ptr<Hsm::State> state, std::string label,
                                              core::KeyFormat format) {
  return std::make_shared<HsmDeriver>(std::move(state), std::move(label), format);
}

}  // namespace vecseal::pkcs11
