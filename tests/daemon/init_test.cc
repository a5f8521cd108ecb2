// `vecseald --init` against a real SoftHSM2 token in a temp dir, through Main() so that the
// command line, the exit status and the printed report are what an operator meets.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "softhsm_fixture.h"
#include "vecseal/daemon/daemon.h"

namespace vecseal::daemon {
namespace {

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream content;
  content << in.rdbuf();
  return content.str();
}

// `openssl pkey -pubin -outform DER | sha256sum`: the fingerprint as an auditor computes it.
std::string OpensslFingerprint(const std::string& pem_path) {
  const std::string command =
      "openssl pkey -pubin -in '" + pem_path + "' -outform DER | sha256sum";
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return "";
  char buffer[128] = {};
  const size_t n = fread(buffer, 1, sizeof(buffer) - 1, pipe);
  pclose(pipe);
  return "sha256:" + std::string(buffer, n).substr(0, 64);
}

class InitTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::string why = testing::SoftHsmUnavailableReason(); !why.empty()) GTEST_SKIP() << why;
    auto token = testing::SoftHsmToken::Create();
    ASSERT_TRUE(token.ok()) << token.status().ToString();
    token_ = std::move(token).value();
    dir_ = token_->dir();
    audit_dir_ = dir_ + "/audit";
    std::filesystem::create_directory(audit_dir_);
    pem_ = dir_ + "/audit-key.pem";
    auto policy = token_->WriteFile("policy.json", R"({"version": 1, "rules": []})", 0644);
    ASSERT_TRUE(policy.ok());
    WriteConfig(token_->label());
  }

  // `audit_pkcs11`: the JSON of audit.pkcs11, or empty for none.
  void WriteConfig(const std::string& token_label, const std::string& audit_pkcs11 = "") {
    const std::string config = R"({
      "socket": {"path": ")" + dir_ + R"(/vecseald.sock"},
      "pkcs11": {"token_label": ")" + token_label + R"(", "pin": {"file": ")" +
                               token_->pin_file() + R"("}},
      "policy": {"file": ")" + dir_ + R"(/policy.json"},
      "audit": {"directory": ")" + audit_dir_ + "\"" +
                               (audit_pkcs11.empty() ? "" : ", \"pkcs11\": " + audit_pkcs11) +
                               "}}";
    auto written = token_->WriteFile("vecseald.json", config, 0600);
    ASSERT_TRUE(written.ok());
    config_ = *written;
  }

  // Runs `vecseald ARGS...` in-process; returns the exit status and fills `out`.
  int Run(std::vector<std::string> args, std::string* out) {
    ::testing::internal::CaptureStdout();
    ::testing::internal::CaptureStderr();
    const int status = Main(args);
    *out = ::testing::internal::GetCapturedStdout() + ::testing::internal::GetCapturedStderr();
    return status;
  }

  int Init(std::string* out) {
    return Run({"--init", "--config", config_, "--export-audit-key", pem_}, out);
  }

  std::unique_ptr<testing::SoftHsmToken> token_;
  std::string dir_, audit_dir_, pem_, config_;
};

