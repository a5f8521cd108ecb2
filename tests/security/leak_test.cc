// Secrets and vector values must not leave vecseald except in the answers meant for them: a
// workload with a known PIN, distinctive vector values and reversible tokens, then a search for
// them everywhere else. Key bytes cannot be searched for (nobody can read them); the test checks
// instead that the token keeps every key sensitive and non-extractable.
#include <unistd.h>

#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "support/dev_daemon.h"
#include "support/secured_daemon.h"
#include "test_util.h"
#include "vecseal/pkcs11/cryptoki.h"

namespace vecseal::security_testing {
namespace {

using daemon::testing::HttpClient;
using daemon::testing::HttpResult;
using nlohmann::json;

// Values no log line would hold by chance.
const std::vector<std::vector<float>> kPlaintext = {{0.7345219f, -0.2918473f, 0.5566071f},
                                                    {-0.8123457f, 0.3141863f, 0.4729361f}};

std::string ProcFile(pid_t pid, const char* name) {
  return policy::testing_util::ReadFile("/proc/" + std::to_string(pid) + "/" + name);
}

class LeakTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (auto reason = testing::SoftHsmUnavailableReason(); !reason.empty()) GTEST_SKIP() << reason;
    const json policy = {
        {"version", 1},
        {"rules",
         {{{"id", "leak-test"},
           {"callers",
            {{"uid", getuid()},
             {"exe_sha256", policy::testing_util::Sha256OfFile("/proc/self/exe")}}},
           {"keys", {"*"}},
           {"operations", {"keys.create", "encrypt", "decrypt"}}}}}};
    std::string error;
    daemon_ = SecuredDaemon::Prepare({.policy_json = policy.dump(), .socket_group = {}}, &error);
    ASSERT_TRUE(daemon_) << error;
    if (!daemon_->Start(&error)) {
      if (geteuid() != 0 && error.find("file_untrusted") != std::string::npos) {
        GTEST_SKIP() << "the temp dir is not trusted for a non-root daemon: " << error;
      }
      FAIL() << error;
    }
  }

  // Every printed form of every plaintext value, and of every value in `vectors`.
  static void AddForms(const json& vectors, std::vector<std::string>& needles) {
    for (const auto& row : vectors) {
      for (const auto& value : row) {
        for (auto& form : PrintedForms(value.get<float>())) needles.push_back(std::move(form));
      }
    }
  }

  std::unique_ptr<SecuredDaemon> daemon_;
};

