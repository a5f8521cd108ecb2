// Policy::Parse: what is accepted, and the exact message for each way a file can be wrong.
#include <string>

#include <gtest/gtest.h>

#include "vecseal/policy/policy.h"

namespace vecseal::policy {
namespace {

// A valid rule to build bad documents around.
constexpr char kRule[] =
    R"({"id": "r", "callers": {"user": "etl"}, "keys": ["k"], "operations": ["encrypt"]})";

std::string WithRule(const std::string& rule) {
  return R"({"version": 1, "rules": [)" + std::string(kRule) + ", " + rule + "]}";
}

struct BadCase {
  std::string name;
  std::string json;
  std::string message;
};

void PrintTo(const BadCase& c, std::ostream* os) { *os << c.name; }

class BadPolicyTest : public testing::TestWithParam<BadCase> {};

TEST_P(BadPolicyTest, RejectedWithPathAndFix) {
  Result<PolicyPtr> policy = Policy::Parse(GetParam().json);
  ASSERT_FALSE(policy.ok());
  EXPECT_EQ(policy.status().code(), Code::kInvalidArgument);
  EXPECT_EQ(policy.status().reason(), "policy_invalid");
  EXPECT_EQ(policy.status().message(), GetParam().message);
}

INSTANTIATE_TEST_SUITE_P(
    Table, BadPolicyTest,
    testing::Values(
        BadCase{"NotJson", "{",
                "/: not valid JSON: parse error at line 1, column 2: syntax error while parsing "
                "object key - unexpected end of input; expected string literal"},
        BadCase{"TrailingGarbage", R"({"version": 1, "rules": []} x)",
                "/: not valid JSON: parse error at line 1, column 29: syntax error while parsing "
                "value - invalid literal; last read: '\"rules\": []} x'; expected end of input"},
        BadCase{"NotObject", "[]", "/: expected an object with \"version\" and \"rules\""},
        BadCase{"UnknownTopField", R"({"version": 1, "rules": [], "default": "allow"})",
                "/default: unknown field; a policy has only \"version\" and \"rules\""},
        BadCase{"MissingVersion", R"({"rules": []})", "/version: missing; add \"version\": 1"},
        BadCase{"VersionString", R"({"version": "1", "rules": []})",
                "/version: expected the integer 1"},
        BadCase{"VersionFloat", R"({"version": 1.0, "rules": []})",
                "/version: expected the integer 1"},
        BadCase{"VersionTwo", R"({"version": 2, "rules": []})",
                "/version: unsupported version 2; this vecseal reads version 1"},
        BadCase{"MissingRules", R"({"version": 1})",
                "/rules: missing; add a list of rules (an empty list denies everything)"},
        BadCase{"RulesObject", R"({"version": 1, "rules": {}})",
                "/rules: expected a list of rules"},
        BadCase{"RuleNotObject", WithRule("3"),
                "/rules/1: expected a rule object with \"id\", \"callers\", \"keys\" and "
                "\"operations\""},
        BadCase{"UnknownRuleField",
                WithRule(R"({"id": "x", "caller": {}, "keys": ["k"], "operations": ["encrypt"]})"),
                "/rules/1/caller: unknown field; a rule has only \"id\", \"callers\", \"keys\", "
                "\"operations\" and \"budgets\""},
        BadCase{"MissingId", WithRule(R"({"callers": {"uid": 1}, "keys": ["k"],
                                          "operations": ["encrypt"]})"),
                "/rules/1/id: missing; every rule needs \"id\""},
        BadCase{"MissingOperations", WithRule(R"({"id": "x", "callers": {"uid": 1},
                                                  "keys": ["k"]})"),
                "/rules/1/operations: missing; every rule needs \"operations\""},
        BadCase{"IdNotString", WithRule(R"({"id": 7, "callers": {"uid": 1}, "keys": ["k"],
                                            "operations": ["encrypt"]})"),
                "/rules/1/id: expected a string"},
        BadCase{"IdWithSpace", WithRule(R"({"id": "a b", "callers": {"uid": 1}, "keys": ["k"],
                                            "operations": ["encrypt"]})"),
                "/rules/1/id: invalid rule id 'a b'; use 1 to 64 letters, digits, '.', '_' or "
                "'-'"},
        BadCase{"DuplicateId", WithRule(R"({"id": "r", "callers": {"uid": 1}, "keys": ["k"],
                                            "operations": ["encrypt"]})"),
                "/rules/1/id: duplicate rule id 'r' (also /rules/0/id); give each rule its own "
                "id"},
        BadCase{"CallersList", WithRule(R"({"id": "x", "callers": [{"uid": 1}], "keys": ["k"],
                                            "operations": ["encrypt"]})"),
                "/rules/1/callers: expected an object of caller conditions (user, uid, group, "
                "gid, unit, exe, exe_sha256, script, script_sha256)"},
        BadCase{"EmptyCallers", WithRule(R"({"id": "x", "callers": {}, "keys": ["k"],
                                             "operations": ["encrypt"]})"),
                "/rules/1/callers: no conditions, which would match every caller; add at least "
                "one of user, uid, group, gid, unit, exe, exe_sha256, script, script_sha256"},
        BadCase{"UnknownCondition", WithRule(R"({"id": "x", "callers": {"username": "a"},
                                                 "keys": ["k"], "operations": ["encrypt"]})"),
                "/rules/1/callers/username: unknown condition; use user, uid, group, gid, unit, "
                "exe, exe_sha256, script, script_sha256"},
        BadCase{"UidString", WithRule(R"({"id": "x", "callers": {"uid": "1000"}, "keys": ["k"],
                                          "operations": ["encrypt"]})"),
                "/rules/1/callers/uid: expected an integer or a list of integers"},
        BadCase{"UidListOfStrings", WithRule(R"({"id": "x", "callers": {"uid": [0, "1"]},
                                                 "keys": ["k"], "operations": ["encrypt"]})"),
                "/rules/1/callers/uid/1: expected an integer"},
        BadCase{"UidNegative", WithRule(R"({"id": "x", "callers": {"uid": -1}, "keys": ["k"],
                                            "operations": ["encrypt"]})"),
                "/rules/1/callers/uid: -1 is not a valid uid; use 0 to 4294967294"},
        BadCase{"GidReserved", WithRule(R"({"id": "x", "callers": {"gid": 4294967295},
                                            "keys": ["k"], "operations": ["encrypt"]})"),
                "/rules/1/callers/gid: 4294967295 is not a valid gid; use 0 to 4294967294"},
        BadCase{"UserNumber", WithRule(R"({"id": "x", "callers": {"user": 1000}, "keys": ["k"],
                                           "operations": ["encrypt"]})"),
                "/rules/1/callers/user: expected a string or a list of strings"},
        BadCase{"EmptyList", WithRule(R"({"id": "x", "callers": {"group": []}, "keys": ["k"],
                                          "operations": ["encrypt"]})"),
                "/rules/1/callers/group: empty list; give at least one value or remove the "
                "condition"},
        BadCase{"EmptyString", WithRule(R"({"id": "x", "callers": {"unit": ""}, "keys": ["k"],
                                            "operations": ["encrypt"]})"),
                "/rules/1/callers/unit: empty string; give a value"},
        BadCase{"ShortDigest", WithRule(R"({"id": "x", "callers": {"exe_sha256": "9f2c"},
                                            "keys": ["k"], "operations": ["encrypt"]})"),
                "/rules/1/callers/exe_sha256: expected 64 hex digits, as printed by sha256sum"},
        BadCase{"RelativeExe", WithRule(R"({"id": "x", "callers": {"exe": "bin/python3"},
                                            "keys": ["k"], "operations": ["encrypt"]})"),
                "/rules/1/callers/exe: expected an absolute path, as printed by realpath"},
        BadCase{"RelativeScriptInList",
                WithRule(R"({"id": "x", "callers": {"script": ["/a.py", "b.py"]}, "keys": ["k"],
                             "operations": ["encrypt"]})"),
                "/rules/1/callers/script/1: expected an absolute path, as printed by realpath"},
        BadCase{"DuplicateCondition",
                WithRule(R"({"id": "x", "callers": {"user": "a", "user": "root"}, "keys": ["k"],
                             "operations": ["encrypt"]})"),
                "/rules/1/callers: field 'user' appears twice; keep one"},
        BadCase{"DuplicateTopField", R"({"version": 1, "rules": [], "rules": []})",
                "/: field 'rules' appears twice; keep one"},
        BadCase{"KeysString", WithRule(R"({"id": "x", "callers": {"uid": 1}, "keys": "k",
                                           "operations": ["encrypt"]})"),
                "/rules/1/keys: expected a list of key names or patterns, such as "
                "[\"support-*\"]"},
        BadCase{"KeysEmpty", WithRule(R"({"id": "x", "callers": {"uid": 1}, "keys": [],
                                          "operations": ["encrypt"]})"),
                "/rules/1/keys: empty list; list at least one key name or pattern (\"*\" for all "
                "keys)"},
        BadCase{"BadGlobBracket", WithRule(R"({"id": "x", "callers": {"uid": 1},
                                               "keys": ["k", "support-[ab]"],
                                               "operations": ["encrypt"]})"),
                "/rules/1/keys/1: invalid key pattern 'support-[ab]'; key names use a-z, 0-9, "
                "'.', '_' and '-', and patterns add only '*' and '?'"},
        BadCase{"BadGlobUpperCase", WithRule(R"({"id": "x", "callers": {"uid": 1},
                                                 "keys": ["Support-*"],
                                                 "operations": ["encrypt"]})"),
                "/rules/1/keys/0: invalid key pattern 'Support-*'; key names use a-z, 0-9, '.', "
                "'_' and '-', and patterns add only '*' and '?'"},
        BadCase{"BadGlobEmpty", WithRule(R"({"id": "x", "callers": {"uid": 1}, "keys": [""],
                                             "operations": ["encrypt"]})"),
                "/rules/1/keys/0: invalid key pattern ''; key names use a-z, 0-9, '.', '_' and "
                "'-', and patterns add only '*' and '?'"},
        BadCase{"OperationUnknown", WithRule(R"({"id": "x", "callers": {"uid": 1}, "keys": ["k"],
                                                 "operations": ["encrypt", "sign"]})"),
                "/rules/1/operations/1: unknown operation 'sign'; use encrypt, decrypt, "
                "rewrap, keys.list, keys.create, keys.rotate, keys.config, keys.delete or "
                "audit.read"},
        BadCase{"OperationsEmpty", WithRule(R"({"id": "x", "callers": {"uid": 1}, "keys": ["k"],
                                                "operations": []})"),
                "/rules/1/operations: empty list; list at least one of encrypt, decrypt, "
                "rewrap, keys.list, keys.create, keys.rotate, keys.config, keys.delete or "
                "audit.read"},
        BadCase{"ControlCharsEscaped", WithRule(R"({"id": "x", "callers": {"uid": 1},
                                                    "keys": ["k\u001b[31m"],
                                                    "operations": ["encrypt"]})"),
                "/rules/1/keys/0: invalid key pattern 'k\\x1b[31m'; key names use a-z, 0-9, "
                "'.', '_' and '-', and patterns add only '*' and '?'"},
        BadCase{"SlashInFieldName", R"({"version": 1, "a/b~c": 1, "rules": []})",
                "/a~1b~0c: unknown field; a policy has only \"version\" and \"rules\""}),
    [](const testing::TestParamInfo<BadCase>& param) { return param.param.name; });

