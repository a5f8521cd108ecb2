#include "vecseal/client/client.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>

#include <nlohmann/json.hpp>

#include "vecseal/wire/base64.h"
#include "vecseal/wire/binary_floats.h"
#include "vecseal/wire/http_status.h"
#include "vecseal/wire/json_floats.h"
#include "vecseal/wire/key_name.h"
#include "vecseal/wire/tokens.h"

namespace vecseal::client {
namespace {

using Clock = std::chrono::steady_clock;

static_assert(kTokenSize == core::kTokenSize, "the client's public token size is the wire's");

constexpr size_t kMaxHeaderBytes = 64 * 1024;
constexpr size_t kMaxBodyBytes = size_t{1} << 31;

// JSON whose numbers parse as float32 directly (strtof), so that vectors come back bit-exact.
// Only its SAX interface is used.
using FloatJson = nlohmann::basic_json<std::map, std::vector, std::string, bool, int64_t, uint64_t,
                                       float>;

std::string Lower(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string_view Trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t' || text.back() == '\r'))
    text.remove_suffix(1);
  return text;
}

template <typename T>
std::optional<T> ParseDecimal(std::string_view text) {
  T value{};
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || text.empty()) return std::nullopt;
  return value;
}

Status BadResponse(std::string message) {
  return Status(Code::kInternal, "bad_response", "unexpected answer from vecseald: " + message);
}

// Short, lower-case errno text for the one-line messages the CLI prints.
std::string ConnectErrorText(int error) {
  switch (error) {
    case ENOENT: return "no such file";
    case ECONNREFUSED: return "connection refused";
    case EACCES:
    case EPERM: return "permission denied";
    case ENOTSOCK: return "not a socket";
    case ENOTDIR: return "a path component is not a directory";
    default: return Lower(std::strerror(error));
  }
}

// Reads "key_version", "vectors" and "tokens" of a JSON encrypt or decrypt response with SAX
// callbacks: a DOM of a million numbers would cost more than the whole round trip.
class VectorsResponseReader {
 public:
  VectorsResponseReader(size_t dimension, std::vector<float>& vectors,
                        std::vector<std::string>& tokens)
      : dimension_(dimension), vectors_(vectors), tokens_(tokens) {}

  Status Read(std::string_view body, uint32_t& key_version) {
    if (!FloatJson::sax_parse(body, this) || !error_.empty()) {
      return BadResponse(error_.empty() ? "malformed JSON vectors" : error_);
    }
    if (!key_version_) return BadResponse("no \"key_version\"");
    key_version = *key_version_;
    return Status::Ok();
  }

  bool null() { return Scalar(); }
  bool boolean(bool) { return Scalar(); }
  bool number_integer(int64_t v) { return Number(static_cast<float>(v), v >= 0 ? static_cast<uint64_t>(v) : ~uint64_t{0}); }
  bool number_unsigned(uint64_t v) { return Number(static_cast<float>(v), v); }
  bool number_float(float v, const std::string&) { return Number(v, ~uint64_t{0}); }
  bool string(std::string& v) {
    if (depth_ == 2 && key_ == "tokens") tokens_.push_back(std::move(v));
    return Scalar();
  }
  bool binary(FloatJson::binary_t&) { return Scalar(); }
  bool start_object(size_t) { return Open(); }
  bool key(std::string& name) {
    if (depth_ == 1) key_ = std::move(name);
    return true;
  }
  bool end_object() { return Close(); }
  bool start_array(size_t) {
    if (depth_ == 2 && key_ == "vectors") row_length_ = 0;
    return Open();
  }
  bool end_array() {
    if (depth_ == 3 && key_ == "vectors" && row_length_ != dimension_) {
      return Fail("a vector of the wrong dimension");
    }
    return Close();
  }
  bool parse_error(size_t, const std::string&, const nlohmann::detail::exception&) {
    return Fail("malformed JSON vectors");
  }

 private:
  bool Open() {
    ++depth_;
    return depth_ <= 8 || Fail("JSON nested too deeply");
  }
  bool Close() {
    --depth_;
    return true;
  }
  bool Scalar() { return !(depth_ == 3 && key_ == "vectors") || Fail("a vector holding a non-number"); }
  bool Number(float value, uint64_t as_unsigned) {
    if (depth_ == 3 && key_ == "vectors") {
      vectors_.push_back(value);
      ++row_length_;
    } else if (depth_ == 1 && key_ == "key_version") {
      if (as_unsigned > UINT32_MAX) return Fail("a malformed \"key_version\"");
      key_version_ = static_cast<uint32_t>(as_unsigned);
    }
    return true;
  }
  bool Fail(std::string message) {
    error_ = std::move(message);
    return false;
  }

