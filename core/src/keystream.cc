#include "keystream.h"

#include <bit>
#include <cstring>

namespace vecseal::core::detail {
namespace {

Status ChaChaFailed() {
  return Status(Code::kInternal, "keystream_failed", "OpenSSL ChaCha20 failed");
}

}  // namespace

KeyStream::~KeyStream() { EVP_CIPHER_CTX_free(ctx_); }

Status KeyStream::Start(const Seed& seed, uint32_t index) {
  // The first init binds the cipher; later ones only rekey, which is much cheaper.
  if (ctx_ == nullptr) {
    ctx_ = EVP_CIPHER_CTX_new();
    if (ctx_ == nullptr) return ChaChaFailed();
  }
  const EVP_CIPHER* cipher = bound_ ? nullptr : EVP_chacha20();
  uint8_t iv[16] = {};  // u32le block counter 0 ‖ nonce
  iv[4] = static_cast<uint8_t>(index);
  iv[5] = static_cast<uint8_t>(index >> 8);
  iv[6] = static_cast<uint8_t>(index >> 16);
  iv[7] = static_cast<uint8_t>(index >> 24);
  if (EVP_EncryptInit_ex(ctx_, cipher, nullptr, seed.data(), iv) != 1) return ChaChaFailed();
  bound_ = true;
  return Status::Ok();
}

void KeyStream::Forget() {
  // EVP_CIPHER_CTX_reset cleanses the cipher state before releasing it.
  if (ctx_ != nullptr) EVP_CIPHER_CTX_reset(ctx_);
  bound_ = false;
}

Status KeyStream::Read(uint32_t* words, size_t count) {
  // Encrypting zeros yields the keystream itself.
  static constexpr uint8_t kZeros[16384] = {};
  auto* bytes = reinterpret_cast<uint8_t*>(words);
  size_t remaining = count * sizeof(uint32_t);
  while (remaining > 0) {
    const int chunk = static_cast<int>(std::min(remaining, sizeof(kZeros)));
    int written = 0;
    if (EVP_EncryptUpdate(ctx_, bytes, &written, kZeros, chunk) != 1 || written != chunk) {
      return ChaChaFailed();
    }
    bytes += chunk;
    remaining -= static_cast<size_t>(chunk);
  }
  if constexpr (std::endian::native != std::endian::little) {
    for (size_t i = 0; i < count; ++i) {
      const auto* b = reinterpret_cast<const uint8_t*>(words + i);
      words[i] = static_cast<uint32_t>(b[0]) | static_cast<uint32_t>(b[1]) << 8 |
                 static_cast<uint32_t>(b[2]) << 16 | static_cast<uint32_t>(b[3]) << 24;
    }
  }
  return Status::Ok();
}

}  // namespace vecseal::core::detail
