// The HTTP request path end to end, in-process: request bytes -> vecseald's HttpServer and
// Service (the real ones) on a Unix socket, with a real audit log and policy, over the test
// harness's fake key store (tests/daemon/support/in_process_daemon.h), built once per process.
//
// Per input: connect, send the bytes, half-close, read until the server closes (bounded: a hang
// is a finding). Invariants: what comes back is a sequence of complete, well-formed HTTP
// responses (or nothing, a clean close); no 500; every response carries a Vecseal-Request-Id
// (it was audited); an error body is {"error": {"code", "message"}} with a snake_case code; a
// successful encrypt returns as many vectors, of the request's dimension, as it was sent, and a
// binary body of exactly the size its headers state.
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <boost/asio/buffer.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>
#include <nlohmann/json.hpp>

#include "fuzz_util.h"
#include "support/in_process_daemon.h"

namespace {

namespace beast = boost::beast;
namespace http = beast::http;
using nlohmann::json;
using namespace vecseal;

constexpr size_t kMaxBodyBytes = 64 << 10;
constexpr size_t kMaxVectors = 64;
constexpr size_t kMaxHeaderBytes = 4096;
// Far beyond anything an input of libFuzzer's size needs; reaching it means the server hung.
constexpr int kResponseTimeoutMs = 20000;  // below libFuzzer's -timeout=30

// Everything the daemon would hold; built once, never torn down (the process just exits).
vecseal::daemon::testing::InProcessDaemon* g_daemon = nullptr;

template <typename T>
T Must(Result<T> result, const char* what) {
  VECSEAL_FUZZ_CHECK(result.ok(), "%s: %s", what, result.status().ToString().c_str());
  return std::move(result).value();
}

// Grants the fuzzer's own user what a client normally does, but neither key rotation nor the
// creation of more than one key, so that inputs cannot grow the token without bound.
std::string PolicyJson() {
  const std::string uid = std::to_string(geteuid());
  return R"({"version": 1, "rules": [
    {"id": "fuzz-client", "callers": {"uid": )" + uid + R"(},
     "keys": ["demo", "fixed4"],
     "operations": ["encrypt", "decrypt", "rewrap", "keys.list", "keys.config"]},
    {"id": "fuzz-admin", "callers": {"uid": )" + uid + R"(},
     "keys": ["new-1"], "operations": ["keys.create"]}]})";
}

std::string OverlayJson() {
  return R"({"limits": {"max_body_bytes": )" + std::to_string(kMaxBodyBytes) +
         R"(, "max_vectors": )" + std::to_string(kMaxVectors) +
         R"(, "max_connections": 16, "max_header_bytes": )" + std::to_string(kMaxHeaderBytes) +
         R"(, "header_timeout_ms": 3000, "body_timeout_ms": 3000, "idle_timeout_ms": 3000,
            "write_timeout_ms": 3000},
            "threads": {"io": 1, "workers": 2},
            "audit": {"rotate_bytes": 1048576, "warn_free_bytes": 0, "refuse_free_bytes": 0}})";
}

void StartDaemon() {
  std::string error;
  auto started = vecseal::daemon::testing::InProcessDaemon::Start(
      {.overlay_json = OverlayJson(), .policy_json = PolicyJson()}, &error);
  VECSEAL_FUZZ_CHECK(started != nullptr, "in-process daemon: %s", error.c_str());
  g_daemon = started.release();
  pkcs11::KeyParams fixed4;
  fixed4.approximation_factor = 1.0;
  fixed4.transform = core::TransformKind::kPermute;
  fixed4.dimension = 4;
  (void)Must(g_daemon->keys().CreateKey("fixed4", fixed4), "create fixed4");
}

// Rotated audit files pile up over millions of requests; only the current one matters here.
void PruneAudit() {
  const std::string current = g_daemon->audit_log().current_file();
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(g_daemon->audit_dir(), ec)) {
    if (entry.path().string() != current && entry.path().filename() != current) {
      std::filesystem::remove(entry.path(), ec);
    }
  }
}

