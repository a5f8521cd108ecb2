#include "vecseal/pkcs11/hsm.h"

#include <gtest/gtest.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>

#include <cstdlib>
#include <cstring>
#include <thread>

#include "softhsm_test.h"
#include "vecseal/pkcs11/cryptoki.h"

namespace vecseal::pkcs11 {
namespace {

using testing::SoftHsmToken;

std::span<const uint8_t> Bytes(std::string_view text) {
  return {reinterpret_cast<const uint8_t*>(text.data()), text.size()};
}

PinSource FilePin(std::string path) { return PinSource{std::move(path), ""}; }
PinSource CredentialPin(std::string name) { return PinSource{"", std::move(name)}; }

core::Seed OpenSslHmac(std::span<const uint8_t> key, std::span<const uint8_t> message) {
  core::Seed out{};
  unsigned int length = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), message.data(), message.size(),
       out.data(), &length);
  return out;
}

// Format v1 (HMAC) unless asked: most tests here exercise the v1 derivation that keys made
// before format v2 keep using; the V2 tests below ask for format v2.
KeyParams Params(double beta, core::TransformKind transform = core::TransformKind::kRotate,
                 std::optional<uint32_t> dimension = std::nullopt,
                 core::KeyFormat format = core::KeyFormat::kV1) {
  KeyParams params;
  params.format = format;
  params.approximation_factor = beta;
  params.transform = transform;
  params.dimension = dimension;
  return params;
}

struct ParamsCase {
  KeyParams params;
  std::string message;  // empty: valid
};

constexpr const char* kBadBeta =
    "the approximation factor (beta) must be a finite number greater than 0";

class KeyParamsTest : public ::testing::TestWithParam<ParamsCase> {};

TEST_P(KeyParamsTest, Validates) {
  Status status = ValidateKeyParams(GetParam().params);
  if (GetParam().message.empty()) {
    EXPECT_TRUE(status.ok()) << status.ToString();
  } else {
    EXPECT_EQ(status.reason(), "invalid_key_params");
    EXPECT_EQ(status.message(), GetParam().message);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Params, KeyParamsTest,
    ::testing::Values(
        ParamsCase{Params(2.5), ""},
        ParamsCase{Params(1, core::TransformKind::kPermute, 65536), ""},
        ParamsCase{Params(0), kBadBeta}, ParamsCase{Params(-1), kBadBeta},
        ParamsCase{Params(std::numeric_limits<double>::infinity()), kBadBeta},
        ParamsCase{Params(std::numeric_limits<double>::quiet_NaN()), kBadBeta},
        ParamsCase{Params(1, core::TransformKind::kRotate, 0),
                   "the dimension must be between 1 and 4096 for rotate"},
        ParamsCase{Params(1, core::TransformKind::kRotate, 4097),
                   "the dimension must be between 1 and 4096 for rotate"}));

TEST(CanonicalParamBytesTest, LayoutIsFixed) {
  KeyParams params = Params(2.5, core::TransformKind::kPermute, 768);
  params.created_unix = 0x0102030405060708;
  std::vector<uint8_t> bytes = CanonicalParamBytes("ab", 7, params);
  std::vector<uint8_t> expected = {1, 2, 'a', 'b', 7, 0, 0, 0,
                                   // 2.5 as binary64, little-endian
                                   0, 0, 0, 0, 0, 0, 0x04, 0x40,
                                   1,  // permute
                                   1, 0x00, 0x03, 0, 0,  // dimension 768
                                   8, 7, 6, 5, 4, 3, 2, 1};
  EXPECT_EQ(bytes, expected);
}

// PIN sources

class PinTest : public testing::SoftHsmTest {
 protected:
  void TearDown() override { unsetenv("CREDENTIALS_DIRECTORY"); }
};

TEST_F(PinTest, ReadsFileAndDropsTrailingNewline) {
  auto path = token_->WriteFile("crlf.pin", "abc\r\n");
  ASSERT_TRUE(path.ok());
  auto pin = ReadPin(FilePin(*path));
  ASSERT_TRUE(pin.ok()) << pin.status().ToString();
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(pin->data()), pin->size()), "abc");
}

TEST_F(PinTest, ReadsSystemdCredential) {
  ASSERT_TRUE(token_->WriteFile("hsm-pin", "s3cret\n", 0400).ok());
  setenv("CREDENTIALS_DIRECTORY", token_->dir().c_str(), 1);
  auto pin = ReadPin(CredentialPin("hsm-pin"));
  ASSERT_TRUE(pin.ok()) << pin.status().ToString();
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(pin->data()), pin->size()), "s3cret");
}

TEST_F(PinTest, ErrorsNameTheSourceNeverTheContent) {
  ASSERT_TRUE(token_->WriteFile("open.pin", "leaky-pin\n", 0644).ok());
  ASSERT_TRUE(token_->WriteFile("empty.pin", "\n").ok());
  const std::string dir = token_->dir();
  struct Case {
    PinSource source;
    std::string reason;
    std::string message;
  } cases[] = {
      {PinSource{},
       "pin_source_invalid",
       "set exactly one of the PIN file and the systemd credential name"},
      {PinSource{"/x", "y"},
       "pin_source_invalid",
       "set exactly one of the PIN file and the systemd credential name"},
      {CredentialPin("hsm-pin"),
       "pin_source_invalid",
       "the PIN is the systemd credential \"hsm-pin\" but $CREDENTIALS_DIRECTORY is not set; add "
       "LoadCredential=hsm-pin:<path> to the unit, or without systemd set it to a directory "
       "holding the file (docs/operations.md, \"Without systemd\")"},
      {CredentialPin("../pin"),
       "pin_source_invalid",
       "a credential name is a plain file name under $CREDENTIALS_DIRECTORY, without \"/\""},
      {FilePin(dir + "/missing.pin"),
       "pin_unreadable",
       "cannot read the PIN from " + dir + "/missing.pin: No such file or directory"},
      {FilePin(dir + "/empty.pin"),
       "pin_unreadable",
       "cannot read the PIN from " + dir + "/empty.pin: the file is empty"},
      {FilePin(dir + "/open.pin"),
       "pin_file_permissions",
       dir + "/open.pin is readable or writable by other users; chmod o-rw " + dir + "/open.pin"},
  };
  for (const Case& c : cases) {
    auto pin = ReadPin(c.source);
    ASSERT_FALSE(pin.ok()) << c.message;
    EXPECT_EQ(pin.status().reason(), c.reason);
    EXPECT_EQ(pin.status().message(), c.message);
    EXPECT_EQ(pin.status().message().find("leaky-pin"), std::string::npos);
  }
}

// The Hsm against a real SoftHSM2 token.

// The token's data objects of `application` labelled `label`, as a PIN holder sees them.
std::vector<Object> FindRecords(Session& session, const std::string& application,
                                const std::string& label) {
  CK_OBJECT_CLASS klass = CKO_DATA;
  CK_ATTRIBUTE match[] = {{CKA_CLASS, &klass, sizeof klass},
                          {CKA_LABEL, const_cast<char*>(label.data()), label.size()},
                          {CKA_APPLICATION, const_cast<char*>(application.data()),
                           application.size()}};
  auto found = session.Find(match);
  EXPECT_TRUE(found.ok());
  return found.ok() ? std::move(found).value() : std::vector<Object>();
}

// Creates a data object as a PIN holder could: a record vecseal did not write.
void PlantRecord(Session& session, const std::string& application, const std::string& label,
                 const std::vector<uint8_t>& value) {
  CK_OBJECT_CLASS klass = CKO_DATA;
  CK_BBOOL yes = CK_TRUE;
  CK_ATTRIBUTE data[] = {{CKA_CLASS, &klass, sizeof klass},
                         {CKA_TOKEN, &yes, 1},
                         {CKA_PRIVATE, &yes, 1},
                         {CKA_LABEL, const_cast<char*>(label.data()), label.size()},
                         {CKA_APPLICATION, const_cast<char*>(application.data()),
                          application.size()},
                         {CKA_VALUE, const_cast<uint8_t*>(value.data()), value.size()}};
  ASSERT_TRUE(session.Create(data).ok());
}

class HsmTest : public testing::SoftHsmTest {
 protected:

  std::unique_ptr<Hsm> OpenHsm(HsmConfig config) {
    auto hsm = Hsm::Open(config);
    EXPECT_TRUE(hsm.ok()) << hsm.status().ToString();
    return hsm.ok() ? std::move(hsm).value() : nullptr;
  }
  std::unique_ptr<Hsm> OpenHsm() { return OpenHsm(token_->Config()); }
  // For keys of known value, imported with C_CreateObject: the only way to compare the token's
  // derivations with OpenSSL's or the reference's.
  std::unique_ptr<Hsm> OpenHsmAcceptingImportedKeys() {
    HsmConfig config = token_->Config();
    config.accept_imported_keys = true;
    return OpenHsm(config);
  }

  // A raw session on the same token, logged in, for inspecting and tampering.
  struct Raw {
    Module module;
    Session session;
  };
  std::unique_ptr<Raw> OpenRaw() {
    auto raw = std::make_unique<Raw>();
    auto module = Module::Load(token_->module_path());
    EXPECT_TRUE(module.ok()) << module.status().ToString();
    raw->module = std::move(module).value();
    auto slot = raw->module.FindTokenSlot(token_->label());
    EXPECT_TRUE(slot.ok());
    auto session = Session::Open(raw->module, *slot, true);
    EXPECT_TRUE(session.ok());
    raw->session = std::move(session).value();
    EXPECT_TRUE(raw->session.Login(Bytes(token_->user_pin())).ok());
    return raw;
  }

