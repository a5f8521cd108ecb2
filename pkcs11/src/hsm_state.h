// What the files of the Hsm share, and nothing else: the layout of what vecseal keeps on the
// token, the attribute helpers, and Hsm::State (the module, the anchor session and the pool).
// Internal to vecseal_pkcs11; callers use hsm.h.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "vecseal/pkcs11/cryptoki.h"
#include "vecseal/pkcs11/hsm.h"

namespace vecseal::pkcs11 {

// Token layout (key_params.cc)

inline constexpr std::string_view kLabelPrefix = "vecseal:";
inline constexpr std::string_view kParamsApplication = "vecseal/v1/params";
// A key created without a dimension gets it at first use: a second parameter record, the same
// as the first but for the dimension, authenticated the same way (docs/format.md §6).
inline constexpr std::string_view kFixedDimensionApplication = "vecseal/v1/params-dimension";
// A key's minimum versions (KeyConfig), beside each version. Its canonical bytes start with
// kConfigMarker, which no parameter record can (theirs start with the format, 1 or 2), so that
// one can never pass for the other under the same MAC.
inline constexpr std::string_view kConfigApplication = "vecseal/v1/key-config";
inline constexpr uint8_t kConfigMarker = 0xC1;
inline constexpr size_t kMacSize = 32;

// Not const because CK_ATTRIBUTE::pValue is a plain void*; Cryptoki only reads them.
inline CK_BBOOL kTrue = CK_TRUE;
inline CK_BBOOL kFalse = CK_FALSE;

inline CK_ATTRIBUTE Attr(CK_ATTRIBUTE_TYPE type, CK_BBOOL& value) {
  return {type, &value, sizeof value};
}
template <typename T>
  requires std::is_arithmetic_v<T>
inline CK_ATTRIBUTE Attr(CK_ATTRIBUTE_TYPE type, T& value) {
  return {type, &value, sizeof value};
}
inline CK_ATTRIBUTE Attr(CK_ATTRIBUTE_TYPE type, const std::string& value) {
  return {type, const_cast<char*>(value.data()), value.size()};
}
inline CK_ATTRIBUTE Attr(CK_ATTRIBUTE_TYPE type, std::span<const uint8_t> value) {
  return {type, const_cast<uint8_t*>(value.data()), value.size()};
}

inline bool IsUnavailable(const Status& status) { return status.reason() == "hsm_unavailable"; }

// "vecseal:<name>:v<version>", the CKA_LABEL of a model key version and its records.
std::string KeyLabel(std::string_view name, uint32_t version);
// "vecseal:<name>:v<version>" -> (name, version); nullopt for anything else on the token.
std::optional<std::pair<std::string, uint32_t>> ParseKeyLabel(std::string_view label);
// kFailedPrecondition "key_params_tampered": the stored parameters of `label` `what`.
Status Tampered(std::string_view label, std::string_view what);

// kConfigMarker ‖ len(name) (u8) ‖ name ‖ version (u32) ‖ sequence (u64)
//   ‖ min_encryption_version (u32) ‖ min_decryption_version (u32), little-endian.
std::vector<uint8_t> CanonicalConfigBytes(std::string_view name, uint32_t version,
                                          uint64_t sequence, const KeyConfig& config);

struct StoredConfig {
  KeyConfig config;
  uint64_t sequence = 0;  // 0: no record, the defaults
};

// PIN (pin.cc)

// The file the PIN is read from: the PIN file, or the credential under $CREDENTIALS_DIRECTORY.
Result<std::string> PinPath(const PinSource& source);
// What identifies one version of the PIN file: a PIN the token refused is not offered again
// until the file changes, since each attempt counts against the token's retry limit.
using PinFileStamp = std::array<int64_t, 7>;
std::optional<PinFileStamp> StampPinFile(const std::string& path);
// True for the C_Login codes that blame the PIN rather than the token.
bool IsPinError(CK_RV rv);
// kUnavailable "hsm_login_failed", naming the PIN source only.
Status LoginFailed(const HsmConfig& config, CK_RV rv);

// Model key objects (model_keys.cc)

// CKA_SENSITIVE true and CKA_EXTRACTABLE false, for keys made outside vecseal under its labels.
// Both attributes only ever change towards safety, so a key that passes once stays safe.
Result<bool> StaysInToken(const Object& key);
// Why a key or private key is not one the token generated and always kept secret, or "" when
// it is. These attributes can only be set by the token itself, so a key whose value someone
// outside knows (created with C_CreateObject, or unwrapped) fails them.
Result<std::string> NotGeneratedByTokenBecause(const Object& key);

// True when a module refused a template with CKR_ATTRIBUTE_TYPE_INVALID.
bool RefusedAttributeType(const Status& status);

// Calls generate(template) with `required` and as many of `optional` as the module knows:
// PKCS#11 2.40 added CKA_COPYABLE and CKA_ALLOWED_MECHANISMS, and a 2.20 module (opencryptoki
// 3.8) refuses either with CKR_ATTRIBUTE_TYPE_INVALID. Subsets are tried largest first, so a
// module that knows one of them keeps it; the key gets every required attribute or nothing.
template <typename Generate>
auto WithOptionalAttributes(std::span<const CK_ATTRIBUTE> required,
                            std::span<const CK_ATTRIBUTE> optional, Generate&& generate)
    -> decltype(generate(required)) {
  const unsigned all = (1u << optional.size()) - 1;
  std::vector<unsigned> subsets;
  for (unsigned mask = 0; mask <= all; ++mask) subsets.push_back(mask);
  std::stable_sort(subsets.begin(), subsets.end(), [](unsigned a, unsigned b) {
    return std::popcount(a) > std::popcount(b);
  });
  decltype(generate(required)) result = Status(Code::kInternal, "hsm_error", "no template");
  for (unsigned mask : subsets) {
    std::vector<CK_ATTRIBUTE> attributes(required.begin(), required.end());
    for (size_t i = 0; i < optional.size(); ++i) {
      if ((mask & (1u << i)) != 0) attributes.push_back(optional[i]);
    }
    result = generate(std::span<const CK_ATTRIBUTE>(attributes));
    if (result.ok() || !RefusedAttributeType(result.status())) return result;
  }
  return result;
}

// Session pool (session_pool.cc)

// Private objects are invisible until login, so a session that lost its login state (another
// session logged out, the token was reset) must recover rather than report keys as missing.
Status RequireLogin(const Session& session);
// Model keys and the audit key may share a label on a foreign token; the class tells them apart.
std::string CacheKey(const std::string& label, CK_OBJECT_CLASS klass);

// One pooled session and the key handles it has looked up (or copied) for itself.
struct PoolSlot {
  std::mutex mutex;
  Session session;
  uint64_t generation = 0;  // the Hsm generation this session was opened in; 0: none
  uint64_t initialisation = 0;  // the module's initialisation it was opened in (Hsm::State)
  std::unordered_map<std::string, Object> keys;
  // The label of the format v2 key whose CKM_AES_ECB operation this session keeps open, so that
  // a request costs one C_EncryptUpdate instead of C_EncryptInit + C_Encrypt (on SoftHSM2 the
  // init is most of the cost; on a network HSM it is a second round trip). ECB has no chaining,
  // so each update's output is exactly what a fresh C_Encrypt gives. Empty: none open.
  std::string open_encryption;
  uint64_t key_epoch = 0;  // Hsm::State::key_epoch when `keys` and the open operation were set
};


struct Hsm::State {
  HsmConfig config;
  Module module;
  std::atomic<CK_SLOT_ID> slot{0};

