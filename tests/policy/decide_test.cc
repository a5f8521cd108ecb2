// Policy::Decide, GrantsFor and Explain over identities built in the test (no processes).
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "policy_internal.h"
#include "vecseal/policy/policy.h"

namespace vecseal::policy {
namespace {

const std::string kDigestA(64, 'a');
const std::string kDigestB(64, 'b');

PolicyPtr MustParse(const std::string& json) {
  Result<PolicyPtr> policy = Policy::Parse(json);
  EXPECT_TRUE(policy.ok()) << policy.status().ToString();
  return policy.ok() ? std::move(policy).value() : Policy::AllowUser(4294967294u);
}

PolicyPtr TestPolicy() {
  return MustParse(R"({"version": 1, "rules": [
    {"id": "scorer", "callers": {"unit": "ticket-scorer.service", "exe_sha256": ")" + kDigestA +
                   R"("}, "keys": ["support-ratings"], "operations": ["encrypt"]},
    {"id": "export", "callers": {"user": "etl", "script": "/opt/etl/export.py"},
     "keys": ["support-*"], "operations": ["encrypt"]},
    {"id": "admins", "callers": {"group": "vecseal-admin"},
     "keys": ["*"], "operations": ["keys.list", "keys.create", "keys.rotate"]},
    {"id": "uids", "callers": {"uid": [1001, 1002], "gid": 50},
     "keys": ["model-?"], "operations": ["decrypt"]},
    {"id": "auditors", "callers": {"user": ["alice", "bob"]},
     "keys": ["*"], "operations": ["audit.read"]}
  ]})");
}

CallerIdentity Scorer() {
  CallerIdentity id;
  id.pid = 10;
  id.uid = 900;
  id.gid = 900;
  id.user = "scorer";
  id.group = "scorer";
  id.exe = "/usr/bin/scorer";
  id.exe_sha256 = kDigestA;
  id.unit = "ticket-scorer.service";
  return id;
}

CallerIdentity Etl() {
  CallerIdentity id;
  id.uid = 1000;
  id.gid = 1000;
  id.user = "etl";
  id.group = "etl";
  id.exe = "/usr/bin/python3.11";
  id.script = "/opt/etl/export.py";
  return id;
}

CallerIdentity Admin(bool primary) {
  CallerIdentity id;
  id.uid = 1003;
  id.user = "carol";
  if (primary) {
    id.gid = 60;
    id.group = "vecseal-admin";
  } else {
    id.gid = 1003;
    id.group = "carol";
    id.supplementary_gids = {27, 60};
    id.group_names = {"sudo", "vecseal-admin"};
  }
  return id;
}

struct DecideCase {
  std::string name;
  CallerIdentity caller;
  Operation op;
  std::string key;
  std::string granted_by;  // empty: denied
};

void PrintTo(const DecideCase& c, std::ostream* os) { *os << c.name; }

class DecideTest : public testing::TestWithParam<DecideCase> {};

TEST_P(DecideTest, FirstMatchingRuleGrants) {
  const DecideCase& c = GetParam();
  Decision decision = TestPolicy()->Decide(c.caller, c.op, c.key);
  EXPECT_EQ(decision.granted, !c.granted_by.empty());
  EXPECT_EQ(decision.rule_id, c.granted_by);
}

CallerIdentity With(CallerIdentity id, void (*change)(CallerIdentity&)) {
  change(id);
  return id;
}

