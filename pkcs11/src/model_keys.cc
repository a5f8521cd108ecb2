// Model key objects on the token: finding a key's versions, loading one with its trust checks
// (provenance, usage flags, parameters), and generating a new version.
#include <cstring>

#include "hsm_state.h"

namespace vecseal::pkcs11 {
namespace {

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

}  // namespace

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

bool RefusedAttributeType(const Status& status) {
  return status.message().find(CkrName(CKR_ATTRIBUTE_TYPE_INVALID)) != std::string::npos;
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
}  // namespace vecseal::pkcs11
