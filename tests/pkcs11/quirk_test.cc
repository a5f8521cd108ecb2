// Module quirks (issue #18, docs/hsm.md "Modules tested"), each raised by the fault-injecting
// module in front of the module under test: what a vendor module does that SoftHSM2 does not.
// Quirks only a real module shows are tested on it: opencryptoki's refusal of CKA_COPYABLE and its
// missing EC (HsmTest and module_matrix_test on opencryptoki), a remote server's restart
// (module_matrix_test behind p11-kit server).
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <memory>
#include <sstream>

#include "softhsm_test.h"
#include "vecseal/core/cipher.h"
#include "vecseal/pkcs11/cryptoki.h"
#include "vecseal/pkcs11/hsm.h"

namespace vecseal::pkcs11 {
namespace {

class ModuleQuirkTest : public testing::FaultyModuleTest {
 protected:
  std::unique_ptr<Hsm> Open() {
    auto hsm = Hsm::Open(faulty_->Config());
    EXPECT_TRUE(hsm.ok()) << hsm.status().ToString();
    return hsm.ok() ? std::move(hsm).value() : nullptr;
  }

  // Every seed of `vectors` vectors of a new format v2 key "model", by one EncryptBlocks.
  Result<std::vector<uint8_t>> Derive(Hsm& hsm, size_t vectors) {
    auto key = hsm.FindKey("model");
    if (!key.ok()) return std::move(key).TakeStatus();
    std::vector<uint8_t> blocks(vectors * 32), out(blocks.size());
    for (size_t i = 0; i < blocks.size(); ++i) blocks[i] = static_cast<uint8_t>(i * 7);
    VECSEAL_RETURN_IF_ERROR(key->deriver->EncryptBlocks(blocks, out));
    return out;
  }

