// End to end: a real `vecseald --dev` process (real SoftHSM2 token, real audit log, real policy)
// driven over its real Unix socket, for what only a process shows: the HSM, signals (reload and
// drain), the kernel's word on the caller, the process's limits. Routes, policy and limits are
// tested in process (service_*_test.cc).
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "support/dev_daemon.h"
#include "support/vectors.h"

namespace vecseal::daemon::testing {
namespace {

using nlohmann::json;

std::unique_ptr<DevDaemon> StartOrFail(const std::string& overlay = "") {
  std::string error;
  auto daemon = DevDaemon::Start(DevDaemonOptions{.overlay_json = overlay}, &error);
  EXPECT_NE(daemon, nullptr) << error;
  return daemon;
}

// Waits for the daemon to log `text` (a reload is asynchronous to the signal that asks for it).
bool WaitForLog(const DevDaemon& daemon, const std::string& text, size_t occurrences = 1) {
  for (int i = 0; i < 6000; ++i) {
    const std::string log = daemon.Log();
    size_t count = 0;
    for (size_t at = log.find(text); at != std::string::npos; at = log.find(text, at + 1)) ++count;
    if (count >= occurrences) return true;
    usleep(10'000);
  }
  return false;
}

class DaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    daemon_ = StartOrFail(R"({"limits": {"max_body_bytes": 1048576, "max_vectors": 64}})");
    ASSERT_NE(daemon_, nullptr);
    client_ = std::make_unique<HttpClient>(daemon_->socket_path());
  }