TEST_F(LeakTest, NoPinVectorValueOrTokenAppearsOutsideTheAnswers) {
  HttpClient client(daemon_->socket_path());
  ASSERT_EQ(
      client.PostJson("/v1/keys", {{"name", "leak-probe"}, {"approximation_factor", 2.5}}).status,
      201u);

  const HttpResult encrypted = client.PostJson("/v1/keys/leak-probe/encrypt",
                                               {{"vectors", kPlaintext}, {"reversible", true}});
  ASSERT_EQ(encrypted.status, 200u) << encrypted.body;
  const json ciphertext = encrypted.Json()["vectors"];
  const json tokens = encrypted.Json()["tokens"];
  ASSERT_EQ(tokens.size(), kPlaintext.size());
  const HttpResult decrypted =
      client.PostJson("/v1/keys/leak-probe/decrypt", {{"vectors", ciphertext}, {"tokens", tokens}});
  ASSERT_EQ(decrypted.status, 200u) << decrypted.body;
  std::vector<float> flat;
  for (const auto& row : kPlaintext) flat.insert(flat.end(), row.begin(), row.end());
  const HttpResult binary =
      client.PostBinary("/v1/keys/leak-probe/encrypt", daemon::testing::FloatsToBytes(flat),
                        {{"Vecseal-Dimension", "3"}, {"Vecseal-Reversible", "true"}});
  ASSERT_EQ(binary.status, 200u) << binary.body;

  // Requests that fail while carrying the values: each error body is searched too.
  std::string tampered = tokens[0].get<std::string>();
  tampered[tampered.size() / 2] = tampered[tampered.size() / 2] == 'A' ? 'B' : 'A';
  const std::string raw_vectors = json(kPlaintext).dump();
  const std::vector<HttpResult> errors = {
      client.PostJson("/v1/keys/no-such-key/encrypt", {{"vectors", kPlaintext}}),
      client.PostJson("/v1/keys/leak-probe/decrypt",
                      {{"vectors", ciphertext}, {"tokens", {tampered, tokens[1]}}}),
      client.PostJson("/v1/keys/leak-probe/decrypt",
                      {{"vectors", ciphertext}, {"tokens", {tokens[0]}}}),
      client.Send({.method = "POST",
                   .target = "/v1/keys/leak-probe/encrypt",
                   .body = R"({"vectors": )" + raw_vectors.substr(0, raw_vectors.size() - 1) + ",",
                   .content_type = "application/json",
                   .headers = {}}),
      client.Send({.method = "POST",
                   .target = "/v1/keys/leak-probe/encrypt",
                   .body = R"({"vectors": [[0.7345219, -0.2918473, "0.5566071"]]})",
                   .content_type = "application/json",
                   .headers = {}}),
      client.PostJson("/v1/keys/leak-probe/encrypt",
                      {{"vectors", {{0.7345219, -0.2918473}, {0.5566071}}}}),
      client.PostBinary("/v1/keys/leak-probe/encrypt",
                        daemon::testing::FloatsToBytes(flat).substr(1),
                        {{"Vecseal-Dimension", "3"}}),
  };
  for (const auto& error : errors) {
    EXPECT_GE(error.status, 400u) << error.body;
    EXPECT_NE(error.ErrorCode(), "") << error.body;
  }
  const std::string environ_text = ProcFile(daemon_->pid(), "environ");
  const std::string cmdline_text = ProcFile(daemon_->pid(), "cmdline");
  ASSERT_FALSE(cmdline_text.empty());
  ASSERT_EQ(daemon_->Stop(), 0);

  std::vector<std::string> values;
  AddForms(kPlaintext, values);
  AddForms(ciphertext, values);
  AddForms(decrypted.Json()["vectors"], values);
  std::vector<std::string> secrets = {kTokenPin};
  for (const auto& token : tokens) secrets.push_back(token.get<std::string>());
  secrets.push_back(tampered);

  std::string error_bodies;
  for (const auto& error : errors) error_bodies += error.body;
  const std::string log = daemon_->Log();
  const std::string audit = daemon_->AuditBytes();
  // The places searched hold what they should, so an empty search proves something.
  ASSERT_NE(log.find("event=ready"), std::string::npos) << log;
  ASSERT_NE(audit.find("\"operation\":\"decrypt\""), std::string::npos);
  if (geteuid() == 0) {
    ASSERT_NE(environ_text.find("SOFTHSM2_CONF="), std::string::npos);
  } else {
    EXPECT_EQ(environ_text, "") << "a non-dumpable daemon's environ is root's, even to its own uid";
  }

  const struct {
    const char* where;
    const std::string& text;
  } places[] = {{"the daemon's stderr", log},
                {"the audit log", audit},
                {"error bodies", error_bodies},
                {"/proc/PID/environ", environ_text},
                {"/proc/PID/cmdline", cmdline_text}};
  size_t bytes = 0;
  for (const auto& place : places) bytes += place.text.size();
  std::cout << "[ NOTE     ] searched " << std::size(places) << " places, " << bytes
            << " bytes, for " << values.size() << " printed vector values and " << secrets.size()
            << " secrets\n";
  for (const auto& place : places) {
    EXPECT_EQ(FindAny(place.text, secrets), std::nullopt) << "a secret in " << place.where;
    EXPECT_EQ(FindAny(place.text, values), std::nullopt) << "a vector value in " << place.where;
  }
  // The search would find a value in an answer: the needles are right.
  EXPECT_NE(FindAny(encrypted.body, std::vector<std::string>{ciphertext[0][0].dump()}),
            std::nullopt);
}

