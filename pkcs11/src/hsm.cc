// Audit key: raw Cryptoki (CKM_EC_KEY_PAIR_GEN, CKM_ECDSA) rather than libp11, because libp11
// calls C_Finalize when it unloads, which would kill the sessions this layer owns, and because
// one code path for both key kinds keeps recovery in one place.
#include "vecseal/pkcs11/hsm.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <type_traits>
#include <unordered_map>

#include "vecseal/pkcs11/cryptoki.h"

namespace vecseal::pkcs11 {
namespace {

constexpr std::string_view kLabelPrefix = "vecseal:";
constexpr std::string_view kParamsApplication = "vecseal/v1/params";
// A key created without a dimension gets it at first use: a second parameter record, the same
// as the first but for the dimension, authenticated the same way (docs/format.md §6).
constexpr std::string_view kFixedDimensionApplication = "vecseal/v1/params-dimension";
// A key's minimum versions (KeyConfig), beside each version. Its canonical bytes start with
// kConfigMarker, which no parameter record can (theirs start with the format, 1 or 2), so that
// one can never pass for the other under the same MAC.
constexpr std::string_view kConfigApplication = "vecseal/v1/key-config";
constexpr uint8_t kConfigMarker = 0xC1;
constexpr size_t kMaxPinSize = 255;
constexpr size_t kMacSize = 32;
// DER of OID 1.2.840.10045.3.1.7 (prime256v1).
constexpr uint8_t kP256Oid[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};

// Not const because CK_ATTRIBUTE::pValue is a plain void*; Cryptoki only reads them.
CK_BBOOL kTrue = CK_TRUE;
CK_BBOOL kFalse = CK_FALSE;

CK_ATTRIBUTE Attr(CK_ATTRIBUTE_TYPE type, CK_BBOOL& value) { return {type, &value, sizeof value}; }
template <typename T>
  requires std::is_arithmetic_v<T>
CK_ATTRIBUTE Attr(CK_ATTRIBUTE_TYPE type, T& value) {
  return {type, &value, sizeof value};
}
CK_ATTRIBUTE Attr(CK_ATTRIBUTE_TYPE type, const std::string& value) {
  return {type, const_cast<char*>(value.data()), value.size()};
}
CK_ATTRIBUTE Attr(CK_ATTRIBUTE_TYPE type, std::span<const uint8_t> value) {
  return {type, const_cast<uint8_t*>(value.data()), value.size()};
}

bool IsUnavailable(const Status& status) { return status.reason() == "hsm_unavailable"; }

std::string KeyLabel(std::string_view name, uint32_t version) {
  return std::string(kLabelPrefix) + std::string(name) + ":v" + std::to_string(version);
}

// "vecseal:<name>:v<version>" -> (name, version); nullopt for anything else on the token.
std::optional<std::pair<std::string, uint32_t>> ParseKeyLabel(std::string_view label) {
  if (!label.starts_with(kLabelPrefix)) return std::nullopt;
  label.remove_prefix(kLabelPrefix.size());
  size_t colon = label.rfind(":v");
  if (colon == std::string_view::npos) return std::nullopt;
  std::string_view name = label.substr(0, colon);
  std::string_view digits = label.substr(colon + 2);
  if (!ValidateKeyName(name).ok() || digits.empty() || digits.size() > 10 || digits[0] == '0') {
    return std::nullopt;
  }
  uint64_t version = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return std::nullopt;
    version = version * 10 + static_cast<uint64_t>(c - '0');
  }
  if (version > UINT32_MAX) return std::nullopt;
  return std::pair(std::string(name), static_cast<uint32_t>(version));
}

void PutU32(std::vector<uint8_t>& out, uint32_t value) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(value >> (8 * i)));
}
void PutU64(std::vector<uint8_t>& out, uint64_t value) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(value >> (8 * i)));
}
uint64_t GetLe(std::span<const uint8_t> bytes) {
  uint64_t value = 0;
  for (size_t i = bytes.size(); i-- > 0;) value = (value << 8) | bytes[i];
  return value;
}

Status Tampered(std::string_view label, std::string_view what) {
  return Status(Code::kFailedPrecondition, "key_params_tampered",
                "the stored parameters of " + std::string(label) + " " + std::string(what) +
                    "; they were changed outside vecseal, so the key is refused. Restore the "
                    "token from backup or rotate to a new key");
}

Result<KeyParams> ParseCanonicalParams(std::span<const uint8_t> bytes, std::string_view name,
                                       uint32_t version, std::string_view label) {
  // Fixed part after the name: version 4, β 8, transform 1, has_dim 1, dim 4, created 8.
  constexpr size_t kFixed = 4 + 8 + 1 + 1 + 4 + 8;
  const bool known_format = bytes.size() >= 2 && (bytes[0] == static_cast<uint8_t>(core::KeyFormat::kV1) ||
                                                  bytes[0] == static_cast<uint8_t>(core::KeyFormat::kV2));
  if (!known_format || bytes.size() != 2 + bytes[1] + kFixed) {
    return Tampered(label, "have an unknown layout");
  }
  std::string_view stored_name(reinterpret_cast<const char*>(bytes.data() + 2), bytes[1]);
  auto rest = bytes.subspan(2 + bytes[1]);
  if (stored_name != name || GetLe(rest.subspan(0, 4)) != version) {
    return Tampered(label, "belong to another key");
  }
  KeyParams params;
  params.format = static_cast<core::KeyFormat>(bytes[0]);
  params.approximation_factor = std::bit_cast<double>(GetLe(rest.subspan(4, 8)));
  uint8_t transform = rest[12];
  if (transform != static_cast<uint8_t>(core::TransformKind::kPermute) &&
      transform != static_cast<uint8_t>(core::TransformKind::kRotate)) {
    return Tampered(label, "name an unknown transform");
  }
  params.transform = static_cast<core::TransformKind>(transform);
  if (rest[13] > 1) return Tampered(label, "have an invalid dimension flag");
  if (rest[13] == 1) params.dimension = static_cast<uint32_t>(GetLe(rest.subspan(14, 4)));
  params.created_unix = static_cast<int64_t>(GetLe(rest.subspan(18, 8)));
  if (!ValidateKeyParams(params).ok()) return Tampered(label, "are out of range");
  return params;
}

Status LoginFailed(const HsmConfig& config, CK_RV rv) {
  std::string source = !config.pin.credential.empty()
                           ? "systemd credential \"" + config.pin.credential + "\""
                           : "PIN file " + config.pin.file;
  return Status(Code::kUnavailable, "hsm_login_failed",
                "login to token \"" + config.token_label + "\" failed: " + CkrSentence(rv) + " (" +
                    std::string(CkrName(rv)) + "); check the PIN in " + source +
                    ". vecseal tried exactly once, so at most one attempt counted against the "
                    "token's retry limit");
}

bool IsPinError(CK_RV rv) {
  return rv == CKR_PIN_INCORRECT || rv == CKR_PIN_LOCKED || rv == CKR_PIN_EXPIRED ||
         rv == CKR_PIN_INVALID || rv == CKR_PIN_LEN_RANGE || rv == CKR_USER_PIN_NOT_INITIALIZED;
}

// Private objects are invisible until login, so a session that lost its login state (another
// session logged out, the token was reset) must recover rather than report keys as missing.
Status RequireLogin(const Session& session) {
  auto info = session.Info();
  if (!info.ok()) return std::move(info).TakeStatus();
  if (info->state != CKS_RO_USER_FUNCTIONS && info->state != CKS_RW_USER_FUNCTIONS) {
    return CkrStatus("C_GetSessionInfo", CKR_USER_NOT_LOGGED_IN);
  }
  return Status::Ok();
}

// CKA_SENSITIVE true and CKA_EXTRACTABLE false, for keys made outside vecseal under its labels.
// Both attributes only ever change towards safety, so a key that passes once stays safe.
Result<bool> StaysInToken(const Object& key) {
  auto sensitive = key.GetBool(CKA_SENSITIVE);
  if (!sensitive.ok()) return std::move(sensitive).TakeStatus();
  auto extractable = key.GetBool(CKA_EXTRACTABLE);
  if (!extractable.ok()) return std::move(extractable).TakeStatus();
  return *sensitive && !*extractable;
}

// Why a key or private key is not one the token generated and always kept secret, or "" when
// it is. These attributes can only be set by the token itself, so a key whose value someone
// outside knows (created with C_CreateObject, or unwrapped) fails them.
Result<std::string> NotGeneratedByTokenBecause(const Object& key) {
  for (const auto& [type, name] : {std::pair{CKA_LOCAL, "CKA_LOCAL"},
                                   std::pair{CKA_ALWAYS_SENSITIVE, "CKA_ALWAYS_SENSITIVE"},
                                   std::pair{CKA_NEVER_EXTRACTABLE, "CKA_NEVER_EXTRACTABLE"}}) {
    auto flag = key.GetBool(type);
    if (!flag.ok()) return std::move(flag).TakeStatus();
    if (!*flag) return std::string(name) + " is false";
  }
  return std::string();
}

// Why a model key is not one the token generated with vecseal's template, or "" when it is:
// its provenance (unless imported keys are accepted) and exactly the format's usage flags.
Result<std::string> UntrustedBecause(const Object& key, core::KeyFormat format,
                                     bool accept_imported) {
  if (!accept_imported) {
    auto imported = NotGeneratedByTokenBecause(key);
    if (!imported.ok() || !imported->empty()) return imported;
  }
  const bool v2 = format == core::KeyFormat::kV2;
  struct Expect {
    CK_ATTRIBUTE_TYPE type;
    const char* name;
    bool value;
  };
  const Expect expected[] = {
      {CKA_SIGN, "CKA_SIGN", !v2},          {CKA_ENCRYPT, "CKA_ENCRYPT", v2},
      {CKA_VERIFY, "CKA_VERIFY", false},    {CKA_DECRYPT, "CKA_DECRYPT", false},
      {CKA_WRAP, "CKA_WRAP", false},        {CKA_UNWRAP, "CKA_UNWRAP", false},
      {CKA_DERIVE, "CKA_DERIVE", false},
  };
  for (const Expect& e : expected) {
    auto flag = key.GetBool(e.type);
    if (!flag.ok()) return std::move(flag).TakeStatus();
    if (*flag != e.value) return std::string(e.name) + (e.value ? " is false" : " is true");
  }
  // Both formats are 256-bit keys; a shorter AES key would be a weaker v2 key.
  auto length = key.GetAttribute(CKA_VALUE_LEN);
  if (!length.ok()) return std::move(length).TakeStatus();
  CK_ULONG bytes = 0;
  if (length->size() == sizeof bytes) std::memcpy(&bytes, length->data(), sizeof bytes);
  if (bytes != 32) return "CKA_VALUE_LEN is " + std::to_string(bytes) + ", not 32";
  return std::string();
}

