// daemon::RunCheckPolicy: the work behind `vecseald --check-policy`.
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "check_policy.h"
#include "test_util.h"
#include "vecseal/policy/policy.h"

namespace vecseal::policy {
namespace {

using testing_util::Sha256OfFile;
using testing_util::TempDir;
using testing_util::WriteFile;

struct CheckRun {
  int status;
  std::string out;
  std::string err;
};

CheckRun Check(std::vector<std::string> args) {
  std::ostringstream out;
  std::ostringstream err;
  int status = daemon::RunCheckPolicy(args, out, err);
  return CheckRun{status, out.str(), err.str()};
}

class CheckPolicyTest : public testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_ / "policy.json";
    WriteFile(path_, R"({"version": 1, "rules": [
      {"id": "helpers", "callers": {"exe": ")" + std::string("/nonexistent/helper") + R"("},
       "keys": ["*"], "operations": ["encrypt"]},
      {"id": "me", "callers": {"uid": )" + std::to_string(geteuid()) + R"(},
       "keys": ["support-*"], "operations": ["encrypt", "decrypt"]}]})");
    if (!CheckTrustedFile(path_).ok()) GTEST_SKIP() << "the temp dir is itself untrusted";
  }
  TempDir dir_;
  std::string path_;
};

TEST_F(CheckPolicyTest, ValidFile) {
  CheckRun run = Check({path_});
  EXPECT_EQ(run.status, 0);
  EXPECT_EQ(run.out, "policy " + path_ + ": valid, 2 rules\n");
  EXPECT_EQ(run.err, "");
}

TEST_F(CheckPolicyTest, ListsBudgets) {
  WriteFile(path_, R"({"version": 1, "rules": [
    {"id": "test-env", "callers": {"uid": 1}, "keys": ["b-*"], "operations": ["encrypt", "decrypt"],
     "budgets": [{"operation": "encrypt", "vectors": 500, "per": "24h", "per_caller": "unit"},
                 {"operation": "decrypt", "vectors": 20, "per": "90m"}]}]})");
  CheckRun run = Check({path_});
  EXPECT_EQ(run.status, 0);
  EXPECT_EQ(run.out, "policy " + path_ + ": valid, 1 rule\n"
                     "budget: rule 'test-env': encrypt at most 500 vectors per 1d, for each key and "
                     "each unit\n"
                     "budget: rule 'test-env': decrypt at most 20 vectors per 90m, for each key\n");
}

TEST_F(CheckPolicyTest, InvalidFile) {
  WriteFile(path_, R"({"version": 1, "rules": [{"id": "x"}]})");
  CheckRun run = Check({path_});
  EXPECT_EQ(run.status, 1);
  EXPECT_EQ(run.err, "vecseald: " + path_ + ": /rules/0/callers: missing; every rule needs "
                     "\"callers\"\n");
}

TEST_F(CheckPolicyTest, UntrustedFile) {
  WriteFile(path_, R"({"version": 1, "rules": []})", 0666);
  CheckRun run = Check({path_});
  EXPECT_EQ(run.status, 1);
  EXPECT_EQ(run.err, "vecseald: " + path_ + " is writable by group or others (mode 0666); run: "
                     "chmod go-w " + path_ + "\n");
}

