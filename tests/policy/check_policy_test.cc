// RunCheckPolicy: the work behind `vecseald --check-policy`.
#include <unistd.h>

#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "test_util.h"
#include "vecseal/policy/policy.h"

namespace vecseal::policy {
namespace {

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
  int status = RunCheckPolicy(args, out, err);
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
       "--op must be one of encrypt, decrypt, keys.list, keys.create, keys.rotate, audit.read"},
      {{path_, "--as-pid", "1", "--key", "k"}, "--key needs --op"},
      {{path_, "--verbose", "1"}, "unknown option '--verbose'"},
  };
  for (const Case& c : cases) {
    CheckRun run = Check(c.args);
    EXPECT_EQ(run.status, 2) << c.problem;
    EXPECT_EQ(run.err, "vecseald: " + c.problem +
                           "\nusage: vecseald --check-policy FILE [--as-pid PID | --as-uid N "
                           "--exe PATH] [--op OPERATION --key NAME]\n");
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