TEST(PolicyParseTest, DeepNestingIsRejectedNotRecursedInto) {
  std::string deep = R"({"version": 1, "rules": [)" + std::string(100, '[') +
                     std::string(100, ']') + "]}";
  Result<PolicyPtr> policy = Policy::Parse(deep);
  ASSERT_FALSE(policy.ok());
  EXPECT_EQ(policy.status().message(), "/rules/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0: nested too deeply");
}

TEST(PolicyParseTest, TooLargeIsRejected) {
  std::string huge = R"({"version": 1, "rules": [], "pad": ")" + std::string(1 << 20, 'x') + "\"}";
  Result<PolicyPtr> policy = Policy::Parse(huge);
  ASSERT_FALSE(policy.ok());
  EXPECT_EQ(policy.status().reason(), "policy_too_large");
  EXPECT_EQ(policy.status().code(), Code::kResourceExhausted);
}

TEST(PolicyParseTest, IssueExampleParses) {
  Result<PolicyPtr> policy = Policy::Parse(R"({ "version": 1,
    "rules": [
      { "id": "ticket-scorer",
        "callers": { "unit": "ticket-scorer.service",
                     "exe_sha256": "9F2C000000000000000000000000000000000000000000000000000000000000" },
        "keys": ["support-ratings"], "operations": ["encrypt"] },
      { "id": "nightly-export",
        "callers": { "user": "etl", "script": "/opt/etl/export.py" },
        "keys": ["support-*"], "operations": ["encrypt"] },
      { "id": "security-admins",
        "callers": { "group": "vecseal-admin" },
        "keys": ["*"], "operations": ["keys.list", "keys.create", "keys.rotate"] } ] })");
  ASSERT_TRUE(policy.ok()) << policy.status().ToString();
  EXPECT_EQ((*policy)->rule_count(), 3u);
}

