// GCC 12 reports a -Wnull-dereference false positive inside Boost.Asio 1.74's scheduler once it
// is inlined here; the pragma must precede the includes to cover the inlined code.
#pragma GCC diagnostic ignored "-Wnull-dereference"

#include "vecseal/daemon/http_server.h"

#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <chrono>
#include <cmath>
#include <exception>
#include <optional>
#include <sstream>
#include <utility>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/write.hpp>

#include "log.h"

namespace vecseal::daemon {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using Socket = asio::local::stream_protocol::socket;
using ErrorCode = boost::system::error_code;

// After a final response we stop sending and discard what the client still sends for at most
// this long, so that it reads our error instead of a connection reset.
constexpr std::chrono::milliseconds kLingerLimit{2000};
constexpr int kSendBufferBytes = 4 << 20;
// Enough recycled body buffers for a handful of 1024×768 batches in flight.
constexpr size_t kRetainedBufferBytes = 32 << 20;

// Headers that may appear once: a second copy would make the request mean what one reader or
// another decides (RFC 9110 §5.3), so it is refused rather than resolved.
constexpr std::string_view kSingletonHeaders[] = {
    "content-type",       "transfer-encoding",   "vecseal-dimension",
    "vecseal-reversible", "vecseal-key-version", "host",
};

bool SameName(std::string_view a, std::string_view b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

// Strict header rules (issue #17): no repeated singleton header, and no transfer coding but
// chunked, which is all the server decodes (a "gzip, chunked" body was read as plain chunked).
Status CheckStrictHeaders(const HttpRequest& request) {
  for (std::string_view name : kSingletonHeaders) {
    size_t count = 0;
    for (const auto& field : request) {
      if (SameName(std::string_view(field.name_string().data(), field.name_string().size()),
                   name)) {
        ++count;
      }
    }
    if (count > 1) {
      return Status(Code::kInvalidArgument, "invalid_request",
                    "the " + std::string(name) + " header appears " + std::to_string(count) +
                        " times; send it once");
    }
  }
  const auto coding = request.find(boost::beast::http::field::transfer_encoding);
  if (coding != request.end()) {
    std::string_view value(coding->value().data(), coding->value().size());
    while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
    while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.remove_suffix(1);
    if (!SameName(value, "chunked")) {
      return Status(Code::kInvalidArgument, "unsupported_transfer_coding",
                    "Transfer-Encoding may only be chunked; send the body uncompressed");
    }
  }
  return Status::Ok();
}

Status TransportError(Code code, const char* reason, std::string message) {
  return Status(code, reason, std::move(message));
}

// The uid the kernel recorded when the peer connected; -1 when it cannot say (counted as one
// more user).
uid_t PeerUid(int fd) {
  ucred credentials{};
  socklen_t length = sizeof(credentials);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0) {
    return static_cast<uid_t>(-1);
  }
  return credentials.uid;
}

// Answers a connection over a limit and closes it at once: one non-blocking send of the error
// and nothing kept, so that a flood of connects costs a descriptor for microseconds each. On a
// Unix socket the client still reads the answer before it sees the close.
void RefuseConnection(asio::local::stream_protocol::socket& socket, const Status& status) {
  HttpResponse response = ErrorResponse(status);
  response.keep_alive(false);
  response.prepare_payload();
  std::ostringstream text;
  text << response;
  const std::string bytes = text.str();
  [[maybe_unused]] const ssize_t sent =
      ::send(socket.native_handle(), bytes.data(), bytes.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  ErrorCode ignored;
  socket.shutdown(asio::local::stream_protocol::socket::shutdown_both, ignored);
  socket.close(ignored);
}

Status BodyMemoryExhausted(size_t budget) {
  return TransportError(Code::kResourceExhausted, "body_memory_exhausted",
                        "the daemon already holds its limit of " + std::to_string(budget) +
                            " bytes of request bodies (limits.max_buffered_body_bytes); retry "
                            "later");
}

}  // namespace

class HttpServer::Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(HttpServer& server, Socket socket, uid_t uid)
      : server_(server),
        socket_(std::move(socket)),
        timer_(socket_.get_executor()),
        penalty_timer_(socket_.get_executor()),
        uid_(uid) {}

