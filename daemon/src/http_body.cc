#include "vecseal/daemon/http_body.h"

#include <cassert>
#include <cstring>
#include <new>

namespace vecseal::daemon {

ByteBuffer::ByteBuffer(size_t size) : size_(size) {
  if (size == 0) return;
  constexpr size_t kAlignment = 64;
  // aligned_alloc wants a multiple of the alignment; large sizes are mmap'd, so pages that a
  // slow client never fills are never made resident.
  const size_t rounded = (size + kAlignment - 1) / kAlignment * kAlignment;
  data_.reset(static_cast<std::byte*>(std::aligned_alloc(kAlignment, rounded)));
  if (!data_) throw std::bad_alloc();
  capacity_ = rounded;
}

void ByteBuffer::Resize(size_t size) {
  assert(size <= capacity_);
  size_ = size;
}

ByteBuffer BufferPool::Take(size_t size) {
  if (size >= kMinBytes) {
    std::lock_guard lock(mutex_);
    auto best = free_.end();
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if (it->capacity() >= size && it->capacity() / 2 <= size &&
          (best == free_.end() || it->capacity() < best->capacity())) {
        best = it;
      }
    }
    if (best != free_.end()) {
      ByteBuffer buffer = std::move(*best);
      free_.erase(best);
      retained_ -= buffer.capacity();
      buffer.Resize(size);
      return buffer;
    }
  }
  return ByteBuffer(size);
}

void BufferPool::Give(ByteBuffer buffer) {
  if (buffer.capacity() < kMinBytes) return;
  std::lock_guard lock(mutex_);
  if (retained_ + buffer.capacity() > retain_bytes_) return;
  retained_ += buffer.capacity();
  free_.push_back(std::move(buffer));
}

size_t BufferPool::retained_bytes() const {
  std::lock_guard lock(mutex_);
  return retained_;
}

ByteBuffer ByteBuffer::CopyOf(std::string_view bytes) {
  ByteBuffer buffer(bytes.size());
  if (!bytes.empty()) std::memcpy(buffer.data(), bytes.data(), bytes.size());
  return buffer;
}

}  // namespace vecseal::daemon
