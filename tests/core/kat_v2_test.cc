// Format v2 known answers from the independent Python reference (tools/reference, docs/format.md
// §20): every derived byte exactly, floats to within 1e-5. Also the v2 contract the answers do
// not show: one derivation per call, and tokens of one format refused by the other.
#include <gtest/gtest.h>
#include <openssl/sha.h>

#include <array>
#include <atomic>
#include <bit>
#include <cstdint>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "kernels.h"
#include "keystream.h"
#include "test_util.h"
#include "vecseal/core/cipher.h"

namespace vecseal::core {
namespace {

using testing::FixedNonces;
using testing::FromHex;
using testing::ToHex;

struct KatV2Vector {
  const char* nonce;
  std::array<const char*, 2> seed_n_blocks;
  const char* seed_n;
  std::vector<float> m;
  std::vector<double> z;
  double x;
  double r;
  std::vector<double> c;
  const char* c_f32_hex;
  const char* token;
};

struct KatV2Case {
  const char* name;
  TransformKind transform;
  size_t dimension;
  bool reversible;
  double beta;
  std::array<const char*, 2> seed_t_blocks;
  const char* seed_t;
  std::vector<uint32_t> permutation;
  std::vector<std::vector<double>> rotation;
  std::vector<KatV2Vector> vectors;
};

struct KatV2Rejection {
  size_t dimension;
  std::array<const char*, 2> seed_t_blocks;
  const char* seed_t;
  uint32_t step_i;
  uint32_t bound;
  uint64_t limit;
  uint32_t word_index;
  uint32_t rejected_word;
  uint32_t accepted_word;
  uint32_t j;
  uint32_t rejections;
  const char* permutation_sha256;
  std::vector<uint32_t> permutation_head;
};

struct KatV2Uniform {
  uint32_t word;
  double u;
  uint64_t u_bits;
};

struct KatV2BoxMuller {
  uint32_t a_word, b_word;
  double z0, z1;
  double z0_f64, z1_f64;
};

#include "kat_vectors_v2.inc"

void PrintTo(const KatV2Case& kat, std::ostream* os) { *os << kat.name; }

constexpr double kTolerance = 1e-5;

std::shared_ptr<Deriver> KatKey() {
  auto deriver = SoftwareDeriver::Create(FromHex(kKatV2Key), KeyFormat::kV2);
  EXPECT_TRUE(deriver.ok()) << deriver.status().ToString();
  return std::shared_ptr<Deriver>(std::move(deriver).value());
}

std::shared_ptr<Cipher> KatCipher(TransformKind transform, double beta) {
  auto cipher = Cipher::Create(KatKey(), SchemeParams{beta, transform, kKatV2KeyVersion});
  EXPECT_TRUE(cipher.ok()) << cipher.status().ToString();
  return std::move(cipher).value();
}

// The two blocks and the secret of (domain, input), as hex.
std::pair<std::string, std::string> Secret(BlockDomain domain, const BlockInput& input) {
  uint8_t blocks[32];
  SecretBlocks(domain, input, blocks);
  Seed seed{};
  EXPECT_TRUE(DeriveSecretV2(*KatKey(), domain, input, seed).ok());
  return {ToHex(std::span<const uint8_t>(blocks, 32)), ToHex(seed)};
}

BlockInput TransformInput(TransformKind transform, size_t d) {
  BlockInput input{};
  input[0] = static_cast<uint8_t>(transform);
  for (int b = 0; b < 4; ++b) input[1 + b] = static_cast<uint8_t>(d >> (8 * b));
  return input;
}

Nonce NonceFromHex(const char* hex) {
  Nonce nonce{};
  const auto bytes = FromHex(hex);
  std::copy(bytes.begin(), bytes.end(), nonce.begin());
  return nonce;
}

BlockInput InputFromHex(const char* hex) {
  BlockInput input{};
  const auto bytes = FromHex(hex);
  std::copy(bytes.begin(), bytes.end(), input.begin());
  return input;
}

std::vector<float> FloatsFromHex(const char* hex) {
  const auto bytes = FromHex(hex);
  std::vector<float> values(bytes.size() / 4);
  for (size_t i = 0; i < values.size(); ++i) {
    uint32_t bits = 0;
    for (int b = 3; b >= 0; --b) bits = bits << 8 | bytes[4 * i + static_cast<size_t>(b)];
    values[i] = std::bit_cast<float>(bits);
  }
  return values;
}

TEST(KnownAnswersV2, TokenAndParametersKeysAreTheirDomainsBlocks) {
  const auto [token_blocks, token_key] = Secret(BlockDomain::kTokenKey, BlockInput{});
  EXPECT_EQ(token_blocks, std::string(kKatV2TokenKeyBlocks[0]) + kKatV2TokenKeyBlocks[1]);
  EXPECT_EQ(token_key, kKatV2TokenKey);
  const auto [params_blocks, params_key] = Secret(BlockDomain::kParamsKey, BlockInput{});
  EXPECT_EQ(params_blocks, std::string(kKatV2ParamsKeyBlocks[0]) + kKatV2ParamsKeyBlocks[1]);
  EXPECT_EQ(params_key, kKatV2ParamsKey);
}

class KnownAnswerV2Test : public ::testing::TestWithParam<KatV2Case> {};

TEST_P(KnownAnswerV2Test, TransformSeedAndTransform) {
  const KatV2Case& kat = GetParam();
  const size_t d = kat.dimension;
  const auto [blocks, seed] = Secret(BlockDomain::kTransform, TransformInput(kat.transform, d));
  EXPECT_EQ(blocks, std::string(kat.seed_t_blocks[0]) + kat.seed_t_blocks[1]);
  EXPECT_EQ(seed, kat.seed_t);
  auto cipher = KatCipher(kat.transform, kat.beta);
  if (kat.transform == TransformKind::kPermute) {
    std::vector<float> index(d), out(d);
    for (size_t i = 0; i < d; ++i) index[i] = static_cast<float>(i);
    ASSERT_TRUE(cipher->ApplyTransform(index, out, d).ok());
    for (size_t i = 0; i < d; ++i) EXPECT_EQ(out[i], static_cast<float>(kat.permutation[i])) << i;
  } else {
    std::vector<float> identity(d * d, 0.0f), out(d * d);
    for (size_t j = 0; j < d; ++j) identity[j * d + j] = 1.0f;
    ASSERT_TRUE(cipher->ApplyTransform(identity, out, d).ok());
    for (size_t i = 0; i < d; ++i) {
      for (size_t j = 0; j < d; ++j) EXPECT_NEAR(out[j * d + i], kat.rotation[i][j], kTolerance);
    }
  }
}

TEST_P(KnownAnswerV2Test, EveryVectorsOwnSeedNormalsAndRadiusDraw) {
  const KatV2Case& kat = GetParam();
  const size_t d = kat.dimension;
  const size_t pairs = (d + 1) / 2;
  for (const KatV2Vector& v : kat.vectors) {
    const auto [blocks, seed_hex] = Secret(BlockDomain::kNoise, InputFromHex(v.nonce));
    EXPECT_EQ(blocks, std::string(v.seed_n_blocks[0]) + v.seed_n_blocks[1]);
    ASSERT_EQ(seed_hex, v.seed_n);
    Seed seed{};
    const auto bytes = FromHex(v.seed_n);
    std::copy(bytes.begin(), bytes.end(), seed.begin());
    detail::KeyStream stream;
    std::vector<uint32_t> words(2 * pairs + 1);
    ASSERT_TRUE(stream.Start(seed, 0).ok());
    ASSERT_TRUE(stream.Read(words.data(), words.size()).ok());
    std::vector<float> z(2 * pairs);
    detail::NormalsFromWords(words.data(), pairs, z.data());
    for (size_t i = 0; i < d; ++i) EXPECT_NEAR(z[i], v.z[i], kTolerance) << v.nonce << "," << i;
    EXPECT_NEAR(detail::UniformFromWord(words[2 * pairs]), v.x, 1e-12);
  }
}

void ExpectEncryptMatches(const KatV2Case& kat) {
  const size_t d = kat.dimension;
  auto cipher = KatCipher(kat.transform, kat.beta);
  std::vector<float> in;
  std::vector<Nonce> nonces;
  for (const auto& v : kat.vectors) {
    in.insert(in.end(), v.m.begin(), v.m.end());
    nonces.push_back(NonceFromHex(v.nonce));
  }
  FixedNonces source(nonces);
  std::vector<float> out(in.size());
  std::vector<Token> tokens(kat.reversible ? kat.vectors.size() : 0);
  ASSERT_TRUE(cipher->Encrypt(in, out, d, EncryptOptions{kat.reversible, 1, &source}, tokens).ok());
  EXPECT_EQ(source.used(), nonces.size()) << "one nonce per vector";
  for (size_t k = 0; k < kat.vectors.size(); ++k) {
    for (size_t i = 0; i < d; ++i) {
      EXPECT_NEAR(out[k * d + i], kat.vectors[k].c[i], kTolerance) << "c[" << k << "][" << i << "]";
    }
    if (!kat.reversible) continue;
    const std::string reference = kat.vectors[k].token;
    const std::string mine = ToHex(tokens[k]);
    // Version, key version and nonce are exact (17 bytes); the tag covers our own c bytes.
    EXPECT_EQ(mine.substr(0, 34), reference.substr(0, 34));
    if (std::memcmp(out.data() + k * d, FloatsFromHex(kat.vectors[k].c_f32_hex).data(),
                    d * sizeof(float)) == 0) {
      EXPECT_EQ(mine, reference);
    }
  }
}

TEST_P(KnownAnswerV2Test, EncryptMatchesReferenceOnEveryKernel) {
  for (auto level : {detail::KernelLevel::kAvx512, detail::KernelLevel::kAvx2,
                     detail::KernelLevel::kPortable, detail::KernelLevel::kBest}) {
    if (!detail::ForceKernelsForTesting(level)) continue;
    SCOPED_TRACE(detail::KernelName());
    ExpectEncryptMatches(GetParam());
  }
  detail::ForceKernelsForTesting(detail::KernelLevel::kBest);
}

// Only reversible cases have tokens to decrypt with.
class ReversibleKnownAnswerV2Test : public KnownAnswerV2Test {};

std::vector<KatV2Case> ReversibleKatV2Cases() {
  std::vector<KatV2Case> cases;
  for (const KatV2Case& kat : kKatV2Cases) {
    if (kat.reversible) cases.push_back(kat);
  }
  return cases;
}

TEST_P(ReversibleKnownAnswerV2Test, DecryptsTheReferenceCiphertext) {
  const KatV2Case& kat = GetParam();
  const size_t d = kat.dimension;
  std::vector<float> c;
  std::vector<Token> tokens;
  for (const auto& v : kat.vectors) {
    const auto row = FloatsFromHex(v.c_f32_hex);
    c.insert(c.end(), row.begin(), row.end());
    const auto bytes = FromHex(v.token);
    ASSERT_EQ(bytes.size(), kTokenSize);
    Token token{};
    std::copy(bytes.begin(), bytes.end(), token.begin());
    tokens.push_back(token);
  }
  std::vector<float> m(c.size());
  const Status status = KatCipher(kat.transform, kat.beta)->Decrypt(c, m, d, tokens);
  ASSERT_TRUE(status.ok()) << status.ToString();
  for (size_t k = 0; k < kat.vectors.size(); ++k) {
    for (size_t i = 0; i < d; ++i) EXPECT_NEAR(m[k * d + i], kat.vectors[k].m[i], kTolerance);
  }
}

std::string KatTestName(const ::testing::TestParamInfo<KatV2Case>& info) {
  std::string name = info.param.name;
  for (char& ch : name) {
    if (ch == '-') ch = '_';
  }
  return name;
}

INSTANTIATE_TEST_SUITE_P(FormatV2, KnownAnswerV2Test, ::testing::ValuesIn(kKatV2Cases),
                         KatTestName);
INSTANTIATE_TEST_SUITE_P(FormatV2, ReversibleKnownAnswerV2Test,
                         ::testing::ValuesIn(ReversibleKatV2Cases()), KatTestName);

TEST(KnownAnswersV2, PermutationWhoseRejectionLoopRejectsAWord) {
  const KatV2Rejection& kat = kKatV2Rejection;
  const BlockInput input = TransformInput(TransformKind::kPermute, kat.dimension);
  const auto [blocks, seed_hex] = Secret(BlockDomain::kTransform, input);
  EXPECT_EQ(blocks, std::string(kat.seed_t_blocks[0]) + kat.seed_t_blocks[1]);
  ASSERT_EQ(seed_hex, kat.seed_t);
  // The listed word really is rejected: it is at or above the limit of its step's bound.
  Seed seed{};
  const auto bytes = FromHex(kat.seed_t);
  std::copy(bytes.begin(), bytes.end(), seed.begin());
  detail::KeyStream stream;
  std::vector<uint32_t> words(kat.word_index + 2);
  ASSERT_TRUE(stream.Start(seed, 0).ok());
  ASSERT_TRUE(stream.Read(words.data(), words.size()).ok());
  EXPECT_EQ(words[kat.word_index], kat.rejected_word);
  EXPECT_EQ(words[kat.word_index + 1], kat.accepted_word);
  const uint64_t limit = (uint64_t{1} << 32) - ((uint64_t{1} << 32) % kat.bound);
  EXPECT_EQ(limit, kat.limit);
  EXPECT_GE(uint64_t{kat.rejected_word}, limit);
  EXPECT_EQ(kat.accepted_word % kat.bound, kat.j);

  auto cipher = KatCipher(TransformKind::kPermute, 1.0);
  const size_t d = kat.dimension;
  std::vector<float> index(d), out(d);
  for (size_t i = 0; i < d; ++i) index[i] = static_cast<float>(i);
  ASSERT_TRUE(cipher->ApplyTransform(index, out, d).ok());
  std::vector<uint8_t> pi_bytes;
  for (size_t i = 0; i < d; ++i) {
    const auto value = static_cast<uint32_t>(out[i]);
    for (int b = 0; b < 4; ++b) pi_bytes.push_back(static_cast<uint8_t>(value >> (8 * b)));
    if (i < kat.permutation_head.size()) {
      EXPECT_EQ(value, kat.permutation_head[i]) << i;
    }
  }
  uint8_t digest[SHA256_DIGEST_LENGTH];
  SHA256(pi_bytes.data(), pi_bytes.size(), digest);
  EXPECT_EQ(ToHex(digest), kat.permutation_sha256);
}

TEST(KnownAnswersV2, SamplerAtTheEdgeWords) {
  for (const KatV2Uniform& kat : kKatV2Uniform) {
    EXPECT_EQ(detail::UniformFromWord(kat.word), kat.u) << kat.word;
    EXPECT_EQ(std::bit_cast<uint64_t>(detail::UniformFromWord(kat.word)), kat.u_bits);
  }
  for (const KatV2BoxMuller& kat : kKatV2BoxMuller) {
    const uint32_t words[2] = {kat.a_word, kat.b_word};
    double exact[2];
    detail::NormalsFromWordsExact(words, 1, exact);
    EXPECT_NEAR(exact[0], kat.z0_f64, 1e-15 * std::max(1.0, std::abs(kat.z0_f64)));
    EXPECT_NEAR(exact[1], kat.z1_f64, 1e-15);
    float fast[2];
    detail::NormalsFromWords(words, 1, fast);
    EXPECT_NEAR(fast[0], kat.z0, 1e-6 * std::max(1.0, std::abs(kat.z0))) << kat.a_word;
    EXPECT_NEAR(fast[1], kat.z1, 1e-6) << kat.b_word;
  }
}

// Counts backend operations, so that "one derivation per call" is measured, not assumed.
class CountingV2Deriver final : public Deriver {
 public:
  KeyFormat format() const override { return KeyFormat::kV2; }
  Status EncryptBlocks(std::span<const uint8_t> blocks, std::span<uint8_t> out) override {
    calls.fetch_add(1);
    return inner_->EncryptBlocks(blocks, out);
  }
  std::atomic<int> calls{0};