// CKK_GENERIC_SECRET is a v1 (HMAC) key, CKK_AES a v2 key; nothing else is a model key.
std::optional<core::KeyFormat> FormatOfKeyType(const std::vector<uint8_t>& value) {
  CK_KEY_TYPE type = 0;
  if (value.size() != sizeof type) return std::nullopt;
  std::memcpy(&type, value.data(), sizeof type);
  if (type == CKK_GENERIC_SECRET) return core::KeyFormat::kV1;
  if (type == CKK_AES) return core::KeyFormat::kV2;
  return std::nullopt;
}

Status InvalidConfig(std::string field, std::string fix) {
  return Status(Code::kInvalidArgument, "invalid_hsm_config", field + ": " + fix);
}

bool RefusedAttributeType(const Status& status) {
  return status.message().find(CkrName(CKR_ATTRIBUTE_TYPE_INVALID)) != std::string::npos;
}

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

}  // namespace

// PIN

namespace {

Result<std::string> PinPath(const PinSource& source) {
  if (source.file.empty() == source.credential.empty()) {
    return Status(Code::kFailedPrecondition, "pin_source_invalid",
                  "set exactly one of the PIN file and the systemd credential name");
  }
  std::string path = source.file;
  if (!source.credential.empty()) {
    if (source.credential.find('/') != std::string::npos || source.credential == "." ||
        source.credential == "..") {
      return Status(Code::kFailedPrecondition, "pin_source_invalid",
                    "a credential name is a plain file name under $CREDENTIALS_DIRECTORY, "
                    "without \"/\"");
    }
    const char* directory = std::getenv("CREDENTIALS_DIRECTORY");
    if (directory == nullptr || *directory == '\0') {
      return Status(Code::kFailedPrecondition, "pin_source_invalid",
                    "the PIN is the systemd credential \"" + source.credential +
                        "\" but $CREDENTIALS_DIRECTORY is not set; add LoadCredential=" +
                        source.credential + ":<path> to the unit, or without systemd set it to "
                        "a directory holding the file (docs/operations.md, \"Without systemd\")");
    }
    path = std::string(directory) + "/" + source.credential;
  }
  return path;
}

// What identifies one version of the PIN file: a PIN the token refused is not offered again
// until the file changes, since each attempt counts against the token's retry limit.
using PinFileStamp = std::array<int64_t, 7>;

std::optional<PinFileStamp> StampPinFile(const std::string& path) {
  struct stat info {};
  if (stat(path.c_str(), &info) != 0) return std::nullopt;
  return PinFileStamp{static_cast<int64_t>(info.st_dev),  static_cast<int64_t>(info.st_ino),
                      static_cast<int64_t>(info.st_size), info.st_mtim.tv_sec,
                      info.st_mtim.tv_nsec,               info.st_ctim.tv_sec,
                      info.st_ctim.tv_nsec};
}

}  // namespace

Result<core::SecureBuffer> ReadPin(const PinSource& source) {
  auto resolved = PinPath(source);
  if (!resolved.ok()) return std::move(resolved).TakeStatus();
  const std::string path = std::move(resolved).value();
  auto unreadable = [&path](std::string why) {
    return Status(Code::kUnavailable, "pin_unreadable",
                  "cannot read the PIN from " + path + ": " + why);
  };
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return unreadable(std::strerror(errno));
  struct stat info {};
  if (fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
    close(fd);
    return unreadable("not a regular file");
  }
  if ((info.st_mode & (S_IROTH | S_IWOTH)) != 0) {
    close(fd);
    return Status(Code::kPermissionDenied, "pin_file_permissions",
                  path + " is readable or writable by other users; chmod o-rw " + path);
  }
  auto buffer = core::SecureBuffer::Allocate(kMaxPinSize + 2);
  if (!buffer.ok()) {
    close(fd);
    return std::move(buffer).TakeStatus();
  }
  size_t size = 0;
  for (;;) {
    ssize_t n = read(fd, buffer->data() + size, buffer->size() - size);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int error = errno;
      close(fd);
      return unreadable(std::strerror(error));
    }
    if (n == 0) break;
    size += static_cast<size_t>(n);
    if (size == buffer->size()) break;
  }
  close(fd);
  if (size > 0 && buffer->data()[size - 1] == '\n') --size;
  if (size > 0 && buffer->data()[size - 1] == '\r') --size;
  if (size == 0) return unreadable("the file is empty");
  if (size > kMaxPinSize) return unreadable("longer than 255 bytes");
  auto pin = core::SecureBuffer::Allocate(size);
  if (!pin.ok()) return std::move(pin).TakeStatus();
  std::memcpy(pin->data(), buffer->data(), size);
  return std::move(pin).value();  // `buffer` is wiped by its destructor
}

// Names and parameters

Status ValidateKeyName(std::string_view name) {
  auto ok_first = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  auto ok_rest = [&](char c) { return ok_first(c) || c == '.' || c == '_' || c == '-'; };
  bool valid = !name.empty() && name.size() <= 64 && ok_first(name[0]) &&
               std::all_of(name.begin() + 1, name.end(), ok_rest);
  if (valid) return Status::Ok();
  return Status(Code::kInvalidArgument, "invalid_key_name",
                "a key name is 1 to 64 characters from a-z, 0-9, '.', '_' and '-', starting with "
                "a letter or digit");
}

Status ValidateKeyParams(const KeyParams& params) {
  if (params.format != core::KeyFormat::kV1 && params.format != core::KeyFormat::kV2) {
    return Status(Code::kInvalidArgument, "invalid_key_params",
                  "the derivation must be \"aes\" (format v2) or \"hmac\" (format v1)");
  }
  if (!std::isfinite(params.approximation_factor) || params.approximation_factor <= 0) {
    return Status(Code::kInvalidArgument, "invalid_key_params",
                  "the approximation factor (beta) must be a finite number greater than 0");
  }
  if (params.transform != core::TransformKind::kPermute &&
      params.transform != core::TransformKind::kRotate) {
    return Status(Code::kInvalidArgument, "invalid_key_params",
                  "the transform must be \"permute\" or \"rotate\"");
  }
  if (params.dimension) {
    size_t limit = params.transform == core::TransformKind::kRotate ? core::kMaxRotateDimension
                                                                    : core::kMaxDimension;
    if (*params.dimension == 0 || *params.dimension > limit) {
      return Status(Code::kInvalidArgument, "invalid_key_params",
                    "the dimension must be between 1 and " + std::to_string(limit) + " for " +
                        std::string(core::TransformName(params.transform)));
    }
  }
  return Status::Ok();
}

Status ValidateNewKeyParams(const KeyParams& params) {
  VECSEAL_RETURN_IF_ERROR(ValidateKeyParams(params));
  if (params.approximation_factor < kMinApproximationFactor ||
      params.approximation_factor > kMaxApproximationFactor) {
    return Status(Code::kInvalidArgument, "invalid_key_params",
                  "the approximation factor (beta) of a new key must be between 0.001 and 1000; "
                  "vecseal calibrate recommends one for your data");
  }
  return Status::Ok();
}

std::vector<uint8_t> CanonicalParamBytes(std::string_view name, uint32_t version,
                                         const KeyParams& params) {
  assert(name.size() <= 255);
  std::vector<uint8_t> out;
  out.push_back(static_cast<uint8_t>(params.format));
  out.push_back(static_cast<uint8_t>(name.size()));
  // Byte by byte: vector::insert here trips a false -Warray-bounds in GCC 12.
  for (char c : name) out.push_back(static_cast<uint8_t>(c));
  PutU32(out, version);
  PutU64(out, std::bit_cast<uint64_t>(params.approximation_factor));
  out.push_back(static_cast<uint8_t>(params.transform));
  out.push_back(params.dimension ? 1 : 0);
  PutU32(out, params.dimension.value_or(0));
  PutU64(out, static_cast<uint64_t>(params.created_unix));
  return out;
}

namespace {

// kConfigMarker ‖ len(name) (u8) ‖ name ‖ version (u32) ‖ sequence (u64)
//   ‖ min_encryption_version (u32) ‖ min_decryption_version (u32), little-endian.
std::vector<uint8_t> CanonicalConfigBytes(std::string_view name, uint32_t version,
                                          uint64_t sequence, const KeyConfig& config) {
  std::vector<uint8_t> out;
  out.push_back(kConfigMarker);
  out.push_back(static_cast<uint8_t>(name.size()));
  for (char c : name) out.push_back(static_cast<uint8_t>(c));
  PutU32(out, version);
  PutU64(out, sequence);
  PutU32(out, config.min_encryption_version);
  PutU32(out, config.min_decryption_version);
  return out;
}

struct StoredConfig {
  KeyConfig config;
  uint64_t sequence = 0;  // 0: no record, the defaults
};

Result<StoredConfig> ParseCanonicalConfig(std::span<const uint8_t> bytes, std::string_view name,
                                          uint32_t version, std::string_view label) {
  constexpr size_t kFixed = 4 + 8 + 4 + 4;
  if (bytes.size() < 2 || bytes[0] != kConfigMarker || bytes.size() != 2 + bytes[1] + kFixed) {
    return Tampered(label, "(minimum versions) have an unknown layout");
  }
  std::string_view stored_name(reinterpret_cast<const char*>(bytes.data() + 2), bytes[1]);
  auto rest = bytes.subspan(2 + bytes[1]);
  if (stored_name != name || GetLe(rest.subspan(0, 4)) != version) {
    return Tampered(label, "(minimum versions) belong to another key");
  }
  StoredConfig stored;
  stored.sequence = GetLe(rest.subspan(4, 8));
  stored.config.min_encryption_version = static_cast<uint32_t>(GetLe(rest.subspan(12, 4)));
  stored.config.min_decryption_version = static_cast<uint32_t>(GetLe(rest.subspan(16, 4)));
  if (stored.sequence == 0 || stored.config.min_decryption_version == 0 ||
      stored.config.min_decryption_version > stored.config.min_encryption_version) {
    return Tampered(label, "(minimum versions) are out of range");
  }
  return stored;
}

}  // namespace

