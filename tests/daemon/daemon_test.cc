// End to end: a real `vecseald --dev` process (real SoftHSM2 token, real audit log, real policy)
// driven over its real Unix socket.
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "support/dev_daemon.h"

namespace vecseal::daemon::testing {
namespace {

using nlohmann::json;

std::unique_ptr<DevDaemon> StartOrFail(const std::string& overlay = "") {
  std::string error;
  auto daemon = DevDaemon::Start(DevDaemonOptions{.overlay_json = overlay}, &error);
  EXPECT_NE(daemon, nullptr) << error;
  return daemon;
}

std::vector<float> RandomVectors(size_t count, size_t dimension, uint32_t seed) {
  std::mt19937 generator(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> values(count * dimension);
  for (float& value : values) value = normal(generator);
  return values;
}

json Rows(const std::vector<float>& values, size_t dimension) {
  json rows = json::array();
  for (size_t i = 0; i < values.size(); i += dimension) {
    rows.push_back(std::vector<float>(values.begin() + static_cast<ptrdiff_t>(i),
                                      values.begin() + static_cast<ptrdiff_t>(i + dimension)));
  }
  return rows;
}

// JSON numbers read back as float32, the way a client that honours the API does.
std::vector<float> Flatten(const json& rows) {
  std::vector<float> values;
  for (const auto& row : rows) {
    for (const auto& value : row) values.push_back(value.get<float>());
  }
  return values;
}

double MaxAbsDifference(const std::vector<float>& a, const std::vector<float>& b) {
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::fabs(double{a[i]} - b[i]));
  return worst;
}

// Decryption is approximate in floating point; this bound is far below the noise (β/4 = 0.05
// in norm for the demo key), so passing it means the noise really was removed.
constexpr double kDecryptTolerance = 1e-3;

// Waits for the daemon to log `text` (a reload is asynchronous to the signal that asks for it).
bool WaitForLog(const DevDaemon& daemon, const std::string& text, size_t occurrences = 1) {
  for (int i = 0; i < 6000; ++i) {
    const std::string log = daemon.Log();
    size_t count = 0;
    for (size_t at = log.find(text); at != std::string::npos; at = log.find(text, at + 1)) ++count;
    if (count >= occurrences) return true;
    usleep(10'000);
  }
  return false;
}

class DaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    daemon_ = StartOrFail(R"({"limits": {"max_body_bytes": 1048576, "max_vectors": 64}})");
    ASSERT_NE(daemon_, nullptr);
    client_ = std::make_unique<HttpClient>(daemon_->socket_path());
  }

  std::unique_ptr<DevDaemon> daemon_;
  std::unique_ptr<HttpClient> client_;
};

TEST_F(DaemonTest, JsonRoundTripsOneWayAndReversibleInSeveralDimensions) {
  for (size_t dimension : {1u, 3u, 64u, 768u}) {
    SCOPED_TRACE("dimension " + std::to_string(dimension));
    const size_t count = 5;
    const auto plain = RandomVectors(count, dimension, static_cast<uint32_t>(dimension));

    auto one_way = client_->PostJson("/v1/keys/demo/encrypt", {{"vectors", Rows(plain, dimension)}});
    ASSERT_EQ(one_way.status, 200u) << one_way.body;
    const json encrypted = one_way.Json();
    EXPECT_EQ(encrypted["key"], "demo");
    EXPECT_EQ(encrypted["key_version"], 1);
    EXPECT_EQ(encrypted["dimension"], dimension);
    EXPECT_FALSE(encrypted.contains("tokens"));
    ASSERT_EQ(encrypted["vectors"].size(), count);
    EXPECT_GT(MaxAbsDifference(Flatten(encrypted["vectors"]), plain), 1e-2)
        << "ciphertexts must differ from the plaintexts";

    auto reversible = client_->PostJson(
        "/v1/keys/demo/encrypt", {{"vectors", Rows(plain, dimension)}, {"reversible", true}});
    ASSERT_EQ(reversible.status, 200u) << reversible.body;
    const json sealed = reversible.Json();
    ASSERT_EQ(sealed["tokens"].size(), count);
    auto opened = client_->PostJson(
        "/v1/keys/demo/decrypt", {{"vectors", sealed["vectors"]}, {"tokens", sealed["tokens"]}});
    ASSERT_EQ(opened.status, 200u) << opened.body;
    EXPECT_EQ(opened.Json()["dimension"], dimension);
    EXPECT_LT(MaxAbsDifference(Flatten(opened.Json()["vectors"]), plain), kDecryptTolerance);
  }
}

// After a rotation, a caller can keep encrypting under the version its model was trained with.
TEST_F(DaemonTest, EncryptUnderAnOlderKeyVersion) {
  auto rotated = client_->Send(HttpCall{
      .method = "POST", .target = "/v1/keys/demo/rotate", .body = {}, .content_type = {},
      .headers = {}});
  ASSERT_EQ(rotated.status, 200u) << rotated.body;
  ASSERT_EQ(rotated.Json()["version"], 2);
  const auto plain = RandomVectors(3, 8, 5);

  auto newest = client_->PostJson("/v1/keys/demo/encrypt", {{"vectors", Rows(plain, 8)}});
  ASSERT_EQ(newest.status, 200u) << newest.body;
  EXPECT_EQ(newest.Json()["key_version"], 2);

  auto older = client_->PostJson(
      "/v1/keys/demo/encrypt",
      {{"vectors", Rows(plain, 8)}, {"key_version", 1}, {"reversible", true}});
  ASSERT_EQ(older.status, 200u) << older.body;
  EXPECT_EQ(older.Json()["key_version"], 1);
  // The tokens carry version 1, so decrypt picks version 1 by itself and gets the plaintext.
  auto opened = client_->PostJson(
      "/v1/keys/demo/decrypt",
      {{"vectors", older.Json()["vectors"]}, {"tokens", older.Json()["tokens"]}});
  ASSERT_EQ(opened.status, 200u) << opened.body;
  EXPECT_EQ(opened.Json()["key_version"], 1);
  EXPECT_LT(MaxAbsDifference(Flatten(opened.Json()["vectors"]), plain), kDecryptTolerance);

  auto binary = client_->PostBinary("/v1/keys/demo/encrypt", FloatsToBytes(plain),
                                    {{"Vecseal-Dimension", "8"}, {"Vecseal-Key-Version", "1"}});
  ASSERT_EQ(binary.status, 200u) << binary.body;
  EXPECT_EQ(binary.headers["vecseal-key-version"], "1");

  auto missing = client_->PostJson("/v1/keys/demo/encrypt",
                                   {{"vectors", Rows(plain, 8)}, {"key_version", 7}});
  EXPECT_EQ(missing.status, 404u) << missing.body;
  EXPECT_EQ(missing.ErrorCode(), "key_not_found");
  auto bad_header = client_->PostBinary("/v1/keys/demo/encrypt", FloatsToBytes(plain),
                                        {{"Vecseal-Dimension", "8"}, {"Vecseal-Key-Version", "0"}});
  EXPECT_EQ(bad_header.status, 400u) << bad_header.body;
  auto on_decrypt = client_->PostJson(
      "/v1/keys/demo/decrypt", {{"vectors", older.Json()["vectors"]},
                                {"tokens", older.Json()["tokens"]}, {"key_version", 1}});
  EXPECT_EQ(on_decrypt.status, 400u) << on_decrypt.body;

  bool audited = false;
  for (const auto& record : daemon_->AuditRecords()) {
    if (record.contains("event") && record["event"] == "encrypt" &&
        record.contains("key_version") && record["key_version"] == 1 &&
        record.contains("reversible") && record["reversible"] == true) {
      audited = true;
    }
  }
  EXPECT_TRUE(audited) << "the audit record names the version that encrypted";
}

TEST_F(DaemonTest, BinaryRoundTripsAndAgreesWithJsonDecrypt) {
  for (size_t dimension : {2u, 384u}) {
    SCOPED_TRACE("dimension " + std::to_string(dimension));
    const size_t count = 7;
    const auto plain = RandomVectors(count, dimension, 99);
    const std::map<std::string, std::string> headers = {
        {"Vecseal-Dimension", std::to_string(dimension)}, {"Vecseal-Reversible", "true"}};
    auto sealed = client_->PostBinary("/v1/keys/demo/encrypt", FloatsToBytes(plain), headers);
    ASSERT_EQ(sealed.status, 200u) << sealed.body;
    EXPECT_EQ(sealed.headers["content-type"], "application/octet-stream");
    EXPECT_EQ(sealed.headers["vecseal-key-version"], "1");
    EXPECT_EQ(sealed.headers["vecseal-dimension"], std::to_string(dimension));
    EXPECT_EQ(sealed.headers["vecseal-vectors"], std::to_string(count));
    EXPECT_EQ(sealed.headers["vecseal-token-size"], "41");
    ASSERT_EQ(sealed.body.size(), count * dimension * 4 + count * 41);

    auto opened = client_->PostBinary("/v1/keys/demo/decrypt", sealed.body,
                                      {{"Vecseal-Dimension", std::to_string(dimension)}});
    ASSERT_EQ(opened.status, 200u) << opened.body;
    ASSERT_EQ(opened.body.size(), count * dimension * 4);
    const auto decrypted = BytesToFloats(opened.body, count * dimension);
    EXPECT_LT(MaxAbsDifference(decrypted, plain), kDecryptTolerance);

    // The same ciphertext through JSON: tokens as base64, floats as shortest text.
    const auto cipher_values = BytesToFloats(sealed.body, count * dimension);
    json tokens = json::array();
    const std::string token_bytes = sealed.body.substr(count * dimension * 4);
    static constexpr char kAlphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < count; ++i) {
      const std::string token = token_bytes.substr(i * 41, 41);
      std::string text;
      for (size_t j = 0; j < token.size(); j += 3) {
        uint32_t group = static_cast<uint32_t>(static_cast<uint8_t>(token[j])) << 16;
        if (j + 1 < token.size()) group |= static_cast<uint32_t>(static_cast<uint8_t>(token[j + 1])) << 8;
        if (j + 2 < token.size()) group |= static_cast<uint8_t>(token[j + 2]);
        text += kAlphabet[(group >> 18) & 63];
        text += kAlphabet[(group >> 12) & 63];
        text += j + 1 < token.size() ? kAlphabet[(group >> 6) & 63] : '=';
        text += j + 2 < token.size() ? kAlphabet[group & 63] : '=';
      }
      tokens.push_back(text);
    }
    auto json_opened = client_->PostJson(
        "/v1/keys/demo/decrypt", {{"vectors", Rows(cipher_values, dimension)}, {"tokens", tokens}});
    ASSERT_EQ(json_opened.status, 200u) << json_opened.body;
    EXPECT_EQ(Flatten(json_opened.Json()["vectors"]), decrypted)
        << "JSON and binary decryption of the same ciphertext must agree bit for bit";
  }
}