TEST_F(CheckPolicyTest, UsageErrors) {
  struct Case {
    std::vector<std::string> args;
    std::string problem;
  };
  const Case cases[] = {
      {{}, "missing the policy FILE"},
      {{path_, "--as-pid"}, "--as-pid needs a value"},
      {{path_, "--as-pid", "0"}, "--as-pid needs a positive PID"},
      {{path_, "--as-pid", "12x"}, "--as-pid needs a positive PID"},
      {{path_, "--as-uid", "0"}, "--as-uid and --exe go together"},
      {{path_, "--as-pid", "1", "--as-uid", "0", "--exe", "/bin/sh"},
       "give either --as-pid or --as-uid, not both"},
      {{path_, "--op", "encrypt"}, "--op needs a caller (--as-pid or --as-uid)"},
      {{path_, "--as-pid", "1", "--op", "sign"},
       "--op must be one of encrypt, decrypt, rewrap, keys.list, keys.create, keys.rotate, "
       "keys.config, keys.delete, audit.read"},
      {{path_, "--as-pid", "1", "--key", "k"}, "--key needs --op"},
      {{path_, "--verbose", "1"}, "unknown option '--verbose'"},
      {{path_, "--as-uid", "0", "--exe", "/bin/sh", "--unit", "ticket-scorer"},
       "--unit needs a systemd unit name such as ticket-scorer.service (a .service or .scope, as "
       "the daemon reads it from the caller's cgroup)"},
      {{path_, "--as-uid", "0", "--exe", "/bin/sh", "--unit", "system.slice/x.service"},
       "--unit needs a systemd unit name such as ticket-scorer.service (a .service or .scope, as "
       "the daemon reads it from the caller's cgroup)"},
      {{path_, "--as-uid", "0", "--exe", "/bin/sh", "--script", ""}, "--script needs a path"},
      {{path_, "--as-pid", "1", "--unit", "x.service"},
       "--unit and --script describe an --as-uid caller; --as-pid reads them from the process"},
      {{path_, "--as-pid", "1", "--script", "/x.py"},
       "--unit and --script describe an --as-uid caller; --as-pid reads them from the process"},
      {{path_, "--script", "/x.py"},
       "--unit and --script describe an --as-uid caller; --as-pid reads them from the process"},
      {{path_, "--as-pid", "1", "--op", "encrypt"}, "--op encrypt needs --key NAME"},
      {{path_, "--as-pid", "1", "--op", "keys.rotate"}, "--op keys.rotate needs --key NAME"},
      {{path_, "--as-pid", "1", "--op", "audit.read", "--key", "k"},
       "--op audit.read names no key; drop --key"},
  };
  for (const Case& c : cases) {
    CheckRun run = Check(c.args);
    EXPECT_EQ(run.status, 2) << c.problem;
    EXPECT_EQ(run.err, "vecseald: " + c.problem +
                           "\nusage: vecseald --check-policy FILE [--as-pid PID | --as-uid N "
                           "--exe PATH [--unit UNIT] [--script PATH]] [--op OPERATION --key "
                           "NAME]\n");
  }
}

TEST_F(CheckPolicyTest, AsPidExplainsEveryRuleAndDecides) {
  std::string self = std::to_string(getpid());
  CheckRun granted = Check({path_, "--as-pid", self, "--op", "decrypt", "--key", "support-x"});
  EXPECT_EQ(granted.status, 0) << granted.err;
  EXPECT_NE(granted.out.find("caller: pid " + self + ", uid " + std::to_string(geteuid())),
            std::string::npos)
      << granted.out;
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  ASSERT_GT(n, 0);
  std::string exe_path(exe, static_cast<size_t>(n));
  EXPECT_NE(granted.out.find("rule 'helpers': does not match: exe is '" + exe_path +
                             "', the rule wants '/nonexistent/helper'\n"),
            std::string::npos)
      << granted.out;
  EXPECT_NE(granted.out.find("rule 'me': matches: grants encrypt decrypt on support-*\n"),
            std::string::npos)
      << granted.out;
  EXPECT_NE(granted.out.find("decision: decrypt on key 'support-x' granted by rule 'me'\n"),
            std::string::npos);

  CheckRun denied = Check({path_, "--as-pid", self, "--op", "decrypt", "--key", "other"});
  EXPECT_EQ(denied.status, 3);
  EXPECT_NE(denied.out.find("decision: no rule grants decrypt on key 'other'\n"),
            std::string::npos);
}

TEST_F(CheckPolicyTest, AsUidWithExe) {
  CheckRun run = Check({path_, "--as-uid", "0", "--exe", "/proc/self/exe", "--op", "encrypt", "--key",
                   "support-1"});
  EXPECT_EQ(run.out.find("caller: pid 0, uid 0 (root), gid 0 (root)"),
            path_.size() + std::string("policy : valid, 2 rules\n").size())
      << run.out;
  EXPECT_EQ(run.status, geteuid() == 0 ? 0 : 3) << run.out << run.err;

  CheckRun unknown_user = Check({path_, "--as-uid", "4294967294", "--exe", "/bin/sh"});
  EXPECT_EQ(unknown_user.status, 1);
  EXPECT_EQ(unknown_user.err,
            "vecseald: uid 4294967294 has no passwd entry; give a uid that has one\n");
}

