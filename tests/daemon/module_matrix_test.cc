// The module matrix end to end (issue #18, docs/hsm.md "Modules tested"): a real vecseald on the
// module VECSEAL_TEST_MODULE selects (SoftHSM2; SoftHSM2 behind p11-kit server; opencryptoki's
// soft token), reached through the fault-injecting module so that module errors can be raised
// on demand. It creates a key, encrypts, decrypts a reversible token, rotates, survives a module
// error, and its sealed audit log verifies with the audit key the token holds (RSA-PSS on
// opencryptoki, which has no EC). Behind p11-kit server, the server is also stopped mid-run.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "softhsm_fixture.h"
#include "support/dev_daemon.h"
#include "support/secured_daemon.h"
#include "test_util.h"
#include "vecseal/audit/verify.h"
#include "vecseal/pkcs11/hsm.h"

namespace vecseal::security_testing {
namespace {

using daemon::testing::HttpClient;
using daemon::testing::HttpResult;
using nlohmann::json;

const json kVectors = json::array({json::array({0.25, -0.5, 0.75, 0.125}),
                                   json::array({-0.3, 0.1, 0.2, 0.9})});

class ModuleMatrixTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (auto reason = testing::SoftHsmUnavailableReason(); !reason.empty()) GTEST_SKIP() << reason;
    const json policy = {
        {"version", 1},
        {"rules",
         {{{"id", "module-matrix"},
           {"callers",
            {{"uid", geteuid()},
             {"exe_sha256", policy::testing_util::Sha256OfFile("/proc/self/exe")}}},
           {"keys", {"*"}},
           {"operations", {"keys.create", "keys.rotate", "keys.list", "encrypt", "decrypt"}}}}}};
    std::string error;
    daemon_ = SecuredDaemon::Prepare(
        {.policy_json = policy.dump(),
         .socket_group = {},
         .audit_token = false,
         .module = testing::FaultyModule::Path()},
        &error);
    ASSERT_TRUE(daemon_) << error;
    faulty_ = std::make_unique<testing::FaultyModule>(daemon_->token());
    ASSERT_TRUE(faulty_->Set("up").ok());
    ASSERT_TRUE(daemon_->Start(&error)) << error << "\n" << daemon_->Log();
    client_ = std::make_unique<HttpClient>(daemon_->socket_path());
  }

  HttpResult Encrypt(bool reversible) {
    return client_->PostJson("/v1/keys/matrix/encrypt",
                             {{"vectors", kVectors}, {"reversible", reversible}});
  }

  // The audit public key as the token holds it (read after the daemon stopped).
  std::string AuditPublicKey(pkcs11::AuditKeyAlgorithm* algorithm) {
    pkcs11::HsmConfig config = daemon_->token().Config();
    auto hsm = pkcs11::Hsm::Open(config);
    EXPECT_TRUE(hsm.ok()) << hsm.status().ToString();
    if (!hsm.ok()) return "";
    auto key = (*hsm)->EnsureAuditKey();
    EXPECT_TRUE(key.ok()) << key.status().ToString();
    if (!key.ok()) return "";
    EXPECT_FALSE(key->generated()) << "the daemon made the audit key";
    *algorithm = key->algorithm();
    return key->PublicKeyPem();
  }

  std::unique_ptr<SecuredDaemon> daemon_;
  std::unique_ptr<testing::FaultyModule> faulty_;
  std::unique_ptr<HttpClient> client_;
};