  std::unique_ptr<DevDaemon> daemon_;
  std::unique_ptr<HttpClient> client_;
};

HttpResult Delete(HttpClient& client, const std::string& target) {
  return client.Send(HttpCall{.method = "DELETE", .target = target, .body = "",
                              .content_type = {}, .headers = {}});
}

// A pooled session keeps a key version's AES operation open between requests: after a deletion,
// a new key of the same name must not be served by the old key's operation.
TEST_F(DaemonTest, AKeyDeletedAndCreatedAgainIsANewKey) {
  const json create = {{"name", "reborn"}, {"approximation_factor", 2.0}, {"dimension", 3}};
  ASSERT_EQ(client_->PostJson("/v1/keys", create).status, 201u);
  const json plain = {{0.6, 0.8, 0.0}};
  auto before = client_->PostJson("/v1/keys/reborn/encrypt",
                                  {{"vectors", plain}, {"reversible", true}});
  ASSERT_EQ(before.status, 200u) << before.body;
  ASSERT_EQ(Delete(*client_, "/v1/keys/reborn").status, 200u);
  EXPECT_EQ(client_->PostJson("/v1/keys/reborn/encrypt", {{"vectors", plain}}).ErrorCode(),
            "key_not_found");
  ASSERT_EQ(client_->PostJson("/v1/keys", create).status, 201u);
  auto after = client_->PostJson("/v1/keys/reborn/encrypt",
                                 {{"vectors", plain}, {"reversible", true}});
  ASSERT_EQ(after.status, 200u) << after.body;
  auto old_tokens = client_->PostJson(
      "/v1/keys/reborn/decrypt",
      {{"vectors", before.Json()["vectors"]}, {"tokens", before.Json()["tokens"]}});
  EXPECT_EQ(old_tokens.status, 400u) << old_tokens.body;
  EXPECT_EQ(old_tokens.ErrorCode(), "token_authentication_failed");
  auto new_tokens = client_->PostJson(
      "/v1/keys/reborn/decrypt",
      {{"vectors", after.Json()["vectors"]}, {"tokens", after.Json()["tokens"]}});
  EXPECT_EQ(new_tokens.status, 200u) << new_tokens.body;
}

// vecseal_hsm_calls_total{function="NAME"}, read from /metrics.
uint64_t HsmCalls(HttpClient& client, const std::string& function) {
  const std::string text = client.Get("/metrics").body;
  const std::string prefix = "vecseal_hsm_calls_total{function=\"" + function + "\"} ";
  const size_t at = text.find(prefix);
  if (at == std::string::npos) {
    ADD_FAILURE() << "no " << prefix << "in /metrics";
    return 0;
  }
  return std::stoull(text.substr(at + prefix.size()));
}

// Issue #16's contract: a format 2 key derives every vector's own seed, and a request of any
// size costs one call to the HSM, one C_EncryptUpdate of the operation the pooled session keeps
// open (one per 1024 vectors above that). No seal runs meanwhile: a seal is another operation on
// the session and would cost the next request a C_EncryptInit.
TEST(DaemonHsmCallsTest, EachRequestIsOneDerivationWhateverItsSize) {
  auto daemon = StartOrFail(
      R"({"limits": {"max_body_bytes": 67108864, "max_vectors": 10000},
          "audit": {"seal_every_seconds": 86400, "seal_every_records": 1000000}})");
  ASSERT_NE(daemon, nullptr);
  HttpClient client(daemon->socket_path());
  auto created = client.PostJson(
      "/v1/keys", {{"name", "counted"}, {"approximation_factor", 1.0}, {"transform", "permute"}});
  ASSERT_EQ(created.status, 201u) << created.body;
  EXPECT_EQ(created.Json()["format"], 2);
  EXPECT_EQ(created.Json()["derivation"], "aes");
  const size_t d = 8;
  // The first request also derives T and the token key, and looks the key up in the pooled
  // session.
  ASSERT_EQ(client.PostJson("/v1/keys/counted/encrypt",
                            {{"vectors", Rows(RandomVectors(1, d, 1), d)}, {"reversible", true}})
                .status,
            200u);
  const char* kFunctions[] = {"C_EncryptInit", "C_Encrypt",   "C_EncryptUpdate",
                              "C_EncryptFinal", "C_SignInit", "C_FindObjectsInit"};
  for (size_t n : {size_t{1}, size_t{100}, size_t{4000}}) {
    std::map<std::string, uint64_t> before;
    for (const char* function : kFunctions) before[function] = HsmCalls(client, function);
    const auto plain = RandomVectors(n, d, static_cast<uint32_t>(n));
    std::string body(reinterpret_cast<const char*>(plain.data()), plain.size() * sizeof(float));
    auto sealed = client.PostBinary("/v1/keys/counted/encrypt", body,
                                    {{"Vecseal-Dimension", std::to_string(d)},
                                     {"Vecseal-Reversible", "true"}});
    ASSERT_EQ(sealed.status, 200u) << sealed.body;
    auto opened = client.PostBinary("/v1/keys/counted/decrypt", sealed.body,
                                    {{"Vecseal-Dimension", std::to_string(d)}});
    ASSERT_EQ(opened.status, 200u) << opened.body;
    std::vector<float> back(plain.size());
    ASSERT_EQ(opened.body.size(), back.size() * sizeof(float));
    std::memcpy(back.data(), opened.body.data(), opened.body.size());
    EXPECT_LT(MaxAbsDifference(back, plain), kDecryptTolerance);
    std::map<std::string, uint64_t> spent;
    for (const char* function : kFunctions) spent[function] = HsmCalls(client, function) - before[function];
    // Per request (an encrypt, then a decrypt): one update per 1024 vectors, nothing else.
    const uint64_t parts = (n + 1023) / 1024;
    EXPECT_EQ(spent["C_EncryptUpdate"], 2 * parts) << n << " vectors";
    EXPECT_EQ(spent["C_EncryptInit"], 0u) << n << ": the operation stays open";
    EXPECT_EQ(spent["C_Encrypt"], 0u) << n;
    EXPECT_EQ(spent["C_EncryptFinal"], 0u) << n;
    EXPECT_EQ(spent["C_SignInit"], 0u) << n << ": no HMAC for a format 2 key";
    EXPECT_EQ(spent["C_FindObjectsInit"], 0u) << n << ": the key handle is reused";
  }
}

// /v1/whoami names the caller as the kernel does: the in-process tests give their identity, this
// one takes it from a real peer on a real socket.
TEST_F(DaemonTest, WhoAmINamesTheCallerAsTheKernelDoes) {
  auto whoami = client_->Get("/v1/whoami");
  ASSERT_EQ(whoami.status, 200u);
  EXPECT_EQ(whoami.Json()["identity"]["pid"], getpid());
  EXPECT_EQ(whoami.Json()["identity"]["uid"], geteuid());
  EXPECT_EQ(whoami.Json()["grants"].size(), 1u);
}