  // Guards the anchor session, key administration and recovery.
  std::mutex admin_mutex;
  Session anchor;
  // Bumped by every successful (re)connection; pooled sessions from an older generation are
  // reopened before use.
  std::atomic<uint64_t> generation{0};
  // Bumped when handles opened before are void and may name other sessions and objects now:
  // recovery initialised the module again (Module::Reinitialize), or found the anchor gone
  // (RetireAnchorLocked). Such handles are forgotten, never closed.
  std::atomic<uint64_t> initialisation{0};
  // The most a C_EncryptUpdate is given: kDerivationPartBytes, or less for a module that refused
  // that much with CKR_DATA_LEN_RANGE.
  std::atomic<size_t> part_bytes{kDerivationPartBytes};
  std::atomic<uint64_t> recovery_failures{0};
  // Bumped when vecseal destroys a model key: a pooled session's cached handles and open
  // operation may belong to it, and a new key of the same label must not be served by them.
  std::atomic<uint64_t> key_epoch{0};
  // The PIN file version the token last refused, and that refusal (guarded by admin_mutex).
  std::optional<PinFileStamp> refused_pin_file;
  Status refused_login;

  std::vector<std::unique_ptr<PoolSlot>> pool;
  std::atomic<size_t> next_slot{0};

  // A module may build a session copy of a key attribute by attribute: SoftHSM2 copies the
  // original's CKA_TOKEN=true first and applies the template's false last, so a search for token
  // keys in another session can meet a copy in the making, and a key would look duplicated
  // (key_not_found, or "tampered" on load). Searches for keys share this lock; a copy takes it
  // alone. It is a leaf lock: nothing else is acquired while it is held.
  std::shared_mutex key_copy_mutex;
  Result<std::vector<Object>> FindKeys(const Session& session,
                                       std::span<const CK_ATTRIBUTE> match) {
    std::shared_lock lock(key_copy_mutex);
    return session.Find(match);
  }

  Status ConnectLocked();
  // Before recovery opens a session: closes the anchor, or forgets it and every pooled session
  // when the module has dropped it. A module that closed all our sessions may reissue their
  // numbers to the next ones it opens (opencryptoki restarts at 1), and closing a stale number
  // then closes a new session, and with the last one the login.
  void RetireAnchorLocked();
  Status Recover(uint64_t observed_generation);