// A security team tests unit and script rules before a service exists: --unit and --script
// complete the synthesized caller, and the report reads exactly as for a live process.
TEST_F(CheckPolicyTest, AsUidWithUnitAndScriptDecidesUnitAndScriptRules) {
  if (access("/usr/bin/python3", X_OK) != 0) GTEST_SKIP() << "/usr/bin/python3 is not installed";
  const std::string dir = std::filesystem::canonical(dir_.path());
  const std::string python = std::filesystem::canonical("/usr/bin/python3");
  WriteFile(dir + "/export.py", "print('export')\n", 0644);
  WriteFile(dir + "/copy.py", "print('copy')\n", 0644);
  const std::string python_digest = Sha256OfFile(python);
  const std::string script_digest = Sha256OfFile(dir + "/export.py");
  WriteFile(path_, R"({"version": 1, "rules": [
    {"id": "scorer", "callers": {"uid": 0, "unit": "ticket-scorer.service"},
     "keys": ["support-*"], "operations": ["encrypt"]},
    {"id": "export", "callers": {"uid": 0, "script": ")" + dir + R"(/export.py",
     "script_sha256": ")" + script_digest + R"("},
     "keys": ["support-*"], "operations": ["decrypt"]}]})");

  // The caller line depends on root's groups on this machine; every other line is exact.
  const auto report = [&](const CheckRun& run, const std::string& unit, const std::string& script,
                          const std::string& digest, const std::string& rules) {
    const std::string head = "policy " + path_ + ": valid, 2 rules\n";
    const size_t caller_end = run.out.find('\n', head.size());
    const std::string caller = "caller: pid 0, uid 0 (root), gid 0 (root),";
    EXPECT_EQ(run.out.substr(head.size(), caller.size()), caller);
    return head + run.out.substr(head.size(), caller_end - head.size() + 1) + "  exe " + python +
           "\n  exe_sha256 " + python_digest + "\n  unit " + unit + "\n  script " +
           script + "\n  script_sha256 " + digest + "\n" + rules;
  };

  CheckRun both = Check({path_, "--as-uid", "0", "--exe", python, "--unit",
                         "ticket-scorer.service", "--script", dir + "/export.py", "--op",
                         "encrypt", "--key", "support-ratings"});
  EXPECT_EQ(both.err, "");
  EXPECT_EQ(both.status, 0);
  EXPECT_EQ(both.out, report(both, "ticket-scorer.service", dir + "/export.py", script_digest,
                             "rule 'scorer': matches: grants encrypt on support-*\n"
                             "rule 'export': matches: grants decrypt on support-*\n"
                             "decision: encrypt on key 'support-ratings' granted by rule "
                             "'scorer'\n"));

  CheckRun no_unit = Check({path_, "--as-uid", "0", "--exe", python, "--op",
                            "encrypt", "--key", "support-ratings"});
  EXPECT_EQ(no_unit.status, 3);
  EXPECT_EQ(no_unit.out,
            report(no_unit, "-", "-", "-",
                   "rule 'scorer': does not match: unit is unknown, the rule wants "
                   "'ticket-scorer.service'\n"
                   "rule 'export': does not match: script is unknown, the rule wants '" + dir +
                       "/export.py'\n"
                       "decision: no rule grants encrypt on key 'support-ratings'\n"));

  CheckRun other_unit = Check({path_, "--as-uid", "0", "--exe", python, "--unit",
                               "session-3.scope", "--script", dir + "/copy.py", "--op",
                               "decrypt", "--key", "support-ratings"});
  EXPECT_EQ(other_unit.status, 3);
  EXPECT_EQ(other_unit.out,
            report(other_unit, "session-3.scope", dir + "/copy.py",
                   Sha256OfFile(dir + "/copy.py"),
                   "rule 'scorer': does not match: unit is 'session-3.scope', the rule wants "
                   "'ticket-scorer.service'\n"
                   "rule 'export': does not match: script is '" + dir + "/copy.py', the rule "
                   "wants '" + dir + "/export.py'\n"
                   "decision: no rule grants decrypt on key 'support-ratings'\n"));
}

