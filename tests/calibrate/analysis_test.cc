// The building blocks of calibration, checked against brute force or against data whose answer
// is known. Fixed seeds throughout, so every run sees the same numbers.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include <gtest/gtest.h>

#include "synthetic.h"
#include "vecseal/calibrate/attacks.h"
#include "vecseal/calibrate/estimate.h"
#include "vecseal/calibrate/learners.h"
#include "vecseal/calibrate/linalg.h"

namespace vecseal::calibrate {
namespace {

using testing::Apply;
using testing::MakeClustered;
using testing::RandomPermutationMatrix;
using testing::RandomRotation;

Matrix RandomMatrix(size_t rows, size_t cols, uint64_t seed) {
  std::mt19937_64 random(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Matrix m(rows, cols);
  for (float& v : m.values) v = normal(random);
  return m;
}

TEST(NearestNeighboursTest, MatchesBruteForceIncludingTies) {
  Matrix base = RandomMatrix(150, 13, 1);
  base.row(77)[0] = base.row(3)[0];  // an exact duplicate of row 3: a tie broken by index
  std::ranges::copy(base.row(3), base.row(77).begin());
  Matrix queries = RandomMatrix(40, 13, 2);
  std::ranges::copy(base.row(3), queries.row(5).begin());
  const size_t k = 7;
  const std::vector<uint32_t> got = NearestNeighbours(queries, base, k);
  for (size_t q = 0; q < queries.rows; ++q) {
    std::vector<uint32_t> order(base.rows);
    std::iota(order.begin(), order.end(), 0u);
    std::ranges::stable_sort(order, {}, [&](uint32_t b) {
      return SquaredDistance(queries.row(q), base.row(b));
    });
    for (size_t i = 0; i < k; ++i) EXPECT_EQ(got[q * k + i], order[i]) << "query " << q;
  }
  EXPECT_EQ(got[5 * k], 3u);
  EXPECT_EQ(got[5 * k + 1], 77u);
}

TEST(CholeskySolveTest, SolvesPositiveDefiniteSystems) {
  const size_t n = 20, m = 3;
  const Matrix g = RandomMatrix(n, n, 3);
  std::vector<double> a(n * n);
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < n; ++j) {
      a[i * n + j] = Dot(g.row(i), g.row(j)) + (i == j ? 1.0 : 0.0);
    }
  }
  const Matrix x_true = RandomMatrix(n, m, 4);
  std::vector<double> b(n * m, 0.0);
  for (size_t i = 0; i < n; ++i) {
    for (size_t c = 0; c < m; ++c) {
      for (size_t p = 0; p < n; ++p) b[i * m + c] += a[i * n + p] * x_true.row(p)[c];
    }
  }
  std::vector<double> factor = a;
  ASSERT_TRUE(CholeskySolve(factor, n, b, m));
  for (size_t i = 0; i < n * m; ++i) EXPECT_NEAR(b[i], x_true.values[i], 1e-4);
}

TEST(CholeskySolveTest, RefusesAnIndefiniteMatrix) {
  std::vector<double> a = {1, 2, 2, 1};  // eigenvalues 3 and −1
  std::vector<double> b = {1, 1};
  EXPECT_FALSE(CholeskySolve(a, 2, b, 1));
}

TEST(MinimumCostAssignmentTest, MatchesBruteForce) {
  std::mt19937_64 random(5);
  std::uniform_real_distribution<double> uniform(0.0, 10.0);
  for (int trial = 0; trial < 20; ++trial) {
    const size_t n = 6;
    std::vector<double> cost(n * n);
    for (double& c : cost) c = uniform(random);
    std::vector<uint32_t> permutation(n);
    std::iota(permutation.begin(), permutation.end(), 0u);
    double best = 1e300;
    do {
      double total = 0;
      for (size_t r = 0; r < n; ++r) total += cost[r * n + permutation[r]];
      best = std::min(best, total);
    } while (std::ranges::next_permutation(permutation).found);
    const std::vector<uint32_t> got = MinimumCostAssignment(cost, n);
    double total = 0;
    std::vector<bool> used(n, false);
    for (size_t r = 0; r < n; ++r) {
      ASSERT_FALSE(used[got[r]]) << "column used twice";
      used[got[r]] = true;
      total += cost[r * n + got[r]];
    }
    EXPECT_NEAR(total, best, 1e-9) << "trial " << trial;
  }
}

TEST(KnnTest, SeparatedClustersAreClassifiedPerfectly) {
  const auto train = MakeClustered(300, 8, 3, 0.05, 6);
  const auto test = MakeClustered(60, 8, 3, 0.05, 6);  // same seed: same centres
  const Labels predicted = KnnPredict(train.vectors, train.labels, test.vectors, 5, 3);
  EXPECT_EQ(Accuracy(predicted, test.labels).value, 1.0);
}

TEST(KnnTest, TiedVoteGoesToTheNearestClass) {
  Matrix train(4, 1);
  train.values = {0.0f, 1.0f, 10.0f, 11.0f};
  const Labels labels = {0, 0, 1, 1};
  Matrix test(2, 1);
  test.values = {4.0f, 7.0f};  // each has two neighbours of each class among k = 4
  const Labels predicted = KnnPredict(train, labels, test, 4, 2);
  EXPECT_EQ(predicted, (Labels{0, 1}));
}

TEST(LogisticRegressionTest, LearnsClusteredClasses) {
  const auto data = MakeClustered(1200, 16, 4, 0.6, 7);
  Matrix train(900, 16), test(300, 16);
  std::copy_n(data.vectors.values.begin(), 900 * 16, train.values.begin());
  std::copy(data.vectors.values.begin() + 900 * 16, data.vectors.values.end(), test.values.begin());
  const Labels train_labels(data.labels.begin(), data.labels.begin() + 900);
  const Labels test_labels(data.labels.begin() + 900, data.labels.end());
  const LogisticRegression model = LogisticRegression::Fit(train, train_labels, 4, {});
  // The uniform guess costs log 4 = 1.39; a fitted model must do far better.
  EXPECT_LT(model.final_loss(), 0.3);
  EXPECT_GE(Accuracy(model.Predict(test), test_labels).value, 0.95);
}

TEST(LogisticRegressionTest, UninformativeFeaturesGiveChanceAccuracy) {
  const Matrix train = RandomMatrix(800, 10, 8);
  const Matrix test = RandomMatrix(2000, 10, 9);
  Labels train_labels(800), test_labels(2000);
  for (size_t i = 0; i < 800; ++i) train_labels[i] = static_cast<uint32_t>(i % 4);
  for (size_t i = 0; i < 2000; ++i) test_labels[i] = static_cast<uint32_t>((i * 7 + 3) % 4);
  const LogisticRegression model = LogisticRegression::Fit(train, train_labels, 4, {});
  const Estimate accuracy = Accuracy(model.Predict(test), test_labels);
  EXPECT_NEAR(accuracy.value, 0.25, 3 * accuracy.ci95);
}

struct InversionCase {
  std::string name;
  bool rotate;
};

class InversionTest : public ::testing::TestWithParam<InversionCase> {};

// With no noise a linear map is recovered exactly from d pairs; noise makes it worse.
TEST_P(InversionTest, CosineIsOneWithoutNoiseAndFallsWithNoise) {
  const size_t d = 24;
  const auto data = MakeClustered(400, d, 8, 0.5, 10);
  const Matrix transform = GetParam().rotate ? RandomRotation(d, 11) : RandomPermutationMatrix(d, 11);
  Matrix pool = data.vectors;
  std::vector<size_t> holdout_rows(100), pair_rows(2 * d);
  std::iota(holdout_rows.begin(), holdout_rows.end(), size_t{0});
  std::iota(pair_rows.begin(), pair_rows.end(), size_t{100});
  const Matrix holdout = SelectRows(data.vectors, holdout_rows);
  const Matrix pairs_plain = SelectRows(data.vectors, pair_rows);

  std::vector<double> cosines;
  for (double noise : {0.0, 0.3, 1.0, 3.0}) {
    const InversionMap map =
        FitInversion(Apply(transform, pairs_plain, noise, 12), pairs_plain, 1e-6);
    const InversionScore score =
        ScoreInversion(Reconstruct(map, Apply(transform, holdout, noise, 13)), holdout, pool,
                       holdout_rows, NearestOthers(holdout, pool, holdout_rows));
    cosines.push_back(score.mean_cosine.value);
    if (noise == 0.0) {
      EXPECT_GT(score.mean_cosine.value, 0.9999);
      EXPECT_EQ(score.identified.value, 1.0);
    }
  }
  for (size_t i = 1; i < cosines.size(); ++i) EXPECT_LT(cosines[i], cosines[i - 1]) << i;
  EXPECT_LT(cosines.back(), 0.9);
}

TEST_P(InversionTest, FewerPairsThanDimensionsRecoverLess) {
  const size_t d = 32;
  const auto data = MakeClustered(400, d, 40, 1.0, 14);
  const Matrix transform = GetParam().rotate ? RandomRotation(d, 15) : RandomPermutationMatrix(d, 15);
  std::vector<size_t> holdout_rows(100), pair_rows(d / 2);
  std::iota(holdout_rows.begin(), holdout_rows.end(), size_t{0});
  std::iota(pair_rows.begin(), pair_rows.end(), size_t{100});
  const Matrix holdout = SelectRows(data.vectors, holdout_rows);
  const Matrix pairs_plain = SelectRows(data.vectors, pair_rows);
  const InversionMap map = FitInversion(Apply(transform, pairs_plain, 0, 16), pairs_plain, 1e-6);
  const InversionScore score =
      ScoreInversion(Reconstruct(map, Apply(transform, holdout, 0, 17)), holdout, data.vectors,
                     holdout_rows, NearestOthers(holdout, data.vectors, holdout_rows));
  EXPECT_LT(score.mean_cosine.value, 0.98);
}

INSTANTIATE_TEST_SUITE_P(Transforms, InversionTest,
                         ::testing::Values(InversionCase{"permute", false},
                                           InversionCase{"rotate", true}),
                         [](const auto& test_info) { return test_info.param.name; });

TEST(AlignmentTest, RecoversMostOfAPermutationAndNoneOfARotation) {
  const size_t d = 48;
  const auto data = MakeClustered(4000, d, 10, 0.7, 18);
  std::vector<size_t> public_rows(2000), hidden_rows(2000);
  std::iota(public_rows.begin(), public_rows.end(), size_t{0});
  std::iota(hidden_rows.begin(), hidden_rows.end(), size_t{2000});
  const Matrix known = SelectRows(data.vectors, public_rows);
  const Matrix hidden = SelectRows(data.vectors, hidden_rows);
  const double noise = 0.05;

  const Matrix permutation = RandomPermutationMatrix(d, 19);
  const Estimate permuted = RecoveredDimensionShare(
      AlignDimensions(known, Apply(permutation, hidden, noise, 20), noise * noise), permutation);
  EXPECT_GE(permuted.value, 0.9);

  const Matrix rotation = RandomRotation(d, 21);
  const Estimate rotated = RecoveredDimensionShare(
      AlignDimensions(known, Apply(rotation, hidden, noise, 22), noise * noise), rotation);
  EXPECT_LE(rotated.value, 0.05);
}

TEST(RecoveredDimensionShareTest, CountsOnlyDominantWeights) {
  Matrix transform(2, 2);
  const float c = std::sqrt(0.5f) + 1e-6f;
  transform.values = {c, -c, c, c};  // a 45° rotation: every weight exactly at the threshold
  EXPECT_EQ(RecoveredDimensionShare(std::vector<uint32_t>{0, 1}, transform).value, 1.0);
  transform.values = {0.6f, -0.8f, 0.8f, 0.6f};
  EXPECT_EQ(RecoveredDimensionShare(std::vector<uint32_t>{0, 1}, transform).value, 0.0);
  EXPECT_EQ(RecoveredDimensionShare(std::vector<uint32_t>{1, 0}, transform).value, 1.0);
}

TEST(EstimateTest, IntervalsFollowTheNormalApproximation) {
  const Estimate share = ShareEstimate(50, 100);
  EXPECT_DOUBLE_EQ(share.value, 0.5);
  EXPECT_NEAR(share.ci95, 1.959964 * 0.05, 1e-9);
  const std::vector<double> samples = {1, 2, 3, 4};
  const Estimate mean = MeanEstimate(samples);
  EXPECT_DOUBLE_EQ(mean.value, 2.5);
  EXPECT_NEAR(mean.ci95, 1.959964 * std::sqrt(5.0 / 3.0 / 4.0), 1e-9);
}

}  // namespace
}  // namespace vecseal::calibrate
