// Memory for derived secrets: page-aligned, mlock'd where the RLIMIT_MEMLOCK allows,
// excluded from core dumps (MADV_DONTDUMP) and wiped before it is released.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "vecseal/core/status.h"

namespace vecseal::core {

// Overwrites `bytes` in a way the compiler cannot elide.
void SecureWipe(void* data, size_t size);

// A move-only block of secret bytes. Allocation fails only if mmap itself fails; when mlock is
// refused (RLIMIT_MEMLOCK) the block is still usable and locked() reports false, so that the
// caller can warn once instead of refusing service.
class SecureBuffer {
 public:
  SecureBuffer() = default;
  static Result<SecureBuffer> Allocate(size_t size);
  ~SecureBuffer();

  SecureBuffer(SecureBuffer&& other) noexcept;
  SecureBuffer& operator=(SecureBuffer&& other) noexcept;
  SecureBuffer(const SecureBuffer&) = delete;
  SecureBuffer& operator=(const SecureBuffer&) = delete;

  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  bool locked() const { return locked_; }
  std::span<uint8_t> bytes() { return {data_, size_}; }
  std::span<const uint8_t> bytes() const { return {data_, size_}; }

  template <typename T>
  T* as() {
    return reinterpret_cast<T*>(data_);
  }
  template <typename T>
  const T* as() const {
    return reinterpret_cast<const T*>(data_);
  }

 private:
  void Release();

  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  size_t mapped_ = 0;
  bool locked_ = false;
};

// Counts SecureBuffers whose mlock was refused since process start, for a one-time warning.
size_t UnlockedSecureBufferCount();

}  // namespace vecseal::core
