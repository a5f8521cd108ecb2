// audit.pkcs11 through a real vecseald: the model keys on one SoftHSM2 token, the audit key on a
// second token with its own PIN (docs/audit.md, "The audit key on its own token"). Seals must
// verify with the second token's public key, the first token must hold no key pair, and a
// configuration that would give no separation, or a wrong audit PIN, must stop the daemon with
// an error that names the field.
#include <unistd.h>

#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "softhsm_fixture.h"
#include "support/dev_daemon.h"
#include "support/secured_daemon.h"
#include "test_util.h"
#include "vecseal/audit/verify.h"
#include "vecseal/pkcs11/cryptoki.h"
#include "vecseal/pkcs11/hsm.h"

namespace vecseal::security_testing {
namespace {

using daemon::testing::HttpClient;
using nlohmann::json;

constexpr const char* kModelTokenLabel = "vecseal-security";  // SecuredDaemon's token

std::span<const uint8_t> Bytes(std::string_view text) {
  return {reinterpret_cast<const uint8_t*>(text.data()), text.size()};
}

// Counts a token's objects of one class through a logged-in session of this process.
size_t CountObjects(const std::string& token_label, const std::string& pin, CK_OBJECT_CLASS klass) {
  auto module = pkcs11::Module::Load(testing::kSoftHsmModule);
  EXPECT_TRUE(module.ok()) << module.status().ToString();
  auto slot = module->FindTokenSlot(token_label);
  EXPECT_TRUE(slot.ok()) << slot.status().ToString();
  auto session = pkcs11::Session::Open(*module, *slot, false);
  EXPECT_TRUE(session.ok()) << session.status().ToString();
  EXPECT_TRUE(session->Login(Bytes(pin)).ok());
  CK_ATTRIBUTE match[] = {{CKA_CLASS, &klass, sizeof klass}};
  auto found = session->Find(match);
  EXPECT_TRUE(found.ok()) << found.status().ToString();
  return found.ok() ? found->size() : 0;
}

class AuditTokenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (auto reason = testing::SoftHsmUnavailableReason(); !reason.empty()) GTEST_SKIP() << reason;
  }

  // A daemon whose audit key has its own token; this process may create keys and encrypt.
  void Prepare(const std::string& module = {}) {
    const json policy = {
        {"version", 1},
        {"rules",
         {{{"id", "audit-token-test"},
           {"callers",
            {{"uid", geteuid()},
             {"exe_sha256", policy::testing_util::Sha256OfFile("/proc/self/exe")}}},
           {"keys", {"*"}},
           {"operations", {"keys.create", "encrypt"}}}}}};
    std::string error;
    daemon_ = SecuredDaemon::Prepare({.policy_json = policy.dump(),
                                      .socket_group = {},
                                      .audit_token = true,
                                      .module = module},
                                     &error);
    ASSERT_TRUE(daemon_) << error;
  }

  void EditConfig(const std::function<void(json&)>& edit) {
    json config = json::parse(policy::testing_util::ReadFile(daemon_->config_path()));
    edit(config);
    policy::testing_util::WriteFile(daemon_->config_path(), config.dump(2), 0644);
  }

  void StartAndCreateKey() {
    std::string error;
    ASSERT_TRUE(daemon_->Start(&error)) << error;
    client_ = std::make_unique<HttpClient>(daemon_->socket_path());
    const auto created =
        client_->PostJson("/v1/keys", {{"name", "scores"}, {"approximation_factor", 2.5}});
    ASSERT_EQ(created.status, 201u) << created.body;
  }

  void Encrypt() {
    const auto answer =
        client_->PostJson("/v1/keys/scores/encrypt",
                         {{"vectors", json::array({json::array({0.25, -0.5, 0.75})})}});
    EXPECT_EQ(answer.status, 200u) << answer.body;
  }

  // The audit public key as the audit token holds it (read after the daemon stopped).
  std::string AuditTokenPublicKey() {
    pkcs11::HsmConfig config = daemon_->token().Config();
    config.token_label = kAuditTokenLabel;
    config.pin.file = daemon_->audit_pin_file();
    auto hsm = pkcs11::Hsm::Open(config);
    EXPECT_TRUE(hsm.ok()) << hsm.status().ToString();
    if (!hsm.ok()) return "";
    auto key = (*hsm)->EnsureAuditKey();
    EXPECT_TRUE(key.ok()) << key.status().ToString();
    if (!key.ok()) return "";
    EXPECT_FALSE(key->generated()) << "the daemon made the pair on the audit token";
    return key->PublicKeyPem();
  }

  audit::VerifyReport VerifyLog(const std::string& public_key_pem) {
    auto files = audit::LogFilesInOrder(daemon_->audit_dir());
    EXPECT_TRUE(files.ok()) << files.status().ToString();
    auto report = audit::Verify(*files, public_key_pem);
    EXPECT_TRUE(report.ok()) << report.status().ToString();
    return report.ok() ? *report : audit::VerifyReport{};
  }

  size_t CountEvents(const std::string& event) const {
    size_t count = 0;
    for (const json& record : daemon_->AuditRecords()) count += record.value("event", "") == event;
    return count;
  }

  std::unique_ptr<SecuredDaemon> daemon_;
  std::unique_ptr<HttpClient> client_;
};

