// Config and policy files that someone other than root could have written are refused, at start
// (the daemon exits 1 and says which path and the command that fixes it) and at SIGHUP (the
// running policy stays, the refusal is logged and audited). The checks themselves are unit
// tested in tests/policy/trusted_file_test.cc; here it is the daemon that must apply them.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <functional>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "support/dev_daemon.h"
#include "support/secured_daemon.h"
#include "test_util.h"

namespace vecseal::security_testing {
namespace {

using nlohmann::json;

constexpr uid_t kStranger = 64105;

json GrantEncrypt(bool granted) {
  json rules = json::array(
      {{{"id", "test-admin"},
        {"callers",
         {{"uid", 0}, {"exe_sha256", policy::testing_util::Sha256OfFile("/proc/self/exe")}}},
        {"keys", {"*"}},
        {"operations", {"keys.create"}}}});
  if (granted) {
    rules.push_back({{"id", "test-encrypt"},
                     {"callers", {{"uid", 0}}},
                     {"keys", {"*"}},
                     {"operations", {"encrypt"}}});
  }
  return {{"version", 1}, {"rules", rules}};
}

// A loosening of one file, and the exact sentence the daemon must answer it with.
struct Loosening {
  const char* what;
  std::function<std::string(const SecuredDaemon&)> path;  // the file or directory loosened
  mode_t mode;       // 0: leave the mode, give the file to kStranger instead
  const char* says;  // after the path
};

const Loosening kLoosenings[] = {
    {"group-writable config", [](const SecuredDaemon& d) { return d.config_path(); }, 0664,
     " is writable by group or others (mode 0664); run: chmod go-w "},
    {"world-writable config", [](const SecuredDaemon& d) { return d.config_path(); }, 0646,
     " is writable by group or others (mode 0646); run: chmod go-w "},
    {"config owned by another user", [](const SecuredDaemon& d) { return d.config_path(); }, 0,
     " is owned by uid 64105, not by root; run: chown root "},
    {"group-writable policy", [](const SecuredDaemon& d) { return d.policy_path(); }, 0620,
     " is writable by group or others (mode 0620); run: chmod go-w "},
    {"world-writable policy", [](const SecuredDaemon& d) { return d.policy_path(); }, 0666,
     " is writable by group or others (mode 0666); run: chmod go-w "},
    {"policy owned by another user", [](const SecuredDaemon& d) { return d.policy_path(); }, 0,
     " is owned by uid 64105, not by root; run: chown root "},
    {"writable directory above both", [](const SecuredDaemon& d) { return d.root() + "/etc"; },
     0775, " is writable by group or others (mode 0775); run: chmod go-w "},
};

class FileTrustTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root: files are given to another uid";
    if (auto reason = testing::SoftHsmUnavailableReason(); !reason.empty()) GTEST_SKIP() << reason;
    std::string error;
    daemon_ = SecuredDaemon::Prepare({.policy_json = GrantEncrypt(true).dump(), .socket_group = {}},
                                     &error);
    ASSERT_TRUE(daemon_) << error;
  }

  // Applies `loosening`, runs `check`, and restores the file.
  void WithLoosened(const Loosening& loosening,
                    const std::function<void(const std::string&)>& check) {
    const std::string path = loosening.path(*daemon_);
    struct stat before {};
    ASSERT_EQ(stat(path.c_str(), &before), 0);
    if (loosening.mode != 0) {
      ASSERT_EQ(chmod(path.c_str(), loosening.mode), 0);
    } else {
      ASSERT_EQ(chown(path.c_str(), kStranger, static_cast<gid_t>(-1)), 0);
    }
    check(path);
    ASSERT_EQ(chmod(path.c_str(), before.st_mode & 07777), 0);
    ASSERT_EQ(chown(path.c_str(), before.st_uid, before.st_gid), 0);
  }

  std::unique_ptr<SecuredDaemon> daemon_;
};

TEST_F(FileTrustTest, LooseConfigOrPolicyStopsTheStart) {
  for (const Loosening& loosening : kLoosenings) {
    SCOPED_TRACE(loosening.what);
    WithLoosened(loosening, [&](const std::string& path) {
      std::string error;
      ASSERT_FALSE(daemon_->Start(&error)) << "started with a loosened file";
      EXPECT_EQ(daemon_->exit_status(), 1);
      const std::string sentence = path + loosening.says + path;
      EXPECT_NE(daemon_->Log().find("vecseald: " + sentence + "\n"), std::string::npos)
          << daemon_->Log();
      struct stat st {};
      EXPECT_NE(stat(daemon_->socket_path().c_str(), &st), 0) << "no socket is left listening";
    });
  }
  // Control: the very same files, tightened again, start.
  std::string error;
  ASSERT_TRUE(daemon_->Start(&error)) << error;
}

// Issue #17 row 13: in a directory others may write, sticky or not (like /tmp), another user
// binds the socket path first and receives the callers' plaintext. The daemon refuses to start.
TEST_F(FileTrustTest, SocketDirectoryOthersCanWriteStopsTheStart) {
  const std::string run = daemon_->root() + "/run";
  for (mode_t mode : {mode_t{01777}, mode_t{0775}}) {
    SCOPED_TRACE(mode);
    ASSERT_EQ(chmod(run.c_str(), mode), 0);
    std::string error;
    ASSERT_FALSE(daemon_->Start(&error)) << "started with its socket in a shared directory";
    EXPECT_EQ(daemon_->exit_status(), 1);
    EXPECT_NE(daemon_->Log().find("the socket directory " + run +
                                  " is writable by group or others, so another user could bind "
                                  "the socket path first; chmod go-w " + run),
              std::string::npos)
        << daemon_->Log();
  }
  ASSERT_EQ(chmod(run.c_str(), 0755), 0);
  ASSERT_EQ(chown(run.c_str(), kStranger, static_cast<gid_t>(-1)), 0);
  std::string error;
  ASSERT_FALSE(daemon_->Start(&error)) << "started with its socket in another user's directory";
  EXPECT_NE(daemon_->Log().find("the socket directory " + run + " belongs to uid 64105"),
            std::string::npos)
      << daemon_->Log();
  ASSERT_EQ(chown(run.c_str(), 0, static_cast<gid_t>(-1)), 0);
  ASSERT_TRUE(daemon_->Start(&error)) << error;
}

