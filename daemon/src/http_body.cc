#include "vecseal/daemon/http_body.h"

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
}

ByteBuffer ByteBuffer::CopyOf(std::string_view bytes) {
  ByteBuffer buffer(bytes.size());
  if (!bytes.empty()) std::memcpy(buffer.data(), bytes.data(), bytes.size());
  return buffer;
}

}  // namespace vecseal::daemon