TEST(PolicyParseTest, EmptyRuleListDeniesEverything) {
  Result<PolicyPtr> policy = Policy::Parse(R"({"version": 1, "rules": []})");
  ASSERT_TRUE(policy.ok());
  CallerIdentity root;
  root.user = "root";
  EXPECT_FALSE((*policy)->Decide(root, Operation::kEncrypt, "k").granted);
}

TEST(PolicyParseTest, OperationNamesRoundTrip) {
  for (Operation op : {Operation::kEncrypt, Operation::kDecrypt, Operation::kKeysList,
                       Operation::kKeysCreate, Operation::kKeysRotate, Operation::kAuditRead,
                       Operation::kKeysConfig, Operation::kKeysDelete, Operation::kRewrap}) {
    Operation parsed;
    ASSERT_TRUE(ParseOperation(OperationName(op), &parsed)) << OperationName(op);
    EXPECT_EQ(parsed, op);
  }
  Operation unused;
  EXPECT_FALSE(ParseOperation("Encrypt", &unused));
  EXPECT_FALSE(ParseOperation("", &unused));
}

TEST(PolicyParseTest, LifecycleOperationsParseByName) {
  Result<PolicyPtr> policy = Policy::Parse(R"({"version": 1, "rules": [
      { "id": "admins", "callers": { "uid": 7 }, "keys": ["*"],
        "operations": ["keys.config", "keys.delete"] },
      { "id": "rewrapper", "callers": { "uid": 8 }, "keys": ["support-*"],
        "operations": ["rewrap"] } ] })");
  ASSERT_TRUE(policy.ok()) << policy.status().ToString();
  CallerIdentity admin;
  admin.uid = 7;
  EXPECT_TRUE((*policy)->Decide(admin, Operation::kKeysDelete, "x").granted);
  EXPECT_TRUE((*policy)->Decide(admin, Operation::kKeysConfig, "x").granted);
  EXPECT_FALSE((*policy)->Decide(admin, Operation::kRewrap, "support-a").granted);
  CallerIdentity rewrapper;
  rewrapper.uid = 8;
  EXPECT_TRUE((*policy)->Decide(rewrapper, Operation::kRewrap, "support-a").granted);
  EXPECT_FALSE((*policy)->Decide(rewrapper, Operation::kDecrypt, "support-a").granted);
  // A rewrap grant shows the key in the caller's listing, as any grant on a key does.
  EXPECT_TRUE((*policy)->DecideListed(rewrapper, "support-a").granted);
}