  size_t dimension_;
  std::vector<float>& vectors_;
  std::vector<std::string>& tokens_;
  std::optional<uint32_t> key_version_;
  std::string key_;
  std::string error_;
  int depth_ = 0;
  size_t row_length_ = 0;
};

Result<KeyInfo> ParseKeyInfo(const nlohmann::json& j) {
  try {
    KeyInfo key;
    key.name = j.at("name").get<std::string>();
    key.version = j.at("version").get<uint32_t>();
    if (j.contains("versions")) key.versions = j.at("versions").get<std::vector<uint32_t>>();
    key.approximation_factor = j.at("approximation_factor").get<double>();
    key.transform = j.at("transform").get<std::string>();
    if (j.contains("dimension") && !j.at("dimension").is_null()) {
      key.dimension = j.at("dimension").get<size_t>();
    }
    if (j.contains("created")) key.created = j.at("created").get<std::string>();
    if (j.contains("format")) key.format = j.at("format").get<int>();
    if (j.contains("derivation")) key.derivation = j.at("derivation").get<std::string>();
    if (j.contains("formats")) key.formats = j.at("formats").get<std::vector<int>>();
    if (j.contains("min_encryption_version")) {
      key.min_encryption_version = j.at("min_encryption_version").get<uint32_t>();
    }
    if (j.contains("min_decryption_version")) {
      key.min_decryption_version = j.at("min_decryption_version").get<uint32_t>();
    }
    if (j.contains("states")) key.states = j.at("states").get<std::vector<std::string>>();
    return key;
  } catch (const nlohmann::json::exception& e) {
    return BadResponse(std::string("malformed key object (") + e.what() + ")");
  }
}

// Whole vectors of `dimension`, and one token for each.
Status CheckTokenBatch(const char* what, std::span<const float> vectors, size_t dimension,
                       std::span<const uint8_t> tokens) {
  if (dimension != 0 && vectors.size() % dimension == 0 &&
      tokens.size() == vectors.size() / dimension * kTokenSize) {
    return Status::Ok();
  }
  return Status(Code::kInvalidArgument, "invalid_length",
                std::string(what) + " needs whole vectors of dimension " +
                    std::to_string(dimension) + " and one " + std::to_string(kTokenSize) +
                    "-byte token per vector");
}

// The base64 tokens of a JSON answer, appended to `out` as kTokenSize bytes each.
Status DecodeTokens(const std::vector<std::string>& texts, std::vector<uint8_t>& out) {
  for (const std::string& text : texts) {
    const std::optional<core::Token> token = wire::DecodeToken(text);
    if (!token) return BadResponse("a malformed token");
    out.insert(out.end(), token->begin(), token->end());
  }
  return Status::Ok();
}

// The JSON answer of an encrypt or rewrap: `floats` values of `dimension` and `token_bytes`
// bytes of tokens, or an error.
Result<EncryptResult> ReadSealedJson(const HttpResponse& response, size_t dimension,
                                     size_t floats, size_t token_bytes) {
  if (response.status != 200) return StatusFromResponse(response);
  EncryptResult result;
  std::vector<std::string> token_texts;
  result.vectors.reserve(floats);
  VectorsResponseReader reader(dimension, result.vectors, token_texts);
  VECSEAL_RETURN_IF_ERROR(reader.Read(response.body, result.key_version));
  result.dimension = dimension;
  VECSEAL_RETURN_IF_ERROR(DecodeTokens(token_texts, result.tokens));
  if (result.vectors.size() != floats || result.tokens.size() != token_bytes) {
    return BadResponse("a response with the wrong number of vectors or tokens");
  }
  return result;
}

// {"vectors": [...], "tokens": ["base64", ...]}: a decrypt or rewrap body.
std::string JsonTokensBody(std::span<const float> vectors, size_t dimension,
                           std::span<const uint8_t> tokens) {
  std::string body = R"({"vectors":)";
  wire::AppendVectorsJson(body, vectors, dimension);
  body += R"(,"tokens":[)";
  for (size_t i = 0; i < tokens.size(); i += kTokenSize) {
    body += i == 0 ? "\"" : ",\"";
    body += wire::Base64Encode(tokens.subspan(i, kTokenSize));
    body += '"';
  }
  body += "]}";
  return body;
}

Result<nlohmann::json> ParseJsonBody(const HttpResponse& response) {
  nlohmann::json body = nlohmann::json::parse(response.body, nullptr, false);
  if (body.is_discarded()) return BadResponse("a body that is not JSON");
  return body;
}

}  // namespace

