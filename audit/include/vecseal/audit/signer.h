// The audit key as the log sees it: something that signs a 32-byte digest with ECDSA P-256.
// The daemon adapts pkcs11::AuditKey to it, so that the key never leaves the HSM; tests use a
// software key.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "vecseal/core/status.h"

namespace vecseal::audit {

class Signer {
 public:
  virtual ~Signer() = default;

  // A DER-encoded ECDSA-Sig-Value over `digest`. A 64-byte raw r||s (what CKM_ECDSA returns) is
  // also accepted: the log converts it to DER. Called with the log's mutex held, from any thread.
  virtual Result<std::vector<uint8_t>> SignDigest(std::span<const uint8_t, 32> digest) = 0;

  // The P-256 public key as a PEM "PUBLIC KEY" (SubjectPublicKeyInfo) block. kUnavailable while
  // the key cannot be reached yet (vecseald started before its HSM answered): Log::Open then
  // opens without it and asks again before each seal until it gets it.
  virtual Result<std::string> PublicKeyPem() = 0;
};

}  // namespace vecseal::audit
