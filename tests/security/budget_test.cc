// Budgets (issue #19) through the real daemon on SoftHSM2: a request over the budget is refused
// whole, audited, and costs no HSM call; racing connections never overspend; what was spent
// survives a restart, a kill -9, a reload, and a wall clock stepped back across a restart; a log
// that cannot be read fails budgeted rules closed; callers of other uids each spend their own
// count, and see a budget in /metrics only when they may list its key.
#include <grp.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "support/dev_daemon.h"
#include "support/secured_daemon.h"

namespace vecseal::security_testing {
namespace {

using daemon::testing::HttpClient;
using daemon::testing::HttpResult;
using nlohmann::json;

constexpr size_t kDimension = 16;

json Rows(size_t count) {
  json rows = json::array();
  for (size_t i = 0; i < count; ++i) {
    std::vector<float> row(kDimension, 0.0f);
    row[i % kDimension] = 1.0f;
    rows.push_back(row);
  }
  return rows;
}

// root may create keys; "test-env" encrypts on b-* within `vectors` per `per`; "free" has no
// budget, so that failing closed can be seen to touch budgeted rules only.
std::string PolicyWith(uint64_t vectors, const std::string& per = "1h") {
  const json policy = {
      {"version", 1},
      {"rules",
       {{{"id", "admin"},
         {"callers", {{"uid", 0}}},
         {"keys", {"*"}},
         {"operations", {"keys.create", "keys.list"}}},
        {{"id", "test-env"},
         {"callers", {{"uid", 0}}},
         {"keys", {"b-*"}},
         {"operations", {"encrypt"}},
         {"budgets", {{{"operation", "encrypt"}, {"vectors", vectors}, {"per", per}}}}},
        {{"id", "free"},
         {"callers", {{"uid", 0}}},
         {"keys", {"free"}},
         {"operations", {"encrypt"}}}}}};
  return policy.dump(2);
}

class BudgetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root: the secured daemon's token and socket";
    if (auto reason = testing::SoftHsmUnavailableReason(); !reason.empty()) GTEST_SKIP() << reason;
  }

  // `socket_group` empty: the daemon's own; `dimension` of the keys b-1 and free.
  void StartWith(const std::string& policy, const std::string& socket_group = "",
                 size_t dimension = kDimension) {
    std::string error;
    daemon_ = SecuredDaemon::Prepare({.policy_json = policy, .socket_group = socket_group}, &error);
    ASSERT_TRUE(daemon_) << error;
    ASSERT_TRUE(daemon_->Start(&error)) << error;
    HttpClient admin(daemon_->socket_path());
    for (const char* name : {"b-1", "free"}) {
      const auto created = admin.PostJson(
          "/v1/keys", {{"name", name}, {"approximation_factor", 2.5}, {"dimension", dimension}});
      ASSERT_EQ(created.status, 201u) << created.body;
    }
  }

  void Restart() {
    std::string error;
    ASSERT_TRUE(daemon_->Start(&error)) << error;
  }

  HttpResult Encrypt(size_t count, const std::string& key = "b-1") {
    HttpClient client(daemon_->socket_path());
    return client.PostJson("/v1/keys/" + key + "/encrypt", {{"vectors", Rows(count)}});
  }

  static std::string CodeOf(const HttpResult& result) { return result.ErrorCode(); }

  uint64_t HsmCalls() {
    HttpClient client(daemon_->socket_path());
    const std::string text = client.Get("/metrics").body;
    uint64_t total = 0;
    size_t at = 0;
    while ((at = text.find("\nvecseal_hsm_calls_total{", at)) != std::string::npos) {
      at = text.find("} ", at) + 2;
      total += std::stoull(text.substr(at));
    }
    return total;
  }

  std::unique_ptr<SecuredDaemon> daemon_;
};