TEST_F(DaemonTest, SighupWithABrokenPolicyKeepsServingThenAValidOneApplies) {
  const std::string policy_path = daemon_->state_dir() + "/policy.json";
  { std::ofstream(policy_path, std::ios::trunc) << R"({"version": 1, "rules": [)"; }
  daemon_->Signal(SIGHUP);
  ASSERT_TRUE(WaitForLog(*daemon_, "event=reload_failed reason=policy_invalid")) << daemon_->Log();
  EXPECT_EQ(client_->PostJson("/v1/keys/demo/encrypt", {{"vectors", {{1, 2}}}}).status, 200u);

  { std::ofstream(policy_path, std::ios::trunc) << R"({"version": 1, "rules": []})"; }
  daemon_->Signal(SIGHUP);
  ASSERT_TRUE(WaitForLog(*daemon_, "event=reloaded")) << daemon_->Log();
  auto denied = client_->PostJson("/v1/keys/demo/encrypt", {{"vectors", {{1, 2}}}});
  EXPECT_EQ(denied.status, 403u);
  EXPECT_EQ(denied.ErrorCode(), "permission_denied");
  EXPECT_EQ(denied.Json()["error"]["message"], "no rule grants encrypt on key 'demo'");

  bool failed_reload_audited = false;
  for (const auto& record : daemon_->AuditRecords()) {
    if (record.value("event", "") == "reload" &&
        record.value("error_code", "") == "policy_invalid") {
      failed_reload_audited = true;
    }
  }
  EXPECT_TRUE(failed_reload_audited);
}

TEST_F(DaemonTest, SighupWithABrokenConfigKeepsTheOldOne) {
  // This daemon has an overlay config; break it.
  { std::ofstream(daemon_->overlay_path(), std::ios::trunc) << R"({"limits": {"max_vector": 1}})"; }
  daemon_->Signal(SIGHUP);
  ASSERT_TRUE(WaitForLog(*daemon_, "event=reload_failed reason=invalid_config")) << daemon_->Log();
  EXPECT_NE(daemon_->Log().find("$.limits.max_vector: unknown key"), std::string::npos);
  // The old max_vectors (64) still holds, not the broken file's 1.
  auto result = client_->PostJson("/v1/keys/demo/encrypt", {{"vectors", {{1}, {2}, {3}}}});
  EXPECT_EQ(result.status, 200u) << result.body;

  { std::ofstream(daemon_->overlay_path(), std::ios::trunc) << R"({"limits": {"max_vectors": 2}})"; }
  daemon_->Signal(SIGHUP);
  ASSERT_TRUE(WaitForLog(*daemon_, "event=reloaded")) << daemon_->Log();
  result = client_->PostJson("/v1/keys/demo/encrypt", {{"vectors", {{1}, {2}, {3}}}});
  EXPECT_EQ(result.status, 413u);
  EXPECT_EQ(result.ErrorCode(), "too_many_vectors");
}

// A request whose body is still arriving when SIGTERM comes is answered before the daemon exits.
TEST_F(DaemonTest, SigtermFinishesTheRequestInFlightThenExitsZero) {
  const int fd = ConnectUnix(daemon_->socket_path());
  ASSERT_GE(fd, 0);
  const std::string body = R"({"vectors": [[1, 2, 3]]})";
  const std::string head = "POST /v1/keys/demo/encrypt HTTP/1.1\r\nHost: localhost\r\n"
                           "Content-Type: application/json\r\nContent-Length: " +
                           std::to_string(body.size()) + "\r\n\r\n";
  // A first complete request proves the daemon accepted this connection.
  const std::string whole = head + body;
  ASSERT_EQ(write(fd, whole.data(), whole.size()), static_cast<ssize_t>(whole.size()));
  std::string answered;
  while (answered.find("}\n") == std::string::npos) {
    char buffer[4096];
    const ssize_t n = read(fd, buffer, sizeof(buffer));
    ASSERT_GT(n, 0);
    answered.append(buffer, static_cast<size_t>(n));
  }
  ASSERT_EQ(StatusOf(answered), 200u) << answered;
  // Headers and half the body of a second one: it is in flight when the signal arrives.
  const std::string first = head + body.substr(0, 5);
  ASSERT_EQ(write(fd, first.data(), first.size()), static_cast<ssize_t>(first.size()));
  daemon_->Signal(SIGTERM);
  ASSERT_TRUE(WaitForLog(*daemon_, "event=stopping")) << daemon_->Log();
  const std::string rest = body.substr(5);
  ASSERT_EQ(write(fd, rest.data(), rest.size()), static_cast<ssize_t>(rest.size()));
  const std::string response = ReadToEof(fd);
  close(fd);
  EXPECT_EQ(StatusOf(response), 200u) << response;
  EXPECT_NE(response.find("Connection: close"), std::string::npos) << response;
  EXPECT_EQ(daemon_->Stop(), 0);
  EXPECT_FALSE(std::filesystem::exists(daemon_->socket_path()));
  const auto records = daemon_->AuditRecords();
  ASSERT_GE(records.size(), 2u);
  EXPECT_EQ(records[records.size() - 2]["event"], "stop");
  EXPECT_EQ(records.back()["event"], "seal");
}

