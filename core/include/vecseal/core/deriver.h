// The one way secrets enter the scheme: a pseudorandom function under a model key that the caller
// never sees. Format v1 keys are HMAC-SHA256 keys, format v2 keys AES-256 keys that may only
// encrypt (docs/format.md). The PKCS#11 layer computes either inside the HSM; SoftwareDeriver
// computes them with OpenSSL for tests, calibration and ephemeral keys.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>

#include "vecseal/core/secure_memory.h"
#include "vecseal/core/status.h"

namespace vecseal::core {

inline constexpr size_t kSeedSize = 32;
using Seed = std::array<uint8_t, kSeedSize>;
inline constexpr size_t kBlockSize = 16;  // one AES block

// Which primitive a model key is, and so which ciphertext format it produces.
enum class KeyFormat : uint8_t {
  kV1 = 1,  // HMAC-SHA256 per derivation; "derivation": "hmac"
  kV2 = 2,  // AES-256 over 16-byte blocks, all of a call's in one operation; "derivation": "aes"
};
std::string_view DerivationName(KeyFormat format);  // "hmac" | "aes"
// "hmac" or "aes"; kInvalidArgument "invalid_derivation" otherwise.
Result<KeyFormat> ParseDerivation(std::string_view name);

class Deriver {
 public:
  virtual ~Deriver() = default;

  virtual KeyFormat format() const { return KeyFormat::kV1; }

  // Format v1: out[i] = HMAC-SHA256(K, messages[i]) for every i; messages.size() == out.size().
  // Implementations batch as the backend allows and are safe to call from many threads.
  // A backend failure yields kUnavailable with reason "hsm_unavailable" (or similar) and leaves
  // `out` wiped. A v2 key refuses with kInternal "wrong_key_format".
  virtual Status Derive(std::span<const std::span<const uint8_t>> messages, std::span<Seed> out);

  // Format v2: out = AES-256-ECB(K, blocks), blocks.size() a multiple of kBlockSize and equal to
  // out.size(), in one backend operation. Same failure contract as Derive; a v1 key refuses.
  virtual Status EncryptBlocks(std::span<const uint8_t> blocks, std::span<uint8_t> out);

  Status DeriveOne(std::span<const uint8_t> message, Seed& out);
};

// Both formats with OpenSSL over a key held in a SecureBuffer.
class SoftwareDeriver final : public Deriver {
 public:
  // Copies `key` into locked memory: any length for v1, exactly 32 bytes for v2.
  static Result<std::unique_ptr<SoftwareDeriver>> Create(std::span<const uint8_t> key,
                                                         KeyFormat format = KeyFormat::kV1);
  // A fresh random 256-bit key that exists only in this process (calibration, tests).
  static Result<std::unique_ptr<SoftwareDeriver>> CreateEphemeral(
      KeyFormat format = KeyFormat::kV1);

  KeyFormat format() const override { return format_; }
  Status Derive(std::span<const std::span<const uint8_t>> messages,
                std::span<Seed> out) override;
  Status EncryptBlocks(std::span<const uint8_t> blocks, std::span<uint8_t> out) override;

 private:
  SoftwareDeriver(SecureBuffer key, KeyFormat format) : key_(std::move(key)), format_(format) {}
  SecureBuffer key_;
  KeyFormat format_;
};

}  // namespace vecseal::core
