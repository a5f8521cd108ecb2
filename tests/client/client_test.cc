#include "vecseal/client/client.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "dev_daemon.h"

namespace vecseal::client {
namespace {

using ::testing::HasSubstr;
using vecseal::testing::DevDaemon;

::testing::Environment* const daemon_environment = [] {
  auto* daemon = new DevDaemon(VECSEALD_PATH);
  DevDaemon::set_instance(daemon);
  return ::testing::AddGlobalTestEnvironment(daemon);
}();

// A Unix-socket server that answers with scripted bytes: a misbehaving daemon is otherwise
// impossible to produce, and the client must survive one.
class ScriptedServer {
 public:
  // `script` runs once per accepted connection, with the connection's fd.
  ScriptedServer(const std::string& path, std::function<void(int)> script) : path_(path) {
    listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, path.c_str(), sizeof(address.sun_path) - 1);
    EXPECT_EQ(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
    EXPECT_EQ(::listen(listen_fd_, 4), 0);
    thread_ = std::thread([this, script = std::move(script)] {
      while (true) {
        const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd < 0) return;
        ++connections_;
        script(fd);
        ::close(fd);
      }
    });
  }
  ~ScriptedServer() {
    ::shutdown(listen_fd_, SHUT_RDWR);
    ::close(listen_fd_);
    thread_.join();
  }
  int connections() const { return connections_; }

  // Reads one request's head and Content-Length body.
  static std::string ReadRequest(int fd) {
    std::string data;
    char buffer[4096];
    while (true) {
      const size_t head_end = data.find("\r\n\r\n");
      if (head_end != std::string::npos) {
        const size_t at = data.find("Content-Length: ");
        const size_t length = at == std::string::npos || at > head_end ? 0 : std::stoul(data.substr(at + 16));
        if (data.size() >= head_end + 4 + length) return data;
      }
      const ssize_t n = ::read(fd, buffer, sizeof(buffer));
      if (n <= 0) return data;
      data.append(buffer, static_cast<size_t>(n));
    }
  }
  static void Write(int fd, const std::string& bytes) {
    EXPECT_EQ(::write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
  }

 private:
  std::string path_;
  int listen_fd_ = -1;
  std::thread thread_;
  std::atomic<int> connections_{0};
};

class ClientTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = vecseal::testing::MakeTempDir("vecseal-client"); }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  Result<std::unique_ptr<Client>> ConnectTo(const std::string& path,
                                            std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
    ClientOptions options;
    options.socket_path = path;
    options.timeout = timeout;
    return Client::Connect(options);
  }

  std::string dir_;
};

TEST_F(ClientTest, SocketPathResolution) {
  ::setenv("VECSEAL_SOCKET", "/tmp/from-env.sock", 1);
  EXPECT_EQ(ResolveSocketPath("/x.sock"), "/x.sock");
  EXPECT_EQ(ResolveSocketPath(), "/tmp/from-env.sock");
  ::setenv("VECSEAL_SOCKET", "", 1);
  EXPECT_EQ(ResolveSocketPath(), "/run/vecseal/vecseald.sock");
  ::unsetenv("VECSEAL_SOCKET");
  EXPECT_EQ(ResolveSocketPath(), "/run/vecseal/vecseald.sock");
}

TEST_F(ClientTest, ConnectErrorsSayWhatIsWrong) {
  Result<std::unique_ptr<Client>> missing = ConnectTo(dir_ + "/none.sock");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().reason(), "connect_failed");
  EXPECT_EQ(missing.status().message(), "cannot connect to " + dir_ + "/none.sock: no such file");
  // A socket file nobody listens on any more.
  const std::string stale = dir_ + "/stale.sock";
  { ScriptedServer server(stale, [](int) {}); }
  Result<std::unique_ptr<Client>> refused = ConnectTo(stale);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().message(), "cannot connect to " + stale + ": connection refused");
}

