#include "vecseal/core/secure_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#include <openssl/crypto.h>

namespace vecseal::core {
namespace {

std::atomic<size_t> g_unlocked_count{0};

size_t PageSize() {
  static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return page;
}

}  // namespace

void SecureWipe(void* data, size_t size) {
  if (data != nullptr && size > 0) OPENSSL_cleanse(data, size);
}

size_t UnlockedSecureBufferCount() { return g_unlocked_count.load(std::memory_order_relaxed); }

Result<SecureBuffer> SecureBuffer::Allocate(size_t size) {
  SecureBuffer buffer;
  if (size == 0) return buffer;
  const size_t page = PageSize();
  const size_t mapped = (size + page - 1) / page * page;
  void* p = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    return Status(Code::kResourceExhausted, "out_of_memory",
                  "cannot map " + std::to_string(mapped) + " bytes of secure memory: " +
                      std::strerror(errno));
  }
  // Best effort: a refused madvise leaves the pages dumpable, but the daemon also disables dumps.
  (void)madvise(p, mapped, MADV_DONTDUMP);
  buffer.data_ = static_cast<uint8_t*>(p);
  buffer.size_ = size;
  buffer.mapped_ = mapped;
  buffer.locked_ = mlock(p, mapped) == 0;
  if (!buffer.locked_) g_unlocked_count.fetch_add(1, std::memory_order_relaxed);
  return buffer;
}

SecureBuffer::~SecureBuffer() { Release(); }

SecureBuffer::SecureBuffer(SecureBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      mapped_(std::exchange(other.mapped_, 0)),
      locked_(std::exchange(other.locked_, false)) {}

SecureBuffer& SecureBuffer::operator=(SecureBuffer&& other) noexcept {
  if (this != &other) {
    Release();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    mapped_ = std::exchange(other.mapped_, 0);
    locked_ = std::exchange(other.locked_, false);
  }
  return *this;
}

void SecureBuffer::Release() {
  if (data_ == nullptr) return;
  SecureWipe(data_, mapped_);
  if (locked_) munlock(data_, mapped_);
  munmap(data_, mapped_);
  data_ = nullptr;
  size_ = mapped_ = 0;
  locked_ = false;
}

}  // namespace vecseal::core
