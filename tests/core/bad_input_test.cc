// Every refusal of docs/format.md §8, with its exact reason, message and vector index.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "test_util.h"
#include "vecseal/core/cipher.h"

namespace vecseal::core {
namespace {

using testing::CountingNonces;
using testing::MakeCipher;

struct BadInput {
  std::string name;
  std::function<Status()> run;
  Code code;
  std::string reason;
  std::string message;
  std::optional<size_t> vector_index;
};

std::ostream& operator<<(std::ostream& os, const BadInput& bad) { return os << bad.name; }

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

Status EncryptWith(TransformKind transform, std::vector<float> in, size_t d,
                   EncryptOptions options = {}, size_t out_size = SIZE_MAX,
                   size_t token_count = SIZE_MAX) {
  static CountingNonces nonces;
  options.nonces = &nonces;
  auto cipher = testing::SharedCipher(transform);
  std::vector<float> out(out_size == SIZE_MAX ? in.size() : out_size);
  const size_t n = d == 0 ? 0 : in.size() / d;
  std::vector<Token> tokens(token_count != SIZE_MAX ? token_count : options.reversible ? n : 0);
  return cipher->Encrypt(in, out, d, options, tokens);
}

Status DecryptWith(std::vector<float> in, size_t d, std::function<void(std::vector<Token>&)> edit) {
  auto cipher = testing::SharedCipher(TransformKind::kPermute);
  CountingNonces nonces;
  std::vector<float> c(in.size());
  std::vector<Token> tokens(in.size() / d);
  Status status = cipher->Encrypt(in, c, d, EncryptOptions{true, 1, &nonces}, tokens);
  if (!status.ok()) return status;
  edit(tokens);
  std::vector<float> out(c.size());
  return cipher->Decrypt(c, out, d, tokens);
}

Status CreateWithBeta(double beta) {
  auto deriver = SoftwareDeriver::CreateEphemeral();
  if (!deriver.ok()) return deriver.status();
  return Cipher::Create(std::move(deriver).value(), SchemeParams{beta, TransformKind::kRotate, 1})
      .status();
}

std::vector<float> Ones(size_t n) { return std::vector<float>(n, 1.0f); }

std::vector<float> With(std::vector<float> v, size_t at, float value) {
  v[at] = value;
  return v;
}

const auto kPermute = TransformKind::kPermute;
const auto kRotate = TransformKind::kRotate;
const auto kInvalid = Code::kInvalidArgument;

std::vector<BadInput> BadInputs() {
  return {
      {"dimension_zero",
       [] { return EncryptWith(kPermute, Ones(4), 0); },
       kInvalid,
       "invalid_dimension",
       "the dimension must be between 1 and 65536, got 0",
       {}},
      {"dimension_too_large",
       [] { return EncryptWith(kPermute, Ones(65537), 65537); },
       kInvalid,
       "invalid_dimension",
       "the dimension must be between 1 and 65536, got 65537",
       {}},
      {"rotate_dimension_too_large",
       [] { return EncryptWith(kRotate, Ones(4097), 4097); },
       kInvalid,
       "invalid_dimension",
       "the rotate transform supports dimensions up to 4096, got 4097; use the permute "
       "transform for larger vectors",
       {}},
      {"nan", [] { return EncryptWith(kPermute, With(Ones(12), 9, kNaN), 4); }, kInvalid,
       "non_finite_value", "vector 2 has a non-finite value (NaN) at component 1", 2},
      {"plus_infinity", [] { return EncryptWith(kRotate, With(Ones(12), 0, kInf), 4); }, kInvalid,
       "non_finite_value", "vector 0 has a non-finite value (+Inf) at component 0", 0},
      {"minus_infinity", [] { return EncryptWith(kPermute, With(Ones(12), 7, -kInf), 4); },
       kInvalid, "non_finite_value", "vector 1 has a non-finite value (-Inf) at component 3", 1},
      // Issue #17 row 11: finite inputs whose rotation overflows float32 were answered with
      // infinities, which are not JSON.
      {"result_overflows",
       [] {
         std::vector<float> in = Ones(4);
         in.insert(in.end(), 4, std::numeric_limits<float>::max());
         return EncryptWith(kRotate, in, 4);
       },
       kInvalid, "non_finite_value",
       "vector 1 cannot be encrypted or decrypted: its result would not be finite at component 3 "
       "(its values are too close to float32's limit of 3.4e38)",
       1},
      {"ragged_batch",
       [] { return EncryptWith(kPermute, Ones(10), 4); },
       kInvalid,
       "invalid_length",
       "the input holds 10 values, which is not a whole number of vectors of dimension 4",
       {}},
      {"output_too_small",
       [] { return EncryptWith(kPermute, Ones(12), 4, {}, 8); },
       kInvalid,
       "invalid_length",
       "the output holds 8 values but the input holds 12",
       {}},
      {"output_overlaps_input",
       [] {
         std::vector<float> buffer = Ones(16);
         const std::span<float> all(buffer);
         return testing::SharedCipher(kPermute)->Encrypt(all.first(12), all.subspan(4), 4, {}, {});
       },
       kInvalid,
       "overlapping_buffers",
       "the output overlaps the input without being the same buffer; pass the same buffer to work "
       "in place, or two separate ones",
       {}},
      {"group_size_zero",
       [] {
         return EncryptWith(kPermute, Ones(8), 4, {false, 0, nullptr});
       },
       kInvalid,
       "invalid_group_size",
       "the group size must be at least 1, got 0",
       {}},
      {"too_few_tokens",
       [] {
         return EncryptWith(kPermute, Ones(12), 4, {true, 1, nullptr}, SIZE_MAX, 2);
       },
       kInvalid,
       "invalid_length",
       "2 tokens were given for 3 vectors",
       {}},
      {"tokens_in_one_way_mode",
       [] {
         return EncryptWith(kPermute, Ones(12), 4, {false, 1, nullptr}, SIZE_MAX, 3);
       },
       kInvalid,
       "invalid_length",
       "one-way encryption returns no tokens, but room for 3 was given",
       {}},
      {"beta_zero",
       [] { return CreateWithBeta(0); },
       kInvalid,
       "invalid_approximation_factor",
       "the approximation factor beta must be finite and greater than 0, got 0",
       {}},
      {"beta_negative",
       [] { return CreateWithBeta(-1.5); },
       kInvalid,
       "invalid_approximation_factor",
       "the approximation factor beta must be finite and greater than 0, got -1.5",
       {}},
      {"beta_nan",
       [] { return CreateWithBeta(std::nan("")); },
       kInvalid,
       "invalid_approximation_factor",
       "the approximation factor beta must be finite and greater than 0, got NaN",
       {}},
      {"beta_infinite",
       [] { return CreateWithBeta(HUGE_VAL); },
       kInvalid,
       "invalid_approximation_factor",
       "the approximation factor beta must be finite and greater than 0, got +Inf",
       {}},
      {"rows_of_different_length",
       [] {
         const size_t lengths[] = {4, 4, 5, 4};
         return CommonDimension(lengths).status();
       },
       kInvalid, "dimension_mismatch", "vector 2 has 5 components but vector 0 has 4", 2},
      {"no_rows",
       [] { return CommonDimension({}).status(); },
       kInvalid,
       "invalid_length",
       "there are no vectors",
       {}},
      {"unknown_transform",
       [] { return ParseTransform("scale").status(); },
       kInvalid,
       "invalid_transform",
       "unknown transform \"scale\"; use \"permute\" or \"rotate\"",
       {}},
      {"token_wrong_length",
       [] {
         const std::vector<uint8_t> bytes(40, 1);
         return ParseToken(bytes).status();
       },
       kInvalid,
       "invalid_token",
       "a token is 41 bytes, got 40",
       {}},
      {"token_unknown_version",
       [] { return DecryptWith(Ones(8), 4, [](auto& tokens) { tokens[1][0] = 3; }); }, kInvalid,
       "invalid_token",
       "token 1: token format version 3 is not supported; this build reads versions 1 and 2", 1},
      {"token_of_the_other_format",
       [] { return DecryptWith(Ones(8), 4, [](auto& tokens) { tokens[1][0] = 2; }); }, kInvalid,
       "invalid_token",
       "token 1 is a format v2 token, but key version 1 is format v1; it was not made by this key",
       1},
      {"token_other_key_version",
       [] { return DecryptWith(Ones(8), 4, [](auto& tokens) { tokens[0][1] = 7; }); }, kInvalid,
       "token_key_version_mismatch",
       "token 0 was made under key version 7, but this key is version 1", 0},
      {"token_forged",
       [] { return DecryptWith(Ones(8), 4, [](auto& tokens) { tokens[1][40] ^= 1; }); },
       Code::kAuthenticationFailed, "token_authentication_failed",
       "token 1 does not authenticate its vector: the vector, the token or the key differs from "
       "the encryption",
       1},
      {"decrypt_token_count",
       [] {
         auto cipher = testing::SharedCipher(kPermute);
         std::vector<float> c = Ones(8), out(8);
         std::vector<Token> tokens(3);
         return cipher->Decrypt(c, out, 4, tokens);
       },
       kInvalid,
       "invalid_length",
       "3 tokens were given for 2 vectors",
       {}},
      {"decrypt_nan",
       [] {
         auto cipher = testing::SharedCipher(kPermute);
         std::vector<float> c = With(Ones(8), 6, kNaN), out(8);
         std::vector<Token> tokens(2);
         return cipher->Decrypt(c, out, 4, tokens);
       },
       kInvalid, "non_finite_value", "vector 1 has a non-finite value (NaN) at component 2", 1},
      {"no_deriver",
       [] {
         return Cipher::Create(nullptr, SchemeParams{1.0, kPermute, 1}).status();
       },
       kInvalid,
       "invalid_deriver",
       "a Cipher needs a Deriver",
       {}},
  };
}

class BadInputTest : public ::testing::TestWithParam<BadInput> {};

TEST_P(BadInputTest, IsRefusedWithItsExactError) {
  const BadInput& bad = GetParam();
  const Status status = bad.run();
  EXPECT_EQ(status.code(), bad.code) << status.ToString();
  EXPECT_EQ(status.reason(), bad.reason);
  EXPECT_EQ(status.message(), bad.message);
  EXPECT_EQ(status.vector_index(), bad.vector_index);
}

INSTANTIATE_TEST_SUITE_P(Table, BadInputTest, ::testing::ValuesIn(BadInputs()),
                         [](const auto& param_info) { return param_info.param.name; });

// A backend that fails, for the one fault a real SoftwareDeriver cannot produce.
class FailingDeriver final : public Deriver {
 public:
  Status Derive(std::span<const std::span<const uint8_t>>, std::span<Seed> out) override {
    for (auto& seed : out) seed.fill(0);
    return Status(Code::kUnavailable, "hsm_unavailable", "the token is not present");
  }
};

TEST(DeriverFailure, EncryptFailsClosedAndWipesItsOutput) {
  auto cipher = Cipher::Create(std::make_shared<FailingDeriver>(),
                               SchemeParams{1.0, TransformKind::kPermute, 1});
  ASSERT_TRUE(cipher.ok());
  std::vector<float> in = Ones(8), out(8, 5.0f);
  const Status status = (*cipher)->Encrypt(in, out, 4, {}, {});
  EXPECT_EQ(status.code(), Code::kUnavailable);
  EXPECT_EQ(status.reason(), "hsm_unavailable");
  EXPECT_EQ(out, std::vector<float>(8, 0.0f));
}

TEST(BadInputOutput, RefusedEncryptionWipesAPartlyWrittenOutput) {
  auto cipher = testing::SharedCipher(TransformKind::kPermute);
  std::vector<float> in = With(Ones(12), 11, kNaN), out(12, 5.0f);
  ASSERT_FALSE(cipher->Encrypt(in, out, 4, {}, {}).ok());
  EXPECT_EQ(out, std::vector<float>(12, 0.0f));
}

}  // namespace
}  // namespace vecseal::core