  Status CreateKey(Hsm& hsm) {
    KeyParams params;
    params.approximation_factor = 2.0;
    auto created = hsm.CreateKey("model", params);
    return created.ok() ? Status::Ok() : created.status();
  }
};

// A module that cannot use the OS's locking answers CKF_OS_LOCKING_OK with CKR_CANT_LOCK; with
// vecseald's own mutex callbacks it initialises and works.
TEST_F(ModuleQuirkTest, CantLockIsAnsweredWithOurMutexes) {
  ASSERT_TRUE(faulty_->Set("refuse-os-locking").ok());
  auto hsm = Open();
  ASSERT_TRUE(hsm);
  ASSERT_TRUE(CreateKey(*hsm).ok());
  EXPECT_TRUE(Derive(*hsm, 4).ok());
}

// A module whose limit per C_EncryptUpdate is below kDerivationPartBytes: the request still
// succeeds, with the same seeds as on a module without the limit.
TEST_F(ModuleQuirkTest, AModulesLimitPerCallIsLearnedNotAnError) {
  auto hsm = Open();
  ASSERT_TRUE(hsm);
  ASSERT_TRUE(CreateKey(*hsm).ok());
  auto expected = Derive(*hsm, 1024);
  ASSERT_TRUE(expected.ok()) << expected.status().ToString();
  auto limited_hsm = Open();  // a fresh Hsm: it starts at kDerivationPartBytes again
  ASSERT_TRUE(limited_hsm);
  ASSERT_TRUE(faulty_->Set("max-data 4096").ok());
  for (int round = 0; round < 2; ++round) {
    auto seeds = Derive(*limited_hsm, 1024);
    ASSERT_TRUE(seeds.ok()) << seeds.status().ToString();
    EXPECT_EQ(*seeds, *expected) << "round " << round;
  }
}

// A module that does not know CKA_COPYABLE (PKCS#11 2.20): keys and the audit key are made
// without it, with every other attribute.
TEST_F(ModuleQuirkTest, AnAttributeTheModuleRefusesIsLeftOut) {
  ASSERT_TRUE(faulty_->Set("refuse-attribute 0x171").ok());  // CKA_COPYABLE
  auto hsm = Open();
  ASSERT_TRUE(hsm);
  ASSERT_TRUE(CreateKey(*hsm).ok());
  EXPECT_TRUE(Derive(*hsm, 2).ok());
  auto audit = hsm->EnsureAuditKey();
  EXPECT_TRUE(audit.ok()) << audit.status().ToString();
}

// A module that lists CKM_AES_KEY_GEN and has no C_GenerateKey (tpm2-pkcs11 1.9 on swtpm): the
// mechanism check that --init and every start make refuses it, naming the function, and so does
// key creation; no request could ever reach a first encrypt with it.
TEST_F(ModuleQuirkTest, AModuleWithoutCGenerateKeyIsRefusedByTheMechanismCheck) {
  auto hsm = Open();
  ASSERT_TRUE(hsm);
  ASSERT_TRUE(hsm->CheckMechanisms().ok()) << "SoftHSM2 implements C_GenerateKey";
  ASSERT_TRUE(faulty_->Set("C_GenerateKey 0x54").ok());  // CKR_FUNCTION_NOT_SUPPORTED
  const Status checked = hsm->CheckMechanisms();
  EXPECT_EQ(checked.reason(), "mechanism_missing") << checked.ToString();
  EXPECT_NE(checked.message().find("lists CKM_AES_KEY_GEN but does not implement C_GenerateKey "
                                   "(CKR_FUNCTION_NOT_SUPPORTED)"),
            std::string::npos)
      << checked.message();
  EXPECT_EQ(CreateKey(*hsm).reason(), "mechanism_missing");
  EXPECT_FALSE(hsm->FindKey("model").ok()) << "nothing was made";
}

// After every session closed, a module answers C_Login with CKR_USER_ALREADY_LOGGED_IN though
// the new session is public (opencryptoki does): vecseald logs out and in, and recovers.
TEST_F(ModuleQuirkTest, AStaleAlreadyLoggedInIsLoggedOutAndInAgain) {
  auto hsm = Open();
  ASSERT_TRUE(hsm);
  ASSERT_TRUE(CreateKey(*hsm).ok());
  ASSERT_TRUE(faulty_->Set("close-sessions\nC_Login 0x100 1").ok());  // USER_ALREADY_LOGGED_IN
  auto seeds = Derive(*hsm, 2);
  EXPECT_TRUE(seeds.ok()) << seeds.status().ToString();
  EXPECT_TRUE(hsm->Ping().ok());
}

// A module may give the numbers of the sessions it dropped to the next ones it opens (opencryptoki
// 3.8 restarts at 1 after C_CloseAllSessions), so recovery never closes a session from before
// the loss: closing the old number would close a new session, and with the last one the login.
TEST_F(ModuleQuirkTest, RecoveryNeverClosesASessionTheModuleDropped) {
  auto hsm = Open();
  ASSERT_TRUE(hsm);
  ASSERT_TRUE(CreateKey(*hsm).ok());
  ASSERT_TRUE(Derive(*hsm, 2).ok());  // a pooled session too, not only the anchor
  const std::string log = token_->dir() + "/stale-closes.log";
  ASSERT_TRUE(faulty_->Set("stale-closes " + log + "\nclose-sessions").ok());
  auto seeds = Derive(*hsm, 2);
  EXPECT_TRUE(seeds.ok()) << seeds.status().ToString();
  EXPECT_TRUE(hsm->Ping().ok());
  EXPECT_TRUE(hsm->ListKeys().ok());
  std::ostringstream closes;
  if (std::ifstream in(log); in) closes << in.rdbuf();
  EXPECT_EQ(closes.str(), "");
}

// CKR_SESSION_COUNT while reconnecting (a token at its session limit): recovery tries again.
TEST_F(ModuleQuirkTest, SessionCountWhileReconnectingIsRetried) {
  auto hsm = Open();
  ASSERT_TRUE(hsm);
  ASSERT_TRUE(CreateKey(*hsm).ok());
  ASSERT_TRUE(faulty_->Set("close-sessions\nC_OpenSession CKR_SESSION_COUNT 1").ok());
  auto seeds = Derive(*hsm, 2);
  EXPECT_TRUE(seeds.ok()) << seeds.status().ToString();
}

// A module that takes seconds to answer: the request waits for it and succeeds (vecseald has no
// timeout of its own on a Cryptoki call), and other work of the Hsm is not lost.
TEST_F(ModuleQuirkTest, AModuleThatTakesSecondsStillAnswers) {
  auto hsm = Open();
  ASSERT_TRUE(hsm);
  ASSERT_TRUE(CreateKey(*hsm).ok());
  ASSERT_TRUE(Derive(*hsm, 1).ok());  // the operation is open: the next call is one update
  ASSERT_TRUE(faulty_->Set("slow C_EncryptUpdate 2000").ok());
  const auto start = std::chrono::steady_clock::now();
  auto seeds = Derive(*hsm, 1);
  const auto waited = std::chrono::steady_clock::now() - start;
  EXPECT_TRUE(seeds.ok()) << seeds.status().ToString();
  EXPECT_GE(waited, std::chrono::milliseconds(2000));
}

}  // namespace
}  // namespace vecseal::pkcs11
