// CheckTrustedFile and Policy::LoadFile against real files, modes and owners.
#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include <gtest/gtest.h>

#include "test_util.h"
#include "vecseal/policy/policy.h"

namespace vecseal::policy {
namespace {

using testing_util::TempDir;
using testing_util::WriteFile;

constexpr char kPolicy[] = R"({"version": 1, "rules": [
  {"id": "r", "callers": {"uid": 0}, "keys": ["*"], "operations": ["encrypt"]}]})";

class TrustedFileTest : public testing::Test {
 protected:
  void SetUp() override {
    // The temp dir's own ancestors must pass, or no case below can.
    WriteFile(dir_ / "probe", "x");
    Status base = CheckTrustedFile(dir_ / "probe");
    if (!base.ok()) GTEST_SKIP() << "the temp dir is itself untrusted: " << base.message();
  }
  TempDir dir_;
};

TEST_F(TrustedFileTest, AcceptsRootOwnedReadOnlyForOthers) {
  WriteFile(dir_ / "policy.json", kPolicy, 0644);
  EXPECT_TRUE(CheckTrustedFile(dir_ / "policy.json").ok());
  WriteFile(dir_ / "private.json", kPolicy, 0600);
  EXPECT_TRUE(CheckTrustedFile(dir_ / "private.json").ok());
}

TEST_F(TrustedFileTest, RejectsGroupOrWorldWritableFile) {
  for (mode_t mode : {0664, 0646, 0666}) {
    std::string path = dir_ / "policy.json";
    WriteFile(path, kPolicy, mode);
    Status status = CheckTrustedFile(path);
    char octal[8];
    snprintf(octal, sizeof octal, "%04o", mode);
    EXPECT_EQ(status.code(), Code::kPermissionDenied);
    EXPECT_EQ(status.reason(), "file_untrusted");
    EXPECT_EQ(status.message(), path + " is writable by group or others (mode " + octal +
                                    "); run: chmod go-w " + path);
  }
}

TEST_F(TrustedFileTest, RejectsWritableParentDirectory) {
  std::string sub = dir_ / "etc";
  ASSERT_EQ(mkdir(sub.c_str(), 0755), 0);
  ASSERT_EQ(chmod(sub.c_str(), 0777), 0);
  WriteFile(sub + "/policy.json", kPolicy);
  Status status = CheckTrustedFile(sub + "/policy.json");
  EXPECT_EQ(status.reason(), "file_untrusted");
  EXPECT_EQ(status.message(),
            sub + " is writable by group or others (mode 0777); run: chmod go-w " + sub);
}

TEST_F(TrustedFileTest, AcceptsStickyWritableParentLikeTmp) {
  std::string sub = dir_ / "tmp";
  ASSERT_EQ(mkdir(sub.c_str(), 0755), 0);
  ASSERT_EQ(chmod(sub.c_str(), 01777), 0);
  WriteFile(sub + "/policy.json", kPolicy);
  EXPECT_TRUE(CheckTrustedFile(sub + "/policy.json").ok());
}

TEST_F(TrustedFileTest, RejectsForeignOwner) {
  if (geteuid() != 0) GTEST_SKIP() << "chown to another uid needs root";
  std::string path = dir_ / "policy.json";
  WriteFile(path, kPolicy);
  ASSERT_EQ(chown(path.c_str(), 4321, 0), 0);
  Status status = CheckTrustedFile(path);
  EXPECT_EQ(status.reason(), "file_untrusted");
  EXPECT_EQ(status.message(),
            path + " is owned by uid 4321, not by root; run: chown root " + path);

  std::string sub = dir_ / "owned";
  ASSERT_EQ(mkdir(sub.c_str(), 0755), 0);
  ASSERT_EQ(chown(sub.c_str(), 4321, 4321), 0);
  WriteFile(sub + "/policy.json", kPolicy);
  status = CheckTrustedFile(sub + "/policy.json");
  EXPECT_EQ(status.message(), sub + " is owned by uid 4321, not by root; run: chown root " + sub);
}

// Whoever owns a link decides where it points: a link of another user's, anywhere on the way
// (here the second of a chain), is refused even when every target is trusted.
TEST_F(TrustedFileTest, RejectsASymlinkOwnedByAnotherUser) {
  if (geteuid() != 0) GTEST_SKIP() << "lchown to another uid needs root";
  std::string path = dir_ / "policy.json";
  WriteFile(path, kPolicy);
  const std::string second = dir_ / "second";
  const std::string first = dir_ / "first";
  ASSERT_EQ(symlink(path.c_str(), second.c_str()), 0);
  ASSERT_EQ(symlink(second.c_str(), first.c_str()), 0);
  EXPECT_TRUE(CheckTrustedFile(first).ok());
  ASSERT_EQ(lchown(second.c_str(), 4321, 4321), 0);
  Status status = CheckTrustedFile(first);
  EXPECT_EQ(status.reason(), "file_untrusted");
  EXPECT_EQ(status.message(), second + " is a symlink owned by uid 4321, who decides where it "
                                       "points; use a path without it, or chown -h root " + second);
  EXPECT_EQ(CheckSymlinkOwners(first).message(), status.message());
}