  ~Connection() {
    ReleaseSlot();
    ReleaseBody();
    server_.Unregister(this);
  }

  void Start() {
    if (WaitOutDenialPenalty([self = shared_from_this()] { self->Start(); })) return;
    limits_ = server_.limits();
    // Identifying the peer reads /proc and may hash its executable: a worker's job, not an I/O
    // thread's. Nothing is read from the socket until it is done.
    phase_ = Phase::kHandling;
    asio::post(server_.workers_, [self = shared_from_this()] {
      std::unique_ptr<ConnectionContext> context;
      try {
        context = self->server_.handler_.Accept(self->socket_.native_handle());
      } catch (const std::exception& error) {
        LogLine("error", "identify_failed", "error=" + LogValue(error.what()));
      }
      asio::post(self->socket_.get_executor(), [self, context = std::move(context)]() mutable {
        self->context_ = std::move(context);
        if (self->context_ == nullptr) return self->Close();
        self->ReadNext();
      });
    });
  }

  Socket::executor_type socket_executor() { return socket_.get_executor(); }

  // Runs on this connection's strand.
  std::string Describe() {
    static constexpr const char* kPhases[] = {"idle",    "header",    "body",  "handling",
                                              "writing", "lingering", "closed"};
    const auto now = asio::steady_timer::clock_type::now();
    const auto in_ms = [&](asio::steady_timer::time_point when) {
      if (when == asio::steady_timer::time_point::max()) return std::string("none");
      return std::to_string(
                 std::chrono::duration_cast<std::chrono::milliseconds>(when - now).count()) +
             " ms";
    };
    ErrorCode ec;
    return std::string("phase=") + kPhases[static_cast<int>(phase_)] +
           " deadline=" + in_ms(deadline_) +
           " timer=" + (timer_waiting_ ? in_ms(timer_.expiry()) : std::string("idle")) +
           " timed_out=" + (timed_out_ ? "yes" : "no") +
           " buffered=" + std::to_string(buffer_.size()) +
           " unread=" + std::to_string(socket_.available(ec)) +
           " reserved=" + std::to_string(reserved_body_);
  }

  // Called on this connection's strand when the server drains. A connection whose next request
  // has started to arrive is in flight, not idle; one held back for its uid's refusals is not.
  void CloseIfIdle() {
    ErrorCode ec;
    if (penalised_ || (phase_ == Phase::kIdle && socket_.available(ec) == 0)) Close();
  }

 private:
  enum class Phase { kIdle, kHeader, kBody, kHandling, kWriting, kLingering, kClosed };

  // While this uid has spent its refusals, waits (reading and identifying nothing, and costing
  // no CPU) until it has credit again, then runs `resume`; false when there is nothing to wait
  // for. The wait holds one of the uid's own connection slots, so it cannot grow past them.
  template <class Resume>
  bool WaitOutDenialPenalty(Resume resume) {
    const std::chrono::milliseconds penalty = server_.DenialPenalty(uid_);
    if (penalty.count() == 0 || server_.draining_.load()) return false;
    penalised_ = true;
    phase_ = Phase::kIdle;
    ++server_.delayed_for_denials_;
    penalty_timer_.expires_after(penalty);
    penalty_timer_.async_wait([this, resume = std::move(resume)](ErrorCode ec) {
      penalised_ = false;
      if (ec || phase_ == Phase::kClosed) return;
      resume();
    });
    return true;
  }