// --op keys.list answers what GET /v1/keys would: 403 without a keys.list grant, else a listing
// of exactly the keys on which the caller holds an operation (audit.read names no key).
TEST_F(CheckPolicyTest, KeysListDecidesLikeGetV1Keys) {
  const std::string me = std::to_string(geteuid());
  const std::string listers = R"(
    {"id": "support-listers", "callers": {"uid": )" + me + R"(},
     "keys": ["support-*"], "operations": ["keys.list"]},)";
  const std::string others = R"(
    {"id": "demo-user", "callers": {"uid": )" + me + R"(},
     "keys": ["demo"], "operations": ["encrypt"]},
    {"id": "auditors", "callers": {"uid": )" + me + R"(},
     "keys": ["*"], "operations": ["audit.read"]},
    {"id": "strangers", "callers": {"uid": 4294967294},
     "keys": ["*"], "operations": ["keys.list"]}]})";
  WriteFile(path_, R"({"version": 1, "rules": [)" + listers + others);
  const auto decide = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = {path_, "--as-uid", me, "--exe", "/bin/sh", "--op",
                                     "keys.list"};
    args.insert(args.end(), extra.begin(), extra.end());
    CheckRun run = Check(args);
    EXPECT_EQ(run.err, "");
    const size_t at = run.out.find("decision: ");
    return std::make_pair(run.status, at == std::string::npos ? run.out : run.out.substr(at));
  };
  EXPECT_EQ(decide({}), std::make_pair(0, std::string("decision: keys.list granted by rule "
                                                      "'support-listers'; it lists the keys "
                                                      "matching support-* demo\n")));
  EXPECT_EQ(decide({"--key", "support-ratings"}),
            std::make_pair(0, std::string("decision: keys.list granted by rule 'support-listers'; "
                                          "key 'support-ratings' is listed, through rule "
                                          "'support-listers'\n")));
  EXPECT_EQ(decide({"--key", "demo"}),
            std::make_pair(0, std::string("decision: keys.list granted by rule 'support-listers'; "
                                          "key 'demo' is listed, through rule 'demo-user'\n")));
  EXPECT_EQ(decide({"--key", "billing"}),
            std::make_pair(3, std::string("decision: keys.list granted by rule 'support-listers'; "
                                          "key 'billing' is not listed: no rule grants this "
                                          "caller an operation on it\n")));

  // Without the keys.list rule, an encrypt grant and audit.read on "*" list nothing: 403.
  WriteFile(path_, R"({"version": 1, "rules": [)" + others);
  const std::pair<int, std::string> denied = {3, "decision: no rule grants keys.list on any key\n"};
  EXPECT_EQ(decide({}), denied);
  EXPECT_EQ(decide({"--key", "demo"}), denied);
}

// A script the daemon would never report (no interpreter, not a regular file, unreadable to the
// caller) is refused, rather than shown as a caller that cannot exist.
TEST_F(CheckPolicyTest, ScriptsTheDaemonWouldNotIdentifyAreRefused) {
  if (access("/usr/bin/python3", X_OK) != 0) GTEST_SKIP() << "/usr/bin/python3 is not installed";
  const std::string dir = std::filesystem::canonical(dir_.path());
  const std::string python = "/usr/bin/python3";
  WriteFile(dir + "/python3", "#!/bin/true\n", 0755);  // named like one, but no interpreter
  WriteFile(dir + "/scorer", "#!/bin/true\n", 0755);
  WriteFile(dir + "/export.py", "print('export')\n", 0644);
  WriteFile(dir + "/private.py", "print('private')\n", 0600);
  ASSERT_EQ(mkfifo((dir + "/fifo").c_str(), 0644), 0);
  struct Case {
    std::string uid;
    std::string exe;
    std::string script;
    std::string error;
  };
  std::vector<Case> cases = {
      {"0", dir + "/scorer", dir + "/export.py",
       dir + "/scorer is not a recognised interpreter, so the daemon identifies no script for "
             "it; give /usr/bin/python3 as the executable"},
      {"0", dir + "/python3", dir + "/export.py",
       dir + "/python3 is not a recognised interpreter, so the daemon identifies no script for "
             "it; give /usr/bin/python3 as the executable"},
      {"0", python, dir + "/missing.py",
       "cannot open " + dir + "/missing.py: No such file or directory"},
      {"0", python, dir,
       dir + " is not a regular file; the daemon identifies only regular files as scripts"},
      {"0", python, dir + "/fifo",
       dir + "/fifo is not a regular file; the daemon identifies only regular files as scripts"},
  };
  if (const passwd* nobody = getpwnam("nobody"); nobody != nullptr && geteuid() == 0) {
    cases.push_back({std::to_string(nobody->pw_uid), python, dir + "/private.py",
                     "uid " + std::to_string(nobody->pw_uid) + " (nobody) may not read " + dir +
                         "/private.py (mode 0600), so the daemon would leave the script "
                         "unknown; make it readable to that user"});
  }
  for (const Case& c : cases) {
    CheckRun run = Check({path_, "--as-uid", c.uid, "--exe", c.exe, "--script", c.script});
    EXPECT_EQ(run.status, 1) << c.error;
    EXPECT_EQ(run.err, "vecseald: " + c.error + "\n");
  }
}

TEST_F(CheckPolicyTest, PathsCannotForgeReportLines) {
  // An executable named with a newline must not add a line of its choosing to the report.
  std::string exe = dir_ / "x\ndecision: forged";
  WriteFile(exe, "#!/bin/sh\n", 0755);
  CheckRun run = Check({path_, "--as-uid", "0", "--exe", exe});
  EXPECT_EQ(run.status, 0) << run.err;
  EXPECT_EQ(run.out.find("\ndecision: forged"), std::string::npos) << run.out;
  EXPECT_NE(run.out.find("  exe '" + dir_.path() + "/x\\x0adecision: forged'\n"), std::string::npos)
      << run.out;
}

}  // namespace
}  // namespace vecseal::policy