// Shared state

namespace {

// Model keys and the audit key may share a label on a foreign token; the class tells them apart.
std::string CacheKey(const std::string& label, CK_OBJECT_CLASS klass) {
  return std::to_string(klass) + ":" + label;
}

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

}  // namespace

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

Status Hsm::State::ConnectLocked() {
  auto slot_id = module.FindTokenSlot(config.token_label);
  if (!slot_id.ok()) return std::move(slot_id).TakeStatus();
  auto session = Session::Open(module, *slot_id, true);
  if (!session.ok()) return std::move(session).TakeStatus();
  auto pin_path = PinPath(config.pin);
  if (!pin_path.ok()) return std::move(pin_path).TakeStatus();
  const std::optional<PinFileStamp> stamp = StampPinFile(*pin_path);
  if (refused_pin_file && stamp == refused_pin_file) return refused_login;
  auto pin = ReadPin(config.pin);
  if (!pin.ok()) return std::move(pin).TakeStatus();
  CK_RV rv = session->LoginRaw(std::span<const uint8_t>(pin->data(), pin->size()));
  pin = core::SecureBuffer();  // wiped now, not at scope end
  if (rv != CKR_OK) {
    if (!IsPinError(rv)) return CkrStatus("C_Login", rv);
    refused_pin_file = stamp;
    refused_login = LoginFailed(config, rv);
    return refused_login;
  }
  refused_pin_file.reset();
  anchor = std::move(session).value();
  slot = *slot_id;
  generation.fetch_add(1);
  return Status::Ok();
}

void Hsm::State::RetireAnchorLocked() {
  if (!anchor.valid()) return;
  CK_SESSION_INFO info{};
  const CK_RV rv = anchor.functions()->C_GetSessionInfo(anchor.handle(), &info);
  // The anchor is this Hsm's only read-write session: a read-only one under its number is a
  // pooled session opened since, on a number the module reused.
  const bool gone = rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED ||
                    (rv == CKR_OK && (info.flags & CKF_RW_SESSION) == 0);
  if (!gone) {
    anchor.Close();
    return;
  }
  anchor.Forget();
  initialisation.fetch_add(1);
}

Status Hsm::State::Recover(uint64_t observed_generation) {
  uint64_t failures_seen = recovery_failures.load();
  std::lock_guard lock(admin_mutex);
  if (generation.load() != observed_generation) return Status::Ok();  // someone else did it
  if (recovery_failures.load() != failures_seen) {
    // A recovery failed while we waited for the lock; do not stack another backoff on it.
    return Status(Code::kUnavailable, "hsm_unavailable",
                  "the HSM (token \"" + config.token_label +
                      "\") is unavailable; a reconnection attempt just failed");
  }
  RetireAnchorLocked();
  std::chrono::milliseconds backoff = config.initial_backoff;
  Status last;
  for (size_t attempt = 0; attempt < config.recovery_attempts; ++attempt) {
    if (attempt > 0) {
      std::this_thread::sleep_for(backoff);
      backoff = std::min(backoff * 2, config.max_backoff);
    }
    last = ConnectLocked();
    if (last.ok()) return last;
    if (last.reason() == "hsm_login_failed" || last.reason() == "pin_source_invalid" ||
        last.reason() == "pin_file_permissions") {
      break;  // retrying a wrong PIN could lock the token
    }
    // Last, initialise the module afresh: p11-kit-client.so does not reconnect by itself after
    // its server went away and came back.
    if (attempt + 1 == config.recovery_attempts) {
      anchor.Forget();
      if (module.Reinitialize().ok()) {
        initialisation.fetch_add(1);
        last = ConnectLocked();
        if (last.ok()) return last;
      }
    }
  }
  recovery_failures.fetch_add(1);
  if (last.reason() == "hsm_login_failed") return last;
  return Status(Code::kUnavailable, "hsm_unavailable",
                "the HSM (token \"" + config.token_label + "\" in " + config.module_path +
                    ") is unavailable after " + std::to_string(config.recovery_attempts) +
                    " reconnection attempts; last error: " + last.message());
}

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

PoolSlot& Hsm::State::Acquire(std::unique_lock<std::mutex>& lock) {
  size_t start = next_slot.fetch_add(1, std::memory_order_relaxed);
  for (size_t i = 0; i < pool.size(); ++i) {
    PoolSlot& candidate = *pool[(start + i) % pool.size()];
    std::unique_lock attempt(candidate.mutex, std::try_to_lock);
    if (attempt.owns_lock()) {
      lock = std::move(attempt);
      return candidate;
    }
  }
  PoolSlot& slot_ref = *pool[start % pool.size()];
  lock = std::unique_lock(slot_ref.mutex);
  return slot_ref;
}

Status Hsm::State::EnsureOpen(PoolSlot& pool_slot) {
  uint64_t current = generation.load();
  const uint64_t epoch = key_epoch.load();
  if (pool_slot.generation == current && pool_slot.session.valid()) {
    if (pool_slot.key_epoch != epoch) {
      EndEncryption(pool_slot);
      pool_slot.keys.clear();
      pool_slot.key_epoch = epoch;
    }
    return Status::Ok();
  }
  if (pool_slot.initialisation != initialisation.load()) {
    for (auto& [unused, key] : pool_slot.keys) key.Release();
    pool_slot.session.Forget();
  }
  pool_slot.keys.clear();  // session copies die with their session; drop them first
  pool_slot.open_encryption.clear();
  pool_slot.session.Close();
  auto session = Session::Open(module, slot.load(), false);
  if (!session.ok()) return std::move(session).TakeStatus();
  pool_slot.session = std::move(session).value();
  pool_slot.generation = current;
  pool_slot.initialisation = initialisation.load();
  pool_slot.key_epoch = epoch;
  return Status::Ok();
}

