// Key names, labels and parameters, and the authenticated records beside each key version on
// the token: their canonical bytes, their MAC under the key, and reading and writing them.
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <cassert>
#include <cmath>

#include "hsm_state.h"
#include "vecseal/wire/key_name.h"

namespace vecseal::pkcs11 {
namespace {

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

// The key-name grammar, in one function: the API checks names with it, and ParseKeyLabel the
// labels found on the token.
Status ValidateKeyConfig(std::string_view name, const KeyConfig& config, uint32_t newest) {
  if (config.min_decryption_version >= 1 &&
      config.min_decryption_version <= config.min_encryption_version &&
      config.min_encryption_version <= newest) {
    return Status::Ok();
  }
  return Status(Code::kInvalidArgument, "invalid_key_config",
                "the minimum versions of key " + std::string(name) +
                    " must satisfy 1 <= min_decryption_version (" +
                    std::to_string(config.min_decryption_version) +
                    ") <= min_encryption_version (" +
                    std::to_string(config.min_encryption_version) + ") <= the newest version (" +
                    std::to_string(newest) +
                    "); rotate first to retire the newest version for encryption");
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
  if (!wire::CheckKeyName(name).ok() || digits.empty() || digits.size() > 10 || digits[0] == '0') {
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

Status Tampered(std::string_view label, std::string_view what) {
  return Status(Code::kFailedPrecondition, "key_params_tampered",
                "the stored parameters of " + std::string(label) + " " + std::string(what) +
                    "; they were changed outside vecseal, so the key is refused. Restore the "
                    "token from backup or rotate to a new key");
}

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
}  // namespace vecseal::pkcs11
