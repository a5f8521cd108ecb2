// FakeKeyStore keeps pkcs11::Hsm's contract: one script of key operations, run on the HSM gate
// over a real SoftHSM2 token and on the fake, gives the same outcomes, codes, reasons and
// messages. The in-process tests are worth what this equivalence is.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "softhsm_fixture.h"
#include "support/fake_key_store.h"
#include "vecseal/daemon/hsm_gate.h"

namespace vecseal::daemon::testing {
namespace {

std::string Outcome(const Status& status) {
  if (status.ok()) return "ok";
  return std::string(CodeName(status.code())) + " " + status.reason() + ": " + status.message();
}

std::string Describe(const pkcs11::KeyInfo& info) {
  const pkcs11::KeyParams& p = info.params;
  return info.name + " v" + std::to_string(info.version) + " " + info.label + " format " +
         std::to_string(static_cast<int>(p.format)) + " beta " +
         std::to_string(p.approximation_factor) + " " +
         std::string(core::TransformName(p.transform)) + " dimension " +
         (p.dimension ? std::to_string(*p.dimension) : "none");
}

// Every outcome of one fixed sequence of calls, as text; a key's creation time is left out.
std::vector<std::string> RunScript(KeyStore& keys) {
  std::vector<std::string> out;
  const auto info = [&](const Result<pkcs11::KeyInfo>& result) {
    out.push_back(result.ok() ? Describe(*result) : Outcome(result.status()));
  };
  const auto config = [&](const Result<pkcs11::KeyConfig>& result) {
    out.push_back(result.ok() ? "config " + std::to_string(result->min_encryption_version) +
                                    "/" + std::to_string(result->min_decryption_version)
                              : Outcome(result.status()));
  };
  const auto find = [&](std::optional<uint32_t> version) {
    auto key = keys.FindKey("scores", version);
    out.push_back(key.ok() ? "found " + Describe(key->info) + " deriver format " +
                                 std::to_string(static_cast<int>(key->deriver->format()))
                           : Outcome(key.status()));
  };

  pkcs11::KeyParams params;
  params.approximation_factor = 2.0;
  params.transform = core::TransformKind::kPermute;
  find(std::nullopt);
  find(1);
  info(keys.RotateKey("scores", core::KeyFormat::kV2));
  config(keys.ReadKeyConfig("scores"));
  info(keys.CreateKey("Bad!Name", params));
  pkcs11::KeyParams tiny = params;
  tiny.approximation_factor = 1e-6;
  info(keys.CreateKey("scores", tiny));
  pkcs11::KeyParams legacy = params;
  legacy.format = core::KeyFormat::kV1;
  info(keys.CreateKey("scores", legacy));
  info(keys.CreateKey("scores", params));
  find(std::nullopt);
  find(2);
  auto out_of_range = keys.FixDimension("scores", 0);
  out.push_back(out_of_range.ok() ? "fixed" : Outcome(out_of_range.status()));
  auto fixed = keys.FixDimension("scores", 5);
  out.push_back(fixed.ok() ? "fixed " + std::to_string(*fixed) : Outcome(fixed.status()));
  auto again = keys.FixDimension("scores", 7);
  out.push_back(again.ok() ? "fixed " + std::to_string(*again) : Outcome(again.status()));
  info(keys.RotateKey("scores", core::KeyFormat::kV2));
  find(std::nullopt);
  find(1);
  find(3);
  config(keys.ConfigureKey("scores", {.min_encryption_version = 3,
                                      .min_decryption_version = 1}));
  config(keys.ConfigureKey("scores", {.min_encryption_version = 2,
                                      .min_decryption_version = 2}));
  config(keys.ReadKeyConfig("scores"));
  pkcs11::KeyParams other = params;
  other.transform = core::TransformKind::kRotate;
  other.dimension = 3;
  info(keys.CreateKey("ages", other));
  auto listed = keys.ListKeys();
  if (listed.ok()) {
    for (const pkcs11::KeyInfo& key : *listed) out.push_back("listed " + Describe(key));
  } else {
    out.push_back(Outcome(listed.status()));
  }
  for (const char* name : {"scores", "scores", "Bad!Name"}) {
    auto deleted = keys.DeleteKey(name);
    std::string text = deleted.ok() ? "deleted" : Outcome(deleted.status());
    if (deleted.ok()) {
      for (uint32_t version : *deleted) text += " " + std::to_string(version);
    }
    out.push_back(text);
  }
  config(keys.ConfigureKey("scores", {}));
  out.push_back(Outcome(keys.Ping()));
  return out;
}

TEST(KeyStoreContractTest, TheFakeAnswersAsTheHsmDoes) {
  if (std::string why = vecseal::testing::SoftHsmUnavailableReason(); !why.empty()) {
    GTEST_SKIP() << why;
  }
  auto token = vecseal::testing::SoftHsmToken::Create();
  ASSERT_TRUE(token.ok()) << token.status().ToString();
  auto hsm = pkcs11::Hsm::Open((*token)->Config());
  ASSERT_TRUE(hsm.ok()) << hsm.status().ToString();
  HsmGate gate(**hsm);
  FakeKeyStore fake;
  const std::vector<std::string> from_hsm = RunScript(gate);
  const std::vector<std::string> from_fake = RunScript(fake);
  ASSERT_EQ(from_hsm.size(), from_fake.size());
  for (size_t i = 0; i < from_hsm.size(); ++i) {
    EXPECT_EQ(from_fake[i], from_hsm[i]) << "step " << i;
  }
  // The script really ran: a token that refused it all would agree with nothing.
  EXPECT_NE(std::find(from_hsm.begin(), from_hsm.end(), "deleted 1 2"), from_hsm.end());
}

// Closed, the gate refuses every call with hsm_unavailable; the fake does so when told to.
TEST(KeyStoreContractTest, AnUnavailableStoreRefusesEveryCall) {
  HsmGate gate;
  gate.SetWaiting(Status(Code::kUnavailable, "hsm_unavailable", "no device"));
  FakeKeyStore fake;
  fake.FailWith(Status(Code::kUnavailable, "hsm_unavailable", "no device"));
  for (KeyStore* keys : std::vector<KeyStore*>{&gate, &fake}) {
    EXPECT_EQ(keys->Ping().reason(), "hsm_unavailable");
    EXPECT_EQ(keys->ListKeys().status().reason(), "hsm_unavailable");
    EXPECT_EQ(keys->FindKey("demo").status().reason(), "hsm_unavailable");
  }
}

}  // namespace
}  // namespace vecseal::daemon::testing