std::string ResolveSocketPath(std::string_view explicit_path) {
  if (!explicit_path.empty()) return std::string(explicit_path);
  const char* env = std::getenv("VECSEAL_SOCKET");
  if (env != nullptr && *env != '\0') return env;
  return std::string(kDefaultSocketPath);
}

std::optional<std::string_view> HttpResponse::Header(std::string_view lower_case_name) const {
  for (const auto& [name, value] : headers) {
    if (name == lower_case_name) return std::string_view(value);
  }
  return std::nullopt;
}

Status StatusFromResponse(const HttpResponse& response) {
  const Code code = wire::CodeForHttpStatus(static_cast<unsigned>(response.status));
  nlohmann::json body = nlohmann::json::parse(response.body, nullptr, false);
  if (body.is_object() && body.contains("error") && body["error"].is_object()) {
    const nlohmann::json& error = body["error"];
    std::string reason = error.value("code", "");
    std::string message = error.value("message", "");
    if (!reason.empty()) {
      Status status(code == Code::kOk ? Code::kInternal : code, reason,
                    message.empty() ? reason : message);
      if (error.contains("vector_index") && error["vector_index"].is_number_unsigned()) {
        return std::move(status).WithVectorIndex(error["vector_index"].get<size_t>());
      }
      return status;
    }
  }
  return Status(code, "http_" + std::to_string(response.status),
                "vecseald answered HTTP " + std::to_string(response.status));
}

// One keep-alive connection: request writer and a bounded HTTP/1.1 response reader.
class Client::Connection {
 public:
  Connection(std::string path, std::chrono::milliseconds timeout, const std::atomic<bool>* cancel)
      : path_(std::move(path)), timeout_(timeout), cancel_(cancel) {}
  ~Connection() { Close(); }

