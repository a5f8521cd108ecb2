// HTTP/1.1 over a Unix-domain socket with Boost.Beast. I/O threads accept, parse and write. An
// I/O thread runs a request itself while another I/O thread stays free; beyond that, requests
// go to a worker pool, so that a slow HSM or audit write never stalls the parsing of unrelated
// connections. Every limit is enforced here and answered in JSON.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <sys/types.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/beast/http/message.hpp>

#include "vecseal/core/status.h"
#include "vecseal/daemon/config.h"
#include "vecseal/daemon/http_body.h"
#include "vecseal/policy/rate_limit.h"

namespace vecseal::daemon {

using HttpRequest = boost::beast::http::request<MessageBody>;
using HttpResponse = boost::beast::http::response<MessageBody>;

// Per-connection state owned by the handler (e.g. the peer's identity from SO_PEERCRED).
class ConnectionContext {
 public:
  virtual ~ConnectionContext() = default;
};

class RequestHandler {
 public:
  virtual ~RequestHandler() = default;
  // On a worker thread, once per accepted connection, before anything is read from it.
  // Handle and Refuse run on a worker or on an I/O thread, and may block (HSM, audit).
  virtual std::unique_ptr<ConnectionContext> Accept(int fd) = 0;
  // Must not throw; errors become JSON error responses. The handler may take
  // the request's body (to answer from the same buffer).
  virtual HttpResponse Handle(ConnectionContext& connection, HttpRequest& request) = 0;
  // For a request the transport refused (a limit, malformed HTTP): the
  // handler records it and shapes the error body. `request` holds whatever headers were read.
  virtual HttpResponse Refuse(ConnectionContext& connection, HttpRequest& request,
                              const Status& status) = 0;
  // Before a byte of a request's body is read, from its request line and headers alone: nullopt
  // to read the body and then Handle the request, or the final answer (already audited), which
  // is sent with Connection: close while the body is left unread (unless all of it arrived with
  // the headers). Runs where Handle runs; must not throw. The default reads every body.
  virtual std::optional<HttpResponse> Screen(ConnectionContext& /*connection*/,
                                             HttpRequest& /*header*/) {
    return std::nullopt;
  }
  // On an I/O thread, from the request line and headers alone: whether this request's endpoint
  // takes a body, so that one sent without a length is answered 411 (RFC 9112 §6.3: a request
  // without a length has an empty body, which is right for the others). Must be cheap.
  virtual bool ExpectsBody(const HttpRequest& header) const = 0;
};

// The JSON error body of the API: {"error": {"code", "message"[, "vector_index"]}}, with the
// HTTP status from HttpStatusFor. `version` is the request's HTTP version (11 or 10).
HttpResponse ErrorResponse(const Status& status, unsigned version = 11);
unsigned HttpStatusFor(const Status& status);

struct ServerOptions {
  unsigned io_threads = 2;
  unsigned worker_threads = 4;
};

class HttpServer {
 public:
  HttpServer(RequestHandler& handler, ServerOptions options, const Limits& limits);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Adopts a listening Unix stream socket (created by us or passed by systemd).
  Status Adopt(int listen_fd);
  void Start();

  // Limits apply to connections accepted, and requests started, after the call.
  void SetLimits(const Limits& limits);
  std::shared_ptr<const Limits> limits() const;

  // Stops accepting, closes idle keep-alive connections, lets in-flight requests finish (their
  // responses carry Connection: close), then joins every thread.
  void Drain();

  // Connections counted against max_connections: accepted and not yet closed.
  size_t active_connections() const { return open_connections_.load(); }
  // Request body bytes held now, counted against limits.max_buffered_body_bytes.
  size_t buffered_body_bytes() const { return buffered_body_bytes_.load(); }
  // Connections and requests held back because their uid had spent
  // limits.denied_requests_per_minute_per_uid.
  uint64_t delayed_for_denials() const { return delayed_for_denials_.load(); }

  // One line per live connection (its phase, deadline, timer, and buffered, unread and reserved
  // body bytes), each taken on the connection's own strand; a connection that does not answer
  // within `wait` is reported as busy. For diagnosing a connection that neither answers nor
  // closes. Not from an I/O thread or a handler: it would wait for work only the caller's own
  // thread can run.
  std::vector<std::string> DescribeConnections(std::chrono::milliseconds wait);

 private:
  class Connection;
  friend class Connection;

  enum class Admission { kAdmitted, kServerFull, kUserFull };

  void Accept();
  void OnAccepted(boost::asio::local::stream_protocol::socket socket);
  // Counts a new connection of `uid` against max_connections and its uid's share, or says
  // which of the two is full (then nothing is counted).
  Admission ClaimSlot(uid_t uid, const Limits& limits);
  void Register(const std::shared_ptr<Connection>& connection);
  void ReleaseSlot(uid_t uid);
  // Reserves `bytes` of the body budget (limits.max_buffered_body_bytes); false when they would
  // exceed it.
  bool ReserveBody(size_t bytes, size_t budget);
  void ReleaseBody(size_t bytes) { buffered_body_bytes_ -= bytes; }
  void Unregister(Connection* connection);
  // Claims an I/O thread for running a request, if one would still be left free; false when
  // the request must go to a worker.
  bool TryEnterInlineHandler();
  void LeaveInlineHandler();
  // How long `uid` must wait before its next connection or request is taken up: zero unless
  // it has spent its refusals (limits.denied_requests_per_minute_per_uid).
  std::chrono::milliseconds DenialPenalty(uid_t uid);

  RequestHandler& handler_;
  ServerOptions options_;
  boost::asio::io_context io_;
  // While a drained connection's request is on a worker, the I/O context may have no pending
  // operation at all; without this guard its threads would return and the answer never be sent.
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> io_work_;
  boost::asio::thread_pool workers_;
  boost::asio::local::stream_protocol::acceptor acceptor_;
  std::vector<std::thread> io_threads_;

  mutable std::mutex mutex_;
  std::shared_ptr<const Limits> limits_;
  BufferPool buffers_;
  std::vector<std::weak_ptr<Connection>> connections_;
  std::condition_variable drained_;
  std::atomic<size_t> open_connections_{0};
  // Open connections per peer uid (SO_PEERCRED); guarded by mutex_.
  std::map<uid_t, size_t> connections_per_uid_;
  std::atomic<size_t> buffered_body_bytes_{0};
  policy::UidRateLimiter denials_;
  std::atomic<uint64_t> delayed_for_denials_{0};
  // Connection objects not yet destroyed, which Drain waits for; guarded by mutex_.
  size_t live_connections_ = 0;
  std::atomic<size_t> inline_handlers_{0};
  std::atomic<bool> draining_{false};
  bool started_ = false;
  bool stopped_ = false;
};

}  // namespace vecseal::daemon