void Hsm::State::EndEncryption(PoolSlot& pool_slot) {
  if (pool_slot.open_encryption.empty()) return;
  pool_slot.open_encryption.clear();
  (void)pool_slot.session.EncryptFinal();
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

Result<CK_OBJECT_HANDLE> Hsm::State::KeyHandle(PoolSlot& pool_slot, const std::string& label,
                                               CK_OBJECT_CLASS klass) {
  const std::string cache_key = CacheKey(label, klass);
  if (auto it = pool_slot.keys.find(cache_key); it != pool_slot.keys.end()) {
    return it->second.handle();
  }
  // Logged out (the token drops the login when its last session closes, as after a lost
  // connection), the keys are invisible and Find answers "none": so the login is checked first,
  // and its absence is hsm_unavailable, which recovers. Checked after an empty answer instead,
  // it raced with another thread's recovery logging in between the two calls, and a session
  // loss became key_not_found (HsmFaultTest.SessionLossAndTransientErrorsMidLoadAreInvisible,
  // under ASan). vecseal never logs out, so a login lost after this check means every session
  // closed, this one too, and Find then fails instead of answering "none".
  VECSEAL_RETURN_IF_ERROR(RequireLogin(pool_slot.session));
  EndEncryption(pool_slot);
  // Token objects only: session copies made by other pooled sessions carry the same label.
  CK_ATTRIBUTE match[] = {Attr(CKA_CLASS, klass), Attr(CKA_TOKEN, kTrue), Attr(CKA_LABEL, label)};
  auto found = FindKeys(pool_slot.session, match);
  if (!found.ok()) return std::move(found).TakeStatus();
  if (found->size() != 1) {
    return Status(Code::kNotFound, "key_not_found",
                  found->empty() ? "the token no longer holds " + label
                                 : "the token holds several objects labelled " + label);
  }
  Object key = std::move(found->front());
  if (klass == CKO_SECRET_KEY && config.session_key_copies) {
    auto copyable = key.GetBool(CKA_COPYABLE);
    if (copyable.ok() && *copyable) {
      CK_ATTRIBUTE changes[] = {Attr(CKA_TOKEN, kFalse)};
      std::unique_lock copying(key_copy_mutex);
      auto copy = pool_slot.session.Copy(key.handle(), changes, true);
      copying.unlock();
      if (copy.ok()) key = std::move(copy).value();
      // A refused copy only costs speed: fall through and use the token object.
    }
  }
  CK_OBJECT_HANDLE handle = key.handle();
  pool_slot.keys.emplace(cache_key, std::move(key));
  return handle;
}

Result<std::vector<std::pair<std::string, uint32_t>>> Hsm::State::KeyVersionsLocked(
    std::optional<std::string_view> name) {
  // Both key types: LoadKeyLocked refuses a version whose type does not match its parameters.
  CK_OBJECT_CLASS klass = CKO_SECRET_KEY;
  CK_ATTRIBUTE match[] = {Attr(CKA_CLASS, klass), Attr(CKA_TOKEN, kTrue)};
  auto objects = FindKeys(anchor, match);
  if (!objects.ok()) return std::move(objects).TakeStatus();
  std::vector<std::pair<std::string, uint32_t>> versions;
  for (const Object& object : *objects) {
    auto label = object.GetAttribute(CKA_LABEL);
    if (!label.ok()) return std::move(label).TakeStatus();
    auto parsed = ParseKeyLabel(std::string_view(reinterpret_cast<const char*>(label->data()),
                                                 label->size()));
    if (!parsed || (name && parsed->first != *name)) continue;
    versions.push_back(std::move(*parsed));
  }
  std::sort(versions.begin(), versions.end());
  versions.erase(std::unique(versions.begin(), versions.end()), versions.end());
  return versions;
}

Result<std::array<uint8_t, kMacSize>> Hsm::State::ParamsMacLocked(
    CK_OBJECT_HANDLE key, core::KeyFormat format, std::span<const uint8_t> canonical) {
  const bool v2 = format == core::KeyFormat::kV2;
  const std::string_view domain = v2 ? core::kDomainParamsV2 : core::kDomainParams;
  std::vector<uint8_t> message(domain.begin(), domain.end());
  message.push_back(0);
  message.insert(message.end(), canonical.begin(), canonical.end());
  std::array<uint8_t, kMacSize> mac{};
  if (!v2) {
    auto length = anchor.Sign(CKM_SHA256_HMAC, key, message, mac);
    if (!length.ok()) return std::move(length).TakeStatus();
    if (*length != kMacSize) {
      return Status(Code::kInternal, "hsm_error", "CKM_SHA256_HMAC returned a short MAC");
    }
    return mac;
  }
  auto params_key = core::SecureBuffer::Allocate(sizeof(core::Seed));
  if (!params_key.ok()) return std::move(params_key).TakeStatus();
  uint8_t blocks[2 * core::kBlockSize];
  core::SecretBlocks(core::BlockDomain::kParamsKey, core::BlockInput{}, blocks);
  CK_RV rv = anchor.EncryptRaw(CKM_AES_ECB, key, blocks,
                               std::span<uint8_t>(params_key->data(), params_key->size()),
                               kDerivationPartBytes);
  if (rv != CKR_OK) return CkrStatus("C_Encrypt", rv);
  unsigned int length = 0;
  const bool ok = HMAC(EVP_sha256(), params_key->data(), static_cast<int>(params_key->size()),
                       message.data(), message.size(), mac.data(), &length) != nullptr &&
                  length == kMacSize;
  if (!ok) return Status(Code::kInternal, "hmac_failed", "OpenSSL HMAC-SHA256 failed");
  return mac;
}

Status Hsm::State::CheckDerivationMechanisms(core::KeyFormat format) {
  struct Needed {
    CK_MECHANISM_TYPE mechanism;
    CK_FLAGS flag;
    const char* what;
  };
  static constexpr Needed kV2[] = {
      {CKM_AES_KEY_GEN, CKF_GENERATE, "CKM_AES_KEY_GEN with CKF_GENERATE (format v2 key creation)"},
      {CKM_AES_ECB, CKF_ENCRYPT, "CKM_AES_ECB with CKF_ENCRYPT (format v2 derivation)"},
  };
  static constexpr Needed kV1[] = {
      {CKM_GENERIC_SECRET_KEY_GEN, CKF_GENERATE,
       "CKM_GENERIC_SECRET_KEY_GEN with CKF_GENERATE (format v1 key creation)"},
      {CKM_SHA256_HMAC, CKF_SIGN, "CKM_SHA256_HMAC with CKF_SIGN (format v1 derivation)"},
  };
  const bool v2 = format == core::KeyFormat::kV2;
  const CK_SLOT_ID slot_id = slot.load();
  for (const Needed& needed : v2 ? std::span<const Needed>(kV2) : std::span<const Needed>(kV1)) {
    CK_MECHANISM_INFO info{};
    const CK_RV rv = module.functions()->C_GetMechanismInfo(slot_id, needed.mechanism, &info);
    if (rv == CKR_MECHANISM_INVALID || (rv == CKR_OK && (info.flags & needed.flag) == 0)) {
      return Status(Code::kFailedPrecondition, "mechanism_missing",
                    "token \"" + config.token_label + "\" does not offer " + needed.what +
                        (v2 ? "; create keys with \"derivation\": \"hmac\" (format v1) on this "
                              "module: set \"derivation\": {\"new_keys\": \"hmac\"} in the "
                              "config, or pass it when creating a key"
                            : "; create keys with \"derivation\": \"aes\" (format v2) instead"));
    }
    if (rv != CKR_OK) return CkrStatus("C_GetMechanismInfo", rv);
  }
  // A module may list a key generation mechanism and still not implement C_GenerateKey
  // (tpm2-pkcs11 1.9 does). Asked about no session, one that implements it says the session is
  // invalid; a stub says it has no such function, and no key could ever be created.
  CK_MECHANISM generate{v2 ? CKM_AES_KEY_GEN : CKM_GENERIC_SECRET_KEY_GEN, nullptr, 0};
  CK_OBJECT_HANDLE unused = CK_INVALID_HANDLE;
  if (module.functions()->C_GenerateKey(CK_INVALID_HANDLE, &generate, nullptr, 0, &unused) ==
      CKR_FUNCTION_NOT_SUPPORTED) {
    return Status(Code::kFailedPrecondition, "mechanism_missing",
                  "the module " + config.module_path + " lists " +
                      (v2 ? "CKM_AES_KEY_GEN" : "CKM_GENERIC_SECRET_KEY_GEN") +
                      " but does not implement C_GenerateKey (CKR_FUNCTION_NOT_SUPPORTED); "
                      "vecseal generates every model key inside the token, so this module "
                      "cannot hold them: use another module for the model keys "
                      "(docs/hsm.md, \"Modules tested\")");
  }
  return Status::Ok();
}

Result<KeyInfo> Hsm::State::LoadKeyLocked(const std::string& name, uint32_t version) {
  std::string label = KeyLabel(name, version);
  CK_OBJECT_CLASS key_class = CKO_SECRET_KEY;
  CK_ATTRIBUTE key_match[] = {Attr(CKA_CLASS, key_class), Attr(CKA_TOKEN, kTrue),
                              Attr(CKA_LABEL, label)};
  auto keys = FindKeys(anchor, key_match);
  if (!keys.ok()) return std::move(keys).TakeStatus();
  if (keys->empty()) {
    return Status(Code::kNotFound, "key_not_found",
                  "no key " + name + " version " + std::to_string(version) + " on the token");
  }
  if (keys->size() > 1) return Tampered(label, "exist twice (two keys carry the label)");
  auto key_type = keys->front().GetAttribute(CKA_KEY_TYPE);
  if (!key_type.ok()) return std::move(key_type).TakeStatus();
  auto format = FormatOfKeyType(*key_type);
  if (!format) return Tampered(label, "belong to a key that is neither an HMAC nor an AES key");
  auto stays = StaysInToken(keys->front());
  if (!stays.ok()) return std::move(stays).TakeStatus();
  if (!*stays) {
    return Status(Code::kFailedPrecondition, "key_unprotected",
                  "the key " + label + " is not sensitive or is extractable, so its bytes could "
                  "leave the token; vecseal refuses it. Create keys with vecseal, or import them "
                  "with CKA_SENSITIVE true and CKA_EXTRACTABLE false");
  }
  auto untrusted = UntrustedBecause(keys->front(), *format, config.accept_imported_keys);
  if (!untrusted.ok()) return std::move(untrusted).TakeStatus();
  if (!untrusted->empty()) {
    return Status(Code::kFailedPrecondition, "key_untrusted",
                  "the key " + label + " was not generated by this token with vecseal's "
                  "attributes (" + *untrusted + "), so someone outside may know its value; "
                  "vecseal refuses it. Delete the object and rotate the key, or, for keys "
                  "migrated from another HSM, set accept_imported_keys");
  }

  auto params = ReadParamsLocked(kParamsApplication, keys->front().handle(), *format, name,
                                version, label);
  if (!params.ok()) return std::move(params).TakeStatus();
  if (!*params) {
    return Status(Code::kFailedPrecondition, "key_params_missing",
                  "the key " + label + " has no parameter object beside it on the token; it was "
                  "not created by vecseal or its parameters were deleted");
  }
  KeyParams loaded = **params;
  if (!loaded.dimension) {
    auto fixed = ReadParamsLocked(kFixedDimensionApplication, keys->front().handle(), *format,
                                  name, version, label);
    if (!fixed.ok()) return std::move(fixed).TakeStatus();
    if (*fixed) {
      KeyParams same = **fixed;
      same.dimension.reset();
      if (!(*fixed)->dimension || CanonicalParamBytes(name, version, same) !=
                                      CanonicalParamBytes(name, version, loaded)) {
        return Tampered(label, "that fix its dimension differ from the key's in other fields");
      }
      loaded.dimension = (*fixed)->dimension;
    }
  }
  return KeyInfo{name, version, loaded, label};
}

Result<std::optional<KeyParams>> Hsm::State::ReadParamsLocked(std::string_view application,
                                                              CK_OBJECT_HANDLE key,
                                                              core::KeyFormat format,
                                                              const std::string& name,
                                                              uint32_t version,
                                                              const std::string& label) {
  CK_OBJECT_CLASS data_class = CKO_DATA;
  std::string application_value(application);
  CK_ATTRIBUTE data_match[] = {Attr(CKA_CLASS, data_class), Attr(CKA_TOKEN, kTrue),
                               Attr(CKA_APPLICATION, application_value), Attr(CKA_LABEL, label)};
  auto data = anchor.Find(data_match);
  if (!data.ok()) return std::move(data).TakeStatus();
  if (data->empty()) return std::optional<KeyParams>();
  if (data->size() > 1) return Tampered(label, "exist twice");
  auto value = data->front().GetAttribute(CKA_VALUE);
  if (!value.ok()) return std::move(value).TakeStatus();
  if (value->size() < kMacSize) return Tampered(label, "are truncated");
  std::span<const uint8_t> stored(*value);
  auto canonical = stored.first(stored.size() - kMacSize);
  auto tag = stored.last(kMacSize);
  auto mac = ParamsMacLocked(key, format, canonical);
  if (!mac.ok()) return std::move(mac).TakeStatus();
  if (CRYPTO_memcmp(mac->data(), tag.data(), kMacSize) != 0) {
    return Tampered(label, "fail their HMAC");
  }
  auto params = ParseCanonicalParams(canonical, name, version, label);
  if (!params.ok()) return std::move(params).TakeStatus();
  if (params->format != format) return Tampered(label, "name another key format");
  return std::optional<KeyParams>(std::move(params).value());
}

Status Hsm::State::WriteParamsLocked(std::string_view application, CK_OBJECT_HANDLE key,
                                     const std::string& name, uint32_t version,
                                     const KeyParams& params) {
  std::vector<uint8_t> value = CanonicalParamBytes(name, version, params);
  auto mac = ParamsMacLocked(key, params.format, value);
  if (!mac.ok()) return std::move(mac).TakeStatus();
  value.insert(value.end(), mac->begin(), mac->end());
  CK_OBJECT_CLASS data_class = CKO_DATA;
  std::string label = KeyLabel(name, version);
  std::string application_value(application);
  CK_ATTRIBUTE data_template[] = {
      Attr(CKA_CLASS, data_class),  Attr(CKA_TOKEN, kTrue),
      Attr(CKA_PRIVATE, kTrue),     Attr(CKA_MODIFIABLE, kFalse),
      Attr(CKA_LABEL, label),       Attr(CKA_APPLICATION, application_value),
      Attr(CKA_VALUE, std::span<const uint8_t>(value)),
  };
  auto data = anchor.Create(data_template);
  return data.ok() ? Status::Ok() : std::move(data).TakeStatus();
}

Result<KeyInfo> Hsm::State::CreateVersionLocked(const std::string& name, uint32_t version,
                                                const KeyParams& params) {
  VECSEAL_RETURN_IF_ERROR(CheckDerivationMechanisms(params.format));
  std::string label = KeyLabel(name, version);
  const bool v2 = params.format == core::KeyFormat::kV2;
  CK_OBJECT_CLASS key_class = CKO_SECRET_KEY;
  CK_KEY_TYPE key_type = v2 ? CKK_AES : CKK_GENERIC_SECRET;
  CK_ULONG key_size = 32;
  // A v2 key is only ever used in place, so it is never copyable; v1 copies are a speed option.
  CK_BBOOL copyable = !v2 && config.create_copyable_keys ? CK_TRUE : CK_FALSE;
  CK_BBOOL sign = v2 ? CK_FALSE : CK_TRUE;
  CK_BBOOL encrypt = v2 ? CK_TRUE : CK_FALSE;
  CK_MECHANISM_TYPE allowed = v2 ? CKM_AES_ECB : CKM_SHA256_HMAC;
  CK_ATTRIBUTE key_template[] = {
      Attr(CKA_CLASS, key_class),      Attr(CKA_KEY_TYPE, key_type),
      Attr(CKA_VALUE_LEN, key_size),   Attr(CKA_TOKEN, kTrue),
      Attr(CKA_PRIVATE, kTrue),        Attr(CKA_SENSITIVE, kTrue),
      Attr(CKA_EXTRACTABLE, kFalse),   Attr(CKA_MODIFIABLE, copyable),
      Attr(CKA_SIGN, sign),            Attr(CKA_VERIFY, kFalse),
      Attr(CKA_DERIVE, kFalse),        Attr(CKA_ENCRYPT, encrypt),
      Attr(CKA_DECRYPT, kFalse),       Attr(CKA_WRAP, kFalse),
      Attr(CKA_UNWRAP, kFalse),        Attr(CKA_LABEL, label),
      Attr(CKA_ID, label),
  };
  CK_ATTRIBUTE optional[] = {
      Attr(CKA_COPYABLE, copyable),
      {CKA_ALLOWED_MECHANISMS, &allowed, sizeof allowed},
  };
  const CK_MECHANISM_TYPE generate = v2 ? CKM_AES_KEY_GEN : CKM_GENERIC_SECRET_KEY_GEN;
  auto key = WithOptionalAttributes(key_template, optional,
                                    [&](std::span<const CK_ATTRIBUTE> attributes) {
                                      return anchor.GenerateKey(generate, attributes);
                                    });
  if (!key.ok()) return std::move(key).TakeStatus();

  Status written = WriteParamsLocked(kParamsApplication, key->handle(), name, version, params);
  if (written.ok()) return KeyInfo{name, version, params, label};
  // Without its parameters the key is useless; take it back so that a retry starts clean.
  (void)key->Destroy();
  return written;
}

Result<Object> Hsm::State::TokenObjectLocked(CK_OBJECT_CLASS klass, const std::string& label) {
  CK_ATTRIBUTE match[] = {Attr(CKA_CLASS, klass), Attr(CKA_TOKEN, kTrue), Attr(CKA_LABEL, label)};
  auto found = FindKeys(anchor, match);
  if (!found.ok()) return std::move(found).TakeStatus();
  if (found->size() != 1) {
    if (found->empty()) return Status(Code::kNotFound, "key_not_found", "no " + label + " on the token");
    return Tampered(label, "exist twice (two keys carry the label)");
  }
  return std::move(found->front());
}

Result<StoredConfig> Hsm::State::ReadConfigLocked(const std::vector<KeyInfo>& infos,
                                                  std::vector<Object>* records) {
  StoredConfig best;
  std::string application_value(kConfigApplication);
  CK_OBJECT_CLASS data_class = CKO_DATA;
  for (const KeyInfo& info : infos) {
    CK_ATTRIBUTE data_match[] = {Attr(CKA_CLASS, data_class), Attr(CKA_TOKEN, kTrue),
                                 Attr(CKA_APPLICATION, application_value),
                                 Attr(CKA_LABEL, info.label)};
    auto data = anchor.Find(data_match);
    if (!data.ok()) return std::move(data).TakeStatus();
    if (data->empty()) continue;
    auto key = TokenObjectLocked(CKO_SECRET_KEY, info.label);
    if (!key.ok()) return std::move(key).TakeStatus();
    for (Object& record : *data) {
      auto value = record.GetAttribute(CKA_VALUE);
      if (!value.ok()) return std::move(value).TakeStatus();
      if (value->size() < kMacSize) return Tampered(info.label, "(minimum versions) are truncated");
      std::span<const uint8_t> stored(*value);
      auto canonical = stored.first(stored.size() - kMacSize);
      auto mac = ParamsMacLocked(key->handle(), info.params.format, canonical);
      if (!mac.ok()) return std::move(mac).TakeStatus();
      if (CRYPTO_memcmp(mac->data(), stored.last(kMacSize).data(), kMacSize) != 0) {
        return Tampered(info.label, "(minimum versions) fail their HMAC");
      }
      auto parsed = ParseCanonicalConfig(canonical, info.name, info.version, info.label);
      if (!parsed.ok()) return std::move(parsed).TakeStatus();
      if (parsed->sequence > best.sequence) best = *parsed;
      if (records != nullptr) records->push_back(std::move(record));
    }
  }
  return best;
}

Result<std::vector<KeyInfo>> Hsm::State::LoadVersionsLocked(const std::string& name) {
  auto versions = KeyVersionsLocked(std::string_view(name));
  if (!versions.ok()) return std::move(versions).TakeStatus();
  if (versions->empty()) {
    return Status(Code::kNotFound, "key_not_found", "no key " + name + " on the token");
  }
  std::vector<KeyInfo> infos;
  for (const auto& [unused, version] : *versions) {
    auto info = LoadKeyLocked(name, version);
    if (!info.ok()) return std::move(info).TakeStatus();
    infos.push_back(std::move(info).value());
  }
  return infos;
}

// Hsm

Result<std::unique_ptr<Hsm>> Hsm::Open(const HsmConfig& config) {
  if (config.module_path.empty() || config.module_path.front() != '/') {
    return InvalidConfig("module_path", "give the absolute path of the PKCS#11 module (.so)");
  }
  if (config.token_label.empty() || config.token_label.size() > 32) {
    return InvalidConfig("token_label", "give the token label, 1 to 32 bytes");
  }
  if (config.sessions == 0 || config.sessions > 256) {
    return InvalidConfig("sessions", "give between 1 and 256 pooled sessions");
  }
  if (config.recovery_attempts == 0 || config.initial_backoff.count() < 0 ||
      config.max_backoff < config.initial_backoff) {
    return InvalidConfig("recovery", "recovery_attempts must be at least 1 and max_backoff at "
                                     "least initial_backoff");
  }
  auto module = Module::Load(config.module_path);
  if (!module.ok()) return std::move(module).TakeStatus();
  auto state = std::make_shared<State>();
  state->config = config;
  state->module = std::move(module).value();
  for (size_t i = 0; i < config.sessions; ++i) state->pool.push_back(std::make_unique<PoolSlot>());
  {
    std::lock_guard lock(state->admin_mutex);
    VECSEAL_RETURN_IF_ERROR(state->ConnectLocked());
  }
  return std::unique_ptr<Hsm>(new Hsm(std::move(state)));
}

Hsm::~Hsm() = default;

Result<std::vector<KeyInfo>> Hsm::ListKeys() {
  return state_->Admin<std::vector<KeyInfo>>([&](Session&) -> Result<std::vector<KeyInfo>> {
    auto versions = state_->KeyVersionsLocked(std::nullopt);
    if (!versions.ok()) return std::move(versions).TakeStatus();
    std::vector<KeyInfo> keys;
    for (const auto& [name, version] : *versions) {
      auto info = state_->LoadKeyLocked(name, version);
      if (!info.ok()) return std::move(info).TakeStatus();
      keys.push_back(std::move(info).value());
    }
    return keys;
  });
}

Result<KeyInfo> Hsm::CreateKey(std::string_view name, const KeyParams& params) {
  VECSEAL_RETURN_IF_ERROR(ValidateKeyName(name));
  VECSEAL_RETURN_IF_ERROR(ValidateNewKeyParams(params));
  KeyParams stamped = params;
  stamped.created_unix = std::chrono::duration_cast<std::chrono::seconds>(
                             std::chrono::system_clock::now().time_since_epoch())
                             .count();
  std::string key_name(name);
  return state_->Admin<KeyInfo>([&](Session&) -> Result<KeyInfo> {
    auto versions = state_->KeyVersionsLocked(std::string_view(key_name));
    if (!versions.ok()) return std::move(versions).TakeStatus();
    if (!versions->empty()) {
      return Status(Code::kAlreadyExists, "key_exists",
                    "the key " + key_name + " already exists (newest version " +
                        std::to_string(versions->back().second) + "); rotate it instead");
    }
    return state_->CreateVersionLocked(key_name, 1, stamped);
  });
}

Result<KeyInfo> Hsm::RotateKey(std::string_view name, core::KeyFormat format) {
  VECSEAL_RETURN_IF_ERROR(ValidateKeyName(name));
  std::string key_name(name);
  return state_->Admin<KeyInfo>([&](Session&) -> Result<KeyInfo> {
    auto versions = state_->KeyVersionsLocked(std::string_view(key_name));
    if (!versions.ok()) return std::move(versions).TakeStatus();
    if (versions->empty()) {
      return Status(Code::kNotFound, "key_not_found",
                    "no key " + key_name + " on the token; create it first");
    }
    uint32_t newest = versions->back().second;
    if (newest == UINT32_MAX) {
      return Status(Code::kFailedPrecondition, "key_version_exhausted",
                    "the key " + key_name + " cannot be rotated further");
    }
    auto current = state_->LoadKeyLocked(key_name, newest);
    if (!current.ok()) return std::move(current).TakeStatus();
    KeyParams params = current->params;
    params.format = format;
    params.created_unix = std::chrono::duration_cast<std::chrono::seconds>(
                              std::chrono::system_clock::now().time_since_epoch())
                              .count();
    return state_->CreateVersionLocked(key_name, newest + 1, params);
  });
}

namespace {

// The key's derivations inside the token through the session pool: HMAC-SHA256 for v1,
// AES-256-ECB for v2.
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

Result<ModelKey> Hsm::FindKey(std::string_view name, std::optional<uint32_t> version) {
  VECSEAL_RETURN_IF_ERROR(ValidateKeyName(name));
  std::string key_name(name);
  auto info = state_->Admin<KeyInfo>([&](Session&) -> Result<KeyInfo> {
    uint32_t wanted = version.value_or(0);
    if (!version) {
      auto versions = state_->KeyVersionsLocked(std::string_view(key_name));
      if (!versions.ok()) return std::move(versions).TakeStatus();
      if (versions->empty()) {
        return Status(Code::kNotFound, "key_not_found", "no key " + key_name + " on the token");
      }
      wanted = versions->back().second;
    }
    return state_->LoadKeyLocked(key_name, wanted);
  });
  if (!info.ok()) return std::move(info).TakeStatus();
  auto deriver = std::make_shared<HsmDeriver>(state_, info->label, info->params.format);
  return ModelKey{std::move(info).value(), std::move(deriver)};
}

Result<uint32_t> Hsm::FixDimension(std::string_view name, uint32_t dimension) {
  VECSEAL_RETURN_IF_ERROR(ValidateKeyName(name));
  std::string key_name(name);
  return state_->Admin<uint32_t>([&](Session&) -> Result<uint32_t> {
    auto versions = state_->KeyVersionsLocked(std::string_view(key_name));
    if (!versions.ok()) return std::move(versions).TakeStatus();
    if (versions->empty()) {
      return Status(Code::kNotFound, "key_not_found", "no key " + key_name + " on the token");
    }
    std::vector<KeyInfo> infos;
    std::optional<uint32_t> fixed;
    for (const auto& [unused, version] : *versions) {
      auto info = state_->LoadKeyLocked(key_name, version);
      if (!info.ok()) return std::move(info).TakeStatus();
      if (info->params.dimension) fixed = info->params.dimension;  // the newest version's wins
      infos.push_back(std::move(info).value());
    }
    if (!fixed) {
      KeyParams candidate = infos.back().params;
      candidate.dimension = dimension;
      VECSEAL_RETURN_IF_ERROR(ValidateKeyParams(candidate));
      fixed = dimension;
    }
    // Every version, so that old ones cannot be used at other dimensions either; a version left
    // unfixed by a failure here is fixed by the next call.
    for (const KeyInfo& info : infos) {
      if (info.params.dimension) continue;
      CK_OBJECT_CLASS key_class = CKO_SECRET_KEY;
      CK_ATTRIBUTE key_match[] = {Attr(CKA_CLASS, key_class), Attr(CKA_TOKEN, kTrue),
                                  Attr(CKA_LABEL, info.label)};
      auto keys = state_->FindKeys(state_->anchor, key_match);
      if (!keys.ok()) return std::move(keys).TakeStatus();
      if (keys->size() != 1) return Tampered(info.label, "changed while its dimension was fixed");
      KeyParams params = info.params;
      params.dimension = fixed;
      VECSEAL_RETURN_IF_ERROR(state_->WriteParamsLocked(kFixedDimensionApplication,
                                                        keys->front().handle(), key_name,
                                                        info.version, params));
    }
    return *fixed;
  });
}

Result<KeyConfig> Hsm::ReadKeyConfig(std::string_view name) {
  VECSEAL_RETURN_IF_ERROR(ValidateKeyName(name));
  std::string key_name(name);
  return state_->Admin<KeyConfig>([&](Session&) -> Result<KeyConfig> {
    auto infos = state_->LoadVersionsLocked(key_name);
    if (!infos.ok()) return std::move(infos).TakeStatus();
    auto stored = state_->ReadConfigLocked(*infos);
    if (!stored.ok()) return std::move(stored).TakeStatus();
    return stored->config;
  });
}

Result<KeyConfig> Hsm::ConfigureKey(std::string_view name, const KeyConfig& config) {
  VECSEAL_RETURN_IF_ERROR(ValidateKeyName(name));
  std::string key_name(name);
  return state_->Admin<KeyConfig>([&](Session&) -> Result<KeyConfig> {
    auto infos = state_->LoadVersionsLocked(key_name);
    if (!infos.ok()) return std::move(infos).TakeStatus();
    const uint32_t newest = infos->back().version;
    if (config.min_decryption_version < 1 ||
        config.min_decryption_version > config.min_encryption_version ||
        config.min_encryption_version > newest) {
      return Status(Code::kInvalidArgument, "invalid_key_config",
                    "the minimum versions of key " + key_name +
                        " must satisfy 1 <= min_decryption_version (" +
                        std::to_string(config.min_decryption_version) +
                        ") <= min_encryption_version (" +
                        std::to_string(config.min_encryption_version) +
                        ") <= the newest version (" + std::to_string(newest) +
                        "); rotate first to retire the newest version for encryption");
    }
    std::vector<Object> old_records;
    auto stored = state_->ReadConfigLocked(*infos, &old_records);
    if (!stored.ok()) return std::move(stored).TakeStatus();
    if (stored->sequence != 0 && stored->config == config) return config;
    const uint64_t sequence = stored->sequence + 1;
    for (const KeyInfo& info : *infos) {
      auto key = state_->TokenObjectLocked(CKO_SECRET_KEY, info.label);
      if (!key.ok()) return std::move(key).TakeStatus();
      std::vector<uint8_t> value = CanonicalConfigBytes(key_name, info.version, sequence, config);
      auto mac = state_->ParamsMacLocked(key->handle(), info.params.format, value);
      if (!mac.ok()) return std::move(mac).TakeStatus();
      value.insert(value.end(), mac->begin(), mac->end());
      CK_OBJECT_CLASS data_class = CKO_DATA;
      std::string application_value(kConfigApplication);
      CK_ATTRIBUTE data_template[] = {
          Attr(CKA_CLASS, data_class),  Attr(CKA_TOKEN, kTrue),
          Attr(CKA_PRIVATE, kTrue),     Attr(CKA_MODIFIABLE, kFalse),
          Attr(CKA_LABEL, info.label),  Attr(CKA_APPLICATION, application_value),
          Attr(CKA_VALUE, std::span<const uint8_t>(value)),
      };
      // A failure here leaves the new sequence on some versions only: it already wins, and a
      // retry writes it on the rest.
      auto created = state_->anchor.Create(data_template);
      if (!created.ok()) return std::move(created).TakeStatus();
    }
    // Older records lose to the new sequence anyway; removing them only keeps the token tidy.
    for (Object& record : old_records) (void)record.Destroy();
    return config;
  });
}

Result<std::vector<uint32_t>> Hsm::DeleteKey(std::string_view name) {
  VECSEAL_RETURN_IF_ERROR(ValidateKeyName(name));
  std::string key_name(name);
  std::vector<uint32_t> destroyed;  // across Admin's retry after a recovery
  bool found_any = false;
  auto deleted = state_->Admin<bool>([&](Session&) -> Result<bool> {
    auto versions = state_->KeyVersionsLocked(std::string_view(key_name));
    if (!versions.ok()) return std::move(versions).TakeStatus();
    for (const auto& [unused, version] : *versions) {
      found_any = true;
      CK_OBJECT_CLASS key_class = CKO_SECRET_KEY;
      std::string label = KeyLabel(key_name, version);
      CK_ATTRIBUTE match[] = {Attr(CKA_CLASS, key_class), Attr(CKA_TOKEN, kTrue),
                              Attr(CKA_LABEL, label)};
      auto keys = state_->FindKeys(state_->anchor, match);
      if (!keys.ok()) return std::move(keys).TakeStatus();
      for (Object& key : *keys) {
        state_->key_epoch.fetch_add(1);
        VECSEAL_RETURN_IF_ERROR(key.Destroy());
      }
      destroyed.push_back(version);
    }
    // Then every record of the key (parameters, dimension, minimum versions), including those
    // a deletion cut short left behind: a new key of the same name must not meet them.
    CK_OBJECT_CLASS data_class = CKO_DATA;
    CK_ATTRIBUTE data_match[] = {Attr(CKA_CLASS, data_class), Attr(CKA_TOKEN, kTrue)};
    auto records = state_->anchor.Find(data_match);
    if (!records.ok()) return std::move(records).TakeStatus();
    for (Object& record : *records) {
      auto label = record.GetAttribute(CKA_LABEL);
      if (!label.ok()) return std::move(label).TakeStatus();
      auto parsed = ParseKeyLabel(
          std::string_view(reinterpret_cast<const char*>(label->data()), label->size()));
      if (!parsed || parsed->first != key_name) continue;
      found_any = true;
      VECSEAL_RETURN_IF_ERROR(record.Destroy());
    }
    return true;
  });
  if (deleted.ok() && !found_any) {
    return Status(Code::kNotFound, "key_not_found", "no key " + key_name + " on the token");
  }
  if (deleted.ok()) return destroyed;
  if (!found_any) return std::move(deleted).TakeStatus();
  std::string done = "none";
  if (!destroyed.empty()) {
    done.clear();
    for (uint32_t version : destroyed) done += (done.empty() ? "" : ", ") + std::to_string(version);
  }
  return Status(Code::kUnavailable, "key_deletion_incomplete",
                "the deletion of key " + key_name + " stopped part way (" +
                    deleted.status().message() + "); versions destroyed: " + done +
                    ". The rest of the key is still on the token; delete it again to finish");
}

Status Hsm::Ping() {
  auto result = state_->Admin<bool>([](Session& anchor) -> Result<bool> {
    VECSEAL_RETURN_IF_ERROR(RequireLogin(anchor));  // Admin checked it; this is the probe
    return true;
  });
  return result.ok() ? Status::Ok() : std::move(result).TakeStatus();
}

namespace {

struct AuditMechanism {
  CK_MECHANISM_TYPE mechanism;
  CK_FLAGS flag;
  CK_ULONG bits;  // the key size the module must allow, or 0
  const char* what;
};
constexpr AuditMechanism kEcdsaMechanisms[] = {
    {CKM_EC_KEY_PAIR_GEN, CKF_GENERATE_KEY_PAIR, 256, "CKM_EC_KEY_PAIR_GEN with CKF_GENERATE_KEY_PAIR"},
    {CKM_ECDSA, CKF_SIGN, 0, "CKM_ECDSA with CKF_SIGN"},
};
constexpr AuditMechanism kRsaPssMechanisms[] = {
    {CKM_RSA_PKCS_KEY_PAIR_GEN, CKF_GENERATE_KEY_PAIR, kAuditRsaBits,
     "CKM_RSA_PKCS_KEY_PAIR_GEN with CKF_GENERATE_KEY_PAIR for 3072 bits"},
    {CKM_RSA_PKCS_PSS, CKF_SIGN, 0, "CKM_RSA_PKCS_PSS with CKF_SIGN"},
};

// The first of `needed` the slot does not offer ("" when it offers all), or the error of a
// failed C_GetMechanismInfo.
Result<std::string> FirstMissing(const Module& module, CK_SLOT_ID slot,
                                 std::span<const AuditMechanism> needed) {
  for (const AuditMechanism& each : needed) {
    CK_MECHANISM_INFO info{};
    const CK_RV rv = module.functions()->C_GetMechanismInfo(slot, each.mechanism, &info);
    if (rv == CKR_MECHANISM_INVALID) return std::string(each.what);
    if (rv != CKR_OK) return CkrStatus("C_GetMechanismInfo", rv);
    if ((info.flags & each.flag) == 0) return std::string(each.what);
    // Some modules give EC sizes in bytes or leave the range 0; only a stated range that
    // excludes the size counts as missing.
    if (each.bits != 0 && info.ulMaxKeySize != 0 && info.ulMaxKeySize < each.bits &&
        each.mechanism != CKM_EC_KEY_PAIR_GEN) {
      return std::string(each.what);
    }
  }
  return std::string();
}

}  // namespace

std::string_view AuditKeyAlgorithmName(AuditKeyAlgorithm algorithm) {
  switch (algorithm) {
    case AuditKeyAlgorithm::kAuto: return "auto";
    case AuditKeyAlgorithm::kEcdsaP256: return "ecdsa-p256";
    case AuditKeyAlgorithm::kRsaPss3072: return "rsa-pss-3072";
  }
  return "auto";
}

std::optional<AuditKeyAlgorithm> ParseAuditKeyAlgorithm(std::string_view name) {
  for (AuditKeyAlgorithm each : {AuditKeyAlgorithm::kAuto, AuditKeyAlgorithm::kEcdsaP256,
                                 AuditKeyAlgorithm::kRsaPss3072}) {
    if (AuditKeyAlgorithmName(each) == name) return each;
  }
  return std::nullopt;
}

Result<AuditKeyAlgorithm> Hsm::AuditKeyAlgorithmFor(AuditKeyAlgorithm requested) {
  const CK_SLOT_ID slot = state_->slot.load();
  const std::string token = "token \"" + state_->config.token_label + "\"";
  auto ec = FirstMissing(state_->module, slot, kEcdsaMechanisms);
  if (!ec.ok()) return std::move(ec).TakeStatus();
  if (requested != AuditKeyAlgorithm::kRsaPss3072 && ec->empty()) {
    return AuditKeyAlgorithm::kEcdsaP256;
  }
  if (requested == AuditKeyAlgorithm::kEcdsaP256) {
    return Status(Code::kFailedPrecondition, "mechanism_missing",
                  token + " does not offer " + *ec +
                      " (the audit key, audit.key_algorithm \"ecdsa-p256\"); set "
                      "audit.key_algorithm to \"rsa-pss-3072\" or \"auto\", or give the audit "
                      "key a token that offers it (audit.pkcs11)");
  }
  auto rsa = FirstMissing(state_->module, slot, kRsaPssMechanisms);
  if (!rsa.ok()) return std::move(rsa).TakeStatus();
  if (rsa->empty()) return AuditKeyAlgorithm::kRsaPss3072;
  if (requested == AuditKeyAlgorithm::kRsaPss3072) {
    return Status(Code::kFailedPrecondition, "mechanism_missing",
                  token + " does not offer " + *rsa +
                      " (the audit key, audit.key_algorithm \"rsa-pss-3072\"); set "
                      "audit.key_algorithm to \"ecdsa-p256\" or \"auto\", or give the audit "
                      "key a token that offers it (audit.pkcs11)");
  }
  return Status(Code::kFailedPrecondition, "mechanism_missing",
                token + " offers neither ECDSA P-256 for the audit key (it lacks " + *ec +
                    ") nor RSA-PSS (it lacks " + *rsa +
                    "); give the audit key a token that offers one of them (audit.pkcs11)");
}

Status Hsm::CheckMechanisms(core::KeyFormat format, AuditKeyAlgorithm audit) {
  {
    std::lock_guard lock(state_->admin_mutex);
    VECSEAL_RETURN_IF_ERROR(state_->CheckDerivationMechanisms(format));
  }
  auto algorithm = AuditKeyAlgorithmFor(audit);
  return algorithm.ok() ? Status::Ok() : std::move(algorithm).TakeStatus();
}

const HsmCallCounts& Hsm::calls() const { return *state_->module.calls(); }

// Audit key

struct AuditKey::State {
  std::shared_ptr<Hsm::State> hsm;
  std::string label;
  std::string pem;
  bool generated = false;
  AuditKeyAlgorithm algorithm = AuditKeyAlgorithm::kEcdsaP256;
  size_t signature_size = 64;  // raw r||s, or the RSA modulus's bytes
};

namespace {

// CKA_EC_POINT is a DER OCTET STRING around the uncompressed point in v2.40; some modules
// return the bare point. Accept both.
std::optional<std::vector<uint8_t>> UnwrapEcPoint(const std::vector<uint8_t>& value) {
  if (value.size() == 65 && value[0] == 0x04) return value;
  if (value.size() == 67 && value[0] == 0x04 && value[1] == 65 && value[2] == 0x04) {
    return std::vector<uint8_t>(value.begin() + 2, value.end());
  }
  return std::nullopt;
}

// The SubjectPublicKeyInfo PEM of an OpenSSL key of `type` ("EC", "RSA") built from `fill`'s
// parameters.
template <typename Fill>
Result<std::string> PemFromParams(const char* type, Fill&& fill) {
  auto failed = [] {
    return Status(Code::kInternal, "audit_key_invalid",
                  "OpenSSL could not encode the audit public key read from the token");
  };
  OSSL_PARAM_BLD* builder = OSSL_PARAM_BLD_new();
  if (builder == nullptr) return failed();
  const bool filled = fill(builder);
  OSSL_PARAM* params = filled ? OSSL_PARAM_BLD_to_param(builder) : nullptr;
  OSSL_PARAM_BLD_free(builder);
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr);
  EVP_PKEY* pkey = nullptr;
  bool ok = params != nullptr && ctx != nullptr && EVP_PKEY_fromdata_init(ctx) == 1 &&
            EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) == 1;
  OSSL_PARAM_free(params);
  EVP_PKEY_CTX_free(ctx);
  std::string pem;
  if (ok) {
    BIO* bio = BIO_new(BIO_s_mem());
    ok = bio != nullptr && PEM_write_bio_PUBKEY(bio, pkey) == 1;
    if (ok) {
      char* data = nullptr;
      long size = BIO_get_mem_data(bio, &data);
      pem.assign(data, static_cast<size_t>(size));
    }
    BIO_free(bio);
  }
  EVP_PKEY_free(pkey);
  if (!ok) return failed();
  return pem;
}

Result<std::string> PemFromPoint(std::span<const uint8_t> point) {
  return PemFromParams("EC", [&](OSSL_PARAM_BLD* builder) {
    return OSSL_PARAM_BLD_push_utf8_string(builder, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1",
                                           0) == 1 &&
           OSSL_PARAM_BLD_push_octet_string(builder, OSSL_PKEY_PARAM_PUB_KEY, point.data(),
                                            point.size()) == 1;
  });
}

Result<std::string> PemFromRsa(std::span<const uint8_t> modulus,
                               std::span<const uint8_t> exponent) {
  BIGNUM* n = BN_bin2bn(modulus.data(), static_cast<int>(modulus.size()), nullptr);
  BIGNUM* e = BN_bin2bn(exponent.data(), static_cast<int>(exponent.size()), nullptr);
  auto pem = PemFromParams("RSA", [&](OSSL_PARAM_BLD* builder) {
    return n != nullptr && e != nullptr &&
           OSSL_PARAM_BLD_push_BN(builder, OSSL_PKEY_PARAM_RSA_N, n) == 1 &&
           OSSL_PARAM_BLD_push_BN(builder, OSSL_PKEY_PARAM_RSA_E, e) == 1;
  });
  BN_free(n);
  BN_free(e);
  return pem;
}

CK_KEY_TYPE KeyTypeOf(const Object& object) {
  auto value = object.GetAttribute(CKA_KEY_TYPE);
  CK_KEY_TYPE type = CKK_VENDOR_DEFINED;
  if (value.ok() && value->size() == sizeof type) std::memcpy(&type, value->data(), sizeof type);
  return type;
}

// The public key's PEM and its signature size, from an EC P-256 public key object.
Result<std::pair<std::string, size_t>> EcPublicKey(const Object& public_key,
                                                   const std::string& key_label) {
  auto params = public_key.GetAttribute(CKA_EC_PARAMS);
  if (!params.ok()) return std::move(params).TakeStatus();
  if (!std::equal(params->begin(), params->end(), std::begin(kP256Oid), std::end(kP256Oid))) {
    return Status(Code::kFailedPrecondition, "audit_key_invalid",
                  "the audit key \"" + key_label + "\" is not on curve P-256");
  }
  auto point = public_key.GetAttribute(CKA_EC_POINT);
  if (!point.ok()) return std::move(point).TakeStatus();
  auto raw = UnwrapEcPoint(*point);
  if (!raw) {
    return Status(Code::kFailedPrecondition, "audit_key_invalid",
                  "the audit key \"" + key_label + "\" has a malformed CKA_EC_POINT");
  }
  auto pem = PemFromPoint(*raw);
  if (!pem.ok()) return std::move(pem).TakeStatus();
  return std::pair(std::move(pem).value(), size_t{64});
}

Result<std::pair<std::string, size_t>> RsaPublicKey(const Object& public_key,
                                                    const std::string& key_label) {
  auto modulus = public_key.GetAttribute(CKA_MODULUS);
  if (!modulus.ok()) return std::move(modulus).TakeStatus();
  auto exponent = public_key.GetAttribute(CKA_PUBLIC_EXPONENT);
  if (!exponent.ok()) return std::move(exponent).TakeStatus();
  auto first = std::find_if(modulus->begin(), modulus->end(), [](uint8_t b) { return b != 0; });
  const size_t bytes = static_cast<size_t>(modulus->end() - first);
  if (bytes * 8 < kAuditRsaBits) {
    return Status(Code::kFailedPrecondition, "audit_key_invalid",
                  "the audit key \"" + key_label + "\" is an RSA key of " +
                      std::to_string(bytes * 8) + " bits; an RSA audit key has at least " +
                      std::to_string(kAuditRsaBits));
  }
  auto pem = PemFromRsa(std::span<const uint8_t>(&*first, bytes), *exponent);
  if (!pem.ok()) return std::move(pem).TakeStatus();
  return std::pair(std::move(pem).value(), bytes);
}

}  // namespace