  bool is_open() const { return fd_ >= 0; }
  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    buffer_.clear();
  }

  Status Open() {
    Close();
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    if (path_.empty() || path_.size() >= sizeof(address.sun_path)) {
      return Status(Code::kInvalidArgument, "connect_failed",
                    "cannot connect to " + path_ + ": socket path is empty or too long");
    }
    std::memcpy(address.sun_path, path_.data(), path_.size());
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return ConnectError(errno);
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
      const int error = errno;
      ::close(fd);
      return ConnectError(error);
    }
    // Non-blocking from here on, so that every wait goes through poll() and its deadline.
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
      const int error = errno;
      ::close(fd);
      return ConnectError(error);
    }
    // Batches are megabytes: a larger send buffer (capped by net.core.wmem_max) means fewer
    // wake-ups of both sides per request. Best effort.
    const int send_buffer = 4 << 20;
    ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &send_buffer, sizeof(send_buffer));
    fd_ = fd;
    return Status::Ok();
  }

  // The head and the body in one sendmsg: one system call and one wake-up of the daemon for a
  // small request, and no copy of a large body into the head's buffer.
  Status Send(std::string_view head, std::string_view body) {
    const auto deadline = Clock::now() + timeout_;
    const size_t total = head.size() + body.size();
    size_t done = 0;
    while (done < total) {
      iovec parts[2];
      size_t count = 0;
      if (done < head.size()) {
        parts[count++] = {const_cast<char*>(head.data() + done), head.size() - done};
        if (!body.empty()) parts[count++] = {const_cast<char*>(body.data()), body.size()};
      } else {
        parts[count++] = {const_cast<char*>(body.data() + (done - head.size())), total - done};
      }
      msghdr message{};
      message.msg_iov = parts;
      message.msg_iovlen = count;
      const ssize_t n = ::sendmsg(fd_, &message, MSG_NOSIGNAL);
      if (n > 0) {
        done += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        VECSEAL_RETURN_IF_ERROR(Wait(POLLOUT, deadline));
        continue;
      }
      return Lost(std::string("sending failed: ") + std::strerror(errno));
    }
    return Status::Ok();
  }

  // Reads one response. `idle_close` is set when the daemon closed before sending any byte: on a
  // reused connection that is a keep-alive timeout, and the caller may retry once.
  // With a `target`, a 200 body of exactly target->size() bytes is read straight into it (and
  // HttpResponse::body stays empty): megabytes of vectors are neither zero-filled nor copied.
  Result<HttpResponse> Receive(bool& idle_close, const BodyTarget* target) {
    idle_close = false;
    const auto deadline = Clock::now() + timeout_;
    size_t header_end;
    while ((header_end = buffer_.find("\r\n\r\n")) == std::string::npos) {
      if (buffer_.size() > kMaxHeaderBytes) return BadResponse("headers over 64 KiB");
      Result<size_t> n = Fill(deadline);
      if (!n.ok()) return std::move(n).TakeStatus();
      if (*n == 0) {
        idle_close = buffer_.empty();
        return Lost("the daemon closed the connection");
      }
    }
    HttpResponse response;
    bool chunked = false, close_after = false;
    std::optional<size_t> content_length;
    VECSEAL_RETURN_IF_ERROR(ParseHead(std::string_view(buffer_).substr(0, header_end), response,
                                      content_length, chunked, close_after));
    buffer_.erase(0, header_end + 4);
    if (chunked) {
      VECSEAL_RETURN_IF_ERROR(ReadChunked(response.body, deadline));
    } else if (content_length) {
      if (*content_length > kMaxBodyBytes) return BadResponse("a body over 2 GiB");
      BodyTarget into;
      if (target != nullptr && response.status == 200 && target->size() == *content_length) {
        into = *target;
      } else {
        response.body.resize(*content_length);
        into.first = std::span<char>(response.body);
      }
      // Straight into place: megabytes of vectors are not staged through buffer_.
      for (std::span<char> part : {into.first, into.second}) {
        if (part.empty()) continue;  // no tokens: a null span, which memcpy may not be given
        size_t have = std::min(buffer_.size(), part.size());
        std::memcpy(part.data(), buffer_.data(), have);
        buffer_.erase(0, have);
        while (have < part.size()) {
          Result<size_t> n = Receive(part.data() + have, part.size() - have, deadline);
          if (!n.ok()) return std::move(n).TakeStatus();
          if (*n == 0) return Lost("the daemon closed the connection mid-response");
          have += *n;
        }
      }
    } else {
      // No length: the body runs to the end of the connection (HTTP/1.0 style).
      while (true) {
        Result<size_t> n = Fill(deadline);
        if (!n.ok()) return std::move(n).TakeStatus();
        if (*n == 0) break;
        if (buffer_.size() > kMaxBodyBytes) return BadResponse("a body over 2 GiB");
      }
      response.body = std::move(buffer_);
      close_after = true;
    }
    if (close_after) Close();
    return response;
  }

 private:
  Status ConnectError(int error) const {
    return Status(error == EACCES || error == EPERM ? Code::kPermissionDenied : Code::kUnavailable,
                  "connect_failed", "cannot connect to " + path_ + ": " + ConnectErrorText(error));
  }
  Status Lost(const std::string& what) {
    Close();
    return Status(Code::kUnavailable, "connection_lost", "lost the connection to " + path_ + ": " + what);
  }

  Status Wait(short events, Clock::time_point deadline) {
    while (true) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) {
        Close();
        return Status(Code::kUnavailable, "daemon_timeout",
                      "vecseald at " + path_ + " did not answer within " +
                          std::to_string(timeout_.count() / 1000.0).substr(0, 4) + " s");
      }
      pollfd p{fd_, events, 0};
      const int r = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), 1 << 30)));
      if (r > 0) return Status::Ok();
      if (r < 0 && errno != EINTR) return Lost(std::string("poll failed: ") + std::strerror(errno));
      if (cancel_ != nullptr && cancel_->load()) {
        Close();
        return Status(Code::kUnavailable, "interrupted", "interrupted while waiting for vecseald");
      }
    }
  }

  Result<size_t> Fill(Clock::time_point deadline) {
    char block[65536];
    Result<size_t> n = Receive(block, sizeof(block), deadline);
    if (n.ok()) buffer_.append(block, *n);
    return n;
  }

  // Up to `size` bytes into `out`; 0 when the daemon closed the connection.
  Result<size_t> Receive(char* out, size_t size, Clock::time_point deadline) {
    while (true) {
      const ssize_t n = ::recv(fd_, out, size, MSG_DONTWAIT);
      if (n >= 0) return static_cast<size_t>(n);
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        VECSEAL_RETURN_IF_ERROR(Wait(POLLIN, deadline));
        continue;
      }
      if (errno == ECONNRESET) return size_t{0};
      return Lost(std::string("receiving failed: ") + std::strerror(errno));
    }
  }

  static Status ParseHead(std::string_view head, HttpResponse& response,
                          std::optional<size_t>& content_length, bool& chunked, bool& close_after) {
    size_t line_end = head.find("\r\n");
    const std::string_view status_line = head.substr(0, line_end);
    // "HTTP/1.1 200 OK"
    if (status_line.size() < 12 || status_line.substr(0, 7) != "HTTP/1." || status_line[8] != ' ') {
      return BadResponse("a malformed status line");
    }
    const std::optional<int> status = ParseDecimal<int>(status_line.substr(9, 3));
    if (!status || *status < 100 || *status > 599) return BadResponse("a malformed status code");
    response.status = *status;
    close_after = status_line[7] == '0';
    while (line_end != std::string_view::npos) {
      const size_t start = line_end + 2;
      line_end = head.find("\r\n", start);
      const std::string_view line = head.substr(start, line_end == std::string_view::npos
                                                           ? std::string_view::npos
                                                           : line_end - start);
      const size_t colon = line.find(':');
      if (colon == std::string_view::npos || colon == 0) return BadResponse("a malformed header");
      std::string name = Lower(line.substr(0, colon));
      std::string value(Trim(line.substr(colon + 1)));
      if (name == "content-length") {
        const std::optional<size_t> length = ParseDecimal<size_t>(value);
        if (!length || (content_length && *content_length != *length)) {
          return BadResponse("a malformed Content-Length");
        }
        content_length = length;
      } else if (name == "transfer-encoding") {
        if (Lower(value) != "chunked") return BadResponse("Transfer-Encoding '" + value + "'");
        chunked = true;
      } else if (name == "connection") {
        if (Lower(value) == "close") close_after = true;
      }
      response.headers.emplace_back(std::move(name), std::move(value));
    }
    return Status::Ok();
  }

  Status ReadChunked(std::string& body, Clock::time_point deadline) {
    while (true) {
      size_t line_end;
      while ((line_end = buffer_.find("\r\n")) == std::string::npos) {
        if (buffer_.size() > 1024) return BadResponse("a malformed chunk header");
        Result<size_t> n = Fill(deadline);
        if (!n.ok()) return std::move(n).TakeStatus();
        if (*n == 0) return Lost("the daemon closed the connection mid-response");
      }
      std::string_view size_text = std::string_view(buffer_).substr(0, line_end);
      size_text = size_text.substr(0, size_text.find(';'));
      size_t size = 0;
      const auto [end, ec] =
          std::from_chars(size_text.data(), size_text.data() + size_text.size(), size, 16);
      if (ec != std::errc() || end != size_text.data() + size_text.size() || size_text.empty()) {
        return BadResponse("a malformed chunk size");
      }
      if (size > kMaxBodyBytes - body.size()) return BadResponse("a body over 2 GiB");
      buffer_.erase(0, line_end + 2);
      // The chunk, its CRLF; for the last (empty) chunk, the trailer section's final CRLF.
      while (buffer_.size() < size + 2) {
        Result<size_t> n = Fill(deadline);
        if (!n.ok()) return std::move(n).TakeStatus();
        if (*n == 0) return Lost("the daemon closed the connection mid-response");
      }
      if (size == 0) {
        // Skip trailers, if any, up to the empty line.
        size_t trailer_end;
        while ((trailer_end = buffer_.find("\r\n")) != 0) {
          if (trailer_end == std::string::npos) {
            Result<size_t> n = Fill(deadline);
            if (!n.ok()) return std::move(n).TakeStatus();
            if (*n == 0) return Lost("the daemon closed the connection mid-response");
            continue;
          }
          buffer_.erase(0, trailer_end + 2);
        }
        buffer_.erase(0, 2);
        return Status::Ok();
      }
      if (buffer_.compare(size, 2, "\r\n") != 0) return BadResponse("a malformed chunk");
      body.append(buffer_, 0, size);
      buffer_.erase(0, size + 2);
    }
  }

  std::string path_;
  std::chrono::milliseconds timeout_;
  const std::atomic<bool>* cancel_;
  int fd_ = -1;
  std::string buffer_;
};