  void ReadNext() {
    // Draining closes a connection only if no byte of a next request has arrived: a response
    // can finish after the drain started while the client already sent its next request.
    ErrorCode available_ec;
    if (server_.draining_.load() && buffer_.size() == 0 && socket_.available(available_ec) == 0) {
      return Close();
    }
    if (WaitOutDenialPenalty([self = shared_from_this()] { self->ReadNext(); })) return;
    limits_ = server_.limits();
    parser_.emplace();
    parser_->header_limit(static_cast<uint32_t>(limits_->max_header_bytes));
    parser_->body_limit(limits_->max_body_bytes);
    if (buffer_.size() > 0) return ReadHeader();
    phase_ = Phase::kIdle;
    Arm(limits_->idle_timeout);
    socket_.async_wait(Socket::wait_read,
                       [self = shared_from_this()](ErrorCode ec) { self->OnReadable(ec); });
  }

  void OnReadable(ErrorCode ec) {
    if (ec || phase_ == Phase::kClosed) return Close();
    ReadHeader();
  }

  void ReadHeader() {
    phase_ = Phase::kHeader;
    Arm(limits_->header_timeout);
    http::async_read_header(socket_, buffer_, *parser_,
                            [self = shared_from_this()](ErrorCode ec, size_t) {
                              self->OnHeader(ec);
                            });
  }

  void OnHeader(ErrorCode ec) {
    if (phase_ == Phase::kClosed) return;
    if (timed_out_) {
      return Refuse(TransportError(Code::kResourceExhausted, "request_timeout",
                                   "the request headers did not arrive within " +
                                       std::to_string(limits_->header_timeout.count()) + " ms"));
    }
    if (ec == http::error::end_of_stream || ec == asio::error::eof ||
        ec == asio::error::connection_reset || ec == asio::error::operation_aborted) {
      return Close();
    }
    // Beast checks Content-Length against the body limit while parsing the headers.
    if (ec == http::error::body_limit) return Refuse(BodyTooLarge());
    if (ec == http::error::header_limit) {
      return Refuse(TransportError(Code::kInvalidArgument, "header_too_large",
                                   "the request headers exceed " +
                                       std::to_string(limits_->max_header_bytes) + " bytes"));
    }
    if (ec) {
      return Refuse(TransportError(Code::kInvalidArgument, "invalid_request",
                                   "malformed HTTP request: " + ec.message()));
    }
    const auto& request = parser_->get();
    if (Status strict = CheckStrictHeaders(request); !strict.ok()) return Refuse(strict);
    if (server_.handler_.ExpectsBody(request) && !parser_->content_length() &&
        !parser_->chunked()) {
      return Refuse(TransportError(Code::kInvalidArgument, "length_required",
                                   "a POST needs a Content-Length header (or chunked encoding)"));
    }
    if (parser_->content_length() && *parser_->content_length() > limits_->max_body_bytes) {
      return Refuse(BodyTooLarge());
    }
    if (parser_->is_done()) return ReadBody();
    Screen();
  }

  // The handler decides from the headers before the body is read, so that a caller it refuses
  // never costs more than its headers. Run inline or on a worker, as Dispatch runs a request.
  void Screen() {
    phase_ = Phase::kHandling;
    Disarm();
    if (server_.TryEnterInlineHandler()) {
      auto answer = RunScreen();
      server_.LeaveInlineHandler();
      return OnScreened(std::move(answer));
    }
    asio::post(server_.workers_, [self = shared_from_this()]() {
      auto answer = self->RunScreen();
      asio::post(self->socket_.get_executor(), [self, answer = std::move(answer)]() mutable {
        self->OnScreened(std::move(answer));
      });
    });
  }

  std::shared_ptr<HttpResponse> RunScreen() {
    HttpRequest& header = parser_->get();
    try {
      auto answer = server_.handler_.Screen(*context_, header);
      if (!answer) return nullptr;
      auto response = std::make_shared<HttpResponse>(std::move(*answer));
      response->version(header.version() == 10 ? 10 : 11);
      return response;
    } catch (const std::exception& error) {
      LogLine("error", "handler_exception", "error=" + LogValue(error.what()));
      return std::make_shared<HttpResponse>(ErrorResponse(
          Status(Code::kInternal, "internal", "the daemon failed to handle the request")));
    }
  }

