// The system nonce source draws a call's nonces in one request; they must still all differ.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <vector>

#include "test_util.h"
#include "vecseal/core/cipher.h"

namespace vecseal::core {
namespace {

TEST(SystemNonceSource, FillsEveryNonceAcrossRequestBoundaries) {
  // More than the 65536 nonces of one 1 MiB request, so that the second request is checked too.
  std::vector<Nonce> nonces(70000);
  ASSERT_TRUE(SystemNonceSource().Fill(nonces).ok());
  const std::set<Nonce> distinct(nonces.begin(), nonces.end());
  EXPECT_EQ(distinct.size(), nonces.size());
  EXPECT_EQ(distinct.count(Nonce{}), 0u) << "an all-zero nonce means a slot was left unfilled";
}

TEST(SystemNonceSource, EachGroupOfACallGetsItsOwnNonce) {
  auto cipher = testing::SharedCipher(TransformKind::kPermute);
  constexpr size_t kD = 4, kN = 12, kGroup = 3;
  std::vector<float> m(kN * kD, 0.25f), c(m.size());
  std::vector<Token> tokens(kN);
  ASSERT_TRUE(cipher->Encrypt(m, c, kD, EncryptOptions{true, kGroup, nullptr}, tokens).ok());
  std::set<Nonce> distinct;
  for (size_t k = 0; k < kN; ++k) {
    auto fields = ParseToken(tokens[k]);
    ASSERT_TRUE(fields.ok());
    const auto& group_first = ParseToken(tokens[k / kGroup * kGroup]);
    EXPECT_EQ(fields->nonce, group_first->nonce) << "vector " << k;
    distinct.insert(fields->nonce);
  }
  EXPECT_EQ(distinct.size(), kN / kGroup);
}

}  // namespace
}  // namespace vecseal::core