TEST_F(ClientTest, ParsesChunkedResponsesAndDaemonErrors) {
  const std::string path = dir_ + "/s.sock";
  ScriptedServer server(path, [](int fd) {
    ScriptedServer::ReadRequest(fd);
    ScriptedServer::Write(fd,
                          "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                          "5\r\n{\"ide\r\n13;ext=1\r\nntity\": {}, \"grants\r\n6\r\n\": []}\r\n"
                          "0\r\nX-Trailer: 1\r\n\r\n");
    ScriptedServer::ReadRequest(fd);
    const std::string body =
        "{\"error\": {\"code\": \"permission_denied\", "
        "\"message\": \"no rule grants encrypt on key 'x'\"}}";
    ScriptedServer::Write(fd, "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n"
                              "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
  });
  Result<std::unique_ptr<Client>> client = ConnectTo(path);
  ASSERT_TRUE(client.ok());
  Result<std::string> who = (*client)->Whoami();
  ASSERT_TRUE(who.ok()) << who.status().ToString();
  EXPECT_EQ(*who, "{\"identity\": {}, \"grants\": []}");
  const std::vector<float> v(4, 1.0f);
  Result<EncryptResult> denied = (*client)->Encrypt("x", v, 4);
  ASSERT_FALSE(denied.ok());
  EXPECT_EQ(denied.status().code(), Code::kPermissionDenied);
  EXPECT_EQ(denied.status().reason(), "permission_denied");
  EXPECT_EQ(denied.status().message(), "no rule grants encrypt on key 'x'");
  EXPECT_EQ(server.connections(), 1);  // both requests on one keep-alive connection
}

TEST_F(ClientTest, ReconnectsOnceWhenAnIdleConnectionWasClosed) {
  const std::string path = dir_ + "/s.sock";
  ScriptedServer server(path, [](int fd) {
    ScriptedServer::ReadRequest(fd);
    ScriptedServer::Write(fd, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
    // Then close: as a daemon's keep-alive timeout would.
  });
  Result<std::unique_ptr<Client>> client = ConnectTo(path);
  ASSERT_TRUE(client.ok());
  EXPECT_TRUE((*client)->Whoami().ok());
  Result<std::string> second = (*client)->Whoami();
  EXPECT_TRUE(second.ok()) << second.status().ToString();
  EXPECT_EQ(server.connections(), 2);
}

TEST_F(ClientTest, MalformedResponsesAreErrorsNotCrashes) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"SMTP 220 hello\r\n\r\n", "unexpected answer from vecseald: a malformed status line"},
      {"HTTP/1.1 2x0 OK\r\n\r\n", "unexpected answer from vecseald: a malformed status code"},
      {"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
       "unexpected answer from vecseald: a malformed Content-Length"},
      {"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
       "unexpected answer from vecseald: a malformed Content-Length"},
      {"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
       "unexpected answer from vecseald: Transfer-Encoding 'gzip'"},
      {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
       "unexpected answer from vecseald: a malformed chunk size"},
      {"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
       "lost the connection to PATH: the daemon closed the connection mid-response"},
      {"HTTP/1.1 200 OK\r\nnot a header\r\n\r\n", "unexpected answer from vecseald: a malformed header"},
      {"HTTP/1.1 200 OK\r\n" + std::string(70000, 'x'),
       "unexpected answer from vecseald: headers over 64 KiB"},
      {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nnope!",
       "unexpected answer from vecseald: a body that is not JSON"},
  };
  for (const auto& [response, message] : cases) {
    SCOPED_TRACE(response.substr(0, 40));
    const std::string path = dir_ + "/bad.sock";
    std::filesystem::remove(path);
    ScriptedServer server(path, [response = response](int fd) {
      ScriptedServer::ReadRequest(fd);
      ScriptedServer::Write(fd, response);
    });
    Result<std::unique_ptr<Client>> client = ConnectTo(path);
    ASSERT_TRUE(client.ok());
    Result<std::vector<KeyInfo>> keys = (*client)->ListKeys();
    ASSERT_FALSE(keys.ok());
    std::string expected = message;
    if (const size_t at = expected.find("PATH"); at != std::string::npos) expected.replace(at, 4, path);
    EXPECT_EQ(keys.status().message(), expected);
  }
}

TEST_F(ClientTest, SilentDaemonTimesOut) {
  const std::string path = dir_ + "/s.sock";
  ScriptedServer server(path, [](int fd) {
    ScriptedServer::ReadRequest(fd);
    char byte;
    (void)!::read(fd, &byte, 1);  // hold the connection until the client gives up
  });
  Result<std::unique_ptr<Client>> client = ConnectTo(path, std::chrono::milliseconds(200));
  ASSERT_TRUE(client.ok());
  Result<HttpResponse> health = (*client)->Health();
  ASSERT_FALSE(health.ok());
  EXPECT_EQ(health.status().reason(), "daemon_timeout");
}

