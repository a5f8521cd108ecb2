// Seals made by a real audit key inside SoftHSM2, through pkcs11::AuditKey, verify offline with
// only the exported public key: the adapter the daemon uses, tested end to end.
#include <gtest/gtest.h>

#include "softhsm_fixture.h"
#include "support/audit_test_util.h"
#include "vecseal/audit/log.h"
#include "vecseal/audit/verify.h"
#include "vecseal/pkcs11/hsm.h"

namespace vecseal::audit {
namespace {

class HsmSigner final : public Signer {
 public:
  explicit HsmSigner(pkcs11::AuditKey key) : key_(std::move(key)) {}
  Result<std::vector<uint8_t>> SignDigest(std::span<const uint8_t, 32> digest) override {
    return key_.SignDigest(digest);
  }
  Result<std::string> PublicKeyPem() override { return key_.PublicKeyPem(); }

 private:
  pkcs11::AuditKey key_;
};

TEST(AuditHsmSealTest, SoftHsmSealsVerifyWithTheExportedPublicKey) {
  if (const std::string why = vecseal::testing::SoftHsmUnavailableReason(); !why.empty()) {
    GTEST_SKIP() << why;
  }
  auto token = vecseal::testing::SoftHsmToken::Create();
  ASSERT_TRUE(token.ok()) << token.status().ToString();
  auto hsm = pkcs11::Hsm::Open((*token)->Config());
  ASSERT_TRUE(hsm.ok()) << hsm.status().ToString();
  auto key = (*hsm)->EnsureAuditKey();
  ASSERT_TRUE(key.ok()) << key.status().ToString();
  const std::string pem = key->PublicKeyPem();

  testing::TempDir dir;
  LogOptions options = testing::TestOptions(dir.path());
  options.seal_every_records = 3;
  auto log = Log::Open(options, std::make_shared<HsmSigner>(*key));
  ASSERT_TRUE(log.ok()) << log.status().ToString();
  for (int i = 0; i < 10; ++i) ASSERT_TRUE((*log)->Append(testing::SampleEvent(i)).ok());
  ASSERT_TRUE((*log)->Close().ok());

  const auto files = testing::LogFiles(dir.path());
  Result<VerifyReport> report = Verify(files, pem);
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->ok()) << report->error->message;
  EXPECT_GE(report->seals, 4u);
  EXPECT_EQ(report->unsealed_tail, 0u);
}

}  // namespace
}  // namespace vecseal::audit