TEST_F(AuditTokenTest, SealsAreSignedOnTheAuditTokenAndTheModelTokenHoldsNoKeyPair) {
  Prepare();
  StartAndCreateKey();
  for (int i = 0; i < 3; ++i) Encrypt();
  ASSERT_EQ(daemon_->Stop(), 0) << daemon_->Log();
  EXPECT_EQ(CountEvents("encrypt"), 3u);

  const audit::VerifyReport report = VerifyLog(AuditTokenPublicKey());
  EXPECT_TRUE(report.ok()) << report.error->code << ": " << report.error->message;
  EXPECT_GE(report.seals, 1u);
  EXPECT_EQ(report.last_sealed_seq, report.last_seq) << "the final seal covers the stop";

  // Whoever holds the model keys' PIN finds nothing there to sign a seal with.
  EXPECT_EQ(CountObjects(kModelTokenLabel, kTokenPin, CKO_PRIVATE_KEY), 0u);
  EXPECT_EQ(CountObjects(kModelTokenLabel, kTokenPin, CKO_PUBLIC_KEY), 0u);
  EXPECT_GE(CountObjects(kModelTokenLabel, kTokenPin, CKO_SECRET_KEY), 1u) << "the model key";
  EXPECT_EQ(CountObjects(kAuditTokenLabel, kAuditTokenPin, CKO_PRIVATE_KEY), 1u);
  EXPECT_EQ(CountObjects(kAuditTokenLabel, kAuditTokenPin, CKO_SECRET_KEY), 0u);

  const std::string log = daemon_->Log();
  EXPECT_EQ(log.find(kAuditTokenPin), std::string::npos) << "the audit PIN leaked into the log";
  EXPECT_EQ(log.find(kTokenPin), std::string::npos) << "the model PIN leaked into the log";
}

// The audit token is opened once: a reload that would move the audit key is refused whole.
TEST_F(AuditTokenTest, AReloadThatChangesTheAuditTokenIsRefused) {
  Prepare();
  StartAndCreateKey();
  EditConfig([](json& config) { config["audit"].erase("pkcs11"); });
  std::string error;
  ASSERT_TRUE(daemon_->Reload(&error)) << error;
  EXPECT_NE(daemon_->Log().find("audit.pkcs11 changed, which takes effect only on a restart; "
                                "nothing reloaded"),
            std::string::npos)
      << daemon_->Log();
  Encrypt();
  ASSERT_EQ(daemon_->Stop(), 0) << daemon_->Log();
  EXPECT_EQ(CountObjects(kModelTokenLabel, kTokenPin, CKO_PRIVATE_KEY), 0u);
  EXPECT_TRUE(VerifyLog(AuditTokenPublicKey()).ok());
}

TEST_F(AuditTokenTest, TheModelKeyTokenNamedAsTheAuditTokenIsRefused) {
  Prepare();
  EditConfig([](json& config) { config["audit"]["pkcs11"]["token_label"] = kModelTokenLabel; });
  std::string error;
  EXPECT_FALSE(daemon_->Start(&error));
  EXPECT_EQ(daemon_->exit_status(), 1);
  EXPECT_NE(error.find(daemon_->config_path() +
                       ": $.audit.pkcs11.token_label: names the model keys' token "
                       "(\"vecseal-security\" in /usr/lib/softhsm/libsofthsm2.so), which gives "
                       "the audit key no separation: whoever holds that token's PIN could "
                       "re-sign seals over an edited log; name a token of its own, with its own "
                       "PIN, or remove audit.pkcs11 (docs/audit.md)"),
            std::string::npos)
      << error;
}

TEST_F(AuditTokenTest, AWrongAuditPinStopsTheStartNamingAuditPkcs11Pin) {
  Prepare();
  policy::testing_util::WriteFile(daemon_->audit_pin_file(), "not-the-audit-pin\n", 0600);
  std::string error;
  EXPECT_FALSE(daemon_->Start(&error));
  EXPECT_EQ(daemon_->exit_status(), 1);
  EXPECT_NE(error.find("vecseald: audit.pkcs11.pin (the audit key's token): login to token "
                       "\"vecseal-audit\" failed: the PIN is wrong (CKR_PIN_INCORRECT); check "
                       "the PIN in PIN file " +
                       daemon_->audit_pin_file()),
            std::string::npos)
      << error;
  EXPECT_EQ(error.find("not-the-audit-pin"), std::string::npos) << "the PIN leaked";
}

// The audit token failing mid-run is a signer failure, as it was with one token: records are
// still written and acknowledged, no seal is made without the key, and the first seal after the
// token is back covers everything written meanwhile.
TEST_F(AuditTokenTest, SealsWaitForAFailingAuditTokenAndCoverTheGapOnceItIsBack) {
  Prepare(testing::FaultyModule::Path());
  testing::FaultyModule faulty(daemon_->token());
  EditConfig([](json& config) { config["audit"]["seal_every_records"] = 1; });
  StartAndCreateKey();
  Encrypt();
  const size_t seals_before = CountEvents("seal");
  ASSERT_GE(seals_before, 1u);

  // Format 2 model keys derive with C_Encrypt: only the audit key signs.
  ASSERT_TRUE(faulty.Set("C_Sign CKR_DEVICE_ERROR").ok());
  Encrypt();
  Encrypt();
  EXPECT_EQ(CountEvents("seal"), seals_before) << "no seal without the audit key";
  EXPECT_NE(daemon_->Log().find("cannot seal the audit log"), std::string::npos)
      << daemon_->Log();

  ASSERT_TRUE(faulty.Set("up").ok());
  Encrypt();
  EXPECT_GT(CountEvents("seal"), seals_before);
  ASSERT_EQ(daemon_->Stop(), 0) << daemon_->Log();
  EXPECT_EQ(CountEvents("encrypt"), 4u);
  const audit::VerifyReport report = VerifyLog(AuditTokenPublicKey());
  EXPECT_TRUE(report.ok()) << report.error->code << ": " << report.error->message;
  EXPECT_EQ(report.unsealed_tail, 0u);
}

}  // namespace
}  // namespace vecseal::security_testing