 private:
  std::shared_ptr<Deriver> inner_ = KatKey();
};

TEST(FormatV2, EveryRequestDerivesAllItsSeedsInOneCall) {
  auto deriver = std::make_shared<CountingV2Deriver>();
  auto cipher = Cipher::Create(deriver, SchemeParams{1.0, TransformKind::kPermute, 1});
  ASSERT_TRUE(cipher.ok());
  const size_t d = 16;
  std::vector<float> warm(d, 0.25f);
  std::vector<Token> one(1);
  ASSERT_TRUE((*cipher)->Encrypt(warm, warm, d, {.reversible = true}, one).ok());  // T and TK
  for (size_t n : {size_t{1}, size_t{100}, size_t{4000}}) {
    std::vector<float> in(n * d), out(n * d), back(n * d);
    for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<float>(i % 7) / 8.0f;
    std::vector<Token> tokens(n);
    const int before = deriver->calls.load();
    ASSERT_TRUE((*cipher)->Encrypt(in, out, d, {.reversible = true}, tokens).ok());
    EXPECT_EQ(deriver->calls.load() - before, 1) << n << " vectors encrypted";
    ASSERT_TRUE((*cipher)->Decrypt(out, back, d, tokens).ok());
    EXPECT_EQ(deriver->calls.load() - before, 2) << n << " vectors decrypted";
    for (size_t i = 0; i < in.size(); ++i) ASSERT_NEAR(back[i], in[i], kTolerance);
    // Every vector has its own nonce: no two tokens of the call share one.
    std::set<std::string> seen;
    for (const Token& token : tokens) seen.insert(ToHex(std::span(token).subspan(5, 12)));
    EXPECT_EQ(seen.size(), n);
  }
}

TEST(FormatV2, TokensOfOneFormatAreRefusedByTheOther) {
  const size_t d = 8;
  auto v1 = testing::MakeCipher(TransformKind::kRotate, 1.0, FromHex(kKatV2Key));
  auto v2 = KatCipher(TransformKind::kRotate, 1.0);
  std::vector<float> m(d, 0.3f), c1(d), c2(d), out(d);
  std::vector<Token> t1(1), t2(1);
  ASSERT_TRUE(v1->Encrypt(m, c1, d, {.reversible = true}, t1).ok());
  ASSERT_TRUE(v2->Encrypt(m, c2, d, {.reversible = true}, t2).ok());
  EXPECT_EQ(t1[0][0], kTokenVersion);
  EXPECT_EQ(t2[0][0], kTokenVersionV2);
  Status refused = v2->Decrypt(c1, out, d, t1);
  EXPECT_EQ(refused.reason(), "invalid_token");
  EXPECT_EQ(refused.message(),
            "token 0 is a format v1 token, but key version 1 is format v2; it was not made by "
            "this key");
  EXPECT_EQ(out, std::vector<float>(d, 0.0f)) << "no partial output";
  EXPECT_EQ(v1->Decrypt(c2, out, d, t2).reason(), "invalid_token");
  ASSERT_TRUE(v2->Decrypt(c2, out, d, t2).ok());
}

TEST(FormatV2, GroupSizeIsRefusedRatherThanIgnored) {
  auto cipher = KatCipher(TransformKind::kPermute, 1.0);
  std::vector<float> m(8, 0.5f);
  Status status = cipher->Encrypt(m, m, 8, {.group_size = 16}, std::span<Token>());
  EXPECT_EQ(status.reason(), "invalid_group_size");
  EXPECT_EQ(status.message(),
            "the group size applies to format v1 keys only; a format v2 key derives every "
            "vector's own seed, so give 1, got 16");
}

}  // namespace
}  // namespace vecseal::core
