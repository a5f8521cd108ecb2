#include "vecseal/pkcs11/cryptoki.h"

#include <gtest/gtest.h>

#include <memory>

#include "softhsm_test.h"

namespace vecseal::pkcs11 {
namespace {

using testing::SoftHsmToken;

struct CkrCase {
  CK_RV rv;
  std::string_view name;
  std::string_view sentence;
  bool recoverable;
};

class CkrTest : public ::testing::TestWithParam<CkrCase> {};

TEST_P(CkrTest, NameSentenceAndRecoverability) {
  const CkrCase& c = GetParam();
  EXPECT_EQ(CkrName(c.rv), c.name);
  EXPECT_EQ(CkrSentence(c.rv), c.sentence);
  EXPECT_EQ(IsRecoverable(c.rv), c.recoverable);
}

INSTANTIATE_TEST_SUITE_P(
    Codes, CkrTest,
    ::testing::Values(
        CkrCase{CKR_PIN_INCORRECT, "CKR_PIN_INCORRECT", "the PIN is wrong", false},
        CkrCase{CKR_PIN_LOCKED, "CKR_PIN_LOCKED", "the PIN is locked after too many wrong attempts",
                false},
        CkrCase{CKR_DEVICE_ERROR, "CKR_DEVICE_ERROR", "the device reported an error", true},
        CkrCase{CKR_DEVICE_REMOVED, "CKR_DEVICE_REMOVED", "the device was removed", true},
        CkrCase{CKR_TOKEN_NOT_PRESENT, "CKR_TOKEN_NOT_PRESENT",
                "the token is not present in its slot", true},
        CkrCase{CKR_SESSION_HANDLE_INVALID, "CKR_SESSION_HANDLE_INVALID",
                "the session handle is not valid", true},
        CkrCase{CKR_SESSION_CLOSED, "CKR_SESSION_CLOSED", "the session was closed during the call",
                true},
        CkrCase{CKR_USER_NOT_LOGGED_IN, "CKR_USER_NOT_LOGGED_IN", "the user is not logged in",
                true},
        CkrCase{CKR_SLOT_ID_INVALID, "CKR_SLOT_ID_INVALID", "the slot does not exist", true},
        CkrCase{CKR_SESSION_COUNT, "CKR_SESSION_COUNT", "the token has too many open sessions",
                true},
        CkrCase{CKR_ATTRIBUTE_SENSITIVE, "CKR_ATTRIBUTE_SENSITIVE",
                "the attribute is sensitive and cannot be read", false},
        CkrCase{CKR_ACTION_PROHIBITED, "CKR_ACTION_PROHIBITED",
                "the object's attributes prohibit this action", false},
        CkrCase{0x201UL, "CKR_TOKEN_RESOURCE_EXCEEDED", "the token ran out of a resource", false},
        CkrCase{CKR_VENDOR_DEFINED + 7, "CKR_VENDOR_DEFINED",
                "the module returned vendor-defined code 0x80000007", false},
        CkrCase{0x4242UL, "CKR_UNKNOWN", "the module returned unknown code 0x4242", false}));

TEST(CkrTest, EveryNamedCodeHasASentence) {
  // The table must not fall back to the generic sentence for any code in p11-kit's header range.
  for (CK_RV rv = 0; rv <= 0x203; ++rv) {
    if (CkrName(rv) == "CKR_UNKNOWN") continue;
    EXPECT_EQ(CkrSentence(rv).find("unknown code"), std::string::npos) << CkrName(rv);
    EXPECT_TRUE(CkrName(rv).starts_with("CKR_"));
  }
}

TEST(CkrStatusTest, RecoverableCodesBecomeHsmUnavailable) {
  Status status = CkrStatus("C_Sign", CKR_DEVICE_ERROR);
  EXPECT_EQ(status.code(), Code::kUnavailable);
  EXPECT_EQ(status.reason(), "hsm_unavailable");
  EXPECT_EQ(status.message(), "C_Sign failed: CKR_DEVICE_ERROR (the device reported an error)");
  Status other = CkrStatus("C_CopyObject", CKR_ACTION_PROHIBITED);
  EXPECT_EQ(other.reason(), "hsm_error");
}

TEST(ModuleTest, RefusesRelativeAndMissingPaths) {
  auto relative = Module::Load("libsofthsm2.so");
  ASSERT_FALSE(relative.ok());
  EXPECT_EQ(relative.status().reason(), "hsm_module_unloadable");
  EXPECT_NE(relative.status().message().find("must be absolute"), std::string::npos);

  auto missing = Module::Load("/nonexistent/libpkcs11.so");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().reason(), "hsm_module_unloadable");
  EXPECT_NE(missing.status().message().find("/nonexistent/libpkcs11.so"), std::string::npos);
}

TEST(ModuleTest, RefusesALibraryWithoutCryptoki) {
  // Any shared library that is not a PKCS#11 module: libdl's sibling libm is always present.
  auto module = Module::Load("/lib/x86_64-linux-gnu/libm.so.6");
  if (module.ok()) GTEST_SKIP() << "libm unexpectedly exports C_GetFunctionList";
  EXPECT_EQ(module.status().reason(), "hsm_module_unloadable");
  EXPECT_NE(module.status().message().find("C_GetFunctionList"), std::string::npos)
      << module.status().message();
}

class CryptokiTokenTest : public testing::SoftHsmTest {};

TEST_F(CryptokiTokenTest, FindsTokenByLabelOnly) {
  auto module = Module::Load(token_->module_path());
  ASSERT_TRUE(module.ok()) << module.status().ToString();
  auto slot = module->FindTokenSlot(token_->label());
  ASSERT_TRUE(slot.ok()) << slot.status().ToString();
  auto labels = module->TokenLabels();
  ASSERT_TRUE(labels.ok());
  EXPECT_EQ(*labels, std::vector<std::string>{token_->label()});

  auto missing = module->FindTokenSlot("no-such-token");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), Code::kNotFound);
  EXPECT_EQ(missing.status().reason(), "token_not_found");
  EXPECT_NE(missing.status().message().find("\"vecseal-test\""), std::string::npos)
      << "the message lists the tokens present: " << missing.status().message();
}

