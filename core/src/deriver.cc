#include "vecseal/core/deriver.h"

#include <cstring>
#include <string>

#include <openssl/core_names.h>
#include <openssl/evp.h>
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
  if (messages.size() != out.size()) {
    for (auto& seed : out) SecureWipe(seed.data(), seed.size());
    return Status(Code::kInternal, "invalid_length",
                  "Derive was given " + std::to_string(messages.size()) + " messages but room for " +
                      std::to_string(out.size()) + " seeds");
  }
  // One keyed context per call, re-initialised per message with the same key: the one-shot
  // HMAC() re-fetches the digest and re-keys every time, which costs more than the MAC itself.
  EVP_MAC* mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  EVP_MAC_CTX* ctx = mac != nullptr ? EVP_MAC_CTX_new(mac) : nullptr;
  char digest[] = "SHA256";
  const OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0), OSSL_PARAM_END};
  bool ok = ctx != nullptr && EVP_MAC_init(ctx, key_.data(), key_.size(), params) == 1;
  for (size_t i = 0; ok && i < messages.size(); ++i) {
    size_t length = 0;
    ok = (i == 0 || EVP_MAC_init(ctx, nullptr, 0, nullptr) == 1) &&
         EVP_MAC_update(ctx, messages[i].data(), messages[i].size()) == 1 &&
         EVP_MAC_final(ctx, out[i].data(), &length, out[i].size()) == 1 && length == kSeedSize;
  }
  EVP_MAC_CTX_free(ctx);
  EVP_MAC_free(mac);
  if (!ok) {
    for (auto& seed : out) SecureWipe(seed.data(), seed.size());
    return Status(Code::kInternal, "hmac_failed", "OpenSSL HMAC-SHA256 failed");
  }
  return Status::Ok();
}

}  // namespace vecseal::core