  // A refusal is sent without reading the body; otherwise the body's bytes are reserved from
  // the server's budget (a chunked body's as they arrive), then read.
  void OnScreened(std::shared_ptr<HttpResponse> refusal) {
    if (phase_ == Phase::kClosed) return;
    if (refusal) return WriteRefusal(std::move(refusal));
    const auto length = parser_->content_length();
    if (length && !ReserveBody(static_cast<size_t>(*length))) {
      return Refuse(BodyMemoryExhausted(limits_->max_buffered_body_bytes));
    }
    const auto& request = parser_->get();
    if (beast::iequals(request[http::field::expect], "100-continue")) {
      static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
      phase_ = Phase::kBody;
      Arm(limits_->write_timeout);
      asio::async_write(socket_, asio::buffer(kContinue.data(), kContinue.size()),
                        [self = shared_from_this()](ErrorCode write_ec, size_t) {
                          if (write_ec || self->phase_ == Phase::kClosed) return self->Close();
                          self->ReadBody();
                        });
      return;
    }
    ReadBody();
  }

  // A refused body that already arrived with the headers costs nothing more to skip, and the
  // connection stays usable; any other is left unread, and the connection closed.
  void WriteRefusal(std::shared_ptr<HttpResponse> refusal) {
    const auto length = parser_->content_length();
    const bool arrived = length && buffer_.size() >= *length;
    if (arrived) buffer_.consume(static_cast<size_t>(*length));
    Write(std::move(refusal), arrived && parser_->get().keep_alive());
  }

  void ReadBody() {
    phase_ = Phase::kBody;
    Arm(limits_->body_timeout);
    const auto length = parser_->content_length();
    if (parser_->is_done()) {
      http::async_read(socket_, buffer_, *parser_,
                       [self = shared_from_this()](ErrorCode ec, size_t) { self->OnBody(ec); });
      return;
    }
    if (!length) return ReadChunks();
    // A known length: whatever arrived with the headers, then one read of the rest straight
    // into the body's own buffer, so the bytes are copied once, by the kernel.
    content_ = server_.buffers_.Take(static_cast<size_t>(*length));
    const size_t buffered = asio::buffer_copy(asio::buffer(content_.data(), content_.size()),
                                              buffer_.data());
    buffer_.consume(buffered);
    if (buffered == content_.size()) return OnContent({});
    asio::async_read(socket_, asio::buffer(content_.data() + buffered, content_.size() - buffered),
                     [self = shared_from_this()](ErrorCode ec, size_t) { self->OnContent(ec); });
  }

  void OnContent(ErrorCode ec) {
    if (phase_ == Phase::kClosed) return;
    if (timed_out_) return Refuse(BodyTimeout());
    if (ec) return Close();  // the client went away mid-body: nobody to answer
    parser_->get().body().segments.push_back(std::move(content_));
    Dispatch(/*refusal=*/std::nullopt);
  }

  // Chunked: Beast's parser reassembles the body, one read at a time, so that each read's growth
  // is reserved from the budget before the next.
  void ReadChunks() {
    http::async_read_some(socket_, buffer_, *parser_,
                          [self = shared_from_this()](ErrorCode ec, size_t) {
                            self->OnChunks(ec);
                          });
  }

  void OnChunks(ErrorCode ec) {
    if (ec || phase_ == Phase::kClosed || timed_out_) return OnBody(ec);
    if (!CoverBody(parser_->get().body().text.capacity())) {
      return Refuse(BodyMemoryExhausted(limits_->max_buffered_body_bytes));
    }
    if (parser_->is_done()) return OnBody(ec);
    ReadChunks();
  }

  // Grows this request's reservation to `held` bytes.
  bool CoverBody(size_t held) {
    return held <= reserved_body_ || ReserveBody(held - reserved_body_);
  }

  bool ReserveBody(size_t bytes) {
    if (!server_.ReserveBody(bytes, limits_->max_buffered_body_bytes)) return false;
    reserved_body_ += bytes;
    return true;
  }

