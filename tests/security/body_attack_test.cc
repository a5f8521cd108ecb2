// Issue #17's attacks by members of the socket group, as real other uids against a real
// vecseald: 64 MiB nested bodies and stalled half-bodies from callers with no grant (or a grant
// on another key), one uid holding every connection it can, and a granted caller cycling
// through dimensions or new keys to make the daemon derive. The daemon decides before it
// reads a body, so none of these may raise its memory by more than a few MiB, and a granted
// caller is served meanwhile.
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "support/dev_daemon.h"
#include "support/secured_daemon.h"
#include "test_util.h"

namespace vecseal::security_testing {
namespace {

using nlohmann::json;
using policy::testing_util::WriteFile;
using Clock = std::chrono::steady_clock;

// Under AddressSanitizer the daemon's RSS holds the allocator's quarantine and shadow memory, so
// an RSS bound measures the sanitizer, not the daemon (as in tests/reliability); and every call
// runs 2-3 times slower, so the latency target is the production build's, checked by the unit
// stage. The answers and the CPU are checked under both.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kUnderAsan = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kUnderAsan = true;
#else
constexpr bool kUnderAsan = false;
#endif
#else
constexpr bool kUnderAsan = false;
#endif
// A granted caller's single-vector p99 while the attacks run (issue #17's target: 10 ms).
constexpr double kGrantedP99LimitMs = kUnderAsan ? 40.0 : 10.0;

constexpr uid_t kNoGrantUid = 64111;
constexpr uid_t kOtherKeyUid = 64112;  // granted encrypt on "theirs" only
constexpr gid_t kAttackerGid = 64113;
constexpr size_t kBodyBytes = 64u << 20;
constexpr size_t kPerUid = 64;  // the default limits.max_connections_per_uid

// One field of /proc/PID/status in KiB (VmRSS, VmHWM), 0 when missing.
size_t StatusKib(pid_t pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with(field + ":")) return std::stoul(line.substr(field.size() + 1));
  }
  return 0;
}

// Resets the peak RSS (VmHWM) to the current RSS, so that the next read is this test's peak.
bool ResetPeak(pid_t pid) {
  std::ofstream out("/proc/" + std::to_string(pid) + "/clear_refs");
  out << "5";
  out.flush();
  return static_cast<bool>(out);
}

// User plus system CPU time of a process, in clock ticks.
long CpuTicks(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text;
  std::getline(in, text);  // one line
  std::istringstream fields(text.substr(text.rfind(')') + 2));
  std::string field;
  long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && fields >> field; ++i) {
    if (i == 14) utime = std::stol(field);
    if (i == 15) stime = std::stol(field);
  }
  return utime + stime;
}

