// Calibration end to end over the real core::Cipher, on synthetic clustered data where the
// direction of every effect is known. The key and the nonces are fixed so that each run
// measures exactly the same ciphertexts; the assertions keep margins of several standard errors.
#include <atomic>
#include <limits>
#include <cstring>
#include <memory>

#include <gtest/gtest.h>

#include "synthetic.h"
#include "vecseal/calibrate/calibration.h"
#include "vecseal/core/deriver.h"

namespace vecseal::calibrate {
namespace {

using testing::MakeClustered;

class CountingNonces final : public core::NonceSource {
 public:
  Status Next(core::Nonce& nonce) override {
    const uint64_t value = next_.fetch_add(1);
    nonce.fill(0);
    std::memcpy(nonce.data(), &value, sizeof value);
    return Status::Ok();
  }

 private:
  std::atomic<uint64_t> next_{1};
};

std::shared_ptr<core::Deriver> FixedKey() {
  const std::vector<uint8_t> key(32, 0x5a);
  auto deriver = core::SoftwareDeriver::Create(key);
  EXPECT_TRUE(deriver.ok()) << deriver.status().ToString();
  return std::shared_ptr<core::Deriver>(std::move(deriver).value());
}

// d = 32, 8 clusters; nearest-neighbour distances are about 2.5, so β from 0.1 to 40 spans
// "no effect" to "noise swamps the clusters".
CalibrationData ClusteredData(size_t n = 1200) {
  auto clustered = MakeClustered(n, 32, 8, 0.35, 31);
  CalibrationData data;
  data.sample = std::move(clustered.vectors);
  data.labels = std::move(clustered.labels);
  data.classes = 8;
  return data;
}

class CalibrationTest : public ::testing::TestWithParam<core::TransformKind> {
 protected:
  CalibrationReport Run(std::vector<double> betas) {
    CalibrationOptions options;
    options.betas = std::move(betas);
    options.transform = GetParam();
    options.nonces = &nonces_;
    auto report = RunCalibration(ClusteredData(), options, FixedKey());
    EXPECT_TRUE(report.ok()) << report.status().ToString();
    return std::move(report).value();
  }

