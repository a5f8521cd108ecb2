// Recovery from lost sessions, device errors and a module that stays down, proven through the
// fault-injecting module (faulty_module/) in front of a real SoftHSM2 token.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "softhsm_test.h"
#include "vecseal/pkcs11/hsm.h"

namespace vecseal::pkcs11 {
namespace {

using testing::FaultyModule;
using testing::SoftHsmToken;

std::span<const uint8_t> Bytes(std::string_view text) {
  return {reinterpret_cast<const uint8_t*>(text.data()), text.size()};
}

class RecoveryTest : public testing::SoftHsmTest {
 protected:
  void SetUp() override {
    SoftHsmTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    faulty_ = std::make_unique<FaultyModule>(*token_);
    ASSERT_TRUE(faulty_->Set("up").ok());
    auto hsm = Hsm::Open(Config());
    ASSERT_TRUE(hsm.ok()) << hsm.status().ToString();
    hsm_ = std::move(hsm).value();
    KeyParams params;
    params.approximation_factor = 2.0;
    ASSERT_TRUE(hsm_->CreateKey("model", params).ok());
    auto key = hsm_->FindKey("model");
    ASSERT_TRUE(key.ok()) << key.status().ToString();
    key_ = *key;
    ASSERT_TRUE(key_.deriver->DeriveOne(Bytes("nonce"), expected_).ok());
  }
  void TearDown() override {
    hsm_.reset();
    key_ = {};
    faulty_.reset();
  }

  virtual HsmConfig Config() { return faulty_->Config(); }

  Status Derive(core::Seed& out) { return key_.deriver->DeriveOne(Bytes("nonce"), out); }

  std::unique_ptr<FaultyModule> faulty_;
  std::unique_ptr<Hsm> hsm_;
  ModelKey key_;
  core::Seed expected_{};
};

TEST_F(RecoveryTest, CheckMechanismsPassesOnSoftHsmAndNamesAMissingOne) {
  Status all = hsm_->CheckMechanisms();
  EXPECT_TRUE(all.ok()) << all.ToString();
  // A module that lacks HMAC-SHA256 (a real case: some HSMs need a licence for it).
  ASSERT_TRUE(faulty_->Set("C_GetMechanismInfo CKR_MECHANISM_INVALID").ok());
  Status missing = hsm_->CheckMechanisms();
  EXPECT_EQ(missing.code(), Code::kFailedPrecondition);
  EXPECT_EQ(missing.reason(), "mechanism_missing");
  EXPECT_EQ(missing.message(),
            "token \"vecseal-test\" does not offer CKM_SHA256_HMAC with CKF_SIGN (keystream "
            "derivation); vecseal cannot use it");
  ASSERT_TRUE(faulty_->Set("C_GetMechanismInfo CKR_DEVICE_ERROR 1").ok());
  EXPECT_EQ(hsm_->CheckMechanisms().reason(), "hsm_unavailable");
}

TEST_F(RecoveryTest, RecoversAfterSessionLoss) {
  ASSERT_TRUE(faulty_->Set("close-sessions").ok());
  core::Seed seed{};
  Status status = Derive(seed);
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(seed, expected_);
  EXPECT_TRUE(hsm_->Ping().ok());
  EXPECT_TRUE(hsm_->ListKeys().ok());
}

TEST_F(RecoveryTest, RecoversAfterEachRecoverableCode) {
  for (const char* code : {"CKR_DEVICE_ERROR", "CKR_SESSION_HANDLE_INVALID", "CKR_SESSION_CLOSED",
                           "CKR_DEVICE_REMOVED", "CKR_TOKEN_NOT_PRESENT",
                           "CKR_USER_NOT_LOGGED_IN"}) {
    ASSERT_TRUE(faulty_->Set(std::string("C_Sign ") + code + " 1").ok());
    core::Seed seed{};
    Status status = Derive(seed);
    EXPECT_TRUE(status.ok()) << code << ": " << status.ToString();
    EXPECT_EQ(seed, expected_) << code;
  }
}

TEST_F(RecoveryTest, AdminCallsRecoverToo) {
  ASSERT_TRUE(faulty_->Set("C_FindObjectsInit CKR_DEVICE_ERROR 1").ok());
  auto list = hsm_->ListKeys();
  ASSERT_TRUE(list.ok()) << list.status().ToString();
  EXPECT_EQ(list->size(), 1u);
}

TEST_F(RecoveryTest, PersistentDeviceErrorIsTypedAndWipesOutput) {
  ASSERT_TRUE(faulty_->Set("C_Sign CKR_DEVICE_ERROR").ok());
  core::Seed seed;
  seed.fill(0xAA);
  Status status = Derive(seed);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), Code::kUnavailable);
  EXPECT_EQ(status.reason(), "hsm_unavailable");
  EXPECT_EQ(status.message(), "C_Sign failed: CKR_DEVICE_ERROR (the device reported an error)");
  EXPECT_EQ(seed, core::Seed{}) << "a failed derivation leaves its output wiped";