Client::Client(ClientOptions options) : options_(std::move(options)) {
  options_.socket_path = ResolveSocketPath(options_.socket_path);
  connection_ = std::make_unique<Connection>(options_.socket_path, options_.timeout,
                                             options_.cancel);
}

Client::~Client() = default;

Result<std::unique_ptr<Client>> Client::Connect(ClientOptions options) {
  std::unique_ptr<Client> client(new Client(std::move(options)));
  VECSEAL_RETURN_IF_ERROR(client->connection_->Open());
  return client;
}

Result<HttpResponse> Client::Call(std::string_view method, std::string_view target,
                                  std::string_view content_type, std::string_view body,
                                  std::span<const std::pair<std::string, std::string>> headers,
                                  const BodyTarget* response_target) {
  std::string request;
  request.reserve(256 + body.size());
  request.append(method).append(" ").append(target).append(" HTTP/1.1\r\nHost: localhost\r\n");
  if (!content_type.empty()) request.append("Content-Type: ").append(content_type).append("\r\n");
  if (method != "GET" || !body.empty()) {
    request.append("Content-Length: ").append(std::to_string(body.size())).append("\r\n");
  }
  for (const auto& [name, value] : headers) request.append(name).append(": ").append(value).append("\r\n");
  request.append("\r\n");
  for (int attempt = 0; attempt < 2; ++attempt) {
    const bool reused = connection_->is_open();
    if (!reused) VECSEAL_RETURN_IF_ERROR(connection_->Open());
    Status sent = connection_->Send(request, body);
    bool idle_close = false;
    Result<HttpResponse> response = sent.ok() ? connection_->Receive(idle_close, response_target) : Result<HttpResponse>(sent);
    // A reused connection that the daemon closed while idle never saw this request: retry
    // once on a fresh one. Anything else is reported, never silently repeated.
    const bool retry = reused && (sent.ok() ? idle_close : sent.reason() == "connection_lost");
    if (response.ok() || !retry || attempt == 1) return response;
  }
  return Status(Code::kInternal, "internal", "unreachable");
}

