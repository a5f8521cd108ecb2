// The one way secrets enter the scheme: HMAC-SHA256 under a model key that the caller never sees.
// The PKCS#11 layer computes it inside the HSM; SoftwareDeriver computes it with OpenSSL for
// tests, calibration and ephemeral keys.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "vecseal/core/secure_memory.h"
#include "vecseal/core/status.h"

namespace vecseal::core {

inline constexpr size_t kSeedSize = 32;
using Seed = std::array<uint8_t, kSeedSize>;

class Deriver {
 public:
  virtual ~Deriver() = default;

  // out[i] = HMAC-SHA256(K, messages[i]) for every i; messages.size() == out.size().
  // Implementations batch as the backend allows and are safe to call from many threads.
  // A backend failure yields kUnavailable with reason "hsm_unavailable" (or similar) and leaves
  // `out` wiped.
  virtual Status Derive(std::span<const std::span<const uint8_t>> messages,
                        std::span<Seed> out) = 0;

  Status DeriveOne(std::span<const uint8_t> message, Seed& out);
};

// HMAC-SHA256 with OpenSSL over a key held in a SecureBuffer.
class SoftwareDeriver final : public Deriver {
 public:
  // Copies `key` (any length, 32 bytes for model keys) into locked memory.
  static Result<std::unique_ptr<SoftwareDeriver>> Create(std::span<const uint8_t> key);
  // A fresh random 256-bit key that exists only in this process (calibration, tests).
  static Result<std::unique_ptr<SoftwareDeriver>> CreateEphemeral();

  Status Derive(std::span<const std::span<const uint8_t>> messages,
                std::span<Seed> out) override;

 private:
  explicit SoftwareDeriver(SecureBuffer key) : key_(std::move(key)) {}
  SecureBuffer key_;
};

}  // namespace vecseal::core