  // opencryptoki 3.8 is a PKCS#11 2.20 module: it knows neither CKA_COPYABLE nor
  // CKA_ALLOWED_MECHANISMS, so vecseal's keys there have neither (docs/hsm.md, "opencryptoki").
  bool LacksPkcs11v240Attributes() const {
    return token_->module() == testing::TestModule::kOpenCryptoki;
  }
  // Reads a boolean attribute, expecting CKA_COPYABLE to be unknown to a 2.20 module.
  void ExpectBool(const Object& key, CK_ATTRIBUTE_TYPE type, bool value) {
    auto flag = key.GetBool(type);
    if (type == CKA_COPYABLE && LacksPkcs11v240Attributes()) {
      EXPECT_EQ(flag.status().message(), "C_GetAttributeValue failed: CKR_ATTRIBUTE_TYPE_INVALID "
                                         "(an attribute type is not valid for this object)");
      return;
    }
    ASSERT_TRUE(flag.ok()) << std::hex << type << ": " << flag.status().ToString();
    EXPECT_EQ(*flag, value) << "attribute 0x" << std::hex << type;
  }

  // The token's flags (C_GetTokenInfo, which needs no login), e.g. its count of failed logins.
  CK_FLAGS TokenFlags() {
    auto module = Module::Load(token_->module_path());
    EXPECT_TRUE(module.ok()) << module.status().ToString();
    if (!module.ok()) return 0;
    auto slot = module->FindTokenSlot(token_->label());
    EXPECT_TRUE(slot.ok()) << slot.status().ToString();
    CK_TOKEN_INFO info{};
    EXPECT_EQ(module->functions()->C_GetTokenInfo(*slot, &info), static_cast<CK_RV>(CKR_OK));
    return info.flags;
  }

  // Imports a model key of known value under `label` with C_CreateObject, as a PIN holder could,
  // with exactly the usage flags vecseal gives `format`, and its parameter object holding
  // `canonical` and the tag over it: a key that is labelled and parameterised as vecseal's.
  // CKA_COPYABLE is set as `copyable` where the module knows it; a PKCS#11 2.20 module
  // (opencryptoki 3.8) refuses it, and gets the key without it, as vecseal's own keys
  // (WithOptionalAttributes in hsm.cc). Returns whether CKA_COPYABLE was set.
  bool ImportModelKey(Raw& raw, const std::string& label, core::KeyFormat format,
                      std::span<const uint8_t> value, bool copyable,
                      std::span<const uint8_t> canonical, const core::Seed& tag) {
    const bool v2 = format == core::KeyFormat::kV2;
    CK_OBJECT_CLASS key_class = CKO_SECRET_KEY;
    CK_KEY_TYPE key_type = v2 ? CKK_AES : CKK_GENERIC_SECRET;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_BBOOL copy = copyable ? CK_TRUE : CK_FALSE;
    CK_BBOOL sign = v2 ? CK_FALSE : CK_TRUE, encrypt = v2 ? CK_TRUE : CK_FALSE;
    CK_ATTRIBUTE key_template[] = {
        {CKA_CLASS, &key_class, sizeof key_class}, {CKA_KEY_TYPE, &key_type, sizeof key_type},
        {CKA_TOKEN, &yes, 1},       {CKA_PRIVATE, &yes, 1},    {CKA_SENSITIVE, &yes, 1},
        {CKA_EXTRACTABLE, &no, 1},  {CKA_SIGN, &sign, 1},      {CKA_ENCRYPT, &encrypt, 1},
        {CKA_VERIFY, &no, 1},       {CKA_DECRYPT, &no, 1},     {CKA_WRAP, &no, 1},
        {CKA_UNWRAP, &no, 1},       {CKA_DERIVE, &no, 1},
        {CKA_LABEL, const_cast<char*>(label.data()), label.size()},
        {CKA_VALUE, const_cast<uint8_t*>(value.data()), value.size()},
        {CKA_COPYABLE, &copy, 1}};  // last, so that it can be left out
    std::vector<CK_ATTRIBUTE> attributes(std::begin(key_template), std::end(key_template));
    // opencryptoki 3.8 gives an imported AES key no CKA_VALUE_LEN unless the template does
    // (key.c, aes_set_default_attributes); SoftHSM2 refuses it there, as PKCS#11 says.
    CK_ULONG value_len = value.size();
    if (v2 && LacksPkcs11v240Attributes()) {
      attributes.insert(attributes.end() - 1, {CKA_VALUE_LEN, &value_len, sizeof value_len});
    }
    auto created = raw.session.Create(attributes);
    const bool set_copyable =
        created.ok() || created.status().message().find("CKR_ATTRIBUTE_TYPE_INVALID") ==
                            std::string::npos;
    if (!set_copyable) {
      created = raw.session.Create(std::span(attributes).first(attributes.size() - 1));
    }
    EXPECT_TRUE(created.ok()) << created.status().ToString();
    std::vector<uint8_t> stored(canonical.begin(), canonical.end());
    stored.insert(stored.end(), tag.begin(), tag.end());
    CK_OBJECT_CLASS data_class = CKO_DATA;
    std::string application = "vecseal/v1/params";
    CK_ATTRIBUTE data[] = {{CKA_CLASS, &data_class, sizeof data_class},
                           {CKA_TOKEN, &yes, 1},
                           {CKA_PRIVATE, &yes, 1},
                           {CKA_LABEL, const_cast<char*>(label.data()), label.size()},
                           {CKA_APPLICATION, application.data(), application.size()},
                           {CKA_VALUE, stored.data(), stored.size()}};
    EXPECT_TRUE(raw.session.Create(data).ok());
    return set_copyable;
  }


  Object FindOne(Session& session, CK_OBJECT_CLASS klass, const std::string& label) {
    CK_ATTRIBUTE match[] = {{CKA_CLASS, &klass, sizeof klass},
                            {CKA_LABEL, const_cast<char*>(label.data()), label.size()}};
    auto found = session.Find(match);
    EXPECT_TRUE(found.ok());
    EXPECT_EQ(found->size(), 1u) << label;
    return found->empty() ? Object() : std::move(found->front());
  }

  // Replaces the parameter object of `label` with `value` (what an attacker with the PIN can do).
  void ReplaceParams(Session& session, const std::string& label, std::vector<uint8_t> value) {
    Object old = FindOne(session, CKO_DATA, label);
    ASSERT_TRUE(old.Destroy().ok());
    CK_OBJECT_CLASS klass = CKO_DATA;
    CK_BBOOL yes = CK_TRUE;
    std::string application = "vecseal/v1/params";
    CK_ATTRIBUTE data[] = {{CKA_CLASS, &klass, sizeof klass},
                           {CKA_TOKEN, &yes, sizeof yes},
                           {CKA_PRIVATE, &yes, sizeof yes},
                           {CKA_LABEL, const_cast<char*>(label.data()), label.size()},
                           {CKA_APPLICATION, application.data(), application.size()},
                           {CKA_VALUE, value.data(), value.size()}};
    ASSERT_TRUE(session.Create(data).ok());
  }

};

TEST_F(HsmTest, TokenNotFoundNamesTheLabel) {
  HsmConfig config = token_->Config();
  config.token_label = "prod-hsm";
  auto hsm = Hsm::Open(config);
  ASSERT_FALSE(hsm.ok());
  EXPECT_EQ(hsm.status().code(), Code::kNotFound);
  EXPECT_EQ(hsm.status().reason(), "token_not_found");
  EXPECT_EQ(hsm.status().message(),
            "no token labelled \"prod-hsm\" in " + token_->module_path() +
                " (tokens present: \"vecseal-test\")");
}

TEST_F(HsmTest, InvalidConfigNamesTheField) {
  struct Case {
    void (*change)(HsmConfig&);
    std::string message;
  } cases[] = {
      {[](HsmConfig& c) { c.module_path = "libsofthsm2.so"; },
       "module_path: give the absolute path of the PKCS#11 module (.so)"},
      {[](HsmConfig& c) { c.token_label = ""; },
       "token_label: give the token label, 1 to 32 bytes"},
      {[](HsmConfig& c) { c.sessions = 0; }, "sessions: give between 1 and 256 pooled sessions"},
      {[](HsmConfig& c) { c.recovery_attempts = 0; },
       "recovery: recovery_attempts must be at least 1 and max_backoff at least initial_backoff"},
  };
  for (const Case& c : cases) {
    HsmConfig config = token_->Config();
    c.change(config);
    auto hsm = Hsm::Open(config);
    ASSERT_FALSE(hsm.ok());
    EXPECT_EQ(hsm.status().reason(), "invalid_hsm_config");
    EXPECT_EQ(hsm.status().message(), c.message);
  }
}

TEST_F(HsmTest, WrongPinIsOneClearErrorAndDoesNotLockTheToken) {
  auto wrong = token_->WriteFile("wrong.pin", "not-the-pin\n");
  ASSERT_TRUE(wrong.ok());
  HsmConfig config = token_->Config();
  config.pin.file = *wrong;
  // Each module shows failed logins in its token flags. opencryptoki 3.8 counts them down in
  // code (new_host.c SC_Login, sess_mgr.c set_login_flags): CKF_USER_PIN_COUNT_LOW after one,
  // CKF_USER_PIN_FINAL_TRY after two, locked by the third, until the SO sets the PIN again. So
  // two Opens there, each moving the count by exactly one, prove no retry hides inside Open;
  // SoftHSM2 sets CKF_USER_PIN_COUNT_LOW and never locks, so three Opens do there.
  const bool locks_at_three = token_->module() == testing::TestModule::kOpenCryptoki;
  const CK_FLAGS kPinFlags = CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY | CKF_USER_PIN_LOCKED;
  const int opens = locks_at_three ? 2 : 3;
  for (int i = 0; i < opens; ++i) {
    auto hsm = Hsm::Open(config);
    ASSERT_FALSE(hsm.ok());
    EXPECT_EQ(hsm.status().code(), Code::kUnavailable);
    EXPECT_EQ(hsm.status().reason(), "hsm_login_failed");
    EXPECT_EQ(hsm.status().message(),
              "login to token \"vecseal-test\" failed: the PIN is wrong (CKR_PIN_INCORRECT); "
              "check the PIN in PIN file " + *wrong +
                  ". vecseal tried exactly once, so at most one attempt counted against the "
                  "token's retry limit");
    EXPECT_EQ(hsm.status().message().find("not-the-pin"), std::string::npos);
    const CK_FLAGS flags = TokenFlags() & kPinFlags;
    if (locks_at_three) {
      EXPECT_EQ(flags, i == 0 ? CKF_USER_PIN_COUNT_LOW : CKF_USER_PIN_FINAL_TRY)
          << "Open " << i + 1 << " counted exactly one attempt";
    } else {
      EXPECT_EQ(flags, CKF_USER_PIN_COUNT_LOW) << "Open " << i + 1 << " reached the token";
    }
  }
  auto right = Hsm::Open(token_->Config());
  ASSERT_TRUE(right.ok()) << right.status().ToString();
  EXPECT_TRUE((*right)->Ping().ok());
  EXPECT_EQ(TokenFlags() & kPinFlags, 0u) << "a good login clears the count";
}

