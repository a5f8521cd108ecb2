// Model keys and the audit signing key inside a PKCS#11 token: token selection by label, login
// from a PIN file or a systemd credential, a session pool, and recovery from lost sessions and
// device errors. Key bytes never leave the token; nothing here logs.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "vecseal/core/cipher.h"
#include "vecseal/core/deriver.h"
#include "vecseal/core/secure_memory.h"
#include "vecseal/core/status.h"

namespace vecseal::pkcs11 {

class HsmCallCounts;  // cryptoki.h

// Where the user PIN comes from. Exactly one of the two is set.
struct PinSource {
  std::string file;        // an absolute path, e.g. /etc/vecseal/pin (mode 0600 or stricter)
  std::string credential;  // a name under $CREDENTIALS_DIRECTORY (systemd LoadCredential=)
};

// Reads the PIN into locked memory, dropping one trailing "\n" or "\r\n". Errors never include
// file content: kFailedPrecondition "pin_source_invalid" (both or neither set, or
// $CREDENTIALS_DIRECTORY unset, or a credential name with a "/"), kUnavailable "pin_unreadable"
// (missing, unreadable, not a regular file, empty, longer than 255 bytes), kPermissionDenied
// "pin_file_permissions" (other users may read or write the file).
Result<core::SecureBuffer> ReadPin(const PinSource& source);

struct HsmConfig {
  std::string module_path;  // e.g. /usr/lib/softhsm/libsofthsm2.so
  std::string token_label;
  PinSource pin;
  // Sessions in the derivation pool; each serves one caller at a time. SoftHSM2 gains nothing
  // from a second (it serialises HMACs; docs/performance.md, pkcs11); network HSMs want about
  // one per worker thread, so that round trips overlap.
  size_t sessions = 1;
  // Recovery: after a recoverable failure, reopen and log in again up to `recovery_attempts`
  // times, sleeping initial_backoff, 2·initial_backoff, ... capped at max_backoff in between,
  // then retry the operation once. While the HSM stays down, a caller waits at most about
  // recovery_attempts · max_backoff before getting "hsm_unavailable".
  size_t recovery_attempts = 3;
  std::chrono::milliseconds initial_backoff{50};
  std::chrono::milliseconds max_backoff{1000};
  // HMAC on a session copy of each model key (C_CopyObject, CKA_TOKEN=false) instead of the
  // token object, when the key allows it. SoftHSM2's file store re-reads token objects on every
  // use, so a copy is about 3x faster. Keys created as the issue asks (CKA_COPYABLE false) do
  // not allow it and are used in place.
  bool session_key_copies = true;
  // New model keys get CKA_COPYABLE and CKA_MODIFIABLE true so that session copies work
  // (SoftHSM2 refuses a copy that changes CKA_TOKEN on a non-modifiable object). This weakens
  // the key's attribute policy: a PIN holder could copy it or change its usage flags (still
  // never extract it directly). Off by default; docs/hsm.md explains the trade.
  bool create_copyable_keys = false;
  // A model key is used only if the token generated it (CKA_LOCAL, CKA_ALWAYS_SENSITIVE and
  // CKA_NEVER_EXTRACTABLE true) with exactly the usage flags vecseal gives its format: a PIN
  // holder cannot plant a key whose value they know under a vecseal label. True accepts keys
  // imported with C_CreateObject or C_UnwrapKey, e.g. migrated from another HSM, and so trusts
  // whoever imported them; tests use it for keys of known value.
  bool accept_imported_keys = false;
};

struct KeyParams {
  // v2 (an AES-256 key that may only encrypt) unless a module without CKM_AES_ECB needs v1 (an
  // HMAC key).
  core::KeyFormat format = core::KeyFormat::kV2;
  double approximation_factor = 0;  // β
  core::TransformKind transform = core::TransformKind::kRotate;
  // The only dimension the key takes: given at creation, or fixed by its first use (FixDimension).
  std::optional<uint32_t> dimension;
  int64_t created_unix = 0;           // set by CreateKey/RotateKey
};

// Which versions of a key may still be used (Vault's min_encryption_version and
// min_decryption_version): versions below min_encryption_version no longer encrypt, versions
// below min_decryption_version no longer decrypt. 1 and 1 (every version) until configured.
struct KeyConfig {
  uint32_t min_encryption_version = 1;
  uint32_t min_decryption_version = 1;
  friend bool operator==(const KeyConfig&, const KeyConfig&) = default;
};

struct KeyInfo {
  std::string name;
  uint32_t version = 0;
  KeyParams params;
  std::string label;  // CKA_LABEL on the token: "vecseal:<name>:v<version>"
};

// Format v2 derivations go to the module in parts of at most this many bytes (1024 vectors):
// SoftHSM2 2.6.1 takes 35-50 µs for one C_Encrypt of up to 64 KiB, then 254 µs at 96 KiB and
// 1 ms at 256 KiB (docs/performance.md), and vendor modules cap a call's data length.
inline constexpr size_t kDerivationPartBytes = 32768;

struct ModelKey {
  KeyInfo info;
  // The key's derivations inside the token, in its format. Valid across recovery, usable from
  // many threads, and keeps the Hsm's module loaded while it lives. One pool checkout and one key
  // lookup per call: v1 signs each message (Cryptoki has no multi-message MAC); v2 encrypts every
  // block of the call in one operation, in parts of kDerivationPartBytes.
  std::shared_ptr<core::Deriver> deriver;
};

// The audit key's kind. kAuto finds the pair under the label whatever its kind, and generates
// an ECDSA P-256 pair where the token offers it, else an RSA-PSS one (opencryptoki's soft token
// has no EC mechanism).
enum class AuditKeyAlgorithm : uint8_t { kAuto, kEcdsaP256, kRsaPss3072 };
// "auto", "ecdsa-p256", "rsa-pss-3072": the values of the config's audit.key_algorithm.
std::string_view AuditKeyAlgorithmName(AuditKeyAlgorithm algorithm);
std::optional<AuditKeyAlgorithm> ParseAuditKeyAlgorithm(std::string_view name);
// RSA audit keys have at least this many bits (generated with exactly this many).
inline constexpr uint32_t kAuditRsaBits = 3072;

// A key pair generated in the token, ECDSA P-256 or RSA 3072 for RSASSA-PSS (SHA-256, MGF1 with
// SHA-256, 32-byte salt); the private half is sensitive and never extractable. Copyable; shares
// the Hsm's state.
class AuditKey {
 public:
  // A signature over a SHA-256 digest (signed as is, not hashed again): for ECDSA DER-encoded
  // (ECDSA-Sig-Value) so that OpenSSL verifies it; for RSA-PSS the modulus-sized signature.
  Result<std::vector<uint8_t>> SignDigest(std::span<const uint8_t, 32> digest) const;
  // kEcdsaP256 or kRsaPss3072, never kAuto.
  AuditKeyAlgorithm algorithm() const;
  // SubjectPublicKeyInfo PEM ("-----BEGIN PUBLIC KEY-----").
  const std::string& PublicKeyPem() const;
  const std::string& label() const;
  // True when EnsureAuditKey generated the pair rather than finding it.
  bool generated() const;