TEST_F(BudgetTest, ARequestOverTheBudgetIsRefusedWholeAuditedAndCostsNoHsmCall) {
  ASSERT_NO_FATAL_FAILURE(StartWith(PolicyWith(10)));
  ASSERT_EQ(Encrypt(6).status, 200u);
  const uint64_t calls_before = HsmCalls();
  const HttpResult refused = Encrypt(5);
  EXPECT_EQ(HsmCalls(), calls_before) << "a refused request makes no HSM call";
  ASSERT_EQ(refused.status, 429u) << refused.body;
  EXPECT_EQ(CodeOf(refused), "budget_exhausted");
  const std::string message = refused.Json()["error"]["message"];
  EXPECT_EQ(message.find("rule 'test-env' allows encrypt of at most 10 vectors per 1h on key "
                         "'b-1'; 6 spent in the window, this request has 5; room for it opens "
                         "in "),
            0u)
      << message;
  ASSERT_TRUE(refused.headers.contains("retry-after"));
  const int retry_after = std::stoi(refused.headers.at("retry-after"));
  EXPECT_GT(retry_after, 3500);
  EXPECT_LE(retry_after, 3600 + 4);
  EXPECT_NE(message.find("opens in " + refused.headers.at("retry-after") + " s, at 20"),
            std::string::npos);

  EXPECT_EQ(Encrypt(4).status, 200u) << "the budget is spent exactly to its limit";
  EXPECT_EQ(CodeOf(Encrypt(1)), "budget_exhausted");
  EXPECT_EQ(Encrypt(1, "free").status, 200u) << "a rule without a budget is not affected";
  EXPECT_EQ(CodeOf(Encrypt(11)), "budget_exhausted");

  size_t denials = 0;
  uint64_t encrypted = 0;
  for (const json& record : daemon_->AuditRecords()) {
    if (record.value("event", "") == "encrypt" && record.value("rule_id", "") == "test-env") {
      encrypted += record["vectors"].get<uint64_t>();
    }
    if (record.value("error_code", "") != "budget_exhausted") continue;
    ++denials;
    EXPECT_EQ(record["event"], "deny");
    EXPECT_EQ(record["decision"], "denied");
    EXPECT_EQ(record["rule_id"], "test-env");
    EXPECT_EQ(record["key"], "b-1");
    EXPECT_EQ(record["extra"]["budget"]["limit"], 10);
    EXPECT_EQ(record["extra"]["budget"]["per"], "1h");
  }
  EXPECT_EQ(denials, 3u);
  EXPECT_EQ(encrypted, 10u);

  HttpClient client(daemon_->socket_path());
  const json whoami = client.Get("/v1/whoami").Json();
  bool shown = false;
  for (const json& grant : whoami["grants"]) {
    if (grant["rule"] != "test-env") continue;
    const json& budget = grant["budgets"][0];
    EXPECT_EQ(budget["vectors"], 10);
    EXPECT_EQ(budget["per"], "1h");
    ASSERT_EQ(budget["spent"].size(), 1u) << budget.dump();
    EXPECT_EQ(budget["spent"][0]["key"], "b-1");
    EXPECT_EQ(budget["spent"][0]["vectors"], 10);
    EXPECT_GT(budget["spent"][0]["room_opens_in_seconds"].get<int>(), 3500);
    shown = true;
  }
  EXPECT_TRUE(shown) << whoami.dump();
  const std::string metrics = client.Get("/metrics").body;
  EXPECT_NE(metrics.find("vecseal_budget_spent_vectors{rule=\"test-env\",operation=\"encrypt\","
                         "per=\"1h\",key=\"b-1\"} 10\n"),
            std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("vecseal_budget_limit_vectors{rule=\"test-env\",operation=\"encrypt\","
                         "per=\"1h\",key=\"b-1\"} 10\n"),
            std::string::npos);
}