TEST_F(ClientTest, RefusesBadKeyNamesLocally) {
  Result<std::unique_ptr<Client>> client = ConnectTo(dir_ + "/none.sock");
  ASSERT_FALSE(client.ok());
  // Path injection never reaches the wire: names are checked before any request.
  const std::string path = dir_ + "/s.sock";
  ScriptedServer server(path, [](int) {});
  client = ConnectTo(path);
  ASSERT_TRUE(client.ok());
  for (const char* name : {"", "../keys", "a/b", "A", "-x", "x?y", "k k"}) {
    Result<KeyInfo> rotated = (*client)->RotateKey(name);
    ASSERT_FALSE(rotated.ok());
    EXPECT_EQ(rotated.status().reason(), "invalid_key_name") << name;
  }
}

// Against the real daemon.

class ClientDaemonTest : public ClientTest {
 protected:
  void SetUp() override {
    ClientTest::SetUp();
    if (DevDaemon::instance() == nullptr || !DevDaemon::instance()->unavailable().empty()) return;
    socket_ = DevDaemon::instance()->socket();
  }
  std::string socket_;
};

std::vector<float> Vectors(size_t n, size_t d) {
  std::vector<float> v(n * d);
  for (size_t i = 0; i < v.size(); ++i) v[i] = std::cos(0.11f * static_cast<float>(i));
  return v;
}

TEST_F(ClientDaemonTest, BinaryAndJsonRoundTrip) {
  VECSEAL_REQUIRE_DAEMON();
  for (Wire wire : {Wire::kBinary, Wire::kJson}) {
    SCOPED_TRACE(wire == Wire::kBinary ? "binary" : "json");
    ClientOptions options;
    options.socket_path = socket_;
    options.wire = wire;
    Result<std::unique_ptr<Client>> client = Client::Connect(options);
    ASSERT_TRUE(client.ok()) << client.status().ToString();
    const std::string key = wire == Wire::kBinary ? "bin-key" : "json-key";
    Result<KeyInfo> created = (*client)->CreateKey({key, 1.0, "permute", std::nullopt, ""});
    ASSERT_TRUE(created.ok()) << created.status().ToString();
    EXPECT_EQ(created->name, key);
    EXPECT_EQ(created->version, 1u);
    EXPECT_EQ(created->transform, "permute");

    const std::vector<float> plain = Vectors(33, 24);
    Result<EncryptResult> sealed = (*client)->Encrypt(key, plain, 24, /*reversible=*/true);
    ASSERT_TRUE(sealed.ok()) << sealed.status().ToString();
    EXPECT_EQ(sealed->key_version, 1u);
    EXPECT_EQ(sealed->vectors.size(), plain.size());
    EXPECT_EQ(sealed->tokens.size(), 33u * kTokenSize);
    EXPECT_NE(sealed->vectors, plain);
    Result<DecryptResult> opened = (*client)->Decrypt(key, sealed->vectors, 24, sealed->tokens);
    ASSERT_TRUE(opened.ok()) << opened.status().ToString();
    for (size_t i = 0; i < plain.size(); ++i) ASSERT_NEAR(opened->vectors[i], plain[i], 1e-3) << i;

    // One-way mode returns no tokens, and every call draws fresh noise.
    Result<EncryptResult> once = (*client)->Encrypt(key, plain, 24);
    Result<EncryptResult> twice = (*client)->Encrypt(key, plain, 24);
    ASSERT_TRUE(once.ok() && twice.ok());
    EXPECT_TRUE(once->tokens.empty());
    EXPECT_NE(once->vectors, twice->vectors);
  }
}