// The socket's directory and --dev's state: whoever may write a directory above could rename
// it away and put their own in its place. Sticky directories above (like /tmp) are fine.
TEST_F(TrustedFileTest, TrustedDirectoryChecksEveryDirectoryAbove) {
  const std::string above = dir_ / "above";
  const std::string run = above + "/run";
  ASSERT_EQ(mkdir(above.c_str(), 0755), 0);
  ASSERT_EQ(mkdir(run.c_str(), 0700), 0);
  EXPECT_TRUE(CheckTrustedDirectory(run).ok());
  ASSERT_EQ(chmod(above.c_str(), 0777), 0);
  Status status = CheckTrustedDirectory(run);
  EXPECT_EQ(status.reason(), "file_untrusted");
  EXPECT_EQ(status.message(),
            above + " is writable by group or others (mode 0777); run: chmod go-w " + above);
  ASSERT_EQ(chmod(above.c_str(), 01777), 0);
  EXPECT_TRUE(CheckTrustedDirectory(run).ok()) << "a sticky directory above is fine";
}

// A link of root's in a directory others may write is as good as theirs: they can replace it.
TEST_F(TrustedFileTest, RejectsASymlinkInADirectoryOthersMayWrite) {
  std::string path = dir_ / "policy.json";
  WriteFile(path, kPolicy);
  const std::string open_dir = dir_ / "open";
  ASSERT_EQ(mkdir(open_dir.c_str(), 0755), 0);
  ASSERT_EQ(chmod(open_dir.c_str(), 0777), 0);
  const std::string link = open_dir + "/link.json";
  ASSERT_EQ(symlink(path.c_str(), link.c_str()), 0);
  Status status = CheckTrustedFile(link);
  EXPECT_EQ(status.reason(), "file_untrusted");
  EXPECT_EQ(status.message(), open_dir + " is writable by group or others (mode 0777); run: "
                                         "chmod go-w " + open_dir);
}

TEST_F(TrustedFileTest, FollowsSymlinksAndChecksTheTarget) {
  std::string bad = dir_ / "bad";
  ASSERT_EQ(mkdir(bad.c_str(), 0755), 0);
  ASSERT_EQ(chmod(bad.c_str(), 0777), 0);
  WriteFile(bad + "/real.json", kPolicy);
  ASSERT_EQ(symlink((bad + "/real.json").c_str(), (dir_ / "policy.json").c_str()), 0);
  Status status = CheckTrustedFile(dir_ / "policy.json");
  EXPECT_EQ(status.message(),
            bad + " is writable by group or others (mode 0777); run: chmod go-w " + bad);
}

TEST_F(TrustedFileTest, MissingAndNonRegular) {
  Status missing = CheckTrustedFile(dir_ / "absent.json");
  EXPECT_EQ(missing.code(), Code::kNotFound);
  EXPECT_EQ(missing.reason(), "file_unreadable");
  EXPECT_EQ(missing.message(),
            "cannot resolve " + (dir_ / "absent.json") + ": No such file or directory");
  Status directory = CheckTrustedFile(dir_.path());
  EXPECT_EQ(directory.reason(), "file_untrusted");
  EXPECT_EQ(directory.message(),
            dir_.path() + " is not a regular file; point the path at a regular file");
}

TEST_F(TrustedFileTest, LoadFileChecksTrustThenParses) {
  std::string path = dir_ / "policy.json";
  WriteFile(path, kPolicy);
  Result<PolicyPtr> policy = Policy::LoadFile(path);
  ASSERT_TRUE(policy.ok()) << policy.status().ToString();
  EXPECT_EQ((*policy)->rule_count(), 1u);

  WriteFile(path, kPolicy, 0666);
  EXPECT_EQ(Policy::LoadFile(path).status().reason(), "file_untrusted");

  WriteFile(path, R"({"version": 1, "rules": 5})");
  Result<PolicyPtr> invalid = Policy::LoadFile(path);
  EXPECT_EQ(invalid.status().reason(), "policy_invalid");
  EXPECT_EQ(invalid.status().message(), path + ": /rules: expected a list of rules");

  WriteFile(path, std::string((1 << 20) + 1, ' '));
  EXPECT_EQ(Policy::LoadFile(path).status().reason(), "policy_too_large");

  EXPECT_EQ(Policy::LoadFile(dir_ / "absent.json").status().code(), Code::kNotFound);
}

}  // namespace
}  // namespace vecseal::policy