TEST_F(HsmTest, LogsInWithSystemdCredential) {
  ASSERT_TRUE(token_->WriteFile("vecseal-pin", token_->user_pin(), 0400).ok());
  setenv("CREDENTIALS_DIRECTORY", token_->dir().c_str(), 1);
  HsmConfig config = token_->Config();
  config.pin = CredentialPin("vecseal-pin");
  auto hsm = Hsm::Open(config);
  unsetenv("CREDENTIALS_DIRECTORY");
  ASSERT_TRUE(hsm.ok()) << hsm.status().ToString();
  EXPECT_TRUE((*hsm)->Ping().ok());
}

TEST_F(HsmTest, CreateFindListRotate) {
  auto hsm = OpenHsm();
  ASSERT_TRUE(hsm);
  auto empty = hsm->ListKeys();
  ASSERT_TRUE(empty.ok()) << empty.status().ToString();
  EXPECT_TRUE(empty->empty());

  auto created = hsm->CreateKey("ratings", Params(2.5, core::TransformKind::kPermute, 768));
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  EXPECT_EQ(created->version, 1u);
  EXPECT_EQ(created->label, "vecseal:ratings:v1");
  EXPECT_GT(created->params.created_unix, 1700000000);
  ASSERT_TRUE(hsm->CreateKey("topics", Params(1.0)).ok());

  auto again = hsm->CreateKey("ratings", Params(1.0));
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), Code::kAlreadyExists);
  EXPECT_EQ(again.status().reason(), "key_exists");

  auto rotated = hsm->RotateKey("ratings", core::KeyFormat::kV1);
  ASSERT_TRUE(rotated.ok()) << rotated.status().ToString();
  EXPECT_EQ(rotated->version, 2u);
  EXPECT_EQ(rotated->params.approximation_factor, 2.5);
  EXPECT_EQ(rotated->params.transform, core::TransformKind::kPermute);
  EXPECT_EQ(rotated->params.dimension, 768u);

  auto list = hsm->ListKeys();
  ASSERT_TRUE(list.ok()) << list.status().ToString();
  ASSERT_EQ(list->size(), 3u);
  EXPECT_EQ((*list)[0].name, "ratings");
  EXPECT_EQ((*list)[0].version, 1u);
  EXPECT_EQ((*list)[1].name, "ratings");
  EXPECT_EQ((*list)[1].version, 2u);
  EXPECT_EQ((*list)[2].name, "topics");
  EXPECT_EQ((*list)[2].params.dimension, std::nullopt);

  auto newest = hsm->FindKey("ratings");
  ASSERT_TRUE(newest.ok()) << newest.status().ToString();
  EXPECT_EQ(newest->info.version, 2u);
  auto v1 = hsm->FindKey("ratings", 1);
  ASSERT_TRUE(v1.ok());
  EXPECT_EQ(v1->info.version, 1u);

  // Both versions derive, and differently: rotation made a new key and kept the old one.
  core::Seed a{}, b{};
  ASSERT_TRUE(v1->deriver->DeriveOne(Bytes("nonce"), a).ok());
  ASSERT_TRUE(newest->deriver->DeriveOne(Bytes("nonce"), b).ok());
  EXPECT_NE(a, b);

  for (auto [name, version] : {std::pair<std::string, std::optional<uint32_t>>{"nope", {}},
                               {"ratings", 3u}}) {
    auto missing = hsm->FindKey(name, version);
    ASSERT_FALSE(missing.ok());
    EXPECT_EQ(missing.status().code(), Code::kNotFound);
    EXPECT_EQ(missing.status().reason(), "key_not_found");
  }
  auto rotate_missing = hsm->RotateKey("nope");
  EXPECT_EQ(rotate_missing.status().reason(), "key_not_found");
  EXPECT_EQ(hsm->FindKey("Bad Name").status().reason(), "invalid_key_name");
}

TEST_F(HsmTest, KeysPersistAcrossReopen) {
  {
    auto hsm = OpenHsm();
    ASSERT_TRUE(hsm);
    ASSERT_TRUE(hsm->CreateKey("persist", Params(1.5)).ok());
  }
  auto hsm = OpenHsm();
  ASSERT_TRUE(hsm);
  auto key = hsm->FindKey("persist");
  ASSERT_TRUE(key.ok()) << key.status().ToString();
  EXPECT_EQ(key->info.params.approximation_factor, 1.5);
}

TEST_F(HsmTest, ListingIgnoresForeignObjects) {
  auto hsm = OpenHsm();
  ASSERT_TRUE(hsm);
  auto raw = OpenRaw();
  // Another application's secret key, and one that only looks like ours.
  for (std::string label : {"payments-hmac", "vecseal:Bad Name:v1", "vecseal:x:v0"}) {
    CK_OBJECT_CLASS klass = CKO_SECRET_KEY;
    CK_KEY_TYPE type = CKK_GENERIC_SECRET;
    CK_ULONG size = 32;
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE key[] = {{CKA_CLASS, &klass, sizeof klass}, {CKA_KEY_TYPE, &type, sizeof type},
                          {CKA_VALUE_LEN, &size, sizeof size}, {CKA_TOKEN, &yes, 1},
                          {CKA_LABEL, label.data(), label.size()}};
    ASSERT_TRUE(raw->session.GenerateKey(CKM_GENERIC_SECRET_KEY_GEN, key).ok());
  }
  auto list = hsm->ListKeys();
  ASSERT_TRUE(list.ok()) << list.status().ToString();
  EXPECT_TRUE(list->empty());
}

TEST_F(HsmTest, DeriverOutlivesTheHsm) {
  auto hsm = OpenHsm();
  ASSERT_TRUE(hsm);
  ASSERT_TRUE(hsm->CreateKey("outlive", Params(1.0)).ok());
  auto key = hsm->FindKey("outlive");
  ASSERT_TRUE(key.ok());
  core::Seed before{}, after{};
  ASSERT_TRUE(key->deriver->DeriveOne(Bytes("m"), before).ok());
  hsm.reset();  // the deriver keeps the module loaded and logged in
  Status status = key->deriver->DeriveOne(Bytes("m"), after);
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(before, after);
}

TEST_F(HsmTest, ModelKeyAttributesKeepTheValueInside) {
  auto hsm = OpenHsm();
  ASSERT_TRUE(hsm);
  ASSERT_TRUE(hsm->CreateKey("secret", Params(2.0)).ok());
  auto raw = OpenRaw();
  Object key = FindOne(raw->session, CKO_SECRET_KEY, "vecseal:secret:v1");
  auto value = key.GetAttribute(CKA_VALUE);
  ASSERT_FALSE(value.ok());
  EXPECT_EQ(value.status().code(), Code::kPermissionDenied);
  EXPECT_EQ(value.status().reason(), "attribute_sensitive");
  struct Expect {
    CK_ATTRIBUTE_TYPE type;
    bool value;
  } expected[] = {{CKA_TOKEN, true},        {CKA_SENSITIVE, true}, {CKA_ALWAYS_SENSITIVE, true},
                  {CKA_EXTRACTABLE, false}, {CKA_NEVER_EXTRACTABLE, true},
                  {CKA_COPYABLE, false},    {CKA_MODIFIABLE, false}, {CKA_SIGN, true},
                  {CKA_DERIVE, false},      {CKA_PRIVATE, true}};
  for (const Expect& e : expected) ExpectBool(key, e.type, e.value);
  auto size = key.GetAttribute(CKA_VALUE_LEN);
  ASSERT_TRUE(size.ok());
  CK_ULONG length = 0;
  std::memcpy(&length, size->data(), sizeof length);
  EXPECT_EQ(length, 32u);
  // And the copy that would speed SoftHSM2 up is refused for such a key.
  CK_BBOOL no = CK_FALSE, yes = CK_TRUE;
  CK_ATTRIBUTE session_only[] = {{CKA_TOKEN, &no, sizeof no}};
  auto copy = raw->session.Copy(key.handle(), session_only, true);
  if (LacksPkcs11v240Attributes()) {
    // Without CKA_COPYABLE, a PIN holder may copy the key, but the copy keeps the value inside.
    ASSERT_TRUE(copy.ok()) << copy.status().ToString();
    EXPECT_EQ(copy->GetAttribute(CKA_VALUE).status().reason(), "attribute_sensitive");
    ExpectBool(*copy, CKA_EXTRACTABLE, false);
    CK_ATTRIBUTE extractable[] = {{CKA_TOKEN, &no, sizeof no}, {CKA_EXTRACTABLE, &yes, 1}};
    EXPECT_FALSE(raw->session.Copy(key.handle(), extractable, true).ok());
    return;
  }
  ASSERT_FALSE(copy.ok());
  EXPECT_NE(copy.status().message().find("CKR_ACTION_PROHIBITED"), std::string::npos);
}

