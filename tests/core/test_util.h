// Helpers shared by the core tests.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "vecseal/core/cipher.h"

namespace vecseal::core::testing {

inline std::vector<uint8_t> FromHex(std::string_view hex) {
  std::vector<uint8_t> bytes(hex.size() / 2);
  for (size_t i = 0; i < bytes.size(); ++i) {
    bytes[i] = static_cast<uint8_t>(std::stoi(std::string(hex.substr(2 * i, 2)), nullptr, 16));
  }
  return bytes;
}

inline std::string ToHex(std::span<const uint8_t> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string hex;
  for (uint8_t b : bytes) {
    hex += kDigits[b >> 4];
    hex += kDigits[b & 15];
  }
  return hex;
}

// Hands out a fixed list of nonces in order, then fails: tests see exactly which were used.
class FixedNonces final : public NonceSource {
 public:
  explicit FixedNonces(std::vector<Nonce> nonces) : nonces_(std::move(nonces)) {}
  Status Next(Nonce& nonce) override {
    if (next_ >= nonces_.size()) {
      return Status(Code::kInternal, "test_nonces_exhausted", "the test ran out of nonces");
    }
    nonce = nonces_[next_++];
    return Status::Ok();
  }
  size_t used() const { return next_; }

 private:
  std::vector<Nonce> nonces_;
  size_t next_ = 0;
};

// Deterministic distinct nonces (a counter), so that property tests are reproducible.
class CountingNonces final : public NonceSource {
 public:
  Status Next(Nonce& nonce) override {
    nonce.fill(0x5a);
    for (int i = 0; i < 8; ++i) nonce[i] = static_cast<uint8_t>(counter_ >> (8 * i));
    ++counter_;
    return Status::Ok();
  }

 private:
  uint64_t counter_ = 0;
};

inline std::shared_ptr<Deriver> KeyedDeriver(std::span<const uint8_t> key) {
  auto deriver = SoftwareDeriver::Create(key);
  EXPECT_TRUE(deriver.ok()) << deriver.status().ToString();
  return std::shared_ptr<Deriver>(std::move(deriver).value());
}

inline std::shared_ptr<Cipher> MakeCipher(TransformKind transform, double beta,
                                          std::vector<uint8_t> key = {}) {
  if (key.empty()) {
    key.resize(32);
    for (size_t i = 0; i < key.size(); ++i) key[i] = static_cast<uint8_t>(0x40 + i);
  }
  auto cipher = Cipher::Create(KeyedDeriver(key), SchemeParams{beta, transform, 1});
  EXPECT_TRUE(cipher.ok()) << cipher.status().ToString();
  return std::move(cipher).value();
}

// One Cipher per transform for the whole binary: a d=1536 rotation costs seconds to derive.
inline const std::shared_ptr<Cipher>& SharedCipher(TransformKind transform) {
  static const std::shared_ptr<Cipher> permute = MakeCipher(TransformKind::kPermute, 1.5);
  static const std::shared_ptr<Cipher> rotate = MakeCipher(TransformKind::kRotate, 1.5);
  return transform == TransformKind::kPermute ? permute : rotate;
}

}  // namespace vecseal::core::testing