// What every thread of the process is doing, to tell a stuck server from a starved machine.
void DescribeHang(int client_fd) {
  std::fprintf(stderr, "hang: %zu active connections:\n",
               g_daemon->server().active_connections());
  {
    std::error_code ec;
    std::fprintf(stderr, "hang: client fd %d -> %s; descriptors:\n", client_fd,
                 std::filesystem::read_symlink("/proc/self/fd/" + std::to_string(client_fd), ec)
                     .c_str());
    for (const auto& fd : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
      std::error_code link_ec;
      std::fprintf(stderr, "  %s -> %s\n", fd.path().filename().c_str(),
                   std::filesystem::read_symlink(fd.path(), link_ec).c_str());
    }
    std::fflush(stderr);
    const std::string all = "/usr/bin/ss -xp 2>/dev/null | grep -F 'pid=" +
                            std::to_string(getpid()) + ",' 1>&2";
    if (std::system(all.c_str()) != 0) std::fprintf(stderr, "hang: ss found none\n");
  }
  for (const std::string& line :
       g_daemon->server().DescribeConnections(std::chrono::milliseconds(2000))) {
    std::fprintf(stderr, "  %s\n", line.c_str());
  }
  std::fprintf(stderr, "hang: threads (name state wchan):\n");
  std::error_code ec;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task", ec)) {
    const auto read = [&](const char* name) {
      std::string text;
      if (FILE* file = std::fopen((task.path() / name).c_str(), "r")) {
        char line[512];
        if (std::fgets(line, sizeof(line), file) != nullptr) text = line;
        std::fclose(file);
      }
      while (!text.empty() && text.back() == '\n') text.pop_back();
      return text;
    };
    const std::string stat = read("stat");
    const size_t state = stat.rfind(')');
    std::fprintf(stderr, "  %s %s %s\n", read("comm").c_str(),
                 state == std::string::npos ? "?" : stat.substr(state + 2, 1).c_str(),
                 read("wchan").c_str());
  }
  // Which descriptors each epoll instance watches, and for what: a server that sleeps while a
  // connection waits has lost an event or never asked for it.
  for (const auto& fd : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
    std::error_code link_ec;
    if (std::filesystem::read_symlink(fd.path(), link_ec).string() != "anon_inode:[eventpoll]") {
      continue;
    }
    std::fprintf(stderr, "hang: epoll fd %s watches:\n", fd.path().filename().c_str());
    if (FILE* info = std::fopen(("/proc/self/fdinfo/" + fd.path().filename().string()).c_str(),
                                "r")) {
      char line[256];
      while (std::fgets(line, sizeof(line), info) != nullptr) {
        if (std::strncmp(line, "tfd:", 4) == 0) std::fprintf(stderr, "  %s", line);
      }
      std::fclose(info);
    }
  }
  if (access("/usr/bin/ss", X_OK) == 0) {
    std::fflush(stderr);
    const std::string command = "/usr/bin/ss -xap 2>/dev/null | grep -F '" +
                                g_daemon->socket_path() + "' 1>&2";
    if (std::system(command.c_str()) != 0) std::fprintf(stderr, "hang: ss found no socket\n");
  }
  // Every thread's stack, where gdb is installed and may attach (a process cannot trace
  // itself; its child can): states alone do not say which lock a stuck thread waits for.
  if (access("/usr/bin/gdb", X_OK) == 0) {
    std::fflush(stderr);
    const std::string command = "/usr/bin/gdb -p " + std::to_string(getpid()) +
                                " -batch -nx -ex 'thread apply all bt' 1>&2 2>/dev/null";
    if (std::system(command.c_str()) != 0) std::fprintf(stderr, "hang: gdb could not attach\n");
  }
}

// poll() until an event or `deadline`. libFuzzer's -timeout arms a SIGALRM every
// timeout/2+1 seconds, and a signal ends poll() early with EINTR whatever its timeout: taken
// for a timeout, that once passed for a server hang.
int PollUntil(pollfd& p, std::chrono::steady_clock::time_point deadline) {
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    const int ready = poll(&p, 1, static_cast<int>(std::max<int64_t>(left.count(), 0)));
    if (ready >= 0 || errno != EINTR) return ready;
  }
}