// Imports a key whose value the test knows, labelled and parameterised as vecseal would, so
// that derivations can be compared with OpenSSL. Only this test knows a key value.
TEST_F(HsmTest, DerivationsEqualOpenSslHmacForAKnownKey) {
  for (bool copies : {false, true}) {
    SCOPED_TRACE(copies ? "copyable key, session copies" : "non-copyable key, token object");
    auto hsm = OpenHsmAcceptingImportedKeys();
    ASSERT_TRUE(hsm);
    auto raw = OpenRaw();
    const std::string name = copies ? "known-copy" : "known";
    std::array<uint8_t, 32> key_value{};
    for (size_t i = 0; i < key_value.size(); ++i) key_value[i] = static_cast<uint8_t>(i * 7 + 1);
    KeyParams params = Params(2.0);
    params.created_unix = 1750000000;
    std::vector<uint8_t> canonical = CanonicalParamBytes(name, 1, params);
    std::string message = std::string(core::kDomainParams) + '\0' +
                          std::string(canonical.begin(), canonical.end());
    const bool copyable = ImportModelKey(*raw, "vecseal:" + name + ":v1", core::KeyFormat::kV1,
                                         key_value, copies, canonical,
                                         OpenSslHmac(key_value, Bytes(message)));
    // A module without CKA_COPYABLE (opencryptoki 3.8) never gets session copies from vecseal,
    // so there the second round uses the token object too.
    SCOPED_TRACE(copyable || !copies ? "" : "the module has no CKA_COPYABLE: token object");

    auto key = hsm->FindKey(name);
    if (LacksPkcs11v240Attributes()) {
      // opencryptoki 3.8 refuses CKA_VALUE_LEN in C_CreateObject of a generic secret and
      // reports 0 (key.c, generic_secret_check_required_attributes), so vecseal cannot tell an
      // imported HMAC key's length there and refuses it even when imported keys are accepted.
      EXPECT_EQ(key.status().reason(), "key_untrusted");
      EXPECT_NE(key.status().message().find("(CKA_VALUE_LEN is 0, not 32)"), std::string::npos)
          << key.status().message();
      GTEST_SKIP() << "opencryptoki 3.8 reports CKA_VALUE_LEN 0 for an imported generic secret, "
                      "so no HMAC key of known value can be used there (refused, as asserted)";
    }
    ASSERT_TRUE(key.ok()) << key.status().ToString();
    EXPECT_EQ(key->info.params.created_unix, 1750000000);
    std::vector<std::string> texts = {"", "a", std::string(1000, 'x'), "vecseal/v1/noise"};
    std::vector<std::span<const uint8_t>> messages;
    for (const auto& text : texts) messages.push_back(Bytes(text));
    std::vector<core::Seed> seeds(messages.size());
    ASSERT_TRUE(key->deriver->Derive(messages, seeds).ok());
    for (size_t i = 0; i < messages.size(); ++i) {
      EXPECT_EQ(seeds[i], OpenSslHmac(key_value, messages[i])) << "message " << i;
    }
    // Single derivations agree with the batch.
    core::Seed one{};
    ASSERT_TRUE(key->deriver->DeriveOne(messages[1], one).ok());
    EXPECT_EQ(one, seeds[1]);
    // Fewer seeds than messages is refused, not written past the end.
    std::vector<core::Seed> too_few(messages.size() - 1);
    EXPECT_EQ(key->deriver->Derive(messages, too_few).reason(), "invalid_length");
  }
}

TEST_F(HsmTest, FormatV2KeysMayOnlyEncryptWithAesEcb) {
  auto hsm = OpenHsm();
  ASSERT_TRUE(hsm);
  auto created = hsm->CreateKey("aes", Params(2.0, core::TransformKind::kRotate, std::nullopt,
                                              core::KeyFormat::kV2));
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  EXPECT_EQ(created->params.format, core::KeyFormat::kV2);
  auto raw = OpenRaw();
  Object key = FindOne(raw->session, CKO_SECRET_KEY, "vecseal:aes:v1");
  EXPECT_EQ(key.GetAttribute(CKA_VALUE).status().reason(), "attribute_sensitive");
  struct Expect {
    CK_ATTRIBUTE_TYPE type;
    bool value;
  } expected[] = {{CKA_ENCRYPT, true},     {CKA_DECRYPT, false},     {CKA_SIGN, false},
                  {CKA_VERIFY, false},     {CKA_WRAP, false},        {CKA_UNWRAP, false},
                  {CKA_DERIVE, false},     {CKA_SENSITIVE, true},    {CKA_EXTRACTABLE, false},
                  {CKA_COPYABLE, false},   {CKA_MODIFIABLE, false},  {CKA_ALWAYS_SENSITIVE, true},
                  {CKA_NEVER_EXTRACTABLE, true}, {CKA_LOCAL, true}};
  for (const Expect& e : expected) ExpectBool(key, e.type, e.value);
  auto type = key.GetAttribute(CKA_KEY_TYPE);
  ASSERT_TRUE(type.ok());
  CK_KEY_TYPE key_type = 0;
  std::memcpy(&key_type, type->data(), sizeof key_type);
  EXPECT_EQ(key_type, CKK_AES);
  auto allowed = key.GetAttribute(CKA_ALLOWED_MECHANISMS);
  if (token_->module() == testing::TestModule::kP11KitServer) {
    // p11-kit 0.24's RPC sends CKA_ALLOWED_MECHANISMS to the server but cannot read it back.
    EXPECT_EQ(allowed.status().message(),
              "C_GetAttributeValue failed: CKR_DEVICE_ERROR (the device reported an error)");
  } else if (LacksPkcs11v240Attributes()) {
    EXPECT_EQ(allowed.status().message(),
              "C_GetAttributeValue failed: CKR_ATTRIBUTE_TYPE_INVALID (an attribute type is not "
              "valid for this object)");
  } else {
    ASSERT_TRUE(allowed.ok()) << allowed.status().ToString();
    ASSERT_EQ(allowed->size(), sizeof(CK_MECHANISM_TYPE));
    CK_MECHANISM_TYPE mechanism = 0;
    std::memcpy(&mechanism, allowed->data(), sizeof mechanism);
    EXPECT_EQ(mechanism, static_cast<CK_MECHANISM_TYPE>(CKM_AES_ECB));
  }
  // The token itself refuses any other use of the key, even to a PIN holder; without
  // CKA_ALLOWED_MECHANISMS only the usage flags bind it, so other AES encryption modes work.
  std::array<uint8_t, 32> out{};
  EXPECT_FALSE(raw->session.Sign(CKM_SHA256_HMAC, key.handle(), Bytes("m"), out).ok());
  std::array<uint8_t, 16> block{}, cipher{}, iv{};
  CK_MECHANISM cbc{CKM_AES_CBC, iv.data(), iv.size()};
  CK_FUNCTION_LIST_PTR functions = raw->session.functions();
  const CK_RV cbc_init = functions->C_EncryptInit(raw->session.handle(), &cbc, key.handle());
  EXPECT_EQ(cbc_init == CKR_OK, LacksPkcs11v240Attributes()) << CkrName(cbc_init);
  if (cbc_init == CKR_OK) {  // ends the operation
    CK_ULONG length = cipher.size();
    EXPECT_EQ(functions->C_Encrypt(raw->session.handle(), block.data(), block.size(),
                                   cipher.data(), &length),
              static_cast<CK_RV>(CKR_OK));
  }
  EXPECT_EQ(raw->session.EncryptRaw(CKM_AES_ECB, key.handle(), block, cipher, 16),
            static_cast<CK_RV>(CKR_OK));
  // Its HMAC-only Derive is refused rather than answered wrongly.
  auto found = hsm->FindKey("aes");
  ASSERT_TRUE(found.ok()) << found.status().ToString();
  core::Seed seed{};
  EXPECT_EQ(found->deriver->DeriveOne(Bytes("m"), seed).reason(), "wrong_key_format");
}

// The key of the format v2 known answers (docs/format.md §20), imported: the token's
// derivations then give the reference's bytes, and its parameters verify under the parameters
// key the reference lists.
TEST_F(HsmTest, FormatV2DerivationsEqualTheReferenceForItsKey) {
  auto hsm = OpenHsmAcceptingImportedKeys();
  ASSERT_TRUE(hsm);
  auto raw = OpenRaw();
  std::array<uint8_t, 32> key_value{};
  for (size_t i = 0; i < key_value.size(); ++i) key_value[i] = static_cast<uint8_t>(i);
  const std::string name = "kat";
  // PK and TK of the v2 known answers.
  const std::string params_key =
      "80c3017e8f89ab315ede32b11e48ab50fa7ba8ba289bbb5d04537f426ea4468c";
  const std::string token_key =
      "4ef4b88bebd54953c37ffaf66efaca7bd2b5021f9f0cc098bc87d98662967c17";
  std::vector<uint8_t> pk(32);
  for (size_t i = 0; i < pk.size(); ++i) {
    pk[i] = static_cast<uint8_t>(std::stoi(params_key.substr(2 * i, 2), nullptr, 16));
  }
  KeyParams params = Params(1.5, core::TransformKind::kPermute, 8u, core::KeyFormat::kV2);
  params.created_unix = 1760000000;
  std::vector<uint8_t> canonical = CanonicalParamBytes(name, 1, params);
  ASSERT_EQ(canonical[0], 2) << "the canonical bytes start with the format";
  std::string message = std::string(core::kDomainParamsV2) + '\0' +
                        std::string(canonical.begin(), canonical.end());
  ImportModelKey(*raw, "vecseal:" + name + ":v1", core::KeyFormat::kV2, key_value, false,
                 canonical, OpenSslHmac(pk, Bytes(message)));

  auto key = hsm->FindKey(name);
  ASSERT_TRUE(key.ok()) << key.status().ToString();
  EXPECT_EQ(key->info.params.format, core::KeyFormat::kV2);
  EXPECT_EQ(key->info.params.dimension, 8u);
  core::Seed tk{};
  ASSERT_TRUE(core::DeriveSecretV2(*key->deriver, core::BlockDomain::kTokenKey, core::BlockInput{},
                                   tk)
                  .ok());
  std::string hex;
  for (uint8_t b : tk) {
    static constexpr char kDigits[] = "0123456789abcdef";
    hex += kDigits[b >> 4];
    hex += kDigits[b & 15];
  }
  EXPECT_EQ(hex, token_key);
}