Result<HttpResponse> Client::Request(std::string_view method, std::string_view target,
                                     std::string_view content_type, std::string_view body,
                                     std::span<const std::pair<std::string, std::string>> headers) {
  return Call(method, target, content_type, body, headers);
}

Result<EncryptResult> Client::Encrypt(std::string_view key, std::span<const float> vectors,
                                      size_t dimension, bool reversible,
                                      std::optional<uint32_t> key_version) {
  VECSEAL_RETURN_IF_ERROR(wire::CheckKeyName(key));
  if (dimension == 0 || vectors.size() % dimension != 0) {
    return Status(Code::kInvalidArgument, "invalid_length",
                  std::to_string(vectors.size()) + " values are not whole vectors of dimension " +
                      std::to_string(dimension));
  }
  const size_t n = vectors.size() / dimension;
  const std::string target = "/v1/keys/" + std::string(key) + "/encrypt";
  EncryptResult result;
  if (options_.wire == Wire::kBinary) {
    result.vectors.resize(vectors.size());
    result.tokens.resize(reversible ? n * kTokenSize : 0);
    Result<uint32_t> version =
        EncryptInto(key, vectors, dimension, result.vectors, result.tokens, key_version);
    if (!version.ok()) return std::move(version).TakeStatus();
    result.key_version = *version;
    result.dimension = dimension;
    return result;
  }
  std::string body = R"({"reversible":)";
  body += reversible ? "true" : "false";
  if (key_version) body += R"(,"key_version":)" + std::to_string(*key_version);
  body += R"(,"vectors":)";
  wire::AppendVectorsJson(body, vectors, dimension);
  body += "}";
  Result<HttpResponse> response = Call("POST", target, "application/json", body, {});
  if (!response.ok()) return std::move(response).TakeStatus();
  return ReadSealedJson(*response, dimension, vectors.size(), reversible ? n * kTokenSize : 0);
}

Result<uint32_t> Client::EncryptInto(std::string_view key, std::span<const float> vectors,
                                     size_t dimension, std::span<float> out,
                                     std::span<uint8_t> tokens,
                                     std::optional<uint32_t> key_version) {
  VECSEAL_RETURN_IF_ERROR(wire::CheckKeyName(key));
  if (dimension == 0 || vectors.size() % dimension != 0 || out.size() != vectors.size() ||
      (!tokens.empty() && tokens.size() != vectors.size() / dimension * kTokenSize)) {
    return Status(Code::kInvalidArgument, "invalid_length",
                  "EncryptInto needs whole vectors of dimension " + std::to_string(dimension) +
                      ", an output of the same size, and no tokens or one " +
                      std::to_string(kTokenSize) + "-byte token per vector");
  }
  const size_t n = vectors.size() / dimension;
  const bool reversible = !tokens.empty();
  if (options_.wire != Wire::kBinary) {
    Result<EncryptResult> sealed = Encrypt(key, vectors, dimension, reversible, key_version);
    if (!sealed.ok()) return std::move(sealed).TakeStatus();
    std::copy(sealed->vectors.begin(), sealed->vectors.end(), out.begin());
    std::copy(sealed->tokens.begin(), sealed->tokens.end(), tokens.begin());
    return sealed->key_version;
  }
  const std::string target = "/v1/keys/" + std::string(key) + "/encrypt";
  std::string scratch;
  std::vector<std::pair<std::string, std::string>> headers = {
      {"Vecseal-Dimension", std::to_string(dimension)},
      {"Vecseal-Reversible", reversible ? "true" : "false"}};
  if (key_version) headers.emplace_back("Vecseal-Key-Version", std::to_string(*key_version));
  // `out` may be `vectors` itself: the request is sent whole before the answer is read.
  const BodyTarget into{
      .first = std::span<char>(reinterpret_cast<char*>(out.data()), out.size() * sizeof(float)),
      .second = std::span<char>(reinterpret_cast<char*>(tokens.data()), tokens.size())};
  Result<HttpResponse> response = Call("POST", target, "application/octet-stream",
                                       wire::LittleEndianBytes(vectors, scratch), headers, &into);
  if (!response.ok()) return std::move(response).TakeStatus();
  if (response->status != 200) return StatusFromResponse(*response);
  const auto version = ParseDecimal<uint32_t>(response->Header("vecseal-key-version").value_or(""));
  if (!version) return BadResponse("no Vecseal-Key-Version header");
  if (!response->body.empty()) {
    return BadResponse("a body of " + std::to_string(response->body.size()) + " bytes for " +
                       std::to_string(n) + " vectors");
  }
  wire::ConvertLittleEndian(out);
  return *version;
}