  // The bytes stay reserved until the answer is written: a binary answer is written from the
  // request's own buffer.
  void ReleaseBody() { server_.ReleaseBody(std::exchange(reserved_body_, 0)); }

  Status BodyTimeout() const {
    return TransportError(Code::kResourceExhausted, "request_timeout",
                          "the request body did not arrive within " +
                              std::to_string(limits_->body_timeout.count()) + " ms");
  }

  void OnBody(ErrorCode ec) {
    if (phase_ == Phase::kClosed) return;
    if (timed_out_) return Refuse(BodyTimeout());
    if (ec == http::error::body_limit) return Refuse(BodyTooLarge());
    if (ec == http::error::end_of_stream || ec == http::error::partial_message ||
        ec == asio::error::eof || ec == asio::error::connection_reset ||
        ec == asio::error::operation_aborted) {
      return Close();
    }
    if (ec) {
      return Refuse(TransportError(Code::kInvalidArgument, "invalid_request",
                                   "malformed HTTP request body: " + ec.message()));
    }
    Dispatch(/*refusal=*/std::nullopt);
  }

  Status BodyTooLarge() const {
    return TransportError(Code::kResourceExhausted, "body_too_large",
                          "the request body exceeds the limit of " +
                              std::to_string(limits_->max_body_bytes) + " bytes");
  }

  void Refuse(Status status) { Dispatch(std::move(status)); }

  // Runs the request (or its refusal) and writes the answer on our strand. The I/O thread that
  // read it runs it itself while that leaves another I/O thread free for the other connections:
  // no hand-off to a worker and back, which is most of a small request's latency. Otherwise a
  // worker runs it, so that a slow HSM call never holds up every I/O thread.
  void Dispatch(std::optional<Status> refusal) {
    phase_ = Phase::kHandling;
    Disarm();
    server_.buffers_.Give(std::move(content_));  // a refused body is not kept (moved: empty)
    auto request = std::make_shared<HttpRequest>(parser_->release());
    const bool keep_alive = !refusal && request->keep_alive();
    if (server_.TryEnterInlineHandler()) {
      auto response = Run(*request, refusal);
      server_.LeaveInlineHandler();
      return Write(std::move(response), keep_alive);
    }
    asio::post(server_.workers_, [self = shared_from_this(), request, keep_alive,
                                  refusal = std::move(refusal)]() {
      auto response = self->Run(*request, refusal);
      asio::post(self->socket_.get_executor(), [self, response, keep_alive]() {
        self->Write(response, keep_alive);
      });
    });
  }

  std::shared_ptr<HttpResponse> Run(HttpRequest& request, const std::optional<Status>& refusal) {
    auto response = std::make_shared<HttpResponse>();
    try {
      *response = refusal ? server_.handler_.Refuse(*context_, request, *refusal)
                          : server_.handler_.Handle(*context_, request);
    } catch (const std::exception& error) {
      LogLine("error", "handler_exception", "error=" + LogValue(error.what()));
      *response = ErrorResponse(
          Status(Code::kInternal, "internal", "the daemon failed to handle the request"));
    }
    response->version(request.version() == 10 ? 10 : 11);
    return response;
  }

  void Write(std::shared_ptr<HttpResponse> response, bool keep_alive) {
    if (phase_ == Phase::kClosed) return;
    if (response->result() == http::status::forbidden) server_.denials_.Charge(uid_, 1);
    keep_alive = keep_alive && !server_.draining_.load();
    response->keep_alive(keep_alive);
    response->prepare_payload();
    phase_ = Phase::kWriting;
    Arm(limits_->write_timeout);
    http::async_write(socket_, *response,
                      [self = shared_from_this(), response, keep_alive](ErrorCode ec, size_t) {
                        self->Disarm();
                        for (ByteBuffer& segment : response->body().segments) {
                          self->server_.buffers_.Give(std::move(segment));
                        }
                        self->ReleaseBody();
                        if (ec || self->phase_ == Phase::kClosed) return self->Close();
                        if (!keep_alive) return self->Linger();
                        self->ReadNext();
                      });
  }