int Connect(const std::string& path) {
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, path.c_str(), sizeof(address.sun_path) - 1);
  if (connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

bool Readable(int fd, int timeout_ms) {
  pollfd p{.fd = fd, .events = POLLIN, .revents = 0};
  return poll(&p, 1, timeout_ms) > 0;
}

// Reads what the daemon answered, until it closes or 10 s pass.
std::string ReadAnswer(int fd) {
  std::string answer;
  char buffer[4096];
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (Clock::now() < deadline && Readable(fd, 100)) {
    const ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
    if (n <= 0) break;
    answer.append(buffer, static_cast<size_t>(n));
  }
  return answer;
}

std::string Head(const std::string& target, size_t length) {
  return "POST " + target + " HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
         "Content-Length: " + std::to_string(length) + "\r\n\r\n";
}

// Sends the head, then up to `body_bytes` of '[' in 64 KiB pieces, stopping as soon as the
// daemon answers or stops taking bytes; returns how many body bytes went.
size_t SendNested(int fd, const std::string& head, size_t body_bytes) {
  if (send(fd, head.data(), head.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(head.size())) {
    return 0;
  }
  const std::string piece(64 << 10, '[');
  size_t sent = 0;
  while (sent < body_bytes && !Readable(fd, 0)) {
    const ssize_t n = send(fd, piece.data(), std::min(piece.size(), body_bytes - sent),
                           MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      sent += static_cast<size_t>(n);
    } else if (n < 0 && errno == EAGAIN) {
      pollfd p{.fd = fd, .events = POLLIN | POLLOUT, .revents = 0};
      if (poll(&p, 1, 5000) <= 0) break;
    } else {
      break;
    }
  }
  return sent;
}

// "STATUS CODE" of a raw answer, e.g. "403 permission_denied"; "0 " when there is none.
std::string Outcome(const std::string& raw) {
  const unsigned status = daemon::testing::StatusOf(raw);
  const size_t body = raw.find("\r\n\r\n");
  std::string code;
  if (body != std::string::npos) {
    const auto parsed = json::parse(raw.substr(body + 4), nullptr, false);
    if (parsed.is_object() && parsed.contains("error")) code = parsed["error"].value("code", "");
  }
  return std::to_string(status) + " " + code;
}

// "STATUS CODE" of an HttpResult, as Outcome gives it for a raw answer.
std::string OutcomeOf(const daemon::testing::HttpResult& result) {
  const auto parsed = json::parse(result.body, nullptr, false);
  std::string code;
  if (parsed.is_object() && parsed.contains("error")) code = parsed["error"].value("code", "");
  return std::to_string(result.status) + " " + code;
}

// A child process running as another uid (in the socket's group), which reports lines over a
// pipe and stays alive, holding whatever it opened, until Finish.
class Attacker {
 public:
  Attacker(uid_t uid, gid_t socket_gid, std::function<void(int report)> attack) {
    int report[2], release[2];
    if (pipe2(report, O_CLOEXEC) != 0 || pipe2(release, O_CLOEXEC) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      // Only this child's own pipe ends stay open: a copy of another Attacker's release pipe
      // held here would keep that one from ever finishing.
      const auto [low, high] = std::minmax(report[1], release[0]);
      close_range(3, low - 1, 0);
      close_range(low + 1, high - 1, 0);
      close_range(high + 1, ~0u, 0);
      const gid_t groups[] = {socket_gid};
      if (setgroups(1, groups) != 0 || setgid(kAttackerGid) != 0 || setuid(uid) != 0) _exit(124);
      attack(report[1]);
      if (write(report[1], "done\n", 5) != 5) _exit(1);
      char byte;
      [[maybe_unused]] const ssize_t ignored = read(release[0], &byte, 1);
      _exit(0);
    }
    close(report[1]);
    close(release[0]);
    report_ = report[0];
    release_ = release[1];
  }
  ~Attacker() { Finish(); }

  // The lines reported up to "done" (without it); empty when the child failed.
  std::vector<std::string> WaitDone() {
    std::vector<std::string> lines;
    std::string text;
    char buffer[4096];
    ssize_t n;
    while (text.find("done\n") == std::string::npos &&
           (n = read(report_, buffer, sizeof(buffer))) > 0) {
      text.append(buffer, static_cast<size_t>(n));
    }
    std::istringstream in(text);
    for (std::string line; std::getline(in, line) && line != "done";) lines.push_back(line);
    return lines;
  }

  // Lets the child exit, closing everything it holds.
  void Finish() {
    if (pid_ <= 0) return;
    close(release_);
    close(report_);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
  }

 private:
  pid_t pid_ = -1;
  int report_ = -1;
  int release_ = -1;
};

void Report(int fd, const std::string& line) {
  const std::string text = line + "\n";
  [[maybe_unused]] const ssize_t n = write(fd, text.data(), text.size());
}

class BodyAttackTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) {
      GTEST_SKIP() << "needs root: the attackers are child processes that setuid to other uids";
    }
    if (auto reason = testing::SoftHsmUnavailableReason(); !reason.empty()) GTEST_SKIP() << reason;
    const group* socket_group = getgrnam("nogroup");
    if (socket_group == nullptr) GTEST_SKIP() << "no group 'nogroup' to own the socket";
    socket_gid_ = socket_group->gr_gid;
    json policy = {
        {"version", 1},
        {"rules",
         {{{"id", "admin"},
           {"callers", {{"uid", 0}}},
           {"keys", {"*"}},
           {"operations", {"keys.create", "keys.list", "encrypt", "decrypt"}}},
          {{"id", "their-key"},
           {"callers", {{"uid", kOtherKeyUid}}},
           {"keys", {"theirs"}},
           {"operations", {"encrypt"}}}}}};
    for (const json& rule : extra_rules_) policy["rules"].push_back(rule);
    std::string error;
    daemon_ = SecuredDaemon::Prepare(
        {.policy_json = policy.dump(2), .socket_group = "nogroup", .limits = limits_}, &error);
    ASSERT_TRUE(daemon_) << error;
    ASSERT_TRUE(daemon_->Start(&error)) << error;
    admin_ = std::make_unique<daemon::testing::HttpClient>(daemon_->socket_path());
    for (const char* name : {"demo", "theirs"}) {
      const auto created =
          admin_->PostJson("/v1/keys", {{"name", name}, {"approximation_factor", 2.5}});
      ASSERT_EQ(created.status, 201u) << created.body;
    }
    ASSERT_EQ(EncryptOne(), 200u);
    baseline_kib_ = StatusKib(daemon_->pid(), "VmRSS");
    ASSERT_TRUE(ResetPeak(daemon_->pid()));
  }

  unsigned EncryptOne() {
    return admin_->PostJson("/v1/keys/demo/encrypt", {{"vectors", {{0.25, -0.5, 0.75}}}}).status;
  }

  // The daemon's peak RSS since SetUp, over its RSS then.
  size_t PeakGrowthKib() const {
    const size_t peak = StatusKib(daemon_->pid(), "VmHWM");
    return peak > baseline_kib_ ? peak - baseline_kib_ : 0;
  }

  // The audit record that denied `operation` to `uid`, if any.
  std::optional<json> DenialOf(uid_t uid, const std::string& operation) const {
    for (const json& record : daemon_->AuditRecords()) {
      if (record.value("event", "") == "deny" && record.value("operation", "") == operation &&
          record.value("caller", json::object()).value("uid", int64_t{-1}) ==
              static_cast<int64_t>(uid)) {
        return record;
      }
    }
    return std::nullopt;
  }

  std::vector<json> extra_rules_;  // appended to the policy's rules by SetUp
  json limits_ = nullptr;          // the config's "limits"; null: the defaults
  gid_t socket_gid_ = 0;
  std::unique_ptr<SecuredDaemon> daemon_;
  std::unique_ptr<daemon::testing::HttpClient> admin_;
  size_t baseline_kib_ = 0;
};

