// A GoogleTest fixture with a fresh SoftHSM2 token per test, skipped (with the reason) where
// SoftHSM2 is not installed. Header-only so that vecseal_test_softhsm stays free of GoogleTest.
#pragma once

#include <gtest/gtest.h>

#include <memory>

#include "softhsm_fixture.h"

namespace vecseal::testing {

class SoftHsmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string reason = SoftHsmUnavailableReason();
    if (!reason.empty()) GTEST_SKIP() << reason;
    auto token = SoftHsmToken::Create();
    ASSERT_TRUE(token.ok()) << token.status().ToString();
    token_ = std::move(token).value();
  }

  std::unique_ptr<SoftHsmToken> token_;
};

// The same, with the fault-injecting module in front of the token's module, every fault off.
class FaultyModuleTest : public SoftHsmTest {
 protected:
  void SetUp() override {
    SoftHsmTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    faulty_ = std::make_unique<FaultyModule>(*token_);
    ASSERT_TRUE(faulty_->Set("up").ok());
  }
  void TearDown() override { faulty_.reset(); }

  std::unique_ptr<FaultyModule> faulty_;
};

}  // namespace vecseal::testing
