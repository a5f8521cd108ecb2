// Token bytes of both formats (docs/format.md) and the default nonce source.
#include <openssl/rand.h>

#include <algorithm>
#include <string>

#include "vecseal/core/cipher.h"

namespace vecseal::core {
namespace {

void PutU32(uint8_t* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<uint8_t>(v >> (8 * i));
}

uint32_t GetU32(const uint8_t* in) {
  return static_cast<uint32_t>(in[0]) | static_cast<uint32_t>(in[1]) << 8 |
         static_cast<uint32_t>(in[2]) << 16 | static_cast<uint32_t>(in[3]) << 24;
}

class OsNonceSource final : public NonceSource {
 public:
  Status Next(Nonce& nonce) override { return Fill(std::span<Nonce>(&nonce, 1)); }

  Status Fill(std::span<Nonce> nonces) override {
    static_assert(sizeof(Nonce) == kNonceSize, "nonces must be contiguous bytes");
    // RAND_bytes takes an int length: draw at most 1 MiB of nonces per request.
    constexpr size_t kPerRequest = (size_t{1} << 20) / kNonceSize;
    for (size_t first = 0; first < nonces.size(); first += kPerRequest) {
      const size_t count = std::min(kPerRequest, nonces.size() - first);
      if (RAND_bytes(reinterpret_cast<unsigned char*>(&nonces[first]),
                     static_cast<int>(count * kNonceSize)) != 1) {
        return Status(Code::kUnavailable, "entropy_unavailable",
                      "the OpenSSL random generator could not produce a nonce");
      }
    }
    return Status::Ok();
  }
};

static_assert(1 + 4 + kNonceSize + 4 + kTagSize == kTokenSize, "v1 token layout");
static_assert(1 + 4 + kNonceSizeV2 + kTagSizeV2 == kTokenSize, "v2 token layout");

}  // namespace

Result<TokenFields> ParseToken(std::span<const uint8_t> bytes) {
  if (bytes.size() != kTokenSize) {
    return Status(
        Code::kInvalidArgument, "invalid_token",
        "a token is " + std::to_string(kTokenSize) + " bytes, got " + std::to_string(bytes.size()));
  }
  if (bytes[0] != kTokenVersion && bytes[0] != kTokenVersionV2) {
    return Status(Code::kInvalidArgument, "invalid_token",
                  "token format version " + std::to_string(bytes[0]) +
                      " is not supported; this build reads versions 1 and 2");
  }
  TokenFields fields;
  fields.version = bytes[0];
  fields.key_version = GetU32(&bytes[1]);
  if (fields.version == kTokenVersion) {
    std::copy_n(&bytes[5], kNonceSize, fields.nonce.begin());
    fields.index = GetU32(&bytes[5 + kNonceSize]);
    std::copy_n(&bytes[9 + kNonceSize], kTagSize, fields.tag.begin());
  } else {
    std::copy_n(&bytes[5], kNonceSizeV2, fields.nonce.begin());
    std::copy_n(&bytes[5 + kNonceSizeV2], kTagSizeV2, fields.tag.begin());
  }
  return fields;
}

Token SerializeToken(const TokenFields& fields) {
  Token token{};
  token[0] = fields.version;
  PutU32(&token[1], fields.key_version);
  if (fields.version == kTokenVersion) {
    std::copy(fields.nonce.begin(), fields.nonce.end(), &token[5]);
    PutU32(&token[5 + kNonceSize], fields.index);
    std::copy_n(fields.tag.begin(), kTagSize, &token[9 + kNonceSize]);
  } else {
    std::copy_n(fields.nonce.begin(), kNonceSizeV2, &token[5]);
    std::copy_n(fields.tag.begin(), kTagSizeV2, &token[5 + kNonceSizeV2]);
  }
  return token;
}

Status NonceSource::Fill(std::span<Nonce> nonces) {
  for (Nonce& nonce : nonces) VECSEAL_RETURN_IF_ERROR(Next(nonce));
  return Status::Ok();
}

NonceSource& SystemNonceSource() {
  // Stateless: one shared instance is as good as many.
  static OsNonceSource source;
  return source;
}

}  // namespace vecseal::core