// Attack row 1: 64 MiB of '[' to POST /v1/keys and to encrypt, from a caller with no grant and
// from one with a grant on another key. Each is answered 403 from its headers and audited; the
// body is never parsed or held.
TEST_F(BodyAttackTest, NestedBodyWithoutGrantIsDeniedBeforeItIsRead) {
  struct Row {
    uid_t uid;
    std::string target;
    std::string operation;
  };
  const Row rows[] = {{kNoGrantUid, "/v1/keys", "keys.create"},
                      {kNoGrantUid, "/v1/keys/demo/encrypt", "encrypt"},
                      {kOtherKeyUid, "/v1/keys", "keys.create"},
                      {kOtherKeyUid, "/v1/keys/demo/encrypt", "encrypt"},
                      {kNoGrantUid, "/v1/keys/demo/rewrap", "rewrap"},
                      {kNoGrantUid, "/v1/keys/demo/config", "keys.config"}};
  for (const Row& row : rows) {
    SCOPED_TRACE("uid " + std::to_string(row.uid) + " " + row.target);
    const long cpu_before = CpuTicks(daemon_->pid());
    const auto start = Clock::now();
    Attacker attacker(row.uid, socket_gid_, [&](int report) {
      const int fd = Connect(daemon_->socket_path());
      const size_t sent = SendNested(fd, Head(row.target, kBodyBytes), kBodyBytes);
      Report(report, Outcome(ReadAnswer(fd)));
      Report(report, std::to_string(sent));
    });
    const auto lines = attacker.WaitDone();
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    attacker.Finish();
    ASSERT_EQ(lines.size(), 2u);
    EXPECT_EQ(lines[0], "403 permission_denied");
    const long cpu_ticks = CpuTicks(daemon_->pid()) - cpu_before;
    std::cout << "[ figures  ] " << row.target << " as uid " << row.uid << ": " << lines[0]
              << " after " << lines[1] << " body bytes sent, " << seconds << " s, daemon CPU "
              << cpu_ticks << " ticks, peak RSS +" << PeakGrowthKib() << " KiB\n";
    EXPECT_LT(seconds, 5.0);
    EXPECT_LT(cpu_ticks, sysconf(_SC_CLK_TCK)) << "more than one CPU second";
    const auto record = DenialOf(row.uid, row.operation);
    ASSERT_TRUE(record.has_value()) << "no deny record for " << row.operation;
    EXPECT_EQ((*record)["error_code"], "permission_denied");
  }
  if (!kUnderAsan) {
    EXPECT_LT(PeakGrowthKib(), 8u * 1024) << "the bodies were held or parsed";
  }
  EXPECT_EQ(EncryptOne(), 200u);
  // Refused from their headers, before any key lookup: counted under no key (docs/api.md).
  const std::string metrics = admin_->Get("/metrics").body;
  EXPECT_NE(metrics.find("vecseal_requests_total{key=\"\",operation=\"encrypt\","
                         "outcome=\"permission_denied\"} 2\n"),
            std::string::npos)
      << metrics;
  EXPECT_EQ(metrics.find("key=\"demo\",operation=\"encrypt\",outcome=\"permission_denied\""),
            std::string::npos)
      << metrics;
}