// Issue #17 row 11: β = 1e300 made every output infinite, and β = 1e-300 no noise at all.
TEST_F(HsmTest, NewKeysTakeABetaWithinTheDocumentedRange) {
  auto hsm = OpenHsm();
  ASSERT_TRUE(hsm);
  for (double beta : {1e300, 1e-300, 0.0009, 1000.5}) {
    auto created = hsm->CreateKey("beta", Params(beta));
    ASSERT_FALSE(created.ok()) << beta;
    EXPECT_EQ(created.status().reason(), "invalid_key_params") << beta;
    EXPECT_EQ(created.status().message(),
              "the approximation factor (beta) of a new key must be between 0.001 and 1000; "
              "vecseal calibrate recommends one for your data");
  }
  EXPECT_TRUE(hsm->CreateKey("smallest", Params(kMinApproximationFactor)).ok());
  EXPECT_TRUE(hsm->CreateKey("largest", Params(kMaxApproximationFactor)).ok());
}

// Issue #17 row 10(b): a PIN holder plants a key whose value they know under a vecseal label,
// with parameters whose HMAC they can compute, hoping the daemon will use it. It is refused:
// the token did not generate it. The same object is accepted when imported keys are trusted.
TEST_F(HsmTest, PlantedKeyOfKnownValueIsRefusedAsUntrusted) {
  auto raw = OpenRaw();
  std::array<uint8_t, 32> key_value{};
  key_value.fill(0x5a);
  const std::string name = "planted";
  KeyParams params = Params(2.0);
  std::vector<uint8_t> canonical = CanonicalParamBytes(name, 1, params);
  std::string message = std::string(core::kDomainParams) + '\0' +
                        std::string(canonical.begin(), canonical.end());
  ImportModelKey(*raw, "vecseal:" + name + ":v1", core::KeyFormat::kV1, key_value, false,
                 canonical, OpenSslHmac(key_value, Bytes(message)));

  auto hsm = OpenHsm();
  ASSERT_TRUE(hsm);
  auto key = hsm->FindKey(name);
  ASSERT_FALSE(key.ok());
  EXPECT_EQ(key.status().code(), Code::kFailedPrecondition);
  EXPECT_EQ(key.status().reason(), "key_untrusted");
  EXPECT_EQ(key.status().message(),
            "the key vecseal:planted:v1 was not generated by this token with vecseal's "
            "attributes (CKA_LOCAL is false), so someone outside may know its value; vecseal "
            "refuses it. Delete the object and rotate the key, or, for keys migrated from "
            "another HSM, set accept_imported_keys");
  EXPECT_EQ(hsm->ListKeys().status().reason(), "key_untrusted") << "listing fails closed too";
  hsm.reset();
  auto trusting = OpenHsmAcceptingImportedKeys();
  ASSERT_TRUE(trusting);
  auto accepted = trusting->FindKey(name);
  if (LacksPkcs11v240Attributes()) {
    // Its CKA_VALUE_LEN reads 0 there (DerivationsEqualOpenSslHmacForAKnownKey).
    EXPECT_NE(accepted.status().message().find("(CKA_VALUE_LEN is 0, not 32)"), std::string::npos)
        << accepted.status().ToString();
  } else {
    EXPECT_TRUE(accepted.ok()) << accepted.status().ToString();
  }
}

// A generated key whose usage flags were widened afterwards (possible when it was created
// modifiable) is refused too.
TEST_F(HsmTest, KeyWithWidenedUsageIsRefusedAsUntrusted) {
  HsmConfig config = token_->Config();
  config.create_copyable_keys = true;  // CKA_MODIFIABLE true, so C_SetAttributeValue works
  auto hsm = OpenHsm(config);
  ASSERT_TRUE(hsm);
  ASSERT_TRUE(hsm->CreateKey("widened", Params(1.0)).ok());
  auto raw = OpenRaw();
  Object key = FindOne(raw->session, CKO_SECRET_KEY, "vecseal:widened:v1");
  CK_BBOOL yes = CK_TRUE;
  CK_ATTRIBUTE derive[] = {{CKA_DERIVE, &yes, 1}};
  ASSERT_EQ(raw->session.functions()->C_SetAttributeValue(raw->session.handle(), key.handle(),
                                                          derive, 1),
            static_cast<CK_RV>(CKR_OK));
  auto found = hsm->FindKey("widened");
  ASSERT_FALSE(found.ok());
  EXPECT_EQ(found.status().reason(), "key_untrusted");
  EXPECT_NE(found.status().message().find("(CKA_DERIVE is true)"), std::string::npos)
      << found.status().message();
}

// A token-generated AES key of the wrong size under a vecseal label is not a format 2 key.
TEST_F(HsmTest, ShortAesKeyIsRefusedAsUntrusted) {
  auto raw = OpenRaw();
  const std::string label = "vecseal:short:v1";
  CK_OBJECT_CLASS key_class = CKO_SECRET_KEY;
  CK_KEY_TYPE key_type = CKK_AES;
  CK_ULONG size = 16;
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  CK_ATTRIBUTE key_template[] = {
      {CKA_CLASS, &key_class, sizeof key_class}, {CKA_KEY_TYPE, &key_type, sizeof key_type},
      {CKA_VALUE_LEN, &size, sizeof size},       {CKA_TOKEN, &yes, 1},
      {CKA_PRIVATE, &yes, 1},                    {CKA_SENSITIVE, &yes, 1},
      {CKA_EXTRACTABLE, &no, 1},                 {CKA_ENCRYPT, &yes, 1},
      {CKA_SIGN, &no, 1},                        {CKA_VERIFY, &no, 1},
      {CKA_DECRYPT, &no, 1},                     {CKA_WRAP, &no, 1},
      {CKA_UNWRAP, &no, 1},                      {CKA_DERIVE, &no, 1},
      {CKA_LABEL, const_cast<char*>(label.data()), label.size()}};
  ASSERT_TRUE(raw->session.GenerateKey(CKM_AES_KEY_GEN, key_template).ok());
  auto hsm = OpenHsm();
  ASSERT_TRUE(hsm);
  auto key = hsm->FindKey("short");
  ASSERT_FALSE(key.ok());
  EXPECT_EQ(key.status().reason(), "key_untrusted");
  EXPECT_NE(key.status().message().find("(CKA_VALUE_LEN is 16, not 32)"), std::string::npos)
      << key.status().message();
}

// A key carrying a vecseal label but a template that lets its bytes out is refused before use.
TEST_F(HsmTest, KeysWhoseBytesCouldLeaveTheTokenAreRefused) {
  auto hsm = OpenHsm();
  ASSERT_TRUE(hsm);
  auto raw = OpenRaw();
  for (bool sensitive : {false, true}) {
    const std::string name = sensitive ? "extractable" : "not-sensitive";
    SCOPED_TRACE(name);
    std::string label = "vecseal:" + name + ":v1";
    std::array<uint8_t, 32> key_value{};
    CK_OBJECT_CLASS key_class = CKO_SECRET_KEY;
    CK_KEY_TYPE key_type = CKK_GENERIC_SECRET;
    CK_BBOOL yes = CK_TRUE;
    CK_BBOOL is_sensitive = sensitive ? CK_TRUE : CK_FALSE;
    CK_BBOOL is_extractable = sensitive ? CK_TRUE : CK_FALSE;
    CK_ATTRIBUTE key_template[] = {{CKA_CLASS, &key_class, sizeof key_class},
                                   {CKA_KEY_TYPE, &key_type, sizeof key_type},
                                   {CKA_TOKEN, &yes, 1},
                                   {CKA_PRIVATE, &yes, 1},
                                   {CKA_SENSITIVE, &is_sensitive, 1},
                                   {CKA_EXTRACTABLE, &is_extractable, 1},
                                   {CKA_SIGN, &yes, 1},
                                   {CKA_LABEL, label.data(), label.size()},
                                   {CKA_VALUE, key_value.data(), key_value.size()}};
    ASSERT_TRUE(raw->session.Create(key_template).ok());
    auto key = hsm->FindKey(name);
    ASSERT_FALSE(key.ok());
    EXPECT_EQ(key.status().code(), Code::kFailedPrecondition);
    EXPECT_EQ(key.status().reason(), "key_unprotected");
  }
}