  // Runs fn(anchor) under the admin lock; on a recoverable failure, recovers and runs it once
  // more.
  template <typename T, typename F>
  Result<T> Admin(F&& fn);

  // Runs fn(slot) on a pooled session opened in the current generation, with the same
  // recover-and-retry-once rule.
  template <typename T, typename F>
  Result<T> Pooled(F&& fn);

  PoolSlot& Acquire(std::unique_lock<std::mutex>& lock);
  Status EnsureOpen(PoolSlot& slot);
  // Ends the slot's open encryption before its session runs any other operation: a module may
  // allow one active operation per session (SoftHSM2 does), and a find or sign would fail with
  // CKR_OPERATION_ACTIVE. Its result does not matter: a session that fails is replaced anyway.
  void EndEncryption(PoolSlot& slot);
  // The handle to use for signing with the private or secret key labelled `label`.
  Result<CK_OBJECT_HANDLE> KeyHandle(PoolSlot& slot, const std::string& label,
                                     CK_OBJECT_CLASS klass);

  Result<std::vector<std::pair<std::string, uint32_t>>> KeyVersionsLocked(
      std::optional<std::string_view> name);
  Result<KeyInfo> LoadKeyLocked(const std::string& name, uint32_t version);
  Result<KeyInfo> CreateVersionLocked(const std::string& name, uint32_t version,
                                      const KeyParams& params);
  Result<std::array<uint8_t, kMacSize>> ParamsMacLocked(CK_OBJECT_HANDLE key,
                                                        core::KeyFormat format,
                                                        std::span<const uint8_t> canonical);
  // The parameter record of `application` beside the key labelled `label`: canonical bytes and
  // their tag, checked; nullopt when there is none.
  Result<std::optional<KeyParams>> ReadParamsLocked(std::string_view application,
                                                    CK_OBJECT_HANDLE key, core::KeyFormat format,
                                                    const std::string& name, uint32_t version,
                                                    const std::string& label);
  // Writes `params` and their tag as a non-modifiable token object beside the key.
  Status WriteParamsLocked(std::string_view application, CK_OBJECT_HANDLE key,
                           const std::string& name, uint32_t version, const KeyParams& params);
  // kFailedPrecondition "mechanism_missing" unless the token can make and use keys of `format`.
  Status CheckDerivationMechanisms(core::KeyFormat format);
  // The one token object of class `klass` labelled `label`; key_params_tampered when twice.
  Result<Object> TokenObjectLocked(CK_OBJECT_CLASS klass, const std::string& label);
  // The key's configuration records beside each of `infos` (every version), checked; the one
  // with the highest sequence. `records`, when given, receives every record object found.
  Result<StoredConfig> ReadConfigLocked(const std::vector<KeyInfo>& infos,
                                        std::vector<Object>* records = nullptr);
  // Every version of `name`, loaded and checked; key_not_found when there is none.
  Result<std::vector<KeyInfo>> LoadVersionsLocked(const std::string& name);
};

template <typename T, typename F>
Result<T> Hsm::State::Admin(F&& fn) {
  uint64_t observed = generation.load();
  {
    std::lock_guard lock(admin_mutex);
    if (anchor.valid()) {
      Status login = RequireLogin(anchor);
      if (!login.ok() && !IsUnavailable(login)) return login;
      if (login.ok()) {
        Result<T> result = fn(anchor);
        if (result.ok() || !IsUnavailable(result.status())) return result;
      }
    }
  }
  VECSEAL_RETURN_IF_ERROR(Recover(observed));
  std::lock_guard lock(admin_mutex);
  VECSEAL_RETURN_IF_ERROR(RequireLogin(anchor));
  return fn(anchor);
}

template <typename T, typename F>
Result<T> Hsm::State::Pooled(F&& fn) {
  uint64_t observed = generation.load();
  {
    std::unique_lock<std::mutex> lock;
    PoolSlot& pool_slot = Acquire(lock);
    Status open = EnsureOpen(pool_slot);
    if (open.ok()) {
      Result<T> result = fn(pool_slot);
      if (result.ok()) return result;
      // After any failure the session may hold a half-finished operation: start afresh.
      pool_slot.generation = 0;
      if (!IsUnavailable(result.status())) return result;
    } else if (!IsUnavailable(open)) {
      return open;
    }
    pool_slot.generation = 0;
  }
  VECSEAL_RETURN_IF_ERROR(Recover(observed));
  std::unique_lock<std::mutex> lock;
  PoolSlot& pool_slot = Acquire(lock);
  VECSEAL_RETURN_IF_ERROR(EnsureOpen(pool_slot));
  Result<T> result = fn(pool_slot);
  if (!result.ok()) pool_slot.generation = 0;
  return result;
}

// The key's derivations through the pool (hsm_deriver.cc).
std::shared_ptr<core::Deriver> MakeHsmDeriver(std::shared_ptr<Hsm::State> state, std::string label,
                                              core::KeyFormat format);

}  // namespace vecseal::pkcs11
