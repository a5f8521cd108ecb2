// The message body of the daemon's HTTP layer. A 1024×768 batch is 3 MB each way, so binary
// bodies live in one owned, aligned buffer that is never zero-filled: the request is read into
// it straight from the socket, its vectors are encrypted in place, and the response is written
// out of it. Only the kernel copies the vectors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
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
  static ByteBuffer CopyOf(std::string_view bytes);

  std::byte* data() { return data_.get(); }
  const std::byte* data() const { return data_.get(); }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  std::string_view view() const {
    return {reinterpret_cast<const char*>(data_.get()), size_};
  }
  // Forgets the bytes past `size`, keeping the storage.
  void Truncate(size_t size) { size_ = std::min(size, size_); }

 private:
  struct Free {
    void operator()(std::byte* bytes) const { std::free(bytes); }
  };
  std::unique_ptr<std::byte[], Free> data_;
  size_t size_ = 0;
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