// Attack row 2: many connections each send half of a 64 MiB body and stall, from a caller with
// no grant. They are refused from their headers, so nothing is buffered, and a granted caller's
// single-vector requests stay fast meanwhile.
TEST_F(BodyAttackTest, StalledHalfBodiesWithoutGrantHoldNoMemory) {
  constexpr size_t kConnections = 48;
  Attacker attacker(kNoGrantUid, socket_gid_, [&](int report) {
    std::vector<int> held;
    for (size_t i = 0; i < kConnections; ++i) {
      const int fd = Connect(daemon_->socket_path());
      SendNested(fd, Head("/v1/keys/demo/encrypt", kBodyBytes), kBodyBytes / 2);
      held.push_back(fd);  // stalled: never sends the rest, never closes
    }
    for (int fd : held) Report(report, Outcome(ReadAnswer(fd)));
  });
  // A granted caller, while the stalled connections are opened and answered.
  std::vector<double> latencies_ms;
  const auto until = Clock::now() + std::chrono::seconds(2);
  while (Clock::now() < until) {
    const auto start = Clock::now();
    ASSERT_EQ(EncryptOne(), 200u);
    latencies_ms.push_back(
        std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  }
  const auto lines = attacker.WaitDone();
  ASSERT_EQ(lines.size(), kConnections);
  for (const std::string& line : lines) EXPECT_EQ(line, "403 permission_denied");
  const size_t rss_kib = StatusKib(daemon_->pid(), "VmRSS");
  std::sort(latencies_ms.begin(), latencies_ms.end());
  const double p99 = latencies_ms[latencies_ms.size() * 99 / 100];
  std::cout << "[ figures  ] " << kConnections << " stalled half-bodies: RSS " << baseline_kib_
            << " -> " << rss_kib << " KiB (peak +" << PeakGrowthKib() << " KiB); granted p99 "
            << p99 << " ms over " << latencies_ms.size() << " requests\n";
  if (!kUnderAsan) {
    EXPECT_LT(PeakGrowthKib(), 8u * 1024) << "the half-bodies were buffered";
  }
  EXPECT_LT(p99, kGrantedP99LimitMs);
  attacker.Finish();
}

// Attack row 4: one uid holds its whole share of connections; its next one is answered 503
// too_many_connections_for_user at once, while another uid is still served.
TEST_F(BodyAttackTest, OneUidCannotHoldEveryConnection) {
  Attacker attacker(kNoGrantUid, socket_gid_, [&](int report) {
    std::vector<int> held;
    for (size_t i = 0; i < kPerUid; ++i) held.push_back(Connect(daemon_->socket_path()));
    // One answered request proves the held connections are all counted (accepted in order).
    const std::string health = "GET /v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n";
    [[maybe_unused]] const ssize_t n = send(held.back(), health.data(), health.size(), 0);
    Report(report, std::to_string(daemon::testing::StatusOf(ReadAnswer(held.back()))));
    const int over = Connect(daemon_->socket_path());
    Report(report, Outcome(ReadAnswer(over)));
  });
  const auto lines = attacker.WaitDone();
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[1], "503 too_many_connections_for_user");
  // The attacker still holds its connections; another uid gets new ones.
  for (int i = 0; i < 8; ++i) {
    daemon::testing::HttpClient other(daemon_->socket_path());
    EXPECT_EQ(other.Get("/v1/health").status, 200u);
  }
  EXPECT_EQ(EncryptOne(), 200u);
  attacker.Finish();
}

constexpr uid_t kLargeCallerUid = 64114;  // pinned by digest to the reviewed caller's image
constexpr off_t kLargeCallerBytes = off_t{200} << 20;

// The daemon's /metrics counter `name` (unlabelled), or -1.
int64_t MetricValue(daemon::testing::HttpClient& client, const std::string& name) {
  const std::string text = client.Get("/metrics").body;
  const size_t at = text.find("\n" + name + " ");
  return at == std::string::npos ? -1 : std::stoll(text.substr(at + name.size() + 2));
}