// A PIN the token refuses stops the start; neither it nor the right one is echoed anywhere.
TEST_F(LeakTest, ARefusedPinIsNotEchoed) {
  ASSERT_EQ(daemon_->Stop(), 0);
  const std::string wrong = "wrong-pin-canary-8c1d0b";
  policy::testing_util::WriteFile(daemon_->token().pin_file(), wrong + "\n", 0600);
  std::string error;
  ASSERT_FALSE(daemon_->Start(&error)) << "started with a wrong PIN";
  EXPECT_EQ(daemon_->exit_status(), 1);
  const std::string log = daemon_->Log();
  ASSERT_NE(log.find("event=start_failed"), std::string::npos) << log;
  EXPECT_NE(log.find(daemon_->token().pin_file()), std::string::npos)
      << "the error names where the PIN came from: " << log;
  EXPECT_EQ(FindAny(log + daemon_->AuditBytes(), {wrong, kTokenPin}), std::nullopt) << log;
}

// Every secret on the token (model keys created through the daemon, the audit signing key) says
// it cannot leave: sensitive, never extractable, and its value is refused to a logged-in session.
TEST_F(LeakTest, KeysCreatedThroughTheDaemonCannotLeaveTheToken) {
  HttpClient client(daemon_->socket_path());
  ASSERT_EQ(
      client.PostJson("/v1/keys", {{"name", "probe-rotate"}, {"approximation_factor", 2.5}}).status,
      201u);
  ASSERT_EQ(client
                .PostJson("/v1/keys", {{"name", "probe-permute"},
                                       {"approximation_factor", 1.0},
                                       {"transform", "permute"}})
                .status,
            201u);
  ASSERT_EQ(daemon_->Stop(), 0);

  auto module = pkcs11::Module::Load(testing::kSoftHsmModule);
  ASSERT_TRUE(module.ok()) << module.status().ToString();
  auto slot = module->FindTokenSlot(daemon_->token().label());
  ASSERT_TRUE(slot.ok()) << slot.status().ToString();
  auto session = pkcs11::Session::Open(*module, *slot, false);
  ASSERT_TRUE(session.ok()) << session.status().ToString();
  const std::string pin = kTokenPin;
  ASSERT_TRUE(session->Login({reinterpret_cast<const uint8_t*>(pin.data()), pin.size()}).ok());

  size_t checked = 0;
  for (CK_OBJECT_CLASS klass : {CKO_SECRET_KEY, CKO_PRIVATE_KEY}) {
    CK_ATTRIBUTE match[] = {{CKA_CLASS, &klass, sizeof klass}};
    auto found = session->Find(match);
    ASSERT_TRUE(found.ok()) << found.status().ToString();
    for (const auto& object : *found) {
      auto label = object.GetAttribute(CKA_LABEL);
      ASSERT_TRUE(label.ok());
      SCOPED_TRACE(std::string(label->begin(), label->end()));
      ++checked;
      const auto expect_flag = [&](CK_ATTRIBUTE_TYPE type, bool expected) {
        const auto flag = object.GetBool(type);
        ASSERT_TRUE(flag.ok()) << "attribute 0x" << std::hex << type;
        EXPECT_EQ(*flag, expected) << "attribute 0x" << std::hex << type;
      };
      expect_flag(CKA_SENSITIVE, true);
      expect_flag(CKA_ALWAYS_SENSITIVE, true);
      expect_flag(CKA_NEVER_EXTRACTABLE, true);
      expect_flag(CKA_EXTRACTABLE, false);
      const auto value = object.GetAttribute(CKA_VALUE);
      ASSERT_FALSE(value.ok()) << "the key's value was handed out";
      EXPECT_EQ(value.status().reason(), "attribute_sensitive");
    }
  }
  // Two model keys and the audit key's private half at least.
  EXPECT_GE(checked, 3u);
}

}  // namespace
}  // namespace vecseal::security_testing
