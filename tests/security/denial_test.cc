// The denial matrix and the socket's group, through a real vecseald with a real policy file.
// Callers are child processes that join a cgroup (their systemd unit), set their groups, gid and
// uid, and exec security_caller images whose digests the policy pins.
#include <grp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <filesystem>
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

constexpr uid_t kScorerUid = 64101;
constexpr gid_t kScorerGid = 64102;
constexpr uid_t kOtherUid = 64103;
constexpr gid_t kOtherGid = 64104;

// Two images of security_caller that differ only in a trailer of the same length: both run, and
// their digests differ.
std::string Variant(char which) {
  return ReadFile(VECSEAL_SECURITY_CALLER) + "\nvecseal-security-variant-" + which + "\n";
}

class DenialMatrixTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) {
      GTEST_SKIP() << "needs root: callers are child processes that setuid, setgid and join a "
                      "cgroup";
    }
    if (auto reason = testing::SoftHsmUnavailableReason(); !reason.empty()) GTEST_SKIP() << reason;
    const group* socket_group = getgrnam("nogroup");
    if (socket_group == nullptr) GTEST_SKIP() << "no group 'nogroup' to own the socket";
    socket_gid_ = socket_group->gr_gid;
    std::string why;
    scorer_unit_ = TestUnit::Create("scorer", &why);
    if (scorer_unit_) other_unit_ = TestUnit::Create("other", &why);
    if (!other_unit_) {
      // The other conditions are still tested; only the unit drops out of the rule.
      scorer_unit_.reset();
      no_units_why_ = why;
    }

    std::string error;
    daemon_ = SecuredDaemon::Prepare({.policy_json = "{}", .socket_group = "nogroup"}, &error);
    ASSERT_TRUE(daemon_) << error;
    bin_ = daemon_->root() + "/bin";
    ASSERT_EQ(mkdir(bin_.c_str(), 0755), 0);
    Install("scorer", 'A');
    digest_a_ = Sha256OfFile(bin_ + "/scorer");
    digest_b_ = Sha256OfFile(Install("impostor", 'B'));
    ASSERT_NE(digest_a_, digest_b_);

    // The scorer rule is what a security team writes for a compiled service: its unit, its
    // account and the digest of the reviewed build.
    json scorer_callers = {{"uid", kScorerUid}, {"gid", kScorerGid}, {"exe_sha256", digest_a_}};
    if (scorer_unit_) scorer_callers["unit"] = scorer_unit_->name();
    const json policy = {
        {"version", 1},
        {"rules",
         {{{"id", "test-admin"},
           {"callers", {{"uid", 0}, {"exe_sha256", Sha256OfFile("/proc/self/exe")}}},
           {"keys", {"*"}},
           {"operations", {"keys.create"}}},
          {{"id", "pinned-scorer"},
           {"callers", scorer_callers},
           {"keys", {"guarded"}},
           {"operations", {"encrypt"}}}}}};
    WriteFile(daemon_->policy_path(), policy.dump(2), 0644);
    ASSERT_TRUE(daemon_->Start(&error)) << error;
    daemon::testing::HttpClient admin(daemon_->socket_path());
    const auto created =
        admin.PostJson("/v1/keys", {{"name", "guarded"}, {"approximation_factor", 2.5}});
    ASSERT_EQ(created.status, 201u) << created.body;
    const auto other =
        admin.PostJson("/v1/keys", {{"name", "unlisted"}, {"approximation_factor", 2.5}});
    ASSERT_EQ(other.status, 201u) << other.body;
  }

  std::string Install(const std::string& name, char variant) {
    const std::string path = bin_ + "/" + name;
    WriteFile(path, Variant(variant), 0755);
    return path;
  }

  // The identity the scorer rule grants, in its unit or (`unit`) another.
  CallerIdentity Scorer(const TestUnit* unit = nullptr) const {
    if (unit == nullptr) unit = scorer_unit_.get();
    return {.uid = kScorerUid,
            .gid = kScorerGid,
            .groups = {socket_gid_},
            .cgroup_dir = unit != nullptr ? unit->dir() : ""};
  }
  // What the audit record must say; empty (not checked) without test units.
  std::string ScorerUnit() const { return scorer_unit_ ? scorer_unit_->name() : ""; }

  CallerRun Request(const CallerIdentity& who, const std::string& program,
                    const std::vector<std::string>& extra = {},
                    const std::string& key_action = "guarded/encrypt") {
    std::vector<std::string> argv = {program, "request", daemon_->socket_path(), key_action};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return RunAs(who, argv);
  }

  // The audit record of one answer, checked against who asked and what ran.
  void ExpectAudited(const Answer& answer, pid_t pid, const CallerIdentity& who,
                     const std::string& unit, const std::string& exe, const std::string& digest,
                     const std::string& key = "guarded", const std::string& operation = "encrypt") {
    json record;
    for (const auto& candidate : daemon_->AuditRecords()) {
      if (candidate.value("request_id", "") == answer.request_id) record = candidate;
    }
    ASSERT_TRUE(record.is_object()) << "no audit record for request " << answer.request_id;
    const bool granted = answer.status == 200;
    EXPECT_EQ(record["event"], granted ? operation : "deny");
    EXPECT_EQ(record["operation"], operation);
    EXPECT_EQ(record["key"], key);
    EXPECT_EQ(record["decision"], granted ? "granted" : "denied");
    if (granted) {
      EXPECT_EQ(record["rule_id"], "pinned-scorer");
    } else {
      EXPECT_FALSE(record.contains("rule_id")) << record;
      EXPECT_EQ(record["error_code"], "permission_denied");
    }
    const json& caller = record["caller"];
    EXPECT_EQ(caller["pid"], pid);
    EXPECT_EQ(caller["uid"], who.uid);
    EXPECT_EQ(caller["gid"], who.gid);
    if (!unit.empty()) {
      EXPECT_EQ(caller["unit"], unit);
    }
    EXPECT_EQ(caller["exe"], exe);
    EXPECT_EQ(caller["exe_sha256"], digest);
  }

  void ExpectDenied(const Answer& answer, const std::string& key = "guarded",
                    const std::string& operation = "encrypt") {
    EXPECT_EQ(answer.status, 403u);
    const json expected = {
        {"error",
         {{"code", "permission_denied"},
          {"message", "no rule grants " + operation + " on key '" + key + "'"}}}};
    EXPECT_EQ(answer.body, expected.dump()) << "a denial names the operation and key, and no rule";
  }

  gid_t socket_gid_ = 0;
  std::unique_ptr<TestUnit> scorer_unit_;
  std::unique_ptr<TestUnit> other_unit_;
  std::string no_units_why_;
  std::unique_ptr<SecuredDaemon> daemon_;
  std::string bin_;
  std::string digest_a_;
  std::string digest_b_;
};