  void Linger() {
    ErrorCode ignored;
    socket_.shutdown(Socket::shutdown_send, ignored);
    phase_ = Phase::kLingering;
    Arm(std::min(limits_->write_timeout, kLingerLimit));
    Discard();
  }

  void Discard() {
    socket_.async_read_some(asio::buffer(discard_),
                            [self = shared_from_this()](ErrorCode ec, size_t) {
                              if (ec || self->phase_ == Phase::kClosed) return self->Close();
                              self->Discard();
                            });
  }

  // One deadline per phase; expiry cancels the pending read so that its handler can answer 408,
  // or closes outright when there is nothing to answer. The timer is moved only when a deadline
  // comes earlier than its expiry: otherwise it fires early, finds the later deadline and waits
  // again. Moving it every phase would cancel its wait, and each cancelled wait is a handler that
  // wakes another I/O thread: several per request.
  void Arm(std::chrono::milliseconds timeout) {
    timed_out_ = false;
    deadline_ = asio::steady_timer::clock_type::now() + timeout;
    if (timer_waiting_ && timer_.expiry() <= deadline_) return;
    WaitForDeadline();
  }

  // No deadline while the request runs: the handler's own work is not timed out.
  void Disarm() { deadline_ = asio::steady_timer::time_point::max(); }

  void WaitForDeadline() {
    const uint64_t generation = ++timer_generation_;
    timer_waiting_ = true;
    timer_.expires_at(deadline_);
    timer_.async_wait([self = shared_from_this(), generation](ErrorCode ec) {
      if (generation != self->timer_generation_) return;  // superseded by a later wait
      self->timer_waiting_ = false;
      if (ec || self->phase_ == Phase::kClosed) return;
      if (self->deadline_ == asio::steady_timer::time_point::max()) return;
      if (asio::steady_timer::clock_type::now() < self->deadline_) return self->WaitForDeadline();
      self->timed_out_ = true;
      if (self->phase_ == Phase::kHeader || self->phase_ == Phase::kBody) {
        ErrorCode ignored;
        self->socket_.cancel(ignored);
      } else {
        self->Close();
      }
    });
  }

  void Close() {
    if (phase_ == Phase::kClosed) return;
    phase_ = Phase::kClosed;
    ++timer_generation_;
    timer_.cancel();
    penalty_timer_.cancel();
    ReleaseSlot();
    ErrorCode ignored;
    socket_.shutdown(Socket::shutdown_both, ignored);
    socket_.close(ignored);
  }

  // Released before the close, so that a client that saw its connection end can connect again
  // at once; the object itself lives on until its last pending handler returns.
  void ReleaseSlot() {
    if (slot_released_) return;
    slot_released_ = true;
    server_.ReleaseSlot(uid_);
  }

  HttpServer& server_;
  Socket socket_;
  asio::steady_timer timer_;
  asio::steady_timer penalty_timer_;  // see WaitOutDenialPenalty
  bool penalised_ = false;
  const uid_t uid_;
  bool slot_released_ = false;
  size_t reserved_body_ = 0;  // of the server's body budget
  std::unique_ptr<ConnectionContext> context_;
  std::shared_ptr<const Limits> limits_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<MessageBody>> parser_;
  ByteBuffer content_;
  Phase phase_ = Phase::kIdle;
  bool timed_out_ = false;
  uint64_t timer_generation_ = 0;
  asio::steady_timer::time_point deadline_ = asio::steady_timer::time_point::max();
  bool timer_waiting_ = false;
  std::array<char, 4096> discard_{};
};

HttpServer::HttpServer(RequestHandler& handler, ServerOptions options, const Limits& limits)
    : handler_(handler),
      options_(options),
      io_(static_cast<int>(std::max(1u, options.io_threads))),
      io_work_(io_.get_executor()),
      workers_(std::max(1u, options.worker_threads)),
      acceptor_(asio::make_strand(io_)),
      limits_(std::make_shared<const Limits>(limits)),
      buffers_(kRetainedBufferBytes),
      denials_(static_cast<double>(limits.denied_requests_per_minute_per_uid),
               static_cast<double>(limits.denied_requests_per_minute_per_uid) / 60.0) {}