// Sends `input`, half-closes, and returns everything the server sent until it closed.
std::string Exchange(const uint8_t* data, size_t size) {
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(kResponseTimeoutMs);
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  VECSEAL_FUZZ_CHECK(fd >= 0, "socket: %s", std::strerror(errno));
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  const std::string& path = g_daemon->socket_path();
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  int connected = connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address));
  if (connected != 0 && errno == EAGAIN) {
    pollfd wait{.fd = fd, .events = POLLOUT, .revents = 0};
    PollUntil(wait, deadline);
    connected = connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address));
  }
  VECSEAL_FUZZ_CHECK(connected == 0 || errno == EISCONN, "connect: %s", std::strerror(errno));

  std::string received;
  size_t sent = 0;
  bool write_open = true;
  char buffer[16384];
  for (;;) {
    if (write_open && sent == size) {
      shutdown(fd, SHUT_WR);
      write_open = false;
    }
    pollfd p{.fd = fd, .events = static_cast<short>(POLLIN | (write_open ? POLLOUT : 0)),
             .revents = 0};
    const int ready = PollUntil(p, deadline);
    VECSEAL_FUZZ_CHECK(ready >= 0, "poll: %s", std::strerror(errno));
    if (ready == 0) DescribeHang(fd);
    VECSEAL_FUZZ_CHECK(ready > 0, "no response within %d ms after %zu of %zu bytes sent: the "
                       "server hangs", kResponseTimeoutMs, sent, size);
    if (write_open && (p.revents & (POLLOUT | POLLERR | POLLHUP)) != 0) {
      const ssize_t n = send(fd, data + sent, size - sent, MSG_NOSIGNAL);
      if (n > 0) {
        sent += static_cast<size_t>(n);
      } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
        write_open = false;  // the server closed first, e.g. after a refusal
      }
    }
    if ((p.revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
      const ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
      if (n > 0) {
        received.append(buffer, static_cast<size_t>(n));
      } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
        break;
      }
    }
  }
  close(fd);
  return received;
}

struct SentRequest {
  std::string target;
  std::string content_type;
  std::string body;
  bool head = false;  // its response carries no body (RFC 9110 §9.3.2)
};

// The requests of the input as a strict parser with the server's limits reads them, up to the
// first that is incomplete or malformed.
std::vector<SentRequest> ParseRequests(const uint8_t* data, size_t size) {
  std::vector<SentRequest> requests;
  size_t offset = 0;
  while (offset < size) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(kMaxHeaderBytes);
    parser.body_limit(kMaxBodyBytes);
    parser.eager(true);
    beast::error_code ec;
    const size_t used = parser.put(boost::asio::buffer(data + offset, size - offset), ec);
    if (ec || !parser.is_done()) break;
    offset += used;
    const auto& request = parser.get();
    requests.push_back(SentRequest{.target = std::string(request.target()),
                                   .content_type = std::string(request[http::field::content_type]),
                                   .body = request.body(),
                                   .head = request.method() == http::verb::head});
  }
  return requests;
}

bool IsSnakeCase(const std::string& text) {
  if (text.empty()) return false;
  for (char c : text) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) return false;
  }
  return true;
}