// One condition wrong at a time; the first two rows are the controls that must be granted.
TEST_F(DenialMatrixTest, EveryCallerThatDiffersInOneConditionIsDeniedAndAudited) {
  const std::string copy = Install("copy-of-scorer", 'A');
  struct Row {
    const char* what;
    CallerIdentity who;
    std::string program;
    std::string unit;
    unsigned status;
    std::string key = "guarded";
    std::string operation = "encrypt";
  };
  const CallerIdentity scorer = Scorer();
  CallerIdentity wrong_uid = scorer;
  wrong_uid.uid = kOtherUid;
  CallerIdentity wrong_gid = scorer;
  wrong_gid.gid = kOtherGid;
  CallerIdentity wrong_gid_in_groups = wrong_gid;
  wrong_gid_in_groups.groups.push_back(kOtherGid);
  const Row rows[] = {
      {"control: the reviewed build as its account in its unit", scorer, bin_ + "/scorer",
       ScorerUnit(), 200},
      {"control: the same image at another path", scorer, copy, ScorerUnit(), 200},
      {"wrong uid", wrong_uid, bin_ + "/scorer", ScorerUnit(), 403},
      {"wrong group", wrong_gid_in_groups, bin_ + "/scorer", ScorerUnit(), 403},
      {"wrong exe digest", scorer, bin_ + "/impostor", ScorerUnit(), 403},
      {"a key the rule does not list", scorer, bin_ + "/scorer", ScorerUnit(), 403, "unlisted"},
      {"an operation the rule does not list", scorer, bin_ + "/scorer", ScorerUnit(), 403,
       "guarded", "decrypt"},
  };
  std::vector<Row> table(std::begin(rows), std::end(rows));
  if (other_unit_) {
    table.push_back(
        {"wrong unit", Scorer(other_unit_.get()), bin_ + "/scorer", other_unit_->name(), 403});
  } else {
    std::cout << "[ NOTE     ] no wrong-unit row: " << no_units_why_ << "\n";
  }
  size_t denied = 0;
  for (const Row& row : table) {
    SCOPED_TRACE(row.what);
    const CallerRun run = Request(row.who, row.program, {}, row.key + "/" + row.operation);
    const auto answers = ParseAnswers(run.output);
    ASSERT_EQ(answers.size(), 1u) << "exit " << run.exit_code << ", output: " << run.output;
    EXPECT_EQ(answers[0].status, row.status) << answers[0].body;
    if (row.status == 403) {
      ExpectDenied(answers[0], row.key, row.operation);
      ++denied;
    }
    ExpectAudited(answers[0], run.pid, row.who, row.unit, row.program, Sha256OfFile(row.program),
                  row.key, row.operation);
  }
  EXPECT_EQ(denied, table.size() - 2);
}

