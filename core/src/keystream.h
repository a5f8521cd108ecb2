// ChaCha20 (RFC 8439) keystream read as u32le words: docs/format.md §2. Internal to core.
#pragma once

#include <openssl/evp.h>

#include <cstddef>
#include <cstdint>

#include "vecseal/core/deriver.h"
#include "vecseal/core/status.h"

namespace vecseal::core::detail {

class KeyStream {
 public:
  KeyStream() = default;
  ~KeyStream();
  KeyStream(const KeyStream&) = delete;
  KeyStream& operator=(const KeyStream&) = delete;

  // Positions the stream at block 0 of key `seed` with the 12-byte nonce u32le(index) ‖ 0^8.
  // The transform stream is index 0; noise stream j is index j.
  Status Start(const Seed& seed, uint32_t index);
  // The next `count` words; reads continue where the previous one stopped.
  Status Read(uint32_t* words, size_t count);
  // Erases the key schedule of the last seed; the next Start rebinds the cipher.
  void Forget();

 private:
  EVP_CIPHER_CTX* ctx_ = nullptr;
  bool bound_ = false;
};

}  // namespace vecseal::core::detail
