#include "vecseal/wire/key_name.h"

#include <gtest/gtest.h>

#include <string>

namespace vecseal::wire {
namespace {

TEST(WireKeyName, AcceptsTheGrammarsEdges) {
  const std::string accepted[] = {"a", "0", "support-v1", "a.b_c-d", "a.", "9-", "a--",
                                  std::string(64, 'z')};
  for (const std::string& name : accepted) EXPECT_TRUE(CheckKeyName(name).ok()) << name;
}

TEST(WireKeyName, RefusesEverythingElse) {
  const std::string refused[] = {"",          std::string(65, 'z'), ".a", "_a", "-a", "A",
                                 "Support",   "a/b",   "a b",  "a\n", "a*", "a?",
                                 "caf\xc3\xa9", std::string("a\0b", 3)};
  for (const std::string& name : refused) {
    const Status status = CheckKeyName(name);
    EXPECT_FALSE(status.ok()) << name;
    EXPECT_EQ(status.code(), Code::kInvalidArgument);
    EXPECT_EQ(status.reason(), "invalid_key_name");
  }
}

TEST(WireKeyName, MessageIsTheDocumentedOne) {
  // docs/cli.md, DIAGNOSTICS.
  EXPECT_EQ(CheckKeyName("Bad/Name").message(),
            "key name 'Bad/Name' is invalid (1-64 characters: a-z 0-9 . _ -, starting with a "
            "letter or digit)");
}

TEST(WireKeyName, MessageShowsCallerInputPrintableAndBounded) {
  EXPECT_EQ(CheckKeyName("a\x1b[31m'x").message().substr(0, 20), "key name 'a?[31m?x' ");
  const std::string long_name(1000, 'q');
  EXPECT_EQ(CheckKeyName(long_name).message(),
            "key name '" + std::string(64, 'q') +
                "...' is invalid (1-64 characters: a-z 0-9 . _ -, starting with a letter or "
                "digit)");
}

TEST(WireKeyName, CharactersAreTheNamesAlphabet) {
  for (int c = 0; c < 256; ++c) {
    const char ch = static_cast<char>(c);
    const bool expected = (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '.' ||
                          ch == '_' || ch == '-';
    EXPECT_EQ(IsKeyNameCharacter(ch), expected) << c;
  }
}

}  // namespace
}  // namespace vecseal::wire