// EncryptInto writes where it is told, in place included, and leaves the buffers alone on error.
TEST_F(ClientDaemonTest, EncryptIntoWritesTheCallersBuffers) {
  VECSEAL_REQUIRE_DAEMON();
  Result<std::unique_ptr<Client>> client = ConnectTo(socket_);
  ASSERT_TRUE(client.ok());
  ASSERT_TRUE((*client)->CreateKey({"into-key", 1.0, "permute", std::nullopt, ""}).ok());
  const std::vector<float> plain = Vectors(7, 16);

  std::vector<float> sealed(plain.size(), 0.0f);
  std::vector<uint8_t> tokens(7 * kTokenSize, 0);
  Result<uint32_t> version = (*client)->EncryptInto("into-key", plain, 16, sealed, tokens);
  ASSERT_TRUE(version.ok()) << version.status().ToString();
  EXPECT_EQ(*version, 1u);
  EXPECT_NE(sealed, plain);
  Result<DecryptResult> opened = (*client)->Decrypt("into-key", sealed, 16, tokens);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  for (size_t i = 0; i < plain.size(); ++i) ASSERT_NEAR(opened->vectors[i], plain[i], 1e-3) << i;

  std::vector<float> in_place = plain;
  ASSERT_TRUE((*client)->EncryptInto("into-key", in_place, 16, in_place).ok());
  EXPECT_NE(in_place, plain);

  std::vector<float> untouched(plain.size(), 7.0f);
  Result<uint32_t> missing = (*client)->EncryptInto("absent", plain, 16, untouched);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().reason(), "key_not_found");
  EXPECT_EQ(untouched, std::vector<float>(plain.size(), 7.0f)) << "an error body was written";

  std::vector<float> too_small(plain.size() - 1);
  Result<uint32_t> wrong = (*client)->EncryptInto("into-key", plain, 16, too_small);
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.status().reason(), "invalid_length");
}

// After a rotation, a caller names the version its model was trained with, on either wire.
TEST_F(ClientDaemonTest, EncryptUnderAnOlderKeyVersion) {
  VECSEAL_REQUIRE_DAEMON();
  for (Wire wire : {Wire::kBinary, Wire::kJson}) {
    SCOPED_TRACE(wire == Wire::kBinary ? "binary" : "json");
    ClientOptions options;
    options.socket_path = socket_;
    options.wire = wire;
    Result<std::unique_ptr<Client>> client = Client::Connect(options);
    ASSERT_TRUE(client.ok()) << client.status().ToString();
    const std::string key = wire == Wire::kBinary ? "pinned-bin" : "pinned-json";
    ASSERT_TRUE((*client)->CreateKey({key, 1.0, "permute", std::nullopt, ""}).ok());
    ASSERT_TRUE((*client)->RotateKey(key).ok());
    const std::vector<float> plain = Vectors(3, 8);

    Result<EncryptResult> newest = (*client)->Encrypt(key, plain, 8);
    ASSERT_TRUE(newest.ok()) << newest.status().ToString();
    EXPECT_EQ(newest->key_version, 2u);
    Result<EncryptResult> older = (*client)->Encrypt(key, plain, 8, /*reversible=*/true, 1);
    ASSERT_TRUE(older.ok()) << older.status().ToString();
    EXPECT_EQ(older->key_version, 1u);
    // The token names version 1, and decrypting with it gives the plaintext back.
    Result<DecryptResult> opened = (*client)->Decrypt(key, older->vectors, 8, older->tokens);
    ASSERT_TRUE(opened.ok()) << opened.status().ToString();
    EXPECT_EQ(opened->key_version, 1u);
    for (size_t i = 0; i < plain.size(); ++i) ASSERT_NEAR(opened->vectors[i], plain[i], 1e-3);

    std::vector<float> out(plain.size());
    Result<uint32_t> into = (*client)->EncryptInto(key, plain, 8, out, {}, 1);
    ASSERT_TRUE(into.ok()) << into.status().ToString();
    EXPECT_EQ(*into, 1u);
    Result<EncryptResult> missing = (*client)->Encrypt(key, plain, 8, false, 9);
    ASSERT_FALSE(missing.ok());
    EXPECT_EQ(missing.status().reason(), "key_not_found");
  }
}

