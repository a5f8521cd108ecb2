#include "vecseal/core/deriver.h"

#include <cstring>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

namespace vecseal::core {

Status Deriver::DeriveOne(std::span<const uint8_t> message, Seed& out) {
  const std::span<const uint8_t> messages[1] = {message};
  return Derive(messages, std::span<Seed>(&out, 1));
}

Result<std::unique_ptr<SoftwareDeriver>> SoftwareDeriver::Create(std::span<const uint8_t> key) {
  if (key.empty()) {
    return Status(Code::kInvalidArgument, "invalid_key", "an HMAC key must not be empty");
  }
  auto buffer = SecureBuffer::Allocate(key.size());
  if (!buffer.ok()) return std::move(buffer).TakeStatus();
  std::memcpy(buffer->data(), key.data(), key.size());
  return std::unique_ptr<SoftwareDeriver>(new SoftwareDeriver(std::move(buffer).value()));
}

Result<std::unique_ptr<SoftwareDeriver>> SoftwareDeriver::CreateEphemeral() {
  auto buffer = SecureBuffer::Allocate(kSeedSize);
  if (!buffer.ok()) return std::move(buffer).TakeStatus();
  if (RAND_priv_bytes(buffer->data(), static_cast<int>(kSeedSize)) != 1) {
    return Status(Code::kUnavailable, "entropy_unavailable",
                  "the OpenSSL random generator could not produce an ephemeral key");
  }
  return std::unique_ptr<SoftwareDeriver>(new SoftwareDeriver(std::move(buffer).value()));
}

Status SoftwareDeriver::Derive(std::span<const std::span<const uint8_t>> messages,
                               std::span<Seed> out) {
  assert(messages.size() == out.size());
  for (size_t i = 0; i < messages.size(); ++i) {
    unsigned int length = 0;
    if (HMAC(EVP_sha256(), key_.data(), static_cast<int>(key_.size()), messages[i].data(),
             messages[i].size(), out[i].data(), &length) == nullptr ||
        length != kSeedSize) {
      for (auto& seed : out) SecureWipe(seed.data(), seed.size());
      return Status(Code::kInternal, "hmac_failed", "OpenSSL HMAC-SHA256 failed");
    }
  }
  return Status::Ok();
}

}  // namespace vecseal::core