void CheckEncryptResponse(const SentRequest& request, const http::response<http::string_body>& r) {
  const bool is_encrypt = request.target.starts_with("/v1/keys/") &&
                          request.target.ends_with("/encrypt");
  if (!is_encrypt || r.result_int() != 200) return;
  const std::string type(r[http::field::content_type]);
  if (type == "application/json") {
    const json sent = json::parse(request.body, nullptr, false);
    const json got = json::parse(r.body());
    if (sent.is_discarded() || !sent.is_object() || !sent.contains("vectors")) return;
    const json& rows = got.at("vectors");
    VECSEAL_FUZZ_CHECK(rows.size() == sent["vectors"].size(), "%zu vectors in, %zu out",
                       sent["vectors"].size(), rows.size());
    const size_t dimension = got.at("dimension").get<size_t>();
    VECSEAL_FUZZ_CHECK(dimension == sent["vectors"][0].size(), "dimension %zu for rows of %zu",
                       dimension, sent["vectors"][0].size());
    for (const json& row : rows) {
      VECSEAL_FUZZ_CHECK(row.is_array() && row.size() == dimension, "a ragged response row");
      for (const json& value : row) VECSEAL_FUZZ_CHECK(value.is_number(), "a non-number out");
    }
    const bool reversible = sent.value("reversible", false);
    VECSEAL_FUZZ_CHECK(got.contains("tokens") == reversible, "tokens %s for reversible=%d",
                       got.contains("tokens") ? "present" : "absent", reversible);
  } else {
    VECSEAL_FUZZ_CHECK(type == "application/octet-stream", "200 with Content-Type '%s'",
                       type.c_str());
    const size_t dimension = std::stoul(std::string(r["Vecseal-Dimension"]));
    const size_t count = std::stoul(std::string(r["Vecseal-Vectors"]));
    const bool tokens = r.find("Vecseal-Token-Size") != r.end();
    VECSEAL_FUZZ_CHECK(count * dimension * sizeof(float) == request.body.size(),
                       "%zu×%zu vectors for a body of %zu bytes", count, dimension,
                       request.body.size());
    VECSEAL_FUZZ_CHECK(r.body().size() == count * (dimension * sizeof(float) +
                                                   (tokens ? core::kTokenSize : 0)),
                       "binary response of %zu bytes for %zu×%zu", r.body().size(), count,
                       dimension);
  }
}

void CheckResponses(const std::string& received, const std::vector<SentRequest>& requests) {
  size_t offset = 0;
  size_t index = 0;
  while (offset < received.size()) {
    http::response_parser<http::string_body> parser;
    parser.eager(true);
    parser.body_limit(64u << 20);
    beast::error_code ec;
    const size_t used = parser.put(boost::asio::buffer(received.data() + offset,
                                                       received.size() - offset), ec);
    VECSEAL_FUZZ_CHECK(!ec && parser.is_done(), "response %zu is malformed or cut short (%s) "
                       "at byte %zu of %zu", index, ec.message().c_str(), offset, received.size());
    offset += used;
    const auto& response = parser.get();
    const unsigned status = response.result_int();
    static const bool verbose = std::getenv("VECSEAL_FUZZ_VERBOSE") != nullptr;
    if (verbose) {
      std::fprintf(stderr, "response %zu: %u %s\n", index, status,
                   response.body().substr(0, 160).c_str());
    }
    VECSEAL_FUZZ_CHECK(status != 500, "500 Internal Server Error: %s", response.body().c_str());
    VECSEAL_FUZZ_CHECK(status >= 200 && status <= 599, "status %u", status);
    VECSEAL_FUZZ_CHECK(response.find("Vecseal-Request-Id") != response.end() || status == 503,
                       "response %zu (status %u) has no Vecseal-Request-Id", index, status);
    const std::string type(response[http::field::content_type]);
    if (index < requests.size() && requests[index].head) {
      VECSEAL_FUZZ_CHECK(response.body().empty(), "a response to HEAD with a body of %zu bytes",
                         response.body().size());
    } else if (status >= 400) {
      VECSEAL_FUZZ_CHECK(type == "application/json", "error %u with Content-Type '%s'", status,
                         type.c_str());
      const json body = json::parse(response.body(), nullptr, false);
      VECSEAL_FUZZ_CHECK(body.is_object() && body.contains("error") &&
                             body["error"].is_object() && body["error"].contains("code") &&
                             body["error"]["code"].is_string() &&
                             body["error"].contains("message") &&
                             body["error"]["message"].is_string(),
                         "error body of the wrong shape: %s", response.body().c_str());
      VECSEAL_FUZZ_CHECK(IsSnakeCase(body["error"]["code"].get<std::string>()),
                         "error code is not snake_case: %s", response.body().c_str());
    } else if (type == "application/json") {
      VECSEAL_FUZZ_CHECK(!json::parse(response.body(), nullptr, false).is_discarded(),
                         "a %u with a body that is not JSON", status);
    }
    if (index < requests.size()) CheckEncryptResponse(requests[index], response);
    ++index;
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  StartDaemon();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static size_t runs = 0;
  if (++runs % 512 == 0) PruneAudit();
  const std::string received = Exchange(data, size);
  CheckResponses(received, ParseRequests(data, size));
  return 0;
}