// The reviewed image run by its account, but told to load other code first (issue 17 row 6): the
// digest still matches, so only the environment check can deny it. The libraries named do not
// exist, so the loader skips them; what counts is that the caller asked for them.
TEST_F(DenialMatrixTest, ReviewedImageWithLoaderVariablesIsDeniedAndAudited) {
  const CallerIdentity scorer = Scorer();
  const std::string program = bin_ + "/scorer";
  for (const std::string variable : {"LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT"}) {
    SCOPED_TRACE(variable);
    const CallerRun run = Request(scorer, program, {}, "guarded/encrypt");
    const CallerRun loaded =
        RunAs(scorer, {program, "request", daemon_->socket_path(), "guarded/encrypt"},
              {variable + "=" + bin_ + "/missing/evil.so"});
    const auto control = ParseAnswers(run.output);
    const auto answers = ParseAnswers(loaded.output);
    ASSERT_EQ(control.size(), 1u) << run.output;
    ASSERT_EQ(answers.size(), 1u) << "exit " << loaded.exit_code << ", output: " << loaded.output;
    EXPECT_EQ(control[0].status, 200u) << "control: the same run without the variable";
    ExpectDenied(answers[0]);
    ExpectAudited(answers[0], loaded.pid, scorer, ScorerUnit(), program, digest_a_);
  }
}

// The daemon caches digests by file identity; a binary replaced on disk must not keep the old
// digest's grant, whether it is rewritten in place (same inode, same size) or renamed over.
TEST_F(DenialMatrixTest, ReplacedBinaryAtTheSamePathIsDenied) {
  const CallerIdentity scorer = Scorer();
  for (const bool in_place : {true, false}) {
    SCOPED_TRACE(in_place ? "rewritten in place" : "renamed over");
    const std::string path = Install(in_place ? "scorer-in-place" : "scorer-renamed", 'A');
    const CallerRun before = Request(scorer, path);
    const auto granted = ParseAnswers(before.output);
    ASSERT_EQ(granted.size(), 1u) << before.output;
    ASSERT_EQ(granted[0].status, 200u) << "the original build is granted: " << granted[0].body;

    if (in_place) {
      const std::string replacement = Variant('B');
      FILE* file = std::fopen(path.c_str(), "r+b");
      ASSERT_NE(file, nullptr);
      ASSERT_EQ(std::fwrite(replacement.data(), 1, replacement.size(), file), replacement.size());
      ASSERT_EQ(std::fclose(file), 0);
    } else {
      WriteFile(path + ".new", Variant('B'), 0755);
      ASSERT_EQ(std::rename((path + ".new").c_str(), path.c_str()), 0);
    }
    ASSERT_EQ(Sha256OfFile(path), digest_b_);
    const CallerRun after = Request(scorer, path);
    const auto answers = ParseAnswers(after.output);
    ASSERT_EQ(answers.size(), 1u) << after.output;
    ExpectDenied(answers[0]);
    ExpectAudited(answers[0], after.pid, scorer, ScorerUnit(), path, digest_b_);
  }
}

// Connect as the reviewed build, get an answer, exec another program that keeps the connection:
// its request on the same socket is judged as the new program.
TEST_F(DenialMatrixTest, ExecAfterConnectIsJudgedAsTheNewProgram) {
  const CallerIdentity scorer = Scorer();
  const std::string impostor = bin_ + "/impostor";
  const CallerRun run = Request(scorer, bin_ + "/scorer", {"--then-exec", impostor});
  const auto answers = ParseAnswers(run.output);
  ASSERT_EQ(answers.size(), 2u) << "exit " << run.exit_code << ", output: " << run.output;
  EXPECT_EQ(answers[0].status, 200u) << answers[0].body;
  ExpectAudited(answers[0], run.pid, scorer, ScorerUnit(), bin_ + "/scorer", digest_a_);
  ExpectDenied(answers[1]);
  ExpectAudited(answers[1], run.pid, scorer, ScorerUnit(), impostor, digest_b_);
}