TEST_F(HsmTest, ConcurrentDerivationsAgree) {
  HsmConfig config = token_->Config();
  config.sessions = 2;
  config.create_copyable_keys = true;
  auto hsm = OpenHsm(config);
  ASSERT_TRUE(hsm);
  ASSERT_TRUE(hsm->CreateKey("threads", Params(1.0)).ok());
  auto key = hsm->FindKey("threads");
  ASSERT_TRUE(key.ok());
  core::Seed expected{};
  ASSERT_TRUE(key->deriver->DeriveOne(Bytes("same"), expected).ok());
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 200; ++i) {
        core::Seed seed{};
        Status status = key->deriver->DeriveOne(Bytes("same"), seed);
        if (!status.ok() || seed != expected) {
          if (mismatches++ == 0) ADD_FAILURE() << status.ToString();
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(mismatches.load(), 0);
}

TEST_F(HsmTest, TamperedParametersAreRefused) {
  auto hsm = OpenHsm();
  ASSERT_TRUE(hsm);
  ASSERT_TRUE(hsm->CreateKey("tamper", Params(2.0)).ok());
  auto raw = OpenRaw();
  Object data = FindOne(raw->session, CKO_DATA, "vecseal:tamper:v1");
  auto stored = data.GetAttribute(CKA_VALUE);
  ASSERT_TRUE(stored.ok());

  // β raised from 2.0 to 8.0 with the old tag: the HMAC no longer matches.
  std::vector<uint8_t> changed = *stored;
  size_t beta_offset = 2 + std::string("tamper").size() + 4;
  double beta = 8.0;
  std::memcpy(changed.data() + beta_offset, &beta, sizeof beta);
  ReplaceParams(raw->session, "vecseal:tamper:v1", changed);
  for (auto result : {hsm->FindKey("tamper").status(), hsm->ListKeys().status()}) {
    EXPECT_EQ(result.code(), Code::kFailedPrecondition);
    EXPECT_EQ(result.reason(), "key_params_tampered");
    EXPECT_EQ(result.message(),
              "the stored parameters of vecseal:tamper:v1 fail their HMAC; they were changed "
              "outside vecseal, so the key is refused. Restore the token from backup or rotate "
              "to a new key");
  }
  auto rotate = hsm->RotateKey("tamper");
  EXPECT_EQ(rotate.status().reason(), "key_params_tampered") << "rotation must not copy them";

  // Truncated, and missing altogether.
  ReplaceParams(raw->session, "vecseal:tamper:v1", {1, 2, 3});
  EXPECT_EQ(hsm->FindKey("tamper").status().reason(), "key_params_tampered");
  Object gone = FindOne(raw->session, CKO_DATA, "vecseal:tamper:v1");
  ASSERT_TRUE(gone.Destroy().ok());
  auto missing = hsm->FindKey("tamper");
  EXPECT_EQ(missing.status().code(), Code::kFailedPrecondition);
  EXPECT_EQ(missing.status().reason(), "key_params_missing");

  // The original bytes verify again.
  CK_OBJECT_CLASS klass = CKO_DATA;
  CK_BBOOL yes = CK_TRUE;
  std::string label = "vecseal:tamper:v1";
  std::string application = "vecseal/v1/params";
  CK_ATTRIBUTE restore[] = {{CKA_CLASS, &klass, sizeof klass},
                            {CKA_TOKEN, &yes, 1},
                            {CKA_PRIVATE, &yes, 1},
                            {CKA_LABEL, label.data(), label.size()},
                            {CKA_APPLICATION, application.data(), application.size()},
                            {CKA_VALUE, stored->data(), stored->size()}};
  ASSERT_TRUE(raw->session.Create(restore).ok());
  EXPECT_TRUE(hsm->FindKey("tamper").ok());
}

// Row 5 of the hardening issue: a key created without a dimension takes the first one used, for
// every version, so that a caller cannot make the daemon derive a transform per dimension.
TEST_F(HsmTest, FirstUseFixesTheDimensionOfEveryVersion) {
  for (core::KeyFormat format : {core::KeyFormat::kV1, core::KeyFormat::kV2}) {
    const std::string name = format == core::KeyFormat::kV1 ? "fix-v1" : "fix-v2";
    SCOPED_TRACE(name);
    auto hsm = OpenHsm();
    ASSERT_TRUE(hsm);
    ASSERT_TRUE(hsm->CreateKey(name, Params(2.0, core::TransformKind::kRotate, {}, format)).ok());
    ASSERT_TRUE(hsm->RotateKey(name, format).ok());
    EXPECT_FALSE(hsm->FindKey(name)->info.params.dimension);

    auto out_of_range = hsm->FixDimension(name, 5000);  // above a rotation's 4096
    EXPECT_EQ(out_of_range.status().reason(), "invalid_key_params");
    EXPECT_FALSE(hsm->FindKey(name)->info.params.dimension) << "nothing fixed by a refusal";

    auto fixed = hsm->FixDimension(name, 768);
    ASSERT_TRUE(fixed.ok()) << fixed.status().ToString();
    EXPECT_EQ(*fixed, 768u);
    auto again = hsm->FixDimension(name, 512);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(*again, 768u) << "the first use wins";
    hsm.reset();

    auto reopened = OpenHsm();  // it lives on the token, not in the process
    ASSERT_TRUE(reopened);
    for (uint32_t version : {1u, 2u}) {
      EXPECT_EQ(reopened->FindKey(name, version)->info.params.dimension, 768u) << version;
    }
    auto rotated = reopened->RotateKey(name, format);
    ASSERT_TRUE(rotated.ok());
    EXPECT_EQ(rotated->params.dimension, 768u) << "a new version keeps it in its own parameters";
    auto listed = reopened->ListKeys();
    ASSERT_TRUE(listed.ok());
    for (const KeyInfo& info : *listed) {
      if (info.name == name) {
        EXPECT_EQ(info.params.dimension, 768u) << info.version;
      }
    }
  }
}

TEST_F(HsmTest, AFixedDimensionIsAuthenticated) {
  auto hsm = OpenHsm();
  ASSERT_TRUE(hsm);
  ASSERT_TRUE(hsm->CreateKey("pin", Params(2.0)).ok());
  ASSERT_TRUE(hsm->RotateKey("pin").ok());
  ASSERT_TRUE(hsm->FixDimension("pin", 64).ok());
  auto raw = OpenRaw();
  const std::string application = "vecseal/v1/params-dimension";
  const auto fixed_record = [&](const std::string& label) {
    std::vector<Object> found = FindRecords(raw->session, application, label);
    EXPECT_EQ(found.size(), 1u) << label;
    return found.empty() ? Object() : std::move(found.front());
  };
  const auto plant = [&](const std::string& label, const std::vector<uint8_t>& value) {
    PlantRecord(raw->session, application, label, value);
  };
  Object v1 = fixed_record("vecseal:pin:v1");
  const auto v1_value = v1.GetAttribute(CKA_VALUE);
  ASSERT_TRUE(v1_value.ok());

  // Widened to another dimension under the old tag; then v1's record put beside v2.
  std::vector<uint8_t> widened = *v1_value;
  const size_t dimension_offset = 2 + std::string("pin").size() + 4 + 8 + 1 + 1;
  widened[dimension_offset] = 65;
  ASSERT_TRUE(v1.Destroy().ok());
  plant("vecseal:pin:v1", widened);
  EXPECT_EQ(hsm->FindKey("pin", 1).status().reason(), "key_params_tampered");
  EXPECT_EQ(hsm->FixDimension("pin", 64).status().reason(), "key_params_tampered");
  ASSERT_TRUE(fixed_record("vecseal:pin:v1").Destroy().ok());
  plant("vecseal:pin:v1", *v1_value);
  EXPECT_EQ(hsm->FindKey("pin", 1)->info.params.dimension, 64u) << "the original verifies again";

  Object v2 = fixed_record("vecseal:pin:v2");
  ASSERT_TRUE(v2.Destroy().ok());
  plant("vecseal:pin:v2", *v1_value);
  EXPECT_EQ(hsm->FindKey("pin", 2).status().reason(), "key_params_tampered");
  plant("vecseal:pin:v1", *v1_value);
  auto twice = hsm->FindKey("pin", 1);
  EXPECT_EQ(twice.status().reason(), "key_params_tampered");
  EXPECT_NE(twice.status().message().find("exist twice"), std::string::npos);
}

TEST_F(HsmTest, ParametersOfOneKeyDoNotVerifyForAnother) {
  auto hsm = OpenHsm();
  ASSERT_TRUE(hsm);
  ASSERT_TRUE(hsm->CreateKey("swap", Params(2.0)).ok());
  ASSERT_TRUE(hsm->RotateKey("swap").ok());
  auto raw = OpenRaw();
  auto v1 = FindOne(raw->session, CKO_DATA, "vecseal:swap:v1").GetAttribute(CKA_VALUE);
  ASSERT_TRUE(v1.ok());
  ReplaceParams(raw->session, "vecseal:swap:v2", *v1);
  EXPECT_EQ(hsm->FindKey("swap", 2).status().reason(), "key_params_tampered");
  EXPECT_TRUE(hsm->FindKey("swap", 1).ok());
}

// Minimum versions (docs/hsm.md, "What is on the token").

std::vector<Object> ConfigRecords(Session& session, const std::string& label) {
  return FindRecords(session, "vecseal/v1/key-config", label);
}

void PlantConfigRecord(Session& session, const std::string& label,
                       const std::vector<uint8_t>& value) {
  PlantRecord(session, "vecseal/v1/key-config", label, value);
}

TEST_F(HsmTest, MinimumVersionsAreCheckedStoredAndOutliveARestart) {
  {
    auto hsm = OpenHsm();
    ASSERT_TRUE(hsm);
    ASSERT_TRUE(hsm->CreateKey("aging", Params(2.0)).ok());
    ASSERT_TRUE(hsm->RotateKey("aging").ok());
    ASSERT_TRUE(hsm->RotateKey("aging").ok());
    auto defaults = hsm->ReadKeyConfig("aging");
    ASSERT_TRUE(defaults.ok()) << defaults.status().ToString();
    EXPECT_EQ(*defaults, (KeyConfig{1, 1}));
    for (const KeyConfig& wrong : {KeyConfig{1, 0}, KeyConfig{1, 2}, KeyConfig{4, 1}}) {
      auto refused = hsm->ConfigureKey("aging", wrong);
      EXPECT_EQ(refused.status().reason(), "invalid_key_config")
          << wrong.min_encryption_version << "/" << wrong.min_decryption_version;
    }
    EXPECT_EQ(hsm->ConfigureKey("absent", KeyConfig{1, 1}).status().reason(), "key_not_found");
    auto stored = hsm->ConfigureKey("aging", KeyConfig{3, 2});
    ASSERT_TRUE(stored.ok()) << stored.status().ToString();
    // The records are MACed under each version's key, so using the keys still works.
    EXPECT_TRUE(hsm->FindKey("aging", 1).ok());
  }
  auto hsm = OpenHsm();
  ASSERT_TRUE(hsm);
  auto reread = hsm->ReadKeyConfig("aging");
  ASSERT_TRUE(reread.ok()) << reread.status().ToString();
  EXPECT_EQ(*reread, (KeyConfig{3, 2}));
  // Lowering is a change like any other; only the newest record remains.
  ASSERT_TRUE(hsm->ConfigureKey("aging", KeyConfig{2, 1}).ok());
  EXPECT_EQ(*hsm->ReadKeyConfig("aging"), (KeyConfig{2, 1}));
  auto raw = OpenRaw();
  for (const char* label : {"vecseal:aging:v1", "vecseal:aging:v2", "vecseal:aging:v3"}) {
    EXPECT_EQ(ConfigRecords(raw->session, label).size(), 1u) << label;
  }
}

TEST_F(HsmTest, MinimumVersionsCannotBeForgedOrRolledBackByOneRecord) {
  auto hsm = OpenHsm();
  ASSERT_TRUE(hsm);
  ASSERT_TRUE(hsm->CreateKey("held", Params(2.0)).ok());
  ASSERT_TRUE(hsm->RotateKey("held").ok());
  ASSERT_TRUE(hsm->CreateKey("other", Params(2.0)).ok());
  ASSERT_TRUE(hsm->ConfigureKey("held", KeyConfig{1, 1}).ok());
  auto raw = OpenRaw();
  auto first = ConfigRecords(raw->session, "vecseal:held:v1");
  ASSERT_EQ(first.size(), 1u);
  const auto old_value = first.front().GetAttribute(CKA_VALUE);
  ASSERT_TRUE(old_value.ok());
  ASSERT_TRUE(hsm->ConfigureKey("held", KeyConfig{2, 2}).ok());

  // The older record restored beside v1, in place of the newer: v2's newer record still wins.
  auto newer = ConfigRecords(raw->session, "vecseal:held:v1");
  ASSERT_EQ(newer.size(), 1u);
  ASSERT_TRUE(newer.front().Destroy().ok());
  PlantConfigRecord(raw->session, "vecseal:held:v1", *old_value);
  EXPECT_EQ(*hsm->ReadKeyConfig("held"), (KeyConfig{2, 2}));

  // An edited record fails its MAC; so does one moved to another key.
  auto current = ConfigRecords(raw->session, "vecseal:held:v2");
  ASSERT_EQ(current.size(), 1u);
  auto lowered = current.front().GetAttribute(CKA_VALUE);
  ASSERT_TRUE(lowered.ok());
  const size_t min_decryption_offset = 2 + std::string("held").size() + 4 + 8 + 4;
  ASSERT_EQ((*lowered)[min_decryption_offset], 2);
  (*lowered)[min_decryption_offset] = 1;
  ASSERT_TRUE(current.front().Destroy().ok());
  PlantConfigRecord(raw->session, "vecseal:held:v2", *lowered);
  EXPECT_EQ(hsm->ReadKeyConfig("held").status().reason(), "key_params_tampered");
  PlantConfigRecord(raw->session, "vecseal:other:v1", *old_value);
  EXPECT_EQ(hsm->ReadKeyConfig("other").status().reason(), "key_params_tampered");
}

TEST_F(HsmTest, DeleteKeyDestroysEveryObjectOfTheKeyAndNothingElse) {
  auto hsm = OpenHsm();
  ASSERT_TRUE(hsm);
  ASSERT_TRUE(hsm->CreateKey("gone", Params(2.0)).ok());
  ASSERT_TRUE(hsm->RotateKey("gone").ok());
  ASSERT_TRUE(hsm->FixDimension("gone", 8).ok());
  ASSERT_TRUE(hsm->ConfigureKey("gone", KeyConfig{2, 1}).ok());
  ASSERT_TRUE(hsm->CreateKey("gone2", Params(2.0)).ok());  // a name that extends it stays
  auto deleted = hsm->DeleteKey("gone");
  ASSERT_TRUE(deleted.ok()) << deleted.status().ToString();
  EXPECT_EQ(*deleted, (std::vector<uint32_t>{1, 2}));
  EXPECT_EQ(hsm->FindKey("gone").status().reason(), "key_not_found");
  EXPECT_EQ(hsm->DeleteKey("gone").status().reason(), "key_not_found");
  EXPECT_TRUE(hsm->FindKey("gone2").ok());
  auto raw = OpenRaw();
  CK_BBOOL yes = CK_TRUE;
  CK_ATTRIBUTE token_objects[] = {{CKA_TOKEN, &yes, 1}};
  auto left = raw->session.Find(token_objects);
  ASSERT_TRUE(left.ok());
  for (const Object& object : *left) {
    auto label = object.GetAttribute(CKA_LABEL);
    ASSERT_TRUE(label.ok());
    EXPECT_FALSE(std::string(label->begin(), label->end()).starts_with("vecseal:gone:"));
  }
  // A new key of the name starts clean: no old dimension or minimum versions.
  auto fresh = hsm->CreateKey("gone", Params(2.0));
  ASSERT_TRUE(fresh.ok()) << fresh.status().ToString();
  EXPECT_FALSE(hsm->FindKey("gone")->info.params.dimension.has_value());
  EXPECT_EQ(*hsm->ReadKeyConfig("gone"), (KeyConfig{1, 1}));
}

TEST_F(HsmTest, ADeletionCutShortIsFinishedByDeletingAgain) {
  auto hsm = OpenHsm();
  ASSERT_TRUE(hsm);
  ASSERT_TRUE(hsm->CreateKey("half", Params(2.0)).ok());
  ASSERT_TRUE(hsm->RotateKey("half").ok());
  auto raw = OpenRaw();
  // What a deletion stopped after its first key object leaves: v2 whole, v1's records alone.
  ASSERT_TRUE(FindOne(raw->session, CKO_SECRET_KEY, "vecseal:half:v1").Destroy().ok());
  EXPECT_EQ(hsm->FindKey("half")->info.version, 2u) << "the newest version still encrypts";
  auto finished = hsm->DeleteKey("half");
  ASSERT_TRUE(finished.ok()) << finished.status().ToString();
  EXPECT_EQ(*finished, std::vector<uint32_t>{2});
  // Only records left (every key object gone): deleting removes them and succeeds.
  ASSERT_TRUE(hsm->CreateKey("orphans", Params(2.0)).ok());
  ASSERT_TRUE(FindOne(raw->session, CKO_SECRET_KEY, "vecseal:orphans:v1").Destroy().ok());
  auto swept = hsm->DeleteKey("orphans");
  ASSERT_TRUE(swept.ok()) << swept.status().ToString();
  EXPECT_TRUE(swept->empty());
  EXPECT_EQ(hsm->DeleteKey("orphans").status().reason(), "key_not_found");
  EXPECT_TRUE(hsm->CreateKey("orphans", Params(2.0)).ok());
}

TEST_F(HsmTest, AnAuditKeyPairWhosePrivateHalfCanLeaveIsRefused) {
  if (token_->module() == testing::TestModule::kOpenCryptoki) {
    GTEST_SKIP() << "opencryptoki's soft token has no EC mechanism to plant an EC pair with";
  }
  auto hsm = OpenHsm();
  ASSERT_TRUE(hsm);
  auto raw = OpenRaw();
  const std::string label = "weak-audit";
  const uint8_t p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
  CK_BBOOL yes = CK_TRUE;
  CK_ATTRIBUTE public_template[] = {{CKA_TOKEN, &yes, 1},
                                    {CKA_VERIFY, &yes, 1},
                                    {CKA_EC_PARAMS, const_cast<uint8_t*>(p256), sizeof p256},
                                    {CKA_LABEL, const_cast<char*>(label.data()), label.size()}};
  CK_ATTRIBUTE private_template[] = {{CKA_TOKEN, &yes, 1},
                                     {CKA_PRIVATE, &yes, 1},
                                     {CKA_SENSITIVE, &yes, 1},
                                     {CKA_EXTRACTABLE, &yes, 1},
                                     {CKA_SIGN, &yes, 1},
                                     {CKA_LABEL, const_cast<char*>(label.data()), label.size()}};
  ASSERT_TRUE(
      raw->session.GenerateKeyPair(CKM_EC_KEY_PAIR_GEN, public_template, private_template).ok());
  auto audit = hsm->EnsureAuditKey(label);
  ASSERT_FALSE(audit.ok());
  EXPECT_EQ(audit.status().reason(), "audit_key_invalid");
  EXPECT_NE(audit.status().message().find("extractable"), std::string::npos);
}

// A PIN holder plants an audit key pair whose private key they know (the scalar 1, whose public
// point is P-256's generator) before the daemon first runs, to sign seals over an edited log
// later. The private key is sensitive and not extractable, as vecseal asks, but the token did
// not generate it, so it is refused; accepted only when imported keys are trusted.
TEST_F(HsmTest, APlantedAuditKeyPairIsRefused) {
  auto raw = OpenRaw();
  const std::string label = "planted-audit";
  const uint8_t p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
  const uint8_t generator[] = {
      0x04, 0x41, 0x04,  // an OCTET STRING holding an uncompressed point
      0x6b, 0x17, 0xd1, 0xf2, 0xe1, 0x2c, 0x42, 0x47, 0xf8, 0xbc, 0xe6, 0xe5, 0x63, 0xa4, 0x40,
      0xf2, 0x77, 0x03, 0x7d, 0x81, 0x2d, 0xeb, 0x33, 0xa0, 0xf4, 0xa1, 0x39, 0x45, 0xd8, 0x98,
      0xc2, 0x96, 0x4f, 0xe3, 0x42, 0xe2, 0xfe, 0x1a, 0x7f, 0x9b, 0x8e, 0xe7, 0xeb, 0x4a, 0x7c,
      0x0f, 0x9e, 0x16, 0x2b, 0xce, 0x33, 0x57, 0x6b, 0x31, 0x5e, 0xce, 0xcb, 0xb6, 0x40, 0x68,
      0x37, 0xbf, 0x51, 0xf5};
  std::array<uint8_t, 32> scalar{};
  scalar.back() = 1;
  CK_OBJECT_CLASS public_class = CKO_PUBLIC_KEY, private_class = CKO_PRIVATE_KEY;
  CK_KEY_TYPE ec = CKK_EC;
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  CK_ATTRIBUTE public_key[] = {
      {CKA_CLASS, &public_class, sizeof public_class}, {CKA_KEY_TYPE, &ec, sizeof ec},
      {CKA_TOKEN, &yes, 1}, {CKA_VERIFY, &yes, 1},
      {CKA_EC_PARAMS, const_cast<uint8_t*>(p256), sizeof p256},
      {CKA_EC_POINT, const_cast<uint8_t*>(generator), sizeof generator},
      {CKA_LABEL, const_cast<char*>(label.data()), label.size()}};
  CK_ATTRIBUTE private_key[] = {
      {CKA_CLASS, &private_class, sizeof private_class}, {CKA_KEY_TYPE, &ec, sizeof ec},
      {CKA_TOKEN, &yes, 1}, {CKA_PRIVATE, &yes, 1}, {CKA_SENSITIVE, &yes, 1},
      {CKA_EXTRACTABLE, &no, 1}, {CKA_SIGN, &yes, 1},
      {CKA_EC_PARAMS, const_cast<uint8_t*>(p256), sizeof p256},
      {CKA_VALUE, scalar.data(), scalar.size()},
      {CKA_LABEL, const_cast<char*>(label.data()), label.size()}};
  ASSERT_TRUE(raw->session.Create(public_key).ok());
  ASSERT_TRUE(raw->session.Create(private_key).ok());

  auto hsm = OpenHsm();
  ASSERT_TRUE(hsm);
  auto audit = hsm->EnsureAuditKey(label);
  ASSERT_FALSE(audit.ok());
  EXPECT_EQ(audit.status().reason(), "audit_key_invalid");
  EXPECT_EQ(audit.status().message(),
            "the private audit key \"planted-audit\" was not generated by this token (CKA_LOCAL "
            "is false), so someone outside may know it and sign seals over an edited log; "
            "delete the pair and let vecseal generate it, or, for a key migrated from another "
            "HSM, set accept_imported_keys");
  hsm.reset();
  auto trusting = OpenHsmAcceptingImportedKeys();
  ASSERT_TRUE(trusting);
  EXPECT_TRUE(trusting->EnsureAuditKey(label).ok());
}

TEST_F(HsmTest, AuditKeySignsAndVerifiesWithOpenSsl) {
  auto hsm = OpenHsm();
  ASSERT_TRUE(hsm);
  auto audit = hsm->EnsureAuditKey();
  ASSERT_TRUE(audit.ok()) << audit.status().ToString();
  EXPECT_TRUE(audit->PublicKeyPem().starts_with("-----BEGIN PUBLIC KEY-----\n"));
  auto again = hsm->EnsureAuditKey();
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->PublicKeyPem(), audit->PublicKeyPem()) << "the existing pair is reused";
  EXPECT_TRUE(audit->generated());
  EXPECT_FALSE(again->generated());
  auto other = hsm->EnsureAuditKey("second-audit");
  ASSERT_TRUE(other.ok());
  EXPECT_NE(other->PublicKeyPem(), audit->PublicKeyPem());

  std::array<uint8_t, 32> digest{};
  SHA256(reinterpret_cast<const uint8_t*>("record"), 6, digest.data());
  auto signature = audit->SignDigest(digest);
  ASSERT_TRUE(signature.ok()) << signature.status().ToString();

  BIO* bio = BIO_new_mem_buf(audit->PublicKeyPem().data(),
                             static_cast<int>(audit->PublicKeyPem().size()));
  EVP_PKEY* pkey = PEM_read_bio_PUBKEY(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  ASSERT_NE(pkey, nullptr);
  // ECDSA P-256 where the module has EC; RSA-PSS 3072 on one without (opencryptoki).
  const bool rsa = audit->algorithm() == AuditKeyAlgorithm::kRsaPss3072;
  EXPECT_EQ(rsa, token_->module() == testing::TestModule::kOpenCryptoki);
  EXPECT_EQ(EVP_PKEY_get_bits(pkey), rsa ? 3072 : 256);
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new(pkey, nullptr);
  ASSERT_EQ(EVP_PKEY_verify_init(ctx), 1);
  if (rsa) {
    ASSERT_EQ(EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PSS_PADDING), 1);
    ASSERT_EQ(EVP_PKEY_CTX_set_signature_md(ctx, EVP_sha256()), 1);
    ASSERT_EQ(EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, EVP_sha256()), 1);
    ASSERT_EQ(EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx, 32), 1);
  }
  EXPECT_EQ(EVP_PKEY_verify(ctx, signature->data(), signature->size(), digest.data(),
                            digest.size()),
            1);
  digest[0] ^= 1;
  EXPECT_NE(EVP_PKEY_verify(ctx, signature->data(), signature->size(), digest.data(),
                            digest.size()),
            1);
  EVP_PKEY_CTX_free(ctx);
  EVP_PKEY_free(pkey);

  auto raw = OpenRaw();
  Object priv = FindOne(raw->session, CKO_PRIVATE_KEY, "vecseal-audit");
  EXPECT_EQ(priv.GetAttribute(rsa ? CKA_PRIVATE_EXPONENT : CKA_VALUE).status().reason(),
            "attribute_sensitive");
  auto extractable = priv.GetBool(CKA_EXTRACTABLE);
  ASSERT_TRUE(extractable.ok());
  EXPECT_FALSE(*extractable);
}