HttpServer::~HttpServer() { Drain(); }

Status HttpServer::Adopt(int listen_fd) {
  ErrorCode ec;
  acceptor_.assign(asio::local::stream_protocol(), listen_fd, ec);
  if (ec) {
    return Status(Code::kUnavailable, "socket_unavailable",
                  "cannot use the listening socket: " + ec.message());
  }
  return Status::Ok();
}

void HttpServer::Start() {
  {
    std::lock_guard lock(mutex_);
    if (started_) return;
    started_ = true;
  }
  asio::post(acceptor_.get_executor(), [this] { Accept(); });
  for (unsigned i = 0; i < std::max(1u, options_.io_threads); ++i) {
    io_threads_.emplace_back([this] { io_.run(); });
  }
}

void HttpServer::SetLimits(const Limits& limits) {
  std::lock_guard lock(mutex_);
  limits_ = std::make_shared<const Limits>(limits);
  denials_.Configure(static_cast<double>(limits.denied_requests_per_minute_per_uid),
                     static_cast<double>(limits.denied_requests_per_minute_per_uid) / 60.0);
}

std::chrono::milliseconds HttpServer::DenialPenalty(uid_t uid) {
  const double seconds = denials_.SecondsUntilCredit(uid);
  return std::chrono::milliseconds(static_cast<int64_t>(std::ceil(seconds * 1000.0)));
}

std::shared_ptr<const Limits> HttpServer::limits() const {
  std::lock_guard lock(mutex_);
  return limits_;
}

void HttpServer::Accept() {
  acceptor_.async_accept(asio::make_strand(io_), [this](ErrorCode ec, Socket socket) {
    if (ec == asio::error::operation_aborted || !acceptor_.is_open() || draining_.load()) return;
    if (ec) {
      // EMFILE and friends: back off briefly instead of spinning on a failing accept.
      LogLine("warning", "accept_failed", "error=" + LogValue(ec.message()));
      auto timer = std::make_shared<asio::steady_timer>(acceptor_.get_executor(),
                                                        std::chrono::milliseconds(100));
      timer->async_wait([this, timer](ErrorCode) { Accept(); });
      return;
    }
    OnAccepted(std::move(socket));
    Accept();
  });
}

// On the acceptor's strand. A connection over a limit is answered and closed here, before any
// state exists for it.
void HttpServer::OnAccepted(Socket socket) {
  const auto limits = this->limits();
  const uid_t uid = PeerUid(socket.native_handle());
  switch (ClaimSlot(uid, *limits)) {
    case Admission::kServerFull:
      return RefuseConnection(
          socket, TransportError(Code::kResourceExhausted, "too_many_connections",
                                 "the daemon already serves its maximum of " +
                                     std::to_string(limits->max_connections) +
                                     " connections; retry later"));
    case Admission::kUserFull:
      return RefuseConnection(
          socket, TransportError(Code::kResourceExhausted, "too_many_connections_for_user",
                                 "uid " + std::to_string(uid) + " already holds its share of " +
                                     std::to_string(limits->max_connections_per_uid) +
                                     " connections (limits.max_connections_per_uid); close "
                                     "idle ones or retry later"));
    case Admission::kAdmitted:
      break;
  }
  // A 3 MB answer through the default 208 KiB send buffer takes a dozen wake-ups of each
  // side; a larger one (capped by net.core.wmem_max) takes fewer.
  ErrorCode ignored;
  socket.set_option(asio::socket_base::send_buffer_size(kSendBufferBytes), ignored);
  auto connection = std::make_shared<Connection>(*this, std::move(socket), uid);
  Register(connection);
  asio::post(connection->socket_executor(), [connection] { connection->Start(); });
}