Result<DecryptResult> Client::Decrypt(std::string_view key, std::span<const float> vectors,
                                      size_t dimension, std::span<const uint8_t> tokens) {
  VECSEAL_RETURN_IF_ERROR(wire::CheckKeyName(key));
  VECSEAL_RETURN_IF_ERROR(CheckTokenBatch("decrypt", vectors, dimension, tokens));
  const std::string target = "/v1/keys/" + std::string(key) + "/decrypt";
  DecryptResult result;
  if (options_.wire == Wire::kBinary) {
    std::string body;
    wire::AppendLittleEndian(body, vectors);
    body.append(reinterpret_cast<const char*>(tokens.data()), tokens.size());
    const std::pair<std::string, std::string> headers[] = {
        {"Vecseal-Dimension", std::to_string(dimension)}};
    Result<HttpResponse> response = Call("POST", target, "application/octet-stream", body, headers);
    if (!response.ok()) return std::move(response).TakeStatus();
    if (response->status != 200) return StatusFromResponse(*response);
    if (response->body.size() != vectors.size() * 4) {
      return BadResponse("a body of " + std::to_string(response->body.size()) + " bytes");
    }
    const auto version = ParseDecimal<uint32_t>(response->Header("vecseal-key-version").value_or("0"));
    result.key_version = version.value_or(0);
    result.dimension = dimension;
    wire::ReadLittleEndian(response->body, result.vectors);
    return result;
  }
  Result<HttpResponse> response =
      Call("POST", target, "application/json", JsonTokensBody(vectors, dimension, tokens), {});
  if (!response.ok()) return std::move(response).TakeStatus();
  if (response->status != 200) return StatusFromResponse(*response);
  std::vector<std::string> ignored_tokens;
  result.vectors.reserve(vectors.size());
  VectorsResponseReader reader(dimension, result.vectors, ignored_tokens);
  VECSEAL_RETURN_IF_ERROR(reader.Read(response->body, result.key_version));
  result.dimension = dimension;
  if (result.vectors.size() != vectors.size()) return BadResponse("the wrong number of vectors");
  return result;
}

Result<std::vector<KeyInfo>> Client::ListKeys() {
  Result<HttpResponse> response = Call("GET", "/v1/keys", "", "", {});
  if (!response.ok()) return std::move(response).TakeStatus();
  if (response->status != 200) return StatusFromResponse(*response);
  Result<nlohmann::json> body = ParseJsonBody(*response);
  if (!body.ok()) return std::move(body).TakeStatus();
  if (!body->contains("keys") || !(*body)["keys"].is_array()) return BadResponse("no \"keys\" array");
  std::vector<KeyInfo> keys;
  for (const nlohmann::json& entry : (*body)["keys"]) {
    Result<KeyInfo> key = ParseKeyInfo(entry);
    if (!key.ok()) return std::move(key).TakeStatus();
    keys.push_back(std::move(key).value());
  }
  return keys;
}

Result<KeyInfo> Client::CreateKey(const KeySpec& spec) {
  VECSEAL_RETURN_IF_ERROR(wire::CheckKeyName(spec.name));
  nlohmann::json request = {{"name", spec.name},
                            {"approximation_factor", spec.approximation_factor},
                            {"transform", spec.transform}};
  if (spec.dimension) request["dimension"] = *spec.dimension;
  if (!spec.derivation.empty()) request["derivation"] = spec.derivation;
  Result<HttpResponse> response = Call("POST", "/v1/keys", "application/json", request.dump(), {});
  if (!response.ok()) return std::move(response).TakeStatus();
  if (response->status != 201 && response->status != 200) return StatusFromResponse(*response);
  Result<nlohmann::json> body = ParseJsonBody(*response);
  if (!body.ok()) return std::move(body).TakeStatus();
  return ParseKeyInfo(*body);
}

