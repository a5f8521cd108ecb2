// An audit::Signer over an in-memory OpenSSL P-256 key (or RSA 3072 for RSA-PSS seals), for tests
// and benchmarks only: in the daemon the audit key lives in the HSM.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "vecseal/audit/signer.h"

namespace vecseal::audit::testing {

class SoftwareSigner final : public Signer {
 public:
  static std::shared_ptr<SoftwareSigner> Generate();
  // RSA 3072 signing RSASSA-PSS (SHA-256, MGF1 with SHA-256, 32-byte salt), as an audit key on a
  // token without EC does.
  static std::shared_ptr<SoftwareSigner> GenerateRsaPss();
  static std::shared_ptr<SoftwareSigner> FromPrivatePem(const std::string& pem);
  ~SoftwareSigner() override;

  Result<std::vector<uint8_t>> SignDigest(std::span<const uint8_t, 32> digest) override;
  Result<std::string> PublicKeyPem() override;
  std::string PrivateKeyPem() const;

  // Return raw r||s as CKM_ECDSA does, instead of DER.
  std::atomic<bool> raw_signatures{false};
  // Fail every SignDigest, as an unplugged HSM would.
  std::atomic<bool> fail{false};
  std::atomic<int> signatures{0};

 private:
  explicit SoftwareSigner(void* pkey) : pkey_(pkey) {}
  void* pkey_;  // EVP_PKEY*
};

}  // namespace vecseal::audit::testing