  struct State;
  explicit AuditKey(std::shared_ptr<const State> state) : state_(std::move(state)) {}

 private:
  std::shared_ptr<const State> state_;
};

// β finite and > 0, dimension (when set) valid for the transform; kInvalidArgument
// "invalid_key_params". What a stored key must satisfy.
Status ValidateKeyParams(const KeyParams& params);
// 1 <= min_decryption_version <= min_encryption_version <= `newest`, the key's newest version;
// kInvalidArgument "invalid_key_config" naming `name` otherwise.
Status ValidateKeyConfig(std::string_view name, const KeyConfig& config, uint32_t newest);
// β of a new key: between these bounds. Below, the noise (radius β/4) is under 0.025% of a unit
// vector's norm, which is no protection; above, it drowns any embedding, and large inputs
// overflow float32.
inline constexpr double kMinApproximationFactor = 1e-3;
inline constexpr double kMaxApproximationFactor = 1e3;
// ValidateKeyParams, and β within the bounds above: what a key being created must satisfy.
Status ValidateNewKeyParams(const KeyParams& params);

// The bytes authenticated by the parameter tag (little-endian):
//   format (u8: 1 or 2) ‖ len(name) (u8) ‖ name ‖ version (u32) ‖ β (IEEE-754 binary64)
//   ‖ transform (u8) ‖ has_dimension (u8) ‖ dimension (u32, 0 when absent) ‖ created_unix (i64)
// v1: the tag is HMAC-SHA256(K, "vecseal/v1/params" ‖ 0x00 ‖ these bytes) under the key itself.
// v2: HMAC-SHA256(PK, "vecseal/v2/params" ‖ 0x00 ‖ these bytes), PK the key's parameters key
// (docs/format.md), derived in the token and wiped after use.
std::vector<uint8_t> CanonicalParamBytes(std::string_view name, uint32_t version,
                                         const KeyParams& params);

// Errors, all with Code and reason:
//   kInvalidArgument "invalid_hsm_config"   bad HsmConfig field (named in the message)
//   kUnavailable     "hsm_module_unloadable" the module cannot be loaded or initialised
//   kNotFound        "token_not_found"       no token carries the label (lists those present)
//   kUnavailable     "hsm_login_failed"      wrong PIN / PIN locked; names the PIN source only
//   kUnavailable     "hsm_unavailable"       the HSM stayed down through recovery; from Open, the
//                                            device did not answer (C_Initialize with a device
//                                            code, or a recoverable code from C_GetSlotList,
//                                            C_OpenSession or C_Login): it may answer later
//   kNotFound        "key_not_found"; kAlreadyExists "key_exists"
//   kFailedPrecondition "key_params_tampered" the stored parameters fail their HMAC
//   kFailedPrecondition "key_params_missing"  a key without its parameter object
//   kFailedPrecondition "key_unprotected"     a key that is not sensitive or is extractable
//   kFailedPrecondition "key_untrusted"       a key the token did not generate, that was ever
//                                            extractable or not sensitive, or whose usage flags
//                                            are not its format's (planted or altered)
//   kFailedPrecondition "mechanism_missing"   the token lacks a mechanism the operation needs
//   kInvalidArgument "invalid_key_config"     minimum versions out of order or beyond the newest
//   kUnavailable "key_deletion_incomplete"    DeleteKey destroyed some objects, not all
class Hsm {
 public:
  // Loads and initialises the module, finds the token, logs in (one attempt), opens the anchor
  // session that lives as long as the Hsm, and fills the pool.
  static Result<std::unique_ptr<Hsm>> Open(const HsmConfig& config);
  ~Hsm();
  Hsm(const Hsm&) = delete;
  Hsm& operator=(const Hsm&) = delete;