TEST_F(ModuleMatrixTest, CreateEncryptDecryptRotateSurviveAnErrorAndVerifyTheLog) {
  const auto created =
      client_->PostJson("/v1/keys", {{"name", "matrix"}, {"approximation_factor", 0.5}});
  ASSERT_EQ(created.status, 201u) << created.body << daemon_->Log();

  const auto sealed = Encrypt(/*reversible=*/true);
  ASSERT_EQ(sealed.status, 200u) << sealed.body;
  const json body = json::parse(sealed.body);
  EXPECT_EQ(body["key_version"], 1);
  const auto opened = client_->PostJson(
      "/v1/keys/matrix/decrypt", {{"vectors", body["vectors"]}, {"tokens", body["tokens"]}});
  ASSERT_EQ(opened.status, 200u) << opened.body;
  const json plain = json::parse(opened.body)["vectors"];
  for (size_t i = 0; i < kVectors.size(); ++i) {
    for (size_t j = 0; j < kVectors[i].size(); ++j) {
      EXPECT_NEAR(plain[i][j].get<double>(), kVectors[i][j].get<double>(), 1e-4);
    }
  }

  const auto rotated = client_->PostJson("/v1/keys/matrix/rotate", json::object());
  ASSERT_EQ(rotated.status, 200u) << rotated.body;
  const auto after = Encrypt(false);
  ASSERT_EQ(after.status, 200u) << after.body;
  EXPECT_EQ(json::parse(after.body)["key_version"], 2);

  // One device error: recovered inside the request. A device that stays failed: 503, and the
  // daemon stays up and serves again once the module does.
  ASSERT_TRUE(faulty_->Set("C_EncryptUpdate CKR_DEVICE_ERROR 1").ok());
  EXPECT_EQ(Encrypt(false).status, 200u);
  ASSERT_TRUE(faulty_->Set("down CKR_DEVICE_ERROR").ok());
  const auto down = Encrypt(false);
  EXPECT_EQ(down.status, 503u) << down.body;
  EXPECT_EQ(down.ErrorCode(), "hsm_unavailable") << down.body;
  ASSERT_TRUE(faulty_->Set("up").ok());
  EXPECT_EQ(Encrypt(false).status, 200u);

  ASSERT_EQ(daemon_->Stop(), 0) << daemon_->Log();
  pkcs11::AuditKeyAlgorithm algorithm = pkcs11::AuditKeyAlgorithm::kAuto;
  const std::string pem = AuditPublicKey(&algorithm);
  EXPECT_EQ(algorithm, daemon_->token().module() == testing::TestModule::kOpenCryptoki
                           ? pkcs11::AuditKeyAlgorithm::kRsaPss3072
                           : pkcs11::AuditKeyAlgorithm::kEcdsaP256);
  auto files = audit::LogFilesInOrder(daemon_->audit_dir());
  ASSERT_TRUE(files.ok()) << files.status().ToString();
  auto report = audit::Verify(*files, pem);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_TRUE(report->ok()) << report->error->code << ": " << report->error->message;
  EXPECT_GE(report->seals, 1u);
  EXPECT_EQ(report->last_sealed_seq, report->last_seq);
}

// The remote HSM's server goes away mid-run (its socket with it) and comes back: requests get
// 503 hsm_unavailable meanwhile, the daemon stays up, and serves again without a restart.
TEST_F(ModuleMatrixTest, AServerThatGoesAwayMidRunIsHsmUnavailableUntilItReturns) {
  if (daemon_->token().module() != testing::TestModule::kP11KitServer) {
    GTEST_SKIP() << "only behind p11-kit server";
  }
  testing::SoftHsmToken& token = const_cast<testing::SoftHsmToken&>(daemon_->token());
  ASSERT_EQ(client_->PostJson("/v1/keys", {{"name", "matrix"}, {"approximation_factor", 0.5}})
                .status,
            201u);
  ASSERT_EQ(Encrypt(false).status, 200u);
  ASSERT_TRUE(token.StopServer().ok());
  const auto gone = Encrypt(false);
  EXPECT_EQ(gone.status, 503u) << gone.body;
  EXPECT_EQ(gone.ErrorCode(), "hsm_unavailable") << gone.body;
  EXPECT_EQ(client_->Get("/v1/health").status, 503u);
  ASSERT_TRUE(token.StartServer().ok());
  const auto back = Encrypt(false);
  EXPECT_EQ(back.status, 200u) << back.body << daemon_->Log();
  EXPECT_EQ(daemon_->Stop(), 0) << daemon_->Log();
}

