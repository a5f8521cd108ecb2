// Audit key: raw Cryptoki (CKM_EC_KEY_PAIR_GEN, CKM_ECDSA) rather than libp11, because libp11
// calls C_Finalize when it unloads, which would kill the sessions this layer owns, and because
// one code path for both key kinds keeps recovery in one place.
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>

#include <cstring>

#include "hsm_state.h"

namespace vecseal::pkcs11 {
namespace {

// DER of OID 1.2.840.10045.3.1.7 (prime256v1).
constexpr uint8_t kP256Oid[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};

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

// Generates an audit key pair of `algorithm` (not kAuto) under `key_label`; returns its public
// half.
Result<Object> GenerateAuditKeyPair(Session& anchor, const std::string& key_label,
                                    AuditKeyAlgorithm algorithm) {
  const bool rsa = algorithm == AuditKeyAlgorithm::kRsaPss3072;
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
  return std::move(pair->first);
}

// A pair found under the label is used only if its private half stays in the token, the token
// generated it (unless imported keys are accepted), and it is of the kind asked for.
Status CheckFoundAuditKeyPair(const Object& public_key, const Object& private_key,
                              const std::string& key_label, AuditKeyAlgorithm algorithm,
                              bool accept_imported) {
  auto stays = StaysInToken(private_key);
  if (!stays.ok()) return std::move(stays).TakeStatus();
  if (!*stays) {
    return Status(Code::kFailedPrecondition, "audit_key_invalid",
                  "the private audit key \"" + key_label +
                      "\" is not sensitive or is extractable, so it could leave the token; "
                      "delete the pair and let vecseal generate it");
  }
  if (!accept_imported) {
    auto imported = NotGeneratedByTokenBecause(private_key);
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
  const CK_KEY_TYPE type = KeyTypeOf(public_key);
  if ((type != CKK_EC && type != CKK_RSA) || KeyTypeOf(private_key) != type) {
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
  return Status::Ok();
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
      auto generated_public = GenerateAuditKeyPair(anchor, key_label, *chosen);
      if (!generated_public.ok()) return std::move(generated_public).TakeStatus();
      public_key = std::move(generated_public).value();
      generated = true;
    } else {
      VECSEAL_RETURN_IF_ERROR(CheckFoundAuditKeyPair(publics->front(), privates->front(),
                                                     key_label, algorithm,
                                                     state_->config.accept_imported_keys));
      public_key = std::move(publics->front());
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