TEST_F(ClientDaemonTest, LifecycleRewrapRetireAndDelete) {
  VECSEAL_REQUIRE_DAEMON();
  Result<std::unique_ptr<Client>> client = ConnectTo(socket_);
  ASSERT_TRUE(client.ok());
  const std::string key = "lifecycle";
  ASSERT_TRUE((*client)->CreateKey({key, 2.0, "rotate", 8, ""}).ok());
  const std::vector<float> plain = Vectors(3, 8);
  Result<EncryptResult> sealed = (*client)->Encrypt(key, plain, 8, /*reversible=*/true);
  ASSERT_TRUE(sealed.ok()) << sealed.status().ToString();
  ASSERT_TRUE((*client)->RotateKey(key).ok());

  Result<EncryptResult> moved = (*client)->Rewrap(key, sealed->vectors, 8, sealed->tokens);
  ASSERT_TRUE(moved.ok()) << moved.status().ToString();
  EXPECT_EQ(moved->key_version, 2u);
  ASSERT_EQ(moved->tokens.size(), sealed->tokens.size());
  Result<DecryptResult> opened = (*client)->Decrypt(key, moved->vectors, 8, moved->tokens);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  EXPECT_EQ(opened->key_version, 2u);
  for (size_t i = 0; i < plain.size(); ++i) ASSERT_NEAR(opened->vectors[i], plain[i], 1e-3);

  Result<KeyInfo> retired = (*client)->ConfigureKey(key, 2, std::nullopt);
  ASSERT_TRUE(retired.ok()) << retired.status().ToString();
  EXPECT_EQ(retired->states, (std::vector<std::string>{"decrypt_only", "active"}));
  EXPECT_EQ(retired->min_encryption_version, 2u);
  Result<KeyInfo> shown = (*client)->GetKey(key);
  ASSERT_TRUE(shown.ok()) << shown.status().ToString();
  EXPECT_EQ(shown->min_decryption_version, 1u);
  Result<EncryptResult> old_version = (*client)->Encrypt(key, plain, 8, false, 1);
  EXPECT_EQ(old_version.status().reason(), "key_version_retired");

  Result<std::vector<uint32_t>> deleted = (*client)->DeleteKey(key);
  ASSERT_TRUE(deleted.ok()) << deleted.status().ToString();
  EXPECT_EQ(*deleted, (std::vector<uint32_t>{1, 2}));
  EXPECT_EQ((*client)->GetKey(key).status().reason(), "key_not_found");
}

TEST_F(ClientDaemonTest, DaemonErrorsBecomeStatuses) {
  VECSEAL_REQUIRE_DAEMON();
  Result<std::unique_ptr<Client>> client = ConnectTo(socket_);
  ASSERT_TRUE(client.ok());
  Result<EncryptResult> missing = (*client)->Encrypt("absent", Vectors(1, 4), 4);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), Code::kNotFound);
  EXPECT_EQ(missing.status().reason(), "key_not_found");

  ASSERT_TRUE((*client)->CreateKey({"nan-key", 1.0, "permute", std::nullopt, ""}).ok());
  std::vector<float> bad = Vectors(5, 4);
  bad[3 * 4 + 1] = INFINITY;
  Result<EncryptResult> nonfinite = (*client)->Encrypt("nan-key", bad, 4);
  ASSERT_FALSE(nonfinite.ok());
  EXPECT_EQ(nonfinite.status().reason(), "non_finite_value");
  EXPECT_EQ(nonfinite.status().vector_index(), 3u);

  Result<KeyInfo> again = (*client)->CreateKey({"nan-key", 1.0, "permute", std::nullopt, ""});
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().reason(), "key_exists");

  Result<KeyInfo> rotated = (*client)->RotateKey("nan-key");
  ASSERT_TRUE(rotated.ok()) << rotated.status().ToString();
  EXPECT_EQ(rotated->version, 2u);
  Result<std::vector<KeyInfo>> keys = (*client)->ListKeys();
  ASSERT_TRUE(keys.ok());
  bool found = false;
  for (const KeyInfo& k : *keys) {
    if (k.name == "nan-key") {
      found = true;
      EXPECT_EQ(k.versions, (std::vector<uint32_t>{1, 2}));
    }
  }
  EXPECT_TRUE(found);
  Result<HttpResponse> health = (*client)->Health();
  ASSERT_TRUE(health.ok());
  EXPECT_EQ(health->status, 200);
  EXPECT_THAT(health->body, HasSubstr("\"status\""));
}

}  // namespace
}  // namespace vecseal::client
