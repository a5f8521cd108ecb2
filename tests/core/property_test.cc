// Properties of the scheme over thousands of random vectors, at fixed seeds so that every run
// checks the same draws.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kernels.h"
#include "test_util.h"
#include "vecseal/core/cipher.h"

namespace vecseal::core {
namespace {

using testing::CountingNonces;
using testing::SharedCipher;

constexpr double kBeta = 1.5;  // SharedCipher's β
// Round trip: float32 transform and noise, so m is recovered to a few float ulps of its scale.
constexpr double kRoundTripTolerance = 1e-5;

struct Case {
  TransformKind transform;
  size_t dimension;
};

std::string CaseName(const ::testing::TestParamInfo<Case>& param_info) {
  return std::string(TransformName(param_info.param.transform)) + "_d" +
         std::to_string(param_info.param.dimension);
}

// n unit vectors (Gaussian direction), row-major.
std::vector<float> RandomUnitVectors(size_t n, size_t d, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal;
  std::vector<float> out(n * d);
  std::vector<double> v(d);
  for (size_t k = 0; k < n; ++k) {
    double norm2 = 0;
    for (double& x : v) {
      x = normal(rng);
      norm2 += x * x;
    }
    for (size_t i = 0; i < d; ++i) out[k * d + i] = static_cast<float>(v[i] / std::sqrt(norm2));
  }
  return out;
}

double Distance(const float* a, const float* b, size_t d) {
  double sum = 0;
  for (size_t i = 0; i < d; ++i) {
    const double diff = double{a[i]} - b[i];
    sum += diff * diff;
  }
  return std::sqrt(sum);
}

// Kolmogorov–Smirnov statistic of samples against U(0, 1).
double KsAgainstUniform(std::vector<double> u) {
  std::sort(u.begin(), u.end());
  const double n = static_cast<double>(u.size());
  double worst = 0;
  for (size_t i = 0; i < u.size(); ++i) {
    worst = std::max(
        {worst, (static_cast<double>(i) + 1) / n - u[i], u[i] - static_cast<double>(i) / n});
  }
  return worst;
}

void CheckNoiseBall(const Cipher& cipher, size_t d) {
  constexpr size_t kVectors = 2000;
  const auto m = RandomUnitVectors(kVectors, d, 1);
  std::vector<float> tm(m.size()), c(m.size());
  ASSERT_TRUE(cipher.ApplyTransform(m, tm, d).ok());
  CountingNonces nonces;
  ASSERT_TRUE(cipher.Encrypt(m, c, d, EncryptOptions{false, 7, &nonces}, {}).ok());
  std::vector<double> u;
  for (size_t k = 0; k < kVectors; ++k) {
    const double radius = Distance(&c[k * d], &tm[k * d], d);
    ASSERT_LE(radius, kBeta / 4 + 1e-5) << "vector " << k;
    // For noise uniform in the d-ball, (radius / (β/4))^d is U(0, 1).
    u.push_back(std::pow(std::min(1.0, radius / (kBeta / 4)), static_cast<double>(d)));
  }
  // Critical value at α = 0.001 is 1.95/√n; the draws are fixed, so this is not flaky.
  EXPECT_LT(KsAgainstUniform(u), 1.95 / std::sqrt(static_cast<double>(kVectors)));
}

void CheckDistanceComparisons(const Cipher& cipher, size_t d) {
  constexpr size_t kTriples = 1000;
  const auto base = RandomUnitVectors(3 * kTriples, d, 2);
  std::mt19937 rng(3);
  std::uniform_real_distribution<double> uniform(0, 1);
  // x, then y at distance a and z at distance a + β + ε along random directions.
  std::vector<float> points(3 * kTriples * d);
  for (size_t t = 0; t < kTriples; ++t) {
    const float* x = &base[3 * t * d];
    const float* dy = &base[(3 * t + 1) * d];
    const float* dz = &base[(3 * t + 2) * d];
    const double a = 2 * uniform(rng);
    const double b = a + kBeta + 1e-3 + uniform(rng) * 0.1;
    for (size_t i = 0; i < d; ++i) {
      points[(3 * t) * d + i] = x[i];
      points[(3 * t + 1) * d + i] = static_cast<float>(x[i] + a * dy[i]);
      points[(3 * t + 2) * d + i] = static_cast<float>(x[i] + b * dz[i]);
    }
  }
  std::vector<float> c(points.size());
  CountingNonces nonces;
  ASSERT_TRUE(cipher.Encrypt(points, c, d, EncryptOptions{false, 1, &nonces}, {}).ok());
  for (size_t t = 0; t < kTriples; ++t) {
    const float* p = &points[3 * t * d];
    const float* q = &c[3 * t * d];
    ASSERT_LT(Distance(p, p + d, d), Distance(p, p + 2 * d, d) - kBeta) << t;
    EXPECT_LT(Distance(q, q + d, d), Distance(q, q + 2 * d, d)) << "triple " << t;
  }
}

void CheckRoundTrip(const Cipher& cipher, size_t d) {
  constexpr size_t kVectors = 600;
  const auto m = RandomUnitVectors(kVectors, d, 4);
  std::vector<float> c(m.size()), back(m.size());
  std::vector<Token> tokens(kVectors);
  CountingNonces nonces;
  ASSERT_TRUE(cipher.Encrypt(m, c, d, EncryptOptions{true, 256, &nonces}, tokens).ok());
  const Status status = cipher.Decrypt(c, back, d, tokens);
  ASSERT_TRUE(status.ok()) << status.ToString();
  double worst = 0;
  for (size_t i = 0; i < m.size(); ++i) worst = std::max(worst, std::abs(double{back[i]} - m[i]));
  EXPECT_LT(worst, kRoundTripTolerance);
  // In place gives the same plaintext.
  ASSERT_TRUE(cipher.Decrypt(c, c, d, tokens).ok());
  EXPECT_EQ(c, back);
}

void CheckInPlace(const Cipher& cipher, size_t d) {
  const auto m = RandomUnitVectors(100, d, 5);
  std::vector<float> out(m.size()), in_place = m;
  CountingNonces first, second;
  ASSERT_TRUE(cipher.Encrypt(m, out, d, EncryptOptions{false, 3, &first}, {}).ok());
  ASSERT_TRUE(cipher.Encrypt(in_place, in_place, d, EncryptOptions{false, 3, &second}, {}).ok());
  EXPECT_EQ(out, in_place);
}

void CheckTransformShape(const Cipher& cipher, size_t d) {
  const size_t n = d;
  std::vector<float> identity(n * n, 0.0f), w(n * n);
  for (size_t j = 0; j < n; ++j) identity[j * n + j] = 1.0f;
  ASSERT_TRUE(cipher.ApplyTransform(identity, w, n).ok());  // row j of w is T(e_j)
  if (cipher.params().transform == TransformKind::kPermute) {
    // Each T(e_j) is one basis vector, and no two share one.
    std::vector<int> hits(n, 0);
    for (size_t j = 0; j < n; ++j) {
      size_t ones = 0;
      for (size_t i = 0; i < n; ++i) {
        const float v = w[j * n + i];
        ASSERT_TRUE(v == 0.0f || v == 1.0f);
        if (v == 1.0f) {
          ++ones;
          ++hits[i];
        }
      }
      ASSERT_EQ(ones, 1u) << j;
    }
    EXPECT_EQ(std::count(hits.begin(), hits.end(), 1), static_cast<long>(n));
    return;
  }
  // w = Qᵀ, so QᵀQ = w·wᵀ.
  std::vector<float> wt(n * n), product(n * n);
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < n; ++j) wt[j * n + i] = w[i * n + j];
  }
  std::vector<float> packed(detail::PackedBSize(n, n));
  detail::PackB(wt.data(), n, n, packed.data());
  detail::GemmPackedB(w.data(), n, n, n, packed.data(), n, product.data(), n);
  double worst = 0;
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < n; ++j) {
      worst = std::max(worst, std::abs(product[i * n + j] - (i == j ? 1.0 : 0.0)));
    }
  }
  EXPECT_LT(worst, 1e-5);
}