TEST_F(InitTest, FirstRunCreatesAndExportsTheAuditKeyAndSecondRunChangesNothing) {
  std::string out;
  ASSERT_EQ(Init(&out), 0) << out;
  const std::string fingerprint = OpensslFingerprint(pem_);
  ASSERT_EQ(fingerprint.size(), 7u + 64u);
  EXPECT_NE(out.find("  config      ok\n"), std::string::npos) << out;
  EXPECT_NE(out.find("  policy      ok: " + dir_ + "/policy.json (0 rules: every request is "
                     "denied)\n"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("  token       ok: \"vecseal-test\" in /usr/lib/softhsm/libsofthsm2.so, "
                     "logged in\n"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("  mechanisms  ok: AES-256 generation, AES-ECB (format v2 keys), EC P-256, "
                     "ECDSA\n"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("  audit key   created: \"vecseal-audit\" " + fingerprint + "\n"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("  public key  written: " + pem_ + "\n"), std::string::npos) << out;
  EXPECT_NE(out.find("  audit log   ok: " + audit_dir_ + " is writable\n"), std::string::npos)
      << out;
  EXPECT_NE(out.find("Ready. Next steps:"), std::string::npos) << out;
  struct stat st {};
  ASSERT_EQ(stat(pem_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0644u) << "a public key, readable by auditors";
  const std::string pem = ReadAll(pem_);
  EXPECT_TRUE(pem.starts_with("-----BEGIN PUBLIC KEY-----\n")) << pem;

  ASSERT_EQ(Init(&out), 0) << out;
  EXPECT_NE(out.find("  audit key   found: \"vecseal-audit\" " + fingerprint + "\n"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("  public key  unchanged: " + pem_ + "\n"), std::string::npos) << out;
  EXPECT_EQ(ReadAll(pem_), pem);
}

TEST_F(InitTest, NeverOverwritesAnExportedKeyThatDiffers) {
  const std::string other = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n"
                            "-----END PUBLIC KEY-----\n";
  {
    std::ofstream(pem_) << other;
  }
  std::string out;
  EXPECT_EQ(Init(&out), 1) << out;
  EXPECT_NE(out.find("  public key  FAILED: " + pem_ +
                     " holds a different public key; logs sealed by that key still need it, so "
                     "move it aside (keep it) and run --init again [audit_key_export_conflict]"),
            std::string::npos)
      << out;
  EXPECT_EQ(ReadAll(pem_), other);
  EXPECT_NE(out.find("Not ready"), std::string::npos) << out;
}

// A directory the user running --init may not write (here /sys, which refuses new files even to
// root): the failure says so, and how to go on.
TEST_F(InitTest, AnExportPathItMayNotWriteSaysWhatToDo) {
  std::string out;
  EXPECT_EQ(Run({"--init", "--config", config_, "--export-audit-key", "/sys/audit-key.pem"}, &out),
            1)
      << out;
  EXPECT_NE(out.find("  public key  FAILED: cannot create /sys/audit-key.pem.tmp: Permission "
                     "denied; uid " + std::to_string(geteuid()) +
                     " may not write there: give --export-audit-key a path it may write (then "
                     "install the file where auditors look for it), or run --init as root "
                     "[audit_key_export_failed]"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("(docs/operations.md, \"What each failure means\")"), std::string::npos)
      << out;
}

TEST_F(InitTest, EachFailedCheckIsNamedAndExitsOne) {
  std::string out;
  WriteConfig("no-such-token");
  std::filesystem::remove(audit_dir_);
  EXPECT_EQ(Init(&out), 1) << out;
  EXPECT_NE(out.find("  token       FAILED: no token labelled \"no-such-token\""),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("[token_not_found]"), std::string::npos) << out;
  EXPECT_NE(out.find("  audit log   FAILED: audit directory " + audit_dir_ + " does not exist"),
            std::string::npos)
      << out;
  EXPECT_FALSE(std::filesystem::exists(pem_)) << "nothing exported without a token";
  EXPECT_EQ(out.find("Ready."), std::string::npos) << out;
}

TEST_F(InitTest, ConfigErrorStopsAtOnceAndUsageErrorsExitTwo) {
  std::string out;
  const std::string typo = R"({"pkcs11": {"pin": {"file": "/etc/vecseal/pin"}, "tokn": 1}})";
  ASSERT_TRUE(token_->WriteFile("vecseald.json", typo, 0600).ok());
  EXPECT_EQ(Init(&out), 1) << out;
  EXPECT_NE(out.find("  config      FAILED: " + config_ + ": $.pkcs11.tokn"), std::string::npos)
      << out;
  EXPECT_EQ(out.find("  token "), std::string::npos) << "no token check on a bad config";

  EXPECT_EQ(Run({"--export-audit-key", pem_}, &out), 2) << out;
  EXPECT_NE(out.find("--export-audit-key is only meaningful with --init"), std::string::npos);
  EXPECT_EQ(Run({"--init", "--dev"}, &out), 2) << out;
}

// audit.pkcs11: the audit key is created on its own token, and the model keys' token gets none.
TEST_F(InitTest, CreatesTheAuditKeyOnItsOwnTokenWhenConfigured) {
  auto audit_pin = token_->AddToken(
      {.label = "vecseal-audit", .user_pin = "audit-user-2468", .so_pin = "audit-so-1357"});
  ASSERT_TRUE(audit_pin.ok()) << audit_pin.status().ToString();
  const std::string audit_token =
      R"({"token_label": "vecseal-audit", "pin": {"file": ")" + *audit_pin + R"("}})";
  WriteConfig(token_->label(), audit_token);
  std::string out;
  ASSERT_EQ(Init(&out), 0) << out;
  const std::string fingerprint = OpensslFingerprint(pem_);
  EXPECT_NE(out.find("  token       ok: \"vecseal-test\" in /usr/lib/softhsm/libsofthsm2.so, "
                     "logged in\n"),
            std::string::npos)
      << out;
  const std::string audit_token_line =
      "ok: \"vecseal-audit\" in /usr/lib/softhsm/libsofthsm2.so, logged in";
  EXPECT_NE(out.find("  audit token " + audit_token_line + "\n"), std::string::npos) << out;
  EXPECT_NE(ReadAll(VECSEAL_SOURCE_DIR "/docs/operations.md")
                .find("an `audit token` line follows the\nmechanisms (`" + audit_token_line + "`)"),
            std::string::npos)
      << "docs/operations.md shows the line as --init prints it";
  EXPECT_NE(out.find("  audit key   created: \"vecseal-audit\" " + fingerprint + "\n"),
            std::string::npos)
      << out;

  {
    pkcs11::HsmConfig audit = token_->Config();
    audit.token_label = "vecseal-audit";
    audit.pin.file = *audit_pin;
    auto audit_hsm = pkcs11::Hsm::Open(audit);
    ASSERT_TRUE(audit_hsm.ok()) << audit_hsm.status().ToString();
    auto found = (*audit_hsm)->EnsureAuditKey();
    ASSERT_TRUE(found.ok()) << found.status().ToString();
    EXPECT_FALSE(found->generated()) << "--init made the pair on the audit token";
    EXPECT_EQ(found->PublicKeyPem(), ReadAll(pem_));
  }

  // A wrong audit PIN fails that check alone, naming audit.pkcs11.pin. (Only now that this
  // process holds no session on the token: a login that is still open would make any PIN pass.)
  ASSERT_TRUE(token_->WriteFile("vecseal-audit.pin", "wrong-audit-pin\n").ok());
  EXPECT_EQ(Init(&out), 1) << out;
  EXPECT_NE(out.find("  audit token FAILED: audit.pkcs11.pin (the audit key's token): login to "
                     "token \"vecseal-audit\" failed: the PIN is wrong (CKR_PIN_INCORRECT); "
                     "check the PIN in PIN file " + *audit_pin),
            std::string::npos)
      << out;
  EXPECT_EQ(out.find("  audit key "), std::string::npos) << out;
  EXPECT_EQ(out.find("wrong-audit-pin"), std::string::npos) << "the PIN is never printed";
}

// docs/operations.md shows the report of a first run: every line of it, with the paths and the
// fingerprint of this run substituted, is a line of a real first run.
TEST_F(InitTest, OperationsGuideShowsTheRealReport) {
  const std::string doc = ReadAll(VECSEAL_SOURCE_DIR "/docs/operations.md");
  const std::string marker = "<!-- init-output -->\n```text\n";
  const size_t start = doc.find(marker);
  ASSERT_NE(start, std::string::npos) << "docs/operations.md lost its init report";
  const size_t body = start + marker.size();
  std::string shown = doc.substr(body, doc.find("```", body) - body);
  std::string out;
  ASSERT_EQ(Init(&out), 0) << out;
  const auto replace = [](std::string& text, const std::string& from, const std::string& to) {
    for (size_t at = text.find(from); at != std::string::npos;
         at = text.find(from, at + to.size())) {
      text.replace(at, from.size(), to);
    }
  };
  replace(shown, "/etc/vecseal/vecseald.json", config_);
  replace(shown, "/etc/vecseal/policy.json", dir_ + "/policy.json");
  replace(shown, "\"vecseal\" in", "\"vecseal-test\" in");
  replace(shown, "/var/lib/vecseal/audit-key.pem", pem_);
  replace(shown, "/var/log/vecseal", audit_dir_);
  std::istringstream lines(shown);
  for (std::string line; std::getline(lines, line);) {
    // The fingerprint differs per key: the doc abbreviates it with an ellipsis.
    const size_t fingerprint = line.find("sha256:");
    const std::string stem =
        fingerprint == std::string::npos ? line : line.substr(0, fingerprint + 7);
    EXPECT_NE(out.find(stem), std::string::npos) << "doc line not in the real report: " << line
                                                 << "\n" << out;
  }
}

}  // namespace
}  // namespace vecseal::daemon
