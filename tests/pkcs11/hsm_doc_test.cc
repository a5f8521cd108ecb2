// Runs the commands of docs/hsm.md and checks that the token they set up works with Hsm.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "softhsm_fixture.h"
#include "vecseal/pkcs11/hsm.h"

namespace vecseal::pkcs11 {
namespace {

std::string ReadDoc() {
  std::ifstream in(VECSEAL_HSM_DOC);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// The bodies of the fenced blocks in `doc` whose info string is `language`.
std::vector<std::string> Blocks(const std::string& doc, const std::string& language) {
  std::vector<std::string> blocks;
  std::istringstream lines(doc);
  std::string line, current;
  bool inside = false;
  while (std::getline(lines, line)) {
    if (!inside && line == "```" + language) {
      inside = true;
      current.clear();
    } else if (inside && line == "```") {
      inside = false;
      blocks.push_back(current);
    } else if (inside) {
      current += line + "\n";
    }
  }
  return blocks;
}

class HsmDocTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string reason = testing::SoftHsmUnavailableReason();
    if (!reason.empty()) GTEST_SKIP() << reason;
    std::string pattern = std::filesystem::temp_directory_path() / "vecseal-hsmdoc-XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    root_ = pattern;
    std::filesystem::create_directories(root_ + "/etc");
    std::filesystem::create_directories(root_ + "/state");
  }
  void TearDown() override {
    unsetenv("SOFTHSM2_CONF");
    unsetenv("CREDENTIALS_DIRECTORY");
    if (!root_.empty()) std::filesystem::remove_all(root_);
  }
  std::string root_;
};

TEST_F(HsmDocTest, CommandsSetUpAWorkingToken) {
  const std::string doc = ReadDoc();
  ASSERT_FALSE(doc.empty()) << "cannot read " << VECSEAL_HSM_DOC;
  std::vector<std::string> commands = Blocks(doc, "sh");
  ASSERT_EQ(commands.size(), 3u) << "docs/hsm.md: SoftHSM2 set-up, PIN file and audit token";
  const std::map<std::string, std::string> env = {{"ETC", root_ + "/etc"},
                                                  {"STATE", root_ + "/state"},
                                                  {"SO_PIN", "doc-so-pin"},
                                                  {"USER_PIN", "doc-user-pin"},
                                                  {"AUDIT_SO_PIN", "doc-audit-so-pin"},
                                                  {"AUDIT_USER_PIN", "doc-audit-user-pin"}};
  for (const std::string& block : commands) {
    std::string output;
    int status = testing::RunProcess({"sh", "-ec", block}, env, &output);
    ASSERT_EQ(status, 0) << block << "\n" << output;
  }

  // The daemon's environment (Environment=SOFTHSM2_CONF=...) and the documented configuration.
  setenv("SOFTHSM2_CONF", (root_ + "/etc/softhsm2.conf").c_str(), 1);
  HsmConfig config;
  config.module_path = testing::kSoftHsmModule;
  config.token_label = "vecseal";
  config.pin.file = root_ + "/etc/hsm.pin";
  auto hsm = Hsm::Open(config);
  ASSERT_TRUE(hsm.ok()) << hsm.status().ToString();
  KeyParams params;
  params.approximation_factor = 2.5;
  ASSERT_TRUE((*hsm)->CreateKey("doc", params).ok());
  ASSERT_TRUE((*hsm)->EnsureAuditKey().ok());

  // The audit token of "The audit token", with the PIN file the section writes, beside the
  // model keys' token in the same process.
  HsmConfig audit_config = config;
  audit_config.token_label = "vecseal-audit";
  audit_config.pin.file = root_ + "/etc/audit.pin";
  EXPECT_NE(doc.find("`pin` `{\"file\": \"/etc/vecseal/audit.pin\"}`"), std::string::npos);
  // Tried before any login to the audit token: while one is open, Cryptoki takes any PIN.
  HsmConfig crossed = audit_config;
  crossed.pin.file = config.pin.file;
  EXPECT_EQ(Hsm::Open(crossed).status().reason(), "hsm_login_failed");
  auto audit_hsm = Hsm::Open(audit_config);
  ASSERT_TRUE(audit_hsm.ok()) << audit_hsm.status().ToString();
  auto audit_key = (*audit_hsm)->EnsureAuditKey();
  ASSERT_TRUE(audit_key.ok()) << audit_key.status().ToString();
  EXPECT_TRUE(audit_key->generated()) << "a key pair of its own, not the model token's";
  hsm->reset();

  // LoadCredential=<name>:<path> as the unit snippet says, simulated: systemd copies <path> to
  // $CREDENTIALS_DIRECTORY/<name>. The configuration snippet must use the same name.
  std::vector<std::string> units = Blocks(doc, "ini");
  ASSERT_EQ(units.size(), 1u);
  const std::string directive = "LoadCredential=";
  size_t start = units[0].find(directive);
  ASSERT_NE(start, std::string::npos);
  start += directive.size();
  size_t colon = units[0].find(':', start);
  ASSERT_NE(colon, std::string::npos);
  const std::string name = units[0].substr(start, colon - start);
  ASSERT_FALSE(name.empty());
  EXPECT_NE(doc.find("\"pin\": {\"credential\": \"" + name + "\"}"), std::string::npos);
  std::string credentials = root_ + "/credentials";
  std::filesystem::create_directory(credentials);
  std::filesystem::copy_file(root_ + "/etc/hsm.pin", credentials + "/" + name);
  std::filesystem::permissions(credentials + "/" + name, std::filesystem::perms::owner_read);
  setenv("CREDENTIALS_DIRECTORY", credentials.c_str(), 1);
  config.pin = PinSource{"", name};
  auto with_credential = Hsm::Open(config);
  ASSERT_TRUE(with_credential.ok()) << with_credential.status().ToString();
  auto key = (*with_credential)->FindKey("doc");
  ASSERT_TRUE(key.ok()) << key.status().ToString();
  EXPECT_EQ(key->info.params.approximation_factor, 2.5);
}

TEST_F(HsmDocTest, ErrorTableListsEveryReason) {
  // Each reason the library can return appears in the operator's table.
  const std::string doc = ReadDoc();
  const char* reasons[] = {"hsm_unavailable",      "hsm_login_failed",      "hsm_error",
                           "hsm_module_unloadable", "token_not_found",      "token_label_ambiguous",
                           "pin_unreadable",        "pin_file_permissions", "pin_source_invalid",
                           "key_not_found",         "key_exists",           "key_params_tampered",
                           "key_params_missing",    "audit_key_invalid",    "key_unprotected",
                           "mechanism_missing",     "key_untrusted",        "invalid_key_config",
                           "key_deletion_incomplete"};
  for (const char* reason : reasons) {
    EXPECT_NE(doc.find(std::string("| `") + reason + "` |"), std::string::npos) << reason;
  }
}

}  // namespace
}  // namespace vecseal::pkcs11
