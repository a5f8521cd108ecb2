// API routes, error mapping, key lifecycle and audit records, in process: the real Service and
// HttpServer over a fake key store (tests/daemon/support/in_process_daemon.h), driven over a real
// Unix socket. Moved from daemon_test.cc, which keeps what needs a vecseald process.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "support/in_process_daemon.h"
#include "support/in_process_test.h"
#include "support/vectors.h"

namespace vecseal::daemon::testing {
namespace {

using nlohmann::json;

class ServiceRouteTest : public InProcessTest {};

TEST_F(ServiceRouteTest, JsonRoundTripsOneWayAndReversibleInSeveralDimensions) {
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
TEST_F(ServiceRouteTest, EncryptUnderAnOlderKeyVersion) {
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

TEST_F(ServiceRouteTest, BinaryRoundTripsAndAgreesWithJsonDecrypt) {
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

TEST_F(ServiceRouteTest, SixtyFourConcurrentClients) {
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

TEST_F(ServiceRouteTest, BadRequestsGetTheirExactStatusAndCode) {
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

TEST_F(ServiceRouteTest, NonFiniteValueNamesTheVector) {
  auto result = client_->PostJson("/v1/keys/demo/encrypt",
                                  json::parse(R"({"vectors": [[1, 2], [3, 4], [5, -1e40]]})"));
  EXPECT_EQ(result.status, 400u);
  EXPECT_EQ(result.ErrorCode(), "non_finite_value");
  EXPECT_EQ(result.Json()["error"]["vector_index"], 2);
}

TEST_F(ServiceRouteTest, KeysCreateListRotateAndOldVersionsStillDecrypt) {
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

TEST_F(ServiceRouteTest, RetiredVersionsAreRefusedAndRewrapMovesTokensToTheNewest) {
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

// A key created as format 1 ("derivation": "hmac") keeps it; rotating it makes a format 2
// version; tokens of either decrypt under their own version, and one version's format never
// decrypts the other's token.
TEST_F(ServiceRouteTest, FormatsOneAndTwoLiveSideBySideInOneKey) {
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

TEST_F(ServiceRouteTest, WhoAmIHealthAndMetrics) {
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

TEST_F(ServiceRouteTest, EveryRequestIsAuditedBeforeTheResponse) {
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

// audit.read is reserved (docs/policy.md): even a caller granted it, as the dev policy does, finds
// no endpoint that serves the log; the log is read from its files. Moved from
// audit_events_test.cc.
TEST(ServiceAuditTest, NoEndpointServesTheAuditLog) {
  std::string error;
  auto daemon = InProcessDaemon::Start({}, &error);
  ASSERT_NE(daemon, nullptr) << error;
  HttpClient client(daemon->socket_path());
  const auto whoami = client.Get("/v1/whoami");
  ASSERT_EQ(whoami.status, 200u) << whoami.body;
  ASSERT_NE(whoami.body.find("\"audit.read\""), std::string::npos) << "the dev policy grants it";
  for (const char* target : {"/v1/audit", "/v1/audit/log", "/v1/audit/records"}) {
    const auto answer = client.Get(target);
    EXPECT_EQ(answer.status, 404u) << target;
    EXPECT_EQ(answer.ErrorCode(), "not_found") << target;
  }
}

}  // namespace
}  // namespace vecseal::daemon::testing
