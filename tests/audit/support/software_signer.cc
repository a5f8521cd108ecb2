#include "software_signer.h"

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

namespace vecseal::audit::testing {
namespace {

std::string BioToString(BIO* bio) {
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio, &data);
  return std::string(data, static_cast<size_t>(size));
}

}  // namespace

std::shared_ptr<SoftwareSigner> SoftwareSigner::Generate() {
  EVP_PKEY* pkey = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
  return pkey ? std::shared_ptr<SoftwareSigner>(new SoftwareSigner(pkey)) : nullptr;
}

std::shared_ptr<SoftwareSigner> SoftwareSigner::GenerateRsaPss() {
  EVP_PKEY* pkey = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{3072});
  return pkey ? std::shared_ptr<SoftwareSigner>(new SoftwareSigner(pkey)) : nullptr;
}

std::shared_ptr<SoftwareSigner> SoftwareSigner::FromPrivatePem(const std::string& pem) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  EVP_PKEY* pkey = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  return pkey ? std::shared_ptr<SoftwareSigner>(new SoftwareSigner(pkey)) : nullptr;
}

SoftwareSigner::~SoftwareSigner() { EVP_PKEY_free(static_cast<EVP_PKEY*>(pkey_)); }

Result<std::vector<uint8_t>> SoftwareSigner::SignDigest(std::span<const uint8_t, 32> digest) {
  if (fail) return Status(Code::kUnavailable, "hsm_unavailable", "the test signer is failing");
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new(static_cast<EVP_PKEY*>(pkey_), nullptr);
  size_t size = 0;
  std::vector<uint8_t> der;
  const bool rsa = EVP_PKEY_get_base_id(static_cast<EVP_PKEY*>(pkey_)) == EVP_PKEY_RSA;
  bool ok = ctx != nullptr && EVP_PKEY_sign_init(ctx) == 1;
  if (ok && rsa) {
    ok = EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PSS_PADDING) == 1 &&
         EVP_PKEY_CTX_set_signature_md(ctx, EVP_sha256()) == 1 &&
         EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, EVP_sha256()) == 1 &&
         EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx, 32) == 1;
  }
  ok = ok && EVP_PKEY_sign(ctx, nullptr, &size, digest.data(), digest.size()) == 1;
  if (ok) {
    der.resize(size);
    ok = EVP_PKEY_sign(ctx, der.data(), &size, digest.data(), digest.size()) == 1;
    der.resize(size);
  }
  EVP_PKEY_CTX_free(ctx);
  if (!ok) return Status(Code::kInternal, "sign_failed", "EVP_PKEY_sign failed");
  ++signatures;
  if (!raw_signatures || rsa) return der;
  const unsigned char* p = der.data();
  ECDSA_SIG* sig = d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der.size()));
  std::vector<uint8_t> raw(64);
  BN_bn2binpad(ECDSA_SIG_get0_r(sig), raw.data(), 32);
  BN_bn2binpad(ECDSA_SIG_get0_s(sig), raw.data() + 32, 32);
  ECDSA_SIG_free(sig);
  return raw;
}

Result<std::string> SoftwareSigner::PublicKeyPem() {
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_PUBKEY(bio, static_cast<EVP_PKEY*>(pkey_));
  std::string pem = BioToString(bio);
  BIO_free(bio);
  return pem;
}

std::string SoftwareSigner::PrivateKeyPem() const {
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_PrivateKey(bio, static_cast<EVP_PKEY*>(pkey_), nullptr, nullptr, 0, nullptr,
                           nullptr);
  std::string pem = BioToString(bio);
  BIO_free(bio);
  return pem;
}

}  // namespace vecseal::audit::testing
