// HttpServer in-process, with a handler that answers everything 204: what it reports about its
// connections (DescribeConnections, for diagnosing a connection that neither answers nor
// closes).
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

TEST(HttpServerTest, DescribesEachConnectionByPhase) {
  char dir_template[] = "/tmp/vecseal-http-server-XXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  const std::string dir = dir_template;
  const std::string path = dir + "/test.sock";
  const int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  ASSERT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  ASSERT_EQ(listen(listener, 16), 0);

  NoContentHandler handler;
  Limits limits;
  limits.header_timeout = std::chrono::milliseconds(30'000);
  limits.idle_timeout = std::chrono::milliseconds(30'000);
  {
    HttpServer server(handler, ServerOptions{.io_threads = 1, .worker_threads = 1}, limits);
    ASSERT_TRUE(server.Adopt(listener).ok());
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
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace vecseal::daemon