// Many connections race at the edge: exactly the budget is encrypted, never one vector more.
TEST_F(BudgetTest, RacingConnectionsNeverExceedTheBudgetByOneVector) {
  constexpr uint64_t kBudget = 97;
  ASSERT_NO_FATAL_FAILURE(StartWith(PolicyWith(kBudget)));
  std::atomic<uint64_t> encrypted{0};
  std::atomic<uint64_t> unexpected{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 12; ++t) {
    threads.emplace_back([&, t] {
      HttpClient client(daemon_->socket_path());
      for (int i = 0;; ++i) {
        const size_t count = 1 + static_cast<size_t>((t + i) % 4);
        const HttpResult result =
            client.PostJson("/v1/keys/b-1/encrypt", {{"vectors", Rows(count)}});
        if (result.status == 200) {
          encrypted += count;
        } else if (result.ErrorCode() != "budget_exhausted") {
          ++unexpected;
          return;
        } else if (count == 1) {
          return;  // not one vector fits any more
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(unexpected.load(), 0u);
  EXPECT_EQ(encrypted.load(), kBudget);
  uint64_t audited = 0;
  for (const json& record : daemon_->AuditRecords()) {
    if (record.value("event", "") == "encrypt") audited += record["vectors"].get<uint64_t>();
  }
  EXPECT_EQ(audited, kBudget);
}

TEST_F(BudgetTest, SpentSurvivesARestartAKillAndAReload) {
  ASSERT_NO_FATAL_FAILURE(StartWith(PolicyWith(10)));
  ASSERT_EQ(Encrypt(8).status, 200u);
  EXPECT_EQ(daemon_->Stop(), 0);
  Restart();
  EXPECT_EQ(CodeOf(Encrypt(3)), "budget_exhausted") << "a restart counts the log";
  ASSERT_EQ(Encrypt(1).status, 200u);
  daemon_->Kill();
  Restart();
  EXPECT_EQ(CodeOf(Encrypt(2)), "budget_exhausted") << "a crash loses nothing it answered";
  EXPECT_NE(daemon_->Log().find("budgets_counted"), std::string::npos);

  std::string error;
  std::ofstream(daemon_->policy_path(), std::ios::trunc) << PolicyWith(10);
  ASSERT_TRUE(daemon_->Reload(&error)) << error;
  EXPECT_EQ(CodeOf(Encrypt(2)), "budget_exhausted") << "a reload keeps what was spent";
  std::ofstream(daemon_->policy_path(), std::ios::trunc) << PolicyWith(12);
  ASSERT_TRUE(daemon_->Reload(&error)) << error;
  EXPECT_EQ(Encrypt(3).status, 200u) << "a raised limit applies from the reload on";
  EXPECT_EQ(CodeOf(Encrypt(1)), "budget_exhausted") << "12 of 12 spent";
  // A new window is a new budget: it is counted from the log, not from zero.
  std::ofstream(daemon_->policy_path(), std::ios::trunc) << PolicyWith(12, "2h");
  ASSERT_TRUE(daemon_->Reload(&error)) << error;
  EXPECT_EQ(CodeOf(Encrypt(1)), "budget_exhausted") << "a budget a reload adds counts the log";
}

// Before the restart the wall clock ran two hours ahead (as before an NTP step back); the
// records of that run lie in the future of the restarted daemon, and must still count.
TEST_F(BudgetTest, AWallClockSteppedBackAcrossARestartHandsOutNoFreshBudget) {
  setenv("LD_PRELOAD", VECSEAL_TEST_CLOCK_SHIFT_LIB, 1);
  setenv("VECSEAL_TEST_CLOCK_SHIFT", "7200", 1);
  const char* asan = std::getenv("ASAN_OPTIONS");
  const std::string saved_asan = asan == nullptr ? "" : asan;
  setenv("ASAN_OPTIONS", (saved_asan + ":verify_asan_link_order=0").c_str(), 1);
  StartWith(PolicyWith(10));
  unsetenv("LD_PRELOAD");
  unsetenv("VECSEAL_TEST_CLOCK_SHIFT");
  if (asan == nullptr) unsetenv("ASAN_OPTIONS");
  if (asan != nullptr) setenv("ASAN_OPTIONS", saved_asan.c_str(), 1);
  if (HasFatalFailure()) return;  // StartWith's assertion ended only StartWith
  ASSERT_EQ(Encrypt(10).status, 200u);
  bool shifted = false;
  for (const json& record : daemon_->AuditRecords()) {
    if (record.value("event", "") != "encrypt") continue;
    const std::string time = record["time"];
    const auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
    char text[32];
    std::tm utc{};
    gmtime_r(&now, &utc);
    std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%S", &utc);
    shifted = time > std::string(text);
  }
  ASSERT_TRUE(shifted) << "the first run's records are timed ahead of the real clock";
  EXPECT_EQ(daemon_->Stop(), 0);
  Restart();
  const HttpResult refused = Encrypt(1);
  EXPECT_EQ(CodeOf(refused), "budget_exhausted") << refused.body;
  ASSERT_TRUE(refused.headers.contains("retry-after"));
  EXPECT_GE(std::stoi(refused.headers.at("retry-after")), 3600 - 60)
      << "a record from the future counts a whole window from now";
}

// A line in the middle of the log that is not a record: what was spent cannot be established,
// so budgeted rules are refused (503) and unbudgeted ones still served.
TEST_F(BudgetTest, ALogThatCannotBeCountedFailsBudgetedRulesClosed) {
  ASSERT_NO_FATAL_FAILURE(StartWith(PolicyWith(10)));
  ASSERT_EQ(Encrypt(1).status, 200u);
  EXPECT_EQ(daemon_->Stop(), 0);
  std::string newest;
  for (const auto& entry : std::filesystem::directory_iterator(daemon_->audit_dir())) {
    newest = std::max(newest, entry.path().string());
  }
  std::ifstream in(newest);
  std::stringstream whole;
  whole << in.rdbuf();
  std::string content = whole.str();
  content.insert(content.find('\n') + 1, "garbage\n");
  std::ofstream(newest, std::ios::trunc) << content;
  Restart();
  const HttpResult refused = Encrypt(1);
  EXPECT_EQ(refused.status, 503u);
  EXPECT_EQ(CodeOf(refused), "budget_unavailable") << refused.body;
  EXPECT_NE(refused.body.find("is not an audit record"), std::string::npos) << refused.body;
  EXPECT_EQ(Encrypt(1, "free").status, 200u);
}

// The oldest audit file is removed: what was spent at the start of the window is unknown, so
// the budgeted rule is refused until a whole window has passed since the first record left.
TEST_F(BudgetTest, ALogMissingTheStartOfTheWindowFailsClosedUntilAWindowHasPassed) {
  ASSERT_NO_FATAL_FAILURE(StartWith(PolicyWith(10)));
  ASSERT_EQ(Encrypt(1).status, 200u);
  EXPECT_EQ(daemon_->Stop(), 0);
  Restart();  // every start begins a file of its own
  EXPECT_EQ(daemon_->Stop(), 0);
  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(daemon_->audit_dir())) {
    files.push_back(entry.path().string());
  }
  std::sort(files.begin(), files.end());
  ASSERT_EQ(files.size(), 2u);
  std::filesystem::remove(files.front());
  Restart();
  const HttpResult refused = Encrypt(1);
  EXPECT_EQ(refused.status, 503u);
  EXPECT_EQ(CodeOf(refused), "budget_unavailable") << refused.body;
  EXPECT_NE(refused.body.find("no longer holds the start of this budget's window"),
            std::string::npos)
      << refused.body;
  ASSERT_TRUE(refused.headers.contains("retry-after"));
  EXPECT_GT(std::stoi(refused.headers.at("retry-after")), 3500);
  EXPECT_EQ(Encrypt(1, "free").status, 200u);
}

// Two real callers of other uids under one rule whose budget counts per uid.
class PerUidBudgetTest : public BudgetTest {
 protected:
  static constexpr uid_t kSpenderA = 64111;
  static constexpr uid_t kSpenderB = 64112;
  static constexpr gid_t kSpenderGid = 64113;

  void SetUp() override {
    BudgetTest::SetUp();
    if (IsSkipped()) return;
    const group* socket_group = getgrnam("nogroup");
    if (socket_group == nullptr) GTEST_SKIP() << "no group 'nogroup' to own the socket";
    socket_gid_ = socket_group->gr_gid;
    // A and B encrypt on b-* with 2 vectors an hour each; only B may list keys.
    const json policy = {
        {"version", 1},
        {"rules",
         {{{"id", "admin"},
           {"callers", {{"uid", 0}}},
           {"keys", {"*"}},
           {"operations", {"keys.create", "keys.list"}}},
          {{"id", "per-uid"},
           {"callers", {{"uid", {kSpenderA, kSpenderB}}}},
           {"keys", {"b-*"}},
           {"operations", {"encrypt"}},
           {"budgets",
            {{{"operation", "encrypt"}, {"vectors", 2}, {"per", "1h"}, {"per_caller", "uid"}}}}},
          {{"id", "lister"},
           {"callers", {{"uid", kSpenderB}}},
           {"keys", {"b-*"}},
           {"operations", {"keys.list"}}}}}};
    // security_caller sends one vector of three values.
    ASSERT_NO_FATAL_FAILURE(StartWith(policy.dump(2), "nogroup", 3));
  }

  CallerIdentity Spender(uid_t uid) const {
    return {.uid = uid, .gid = kSpenderGid, .groups = {socket_gid_}, .cgroup_dir = ""};
  }

  // One single-vector encrypt on b-1 as `uid`: "STATUS CODE MESSAGE" ("200  " when it worked).
  std::string EncryptAs(uid_t uid) const {
    const CallerRun run = RunAs(
        Spender(uid), {VECSEAL_SECURITY_CALLER, "request", daemon_->socket_path(), "b-1/encrypt"});
    const std::vector<Answer> answers = ParseAnswers(run.output);
    if (answers.size() != 1) return "no answer: " + run.output;
    const json body = json::parse(answers[0].body, nullptr, false);
    const json error = body.is_object() ? body.value("error", json::object()) : json::object();
    return std::to_string(answers[0].status) + " " + error.value("code", "") + " " +
           error.value("message", "");
  }

  // The raw answer to GET `path` as `uid`, /metrics bodies included.
  std::string GetAs(uid_t uid, const std::string& path) const {
    return RunAs(Spender(uid), {VECSEAL_SECURITY_CALLER, "get", daemon_->socket_path(), path})
        .output;
  }

  gid_t socket_gid_ = 0;
};

TEST_F(PerUidBudgetTest, EachUidSpendsItsOwnCountAndARestartCountsThemApart) {
  // Refused from its headers: no room at all is left, so the body is never read.
  const auto ExpectRefused = [this](uid_t uid) {
    const std::string answer = EncryptAs(uid);
    EXPECT_TRUE(answer.starts_with(
        "429 budget_exhausted rule 'per-uid' allows encrypt of at most 2 vectors per 1h on key "
        "'b-1' for uid " + std::to_string(uid) + "; 2 spent in the window; room for it opens in "))
        << answer;
  };
  EXPECT_EQ(EncryptAs(kSpenderA), "200  ");
  EXPECT_EQ(EncryptAs(kSpenderA), "200  ");
  ExpectRefused(kSpenderA);
  EXPECT_EQ(EncryptAs(kSpenderB), "200  ") << "A's spending is not B's";
  EXPECT_EQ(EncryptAs(kSpenderB), "200  ");
  ExpectRefused(kSpenderB);

  const std::string asked = GetAs(kSpenderA, "/v1/whoami");
  const std::vector<Answer> whoami = ParseAnswers(asked);
  ASSERT_EQ(whoami.size(), 1u) << asked;
  const json grants = json::parse(whoami[0].body)["grants"];
  ASSERT_EQ(grants.size(), 1u) << grants.dump();
  const json& spent = grants[0]["budgets"][0]["spent"];
  ASSERT_EQ(spent.size(), 1u) << "A sees its own count only: " << spent.dump();
  EXPECT_EQ(spent[0]["key"], "b-1");
  EXPECT_EQ(spent[0]["vectors"], 2);
  EXPECT_GT(spent[0]["room_opens_in_seconds"].get<int>(), 3500);

  std::vector<uid_t> refused_uids;
  for (const json& record : daemon_->AuditRecords()) {
    if (record.value("error_code", "") != "budget_exhausted") continue;
    EXPECT_EQ(record["rule_id"], "per-uid");
    EXPECT_EQ(record["key"], "b-1");
    refused_uids.push_back(record["caller"]["uid"].get<uid_t>());
  }
  EXPECT_EQ(refused_uids, (std::vector<uid_t>{kSpenderA, kSpenderB}));

  // The log holds each uid's spending apart: after a kill and a restart both are still spent.
  daemon_->Kill();
  Restart();
  ExpectRefused(kSpenderA);
  ExpectRefused(kSpenderB);
}

TEST_F(PerUidBudgetTest, MetricsShowABudgetOnlyToReadersWhoMayListItsKey) {
  ASSERT_EQ(EncryptAs(kSpenderA), "200  ");
  const std::string series =
      "vecseal_budget_spent_vectors{rule=\"per-uid\",operation=\"encrypt\",per=\"1h\","
      "key=\"b-1\"} 1\n";
  const std::string limit =
      "vecseal_budget_limit_vectors{rule=\"per-uid\",operation=\"encrypt\",per=\"1h\","
      "key=\"b-1\"} 2\n";
  const std::string lister = GetAs(kSpenderB, "/metrics");
  EXPECT_NE(lister.find(series), std::string::npos) << "B may list b-1: " << lister;
  EXPECT_NE(lister.find(limit), std::string::npos) << lister;
  const std::string spender = GetAs(kSpenderA, "/metrics");
  ASSERT_EQ(spender.rfind("200 ", 0), 0u) << spender;
  EXPECT_NE(spender.find("# TYPE vecseal_budget_spent_vectors gauge"), std::string::npos);
  EXPECT_EQ(spender.find("vecseal_budget_spent_vectors{"), std::string::npos)
      << "A may use b-1 but not list it: " << spender;
  EXPECT_EQ(spender.find("vecseal_budget_limit_vectors{"), std::string::npos) << spender;
  EXPECT_EQ(spender.find("b-1"), std::string::npos) << "nowhere a key A cannot list";
}

}  // namespace
}  // namespace vecseal::security_testing
