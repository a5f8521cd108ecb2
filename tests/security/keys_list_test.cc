// GET /v1/keys through a real vecseald and real policy files: a caller without a keys.list grant
// gets 403, whatever else it may do, and one with a grant sees exactly the keys on which it holds
// an operation; never a key on which it holds nothing.
#include <unistd.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "support/dev_daemon.h"
#include "support/secured_daemon.h"
#include "test_util.h"

namespace vecseal::security_testing {
namespace {

using nlohmann::json;

class KeysListTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (auto reason = testing::SoftHsmUnavailableReason(); !reason.empty()) GTEST_SKIP() << reason;
    std::string error;
    // At first only the rule that lets the test create its keys.
    const json admin = {{"version", 1}, {"rules", json::array({Rule("test-admin", {"*"}, {"keys.create"})})}};
    daemon_ = SecuredDaemon::Prepare({.policy_json = admin.dump(), .socket_group = {}}, &error);
    ASSERT_TRUE(daemon_) << error;
    ASSERT_TRUE(daemon_->Start(&error)) << error;
    client_ = std::make_unique<daemon::testing::HttpClient>(daemon_->socket_path());
    for (const char* name : {"billing", "demo", "support-ratings", "support-tickets"}) {
      const auto created =
          client_->PostJson("/v1/keys", {{"name", name}, {"approximation_factor", 2.5}});
      ASSERT_EQ(created.status, 201u) << created.body;
    }
  }

  // A rule for this very test process (its uid and its program's digest).
  static json Rule(const std::string& id, const std::vector<std::string>& keys,
                   const std::vector<std::string>& operations) {
    return {{"id", id},
            {"callers",
             {{"uid", geteuid()},
              {"exe_sha256", policy::testing_util::Sha256OfFile("/proc/self/exe")}}},
            {"keys", keys},
            {"operations", operations}};
  }

  static json Policy(const std::vector<json>& rules) {
    return {{"version", 1}, {"rules", rules}};
  }

  void Install(const json& policy) {
    policy::testing_util::WriteFile(daemon_->policy_path(), policy.dump(2), 0644);
    std::string error;
    ASSERT_TRUE(daemon_->Reload(&error)) << error;
    ASSERT_EQ(daemon_->Log().find("reload_failed"), std::string::npos) << daemon_->Log();
  }

  // The names GET /v1/keys returns, sorted; fails the test unless the answer is 200.
  std::vector<std::string> Listed() {
    const auto answer = client_->Get("/v1/keys");
    EXPECT_EQ(answer.status, 200u) << answer.body;
    std::vector<std::string> names;
    const json body = answer.Json();
    for (const json& key : body["keys"]) names.push_back(key["name"]);
    std::sort(names.begin(), names.end());
    return names;
  }

  // The audit record of the last GET /v1/keys.
  json LastListRecord() const {
    json last;
    for (const json& record : daemon_->AuditRecords()) {
      if (record.value("operation", "") == "keys.list") last = record;
    }
    return last;
  }

  void ExpectForbidden() {
    const auto answer = client_->Get("/v1/keys");
    EXPECT_EQ(answer.status, 403u);
    EXPECT_EQ(answer.Json(), json({{"error",
                                    {{"code", "permission_denied"},
                                     {"message", "no rule grants keys.list on any key"}}}}));
    const json record = LastListRecord();
    EXPECT_EQ(record["event"], "deny");
    EXPECT_EQ(record["decision"], "denied");
    EXPECT_FALSE(record.contains("rule_id")) << record;
  }

  std::unique_ptr<SecuredDaemon> daemon_;
  std::unique_ptr<daemon::testing::HttpClient> client_;
};

TEST_F(KeysListTest, WithoutAKeysListGrantTheAnswerIs403) {
  // keys.create on every key (the policy SetUp started with) is no keys.list.
  ExpectForbidden();
  // Nor are encrypt and decrypt grants, nor audit.read on "*".
  Install(Policy({Rule("demo-user", {"demo"}, {"encrypt", "decrypt"}),
                  Rule("auditors", {"*"}, {"audit.read"})}));
  ExpectForbidden();
}

TEST_F(KeysListTest, AGrantListsExactlyTheKeysTheCallerHoldsAnOperationOn) {
  Install(Policy({Rule("support-listers", {"support-*"}, {"keys.list"})}));
  EXPECT_EQ(Listed(), (std::vector<std::string>{"support-ratings", "support-tickets"}));
  const json record = LastListRecord();
  EXPECT_EQ(record["event"], "keys.list");
  EXPECT_EQ(record["decision"], "granted");
  EXPECT_EQ(record["rule_id"], "support-listers");

  // An encrypt grant on demo adds demo; audit.read on "*" names no key and adds none; billing,
  // on which the caller holds nothing, never shows.
  Install(Policy({Rule("support-listers", {"support-*"}, {"keys.list"}),
                  Rule("demo-user", {"demo"}, {"encrypt"}),
                  Rule("auditors", {"*"}, {"audit.read"})}));
  EXPECT_EQ(Listed(), (std::vector<std::string>{"demo", "support-ratings", "support-tickets"}));

  // A keys.list grant on a pattern that matches no existing key still allows the call.
  Install(Policy({Rule("future-listers", {"future-*"}, {"keys.list"})}));
  EXPECT_EQ(Listed(), std::vector<std::string>{});
  EXPECT_EQ(LastListRecord()["rule_id"], "future-listers");
}

}  // namespace
}  // namespace vecseal::security_testing