  // Every version of every model key, sorted by name then version; never reads key values.
  // A key whose parameters fail their HMAC makes the whole listing fail (fail closed).
  Result<std::vector<KeyInfo>> ListKeys();
  // Version 1 of a new key. created_unix in `params` is ignored and set to now.
  Result<KeyInfo> CreateKey(std::string_view name, const KeyParams& params);
  // Version N+1 with the parameters of version N, in `format` (whatever version N's was);
  // version N stays usable.
  Result<KeyInfo> RotateKey(std::string_view name, core::KeyFormat format = core::KeyFormat::kV2);
  // The newest version when `version` is nullopt. Verifies the stored parameters.
  Result<ModelKey> FindKey(std::string_view name, std::optional<uint32_t> version = {});
  // Fixes the dimension of every version of a key created without one, as its first use does,
  // in authenticated records beside each version. Returns the key's dimension: `dimension`, or
  // the one fixed before (by an earlier use, or at creation), which the caller must compare.
  // kInvalidArgument "invalid_key_params" when `dimension` is out of range for the transform.
  Result<uint32_t> FixDimension(std::string_view name, uint32_t dimension);
  // The audit key pair with this label, generated on first use (of `algorithm`'s kind; with
  // kAuto, ECDSA P-256 where the token offers it, else RSA-PSS). A pair already there is used
  // whatever its kind under kAuto; under another choice, a pair of the other kind is
  // kFailedPrecondition "audit_key_invalid". kFailedPrecondition "mechanism_missing" when the
  // token can make neither kind (or not the one asked for).
  Result<AuditKey> EnsureAuditKey(std::string_view label = "vecseal-audit",
                                  AuditKeyAlgorithm algorithm = AuditKeyAlgorithm::kAuto);
  // The key's minimum versions, from authenticated records beside its versions on the token:
  // each record is MACed like the parameters, under the key version it lies beside, and carries
  // a sequence number; the highest wins, so a record restored from an older copy of the token
  // does not undo a later change. Defaults (1, 1) when none was written. A record that fails its
  // MAC fails the call (key_params_tampered).
  Result<KeyConfig> ReadKeyConfig(std::string_view name);
  // Stores new minimum versions beside every version of the key, then removes the older
  // records. Needs 1 <= min_decryption_version <= min_encryption_version <= the newest version,
  // else kInvalidArgument "invalid_key_config".
  Result<KeyConfig> ConfigureKey(std::string_view name, const KeyConfig& config);
  // Destroys every version of the key and every record beside them, oldest version first, so
  // that a deletion cut short leaves the newest versions (and encryption under the newest).
  // Returns the versions destroyed. key_not_found when nothing of the key is on the token. When
  // it fails after destroying something: kUnavailable "key_deletion_incomplete" naming what was
  // destroyed and what remains; calling it again finishes the work.
  Result<std::vector<uint32_t>> DeleteKey(std::string_view name);
  // Cheap liveness check (C_GetSessionInfo on the anchor session), recovering if needed.
  Status Ping();
  // Every mechanism vecseal needs for new keys of `format` (v2: AES-256 generation and
  // AES-ECB encryption; v1: generic secret generation and HMAC-SHA256 signing) and for the audit
  // key of `audit` (EC P-256 pair generation and ECDSA signing, or RSA pair generation and
  // RSA-PSS signing; kAuto: either): kFailedPrecondition "mechanism_missing" naming the first
  // one the token lacks and the way out. A vendor HSM's first check.
  Status CheckMechanisms(core::KeyFormat format = core::KeyFormat::kV2,
                         AuditKeyAlgorithm audit = AuditKeyAlgorithm::kAuto);
  // The audit key kind kAuto would generate on this token: kEcdsaP256 where it offers EC
  // P-256 pair generation and ECDSA signing, else kRsaPss3072 where it offers RSA pair
  // generation and RSA-PSS; mechanism_missing naming both otherwise.
  Result<AuditKeyAlgorithm> AuditKeyAlgorithmFor(AuditKeyAlgorithm requested);
  // How often this process called each counted Cryptoki function.
  const HsmCallCounts& calls() const;

  struct State;

 private:
  explicit Hsm(std::shared_ptr<State> state) : state_(std::move(state)) {}
  std::shared_ptr<State> state_;
};

}  // namespace vecseal::pkcs11