// The same daemon under a policy that also grants a uid by the digest of the reviewed caller,
// so that every peer's executable must be hashed to be judged.
class CombinedAttackTest : public BodyAttackTest {
 protected:
  CombinedAttackTest() {
    extra_rules_.push_back({{"id", "pinned-caller"},
                            {"callers",
                             {{"uid", kLargeCallerUid},
                              {"exe_sha256", policy::testing_util::Sha256OfFile(
                                                 VECSEAL_SECURITY_CALLER)}}},
                            {"keys", {"demo"}},
                            {"operations", {"encrypt"}}});
  }
};

// Issue #17's target, with the three attacks of members that hold no grant running at once for
// a few seconds: one uid sends 64 MiB nested bodies back to back, another holds 48 stalled
// half-bodies, and a third runs a 200 MB sparse copy of the reviewed caller, touched before
// each run so that every connect asks for a new digest. Meanwhile root's single-vector p99 must
// stay under 10 ms, the daemon's RSS within 64 MiB of where it was, and its CPU within one
// second per attacking request. Without the budget of refusals per uid the attackers' own
// loops (some 300 refusals a second, each identified and audited) took the CPU: p99 13-19 ms.
TEST_F(CombinedAttackTest, AllAttacksAtOnceLeaveAGrantedCallerServed) {
  const std::string large = daemon_->root() + "/large-caller";
  WriteFile(large, policy::testing_util::ReadFile(VECSEAL_SECURITY_CALLER), 0755);
  ASSERT_EQ(truncate(large.c_str(), kLargeCallerBytes), 0);
  const int64_t hashed_before = MetricValue(*admin_, "vecseal_digest_files_hashed_total");
  ASSERT_GE(hashed_before, 0);
  constexpr auto kAttack = std::chrono::seconds(4);
  const long cpu_before = CpuTicks(daemon_->pid());
  const auto start = Clock::now();
  const auto until = start + kAttack;

  Attacker nested(kNoGrantUid, socket_gid_, [&](int report) {
    size_t requests = 0;
    for (; Clock::now() < until; ++requests) {
      const int fd = Connect(daemon_->socket_path());
      SendNested(fd, Head("/v1/keys", kBodyBytes), kBodyBytes);
      const std::string outcome = Outcome(ReadAnswer(fd));
      close(fd);
      if (outcome != "403 permission_denied") Report(report, "unexpected " + outcome);
    }
    Report(report, "requests " + std::to_string(requests));
  });
  Attacker stalled(kOtherKeyUid, socket_gid_, [&](int report) {
    std::vector<int> held;
    for (size_t i = 0; i < 48; ++i) {
      const int fd = Connect(daemon_->socket_path());
      SendNested(fd, Head("/v1/keys/demo/encrypt", kBodyBytes), kBodyBytes / 2);
      held.push_back(fd);
    }
    size_t refused = 0;
    for (int fd : held) refused += Outcome(ReadAnswer(fd)) == "403 permission_denied";
    Report(report, "refused " + std::to_string(refused));
  });
  std::vector<unsigned> digest_statuses;
  std::thread digest_attack([&] {
    for (time_t stamp = 1000; Clock::now() < until; ++stamp) {
      const timespec times[2] = {{stamp, 0}, {stamp, 0}};
      if (utimensat(AT_FDCWD, large.c_str(), times, 0) != 0) break;
      const CallerRun run =
          RunAs({.uid = kLargeCallerUid, .gid = kAttackerGid, .groups = {socket_gid_}, .cgroup_dir = {}},
                {large, "request", daemon_->socket_path(), "demo/encrypt"});
      const auto answers = ParseAnswers(run.output);
      digest_statuses.push_back(answers.size() == 1 ? answers[0].status : 0);
    }
  });

  std::vector<double> latencies_ms;
  while (Clock::now() < until) {
    const auto sent = Clock::now();
    ASSERT_EQ(EncryptOne(), 200u);
    latencies_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - sent).count());
  }
  digest_attack.join();
  const auto nested_lines = nested.WaitDone();
  const auto stalled_lines = stalled.WaitDone();
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  const long cpu_ticks = CpuTicks(daemon_->pid()) - cpu_before;
  const size_t peak_growth_kib = PeakGrowthKib();
  nested.Finish();
  stalled.Finish();

  ASSERT_EQ(nested_lines.size(), 1u) << nested_lines.front();
  ASSERT_TRUE(nested_lines[0].starts_with("requests ")) << nested_lines[0];
  const size_t nested_requests = std::stoul(nested_lines[0].substr(9));
  EXPECT_GE(nested_requests, 1u);
  EXPECT_EQ(stalled_lines, std::vector<std::string>{"refused 48"});
  ASSERT_FALSE(digest_statuses.empty());
  for (unsigned status : digest_statuses) EXPECT_EQ(status, 403u) << "its digest is not the pin";
  const int64_t hashed = MetricValue(*admin_, "vecseal_digest_files_hashed_total") - hashed_before;
  const int64_t rate_limited = MetricValue(*admin_, "vecseal_digests_rate_limited_total");

  std::sort(latencies_ms.begin(), latencies_ms.end());
  const double p99 = latencies_ms[latencies_ms.size() * 99 / 100];
  const size_t attacks = nested_requests + 48 + digest_statuses.size();
  std::cout << "[ figures  ] " << seconds << " s: " << nested_requests << " nested 64 MiB bodies, "
            << "48 stalled half-bodies, " << digest_statuses.size() << " runs of a 200 MB caller ("
            << hashed << " files hashed, " << rate_limited << " digests rate-limited); daemon CPU "
            << cpu_ticks << " ticks, peak RSS +" << peak_growth_kib << " KiB; granted p99 " << p99
            << " ms, median " << latencies_ms[latencies_ms.size() / 2] << " ms over "
            << latencies_ms.size() << " requests\n";
  // Under ASan the caller runs, forks and hashes of three attackers take the two cores (some
  // 130 ms p99 there): the target is the production build's.
  if (!kUnderAsan) {
    EXPECT_LT(p99, kGrantedP99LimitMs);
    EXPECT_LE(peak_growth_kib, 64u * 1024) << "over the target of 64 MiB";
  }
  EXPECT_LT(cpu_ticks, static_cast<long>(attacks) * sysconf(_SC_CLK_TCK))
      << "more than one CPU second per attacking request";
  // The uid's hashing budget: a bucket of 512 MiB refilled at 64 MiB/s, at 200 MB per run.
  const double budget_files = (512.0 + 64.0 * seconds) * (1 << 20) / kLargeCallerBytes;
  EXPECT_LE(hashed, static_cast<int64_t>(budget_files) + 1) << "the hashing budget did not hold";
  // Each uid's refusals: a minute's worth (120) at once, then two a second.
  const auto refusals_allowed = static_cast<size_t>(120 + 2 * seconds) + 1;
  EXPECT_LE(nested_requests, refusals_allowed) << "the budget of refusals did not hold";
  EXPECT_LE(digest_statuses.size(), refusals_allowed) << "the budget of refusals did not hold";
  EXPECT_GE(MetricValue(*admin_, "vecseal_delayed_for_denials_total"), 2);
  EXPECT_EQ(EncryptOne(), 200u);
}