TEST(PolicyParseTest, RulesNamingSkipsTheCatchAll) {
  Result<PolicyPtr> policy = Policy::Parse(R"({"version": 1, "rules": [
      { "id": "admins", "callers": { "uid": 7 }, "keys": ["*"], "operations": ["keys.delete"] },
      { "id": "scorer", "callers": { "uid": 8 }, "keys": ["support-ratings"],
        "operations": ["encrypt"] },
      { "id": "support", "callers": { "uid": 9 }, "keys": ["billing", "support-*"],
        "operations": ["decrypt"] } ] })");
  ASSERT_TRUE(policy.ok()) << policy.status().ToString();
  EXPECT_EQ((*policy)->RulesNaming("support-ratings"),
            (std::vector<std::string>{"scorer", "support"}));
  EXPECT_EQ((*policy)->RulesNaming("billing"), std::vector<std::string>{"support"});
  EXPECT_TRUE((*policy)->RulesNaming("search").empty());
}

TEST(PolicyParseTest, AllowUserGrantsOnlyThatUid) {
  PolicyPtr policy = Policy::AllowUser(1234);
  CallerIdentity caller;
  caller.uid = 1234;
  for (Operation op : {Operation::kEncrypt, Operation::kDecrypt, Operation::kKeysList,
                       Operation::kKeysCreate, Operation::kKeysRotate, Operation::kAuditRead,
                       Operation::kKeysConfig, Operation::kKeysDelete, Operation::kRewrap}) {
    Decision decision = policy->Decide(caller, op, "demo");
    EXPECT_TRUE(decision.granted) << OperationName(op);
    EXPECT_EQ(decision.rule_id, "dev-user-1234");
  }
  caller.uid = 1235;
  EXPECT_FALSE(policy->Decide(caller, Operation::kEncrypt, "demo").granted);
  // The JSON the daemon writes to DIR/policy.json parses to the same thing.
  Result<PolicyPtr> reparsed = Policy::Parse(Policy::AllowUserJson(1234));
  ASSERT_TRUE(reparsed.ok());
  caller.uid = 1234;
  EXPECT_TRUE((*reparsed)->Decide(caller, Operation::kAuditRead, "").granted);
}

}  // namespace
}  // namespace vecseal::policy