INSTANTIATE_TEST_SUITE_P(
    Table, DecideTest,
    testing::Values(
        DecideCase{"ScorerEncrypts", Scorer(), Operation::kEncrypt, "support-ratings", "scorer"},
        DecideCase{"ScorerOtherKey", Scorer(), Operation::kEncrypt, "support-other", ""},
        DecideCase{"ScorerCannotDecrypt", Scorer(), Operation::kDecrypt, "support-ratings", ""},
        DecideCase{"ScorerWrongDigest",
                   With(Scorer(), [](CallerIdentity& id) { id.exe_sha256 = kDigestB; }),
                   Operation::kEncrypt, "support-ratings", ""},
        DecideCase{"ScorerUnknownDigest",
                   With(Scorer(), [](CallerIdentity& id) { id.exe_sha256.clear(); }),
                   Operation::kEncrypt, "support-ratings", ""},
        DecideCase{"ScorerOutsideUnit",
                   With(Scorer(), [](CallerIdentity& id) { id.unit = "session-2.scope"; }),
                   Operation::kEncrypt, "support-ratings", ""},
        DecideCase{"EtlGlob", Etl(), Operation::kEncrypt, "support-ratings", "export"},
        DecideCase{"EtlGlobOtherKey", Etl(), Operation::kEncrypt, "support-tickets", "export"},
        DecideCase{"EtlGlobNeedsPrefix", Etl(), Operation::kEncrypt, "x-support-tickets", ""},
        DecideCase{"EtlOtherScript",
                   With(Etl(), [](CallerIdentity& id) { id.script = "/tmp/export.py"; }),
                   Operation::kEncrypt, "support-ratings", ""},
        DecideCase{"EtlNoScript", With(Etl(), [](CallerIdentity& id) { id.script.clear(); }),
                   Operation::kEncrypt, "support-ratings", ""},
        DecideCase{"OtherUserSameScript",
                   With(Etl(), [](CallerIdentity& id) { id.user = "etl2"; }),
                   Operation::kEncrypt, "support-ratings", ""},
        DecideCase{"AdminByPrimaryGroup", Admin(true), Operation::kKeysCreate, "new-key",
                   "admins"},
        DecideCase{"AdminBySupplementaryGroup", Admin(false), Operation::kKeysRotate, "k",
                   "admins"},
        DecideCase{"AdminListsAllKeys", Admin(false), Operation::kKeysList, "", "admins"},
        DecideCase{"AdminCannotEncrypt", Admin(false), Operation::kEncrypt, "k", ""},
        DecideCase{"UidListAndGid",
                   With(CallerIdentity{}, [](CallerIdentity& id) { id.uid = 1002; id.gid = 50; }),
                   Operation::kDecrypt, "model-1", "uids"},
        DecideCase{"GidBySupplementary",
                   With(CallerIdentity{},
                        [](CallerIdentity& id) {
                          id.uid = 1001;
                          id.gid = 1001;
                          id.supplementary_gids = {50};
                          id.group_names = {""};
                        }),
                   Operation::kDecrypt, "model-2", "uids"},
        DecideCase{"UidWithoutGid",
                   With(CallerIdentity{}, [](CallerIdentity& id) { id.uid = 1001; id.gid = 1; }),
                   Operation::kDecrypt, "model-1", ""},
        DecideCase{"QuestionMarkIsOneChar",
                   With(CallerIdentity{}, [](CallerIdentity& id) { id.uid = 1001; id.gid = 50; }),
                   Operation::kDecrypt, "model-10", ""},
        DecideCase{"AuditorAlice",
                   With(CallerIdentity{}, [](CallerIdentity& id) { id.user = "alice"; }),
                   Operation::kAuditRead, "", "auditors"},
        DecideCase{"AuditorEve",
                   With(CallerIdentity{}, [](CallerIdentity& id) { id.user = "eve"; }),
                   Operation::kAuditRead, "", ""},
        DecideCase{"RootIsNotSpecial", CallerIdentity{}, Operation::kEncrypt, "support-ratings",
                   ""}),
    [](const testing::TestParamInfo<DecideCase>& param) { return param.param.name; });

TEST(DecideOrderTest, FirstMatchWinsAndIsRecorded) {
  PolicyPtr policy = MustParse(R"({"version": 1, "rules": [
    {"id": "narrow", "callers": {"user": "etl"}, "keys": ["a"], "operations": ["encrypt"]},
    {"id": "broad", "callers": {"user": "etl"}, "keys": ["*"], "operations": ["encrypt"]}]})");
  EXPECT_EQ(policy->Decide(Etl(), Operation::kEncrypt, "a").rule_id, "narrow");
  EXPECT_EQ(policy->Decide(Etl(), Operation::kEncrypt, "b").rule_id, "broad");
}