class PropertyTest : public ::testing::TestWithParam<Case> {
 protected:
  const Cipher& cipher() const { return *SharedCipher(GetParam().transform); }
  size_t d() const { return GetParam().dimension; }
};

TEST_P(PropertyTest, NoiseStaysInTheBallAndItsRadiusIsUniformInVolume) {
  CheckNoiseBall(cipher(), d());
}
TEST_P(PropertyTest, DistanceComparisonsSurviveWhenTheGapExceedsBeta) {
  CheckDistanceComparisons(cipher(), d());
}
TEST_P(PropertyTest, ReversibleRoundTripRecoversThePlaintext) { CheckRoundTrip(cipher(), d()); }
TEST_P(PropertyTest, InPlaceEncryptionEqualsOutOfPlace) { CheckInPlace(cipher(), d()); }
TEST_P(PropertyTest, TransformIsABijectionOrOrthogonal) { CheckTransformShape(cipher(), d()); }

// Each ctest case is its own process, and a d=1536 rotation takes seconds to derive: derive it
// once and check every property on it in one case.
TEST(RotateD1536, AllProperties) {
  const Cipher& cipher = *SharedCipher(TransformKind::kRotate);
  {
    SCOPED_TRACE("NoiseStaysInTheBallAndItsRadiusIsUniformInVolume");
    CheckNoiseBall(cipher, 1536);
  }
  {
    SCOPED_TRACE("DistanceComparisonsSurviveWhenTheGapExceedsBeta");
    CheckDistanceComparisons(cipher, 1536);
  }
  {
    SCOPED_TRACE("ReversibleRoundTripRecoversThePlaintext");
    CheckRoundTrip(cipher, 1536);
  }
  {
    SCOPED_TRACE("InPlaceEncryptionEqualsOutOfPlace");
    CheckInPlace(cipher, 1536);
  }
  {
    SCOPED_TRACE("TransformIsABijectionOrOrthogonal");
    CheckTransformShape(cipher, 1536);
  }
}

