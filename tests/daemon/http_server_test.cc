// HttpServer in-process, with a handler that answers everything 204: what it reports about its
// connections (DescribeConnections, for diagnosing a connection that neither answers nor
// closes), and when a closed connection stops counting against max_connections.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "support/dev_daemon.h"
#include "vecseal/daemon/http_server.h"

namespace vecseal::daemon {
namespace {

using testing::ConnectUnix;

class NoContentHandler final : public RequestHandler {
 public:
  std::unique_ptr<ConnectionContext> Accept(int) override {
    return std::make_unique<ConnectionContext>();
  }
  HttpResponse Handle(ConnectionContext&, HttpRequest&) override {
    HttpResponse response;
    response.result(boost::beast::http::status::no_content);
    return response;
  }
  HttpResponse Refuse(ConnectionContext&, HttpRequest&, const Status& status) override {
    return ErrorResponse(status);
  }
  bool ExpectsBody(const HttpRequest&) const override { return false; }
};

// Polls until `predicate` holds for the server's description of its connections.
template <typename Predicate>
std::vector<std::string> DescribeUntil(HttpServer& server, Predicate predicate) {
  std::vector<std::string> lines;
  for (int attempt = 0; attempt < 500; ++attempt) {
    lines = server.DescribeConnections(std::chrono::milliseconds(1000));
    if (predicate(lines)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return lines;
}

// A listening socket in a fresh temporary directory, removed with it.
class Listener {
 public:
  Listener() {
    char dir_template[] = "/tmp/vecseal-http-server-XXXXXX";
    if (mkdtemp(dir_template) == nullptr) return;
    dir_ = dir_template;
    path_ = dir_ + "/test.sock";
    fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::memcpy(address.sun_path, path_.c_str(), path_.size() + 1);
    if (bind(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
        listen(fd_, 16) != 0) {
      close(fd_);
      fd_ = -1;
    }
  }
  ~Listener() {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  // Handed to HttpServer::Adopt, which owns it from then on.
  int fd() const { return fd_; }
  const std::string& path() const { return path_; }

 private:
  std::string dir_, path_;
  int fd_ = -1;
};

TEST(HttpServerTest, DescribesEachConnectionByPhase) {
  Listener listener;
  ASSERT_GE(listener.fd(), 0);
  const std::string& path = listener.path();
  NoContentHandler handler;
  Limits limits;
  limits.header_timeout = std::chrono::milliseconds(30'000);
  limits.idle_timeout = std::chrono::milliseconds(30'000);
  {
    HttpServer server(handler, ServerOptions{.io_threads = 1, .worker_threads = 1}, limits);
    ASSERT_TRUE(server.Adopt(listener.fd()).ok());
    server.Start();
    EXPECT_EQ(server.DescribeConnections(std::chrono::milliseconds(1000)),
              std::vector<std::string>{});

    const int idle = ConnectUnix(path);
    ASSERT_GE(idle, 0);
    auto lines = DescribeUntil(server, [](const auto& l) {
      return l.size() == 1 && l[0].starts_with("phase=idle");
    });
    ASSERT_EQ(lines.size(), 1u);
    EXPECT_TRUE(lines[0].starts_with("phase=idle deadline=")) << lines[0];
    EXPECT_NE(lines[0].find(" buffered=0 unread=0"), std::string::npos) << lines[0];

    // Half a request: the server has read it and waits for the rest of the headers.
    const int partial = ConnectUnix(path);
    ASSERT_GE(partial, 0);
    const std::string half = "GET /v1/health HTTP/1.1\r\nHost: x\r\n";
    ASSERT_EQ(write(partial, half.data(), half.size()), static_cast<ssize_t>(half.size()));
    lines = DescribeUntil(server, [](const auto& l) {
      return l.size() == 2 && (l[0].starts_with("phase=header") ||
                               l[1].starts_with("phase=header"));
    });
    ASSERT_EQ(lines.size(), 2u);
    const std::string& header = lines[0].starts_with("phase=header") ? lines[0] : lines[1];
    EXPECT_TRUE(header.starts_with("phase=header")) << header;
    EXPECT_NE(header.find(" timed_out=no "), std::string::npos) << header;
    EXPECT_EQ(header.find("deadline=none"), std::string::npos) << "the header deadline is armed";

    close(idle);
    close(partial);
    lines = DescribeUntil(server, [](const auto& l) { return l.empty(); });
    EXPECT_EQ(lines, std::vector<std::string>{}) << "closed connections are no longer described";
  }
}

// A client that saw the daemon end its connection may connect again at once and be served: the
// connection's slot under max_connections is free before its socket closes, not when the last
// of its pending handlers returns. Counted otherwise, a client that reconnects straight away is
// refused 503 now and then.
TEST(HttpServerTest, ClosedConnectionFreesItsSlotBeforeTheClientSeesTheEnd) {
  Listener listener;
  ASSERT_GE(listener.fd(), 0);
  NoContentHandler handler;
  Limits limits;
  limits.max_connections = 1;
  limits.idle_timeout = std::chrono::milliseconds(1);
  HttpServer server(handler, ServerOptions{.io_threads = 2, .worker_threads = 1}, limits);
  ASSERT_TRUE(server.Adopt(listener.fd()).ok());
  server.Start();
  for (int round = 0; round < 200; ++round) {
    const int fd = ConnectUnix(listener.path());
    ASSERT_GE(fd, 0);
    const std::string answer = testing::ReadToEof(fd);  // the idle timeout closes it
    const size_t counted = server.active_connections();
    close(fd);
    ASSERT_EQ(answer, "") << "round " << round << ": refused instead of served";
    ASSERT_EQ(counted, 0u) << "round " << round << ": still counted after the client saw it end";
  }
}

}  // namespace
}  // namespace vecseal::daemon