TEST_F(CryptokiTokenTest, TwoModulesShareOneInitialisation) {
  auto first = Module::Load(token_->module_path());
  ASSERT_TRUE(first.ok());
  {
    auto second = Module::Load(token_->module_path());
    ASSERT_TRUE(second.ok()) << second.status().ToString();
  }
  // The second Module's release must not have finalised the library under the first.
  auto slot = first->FindTokenSlot(token_->label());
  ASSERT_TRUE(slot.ok()) << slot.status().ToString();
  auto session = Session::Open(*first, *slot, false);
  EXPECT_TRUE(session.ok()) << session.status().ToString();
}

TEST_F(CryptokiTokenTest, SessionCopyIsDestroyedWithItsObject) {
  auto module = Module::Load(token_->module_path());
  ASSERT_TRUE(module.ok());
  auto slot = module->FindTokenSlot(token_->label());
  ASSERT_TRUE(slot.ok());
  auto session = Session::Open(*module, *slot, true);
  ASSERT_TRUE(session.ok());
  const std::string pin = token_->user_pin();
  ASSERT_TRUE(session->Login({reinterpret_cast<const uint8_t*>(pin.data()), pin.size()}).ok());

  CK_OBJECT_CLASS klass = CKO_DATA;
  CK_BBOOL no = CK_FALSE;
  std::string label = "scratch";
  CK_ATTRIBUTE data[] = {{CKA_CLASS, &klass, sizeof klass},
                         {CKA_TOKEN, &no, sizeof no},
                         {CKA_LABEL, label.data(), label.size()}};
  auto object = session->Create(data);
  ASSERT_TRUE(object.ok()) << object.status().ToString();
  CK_ATTRIBUTE match[] = {{CKA_LABEL, label.data(), label.size()}};
  {
    CK_ATTRIBUTE same[] = {{CKA_TOKEN, &no, sizeof no}};
    auto copy = session->Copy(object->handle(), same, /*owned=*/true);
    ASSERT_TRUE(copy.ok()) << copy.status().ToString();
    auto found = session->Find(match);
    ASSERT_TRUE(found.ok());
    EXPECT_EQ(found->size(), 2u);
  }
  auto found = session->Find(match);
  ASSERT_TRUE(found.ok());
  EXPECT_EQ(found->size(), 1u) << "the owned copy is destroyed with its Object";
}

}  // namespace
}  // namespace vecseal::pkcs11