TEST(DaemonAuditTest, AuditFailureFailsClosedEndToEnd) {
  if (access("/dev/full", W_OK) != 0) GTEST_SKIP() << "/dev/full is not writable here";
  auto daemon = StartOrFail(
      R"({"audit": {"single_file": "/dev/full", "refuse_free_bytes": 0, "warn_free_bytes": 0,
                    "try_append_only": false}})");
  ASSERT_NE(daemon, nullptr);
  HttpClient client(daemon->socket_path());
  auto encrypted = client.PostJson("/v1/keys/demo/encrypt", {{"vectors", {{1, 2, 3}}}});
  EXPECT_EQ(encrypted.status, 503u);
  EXPECT_EQ(encrypted.ErrorCode(), "audit_unavailable");
  EXPECT_EQ(encrypted.body.find("\"vectors\""), std::string::npos) << "no vectors without a record";
  // Nothing irreversible is started while the log is known to be failing.
  auto deleted = Delete(client, "/v1/keys/demo");
  EXPECT_EQ(deleted.status, 503u);
  EXPECT_EQ(deleted.ErrorCode(), "audit_unavailable");
  EXPECT_EQ(daemon->Log().find("event=key_deleted"), std::string::npos) << daemon->Log();
  auto health = client.Get("/v1/health");
  EXPECT_EQ(health.status, 503u);
  EXPECT_EQ(health.Json()["audit"], "unavailable");
  EXPECT_EQ(health.Json()["status"], "unavailable");
}

// systemd's default soft RLIMIT_NOFILE (1024) is too low for 256 connections of five
// descriptors each: the daemon raises its soft limit up to the hard one, or refuses to start
// naming the setting.
TEST(DaemonFileLimitTest, RaisesTheSoftLimitOrRefusesToStart) {
  rlimit saved{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &saved), 0);
  if (saved.rlim_max < 2048) GTEST_SKIP() << "the hard RLIMIT_NOFILE here is below 2048";
  rlimit soft = saved;
  soft.rlim_cur = 1024;
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &soft), 0);  // inherited by the daemon
  auto daemon = StartOrFail("");
  ASSERT_NE(daemon, nullptr);
  std::ifstream limits("/proc/" + std::to_string(daemon->pid()) + "/limits");
  uint64_t daemon_soft = 0;
  for (std::string line; std::getline(limits, line);) {
    if (line.starts_with("Max open files")) {
      std::istringstream(line.substr(std::string("Max open files").size())) >> daemon_soft;
    }
  }
  EXPECT_GE(daemon_soft, 256u * 5u + 128u);
  daemon->Stop();

  // A hard limit that cannot hold max_connections: refused at start, with the fix.
  rlimit tight{.rlim_cur = 512, .rlim_max = 512};
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    setrlimit(RLIMIT_NOFILE, &tight);
    std::string error;
    auto refused = DevDaemon::Start({}, &error);
    _exit(refused == nullptr &&
                  error.find("$.limits.max_connections: 256 connections need about 1408 file "
                             "descriptors, but RLIMIT_NOFILE allows 512; raise LimitNOFILE= in "
                             "the unit or lower max_connections") != std::string::npos
              ? 0
              : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  setrlimit(RLIMIT_NOFILE, &saved);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << "the daemon must refuse to start with a message naming $.limits.max_connections";
}

}  // namespace
}  // namespace vecseal::daemon::testing