  ASSERT_TRUE(faulty_->Set("up").ok());
  ASSERT_TRUE(Derive(seed).ok());
  EXPECT_EQ(seed, expected_);
}

TEST_F(RecoveryTest, NonRecoverableErrorIsNotRetried) {
  ASSERT_TRUE(faulty_->Set("C_Sign CKR_FUNCTION_FAILED 1").ok());
  core::Seed seed{};
  Status status = Derive(seed);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.reason(), "hsm_error");
  EXPECT_EQ(status.message(),
            "C_Sign failed: CKR_FUNCTION_FAILED (the module could not perform the function)");
  // The single scheduled failure was consumed by one call, so the next one succeeds.
  ASSERT_TRUE(Derive(seed).ok());
  EXPECT_EQ(seed, expected_);
}

TEST_F(RecoveryTest, DownThenUp) {
  ASSERT_TRUE(faulty_->Set("down").ok());
  core::Seed seed{};
  Status status = Derive(seed);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), Code::kUnavailable);
  EXPECT_EQ(status.reason(), "hsm_unavailable");
  EXPECT_EQ(status.message(),
            "the HSM (token \"vecseal-test\" in " + FaultyModule::Path() +
                ") is unavailable after 3 reconnection attempts; last error: C_GetSlotList "
                "failed: CKR_DEVICE_REMOVED (the device was removed)");
  Status ping = hsm_->Ping();
  EXPECT_EQ(ping.reason(), "hsm_unavailable");
  EXPECT_EQ(hsm_->ListKeys().status().reason(), "hsm_unavailable");
  auto audit = hsm_->EnsureAuditKey();
  EXPECT_EQ(audit.status().reason(), "hsm_unavailable");

  ASSERT_TRUE(faulty_->Set("up").ok());
  EXPECT_TRUE(hsm_->Ping().ok());
  status = Derive(seed);
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(seed, expected_);
}

TEST_F(RecoveryTest, RecoveryLogsInOnceWithTheCurrentPin) {
  // The PIN file now holds a wrong PIN: recovery tries it once and reports a login failure
  // rather than looping on it.
  ASSERT_TRUE(token_->WriteFile("user.pin", "bad-pin-42\n").ok());
  ASSERT_TRUE(faulty_->Set("close-sessions").ok());
  core::Seed seed{};
  Status status = Derive(seed);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.reason(), "hsm_login_failed");
  EXPECT_EQ(status.message().find("bad-pin-42"), std::string::npos) << status.message();

  ASSERT_TRUE(token_->WriteFile("user.pin", token_->user_pin() + "\n").ok());
  status = Derive(seed);
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(seed, expected_);
}

TEST_F(RecoveryTest, ARefusedPinIsNotOfferedAgainUntilThePinFileChanges) {
  // Each failed C_Login counts against the token's retry limit: later requests must not each
  // make another attempt with the same PIN file, or they would lock the token.
  ASSERT_TRUE(faulty_->Set("C_Login CKR_PIN_INCORRECT 1\nclose-sessions").ok());
  core::Seed seed{};
  EXPECT_EQ(Derive(seed).reason(), "hsm_login_failed");
  // Only the first C_Login was made to fail: a second attempt would succeed, so failing again
  // shows that none was made.
  EXPECT_EQ(Derive(seed).reason(), "hsm_login_failed");
  EXPECT_EQ(hsm_->Ping().reason(), "hsm_login_failed");

  ASSERT_TRUE(token_->WriteFile("user.pin", token_->user_pin() + "\r\n").ok());
  Status status = Derive(seed);
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(seed, expected_);
}

TEST_F(RecoveryTest, AuditSigningRecovers) {
  auto audit = hsm_->EnsureAuditKey();
  ASSERT_TRUE(audit.ok()) << audit.status().ToString();
  std::array<uint8_t, 32> digest{};
  ASSERT_TRUE(faulty_->Set("close-sessions").ok());
  auto signature = audit->SignDigest(digest);
  EXPECT_TRUE(signature.ok()) << signature.status().ToString();
  ASSERT_TRUE(faulty_->Set("down CKR_DEVICE_ERROR").ok());
  EXPECT_EQ(audit->SignDigest(digest).status().reason(), "hsm_unavailable");
  ASSERT_TRUE(faulty_->Set("up").ok());
  EXPECT_TRUE(audit->SignDigest(digest).ok());
}