// The daemon's audit.pkcs11: the audit key on a second token of the same module, with its own
// PIN. One process then holds two Hsms on one library, which is initialised once and must not
// be finalised under the one that stays.
TEST_F(HsmTest, TwoTokensOfOneModuleKeepTheirOwnPinsAndObjects) {
  if (!token_->SupportsMoreTokens()) {
    GTEST_SKIP() << testing::TestModuleName(token_->module()) << " has one token per store";
  }
  auto audit_pin = token_->AddToken(
      {.label = "vecseal-audit", .user_pin = "audit-user-9876", .so_pin = "audit-so-5432"});
  ASSERT_TRUE(audit_pin.ok()) << audit_pin.status().ToString();
  HsmConfig audit_config = token_->Config();
  audit_config.token_label = "vecseal-audit";
  audit_config.pin = FilePin(*audit_pin);
  HsmConfig crossed = audit_config;
  crossed.pin = FilePin(token_->pin_file());
  auto refused = Hsm::Open(crossed);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().reason(), "hsm_login_failed") << "the model keys' PIN is no use here";

  auto model = OpenHsm();
  ASSERT_TRUE(model);
  ASSERT_TRUE(model->CreateKey("scores", Params(2.5, core::TransformKind::kRotate, std::nullopt,
                                                core::KeyFormat::kV2))
                  .ok());
  std::string audit_pem;
  {
    auto audit = OpenHsm(audit_config);
    ASSERT_TRUE(audit);
    auto audit_key = audit->EnsureAuditKey();
    ASSERT_TRUE(audit_key.ok()) << audit_key.status().ToString();
    EXPECT_TRUE(audit_key->generated());
    audit_pem = audit_key->PublicKeyPem();
    std::array<uint8_t, 32> digest{};
    EXPECT_TRUE(audit_key->SignDigest(digest).ok());
    auto listed = audit->ListKeys();
    ASSERT_TRUE(listed.ok()) << listed.status().ToString();
    EXPECT_TRUE(listed->empty()) << "the model keys are not on the audit token";
  }
  // The audit token's Hsm and key are gone; the module they shared still serves the model keys.
  EXPECT_TRUE(model->Ping().ok());
  auto found = model->FindKey("scores");
  ASSERT_TRUE(found.ok()) << found.status().ToString();

  // No key pair on the model keys' token: whoever holds its PIN has nothing to sign seals with.
  auto raw = OpenRaw();
  for (CK_OBJECT_CLASS klass : {CKO_PRIVATE_KEY, CKO_PUBLIC_KEY}) {
    CK_ATTRIBUTE match[] = {{CKA_CLASS, &klass, sizeof klass}};
    auto pairs = raw->session.Find(match);
    ASSERT_TRUE(pairs.ok());
    EXPECT_TRUE(pairs->empty()) << "class " << klass;
  }

  auto reopened = OpenHsm(audit_config);
  ASSERT_TRUE(reopened);
  auto again = reopened->EnsureAuditKey();
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_FALSE(again->generated());
  EXPECT_EQ(again->PublicKeyPem(), audit_pem);
}

TEST_F(HsmTest, PingFailsClosedWithoutLogin) {
  if (token_->module() == testing::TestModule::kP11KitServer) {
    GTEST_SKIP() << "through p11-kit server every client (here the raw session's) is a server "
                    "process of its own, with its own login state";
  }
  auto hsm = OpenHsm();
  ASSERT_TRUE(hsm);
  EXPECT_TRUE(hsm->Ping().ok());
  // Logging out from another session of this process logs every session out; Ping notices and
  // logs in again.
  auto raw = OpenRaw();
  ASSERT_TRUE(raw->session.Logout().ok());
  auto info = raw->session.Info();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->state, static_cast<CK_STATE>(CKS_RW_PUBLIC_SESSION));
  EXPECT_TRUE(hsm->Ping().ok());
  info = raw->session.Info();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->state, static_cast<CK_STATE>(CKS_RW_USER_FUNCTIONS));
}

}  // namespace
}  // namespace vecseal::pkcs11