// With limits.denied_requests_per_minute_per_uid at 60, a uid without a grant is refused about
// 60 times at once; then each next request, on the same connection and on a new one, waits for
// the budget to refill (about a second), unread and unidentified, and is then refused and
// audited like the others.
class DenialBudgetTest : public BodyAttackTest {
 protected:
  DenialBudgetTest() { limits_ = {{"denied_requests_per_minute_per_uid", 60}}; }
};

TEST_F(DenialBudgetTest, AUidPastItsRefusalsWaitsForEachNext) {
  constexpr size_t kBudget = 60;
  constexpr double kWaited = 0.5;  // seconds; the bucket refills at one a second
  Attacker attacker(kNoGrantUid, socket_gid_, [&](int report) {
    daemon::testing::HttpClient client(daemon_->socket_path());
    const auto start = Clock::now();
    // Answered at once until the budget is spent; stops at the first answer that waited.
    for (size_t i = 0; i < kBudget + 10; ++i) {
      const auto sent = Clock::now();
      Report(report, OutcomeOf(client.Get("/v1/keys")));
      const double seconds = std::chrono::duration<double>(Clock::now() - sent).count();
      if (seconds >= kWaited) {
        Report(report, "waited " + std::to_string(seconds) + " after " + std::to_string(i) +
                           " in " + std::to_string(std::chrono::duration<double>(
                                                       sent - start).count()));
        break;
      }
    }
    const auto sent = Clock::now();
    Report(report, OutcomeOf(daemon::testing::HttpClient(daemon_->socket_path()).Get("/v1/keys")));
    Report(report, std::to_string(std::chrono::duration<double>(Clock::now() - sent).count()));
  });
  const auto lines = attacker.WaitDone();
  attacker.Finish();
  ASSERT_GE(lines.size(), 4u);
  const std::string waited = lines[lines.size() - 3];
  ASSERT_TRUE(waited.starts_with("waited ")) << "no request waited: " << waited;
  std::istringstream figures(waited.substr(7));
  double same_connection_seconds = 0, spent_seconds = 0;
  size_t answered_at_once = 0;
  std::string word;
  figures >> same_connection_seconds >> word >> answered_at_once >> word >> spent_seconds;
  const double new_connection_seconds = std::stod(lines.back());
  std::cout << "[ figures  ] " << answered_at_once << " refusals at once in " << spent_seconds
            << " s; the next waited " << same_connection_seconds
            << " s on the same connection, then " << new_connection_seconds
            << " s on a new one\n";
  // A minute's worth, and what refilled while they were sent.
  EXPECT_GE(answered_at_once, kBudget);
  EXPECT_LE(answered_at_once, kBudget + 1 + static_cast<size_t>(spent_seconds));
  EXPECT_GE(new_connection_seconds, kWaited);
  for (size_t i = 0; i + 3 < lines.size(); ++i) EXPECT_EQ(lines[i], "403 permission_denied") << i;
  EXPECT_EQ(lines[lines.size() - 2], "403 permission_denied");
  EXPECT_EQ(EncryptOne(), 200u) << "root has its own budget";
  size_t audited = 0;
  for (const json& record : daemon_->AuditRecords()) {
    audited += record.value("event", "") == "deny" &&
               record["caller"].value("uid", int64_t{-1}) == static_cast<int64_t>(kNoGrantUid);
  }
  EXPECT_EQ(audited, answered_at_once + 2) << "every refusal is audited, the delayed ones too";
  EXPECT_GE(MetricValue(*admin_, "vecseal_delayed_for_denials_total"), 2);
}

