// The vectorised kernels against plain double-precision definitions, on both dispatch paths.
#include "kernels.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "keystream.h"

namespace vecseal::core::detail {
namespace {

class KernelsTest : public ::testing::TestWithParam<KernelLevel> {
 protected:
  void SetUp() override {
    if (!ForceKernelsForTesting(GetParam())) GTEST_SKIP() << "this CPU lacks these instructions";
  }
  void TearDown() override { ForceKernelsForTesting(KernelLevel::kBest); }
};

// The float sampler's error, relative to max(1, |z|), over edge words (a → 0 and a → 1, every
// quadrant boundary of the angle) and a million random ones.
TEST_P(KernelsTest, FastNormalsTrackTheDoublePrecisionDefinition) {
  std::vector<uint32_t> words = {0u,          1u,          2u,          0x7fffffffu,
                                 0x80000000u, 0xb504f333u, 0xfffffffeu, 0xffffffffu};
  for (uint32_t q = 0; q < 4; ++q) {
    for (int64_t delta = -2; delta <= 2; ++delta) {
      words.push_back(static_cast<uint32_t>((int64_t{q} << 30) + (int64_t{1} << 29) + delta));
      words.push_back(static_cast<uint32_t>((int64_t{q} << 30) + delta));
    }
  }
  // Every edge word as both the radius word and the angle word.
  std::vector<uint32_t> paired;
  for (uint32_t a : words) {
    for (uint32_t b : words) {
      paired.push_back(a);
      paired.push_back(b);
    }
  }
  std::mt19937 rng(20261125);
  for (int i = 0; i < (1 << 20); ++i) paired.push_back(static_cast<uint32_t>(rng()));
  const size_t pairs = paired.size() / 2;
  std::vector<float> fast(2 * pairs);
  std::vector<double> exact(2 * pairs);
  NormalsFromWords(paired.data(), pairs, fast.data());
  NormalsFromWordsExact(paired.data(), pairs, exact.data());
  double worst = 0;
  for (size_t i = 0; i < fast.size(); ++i) {
    worst = std::max(worst, std::abs(fast[i] - exact[i]) / std::max(1.0, std::abs(exact[i])));
  }
  EXPECT_LT(worst, 1e-6) << "kernel " << KernelName();
}

TEST_P(KernelsTest, VectorHelpersMatchScalarLoops) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  for (size_t d : {1u, 3u, 16u, 17u, 768u, 1001u}) {
    std::vector<float> m(d), z(d), out(d), back(d);
    std::vector<uint32_t> perm(d);
    for (size_t i = 0; i < d; ++i) {
      m[i] = normal(rng);
      z[i] = normal(rng);
      perm[i] = static_cast<uint32_t>(i);
    }
    std::shuffle(perm.begin(), perm.end(), rng);
    double sum = 0;
    for (float v : z) sum += static_cast<double>(v) * v;
    EXPECT_NEAR(SumOfSquares(z.data(), d), sum, 1e-5 * sum) << d;
    GatherAddScaled(m.data(), perm.data(), z.data(), 0.25f, out.data(), d);
    for (size_t i = 0; i < d; ++i) ASSERT_FLOAT_EQ(out[i], m[perm[i]] + 0.25f * z[i]) << d;
    ScatterSubScaled(out.data(), perm.data(), z.data(), 0.25f, back.data(), d);
    for (size_t i = 0; i < d; ++i) ASSERT_NEAR(back[i], m[i], 1e-6) << d;
    AddScaled(back.data(), z.data(), -2.0f, d);
    for (size_t i = 0; i < d; ++i) ASSERT_NEAR(back[i], m[i] - 2.0f * z[i], 1e-5) << d;
  }
}

TEST_P(KernelsTest, GemmMatchesNaiveProductOnRaggedShapes) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> uniform(-1, 1);
  struct Shape {
    size_t n, k, m;
  };
  for (Shape s : {Shape{1, 1, 1}, Shape{7, 13, 19}, Shape{50, 33, 40}, Shape{100, 64, 64},
                  Shape{6, 300, 17}}) {
    std::vector<float> a(s.n * s.k), b(s.k * s.m), c(s.n * s.m, -1.0f);
    for (float& v : a) v = uniform(rng);
    for (float& v : b) v = uniform(rng);
    std::vector<float> packed(PackedBSize(s.k, s.m));
    PackB(b.data(), s.k, s.m, packed.data());
    GemmPackedB(a.data(), s.k, s.n, s.k, packed.data(), s.m, c.data(), s.m);
    for (size_t i = 0; i < s.n; ++i) {
      for (size_t j = 0; j < s.m; ++j) {
        double expected = 0;
        for (size_t p = 0; p < s.k; ++p) expected += double{a[i * s.k + p]} * b[p * s.m + j];
        ASSERT_NEAR(c[i * s.m + j], expected, 1e-5 * static_cast<double>(s.k))
            << s.n << "x" << s.k << "x" << s.m << " at " << i << "," << j;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Dispatch, KernelsTest,
                         ::testing::Values(KernelLevel::kAvx512, KernelLevel::kAvx2,
                                           KernelLevel::kPortable),
                         [](const auto& param_info) {
                           switch (param_info.param) {
                             case KernelLevel::kAvx512:
                               return "avx512";
                             case KernelLevel::kAvx2:
                               return "avx2";
                             default:
                               return "portable";
                           }
                         });

TEST(KeyStreamTest, ReadsContinueAndIndicesSeparateStreams) {
  Seed seed{};
  for (size_t i = 0; i < seed.size(); ++i) seed[i] = static_cast<uint8_t>(i);
  KeyStream stream;
  std::vector<uint32_t> whole(40), pieces(40), other(40);
  ASSERT_TRUE(stream.Start(seed, 3).ok());
  ASSERT_TRUE(stream.Read(whole.data(), whole.size()).ok());
  ASSERT_TRUE(stream.Start(seed, 3).ok());
  ASSERT_TRUE(stream.Read(pieces.data(), 5).ok());
  ASSERT_TRUE(stream.Read(pieces.data() + 5, 35).ok());
  EXPECT_EQ(whole, pieces);
  ASSERT_TRUE(stream.Start(seed, 4).ok());
  ASSERT_TRUE(stream.Read(other.data(), other.size()).ok());
  EXPECT_NE(whole, other);
}

}  // namespace
}  // namespace vecseal::core::detail