Result<AuditKey> Hsm::EnsureAuditKey(std::string_view label, AuditKeyAlgorithm algorithm) {
  if (label.empty() || label.size() > 64) {
    return Status(Code::kInvalidArgument, "invalid_audit_key_label",
                  "the audit key label must be 1 to 64 bytes");
  }
  std::string key_label(label);
  bool generated = false;
  AuditKeyAlgorithm found_algorithm = AuditKeyAlgorithm::kEcdsaP256;
  using Found = std::pair<std::string, size_t>;
  auto found = state_->Admin<Found>([&](Session& anchor) -> Result<Found> {
    CK_OBJECT_CLASS public_class = CKO_PUBLIC_KEY;
    CK_OBJECT_CLASS private_class = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE public_match[] = {Attr(CKA_CLASS, public_class), Attr(CKA_TOKEN, kTrue),
                                   Attr(CKA_LABEL, key_label)};
    CK_ATTRIBUTE private_match[] = {Attr(CKA_CLASS, private_class), Attr(CKA_TOKEN, kTrue),
                                    Attr(CKA_LABEL, key_label)};
    auto publics = anchor.Find(public_match);
    if (!publics.ok()) return std::move(publics).TakeStatus();
    auto privates = anchor.Find(private_match);
    if (!privates.ok()) return std::move(privates).TakeStatus();
    if (publics->size() > 1 || privates->size() > 1 || publics->size() != privates->size()) {
      return Status(Code::kFailedPrecondition, "audit_key_invalid",
                    "the token holds " + std::to_string(publics->size()) + " public and " +
                        std::to_string(privates->size()) + " private keys labelled \"" +
                        key_label + "\"; exactly one pair is expected");
    }
    Object public_key;
    if (publics->empty()) {
      auto chosen = AuditKeyAlgorithmFor(algorithm);
      if (!chosen.ok()) return std::move(chosen).TakeStatus();
      const bool rsa = *chosen == AuditKeyAlgorithm::kRsaPss3072;
      std::span<const uint8_t> oid(kP256Oid);
      CK_ULONG bits = kAuditRsaBits;
      static constexpr uint8_t kF4[] = {0x01, 0x00, 0x01};
      std::span<const uint8_t> exponent(kF4);
      CK_ATTRIBUTE public_template[] = {
          Attr(CKA_TOKEN, kTrue),        Attr(CKA_PRIVATE, kFalse),
          Attr(CKA_VERIFY, kTrue),       Attr(CKA_ENCRYPT, kFalse),
          Attr(CKA_WRAP, kFalse),        Attr(CKA_LABEL, key_label),
          Attr(CKA_ID, key_label),       Attr(CKA_EC_PARAMS, oid),
          Attr(CKA_MODULUS_BITS, bits),  Attr(CKA_PUBLIC_EXPONENT, exponent),
      };
      // EC: the first 8 and CKA_EC_PARAMS; RSA: the first 7 and the last two.
      std::vector<CK_ATTRIBUTE> public_attributes(public_template, public_template + 7);
      if (rsa) {
        public_attributes.push_back(public_template[8]);
        public_attributes.push_back(public_template[9]);
      } else {
        public_attributes.push_back(public_template[7]);
      }
      CK_ATTRIBUTE private_template[] = {
          Attr(CKA_TOKEN, kTrue),          Attr(CKA_PRIVATE, kTrue),
          Attr(CKA_SENSITIVE, kTrue),      Attr(CKA_EXTRACTABLE, kFalse),
          Attr(CKA_SIGN, kTrue),           Attr(CKA_DECRYPT, kFalse),
          Attr(CKA_DERIVE, kFalse),        Attr(CKA_UNWRAP, kFalse),
          Attr(CKA_LABEL, key_label),      Attr(CKA_ID, key_label),
          Attr(CKA_MODIFIABLE, kFalse),
      };
      CK_ATTRIBUTE optional[] = {Attr(CKA_COPYABLE, kFalse)};
      const CK_MECHANISM_TYPE mechanism = rsa ? CKM_RSA_PKCS_KEY_PAIR_GEN : CKM_EC_KEY_PAIR_GEN;
      auto pair = WithOptionalAttributes(
          private_template, optional, [&](std::span<const CK_ATTRIBUTE> attributes) {
            return anchor.GenerateKeyPair(mechanism, public_attributes, attributes);
          });
      if (!pair.ok()) return std::move(pair).TakeStatus();
      public_key = std::move(pair->first);
      generated = true;
    } else {
      auto stays = StaysInToken(privates->front());
      if (!stays.ok()) return std::move(stays).TakeStatus();
      if (!*stays) {
        return Status(Code::kFailedPrecondition, "audit_key_invalid",
                      "the private audit key \"" + key_label +
                          "\" is not sensitive or is extractable, so it could leave the token; "
                          "delete the pair and let vecseal generate it");
      }
      if (!state_->config.accept_imported_keys) {
        auto imported = NotGeneratedByTokenBecause(privates->front());
        if (!imported.ok()) return std::move(imported).TakeStatus();
        if (!imported->empty()) {
          return Status(Code::kFailedPrecondition, "audit_key_invalid",
                        "the private audit key \"" + key_label +
                            "\" was not generated by this token (" + *imported +
                            "), so someone outside may know it and sign seals over an edited "
                            "log; delete the pair and let vecseal generate it, or, for a key "
                            "migrated from another HSM, set accept_imported_keys");
        }
      }
      public_key = std::move(publics->front());
      const CK_KEY_TYPE type = KeyTypeOf(public_key);
      if ((type != CKK_EC && type != CKK_RSA) || KeyTypeOf(privates->front()) != type) {
        return Status(Code::kFailedPrecondition, "audit_key_invalid",
                      "the audit key \"" + key_label +
                          "\" is neither one EC P-256 pair nor one RSA pair");
      }
      const AuditKeyAlgorithm kind =
          type == CKK_RSA ? AuditKeyAlgorithm::kRsaPss3072 : AuditKeyAlgorithm::kEcdsaP256;
      if (algorithm != AuditKeyAlgorithm::kAuto && algorithm != kind) {
        return Status(Code::kFailedPrecondition, "audit_key_invalid",
                      "the audit key \"" + key_label + "\" on the token is " +
                          std::string(AuditKeyAlgorithmName(kind)) +
                          " but audit.key_algorithm is \"" +
                          std::string(AuditKeyAlgorithmName(algorithm)) +
                          "\"; set it to \"auto\", or start a new audit key and log directory "
                          "(docs/audit.md)");
      }
    }
    const bool rsa = KeyTypeOf(public_key) == CKK_RSA;
    found_algorithm = rsa ? AuditKeyAlgorithm::kRsaPss3072 : AuditKeyAlgorithm::kEcdsaP256;
    return rsa ? RsaPublicKey(public_key, key_label) : EcPublicKey(public_key, key_label);
  });
  if (!found.ok()) return std::move(found).TakeStatus();
  auto audit_state = std::make_shared<AuditKey::State>();
  audit_state->hsm = state_;
  audit_state->label = key_label;
  audit_state->pem = std::move(found->first);
  audit_state->signature_size = found->second;
  audit_state->algorithm = found_algorithm;
  audit_state->generated = generated;
  return AuditKey(std::move(audit_state));
}

