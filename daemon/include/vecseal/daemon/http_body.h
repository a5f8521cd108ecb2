// The message body of the daemon's HTTP layer. A 1024×768 batch is 3 MB each way, so binary
// bodies live in one owned, aligned buffer that is never zero-filled: the request is read into
// it straight from the socket, its vectors are encrypted in place, and the response is written
// out of it. Only the kernel copies the vectors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <boost/asio/buffer.hpp>
#include <boost/optional/optional.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/http/message.hpp>

namespace vecseal::daemon {

// Uninitialised bytes, 64-byte aligned so that the vectors in them suit the SIMD kernels.
class ByteBuffer {
 public:
  ByteBuffer() = default;
  explicit ByteBuffer(size_t size);
  // A moved-from buffer is empty, with no storage.
  ByteBuffer(ByteBuffer&& other) noexcept
      : data_(std::move(other.data_)),
        size_(std::exchange(other.size_, 0)),
        capacity_(std::exchange(other.capacity_, 0)) {}
  ByteBuffer& operator=(ByteBuffer&& other) noexcept {
    data_ = std::move(other.data_);
    size_ = std::exchange(other.size_, 0);
    capacity_ = std::exchange(other.capacity_, 0);
    return *this;
  }
  static ByteBuffer CopyOf(std::string_view bytes);

  std::byte* data() { return data_.get(); }
  const std::byte* data() const { return data_.get(); }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  std::string_view view() const {
    return {reinterpret_cast<const char*>(data_.get()), size_};
  }
  size_t capacity() const { return capacity_; }
  // Forgets the bytes past `size`, keeping the storage.
  void Truncate(size_t size) { size_ = std::min(size, size_); }
  // Takes `size` bytes of the storage, which must hold them; their content is unspecified.
  void Resize(size_t size);

 private:
  struct Free {
    void operator()(std::byte* bytes) const { std::free(bytes); }
  };
  std::unique_ptr<std::byte[], Free> data_;
  size_t size_ = 0;
  size_t capacity_ = 0;
};

// Recycles the large body buffers of finished requests. A fresh megabyte buffer is mapped and
// faulted in page by page, which costs a batch request more than its copies through the
// socket; a recycled one is already resident. Retains at most `retain_bytes` in all, and only
// buffers of at least kMinBytes (smaller ones come cheaply from malloc's arenas).
class BufferPool {
 public:
  static constexpr size_t kMinBytes = 64 << 10;

  explicit BufferPool(size_t retain_bytes) : retain_bytes_(retain_bytes) {}
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  // `size` bytes of unspecified content: a recycled buffer no more than twice as large, or a
  // new one.
  ByteBuffer Take(size_t size);
  void Give(ByteBuffer buffer);
  size_t retained_bytes() const;

 private:
  const size_t retain_bytes_;
  mutable std::mutex mutex_;
  std::vector<ByteBuffer> free_;
  size_t retained_ = 0;
};

// A Beast body: `text` (JSON, errors, metrics), then binary `segments`, in that order.
struct MessageBody {
  struct value_type {
    std::string text;
    std::vector<ByteBuffer> segments;

    // The body as one piece: the text, or the single segment of a body read in one go.
    std::string_view view() const {
      if (segments.empty()) return text;
      if (text.empty() && segments.size() == 1) return segments.front().view();
      return {};  // never built that way: requests have one form, responses are not viewed
    }
  };

  static uint64_t size(const value_type& body) {
    uint64_t total = body.text.size();
    for (const auto& segment : body.segments) total += segment.size();
    return total;
  }

  // Used by Beast's parser for chunked request bodies; bodies with a Content-Length are read
  // by the server directly into a segment.
  class reader {
   public:
    template <bool isRequest, class Fields>
    reader(boost::beast::http::header<isRequest, Fields>&, value_type& body) : body_(body) {}

    // Beast 1.74 spells its optionals with Boost's.
    void init(const boost::optional<uint64_t>&, boost::beast::error_code& ec) { ec = {}; }

    template <class ConstBufferSequence>
    size_t put(const ConstBufferSequence& buffers, boost::beast::error_code& ec) {
      ec = {};
      size_t added = 0;
      for (auto it = boost::asio::buffer_sequence_begin(buffers);
           it != boost::asio::buffer_sequence_end(buffers); ++it) {
        const boost::asio::const_buffer buffer(*it);
        body_.text.append(static_cast<const char*>(buffer.data()), buffer.size());
        added += buffer.size();
      }
      return added;
    }

    void finish(boost::beast::error_code& ec) { ec = {}; }

   private:
    value_type& body_;
  };

  class writer {
   public:
    using const_buffers_type = boost::asio::const_buffer;

    template <bool isRequest, class Fields>
    writer(const boost::beast::http::header<isRequest, Fields>&, const value_type& body)
        : body_(body) {}

    void init(boost::beast::error_code& ec) { ec = {}; }

    // The text first, then each segment, skipping empty pieces.
    boost::optional<std::pair<const_buffers_type, bool>> get(boost::beast::error_code& ec) {
      ec = {};
      while (next_ <= body_.segments.size()) {
        const size_t piece = next_++;
        const boost::asio::const_buffer buffer =
            piece == 0 ? boost::asio::buffer(body_.text)
                       : boost::asio::buffer(body_.segments[piece - 1].data(),
                                             body_.segments[piece - 1].size());
        if (buffer.size() == 0) continue;
        return std::make_pair(buffer, next_ <= body_.segments.size());
      }
      return boost::none;
    }

   private:
    const value_type& body_;
    size_t next_ = 0;
  };
};

}  // namespace vecseal::daemon