Result<KeyInfo> Client::RotateKey(std::string_view key) {
  VECSEAL_RETURN_IF_ERROR(wire::CheckKeyName(key));
  Result<HttpResponse> response =
      Call("POST", "/v1/keys/" + std::string(key) + "/rotate", "application/json", "{}", {});
  if (!response.ok()) return std::move(response).TakeStatus();
  if (response->status != 200) return StatusFromResponse(*response);
  Result<nlohmann::json> body = ParseJsonBody(*response);
  if (!body.ok()) return std::move(body).TakeStatus();
  return ParseKeyInfo(*body);
}

Result<KeyInfo> Client::GetKey(std::string_view key) {
  VECSEAL_RETURN_IF_ERROR(wire::CheckKeyName(key));
  Result<HttpResponse> response = Call("GET", "/v1/keys/" + std::string(key), "", "", {});
  if (!response.ok()) return std::move(response).TakeStatus();
  if (response->status != 200) return StatusFromResponse(*response);
  Result<nlohmann::json> body = ParseJsonBody(*response);
  if (!body.ok()) return std::move(body).TakeStatus();
  return ParseKeyInfo(*body);
}

Result<KeyInfo> Client::ConfigureKey(std::string_view key,
                                     std::optional<uint32_t> min_encryption_version,
                                     std::optional<uint32_t> min_decryption_version) {
  VECSEAL_RETURN_IF_ERROR(wire::CheckKeyName(key));
  nlohmann::json request = nlohmann::json::object();
  if (min_encryption_version) request["min_encryption_version"] = *min_encryption_version;
  if (min_decryption_version) request["min_decryption_version"] = *min_decryption_version;
  Result<HttpResponse> response = Call("POST", "/v1/keys/" + std::string(key) + "/config",
                                       "application/json", request.dump(), {});
  if (!response.ok()) return std::move(response).TakeStatus();
  if (response->status != 200) return StatusFromResponse(*response);
  Result<nlohmann::json> body = ParseJsonBody(*response);
  if (!body.ok()) return std::move(body).TakeStatus();
  return ParseKeyInfo(*body);
}

Result<std::vector<uint32_t>> Client::DeleteKey(std::string_view key, bool force) {
  VECSEAL_RETURN_IF_ERROR(wire::CheckKeyName(key));
  Result<HttpResponse> response =
      Call("DELETE", "/v1/keys/" + std::string(key) + (force ? "?force=true" : ""), "", "", {});
  if (!response.ok()) return std::move(response).TakeStatus();
  if (response->status != 200) return StatusFromResponse(*response);
  Result<nlohmann::json> body = ParseJsonBody(*response);
  if (!body.ok()) return std::move(body).TakeStatus();
  try {
    return body->at("destroyed_versions").get<std::vector<uint32_t>>();
  } catch (const nlohmann::json::exception& e) {
    return BadResponse(std::string("malformed deletion answer (") + e.what() + ")");
  }
}

Result<EncryptResult> Client::Rewrap(std::string_view key, std::span<const float> vectors,
                                     size_t dimension, std::span<const uint8_t> tokens) {
  VECSEAL_RETURN_IF_ERROR(wire::CheckKeyName(key));
  VECSEAL_RETURN_IF_ERROR(CheckTokenBatch("rewrap", vectors, dimension, tokens));
  Result<HttpResponse> response =
      Call("POST", "/v1/keys/" + std::string(key) + "/rewrap", "application/json",
           JsonTokensBody(vectors, dimension, tokens), {});
  if (!response.ok()) return std::move(response).TakeStatus();
  return ReadSealedJson(*response, dimension, vectors.size(), tokens.size());
}

Result<std::string> Client::Whoami() {
  Result<HttpResponse> response = Call("GET", "/v1/whoami", "", "", {});
  if (!response.ok()) return std::move(response).TakeStatus();
  if (response->status != 200) return StatusFromResponse(*response);
  return std::move(response->body);
}

Result<HttpResponse> Client::Health() {
  Result<HttpResponse> response = Call("GET", "/v1/health", "", "", {});
  if (!response.ok()) return std::move(response).TakeStatus();
  if (response->status != 200 && response->status != 503) return StatusFromResponse(*response);
  return response;
}

}  // namespace vecseal::client
