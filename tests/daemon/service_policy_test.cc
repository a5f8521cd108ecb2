// Policy decisions in process: grants, denials, deletion guards, budgets and what /metrics may
// name, on the real Service and policy over a fake key store and a caller identity the test
// chooses. A reload here is what vecseald does once a SIGHUP loaded the new policy (the signal
// itself is daemon_test.cc's). Moved from daemon_test.cc, except the tests of other callers.
#include <unistd.h>

#include <string>

#include <gtest/gtest.h>

#include "support/in_process_daemon.h"
#include "support/in_process_test.h"

namespace vecseal::daemon::testing {
namespace {

using nlohmann::json;

class ServicePolicyTest : public InProcessTest {};

HttpResult Delete(HttpClient& client, const std::string& target) {
  return client.Send(HttpCall{.method = "DELETE", .target = target, .body = "",
                              .content_type = {}, .headers = {}});
}

TEST_F(ServicePolicyTest, DeleteNeedsItsGrantAndForceWhileThePolicyNamesTheKey) {
  ASSERT_EQ(client_->PostJson("/v1/keys", {{"name", "doomed"}, {"approximation_factor", 2.0}})
                .status,
            201u);
  ASSERT_EQ(client_->PostJson("/v1/keys/doomed/encrypt", {{"vectors", {{1, 2}}}}).status, 200u);
  const auto apply = [&](const std::string& rules) {
    const Status reloaded = daemon_->Reload(R"({"version": 1, "rules": [)" + rules + "]}");
    ASSERT_TRUE(reloaded.ok()) << reloaded.ToString();
  };
  const std::string me = std::to_string(getuid());
  apply(R"({"id": "no-delete", "callers": {"uid": )" + me +
            R"(}, "keys": ["*"], "operations": ["keys.list", "encrypt"]})");
  auto denied = Delete(*client_, "/v1/keys/doomed");
  EXPECT_EQ(denied.status, 403u);
  EXPECT_EQ(denied.Json()["error"]["message"], "no rule grants keys.delete on key 'doomed'");

  apply(R"({"id": "admins", "callers": {"uid": )" + me +
            R"(}, "keys": ["*"], "operations": ["keys.delete"]},
           {"id": "scorer", "callers": {"uid": 4242}, "keys": ["doomed"], "operations": ["encrypt"]})");
  auto in_use = Delete(*client_, "/v1/keys/doomed");
  EXPECT_EQ(in_use.status, 409u);
  EXPECT_EQ(in_use.ErrorCode(), "key_in_policy");
  EXPECT_NE(in_use.Json()["error"]["message"].get<std::string>().find("'scorer'"),
            std::string::npos);
  EXPECT_EQ(Delete(*client_, "/v1/keys/doomed?force=yes").ErrorCode(), "invalid_request");
  // Without keys.list the caller learns nothing of the key from GET either.
  EXPECT_EQ(client_->Get("/v1/keys/doomed").status, 403u);

  auto forced = Delete(*client_, "/v1/keys/doomed?force=true");
  ASSERT_EQ(forced.status, 200u) << forced.body;
  EXPECT_EQ(forced.Json()["destroyed_versions"], json::array({1}));
  EXPECT_EQ(Delete(*client_, "/v1/keys/doomed?force=true").ErrorCode(), "key_not_found");
  const json record = LastRecordOf(*daemon_, "keys.delete");
  EXPECT_EQ(record["event"], "error") << "the last one found nothing to delete";
  bool deleted_audited = false;
  for (const auto& r : daemon_->AuditRecords()) {
    if (r.value("event", "") == "keys.delete") {
      deleted_audited = true;
      EXPECT_EQ(r["key"], "doomed");
      EXPECT_EQ(r["extra"]["destroyed_versions"], json::array({1}));
      EXPECT_EQ(r["extra"]["force"], true);
    }
  }
  EXPECT_TRUE(deleted_audited);
  auto gone = Delete(*client_, "/v1/keys/doomed/encrypt");
  EXPECT_EQ(gone.status, 405u);
}

// Rewraps of one token are fresh encryptions of one plaintext: a rewrap budget caps them, and a
// budget that a reload adds counts the rewraps already in the audit log.
TEST_F(ServicePolicyTest, RewrapsSpendFromRewrapBudgetsCountedFromTheLog) {
  ASSERT_EQ(client_->PostJson("/v1/keys", {{"name", "spent"}, {"approximation_factor", 2.0},
                                           {"dimension", 3}})
                .status,
            201u);
  auto sealed = client_->PostJson("/v1/keys/spent/encrypt",
                                  {{"vectors", {{0.6, 0.8, 0.0}, {0.0, 0.6, 0.8}}},
                                   {"reversible", true}});
  ASSERT_EQ(sealed.status, 200u) << sealed.body;
  const json request = {{"vectors", sealed.Json()["vectors"]}, {"tokens", sealed.Json()["tokens"]}};
  const auto migrator = [&](const std::string& budgets) {
    const Status reloaded = daemon_->Reload(
        R"({"version": 1, "rules": [{"id": "migrator", "callers": {"uid": )" +
        std::to_string(getuid()) + R"(}, "keys": ["*"], "operations": ["rewrap"])" + budgets +
        "}]}");
    ASSERT_TRUE(reloaded.ok()) << reloaded.ToString();
  };
  migrator("");
  ASSERT_EQ(client_->PostJson("/v1/keys/spent/rewrap", request).status, 200u);
  migrator(R"(, "budgets": [{"operation": "rewrap", "vectors": 5, "per": "1h"}])");
  HttpResult second;
  for (int attempt = 0; attempt < 500; ++attempt) {  // 503 until the log is counted
    second = client_->PostJson("/v1/keys/spent/rewrap", request);
    if (second.status != 503) break;
    usleep(10'000);
  }
  ASSERT_EQ(second.status, 200u) << second.body;  // 2 + 2 of 5
  auto third = client_->PostJson("/v1/keys/spent/rewrap", request);
  EXPECT_EQ(third.status, 429u) << third.body;
  EXPECT_EQ(third.ErrorCode(), "budget_exhausted");
  EXPECT_NE(third.Json()["error"]["message"].get<std::string>().find("4 spent in the window"),
            std::string::npos)
      << third.body;
}

// Issue #17 row 12: /metrics showed key names and per-key counts to a caller denied keys.list.
TEST_F(ServicePolicyTest, MetricsNameOnlyTheKeysTheCallerMayList) {
  ASSERT_EQ(client_->PostJson("/v1/keys/demo/encrypt", {{"vectors", {{1, 2}}}}).status, 200u);
  EXPECT_NE(client_->Get("/metrics").body.find(
                R"(vecseal_vectors_total{key="demo",operation="encrypt"} 1)"),
            std::string::npos);
  const Status reloaded = daemon_->Reload(
      R"({"version": 1, "rules": [{"id": "encrypt-only", "callers": {"uid": )" +
      std::to_string(getuid()) + R"(}, "keys": ["demo"], "operations": ["encrypt"]}]})");
  ASSERT_TRUE(reloaded.ok()) << reloaded.ToString();
  ASSERT_EQ(client_->PostJson("/v1/keys/demo/encrypt", {{"vectors", {{1, 2}}}}).status, 200u);
  const std::string hidden = client_->Get("/metrics").body;
  EXPECT_EQ(hidden.find("key=\"demo\""), std::string::npos) << hidden;
  EXPECT_NE(hidden.find(R"(vecseal_vectors_total{key="",operation="encrypt"} 2)"),
            std::string::npos)
      << "the counts are still there, without the name:\n" << hidden;
}

// A caller the policy does not name is denied, and the denial is audited under the identity the
// kernel gave (here, the fake's): the seam lets a test be any uid without a second process.
TEST_F(ServicePolicyTest, AnotherUidIsDeniedAndTheDenialNamesIt) {
  const Status reloaded = daemon_->Reload(
      R"({"version": 1, "rules": [{"id": "owner", "callers": {"uid": )" +
      std::to_string(geteuid()) + R"(}, "keys": ["demo"], "operations": ["encrypt"]}]})");
  ASSERT_TRUE(reloaded.ok()) << reloaded.ToString();
  ASSERT_EQ(client_->PostJson("/v1/keys/demo/encrypt", {{"vectors", {{1, 2}}}}).status, 200u);

  policy::CallerIdentity stranger = daemon_->peers().identity();
  stranger.uid = 4242;
  stranger.user.clear();
  daemon_->peers().Set(stranger);
  auto denied = client_->PostJson("/v1/keys/demo/encrypt", {{"vectors", {{1, 2}}}});
  EXPECT_EQ(denied.status, 403u) << denied.body;
  EXPECT_EQ(denied.ErrorCode(), "permission_denied");
  EXPECT_EQ(denied.Json()["error"]["message"], "no rule grants encrypt on key 'demo'");
  const json record = LastRecordOf(*daemon_, "encrypt");
  EXPECT_EQ(record["decision"], "denied") << record.dump();
  EXPECT_EQ(record["caller"]["uid"], 4242) << record.dump();
}

// A peer that cannot be identified any more is refused whatever the policy grants.
TEST_F(ServicePolicyTest, APeerThatIsGoneIsRefused) {
  daemon_->peers().Fail(Status(Code::kPermissionDenied, "peer_gone", "the peer exited"));
  auto refused = client_->PostJson("/v1/keys/demo/encrypt", {{"vectors", {{1, 2}}}});
  EXPECT_EQ(refused.status, 403u) << refused.body;
  EXPECT_EQ(refused.ErrorCode(), "peer_gone");
}

}  // namespace
}  // namespace vecseal::daemon::testing