HttpServer::Admission HttpServer::ClaimSlot(uid_t uid, const Limits& limits) {
  std::lock_guard lock(mutex_);
  if (open_connections_.load() >= limits.max_connections) return Admission::kServerFull;
  size_t& mine = connections_per_uid_[uid];
  if (mine >= limits.max_connections_per_uid) {
    if (mine == 0) connections_per_uid_.erase(uid);
    return Admission::kUserFull;
  }
  ++mine;
  ++open_connections_;
  return Admission::kAdmitted;
}

bool HttpServer::ReserveBody(size_t bytes, size_t budget) {
  size_t held = buffered_body_bytes_.load();
  do {
    if (bytes > budget || held > budget - bytes) return false;
  } while (!buffered_body_bytes_.compare_exchange_weak(held, held + bytes));
  return true;
}

bool HttpServer::TryEnterInlineHandler() {
  const size_t io_threads = std::max(1u, options_.io_threads);
  size_t busy = inline_handlers_.load();
  while (busy + 1 < io_threads) {
    if (inline_handlers_.compare_exchange_weak(busy, busy + 1)) return true;
  }
  return false;
}

void HttpServer::LeaveInlineHandler() { --inline_handlers_; }

void HttpServer::Register(const std::shared_ptr<Connection>& connection) {
  std::lock_guard lock(mutex_);
  ++live_connections_;
  connections_.push_back(connection);
}

void HttpServer::ReleaseSlot(uid_t uid) {
  std::lock_guard lock(mutex_);
  --open_connections_;
  const auto mine = connections_per_uid_.find(uid);
  if (mine != connections_per_uid_.end() && --mine->second == 0) connections_per_uid_.erase(mine);
}

void HttpServer::Unregister(Connection* /*connection*/) {
  std::lock_guard lock(mutex_);
  std::erase_if(connections_, [](const auto& weak) { return weak.expired(); });
  --live_connections_;
  drained_.notify_all();
}

std::vector<std::string> HttpServer::DescribeConnections(std::chrono::milliseconds wait) {
  struct Report {
    std::mutex mutex;
    std::condition_variable done;
    std::vector<std::string> lines;
    size_t pending = 0;
  };
  auto report = std::make_shared<Report>();
  std::vector<std::shared_ptr<Connection>> live;
  {
    std::lock_guard lock(mutex_);
    for (const auto& weak : connections_) {
      if (auto connection = weak.lock()) live.push_back(std::move(connection));
    }
  }
  report->pending = live.size();
  for (auto& connection : live) {
    asio::post(connection->socket_executor(), [connection, report] {
      std::string line = connection->Describe();
      std::lock_guard lock(report->mutex);
      report->lines.push_back(std::move(line));
      --report->pending;
      report->done.notify_all();
    });
  }
  std::unique_lock lock(report->mutex);
  report->done.wait_for(lock, wait, [&] { return report->pending == 0; });
  std::vector<std::string> lines = report->lines;
  for (size_t i = 0; i < report->pending; ++i) lines.push_back("busy: its strand did not answer");
  return lines;
}

void HttpServer::Drain() {
  {
    std::lock_guard lock(mutex_);
    if (!started_ || stopped_) return;
    stopped_ = true;
  }
  draining_.store(true);
  // The acceptor is used only on its strand, where its completion handlers run too.
  asio::post(acceptor_.get_executor(), [this] {
    ErrorCode ignored;
    acceptor_.close(ignored);
  });
  std::vector<std::shared_ptr<Connection>> live;
  {
    std::lock_guard lock(mutex_);
    for (const auto& weak : connections_) {
      if (auto connection = weak.lock()) live.push_back(std::move(connection));
    }
  }
  for (auto& connection : live) {
    asio::post(connection->socket_executor(), [connection] { connection->CloseIfIdle(); });
  }
  live.clear();
  {
    std::unique_lock lock(mutex_);
    drained_.wait(lock, [this] { return live_connections_ == 0; });
  }
  io_work_.reset();
  io_.stop();
  for (auto& thread : io_threads_) thread.join();
  io_threads_.clear();
  workers_.join();
}

}  // namespace vecseal::daemon