// One unit vector of dimension d: a row the rotate transform takes at any d.
json UnitRow(size_t dimension) {
  std::vector<float> row(dimension, 0.0f);
  row[0] = 1.0f;
  return json::array({row});
}


// Attack row 5: a caller granted only encrypt on a rotate key sends d = 1024, 1023, 1022, ...
// Each new dimension used to cost a derivation of its own (13 s of CPU at d = 4096). The first
// use fixes the key's dimension; every other is refused before anything is derived.
TEST_F(BodyAttackTest, ANewDimensionIsRefusedBeforeAnyDerivation) {
  constexpr size_t kFirst = 1024, kTries = 24;
  long refusals_ticks = -1;
  Attacker attacker(kOtherKeyUid, socket_gid_, [&](int report) {
    daemon::testing::HttpClient client(daemon_->socket_path());
    for (size_t d = kFirst; d > kFirst - kTries; --d) {
      if (d == kFirst - 1) Report(report, "cpu " + std::to_string(CpuTicks(daemon_->pid())));
      Report(report, OutcomeOf(client.PostJson("/v1/keys/theirs/encrypt",
                                               {{"vectors", UnitRow(d)}})));
    }
    Report(report, "cpu " + std::to_string(CpuTicks(daemon_->pid())));
  });
  const auto lines = attacker.WaitDone();
  ASSERT_EQ(lines.size(), kTries + 2);
  EXPECT_EQ(lines[0], "200 ") << "the first use fixes the dimension";
  for (size_t i = 2; i <= kTries; ++i) EXPECT_EQ(lines[i], "400 dimension_mismatch") << i;
  refusals_ticks = std::stol(lines.back().substr(4)) - std::stol(lines[1].substr(4));
  // A rotation's transform at d ~ 1000 takes about 0.1 s here: 23 of them would be seconds.
  EXPECT_LE(refusals_ticks, 20) << "the refused dimensions cost CPU: something was derived";
  attacker.Finish();

  const auto keys = admin_->Get("/v1/keys");
  ASSERT_EQ(keys.status, 200u);
  const json listed = json::parse(keys.body);  // the loop must not outlive a temporary
  for (const json& key : listed["keys"]) {
    if (key["name"] == "theirs") {
      EXPECT_EQ(key["dimension"], kFirst);
    }
  }
  // Decryption is held to it as well, and the fixing request's audit record says so.
  const auto sealed = admin_->PostJson("/v1/keys/theirs/encrypt",
                                       {{"vectors", UnitRow(kFirst)}, {"reversible", true}});
  ASSERT_EQ(sealed.status, 200u) << sealed.body;
  const auto decrypt = admin_->PostJson(
      "/v1/keys/theirs/decrypt",
      {{"vectors", UnitRow(kFirst - 1)}, {"tokens", json::parse(sealed.body)["tokens"]}});
  EXPECT_EQ(OutcomeOf(decrypt), "400 dimension_mismatch");
  std::map<std::string, json> fixed;  // key -> the dimension its fixing record names
  for (const json& record : daemon_->AuditRecords()) {
    if (record.contains("extra") && record["extra"].contains("dimension_fixed")) {
      EXPECT_FALSE(fixed.contains(record["key"])) << "fixed once only";
      fixed[record["key"]] = record["extra"]["dimension_fixed"];
    }
  }
  EXPECT_EQ(fixed, (std::map<std::string, json>{{"demo", 3}, {"theirs", kFirst}}))
      << "demo by SetUp's request, theirs by the attacker's first";
  EXPECT_NE(daemon_->Log().find("event=dimension_fixed key=theirs dimension=1024"),
            std::string::npos);
}