// The uid is the one of connect(), even when the program exec'd afterwards is setuid to the
// uid the rule grants: otherwise anyone could borrow a setuid program's identity.
TEST_F(DenialMatrixTest, SetuidExecAfterConnectKeepsTheConnectTimeUid) {
  const std::string setuid_scorer = Install("scorer-setuid-to-the-granted-uid", 'A');
  ASSERT_EQ(chown(setuid_scorer.c_str(), kScorerUid, kScorerGid), 0);
  ASSERT_EQ(chmod(setuid_scorer.c_str(), 04755), 0);
  CallerIdentity borrower = Scorer();
  borrower.uid = kOtherUid;
  const CallerRun run = Request(borrower, bin_ + "/scorer", {"--then-exec", setuid_scorer});
  if (run.output.find("euid " + std::to_string(kScorerUid) + "\n") == std::string::npos) {
    GTEST_SKIP() << "the setuid exec did not raise the euid here (nosuid mount or no_new_privs): "
                 << run.output;
  }
  const auto answers = ParseAnswers(run.output);
  ASSERT_EQ(answers.size(), 2u) << run.output;
  ExpectDenied(answers[0]);
  ExpectDenied(answers[1]);
  ExpectAudited(answers[1], run.pid, borrower, ScorerUnit(), setuid_scorer, digest_a_);
}

// A caller learns from /v1/whoami which rules match it, never the others.
TEST_F(DenialMatrixTest, WhoAmIShowsACallerOnlyTheRulesThatMatchIt) {
  const std::vector<std::string> whoami = {bin_ + "/scorer", "whoami", daemon_->socket_path()};
  const auto granted = ParseAnswers(RunAs(Scorer(), whoami).output);
  ASSERT_EQ(granted.size(), 1u);
  const json grants = json::parse(granted[0].body)["grants"];
  ASSERT_EQ(grants.size(), 1u) << granted[0].body;
  EXPECT_EQ(grants[0]["rule"], "pinned-scorer");

  CallerIdentity wrong_uid = Scorer();
  wrong_uid.uid = kOtherUid;
  const auto denied = ParseAnswers(RunAs(wrong_uid, whoami).output);
  ASSERT_EQ(denied.size(), 1u);
  EXPECT_EQ(denied[0].status, 200u);
  const json body = json::parse(denied[0].body);
  EXPECT_EQ(body["grants"], json::array()) << denied[0].body;
  EXPECT_EQ(body.size(), 2u) << "the caller's identity and its grants, nothing else: " << body;
  EXPECT_EQ(body["identity"]["uid"], kOtherUid);
  EXPECT_EQ(denied[0].body.find("pinned-scorer"), std::string::npos);
}

// File mode 0660 and group nogroup: the kernel refuses connect() to everyone else, before the
// daemon sees anything.
TEST_F(DenialMatrixTest, SocketIsRefusedToAUidOutsideItsGroup) {
  struct stat st {};
  ASSERT_EQ(stat(daemon_->socket_path().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0660u);
  EXPECT_EQ(st.st_gid, socket_gid_);

  const std::vector<std::string> connect = {VECSEAL_SECURITY_CALLER, "connect",
                                            daemon_->socket_path()};
  const CallerRun member = RunAs(Scorer(), connect);
  EXPECT_EQ(member.output, "connected\n");
  EXPECT_EQ(member.exit_code, 0);
  const CallerIdentity outsider = {
      .uid = kOtherUid, .gid = kOtherGid, .groups = {}, .cgroup_dir = {}};
  const CallerRun refused = RunAs(outsider, connect);
  EXPECT_EQ(refused.output, "EACCES\n");
  EXPECT_EQ(refused.exit_code, 1);
  // The same uid is let in once it is a member through a supplementary group.
  CallerIdentity joined = outsider;
  joined.groups = {socket_gid_};
  EXPECT_EQ(RunAs(joined, connect).output, "connected\n");
}

}  // namespace
}  // namespace vecseal::security_testing
