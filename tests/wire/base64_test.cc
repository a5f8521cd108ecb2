#include "vecseal/wire/base64.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "vecseal/wire/tokens.h"

namespace vecseal::wire {
namespace {

std::vector<uint8_t> Bytes(std::string_view text) { return {text.begin(), text.end()}; }

TEST(WireBase64, EncodesRfc4648Vectors) {
  const std::pair<std::string_view, std::string_view> vectors[] = {
      {"", ""},         {"f", "Zg=="},         {"fo", "Zm8="},        {"foo", "Zm9v"},
      {"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="}, {"foobar", "Zm9vYmFy"}};
  for (const auto& [plain, text] : vectors) {
    EXPECT_EQ(Base64Encode(Bytes(plain)), text);
    const auto decoded = Base64Decode(text);
    ASSERT_TRUE(decoded.has_value()) << text;
    EXPECT_EQ(*decoded, Bytes(plain));
  }
}

TEST(WireBase64, RoundTripsEveryByteAndLength) {
  std::vector<uint8_t> bytes;
  for (int i = 0; i < 256; ++i) {
    bytes.push_back(static_cast<uint8_t>(255 - i));
    const std::string text = Base64Encode(bytes);
    EXPECT_EQ(text.size() % 4, 0u);
    EXPECT_EQ(Base64Decode(text), bytes) << text;
  }
}

TEST(WireBase64, AcceptsOnlyTheCanonicalForm) {
  const std::string_view refused[] = {
      "Zh==",      // 'f' with a non-zero bit under the padding (canonical: Zg==)
      "Zm9=",      // "fo" likewise (canonical: Zm8=)
      "Zm8",       // missing padding
      "Zg",        "Zg=",  "Zg===", "====", "=AAA", "A===",
      "Zg==Zg==",  // padding before the end
      "Zm9v\n",    "Zm9 v", " Zm9v",
      "Zm-v",      "Zm_v",  // the URL-safe alphabet
      std::string_view("Zm\0v", 4),
      "Zm9v====",
  };
  for (std::string_view text : refused) {
    EXPECT_FALSE(Base64Decode(text).has_value()) << text;
  }
}

TEST(WireTokens, DecodesExactlyOneTokensBytes) {
  core::Token token;
  for (size_t i = 0; i < token.size(); ++i) token[i] = static_cast<uint8_t>(i * 7);
  const auto decoded = DecodeToken(Base64Encode(token));
  ASSERT_TRUE(decoded.has_value());
  EXPECT_EQ(*decoded, token);
  EXPECT_FALSE(DecodeToken(Base64Encode(std::vector<uint8_t>(40, 1))).has_value());
  EXPECT_FALSE(DecodeToken(Base64Encode(std::vector<uint8_t>(42, 1))).has_value());
  EXPECT_FALSE(DecodeToken("").has_value());
  EXPECT_FALSE(DecodeToken("***").has_value());
  // 41 bytes end in a group of two bytes; a non-zero bit under its padding is refused.
  std::string text = Base64Encode(token);
  ASSERT_EQ(text.back(), '=');
  text[text.size() - 2] = 'B';
  EXPECT_FALSE(DecodeToken(text).has_value());
}

}  // namespace
}  // namespace vecseal::wire