std::vector<Case> AllCases() {
  std::vector<Case> cases;
  for (TransformKind t : {TransformKind::kPermute, TransformKind::kRotate}) {
    for (size_t d : {2u, 3u, 64u, 384u, 768u, 1536u}) {
      if (t == TransformKind::kRotate && d == 1536) continue;  // RotateD1536 below
      cases.push_back({t, d});
    }
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Scheme, PropertyTest, ::testing::ValuesIn(AllCases()), CaseName);

// Many threads on one Cipher, each at its own mix of dimensions, get what one thread gets: the
// transform cache and the per-thread scratch do not mix calls.
TEST(Concurrency, ThreadsSharingACipherAgreeWithOneThread) {
  auto cipher = testing::MakeCipher(TransformKind::kRotate, 1.0);
  constexpr size_t kThreads = 4;
  const size_t dims[] = {16, 48, 100};
  std::vector<std::vector<float>> expected;
  for (size_t t = 0; t < kThreads; ++t) {
    const size_t d = dims[t % 3];
    const auto m = RandomUnitVectors(64, d, 10 + static_cast<uint32_t>(t));
    std::vector<float> c(m.size());
    CountingNonces nonces;
    ASSERT_TRUE(cipher->Encrypt(m, c, d, EncryptOptions{false, 5, &nonces}, {}).ok());
    expected.push_back(c);
  }
  auto fresh = testing::MakeCipher(TransformKind::kRotate, 1.0);  // empty transform cache
  std::vector<std::vector<float>> got(kThreads);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const size_t d = dims[t % 3];
      const auto m = RandomUnitVectors(64, d, 10 + static_cast<uint32_t>(t));
      got[t].resize(m.size());
      CountingNonces nonces;
      for (int round = 0; round < 20; ++round) {
        if (!fresh->Encrypt(m, got[t], d, EncryptOptions{false, 5, &nonces}, {}).ok()) return;
        nonces = CountingNonces();
      }
    });
  }
  for (auto& thread : threads) thread.join();
  for (size_t t = 0; t < kThreads; ++t) EXPECT_EQ(got[t], expected[t]) << "thread " << t;
}

// Reversible mode refuses any change to what the tag covers, before recomputing anything.
class TamperTest : public ::testing::Test {
 protected:
  void SetUp() override {
    m_ = RandomUnitVectors(4, kD, 6);
    c_.resize(m_.size());
    tokens_.resize(4);
    CountingNonces nonces;
    ASSERT_TRUE(cipher_->Encrypt(m_, c_, kD, EncryptOptions{true, 2, &nonces}, tokens_).ok());
  }
  Status Decrypt() {
    out_.assign(c_.size(), 1.0f);
    return cipher_->Decrypt(c_, out_, kD, tokens_);
  }
  void ExpectRefused(size_t vector) {
    const Status status = Decrypt();
    EXPECT_EQ(status.code(), Code::kAuthenticationFailed);
    EXPECT_EQ(status.reason(), "token_authentication_failed");
    EXPECT_EQ(status.vector_index(), vector);
    EXPECT_TRUE(std::all_of(out_.begin(), out_.end(), [](float v) { return v == 0.0f; }))
        << "the output must be wiped on refusal";
  }

  static constexpr size_t kD = 64;
  std::shared_ptr<Cipher> cipher_ = testing::MakeCipher(TransformKind::kPermute, 1.0);
  std::vector<float> m_, c_, out_;
  std::vector<Token> tokens_;
};

TEST_F(TamperTest, UntouchedDecrypts) { EXPECT_TRUE(Decrypt().ok()); }

TEST_F(TamperTest, EveryTagBitMatters) {
  for (size_t byte = 25; byte < kTokenSize; ++byte) {
    tokens_[2][byte] ^= 0x01;
    ExpectRefused(2);
    tokens_[2][byte] ^= 0x01;
  }
}

TEST_F(TamperTest, NonceAndIndexAreAuthenticated) {
  tokens_[1][5 + 3] ^= 0x80;  // a nonce byte
  ExpectRefused(1);
  tokens_[1][5 + 3] ^= 0x80;
  tokens_[3][21] ^= 0x01;  // the index
  ExpectRefused(3);
}

TEST_F(TamperTest, EveryVectorByteIsAuthenticated) {
  auto* bytes = reinterpret_cast<uint8_t*>(&c_[kD * 3]);
  for (size_t i = 0; i < kD * sizeof(float); i += 37) {
    bytes[i] ^= 0x01;
    ExpectRefused(3);
    bytes[i] ^= 0x01;
  }
}

TEST_F(TamperTest, AnotherKeyOrBetaRefuses) {
  cipher_ = testing::MakeCipher(TransformKind::kPermute, 1.0, std::vector<uint8_t>(32, 0x77));
  ExpectRefused(0);
  cipher_ = testing::MakeCipher(TransformKind::kPermute, 1.25);
  ExpectRefused(0);
}

}  // namespace
}  // namespace vecseal::core