// Issue #17 row 14: a policy reached through a symlink that another user owns passed, since
// only the target was checked; that user could repoint it at any file of root's.
TEST_F(FileTrustTest, PolicyThroughAnotherUsersSymlinkStopsTheStart) {
  const std::string link = daemon_->policy_path();
  const std::string real = link + ".real";
  ASSERT_EQ(rename(link.c_str(), real.c_str()), 0);
  ASSERT_EQ(symlink(real.c_str(), link.c_str()), 0);
  ASSERT_EQ(lchown(link.c_str(), kStranger, static_cast<gid_t>(-1)), 0);
  std::string error;
  ASSERT_FALSE(daemon_->Start(&error)) << "started with its policy behind another user's link";
  EXPECT_EQ(daemon_->exit_status(), 1);
  EXPECT_NE(daemon_->Log().find(link + " is a symlink owned by uid 64105, who decides where it "
                                       "points; use a path without it, or chown -h root " + link),
            std::string::npos)
      << daemon_->Log();
  ASSERT_EQ(lchown(link.c_str(), 0, static_cast<gid_t>(-1)), 0);
  ASSERT_TRUE(daemon_->Start(&error)) << "the same link, owned by root, is fine: " << error;
}

// The same row: `vecseald --dev --state-dir LINK` through another user's link wrote the dev
// state, PIN files included, wherever that user pointed it.
TEST_F(FileTrustTest, DevStateDirThroughAnotherUsersSymlinkIsRefused) {
  const std::string target = daemon_->root() + "/dev-state";
  const std::string link = daemon_->root() + "/dev-link";
  ASSERT_EQ(mkdir(target.c_str(), 0700), 0);
  ASSERT_EQ(symlink(target.c_str(), link.c_str()), 0);
  ASSERT_EQ(lchown(link.c_str(), kStranger, static_cast<gid_t>(-1)), 0);
  const std::string command = std::string(VECSEALD_PATH) + " --dev --state-dir " + link + " 2>&1";
  std::string output;
  FILE* pipe = popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  char buffer[512];
  while (size_t n = fread(buffer, 1, sizeof buffer, pipe)) output.append(buffer, n);
  const int status = pclose(pipe);
  EXPECT_NE(status, 0) << output;
  EXPECT_NE(output.find(link + " is a symlink owned by uid 64105, who decides where it points"),
            std::string::npos)
      << output;
  struct stat st {};
  EXPECT_NE(stat((target + "/hsm-pin").c_str(), &st), 0) << "nothing was written through it";
}

TEST_F(FileTrustTest, LooseFilesAtReloadKeepTheRunningPolicy) {
  std::string error;
  ASSERT_TRUE(daemon_->Start(&error)) << error;
  daemon::testing::HttpClient client(daemon_->socket_path());
  ASSERT_EQ(client.PostJson("/v1/keys", {{"name", "held"}, {"approximation_factor", 2.5}}).status,
            201u);
  const json request = {{"vectors", {{0.5, 0.25}}}};
  ASSERT_EQ(client.PostJson("/v1/keys/held/encrypt", request).status, 200u);
  // What a reload would install if it were trusted: no grant to encrypt.
  policy::testing_util::WriteFile(daemon_->policy_path(), GrantEncrypt(false).dump(), 0644);

  size_t refusals = 0;
  for (const Loosening& loosening : kLoosenings) {
    SCOPED_TRACE(loosening.what);
    WithLoosened(loosening, [&](const std::string& path) {
      const size_t log_before = daemon_->Log().size();
      ASSERT_TRUE(daemon_->Reload(&error)) << error;
      ++refusals;
      const std::string line = "level=error event=reload_failed reason=file_untrusted message=\"" +
                               path + loosening.says + path + "\" kept=previous\n";
      EXPECT_NE(daemon_->Log().find(line, log_before), std::string::npos) << daemon_->Log();
      const auto still = client.PostJson("/v1/keys/held/encrypt", request);
      EXPECT_EQ(still.status, 200u) << "the old policy stays: " << still.body;
    });
  }
  size_t audited = 0;
  for (const auto& record : daemon_->AuditRecords()) {
    if (record.value("event", "") == "reload" &&
        record.value("error_code", "") == "file_untrusted") {
      ++audited;
    }
  }
  EXPECT_EQ(audited, refusals) << "every refused reload is in the audit log";

  // Control: the same new policy, trusted, does apply.
  ASSERT_TRUE(daemon_->Reload(&error)) << error;
  EXPECT_NE(daemon_->Log().find("event=reloaded"), std::string::npos) << daemon_->Log();
  const auto denied = client.PostJson("/v1/keys/held/encrypt", request);
  EXPECT_EQ(denied.status, 403u) << denied.body;
}

}  // namespace
}  // namespace vecseal::security_testing