// Scale-out through one remote token (docs/scaling.md): two daemons load p11-kit-client.so and
// reach one SoftHSM2 token through one p11-kit server. A key created on A is usable on B with no
// file copied, vectors encrypted on A and on B keep the beta-DCP guarantee across the two, and a
// rotation on A reaches B.
TEST_F(ModuleMatrixTest, TwoDaemonsShareOneTokenThroughOneServer) {
  if (daemon_->token().module() != testing::TestModule::kP11KitServer) {
    GTEST_SKIP() << "only behind p11-kit server";
  }
  const std::string server = "unix:path=" + daemon_->token().server_socket();
  std::string error;
  auto second = SecuredDaemon::Prepare(
      {.policy_json = policy::testing_util::ReadFile(daemon_->policy_path()),
       .socket_group = {},
       .audit_token = false,
       .module = testing::FaultyModule::Path()},
      &error);
  ASSERT_TRUE(second) << error;
  // B's own fixture token goes unused: B logs in to A's token, through A's server.
  json config = json::parse(policy::testing_util::ReadFile(second->config_path()));
  config["pkcs11"]["pin"]["file"] = daemon_->token().pin_file();
  policy::testing_util::WriteFile(second->config_path(), config.dump(2), 0644);
  setenv("P11_KIT_SERVER_ADDRESS", server.c_str(), 1);
  ASSERT_TRUE(second->Start(&error)) << error << second->Log();
  HttpClient b(second->socket_path());

  constexpr double kBeta = 2.5;
  constexpr size_t kCount = 30, kDimension = 16;
  ASSERT_EQ(client_->PostJson("/v1/keys", {{"name", "shared"}, {"approximation_factor", kBeta}})
                .status,
            201u);
  std::vector<std::vector<double>> plain(kCount, std::vector<double>(kDimension));
  uint64_t state = 20261207;
  for (auto& row : plain) {
    for (double& v : row) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      v = static_cast<double>(static_cast<int>((state >> 33) % 6001) - 3000) / 1000.0;
    }
  }
  const auto on_a = client_->PostJson("/v1/keys/shared/encrypt", {{"vectors", plain}});
  const auto on_b = b.PostJson("/v1/keys/shared/encrypt", {{"vectors", plain}});
  ASSERT_EQ(on_a.status, 200u) << on_a.body;
  ASSERT_EQ(on_b.status, 200u) << on_b.body << "\nB does not find a key created on A";
  const auto a = json::parse(on_a.body)["vectors"].get<std::vector<std::vector<double>>>();
  const auto bv = json::parse(on_b.body)["vectors"].get<std::vector<std::vector<double>>>();
  const auto dist = [](const std::vector<double>& x, const std::vector<double>& y) {
    double sum = 0;
    for (size_t i = 0; i < x.size(); ++i) sum += (x[i] - y[i]) * (x[i] - y[i]);
    return std::sqrt(sum);
  };
  size_t checked = 0, broken = 0;
  double worst = 0;
  for (size_t x = 0; x < kCount; ++x) {
    for (size_t y = 0; y < kCount; ++y) {
      worst = std::max(worst, std::abs(dist(a[x], bv[y]) - dist(plain[x], plain[y])));
      for (size_t z = 0; z < kCount; ++z) {
        if (dist(plain[x], plain[y]) < dist(plain[x], plain[z]) - kBeta) {
          ++checked;
          broken += !(dist(a[x], bv[y]) < dist(a[x], bv[z]));
        }
      }
    }
  }
  std::printf("shared remote token a/b: worst |d(A(x),B(y)) - d(x,y)| = %.4f (bound %.2f); "
              "beta-DCP triples checked %zu, broken %zu\n",
              worst, kBeta / 2, checked, broken);
  EXPECT_LE(worst, kBeta / 2 + 1e-3);
  EXPECT_GE(checked, 1000u);
  EXPECT_EQ(broken, 0u);

  // A rotation on A: B keeps the newest version it knew (its cache of key parameters) until a
  // reload, then encrypts under the new one; version 2 by number works on B at once.
  ASSERT_EQ(client_->PostJson("/v1/keys/shared/rotate", json::object()).status, 200u);
  const auto before = b.PostJson("/v1/keys/shared/encrypt", {{"vectors", {plain[0]}}});
  ASSERT_EQ(before.status, 200u) << before.body;
  EXPECT_EQ(json::parse(before.body)["key_version"], 1);
  const auto by_number =
      b.PostJson("/v1/keys/shared/encrypt", {{"vectors", {plain[0]}}, {"key_version", 2}});
  EXPECT_EQ(by_number.status, 200u) << by_number.body;
  ASSERT_TRUE(second->Reload(&error)) << error;
  HttpClient b_again(second->socket_path());
  const auto after = b_again.PostJson("/v1/keys/shared/encrypt", {{"vectors", {plain[0]}}});
  ASSERT_EQ(after.status, 200u) << after.body;
  EXPECT_EQ(json::parse(after.body)["key_version"], 2);
  EXPECT_EQ(second->Stop(), 0) << second->Log();
  EXPECT_EQ(daemon_->Stop(), 0) << daemon_->Log();
}

}  // namespace
}  // namespace vecseal::security_testing