TEST(DecideOrderTest, EmptyNamesNeverMatchEvenIfListed) {
  // A caller whose user has no passwd entry has user ""; no rule can name "" (rejected at
  // parse), so it cannot match a user condition by accident.
  PolicyPtr policy = MustParse(R"({"version": 1, "rules": [
    {"id": "r", "callers": {"group": "etl"}, "keys": ["*"], "operations": ["encrypt"]}]})");
  CallerIdentity nameless;
  nameless.supplementary_gids = {5};
  nameless.group_names = {""};
  EXPECT_FALSE(policy->Decide(nameless, Operation::kEncrypt, "k").granted);
}

TEST(GrantsForTest, ListsMatchingRulesInOrder) {
  nlohmann::json grants = TestPolicy()->GrantsFor(Admin(false));
  EXPECT_EQ(grants, nlohmann::json::parse(R"([{"rule": "admins", "keys": ["*"],
      "operations": ["keys.list", "keys.create", "keys.rotate"]}])"));
  EXPECT_EQ(TestPolicy()->GrantsFor(CallerIdentity{}), nlohmann::json::array());
  EXPECT_TRUE(TestPolicy()->GrantsAny(Admin(false), Operation::kKeysList));
  EXPECT_FALSE(TestPolicy()->GrantsAny(Admin(false), Operation::kEncrypt));
}

TEST(ExplainTest, SaysWhichConditionFailed) {
  CallerIdentity caller = Etl();
  caller.unit = "session-3.scope";
  caller.supplementary_gids = {1000, 27};
  caller.group_names = {"etl", "sudo"};
  std::vector<RuleExplanation> explained = TestPolicy()->Explain(caller);
  ASSERT_EQ(explained.size(), 5u);
  EXPECT_EQ(explained[0].rule_id, "scorer");
  EXPECT_FALSE(explained[0].caller_matches);
  // nlohmann orders object fields by name: exe_sha256 is checked before unit.
  EXPECT_EQ(explained[0].why_not, "exe_sha256 is unknown, the rule wants '" + kDigestA + "'");
  EXPECT_TRUE(explained[1].caller_matches);
  EXPECT_EQ(explained[1].why_not, "");
  EXPECT_EQ(explained[2].why_not, "groups are 'etl' or 'sudo', the rule wants 'vecseal-admin'");
  EXPECT_EQ(explained[3].why_not, "gids are 1000 or 27, the rule wants 50");
  EXPECT_EQ(explained[4].why_not, "user is 'etl', the rule wants one of 'alice' or 'bob'");
}

TEST(GlobTest, Table) {
  struct Case {
    const char* pattern;
    const char* name;
    bool match;
  };
  const Case cases[] = {
      {"*", "", true},          {"*", "abc", true},        {"a*", "a", true},
      {"a*", "ba", false},      {"*a", "ba", true},        {"a*c", "abbbc", true},
      {"a*c", "abbbd", false},  {"a?c", "abc", true},      {"a?c", "ac", false},
      {"?", "", false},         {"a*b*c", "axbxc", true},  {"a*b*c", "axcxb", false},
      {"abc", "abc", true},     {"abc", "abcd", false},    {"**", "x", true},
      {"support-*", "support-", true},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(internal::GlobMatch(c.pattern, c.name), c.match) << c.pattern << " vs " << c.name;
  }
  // Many stars against a long non-matching name must finish (no exponential backtracking).
  EXPECT_FALSE(internal::GlobMatch("*a*a*a*a*a*a*a*a*a*a*b", std::string(64, 'a')));
}

TEST(CallerIdentityTest, ToJsonHasEveryFieldAndNullsForUnknown) {
  CallerIdentity id = Admin(false);
  id.pid = 42;
  id.exe = "/usr/bin/x";
  id.exe_sha256_unknown = "not_needed";
  nlohmann::json json = id.ToJson();
  EXPECT_EQ(json, nlohmann::json::parse(R"({"pid": 42, "uid": 1003, "user": "carol",
      "gid": 1003, "group": "carol",
      "groups": [{"gid": 27, "name": "sudo"}, {"gid": 60, "name": "vecseal-admin"}],
      "exe": "/usr/bin/x", "exe_sha256": null, "exe_sha256_unknown": "not_needed",
      "unit": null, "script": null, "script_sha256": null, "script_sha256_unknown": null,
      "code_unproven": null, "script_refused": null})"));
}

}  // namespace
}  // namespace vecseal::policy