Result<std::vector<uint8_t>> AuditKey::SignDigest(std::span<const uint8_t, 32> digest) const {
  const bool rsa = state_->algorithm == AuditKeyAlgorithm::kRsaPss3072;
  // RSASSA-PSS over the digest as is: SHA-256, MGF1 with SHA-256, a salt as long as the hash.
  CK_RSA_PKCS_PSS_PARAMS pss{CKM_SHA256, CKG_MGF1_SHA256, 32};
  const CK_MECHANISM mechanism = rsa ? CK_MECHANISM{CKM_RSA_PKCS_PSS, &pss, sizeof pss}
                                     : CK_MECHANISM{CKM_ECDSA, nullptr, 0};
  std::vector<uint8_t> raw(state_->signature_size);
  auto signed_length = state_->hsm->Pooled<size_t>([&](PoolSlot& slot) -> Result<size_t> {
    auto key = state_->hsm->KeyHandle(slot, state_->label, CKO_PRIVATE_KEY);
    if (!key.ok()) return std::move(key).TakeStatus();
    state_->hsm->EndEncryption(slot);
    return slot.session.Sign(mechanism, *key, digest, raw);
  });
  if (!signed_length.ok()) return std::move(signed_length).TakeStatus();
  if (*signed_length != raw.size()) {
    return Status(Code::kInternal, "hsm_error",
                  std::string(rsa ? "CKM_RSA_PKCS_PSS" : "CKM_ECDSA") +
                      " returned a signature of odd size");
  }
  if (rsa) return raw;
  ECDSA_SIG* signature = ECDSA_SIG_new();
  BIGNUM* r = BN_bin2bn(raw.data(), 32, nullptr);
  BIGNUM* s = BN_bin2bn(raw.data() + 32, 32, nullptr);
  if (signature == nullptr || r == nullptr || s == nullptr ||
      ECDSA_SIG_set0(signature, r, s) != 1) {
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(signature);
    return Status(Code::kInternal, "hsm_error", "OpenSSL could not encode the signature");
  }
  int size = i2d_ECDSA_SIG(signature, nullptr);
  std::vector<uint8_t> der(static_cast<size_t>(std::max(size, 0)));
  uint8_t* cursor = der.data();
  if (size <= 0 || i2d_ECDSA_SIG(signature, &cursor) != size) der.clear();
  ECDSA_SIG_free(signature);
  if (der.empty()) return Status(Code::kInternal, "hsm_error", "DER encoding failed");
  return der;
}

AuditKeyAlgorithm AuditKey::algorithm() const { return state_->algorithm; }
const std::string& AuditKey::PublicKeyPem() const { return state_->pem; }
const std::string& AuditKey::label() const { return state_->label; }
bool AuditKey::generated() const { return state_->generated; }

}  // namespace vecseal::pkcs11
