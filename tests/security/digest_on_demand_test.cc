// Digests on demand (issue #17, item 2), through a real vecseald: under a policy with no
// exe_sha256 or script_sha256 condition no caller's executable is hashed, and the audit record
// and GET /v1/whoami say the digest was not computed; a SIGHUP that adds an exe_sha256 rule makes
// later requests hash. The caller runs a 200 MB sparse copy of security_caller, touched before
// each connect so that the digest cache cannot answer.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <iostream>
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
using policy::testing_util::ReadFile;
using policy::testing_util::Sha256OfFile;
using policy::testing_util::WriteFile;

constexpr off_t kLargeExecutableBytes = off_t{200} << 20;

json ByUidRule() {
  return {{"id", "root-by-uid"},
          {"callers", {{"uid", 0}}},
          {"keys", {"*"}},
          {"operations", {"keys.create", "encrypt"}}};
}

class DigestOnDemandTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root: the policy grants uid 0 by uid alone";
    if (auto reason = testing::SoftHsmUnavailableReason(); !reason.empty()) GTEST_SKIP() << reason;
    std::string error;
    const json policy = {{"version", 1}, {"rules", {ByUidRule()}}};
    daemon_ = SecuredDaemon::Prepare({.policy_json = policy.dump(), .socket_group = {}}, &error);
    ASSERT_TRUE(daemon_) << error;
    ASSERT_TRUE(daemon_->Start(&error)) << error;
    client_ = std::make_unique<daemon::testing::HttpClient>(daemon_->socket_path());
    const auto created =
        client_->PostJson("/v1/keys", {{"name", "guarded"}, {"approximation_factor", 2.5}});
    ASSERT_EQ(created.status, 201u) << created.body;

    large_ = daemon_->root() + "/large-caller";
    WriteFile(large_, ReadFile(VECSEAL_SECURITY_CALLER), 0755);
    ASSERT_EQ(truncate(large_.c_str(), kLargeExecutableBytes), 0);
  }

  // Runs the large caller with `argv_tail` after touching it, so that its digest is not cached.
  // `*elapsed_ms`, when given, is the run's wall time (start, request, exit).
  std::vector<Answer> RunLarge(const std::vector<std::string>& argv_tail,
                               double* elapsed_ms = nullptr) {
    const timespec times[2] = {{next_stamp_, 0}, {next_stamp_, 0}};
    ++next_stamp_;
    EXPECT_EQ(utimensat(AT_FDCWD, large_.c_str(), times, 0), 0);
    std::vector<std::string> argv = {large_};
    argv.insert(argv.end(), argv_tail.begin(), argv_tail.end());
    const auto start = std::chrono::steady_clock::now();
    const CallerRun run = RunAs({.uid = 0, .gid = 0, .groups = {}, .cgroup_dir = {}}, argv);
    if (elapsed_ms != nullptr) {
      *elapsed_ms = std::chrono::duration<double, std::milli>(
                        std::chrono::steady_clock::now() - start).count();
    }
    std::vector<Answer> answers = ParseAnswers(run.output);
    EXPECT_EQ(answers.size(), 1u) << "exit " << run.exit_code << ", output: " << run.output;
    return answers;
  }

  // The value of an unlabelled counter in GET /metrics; -1 when it is missing.
  int64_t Counter(const std::string& name) {
    const std::string text = client_->Get("/metrics").body;
    const size_t at = text.find("\n" + name + " ");
    if (at == std::string::npos) {
      ADD_FAILURE() << "no " << name << " in /metrics:\n" << text;
      return -1;
    }
    return std::stoll(text.substr(at + name.size() + 2));
  }

  json AuditRecord(const Answer& answer) const {
    for (const json& record : daemon_->AuditRecords()) {
      if (record.value("request_id", "") == answer.request_id) return record;
    }
    return json();
  }

  std::unique_ptr<SecuredDaemon> daemon_;
  std::unique_ptr<daemon::testing::HttpClient> client_;
  std::string large_;
  time_t next_stamp_ = 1000;
};

TEST_F(DigestOnDemandTest, NoDigestRuleMeansNoHashingUntilAReloadAddsOne) {
  const std::vector<std::string> encrypt = {"request", daemon_->socket_path(), "guarded/encrypt"};
  double unhashed_ms = 0;
  const std::vector<Answer> granted = RunLarge(encrypt, &unhashed_ms);
  ASSERT_EQ(granted.size(), 1u);
  EXPECT_EQ(granted[0].status, 200u) << granted[0].body;
  const json record = AuditRecord(granted[0]);
  ASSERT_TRUE(record.is_object()) << "no audit record for request " << granted[0].request_id;
  EXPECT_EQ(record["rule_id"], "root-by-uid");
  EXPECT_EQ(record["caller"]["exe"], large_);
  EXPECT_FALSE(record["caller"].contains("exe_sha256")) << "a digest it never computed: " << record;
  EXPECT_EQ(record["caller"]["exe_sha256_unknown"], "not_needed") << record;

  const std::vector<Answer> whoami = RunLarge({"whoami", daemon_->socket_path()});
  ASSERT_EQ(whoami.size(), 1u);
  ASSERT_EQ(whoami[0].status, 200u) << whoami[0].body;
  const json identity = json::parse(whoami[0].body)["identity"];
  EXPECT_EQ(identity["exe"], large_);
  EXPECT_TRUE(identity["exe_sha256"].is_null()) << identity;
  EXPECT_EQ(identity["exe_sha256_unknown"], "not_needed") << identity;
  const int64_t hashed_before = Counter("vecseal_digest_files_hashed_total");
  EXPECT_EQ(hashed_before, 0);

  // The same caller pinned by digest, ahead of the uid rule: only a computed digest can match.
  const std::string digest = Sha256OfFile(large_);
  const json pinned = {{"id", "pinned-large"},
                       {"callers", {{"uid", 0}, {"exe_sha256", digest}}},
                       {"keys", {"guarded"}},
                       {"operations", {"encrypt"}}};
  WriteFile(daemon_->policy_path(), json({{"version", 1}, {"rules", {pinned, ByUidRule()}}}).dump(),
            0644);
  std::string error;
  ASSERT_TRUE(daemon_->Reload(&error)) << error;
  ASSERT_EQ(daemon_->Log().find("reload_failed"), std::string::npos) << daemon_->Log();

  double hashed_ms = 0;
  const std::vector<Answer> hashed = RunLarge(encrypt, &hashed_ms);
  ASSERT_EQ(hashed.size(), 1u);
  EXPECT_EQ(hashed[0].status, 200u) << hashed[0].body;
  const json after = AuditRecord(hashed[0]);
  ASSERT_TRUE(after.is_object()) << "no audit record for request " << hashed[0].request_id;
  EXPECT_EQ(after["rule_id"], "pinned-large");
  EXPECT_EQ(after["caller"]["exe_sha256"], digest);
  EXPECT_FALSE(after["caller"].contains("exe_sha256_unknown")) << after;
  // The large caller, and this test's own program for the /metrics request itself.
  const int64_t hashed_after = Counter("vecseal_digest_files_hashed_total");
  EXPECT_GE(hashed_after, 1);
  EXPECT_EQ(Counter("vecseal_digests_rate_limited_total"), 0);
  std::cout << "[ figures  ] files hashed " << hashed_before << " before the reload, "
            << hashed_after << " after; encrypt from the 200 MB caller " << unhashed_ms
            << " ms without a digest rule, " << hashed_ms << " ms with one\n";
}

}  // namespace
}  // namespace vecseal::security_testing