TEST_F(RecoveryTest, ControlledFromAnotherProcess) {
  // The daemon tests drive a separate vecseald through the same file; prove the module obeys a
  // write made by another process.
  std::string control = faulty_->control_path();
  std::string output;
  int status = testing::RunProcess(
      {"sh", "-c", "printf 'down\\n' > \"$1.new\" && mv \"$1.new\" \"$1\"", "sh", control}, {},
      &output);
  ASSERT_EQ(status, 0) << output;
  core::Seed seed{};
  EXPECT_EQ(Derive(seed).reason(), "hsm_unavailable");
  status = testing::RunProcess(
      {"sh", "-c", "printf 'up\\n' > \"$1.new\" && mv \"$1.new\" \"$1\"", "sh", control}, {},
      &output);
  ASSERT_EQ(status, 0) << output;
  EXPECT_TRUE(Derive(seed).ok());
}

// A device code from C_Initialize is the HSM being away (vecseald waits for it); any other code
// is the module itself failing (vecseald stops).
TEST_F(RecoveryTest, ModuleThatFailsToInitialiseIsRefusedByCause) {
  hsm_.reset();
  key_ = {};  // the module is finalised once nothing holds it
  ASSERT_TRUE(faulty_->Set("C_Initialize CKR_DEVICE_ERROR").ok());
  auto away = Hsm::Open(Config());
  ASSERT_FALSE(away.ok());
  EXPECT_EQ(away.status().reason(), "hsm_unavailable");
  EXPECT_EQ(away.status().message(),
            "cannot initialise the PKCS#11 module " + FaultyModule::Path() +
                ": C_Initialize failed: CKR_DEVICE_ERROR (the device reported an error)");

  ASSERT_TRUE(faulty_->Set("C_Initialize CKR_GENERAL_ERROR").ok());
  auto broken = Hsm::Open(Config());
  ASSERT_FALSE(broken.ok());
  EXPECT_EQ(broken.status().reason(), "hsm_module_unloadable");
  EXPECT_EQ(broken.status().message(),
            "cannot load the PKCS#11 module " + FaultyModule::Path() +
                ": C_Initialize failed: CKR_GENERAL_ERROR (the module hit an unrecoverable error)");

  ASSERT_TRUE(faulty_->Set("up").ok());
  EXPECT_TRUE(Hsm::Open(Config()).ok()) << "a module that failed C_Initialize loads again";
}

class PooledRecoveryTest : public RecoveryTest {
 protected:
  HsmConfig Config() override {
    HsmConfig config = faulty_->Config();
    config.sessions = 3;
    config.create_copyable_keys = true;
    return config;
  }
};

TEST_F(PooledRecoveryTest, SessionCopiesAreRefreshedAfterRecovery) {
  // Use every pooled session once so each holds a session copy of the key.
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&] {
      core::Seed seed{};
      Status status = Derive(seed);
      EXPECT_TRUE(status.ok()) << status.ToString();
    });
  }
  for (auto& thread : threads) thread.join();
  ASSERT_TRUE(faulty_->Set("close-sessions").ok());
  for (int i = 0; i < 6; ++i) {
    core::Seed seed{};
    Status status = Derive(seed);
    ASSERT_TRUE(status.ok()) << i << ": " << status.ToString();
    EXPECT_EQ(seed, expected_);
  }
}

// Each pooled session makes its own session copy of the key while the others look the key up.
// SoftHSM2 builds a copy attribute by attribute, CKA_TOKEN=true included until the end, so an
// unguarded lookup could meet a half-made copy and see the key twice.
TEST_F(PooledRecoveryTest, LookupsNeverMeetACopyInTheMaking) {
  for (int round = 0; round < 25; ++round) {
    ASSERT_TRUE(faulty_->Set("close-sessions").ok());
    core::Seed first{};
    ASSERT_TRUE(Derive(first).ok()) << "round " << round;  // recovers, so the threads need not
    std::vector<std::thread> threads;
    std::atomic<int> failures{0};
    for (int t = 0; t < 3; ++t) {
      threads.emplace_back([&] {
        for (int i = 0; i < 3; ++i) {
          core::Seed seed{};
          Status status = Derive(seed);
          if (!status.ok() || seed != expected_) {
            ADD_FAILURE() << "round " << round << ": " << status.ToString();
            ++failures;
          }
        }
      });
    }
    for (auto& thread : threads) thread.join();
    ASSERT_EQ(failures.load(), 0);
  }
}

}  // namespace
}  // namespace vecseal::pkcs11