// The derivations a uid can cause (new keys, rotated or old versions) are paid from its own
// budget of derivation time; another uid is not affected.
TEST(DerivationBudgetTest, AUidThatSpentItsDerivationTimeIsRefusedAndOthersAreNot) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root: the caller setuids to another uid";
  if (auto reason = testing::SoftHsmUnavailableReason(); !reason.empty()) GTEST_SKIP() << reason;
  const group* socket_group = getgrnam("nogroup");
  if (socket_group == nullptr) GTEST_SKIP() << "no group 'nogroup' to own the socket";
  const json policy = {
      {"version", 1},
      {"rules",
       {{{"id", "admin"},
         {"callers", {{"uid", 0}}},
         {"keys", {"*"}},
         {"operations", {"keys.create", "encrypt"}}},
        {{"id", "theirs"},
         {"callers", {{"uid", kOtherKeyUid}}},
         {"keys", {"mine-*"}},
         {"operations", {"encrypt"}}}}}};
  std::string error;
  auto daemon = SecuredDaemon::Prepare({.policy_json = policy.dump(2),
                                        .socket_group = "nogroup",
                                        .limits = {{"derivation_ms_per_minute_per_uid", 1}}},
                                       &error);
  ASSERT_TRUE(daemon) << error;
  ASSERT_TRUE(daemon->Start(&error)) << error;
  daemon::testing::HttpClient admin(daemon->socket_path());
  for (const char* name : {"mine-1", "mine-2", "admins"}) {
    const auto created =
        admin.PostJson("/v1/keys", {{"name", name}, {"approximation_factor", 2.5}});
    ASSERT_EQ(created.status, 201u) << created.body;
  }
  constexpr size_t kDimension = 512;  // a rotation's derivation takes milliseconds: over 1 ms
  Attacker attacker(kOtherKeyUid, socket_group->gr_gid, [&](int report) {
    daemon::testing::HttpClient client(daemon->socket_path());
    for (const char* key : {"mine-1", "mine-2", "mine-1"}) {
      const auto result = client.PostJson(std::string("/v1/keys/") + key + "/encrypt",
                                          {{"vectors", UnitRow(kDimension)}});
      Report(report, OutcomeOf(result));
      if (result.status == 429) Report(report, json::parse(result.body)["error"]["message"]);
    }
  });
  const auto lines = attacker.WaitDone();
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(lines[0], "200 ") << "the budget starts with its minute's worth";
  EXPECT_EQ(lines[1], "429 derivation_rate_limited");
  EXPECT_EQ(lines[2].find("uid " + std::to_string(kOtherKeyUid) +
                          " has spent its derivation time (1 ms per minute, "
                          "limits.derivation_ms_per_minute_per_uid) on new keys or key versions; "
                          "retry in "),
            0u)
      << lines[2];
  EXPECT_EQ(lines[3], "200 ") << "a transform already derived costs nothing";
  attacker.Finish();
  EXPECT_EQ(admin.PostJson("/v1/keys/admins/encrypt", {{"vectors", UnitRow(kDimension)}}).status,
            200u)
      << "another uid has its own budget";
  size_t limited = 0;
  for (const json& record : daemon->AuditRecords()) {
    if (record.value("error_code", "") == "derivation_rate_limited") {
      ++limited;
      EXPECT_EQ(record["caller"]["uid"], kOtherKeyUid);
    }
  }
  EXPECT_EQ(limited, 1u) << "the refusal is audited";
}

}  // namespace
}  // namespace vecseal::security_testing
