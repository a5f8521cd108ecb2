// Vectors on the wire: exact float32 parsing and printing, the request shape, binary bodies and
// base64 tokens.
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include <gtest/gtest.h>

#include "vecseal/daemon/vector_codec.h"

namespace vecseal::daemon {
namespace {

TEST(VectorCodecTest, JsonNumbersBecomeTheNearestFloat32) {
  // 0.1 parsed through double and then narrowed can differ from the nearest float in rare cases;
  // these are parsed straight to float32.
  auto request = ParseJsonVectorRequest(R"({"vectors": [[0.1, -2, 3.4028235e38, 1e-46, 7]]})", 10);
  ASSERT_TRUE(request.ok()) << request.status().ToString();
  EXPECT_EQ(request->batch.dimension, 5u);
  EXPECT_EQ(std::vector<float>(request->batch.values.begin(), request->batch.values.end()),
            (std::vector<float>{0.1f, -2.0f, 3.4028235e38f, 0.0f, 7.0f}));
  EXPECT_FALSE(request->reversible.has_value());
  EXPECT_FALSE(request->tokens.has_value());
}

TEST(VectorCodecTest, PrintedFloatsReadBackExactly) {
  std::mt19937 generator(7);
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 20000; ++i) {
    float value;
    const uint32_t word = bits(generator);
    std::memcpy(&value, &word, sizeof(value));
    if (!std::isfinite(value)) continue;
    std::string text;
    AppendFloat(text, value);
    auto request = ParseJsonVectorRequest("{\"vectors\": [[" + text + "]]}", 1);
    ASSERT_TRUE(request.ok()) << text;
    EXPECT_EQ(std::memcmp(&request->batch.values[0], &value, sizeof(value)), 0) << text;
  }
}

TEST(VectorCodecTest, ShapeErrors) {
  const std::vector<std::pair<std::string, std::string>> table = {
      {R"([[1]])", "invalid_request"},
      {R"({"vectors": [1, 2]})", "invalid_request"},
      {R"({"vectors": [[1, "2"]]})", "invalid_request"},
      {R"({"vectors": []})", "invalid_request"},
      {R"({"reversible": true})", "invalid_request"},
      {R"({"vectors": [[1]], "vectors": [[2]]})", "invalid_request"},
      {R"({"vectors": [[1]], "reversible": "yes"})", "invalid_request"},
      {R"({"vectors": [[1]]} extra)", "invalid_json"},
      {R"({"vectors": [[1], [2, 3]]})", "dimension_mismatch"},
      {R"({"vectors": [[1, 2, 3, 4]], "x": 1})", "invalid_request"},
      {R"({"vectors": [[1], [2], [3]]})", "too_many_vectors"},
  };
  for (const auto& [body, reason] : table) {
    SCOPED_TRACE(body);
    auto request = ParseJsonVectorRequest(body, 2);
    ASSERT_FALSE(request.ok());
    EXPECT_EQ(request.status().reason(), reason) << request.status().message();
  }
}

TEST(VectorCodecTest, BinaryBodiesAreUsedInPlace) {
  const std::vector<float> values = {1, 2, 3, 4, 5, 6};
  const std::string body(reinterpret_cast<const char*>(values.data()), values.size() * 4);
  ByteBuffer buffer = ByteBuffer::CopyOf(body);
  const std::byte* storage = buffer.data();
  auto batch = ParseBinaryVectors(std::move(buffer), 3, 10, nullptr);
  ASSERT_TRUE(batch.ok());
  EXPECT_EQ(batch->count(), 2u);
  EXPECT_EQ(std::vector<float>(batch->values.begin(), batch->values.end()), values);
  EXPECT_EQ(reinterpret_cast<const std::byte*>(batch->values.data()), storage)
      << "the floats are used where the body was read, not copied";
  batch->values[0] = 9;
  const ByteBuffer answer = TakeBinaryVectors(*batch);
  EXPECT_EQ(answer.data(), storage) << "and answered from the same buffer";
  std::vector<float> changed = values;
  changed[0] = 9;
  EXPECT_EQ(answer.view(),
            std::string(reinterpret_cast<const char*>(changed.data()), changed.size() * 4));

  const auto parse = [](std::string_view bytes, size_t dimension, size_t max) {
    return ParseBinaryVectors(ByteBuffer::CopyOf(bytes), dimension, max, nullptr);
  };
  EXPECT_EQ(parse(body, 4, 10).status().reason(), "invalid_length");
  EXPECT_EQ(parse("", 3, 10).status().reason(), "invalid_length");
  EXPECT_EQ(parse(body, 3, 1).status().reason(), "too_many_vectors");

  // Decrypt bodies: the tokens follow the vectors, and the answer holds the vectors only.
  std::string with_tokens = body.substr(0, 12) + std::string(41, '\x07');
  std::vector<core::Token> tokens;
  batch = ParseBinaryVectors(ByteBuffer::CopyOf(with_tokens), 3, 10, &tokens);
  ASSERT_TRUE(batch.ok()) << batch.status().ToString();
  ASSERT_EQ(tokens.size(), 1u);
  EXPECT_EQ(tokens[0][40], 7);
  EXPECT_EQ(TakeBinaryVectors(*batch).view(), body.substr(0, 12));
}

TEST(VectorCodecTest, KeyVersionField) {
  auto request = ParseJsonVectorRequest(R"({"vectors": [[1]], "key_version": 3})", 10);
  ASSERT_TRUE(request.ok()) << request.status().ToString();
  EXPECT_EQ(request->key_version, 3u);
  for (const char* bad : {R"({"vectors": [[1]], "key_version": 0})",
                          R"({"vectors": [[1]], "key_version": -1})",
                          R"({"vectors": [[1]], "key_version": 1.5})",
                          R"({"vectors": [[1]], "key_version": "2"})",
                          R"({"vectors": [[1]], "key_version": 4294967296})"}) {
    auto parsed = ParseJsonVectorRequest(bad, 10);
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_TRUE(parsed.status().message().starts_with(
        "\"key_version\" must be a key version (an integer from 1), not "))
        << parsed.status().message();
  }
}

TEST(VectorCodecTest, DimensionHeader) {
  EXPECT_EQ(*ParseDimensionHeader("768", true), 768u);
  for (const char* bad : {"", "0", "-1", "12a", " 12", "65537", "99999999999999999999"}) {
    EXPECT_EQ(ParseDimensionHeader(bad, true).status().reason(), "invalid_dimension") << bad;
  }
  EXPECT_EQ(ParseDimensionHeader("", false).status().message(),
            "a binary request needs the Vecseal-Dimension header");
}

TEST(VectorCodecTest, Base64IsStrict) {
  const std::vector<uint8_t> bytes = {0, 1, 2, 250, 251};
  const std::string text = Base64Encode(bytes);
  EXPECT_EQ(text, "AAEC+vs=");
  EXPECT_EQ(*Base64Decode(text), bytes);
  for (const char* bad : {"AAEC+vs", "AAEC+vt=", "AA=C", "AAEC-vs=", "AAE=+vs=", "====" }) {
    EXPECT_FALSE(Base64Decode(bad).has_value()) << bad;
  }
  std::vector<std::string> texts = {Base64Encode(std::vector<uint8_t>(41, 9)), "AAAA"};
  auto tokens = DecodeTokens(texts);
  ASSERT_FALSE(tokens.ok());
  EXPECT_EQ(tokens.status().reason(), "invalid_token");
  EXPECT_EQ(tokens.status().vector_index(), 1u);
}

}  // namespace
}  // namespace vecseal::daemon