TEST_F(DaemonTest, SixtyFourConcurrentClients) {
  constexpr size_t kClients = 64;
  constexpr size_t kDimension = 32;
  std::vector<std::thread> threads;
  std::vector<std::string> failures(kClients);
  for (size_t c = 0; c < kClients; ++c) {
    threads.emplace_back([&, c] {
      HttpClient client(daemon_->socket_path());
      for (int round = 0; round < 3; ++round) {
        const auto plain = RandomVectors(4, kDimension, static_cast<uint32_t>(c * 10 + round));
        auto sealed = client.PostBinary(
            "/v1/keys/demo/encrypt", FloatsToBytes(plain),
            {{"Vecseal-Dimension", std::to_string(kDimension)}, {"Vecseal-Reversible", "true"}});
        if (sealed.status != 200) {
          failures[c] = "encrypt " + std::to_string(sealed.status) + " " + sealed.body;
          return;
        }
        auto opened = client.PostBinary("/v1/keys/demo/decrypt", sealed.body,
                                        {{"Vecseal-Dimension", std::to_string(kDimension)}});
        if (opened.status != 200 ||
            MaxAbsDifference(BytesToFloats(opened.body, plain.size()), plain) >= kDecryptTolerance) {
          failures[c] = "decrypt " + std::to_string(opened.status) + " " + opened.body;
          return;
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  for (size_t c = 0; c < kClients; ++c) EXPECT_EQ(failures[c], "") << "client " << c;
}

struct BadRequest {
  std::string name;
  HttpCall call;
  unsigned status;
  std::string code;
  std::string message;  // exact, when not empty
};

TEST_F(DaemonTest, BadRequestsGetTheirExactStatusAndCode) {
  const auto json_call = [](std::string target, std::string body) {
    return HttpCall{.method = "POST", .target = std::move(target), .body = std::move(body),
                    .content_type = "application/json", .headers = {}};
  };
  const auto binary_call = [](std::string body, std::map<std::string, std::string> headers) {
    return HttpCall{.method = "POST", .target = "/v1/keys/demo/encrypt", .body = std::move(body),
                    .content_type = "application/octet-stream", .headers = std::move(headers)};
  };
  const std::string nan_bytes = FloatsToBytes({1.0f, std::nanf(""), 2.0f, 3.0f});
  const std::string inf_bytes = FloatsToBytes({1.0f, 2.0f, INFINITY, 3.0f});
  const std::vector<BadRequest> table = {
      {"malformed JSON", json_call("/v1/keys/demo/encrypt", R"({"vectors": [[1, 2],)"), 400,
       "invalid_json", ""},
      {"NaN literal", json_call("/v1/keys/demo/encrypt", R"({"vectors": [[1, NaN]]})"), 400,
       "invalid_json", ""},
      {"number beyond float32", json_call("/v1/keys/demo/encrypt", R"({"vectors": [[1, 2], [3, 1e39]]})"),
       400, "non_finite_value", ""},
      {"binary NaN", binary_call(nan_bytes, {{"Vecseal-Dimension", "2"}}), 400, "non_finite_value",
       ""},
      {"binary Inf", binary_call(inf_bytes, {{"Vecseal-Dimension", "2"}}), 400, "non_finite_value",
       ""},
      {"ragged rows", json_call("/v1/keys/demo/encrypt", R"({"vectors": [[1, 2], [3]]})"), 400,
       "dimension_mismatch", ""},
      {"missing Vecseal-Dimension", binary_call(FloatsToBytes({1, 2}), {}), 400,
       "invalid_dimension", "a binary request needs the Vecseal-Dimension header"},
      {"non-numeric Vecseal-Dimension", binary_call(FloatsToBytes({1, 2}), {{"Vecseal-Dimension", "two"}}),
       400, "invalid_dimension", ""},
      {"zero Vecseal-Dimension", binary_call(FloatsToBytes({1, 2}), {{"Vecseal-Dimension", "0"}}),
       400, "invalid_dimension", ""},
      {"length not a multiple of 4·d", binary_call(FloatsToBytes({1, 2, 3}), {{"Vecseal-Dimension", "2"}}),
       400, "invalid_length",
       "the body length 12 is not a positive multiple of 8 (4·dimension bytes per vector)"},
      {"unknown key", json_call("/v1/keys/no-such-key/encrypt", R"({"vectors": [[1, 2]]})"), 404,
       "key_not_found", ""},
      {"invalid key name", json_call("/v1/keys/Bad!Name/encrypt", R"({"vectors": [[1, 2]]})"), 400,
       "invalid_key_name", ""},
      {"oversized body", binary_call(std::string(1048576 + 8, '\0'), {{"Vecseal-Dimension", "2"}}),
       413, "body_too_large", "the request body exceeds the limit of 1048576 bytes"},
      {"too many vectors", binary_call(FloatsToBytes(std::vector<float>(65 * 2, 1.0f)), {{"Vecseal-Dimension", "2"}}),
       413, "too_many_vectors", ""},
      {"wrong method", HttpCall{.method = "GET", .target = "/v1/keys/demo/encrypt", .body = {},
                                .content_type = {}, .headers = {}},
       405, "method_not_allowed", "GET is not allowed on /v1/keys/demo/encrypt (allowed: POST)"},
      {"unknown endpoint", HttpCall{.method = "GET", .target = "/v2/anything", .body = {},
                                    .content_type = {}, .headers = {}},
       404, "not_found", ""},
      {"unsupported media type", HttpCall{.method = "POST", .target = "/v1/keys/demo/encrypt",
                                          .body = "1,2", .content_type = "text/csv", .headers = {}},
       415, "unsupported_media_type", ""},
      {"unknown JSON field", json_call("/v1/keys/demo/encrypt", R"({"vectors": [[1]], "nonce": 1})"),
       400, "invalid_request", ""},
      {"tokens in an encrypt", json_call("/v1/keys/demo/encrypt", R"({"vectors": [[1]], "tokens": []})"),
       400, "invalid_request", ""},
      {"token not base64", json_call("/v1/keys/demo/decrypt", R"({"vectors": [[1]], "tokens": ["***"]})"),
       400, "invalid_token", ""},
      {"one token for two vectors",
       json_call("/v1/keys/demo/decrypt", R"({"vectors": [[1], [2]], "tokens": ["AAAA"]})"), 400,
       "invalid_request", ""},
      {"bad Vecseal-Reversible", binary_call(FloatsToBytes({1, 2}), {{"Vecseal-Dimension", "2"}, {"Vecseal-Reversible", "yes"}}),
       400, "invalid_request", ""},
      // One header past the default limits.max_header_bytes of 16384.
      {"headers too large", HttpCall{.method = "GET", .target = "/v1/health", .body = {},
                                     .content_type = {},
                                     .headers = {{"X-Padding", std::string(16384, 'a')}}},
       431, "header_too_large", "the request headers exceed 16384 bytes"},
  };
  for (const auto& entry : table) {
    SCOPED_TRACE(entry.name);
    HttpClient client(daemon_->socket_path());
    HttpResult result = client.Send(entry.call);
    EXPECT_EQ(result.status, entry.status) << result.body;
    EXPECT_EQ(result.ErrorCode(), entry.code) << result.body;
    EXPECT_EQ(result.headers["content-type"], "application/json");
    if (!entry.message.empty()) {
      EXPECT_EQ(result.Json()["error"].value("message", ""), entry.message);
    }
    if (entry.status == 405) {
      EXPECT_EQ(result.headers["allow"], "POST");
    }
  }
  // The daemon is still healthy after all of that.
  EXPECT_EQ(client_->Get("/v1/health").status, 200u);
}

TEST_F(DaemonTest, NonFiniteValueNamesTheVector) {
  auto result = client_->PostJson("/v1/keys/demo/encrypt",
                                  json::parse(R"({"vectors": [[1, 2], [3, 4], [5, -1e40]]})"));
  EXPECT_EQ(result.status, 400u);
  EXPECT_EQ(result.ErrorCode(), "non_finite_value");
  EXPECT_EQ(result.Json()["error"]["vector_index"], 2);
}

TEST_F(DaemonTest, KeysCreateListRotateAndOldVersionsStillDecrypt) {
  auto created = client_->PostJson(
      "/v1/keys", {{"name", "ratings"}, {"approximation_factor", 1.5}, {"transform", "permute"},
                   {"dimension", 4}});
  ASSERT_EQ(created.status, 201u) << created.body;
  EXPECT_EQ(created.Json()["version"], 1);
  EXPECT_EQ(created.Json()["transform"], "permute");
  EXPECT_EQ(created.Json()["dimension"], 4);
  EXPECT_EQ(client_->PostJson("/v1/keys", {{"name", "ratings"}, {"approximation_factor", 1.5}})
                .ErrorCode(),
            "key_exists");

  const auto plain = RandomVectors(3, 4, 5);
  auto v1 = client_->PostJson("/v1/keys/ratings/encrypt",
                              {{"vectors", Rows(plain, 4)}, {"reversible", true}});
  ASSERT_EQ(v1.status, 200u) << v1.body;
  auto wrong_dimension = client_->PostJson("/v1/keys/ratings/encrypt", {{"vectors", {{1, 2, 3}}}});
  EXPECT_EQ(wrong_dimension.status, 400u);
  EXPECT_EQ(wrong_dimension.ErrorCode(), "dimension_mismatch");

  auto rotated = client_->Send(HttpCall{.method = "POST", .target = "/v1/keys/ratings/rotate",
                                        .body = "", .content_type = {}, .headers = {}});
  ASSERT_EQ(rotated.status, 200u) << rotated.body;
  EXPECT_EQ(rotated.Json()["version"], 2);
  EXPECT_EQ(rotated.Json()["versions"], json::array({1, 2}));

  auto v2 = client_->PostJson("/v1/keys/ratings/encrypt",
                              {{"vectors", Rows(plain, 4)}, {"reversible", true}});
  ASSERT_EQ(v2.status, 200u) << v2.body;
  EXPECT_EQ(v2.Json()["key_version"], 2);

  auto old = client_->PostJson("/v1/keys/ratings/decrypt",
                               {{"vectors", v1.Json()["vectors"]}, {"tokens", v1.Json()["tokens"]}});
  ASSERT_EQ(old.status, 200u) << old.body;
  EXPECT_EQ(old.Json()["key_version"], 1);
  EXPECT_LT(MaxAbsDifference(Flatten(old.Json()["vectors"]), plain), kDecryptTolerance);

  json mixed_vectors = {v1.Json()["vectors"][0], v2.Json()["vectors"][1]};
  json mixed_tokens = {v1.Json()["tokens"][0], v2.Json()["tokens"][1]};
  auto mixed = client_->PostJson("/v1/keys/ratings/decrypt",
                                 {{"vectors", mixed_vectors}, {"tokens", mixed_tokens}});
  EXPECT_EQ(mixed.status, 400u);
  EXPECT_EQ(mixed.ErrorCode(), "token_key_version_mismatch");
  EXPECT_EQ(mixed.Json()["error"]["vector_index"], 1);

  // Tokens of version 2 of "ratings", sent to "demo", which has only version 1.
  auto elsewhere = client_->PostJson("/v1/keys/demo/decrypt",
                                     {{"vectors", v2.Json()["vectors"]}, {"tokens", v2.Json()["tokens"]}});
  EXPECT_EQ(elsewhere.status, 404u);
  EXPECT_EQ(elsewhere.ErrorCode(), "key_not_found");
  EXPECT_EQ(elsewhere.Json()["error"]["message"],
            "the tokens are for version 2 of a key, and 'demo' has no such version on the token: "
            "were they made under another key?");

  auto listed = client_->Get("/v1/keys");
  ASSERT_EQ(listed.status, 200u);
  const json keys = listed.Json()["keys"];
  std::vector<std::string> names;
  for (const auto& key : keys) names.push_back(key["name"]);
  EXPECT_EQ(names, (std::vector<std::string>{"demo", "ratings"}));
}

// The newest audit record of `operation` (with extra fields), or null.
json LastRecordOf(const DevDaemon& daemon, const std::string& operation) {
  json found;
  for (const auto& record : daemon.AuditRecords()) {
    if (record.value("operation", "") == operation) found = record;
  }
  return found;
}

HttpResult Delete(HttpClient& client, const std::string& target) {
  return client.Send(HttpCall{.method = "DELETE", .target = target, .body = "",
                              .content_type = {}, .headers = {}});
}

TEST_F(DaemonTest, RetiredVersionsAreRefusedAndRewrapMovesTokensToTheNewest) {
  ASSERT_EQ(client_->PostJson("/v1/keys", {{"name", "life"}, {"approximation_factor", 2.0},
                                           {"dimension", 4}})
                .status,
            201u);
  const auto plain = RandomVectors(3, 4, 11);
  auto v1 = client_->PostJson("/v1/keys/life/encrypt",
                              {{"vectors", Rows(plain, 4)}, {"reversible", true}});
  ASSERT_EQ(v1.status, 200u) << v1.body;
  const json v1_request = {{"vectors", v1.Json()["vectors"]}, {"tokens", v1.Json()["tokens"]}};
  ASSERT_EQ(client_->Send(HttpCall{.method = "POST", .target = "/v1/keys/life/rotate", .body = "",
                                    .content_type = {}, .headers = {}})
                .status,
            200u);

  auto shown = client_->Get("/v1/keys/life");
  ASSERT_EQ(shown.status, 200u) << shown.body;
  EXPECT_EQ(shown.Json()["versions"], json::array({1, 2}));
  EXPECT_EQ(shown.Json()["states"], json::array({"active", "active"}));
  EXPECT_EQ(shown.Json()["min_encryption_version"], 1);
  EXPECT_EQ(shown.Json()["dimension"], 4);
  EXPECT_EQ(client_->Get("/v1/keys/nothing").ErrorCode(), "key_not_found");
  EXPECT_EQ(client_->Get("/v1/keys/Bad!").ErrorCode(), "invalid_key_name");

  // Rewrap: version 1 tokens in, version 2 ciphertexts and tokens out, never the plaintext.
  auto rewrapped = client_->PostJson("/v1/keys/life/rewrap", v1_request);
  ASSERT_EQ(rewrapped.status, 200u) << rewrapped.body;
  EXPECT_EQ(rewrapped.Json()["key_version"], 2);
  ASSERT_EQ(rewrapped.Json()["tokens"].size(), 3u);
  EXPECT_GT(MaxAbsDifference(Flatten(rewrapped.Json()["vectors"]), plain), 1e-2);
  auto opened = client_->PostJson("/v1/keys/life/decrypt",
                                  {{"vectors", rewrapped.Json()["vectors"]},
                                   {"tokens", rewrapped.Json()["tokens"]}});
  ASSERT_EQ(opened.status, 200u) << opened.body;
  EXPECT_EQ(opened.Json()["key_version"], 2);
  EXPECT_LT(MaxAbsDifference(Flatten(opened.Json()["vectors"]), plain), kDecryptTolerance);
  // Binary: what a reversible binary encrypt returned goes in, the same shape comes out.
  auto binary_v1 = client_->PostBinary(
      "/v1/keys/life/encrypt", FloatsToBytes(plain),
      {{"Vecseal-Dimension", "4"}, {"Vecseal-Reversible", "true"}, {"Vecseal-Key-Version", "1"}});
  ASSERT_EQ(binary_v1.status, 200u) << binary_v1.body;
  auto binary_moved = client_->PostBinary("/v1/keys/life/rewrap", binary_v1.body,
                                          {{"Vecseal-Dimension", "4"}});
  ASSERT_EQ(binary_moved.status, 200u) << binary_moved.body;
  EXPECT_EQ(binary_moved.headers["vecseal-key-version"], "2");
  ASSERT_EQ(binary_moved.body.size(), binary_v1.body.size());
  auto binary_opened = client_->PostBinary("/v1/keys/life/decrypt", binary_moved.body,
                                           {{"Vecseal-Dimension", "4"}});
  ASSERT_EQ(binary_opened.status, 200u) << binary_opened.body;
  EXPECT_EQ(binary_opened.headers["vecseal-key-version"], "2");
  EXPECT_LT(MaxAbsDifference(BytesToFloats(binary_opened.body, plain.size()), plain),
            kDecryptTolerance);

  const json rewrap_record = LastRecordOf(*daemon_, "rewrap");
  EXPECT_EQ(rewrap_record["key_version"], 2);
  EXPECT_EQ(rewrap_record["extra"]["from_key_version"], 1);
  EXPECT_EQ(rewrap_record["vectors"], 3);

  auto retire_encrypt = client_->PostJson("/v1/keys/life/config", {{"min_encryption_version", 2}});
  ASSERT_EQ(retire_encrypt.status, 200u) << retire_encrypt.body;
  EXPECT_EQ(retire_encrypt.Json()["states"], json::array({"decrypt_only", "active"}));
  auto old_encrypt = client_->PostJson("/v1/keys/life/encrypt",
                                       {{"vectors", Rows(plain, 4)}, {"key_version", 1}});
  EXPECT_EQ(old_encrypt.status, 400u);
  EXPECT_EQ(old_encrypt.ErrorCode(), "key_version_retired");
  EXPECT_EQ(old_encrypt.Json()["error"]["message"],
            "version 1 of key 'life' is retired for encryption: the key's "
            "min_encryption_version is 2");
  EXPECT_EQ(client_->PostJson("/v1/keys/life/decrypt", v1_request).status, 200u)
      << "retired for encryption only";

  auto retire_decrypt = client_->PostJson("/v1/keys/life/config", {{"min_decryption_version", 2}});
  ASSERT_EQ(retire_decrypt.status, 200u) << retire_decrypt.body;
  EXPECT_EQ(retire_decrypt.Json()["states"], json::array({"retired", "active"}));
  for (const char* target : {"/v1/keys/life/decrypt", "/v1/keys/life/rewrap"}) {
    auto refused = client_->PostJson(target, v1_request);
    EXPECT_EQ(refused.status, 400u) << target;
    EXPECT_EQ(refused.ErrorCode(), "key_version_retired") << target;
  }
  const json config_record = LastRecordOf(*daemon_, "keys.config");
  EXPECT_EQ(config_record["extra"]["min_decryption_version"], 2);
  EXPECT_EQ(config_record["extra"]["min_encryption_version"], 2);

  struct Bad {
    json body;
    std::string code;
  };
  for (const Bad& bad : {Bad{{{"min_decryption_version", 3}}, "invalid_key_config"},
                         Bad{{{"min_encryption_version", 0}}, "invalid_request"},
                         Bad{{{"min_encryption_version", "2"}}, "invalid_request"},
                         Bad{{{"retire", 1}}, "invalid_request"},
                         Bad{json::object(), "invalid_request"}}) {
    auto refused = client_->PostJson("/v1/keys/life/config", bad.body);
    EXPECT_EQ(refused.status, 400u) << bad.body.dump();
    EXPECT_EQ(refused.ErrorCode(), bad.code) << bad.body.dump();
  }
  EXPECT_EQ(client_->Get("/v1/keys/life").Json()["states"], json::array({"retired", "active"}));
}

TEST_F(DaemonTest, DeleteNeedsItsGrantAndForceWhileThePolicyNamesTheKey) {
  ASSERT_EQ(client_->PostJson("/v1/keys", {{"name", "doomed"}, {"approximation_factor", 2.0}})
                .status,
            201u);
  ASSERT_EQ(client_->PostJson("/v1/keys/doomed/encrypt", {{"vectors", {{1, 2}}}}).status, 200u);
  const std::string policy_path = daemon_->state_dir() + "/policy.json";
  const auto apply = [&](const std::string& rules, size_t reloads) {
    std::ofstream(policy_path, std::ios::trunc) << R"({"version": 1, "rules": [)" << rules << "]}";
    daemon_->Signal(SIGHUP);
    ASSERT_TRUE(WaitForLog(*daemon_, "event=reloaded", reloads)) << daemon_->Log();
  };
  const std::string me = std::to_string(getuid());
  apply(R"({"id": "no-delete", "callers": {"uid": )" + me +
            R"(}, "keys": ["*"], "operations": ["keys.list", "encrypt"]})",
        1);
  auto denied = Delete(*client_, "/v1/keys/doomed");
  EXPECT_EQ(denied.status, 403u);
  EXPECT_EQ(denied.Json()["error"]["message"], "no rule grants keys.delete on key 'doomed'");

  apply(R"({"id": "admins", "callers": {"uid": )" + me +
            R"(}, "keys": ["*"], "operations": ["keys.delete"]},
           {"id": "scorer", "callers": {"uid": 4242}, "keys": ["doomed"], "operations": ["encrypt"]})",
        2);
  auto in_use = Delete(*client_, "/v1/keys/doomed");
  EXPECT_EQ(in_use.status, 409u);
  EXPECT_EQ(in_use.ErrorCode(), "key_in_policy");
  EXPECT_NE(in_use.Json()["error"]["message"].get<std::string>().find("'scorer'"),
            std::string::npos);
  EXPECT_EQ(Delete(*client_, "/v1/keys/doomed?force=yes").ErrorCode(), "invalid_request");
  // Without keys.list the caller learns nothing of the key from GET either.
  EXPECT_EQ(client_->Get("/v1/keys/doomed").status, 403u);

  auto forced = Delete(*client_, "/v1/keys/doomed?force=true");
  ASSERT_EQ(forced.status, 200u) << forced.body;
  EXPECT_EQ(forced.Json()["destroyed_versions"], json::array({1}));
  EXPECT_EQ(Delete(*client_, "/v1/keys/doomed?force=true").ErrorCode(), "key_not_found");
  const json record = LastRecordOf(*daemon_, "keys.delete");
  EXPECT_EQ(record["event"], "error") << "the last one found nothing to delete";
  bool deleted_audited = false;
  for (const auto& r : daemon_->AuditRecords()) {
    if (r.value("event", "") == "keys.delete") {
      deleted_audited = true;
      EXPECT_EQ(r["key"], "doomed");
      EXPECT_EQ(r["extra"]["destroyed_versions"], json::array({1}));
      EXPECT_EQ(r["extra"]["force"], true);
    }
  }
  EXPECT_TRUE(deleted_audited);
  auto gone = Delete(*client_, "/v1/keys/doomed/encrypt");
  EXPECT_EQ(gone.status, 405u);
}

// Rewraps of one token are fresh encryptions of one plaintext: a rewrap budget caps them, and a
// budget that a reload adds counts the rewraps already in the audit log.
TEST_F(DaemonTest, RewrapsSpendFromRewrapBudgetsCountedFromTheLog) {
  ASSERT_EQ(client_->PostJson("/v1/keys", {{"name", "spent"}, {"approximation_factor", 2.0},
                                           {"dimension", 3}})
                .status,
            201u);
  auto sealed = client_->PostJson("/v1/keys/spent/encrypt",
                                  {{"vectors", {{0.6, 0.8, 0.0}, {0.0, 0.6, 0.8}}},
                                   {"reversible", true}});
  ASSERT_EQ(sealed.status, 200u) << sealed.body;
  const json request = {{"vectors", sealed.Json()["vectors"]}, {"tokens", sealed.Json()["tokens"]}};
  const std::string policy_path = daemon_->state_dir() + "/policy.json";
  const auto migrator = [&](const std::string& budgets, size_t reloads) {
    std::ofstream(policy_path, std::ios::trunc)
        << R"({"version": 1, "rules": [{"id": "migrator", "callers": {"uid": )" << getuid()
        << R"(}, "keys": ["*"], "operations": ["rewrap"])" << budgets << "}]}";
    daemon_->Signal(SIGHUP);
    ASSERT_TRUE(WaitForLog(*daemon_, "event=reloaded", reloads)) << daemon_->Log();
  };
  migrator("", 1);
  ASSERT_EQ(client_->PostJson("/v1/keys/spent/rewrap", request).status, 200u);
  migrator(R"(, "budgets": [{"operation": "rewrap", "vectors": 5, "per": "1h"}])", 2);
  HttpResult second;
  for (int attempt = 0; attempt < 500; ++attempt) {  // 503 until the log is counted
    second = client_->PostJson("/v1/keys/spent/rewrap", request);
    if (second.status != 503) break;
    usleep(10'000);
  }
  ASSERT_EQ(second.status, 200u) << second.body;  // 2 + 2 of 5
  auto third = client_->PostJson("/v1/keys/spent/rewrap", request);
  EXPECT_EQ(third.status, 429u) << third.body;
  EXPECT_EQ(third.ErrorCode(), "budget_exhausted");
  EXPECT_NE(third.Json()["error"]["message"].get<std::string>().find("4 spent in the window"),
            std::string::npos)
      << third.body;
}

// A pooled session keeps a key version's AES operation open between requests: after a deletion,
// a new key of the same name must not be served by the old key's operation.
TEST_F(DaemonTest, AKeyDeletedAndCreatedAgainIsANewKey) {
  const json create = {{"name", "reborn"}, {"approximation_factor", 2.0}, {"dimension", 3}};
  ASSERT_EQ(client_->PostJson("/v1/keys", create).status, 201u);
  const json plain = {{0.6, 0.8, 0.0}};
  auto before = client_->PostJson("/v1/keys/reborn/encrypt",
                                  {{"vectors", plain}, {"reversible", true}});
  ASSERT_EQ(before.status, 200u) << before.body;
  ASSERT_EQ(Delete(*client_, "/v1/keys/reborn").status, 200u);
  EXPECT_EQ(client_->PostJson("/v1/keys/reborn/encrypt", {{"vectors", plain}}).ErrorCode(),
            "key_not_found");
  ASSERT_EQ(client_->PostJson("/v1/keys", create).status, 201u);
  auto after = client_->PostJson("/v1/keys/reborn/encrypt",
                                 {{"vectors", plain}, {"reversible", true}});
  ASSERT_EQ(after.status, 200u) << after.body;
  auto old_tokens = client_->PostJson(
      "/v1/keys/reborn/decrypt",
      {{"vectors", before.Json()["vectors"]}, {"tokens", before.Json()["tokens"]}});
  EXPECT_EQ(old_tokens.status, 400u) << old_tokens.body;
  EXPECT_EQ(old_tokens.ErrorCode(), "token_authentication_failed");
  auto new_tokens = client_->PostJson(
      "/v1/keys/reborn/decrypt",
      {{"vectors", after.Json()["vectors"]}, {"tokens", after.Json()["tokens"]}});
  EXPECT_EQ(new_tokens.status, 200u) << new_tokens.body;
}

// vecseal_hsm_calls_total{function="NAME"}, read from /metrics.
uint64_t HsmCalls(HttpClient& client, const std::string& function) {
  const std::string text = client.Get("/metrics").body;
  const std::string prefix = "vecseal_hsm_calls_total{function=\"" + function + "\"} ";
  const size_t at = text.find(prefix);
  if (at == std::string::npos) {
    ADD_FAILURE() << "no " << prefix << "in /metrics";
    return 0;
  }
  return std::stoull(text.substr(at + prefix.size()));
}

// Issue #16's contract: a format 2 key derives every vector's own seed, and a request of any
// size costs one call to the HSM, one C_EncryptUpdate of the operation the pooled session keeps
// open (one per 1024 vectors above that). No seal runs meanwhile: a seal is another operation on
// the session and would cost the next request a C_EncryptInit.
TEST(DaemonHsmCallsTest, EachRequestIsOneDerivationWhateverItsSize) {
  auto daemon = StartOrFail(
      R"({"limits": {"max_body_bytes": 67108864, "max_vectors": 10000},
          "audit": {"seal_every_seconds": 86400, "seal_every_records": 1000000}})");
  ASSERT_NE(daemon, nullptr);
  HttpClient client(daemon->socket_path());
  auto created = client.PostJson(
      "/v1/keys", {{"name", "counted"}, {"approximation_factor", 1.0}, {"transform", "permute"}});
  ASSERT_EQ(created.status, 201u) << created.body;
  EXPECT_EQ(created.Json()["format"], 2);
  EXPECT_EQ(created.Json()["derivation"], "aes");
  const size_t d = 8;
  // The first request also derives T and the token key, and looks the key up in the pooled
  // session.
  ASSERT_EQ(client.PostJson("/v1/keys/counted/encrypt",
                            {{"vectors", Rows(RandomVectors(1, d, 1), d)}, {"reversible", true}})
                .status,
            200u);
  const char* kFunctions[] = {"C_EncryptInit", "C_Encrypt",   "C_EncryptUpdate",
                              "C_EncryptFinal", "C_SignInit", "C_FindObjectsInit"};
  for (size_t n : {size_t{1}, size_t{100}, size_t{4000}}) {
    std::map<std::string, uint64_t> before;
    for (const char* function : kFunctions) before[function] = HsmCalls(client, function);
    const auto plain = RandomVectors(n, d, static_cast<uint32_t>(n));
    std::string body(reinterpret_cast<const char*>(plain.data()), plain.size() * sizeof(float));
    auto sealed = client.PostBinary("/v1/keys/counted/encrypt", body,
                                    {{"Vecseal-Dimension", std::to_string(d)},
                                     {"Vecseal-Reversible", "true"}});
    ASSERT_EQ(sealed.status, 200u) << sealed.body;
    auto opened = client.PostBinary("/v1/keys/counted/decrypt", sealed.body,
                                    {{"Vecseal-Dimension", std::to_string(d)}});
    ASSERT_EQ(opened.status, 200u) << opened.body;
    std::vector<float> back(plain.size());
    ASSERT_EQ(opened.body.size(), back.size() * sizeof(float));
    std::memcpy(back.data(), opened.body.data(), opened.body.size());
    EXPECT_LT(MaxAbsDifference(back, plain), kDecryptTolerance);
    std::map<std::string, uint64_t> spent;
    for (const char* function : kFunctions) spent[function] = HsmCalls(client, function) - before[function];
    // Per request (an encrypt, then a decrypt): one update per 1024 vectors, nothing else.
    const uint64_t parts = (n + 1023) / 1024;
    EXPECT_EQ(spent["C_EncryptUpdate"], 2 * parts) << n << " vectors";
    EXPECT_EQ(spent["C_EncryptInit"], 0u) << n << ": the operation stays open";
    EXPECT_EQ(spent["C_Encrypt"], 0u) << n;
    EXPECT_EQ(spent["C_EncryptFinal"], 0u) << n;
    EXPECT_EQ(spent["C_SignInit"], 0u) << n << ": no HMAC for a format 2 key";
    EXPECT_EQ(spent["C_FindObjectsInit"], 0u) << n << ": the key handle is reused";
  }
}

// A key created as format 1 ("derivation": "hmac") keeps it; rotating it makes a format 2
// version; tokens of either decrypt under their own version, and one version's format never
// decrypts the other's token.
TEST_F(DaemonTest, FormatsOneAndTwoLiveSideBySideInOneKey) {
  auto created = client_->PostJson("/v1/keys", {{"name", "legacy"},
                                                {"approximation_factor", 1.0},
                                                {"transform", "rotate"},
                                                {"derivation", "hmac"}});
  ASSERT_EQ(created.status, 201u) << created.body;
  EXPECT_EQ(created.Json()["format"], 1);
  EXPECT_EQ(created.Json()["derivation"], "hmac");
  const auto plain = RandomVectors(2, 6, 9);
  auto v1 = client_->PostJson("/v1/keys/legacy/encrypt",
                              {{"vectors", Rows(plain, 6)}, {"reversible", true}});
  ASSERT_EQ(v1.status, 200u) << v1.body;
  auto rotated = client_->Send(HttpCall{.method = "POST", .target = "/v1/keys/legacy/rotate",
                                        .body = "", .content_type = {}, .headers = {}});
  ASSERT_EQ(rotated.status, 200u) << rotated.body;
  EXPECT_EQ(rotated.Json()["format"], 2);
  EXPECT_EQ(rotated.Json()["formats"], json::array({1, 2}));
  auto v2 = client_->PostJson("/v1/keys/legacy/encrypt",
                              {{"vectors", Rows(plain, 6)}, {"reversible", true}});
  ASSERT_EQ(v2.status, 200u) << v2.body;
  for (const auto* sealed : {&v1, &v2}) {
    auto opened = client_->PostJson("/v1/keys/legacy/decrypt", {{"vectors", sealed->Json()["vectors"]},
                                                                 {"tokens", sealed->Json()["tokens"]}});
    ASSERT_EQ(opened.status, 200u) << opened.body;
    EXPECT_LT(MaxAbsDifference(Flatten(opened.Json()["vectors"]), plain), kDecryptTolerance);
  }
  // A format 1 token relabelled with version 2 reaches the format 2 version: refused, no vector.
  // Base64 of the first three bytes (format 1, key version 1 as u32le): 01 01 00 is "AQEA";
  // 01 02 00, key version 2, is "AQIA".
  std::string token = v1.Json()["tokens"][0].get<std::string>();
  ASSERT_EQ(token.substr(0, 4), "AQEA");
  token.replace(0, 4, "AQIA");
  auto crossed = client_->PostJson("/v1/keys/legacy/decrypt",
                                   {{"vectors", {v1.Json()["vectors"][0]}}, {"tokens", {token}}});
  EXPECT_EQ(crossed.status, 400u);
  EXPECT_EQ(crossed.ErrorCode(), "invalid_token");
  EXPECT_EQ(crossed.Json()["error"]["message"],
            "token 0 is a format v1 token, but key version 2 is format v2; it was not made by "
            "this key");
  EXPECT_FALSE(crossed.Json().contains("vectors"));
  auto bad = client_->PostJson("/v1/keys", {{"name", "x"}, {"approximation_factor", 1.0},
                                            {"derivation", "des"}});
  EXPECT_EQ(bad.status, 400u);
  EXPECT_EQ(bad.ErrorCode(), "invalid_derivation");
  // The audit log says which format each request used.
  int formats_seen = 0;
  for (const json& record : daemon_->AuditRecords()) {
    if (record.value("key", "") != "legacy" || !record.contains("extra")) continue;
    const int format = record["extra"].value("key_format", 0);
    EXPECT_EQ(format, record.value("key_version", 0) == 1 ? 1 : 2) << record.dump();
    ++formats_seen;
  }
  EXPECT_GE(formats_seen, 6);
}

TEST_F(DaemonTest, WhoAmIHealthAndMetrics) {
  auto whoami = client_->Get("/v1/whoami");
  ASSERT_EQ(whoami.status, 200u);
  EXPECT_EQ(whoami.Json()["identity"]["pid"], getpid());
  EXPECT_EQ(whoami.Json()["identity"]["uid"], geteuid());
  EXPECT_EQ(whoami.Json()["grants"].size(), 1u);

  auto health = client_->Get("/v1/health");
  ASSERT_EQ(health.status, 200u);
  EXPECT_EQ(health.Json(), json::parse(R"({"status": "ok", "hsm": "ok", "audit": "ok",
                                           "version": "0.1.0"})"));

  ASSERT_EQ(client_->PostJson("/v1/keys/demo/encrypt", {{"vectors", {{1, 2}, {3, 4}, {5, 6}}}})
                .status,
            200u);
  auto metrics = client_->Get("/metrics");
  ASSERT_EQ(metrics.status, 200u);
  EXPECT_NE(metrics.body.find(
                "vecseal_requests_total{key=\"demo\",operation=\"encrypt\",outcome=\"ok\"} 1\n"),
            std::string::npos)
      << metrics.body;
  EXPECT_NE(metrics.body.find("vecseal_vectors_total{key=\"demo\",operation=\"encrypt\"} 3\n"),
            std::string::npos)
      << metrics.body;
  EXPECT_NE(metrics.body.find("vecseal_connections 1\n"), std::string::npos) << metrics.body;

  // The latency histogram is per operation: 12 finite buckets and +Inf, cumulative, for the one
  // encrypt; its sum and count; and whoami's one request kept apart from it.
  const std::string histogram = "vecseal_request_duration_seconds";
  const std::string bucket_prefix = histogram + "_bucket{operation=\"encrypt\",le=\"";
  std::vector<std::string> bounds;
  std::vector<uint64_t> cumulative;
  std::istringstream lines(metrics.body);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind(bucket_prefix, 0) != 0) continue;
    const size_t quote = line.find('"', bucket_prefix.size());
    bounds.push_back(line.substr(bucket_prefix.size(), quote - bucket_prefix.size()));
    cumulative.push_back(std::stoull(line.substr(line.rfind(' ') + 1)));
  }
  ASSERT_EQ(bounds, (std::vector<std::string>{"0.0005", "0.001", "0.0025", "0.005", "0.01",
                                              "0.025", "0.05", "0.1", "0.25", "0.5", "1", "5",
                                              "+Inf"}))
      << metrics.body;
  EXPECT_TRUE(std::is_sorted(cumulative.begin(), cumulative.end())) << metrics.body;
  EXPECT_EQ(cumulative.back(), 1u) << metrics.body;
  EXPECT_NE(metrics.body.find(histogram + "_count{operation=\"encrypt\"} 1\n"), std::string::npos)
      << metrics.body;
  const std::string sum_prefix = histogram + "_sum{operation=\"encrypt\"} ";
  const size_t sum_at = metrics.body.find(sum_prefix);
  ASSERT_NE(sum_at, std::string::npos) << metrics.body;
  const double sum = std::stod(metrics.body.substr(sum_at + sum_prefix.size()));
  // With one observation, the sum lies in the first bucket that counts it (give or take the
  // six significant digits it is printed with).
  const size_t first = static_cast<size_t>(
      std::find(cumulative.begin(), cumulative.end(), 1u) - cumulative.begin());
  ASSERT_LT(first, bounds.size()) << metrics.body;
  constexpr double kPrinted = 1e-5;
  if (bounds[first] != "+Inf") {
    EXPECT_LE(sum, std::stod(bounds[first]) * (1 + kPrinted)) << metrics.body;
  }
  EXPECT_GT(sum, first == 0 ? 0.0 : std::stod(bounds[first - 1]) * (1 - kPrinted))
      << metrics.body;
  EXPECT_NE(metrics.body.find(histogram + "_count{operation=\"whoami\"} 1\n"), std::string::npos)
      << metrics.body;
  EXPECT_EQ(metrics.body.find(histogram + "_count "), std::string::npos)
      << "an unlabelled histogram is left over:\n" << metrics.body;
  EXPECT_EQ(metrics.body.find(histogram + "_bucket{key="), std::string::npos) << metrics.body;
  EXPECT_NE(metrics.body.find("# TYPE vecseal_hsm_errors_total counter\n"
                              "vecseal_hsm_errors_total 0\n"),
            std::string::npos)
      << metrics.body;
}

TEST_F(DaemonTest, EveryRequestIsAuditedBeforeTheResponse) {
  auto granted = client_->PostJson("/v1/keys/demo/encrypt", {{"vectors", {{1, 2}}}});
  auto failed = client_->PostJson("/v1/keys/missing/encrypt", {{"vectors", {{1, 2}}}});
  auto refused = client_->Send(HttpCall{.method = "POST", .target = "/v1/keys/demo/encrypt",
                                        .body = std::string(2'000'000, 'x'),
                                        .content_type = "application/json", .headers = {}});
  ASSERT_EQ(granted.status, 200u);
  ASSERT_EQ(failed.status, 404u);
  ASSERT_EQ(refused.status, 413u);
  // The records exist as soon as the responses do: no waiting.
  const auto records = daemon_->AuditRecords();
  const auto find = [&](const HttpResult& result) -> json {
    for (const auto& record : records) {
      if (record.value("request_id", "") == result.headers.at("vecseal-request-id")) return record;
    }
    return nullptr;
  };
  const json granted_record = find(granted);
  ASSERT_FALSE(granted_record.is_null());
  EXPECT_EQ(granted_record["event"], "encrypt");
  EXPECT_EQ(granted_record["decision"], "granted");
  EXPECT_EQ(granted_record["vectors"], 1);
  EXPECT_EQ(granted_record["caller"]["pid"], getpid());
  const json failed_record = find(failed);
  ASSERT_FALSE(failed_record.is_null());
  EXPECT_EQ(failed_record["event"], "error");
  EXPECT_EQ(failed_record["error_code"], "key_not_found");
  const json refused_record = find(refused);
  ASSERT_FALSE(refused_record.is_null());
  EXPECT_EQ(refused_record["error_code"], "body_too_large");
  for (const auto& record : records) {
    EXPECT_FALSE(record.contains("vectors") && record["vectors"].is_array())
        << "no vector values in the audit log";
  }
}

// Issue #17 row 12: /metrics showed key names and per-key counts to a caller denied keys.list.
TEST_F(DaemonTest, MetricsNameOnlyTheKeysTheCallerMayList) {
  ASSERT_EQ(client_->PostJson("/v1/keys/demo/encrypt", {{"vectors", {{1, 2}}}}).status, 200u);
  EXPECT_NE(client_->Get("/metrics").body.find(
                R"(vecseal_vectors_total{key="demo",operation="encrypt"} 1)"),
            std::string::npos);
  const std::string policy_path = daemon_->state_dir() + "/policy.json";
  {
    std::ofstream(policy_path, std::ios::trunc)
        << R"({"version": 1, "rules": [{"id": "encrypt-only", "callers": {"uid": )" << getuid()
        << R"(}, "keys": ["demo"], "operations": ["encrypt"]}]})";
  }
  daemon_->Signal(SIGHUP);
  ASSERT_TRUE(WaitForLog(*daemon_, "event=reloaded")) << daemon_->Log();
  ASSERT_EQ(client_->PostJson("/v1/keys/demo/encrypt", {{"vectors", {{1, 2}}}}).status, 200u);
  const std::string hidden = client_->Get("/metrics").body;
  EXPECT_EQ(hidden.find("key=\"demo\""), std::string::npos) << hidden;
  EXPECT_NE(hidden.find(R"(vecseal_vectors_total{key="",operation="encrypt"} 2)"),
            std::string::npos)
      << "the counts are still there, without the name:\n" << hidden;
}

TEST_F(DaemonTest, SighupWithABrokenPolicyKeepsServingThenAValidOneApplies) {
  const std::string policy_path = daemon_->state_dir() + "/policy.json";
  { std::ofstream(policy_path, std::ios::trunc) << R"({"version": 1, "rules": [)"; }
  daemon_->Signal(SIGHUP);
  ASSERT_TRUE(WaitForLog(*daemon_, "event=reload_failed reason=policy_invalid")) << daemon_->Log();
  EXPECT_EQ(client_->PostJson("/v1/keys/demo/encrypt", {{"vectors", {{1, 2}}}}).status, 200u);

  { std::ofstream(policy_path, std::ios::trunc) << R"({"version": 1, "rules": []})"; }
  daemon_->Signal(SIGHUP);
  ASSERT_TRUE(WaitForLog(*daemon_, "event=reloaded")) << daemon_->Log();
  auto denied = client_->PostJson("/v1/keys/demo/encrypt", {{"vectors", {{1, 2}}}});
  EXPECT_EQ(denied.status, 403u);
  EXPECT_EQ(denied.ErrorCode(), "permission_denied");
  EXPECT_EQ(denied.Json()["error"]["message"], "no rule grants encrypt on key 'demo'");

  bool failed_reload_audited = false;
  for (const auto& record : daemon_->AuditRecords()) {
    if (record.value("event", "") == "reload" &&
        record.value("error_code", "") == "policy_invalid") {
      failed_reload_audited = true;
    }
  }
  EXPECT_TRUE(failed_reload_audited);
}

TEST_F(DaemonTest, SighupWithABrokenConfigKeepsTheOldOne) {
  // This daemon has an overlay config; break it.
  { std::ofstream(daemon_->overlay_path(), std::ios::trunc) << R"({"limits": {"max_vector": 1}})"; }
  daemon_->Signal(SIGHUP);
  ASSERT_TRUE(WaitForLog(*daemon_, "event=reload_failed reason=invalid_config")) << daemon_->Log();
  EXPECT_NE(daemon_->Log().find("$.limits.max_vector: unknown key"), std::string::npos);
  // The old max_vectors (64) still holds, not the broken file's 1.
  auto result = client_->PostJson("/v1/keys/demo/encrypt", {{"vectors", {{1}, {2}, {3}}}});
  EXPECT_EQ(result.status, 200u) << result.body;

  { std::ofstream(daemon_->overlay_path(), std::ios::trunc) << R"({"limits": {"max_vectors": 2}})"; }
  daemon_->Signal(SIGHUP);
  ASSERT_TRUE(WaitForLog(*daemon_, "event=reloaded")) << daemon_->Log();
  result = client_->PostJson("/v1/keys/demo/encrypt", {{"vectors", {{1}, {2}, {3}}}});
  EXPECT_EQ(result.status, 413u);
  EXPECT_EQ(result.ErrorCode(), "too_many_vectors");
}

// A request whose body is still arriving when SIGTERM comes is answered before the daemon exits.
TEST_F(DaemonTest, SigtermFinishesTheRequestInFlightThenExitsZero) {
  const int fd = ConnectUnix(daemon_->socket_path());
  ASSERT_GE(fd, 0);
  const std::string body = R"({"vectors": [[1, 2, 3]]})";
  const std::string head = "POST /v1/keys/demo/encrypt HTTP/1.1\r\nHost: localhost\r\n"
                           "Content-Type: application/json\r\nContent-Length: " +
                           std::to_string(body.size()) + "\r\n\r\n";
  // A first complete request proves the daemon accepted this connection.
  const std::string whole = head + body;
  ASSERT_EQ(write(fd, whole.data(), whole.size()), static_cast<ssize_t>(whole.size()));
  std::string answered;
  while (answered.find("}\n") == std::string::npos) {
    char buffer[4096];
    const ssize_t n = read(fd, buffer, sizeof(buffer));
    ASSERT_GT(n, 0);
    answered.append(buffer, static_cast<size_t>(n));
  }
  ASSERT_EQ(StatusOf(answered), 200u) << answered;
  // Headers and half the body of a second one: it is in flight when the signal arrives.
  const std::string first = head + body.substr(0, 5);
  ASSERT_EQ(write(fd, first.data(), first.size()), static_cast<ssize_t>(first.size()));
  daemon_->Signal(SIGTERM);
  ASSERT_TRUE(WaitForLog(*daemon_, "event=stopping")) << daemon_->Log();
  const std::string rest = body.substr(5);
  ASSERT_EQ(write(fd, rest.data(), rest.size()), static_cast<ssize_t>(rest.size()));
  const std::string response = ReadToEof(fd);
  close(fd);
  EXPECT_EQ(StatusOf(response), 200u) << response;
  EXPECT_NE(response.find("Connection: close"), std::string::npos) << response;
  EXPECT_EQ(daemon_->Stop(), 0);
  EXPECT_FALSE(std::filesystem::exists(daemon_->socket_path()));
  const auto records = daemon_->AuditRecords();
  ASSERT_GE(records.size(), 2u);
  EXPECT_EQ(records[records.size() - 2]["event"], "stop");
  EXPECT_EQ(records.back()["event"], "seal");
}

TEST(DaemonLimitsTest, SlowClientGetsRequestTimeout) {
  auto daemon = StartOrFail(R"({"limits": {"header_timeout_ms": 200}})");
  ASSERT_NE(daemon, nullptr);
  const int fd = ConnectUnix(daemon->socket_path());
  ASSERT_GE(fd, 0);
  // A slowloris: the start of a request, and then nothing.
  const std::string partial = "POST /v1/keys/demo/encrypt HTTP/1.1\r\nHost: localhost\r\n";
  ASSERT_EQ(write(fd, partial.data(), partial.size()), static_cast<ssize_t>(partial.size()));
  const std::string response = ReadToEof(fd);
  close(fd);
  EXPECT_EQ(StatusOf(response), 408u) << response;
  EXPECT_NE(response.find(R"("code":"request_timeout")"), std::string::npos) << response;
  EXPECT_NE(response.find("the request headers did not arrive within 200 ms"), std::string::npos);
}

// The same slowloris on a keep-alive connection after several answered requests, whose phases
// left the connection's timer set for an earlier deadline: the header deadline still holds.
TEST(DaemonLimitsTest, SlowClientAfterAnsweredRequestsGetsRequestTimeout) {
  auto daemon = StartOrFail(R"({"limits": {"header_timeout_ms": 300}})");
  ASSERT_NE(daemon, nullptr);
  const int fd = ConnectUnix(daemon->socket_path());
  ASSERT_GE(fd, 0);
  const std::string health = "GET /v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n";
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(write(fd, health.data(), health.size()), static_cast<ssize_t>(health.size()));
    std::string answer;
    while (answer.find("}\n") == std::string::npos) {
      char buffer[4096];
      const ssize_t n = read(fd, buffer, sizeof(buffer));
      ASSERT_GT(n, 0) << "request " << i;
      answer.append(buffer, static_cast<size_t>(n));
    }
    ASSERT_EQ(StatusOf(answer), 200u) << answer;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  const auto start = std::chrono::steady_clock::now();
  const std::string partial = "POST /v1/keys/demo/encrypt HTTP/1.1\r\nHost: localhost\r\n";
  ASSERT_EQ(write(fd, partial.data(), partial.size()), static_cast<ssize_t>(partial.size()));
  const std::string response = ReadToEof(fd);
  const auto waited = std::chrono::steady_clock::now() - start;
  close(fd);
  EXPECT_EQ(StatusOf(response), 408u) << response;
  EXPECT_NE(response.find("the request headers did not arrive within 300 ms"), std::string::npos)
      << response;
  // Not cut off early by an older deadline, nor left to the 60 s idle or write timeouts.
  EXPECT_GE(waited, std::chrono::milliseconds(290));
  EXPECT_LT(waited, std::chrono::seconds(10));
}

TEST(DaemonLimitsTest, IdleKeepAliveConnectionIsClosed) {
  auto daemon = StartOrFail(R"({"limits": {"idle_timeout_ms": 100}})");
  ASSERT_NE(daemon, nullptr);
  const int fd = ConnectUnix(daemon->socket_path());
  ASSERT_GE(fd, 0);
  EXPECT_EQ(ReadToEof(fd), "") << "an idle connection is closed without a response";
  close(fd);
}

// Issue #17 row 15: what a lenient reader resolves one way and another reader another way is
// refused: a repeated JSON field, a transfer coding the server does not decode, a repeated
// header. HEAD is answered without a body.
TEST(DaemonStrictHttpTest, AmbiguousRequestsAreRefused) {
  auto daemon = StartOrFail();
  ASSERT_NE(daemon, nullptr);
  const auto exchange = [&](const std::string& request) {
    const int fd = ConnectUnix(daemon->socket_path());
    EXPECT_GE(fd, 0);
    EXPECT_EQ(write(fd, request.data(), request.size()), static_cast<ssize_t>(request.size()));
    shutdown(fd, SHUT_WR);
    std::string response = ReadToEof(fd);
    close(fd);
    return response;
  };
  const std::string twice_named = R"({"name": "first", "name": "second", "approximation_factor": 1.0})";
  std::string response = exchange(
      "POST /v1/keys HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
      std::to_string(twice_named.size()) + "\r\n\r\n" + twice_named);
  EXPECT_EQ(StatusOf(response), 400u) << response;
  EXPECT_NE(response.find(R"("code":"invalid_request","message":"the field \"name\" is repeated")"),
            std::string::npos)
      << response;

  const std::string chunk = "{\"vectors\": [[1, 2]]}";
  char size[16];
  std::snprintf(size, sizeof size, "%zx", chunk.size());
  response = exchange(
      "POST /v1/keys/demo/encrypt HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
      "Transfer-Encoding: gzip, chunked\r\n\r\n" + std::string(size) + "\r\n" + chunk +
      "\r\n0\r\n\r\n");
  EXPECT_EQ(StatusOf(response), 501u) << response;
  EXPECT_NE(response.find(R"("code":"unsupported_transfer_coding")"), std::string::npos)
      << response;

  const std::string floats = FloatsToBytes({1, 2, 3, 4});
  response = exchange(
      "POST /v1/keys/demo/encrypt HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
      "Vecseal-Dimension: 2\r\nVecseal-Dimension: 4\r\nContent-Length: " +
      std::to_string(floats.size()) + "\r\n\r\n" + floats);
  EXPECT_EQ(StatusOf(response), 400u) << response;
  EXPECT_NE(response.find("the vecseal-dimension header appears 2 times; send it once"),
            std::string::npos)
      << response;

  response = exchange("HEAD /v1/health HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(StatusOf(response), 405u) << response;
  EXPECT_NE(response.find("Allow: GET"), std::string::npos) << response;
  EXPECT_NE(response.find("Content-Length: 0\r\n"), std::string::npos) << response;
  EXPECT_TRUE(response.ends_with("\r\n\r\n")) << "a response to HEAD has no body: " << response;
  // Every refusal is audited.
  size_t refused = 0;
  for (const json& record : daemon->AuditRecords()) {
    const std::string code = record.value("error_code", "");
    if (code == "invalid_request" || code == "unsupported_transfer_coding" ||
        code == "method_not_allowed") {
      ++refused;
    }
  }
  EXPECT_EQ(refused, 4u);
}

TEST(DaemonLimitsTest, PostWithoutContentLengthGets411) {
  auto daemon = StartOrFail();
  ASSERT_NE(daemon, nullptr);
  const int fd = ConnectUnix(daemon->socket_path());
  ASSERT_GE(fd, 0);
  const std::string request = "POST /v1/keys/demo/encrypt HTTP/1.1\r\nHost: localhost\r\n"
                              "Content-Type: application/json\r\n\r\n";
  ASSERT_EQ(write(fd, request.data(), request.size()), static_cast<ssize_t>(request.size()));
  const std::string response = ReadToEof(fd);
  close(fd);
  EXPECT_EQ(StatusOf(response), 411u) << response;
  EXPECT_NE(response.find(R"("code":"length_required")"), std::string::npos) << response;
}

TEST(DaemonLimitsTest, ConnectionsBeyondTheLimitGet503) {
  auto daemon = StartOrFail(R"({"limits": {"max_connections": 2}})");
  ASSERT_NE(daemon, nullptr);
  // Two connections that have each completed a request are surely counted.
  HttpClient first(daemon->socket_path());
  HttpClient second(daemon->socket_path());
  ASSERT_EQ(first.Get("/v1/health").status, 200u);
  ASSERT_EQ(second.Get("/v1/health").status, 200u);
  HttpClient third(daemon->socket_path());
  const auto refused = third.Get("/v1/health");
  EXPECT_EQ(refused.status, 503u) << refused.body;
  EXPECT_EQ(refused.ErrorCode(), "too_many_connections");
}

// Issue #17: nesting beyond what a request needs is refused while the body is scanned, before
// any tree is built: 3 levels for vectors, 16 for a key creation.
TEST(DaemonLimitsTest, JsonNestedTooDeepGets400JsonTooDeep) {
  auto daemon = StartOrFail();
  ASSERT_NE(daemon, nullptr);
  HttpClient client(daemon->socket_path());
  const auto vectors = client.Send({.method = "POST",
                                    .target = "/v1/keys/demo/encrypt",
                                    .body = R"({"vectors": [[[0.5]]]})",
                                    .content_type = "application/json",
                                    .headers = {}});
  EXPECT_EQ(vectors.status, 400u) << vectors.body;
  EXPECT_EQ(vectors.ErrorCode(), "json_too_deep");

  const auto nested = [](size_t depth) {
    return R"({"name": "deep", "approximation_factor": 2.5, "x": )" + std::string(depth - 1, '[') +
           std::string(depth - 1, ']') + "}";
  };
  const auto too_deep = client.Send({.method = "POST",
                                     .target = "/v1/keys",
                                     .body = nested(17),
                                     .content_type = "application/json",
                                     .headers = {}});
  EXPECT_EQ(too_deep.status, 400u) << too_deep.body;
  EXPECT_EQ(too_deep.ErrorCode(), "json_too_deep");
  // 16 levels pass the scan and meet the ordinary checks (here: the unknown field).
  const auto deep_enough = client.Send({.method = "POST",
                                        .target = "/v1/keys",
                                        .body = nested(16),
                                        .content_type = "application/json",
                                        .headers = {}});
  EXPECT_EQ(deep_enough.status, 400u) << deep_enough.body;
  EXPECT_EQ(deep_enough.ErrorCode(), "invalid_request");

  // 64 MiB of '[' from a caller allowed to create keys: refused from its Content-Length, since a
  // key creation body is small.
  const auto huge = client.Send({.method = "POST",
                                 .target = "/v1/keys",
                                 .body = std::string(70000, '['),
                                 .content_type = "application/json",
                                 .headers = {}});
  EXPECT_EQ(huge.status, 413u) << huge.body;
  EXPECT_EQ(huge.ErrorCode(), "body_too_large");
}

// Issue #17: bodies held at once are capped across connections. A body that would exceed
// limits.max_buffered_body_bytes is answered 503 body_memory_exhausted; the bytes of a finished
// request are free again.
TEST(DaemonLimitsTest, BufferedBodiesBeyondTheBudgetGet503) {
  auto daemon = StartOrFail(
      R"({"limits": {"max_body_bytes": 2097152, "max_buffered_body_bytes": 3145728}})");
  ASSERT_NE(daemon, nullptr);
  constexpr size_t kDimension = 256;
  const std::string big = FloatsToBytes(RandomVectors(2048, kDimension, 7));  // 2 MiB
  const std::string head = "POST /v1/keys/demo/encrypt HTTP/1.1\r\nHost: localhost\r\n"
                           "Content-Type: application/octet-stream\r\nVecseal-Dimension: " +
                           std::to_string(kDimension) +
                           "\r\nContent-Length: " + std::to_string(big.size()) + "\r\n\r\n";
  // The first 2 MiB body is half sent and stalls: its bytes are reserved.
  const int stalled = ConnectUnix(daemon->socket_path());
  ASSERT_GE(stalled, 0);
  const std::string first_half = head + big.substr(0, big.size() / 2);
  ASSERT_EQ(send(stalled, first_half.data(), first_half.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(first_half.size()));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));

  HttpClient client(daemon->socket_path());
  const auto refused = client.PostBinary("/v1/keys/demo/encrypt", big,
                                         {{"Vecseal-Dimension", std::to_string(kDimension)}});
  EXPECT_EQ(refused.status, 503u) << refused.body;
  EXPECT_EQ(refused.ErrorCode(), "body_memory_exhausted");
  // A body that fits beside the stalled one is served.
  const std::string small = FloatsToBytes(RandomVectors(4, kDimension, 8));
  EXPECT_EQ(client
                .PostBinary("/v1/keys/demo/encrypt", small,
                            {{"Vecseal-Dimension", std::to_string(kDimension)}})
                .status,
            200u);

  // The stalled request completes; its bytes are released once it is answered.
  const std::string second_half = big.substr(big.size() / 2);
  ASSERT_EQ(send(stalled, second_half.data(), second_half.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(second_half.size()));
  shutdown(stalled, SHUT_WR);
  EXPECT_EQ(StatusOf(ReadToEof(stalled)), 200u);
  close(stalled);
  const auto served = client.PostBinary("/v1/keys/demo/encrypt", big,
                                        {{"Vecseal-Dimension", std::to_string(kDimension)}});
  EXPECT_EQ(served.status, 200u) << served.body;
}

// Issue #17: one uid gets limits.max_connections_per_uid connections; the next is answered 503
// too_many_connections_for_user and closed, and a freed slot is usable again. (That another uid
// is still served is tests/security's BodyAttackTest.OneUidCannotHoldEveryConnection.)
TEST(DaemonLimitsTest, ConnectionsBeyondTheUidShareGet503) {
  auto daemon = StartOrFail(R"({"limits": {"max_connections_per_uid": 3}})");
  ASSERT_NE(daemon, nullptr);
  std::vector<std::unique_ptr<HttpClient>> held;
  for (int i = 0; i < 3; ++i) {
    held.push_back(std::make_unique<HttpClient>(daemon->socket_path()));
    ASSERT_EQ(held.back()->Get("/v1/health").status, 200u);
  }
  HttpClient over(daemon->socket_path());
  const auto refused = over.Get("/v1/health");
  EXPECT_EQ(refused.status, 503u) << refused.body;
  EXPECT_EQ(refused.ErrorCode(), "too_many_connections_for_user");
  held.pop_back();
  // The daemon frees the slot when it sees the close; retry briefly.
  unsigned status = 0;
  for (int attempt = 0; attempt < 50 && status != 200; ++attempt) {
    HttpClient again(daemon->socket_path());
    status = again.Get("/v1/health").status;
    if (status != 200) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(status, 200u);
}

// A body sent to an endpoint that takes none is never read: the answer comes from the headers
// and the connection closes.
TEST(DaemonLimitsTest, BodyToAnEndpointWithoutOneIsNotRead) {
  auto daemon = StartOrFail();
  ASSERT_NE(daemon, nullptr);
  const int fd = ConnectUnix(daemon->socket_path());
  ASSERT_GE(fd, 0);
  const std::string head = "GET /v1/health HTTP/1.1\r\nHost: localhost\r\nContent-Length: " +
                           std::to_string(64 << 20) + "\r\n\r\n";
  ASSERT_EQ(send(fd, head.data(), head.size(), MSG_NOSIGNAL), static_cast<ssize_t>(head.size()));
  const std::string answer = ReadToEof(fd);  // without a byte of the body sent
  close(fd);
  EXPECT_EQ(StatusOf(answer), 200u) << answer;
  EXPECT_NE(answer.find("Connection: close"), std::string::npos) << answer;
}

TEST(DaemonAuditTest, AuditFailureFailsClosedEndToEnd) {
  if (access("/dev/full", W_OK) != 0) GTEST_SKIP() << "/dev/full is not writable here";
  auto daemon = StartOrFail(
      R"({"audit": {"single_file": "/dev/full", "refuse_free_bytes": 0, "warn_free_bytes": 0,
                    "try_append_only": false}})");
  ASSERT_NE(daemon, nullptr);
  HttpClient client(daemon->socket_path());
  auto encrypted = client.PostJson("/v1/keys/demo/encrypt", {{"vectors", {{1, 2, 3}}}});
  EXPECT_EQ(encrypted.status, 503u);
  EXPECT_EQ(encrypted.ErrorCode(), "audit_unavailable");
  EXPECT_EQ(encrypted.body.find("\"vectors\""), std::string::npos) << "no vectors without a record";
  // Nothing irreversible is started while the log is known to be failing.
  auto deleted = Delete(client, "/v1/keys/demo");
  EXPECT_EQ(deleted.status, 503u);
  EXPECT_EQ(deleted.ErrorCode(), "audit_unavailable");
  EXPECT_EQ(daemon->Log().find("event=key_deleted"), std::string::npos) << daemon->Log();
  auto health = client.Get("/v1/health");
  EXPECT_EQ(health.status, 503u);
  EXPECT_EQ(health.Json()["audit"], "unavailable");
  EXPECT_EQ(health.Json()["status"], "unavailable");
}

// systemd's default soft RLIMIT_NOFILE (1024) is too low for 256 connections of five
// descriptors each: the daemon raises its soft limit up to the hard one, or refuses to start
// naming the setting.
TEST(DaemonFileLimitTest, RaisesTheSoftLimitOrRefusesToStart) {
  rlimit saved{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &saved), 0);
  if (saved.rlim_max < 2048) GTEST_SKIP() << "the hard RLIMIT_NOFILE here is below 2048";
  rlimit soft = saved;
  soft.rlim_cur = 1024;
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &soft), 0);  // inherited by the daemon
  auto daemon = StartOrFail("");
  ASSERT_NE(daemon, nullptr);
  std::ifstream limits("/proc/" + std::to_string(daemon->pid()) + "/limits");
  uint64_t daemon_soft = 0;
  for (std::string line; std::getline(limits, line);) {
    if (line.starts_with("Max open files")) {
      std::istringstream(line.substr(std::string("Max open files").size())) >> daemon_soft;
    }
  }
  EXPECT_GE(daemon_soft, 256u * 5u + 128u);
  daemon->Stop();

  // A hard limit that cannot hold max_connections: refused at start, with the fix.
  rlimit tight{.rlim_cur = 512, .rlim_max = 512};
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    setrlimit(RLIMIT_NOFILE, &tight);
    std::string error;
    auto refused = DevDaemon::Start({}, &error);
    _exit(refused == nullptr &&
                  error.find("$.limits.max_connections: 256 connections need about 1408 file "
                             "descriptors, but RLIMIT_NOFILE allows 512; raise LimitNOFILE= in "
                             "the unit or lower max_connections") != std::string::npos
              ? 0
              : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  setrlimit(RLIMIT_NOFILE, &saved);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << "the daemon must refuse to start with a message naming $.limits.max_connections";
}

}  // namespace
}  // namespace vecseal::daemon::testing
