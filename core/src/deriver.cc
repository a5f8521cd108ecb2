#include "vecseal/core/deriver.h"

#include <algorithm>
#include <cstring>
#include <string>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

namespace vecseal::core {

namespace {

Status WrongFormat(std::string_view wanted, KeyFormat have) {
  return Status(Code::kInternal, "wrong_key_format",
                std::string(wanted) + " was asked of a format v" +
                    std::to_string(static_cast<int>(have)) + " key");
}

}  // namespace

std::string_view DerivationName(KeyFormat format) {
  return format == KeyFormat::kV2 ? "aes" : "hmac";
}

Result<KeyFormat> ParseDerivation(std::string_view name) {
  if (name == "aes") return KeyFormat::kV2;
  if (name == "hmac") return KeyFormat::kV1;
  return Status(Code::kInvalidArgument, "invalid_derivation",
                "unknown derivation \"" + std::string(name.substr(0, 32)) +
                    "\"; use \"aes\" (format v2, the default) or \"hmac\" (format v1)");
}

Status Deriver::Derive(std::span<const std::span<const uint8_t>>, std::span<Seed> out) {
  for (auto& seed : out) SecureWipe(seed.data(), seed.size());
  return WrongFormat("an HMAC derivation", format());
}

Status Deriver::EncryptBlocks(std::span<const uint8_t>, std::span<uint8_t> out) {
  SecureWipe(out.data(), out.size());
  return WrongFormat("an AES block derivation", format());
}

Status Deriver::DeriveOne(std::span<const uint8_t> message, Seed& out) {
  const std::span<const uint8_t> messages[1] = {message};
  return Derive(messages, std::span<Seed>(&out, 1));
}

Result<std::unique_ptr<SoftwareDeriver>> SoftwareDeriver::Create(std::span<const uint8_t> key,
                                                                KeyFormat format) {
  if (key.empty()) {
    return Status(Code::kInvalidArgument, "invalid_key", "an HMAC key must not be empty");
  }
  if (format == KeyFormat::kV2 && key.size() != kSeedSize) {
    return Status(Code::kInvalidArgument, "invalid_key",
                  "an AES-256 key is 32 bytes, got " + std::to_string(key.size()));
  }
  auto buffer = SecureBuffer::Allocate(key.size());
  if (!buffer.ok()) return std::move(buffer).TakeStatus();
  std::memcpy(buffer->data(), key.data(), key.size());
  return std::unique_ptr<SoftwareDeriver>(new SoftwareDeriver(std::move(buffer).value(), format));
}

Result<std::unique_ptr<SoftwareDeriver>> SoftwareDeriver::CreateEphemeral(KeyFormat format) {
  auto buffer = SecureBuffer::Allocate(kSeedSize);
  if (!buffer.ok()) return std::move(buffer).TakeStatus();
  if (RAND_priv_bytes(buffer->data(), static_cast<int>(kSeedSize)) != 1) {
    return Status(Code::kUnavailable, "entropy_unavailable",
                  "the OpenSSL random generator could not produce an ephemeral key");
  }
  return std::unique_ptr<SoftwareDeriver>(new SoftwareDeriver(std::move(buffer).value(), format));
}

Status SoftwareDeriver::Derive(std::span<const std::span<const uint8_t>> messages,
                               std::span<Seed> out) {
  if (format_ != KeyFormat::kV1) return Deriver::Derive(messages, out);
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

namespace vecseal::core {

Status SoftwareDeriver::EncryptBlocks(std::span<const uint8_t> blocks, std::span<uint8_t> out) {
  if (format_ != KeyFormat::kV2) return Deriver::EncryptBlocks(blocks, out);
  if (blocks.size() != out.size() || blocks.size() % kBlockSize != 0) {
    SecureWipe(out.data(), out.size());
    return Status(Code::kInternal, "invalid_length",
                  "EncryptBlocks was given " + std::to_string(blocks.size()) +
                      " bytes for room of " + std::to_string(out.size()) +
                      "; both must be the same whole number of 16-byte blocks");
  }
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  bool ok = ctx != nullptr &&
            EVP_EncryptInit_ex(ctx, EVP_aes_256_ecb(), nullptr, key_.data(), nullptr) == 1 &&
            EVP_CIPHER_CTX_set_padding(ctx, 0) == 1;
  // EVP lengths are int: feed at most 1 MiB per update.
  constexpr size_t kPerUpdate = size_t{1} << 20;
  for (size_t done = 0; ok && done < blocks.size(); done += kPerUpdate) {
    const size_t chunk = std::min(kPerUpdate, blocks.size() - done);
    int written = 0;
    ok = EVP_EncryptUpdate(ctx, out.data() + done, &written, blocks.data() + done,
                           static_cast<int>(chunk)) == 1 &&
         static_cast<size_t>(written) == chunk;
  }
  EVP_CIPHER_CTX_free(ctx);  // cleanses the key schedule
  if (!ok) {
    SecureWipe(out.data(), out.size());
    return Status(Code::kInternal, "aes_failed", "OpenSSL AES-256-ECB failed");
  }
  return Status::Ok();
}

}  // namespace vecseal::core