 private:
  CountingNonces nonces_;
};

TEST_P(CalibrationTest, RecallFallsAsBetaRises) {
  const CalibrationReport report = Run({0.1, 2, 8, 40});
  ASSERT_EQ(report.results.size(), 4u);
  EXPECT_GE(report.results.front().recall.value, 0.9);
  for (size_t i = 1; i < report.results.size(); ++i) {
    const Estimate& before = report.results[i - 1].recall;
    const Estimate& after = report.results[i].recall;
    EXPECT_LT(after.value, before.value - (before.ci95 + after.ci95) / 2) << "beta " << i;
  }
  EXPECT_LE(report.results.back().recall.value, 0.2);
}

TEST_P(CalibrationTest, ClassifiersMatchPlaintextAtSmallBetaAndDegradeAtLarge) {
  const CalibrationReport report = Run({0.1, 120});
  ASSERT_TRUE(report.plain_knn_accuracy && report.plain_logistic_accuracy);
  EXPECT_GE(report.plain_knn_accuracy->value, 0.95);
  const BetaResult& small = report.results.front();
  EXPECT_NEAR(small.knn_accuracy->value, report.plain_knn_accuracy->value, 0.02);
  EXPECT_NEAR(small.logistic_accuracy->value, report.plain_logistic_accuracy->value, 0.02);
  const BetaResult& large = report.results.back();
  EXPECT_LT(large.knn_accuracy->value, report.plain_knn_accuracy->value - 0.2);
  EXPECT_LT(large.logistic_accuracy->value, report.plain_logistic_accuracy->value - 0.2);
}

TEST_P(CalibrationTest, InversionCosineIsOneWithoutNoiseAndFallsWithBeta) {
  const CalibrationReport report = Run({1, 8, 40});
  ASSERT_EQ(report.transform_only.inversion.size(), 3u);  // d/2, d and 2d pairs all fit
  EXPECT_EQ(report.transform_only.inversion[2].pairs, 64u);
  EXPECT_GT(report.transform_only.inversion[2].mean_cosine.value, 0.999);
  EXPECT_EQ(report.transform_only.inversion[2].identified.value, 1.0);
  double previous = report.transform_only.inversion[2].mean_cosine.value;
  for (const BetaResult& result : report.results) {
    ASSERT_EQ(result.leakage.inversion.size(), 3u);
    const Estimate& cosine = result.leakage.inversion[2].mean_cosine;
    EXPECT_LT(cosine.value, previous - cosine.ci95) << "beta " << result.beta;
    previous = cosine.value;
  }
  EXPECT_LT(report.results.back().leakage.inversion[2].identified.value, 0.3);
}

TEST_P(CalibrationTest, AlignmentRecoversAPermutationButNotARotation) {
  const CalibrationReport report = Run({0.1});
  // Both transforms are attacked whichever one the report is for.
  EXPECT_GE(report.transform_only.aligned_permute.value, 0.8);
  EXPECT_GE(report.results[0].leakage.aligned_permute.value, 0.8);
  EXPECT_LE(report.transform_only.aligned_rotate.value, 0.05);
  EXPECT_LE(report.results[0].leakage.aligned_rotate.value, 0.05);
}

INSTANTIATE_TEST_SUITE_P(Transforms, CalibrationTest,
                         ::testing::Values(core::TransformKind::kRotate,
                                           core::TransformKind::kPermute),
                         [](const auto& test_info) {
                           return std::string(core::TransformName(test_info.param));
                         });

// The suggested budget is where the measured inversion crosses the limit: under it at the
// budget, at or over it with the d/2, d and 2d pairs measured beside it when those cross.
TEST(SuggestedBudgetTest, StopsWhereTheInversionCrossesTheLimit) {
  CountingNonces nonces;
  CalibrationData data;
  auto clustered = MakeClustered(1200, 32, 8, 0.35, 31);
  data.sample = std::move(clustered.vectors);
  for (const double limit : {0.5, 0.95, 1.0}) {
    CalibrationOptions options;
    options.betas = {1};
    options.nonces = &nonces;
    options.max_inversion_cosine = limit;
    auto report = RunCalibration(data, options, FixedKey());
    ASSERT_TRUE(report.ok()) << report.status().ToString();
    const Leakage& leakage = report->results[0].leakage;
    const SuggestedBudget& budget = leakage.budget;
    SCOPED_TRACE("limit " + std::to_string(limit));
    if (limit == 0.5 && budget.pairs == 0) continue;  // clustered data: one pair may reach it
    ASSERT_GT(budget.pairs, 0u);
    EXPECT_LT(budget.mean_cosine, limit);
    for (const InversionResult& measured : leakage.inversion) {
      if (measured.mean_cosine.value >= limit + measured.mean_cosine.ci95) {
        EXPECT_LT(budget.pairs, measured.pairs);
      }
    }
    EXPECT_EQ(budget.beyond_sample, limit == 1.0) << "a cosine of 1 is never reached";
  }
}

TEST(CalibrationInputTest, GivenQueriesAreUsedInsteadOfHeldOutOnes) {
  CalibrationData data = ClusteredData();
  data.queries = MakeClustered(37, 32, 8, 0.35, 31).vectors;
  CalibrationOptions options;
  options.betas = {0.5};
  auto report = RunCalibration(data, options, FixedKey());
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_TRUE(report->queries_given);
  EXPECT_EQ(report->query_rows, 37u);
  EXPECT_EQ(report->database_rows, 1200u);
}

TEST(CalibrationInputTest, WithoutLabelsThereIsNoClassification) {
  CalibrationData data = ClusteredData();
  data.labels.clear();
  data.classes = 0;
  CalibrationOptions options;
  options.betas = {0.5};
  auto report = RunCalibration(data, options, FixedKey());
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_FALSE(report->plain_knn_accuracy);
  EXPECT_FALSE(report->results[0].knn_accuracy);
  EXPECT_EQ(report->recommended_beta, 0.5);
}

struct InvalidCase {
  std::string name;
  void (*mutate)(CalibrationData&, CalibrationOptions&);
  std::string reason;
  std::string message;
};

class CalibrationValidationTest : public ::testing::TestWithParam<InvalidCase> {};

TEST_P(CalibrationValidationTest, RejectsWithReasonAndMessage) {
  CalibrationData data = ClusteredData(100);
  CalibrationOptions options;
  options.betas = {1};
  GetParam().mutate(data, options);
  auto report = RunCalibration(data, options, FixedKey());
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.status().code(), Code::kInvalidArgument);
  if (!GetParam().reason.empty()) {
    EXPECT_EQ(report.status().reason(), GetParam().reason);
    EXPECT_EQ(report.status().message(), GetParam().message);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, CalibrationValidationTest,
    ::testing::Values(
        InvalidCase{"too_few_vectors",
                    [](CalibrationData& data, CalibrationOptions&) {
                      data.sample.rows = 49;
                      data.sample.values.resize(49 * 32);
                      data.labels.resize(49);
                    },
                    "sample_too_small",
                    "the sample has 49 vectors; calibration needs at least 50"},
        InvalidCase{"label_count",
                    [](CalibrationData& data, CalibrationOptions&) { data.labels.pop_back(); },
                    "label_count_mismatch", "there are 99 labels for 100 sample vectors"},
        InvalidCase{"one_class",
                    [](CalibrationData& data, CalibrationOptions&) { data.classes = 1; },
                    "too_few_classes", "the labels name fewer than 2 classes"},
        InvalidCase{"query_dimension",
                    [](CalibrationData& data, CalibrationOptions&) {
                      data.queries = Matrix(3, 31);
                    },
                    "query_dimension_mismatch",
                    "the queries have dimension 31 but the sample has 32"},
        InvalidCase{"no_betas",
                    [](CalibrationData&, CalibrationOptions& options) { options.betas.clear(); },
                    "no_betas", "give at least one β"},
        InvalidCase{"non_finite_vector",
                    [](CalibrationData& data, CalibrationOptions&) {
                      data.sample.values[5 * 32 + 3] = std::numeric_limits<float>::quiet_NaN();
                    },
                    // core's ValidateVectors words this one.
                    "", ""}),
    [](const auto& test_info) { return test_info.param.name; });

TEST(RecommendTest, PicksTheLargestBetaMeetingEveryTarget) {
  struct Row {
    double beta, recall, knn, logistic;
  };
  const struct {
    std::vector<Row> rows;
    std::optional<double> expected;
  } cases[] = {
      {{{0.5, 0.99, 0.90, 0.90}, {1, 0.95, 0.89, 0.885}, {2, 0.91, 0.85, 0.90}}, 1},
      {{{0.5, 0.99, 0.90, 0.90}, {1, 0.89, 0.90, 0.90}}, 0.5},
      {{{0.5, 0.85, 0.90, 0.90}}, std::nullopt},
      {{{0.5, 0.95, 0.90, 0.87}}, std::nullopt},
  };
  for (const auto& test_case : cases) {
    CalibrationReport report;
    report.plain_knn_accuracy = Estimate{0.9, 0};
    report.plain_logistic_accuracy = Estimate{0.9, 0};
    for (const Row& row : test_case.rows) {
      BetaResult result;
      result.beta = row.beta;
      result.recall.value = row.recall;
      result.knn_accuracy = Estimate{row.knn, 0};
      result.logistic_accuracy = Estimate{row.logistic, 0};
      report.results.push_back(result);
    }
    Recommend(report);
    EXPECT_EQ(report.recommended_beta, test_case.expected);
  }
}

}  // namespace
}  // namespace vecseal::calibrate
