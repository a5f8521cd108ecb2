// Measures, on the user's own vectors, what each approximation factor β costs in accuracy and
// what it leaves an attacker, by encrypting under a throwaway key and running the models and
// the attacks for real.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "vecseal/calibrate/estimate.h"
#include "vecseal/calibrate/learners.h"
#include "vecseal/calibrate/linalg.h"
#include "vecseal/core/cipher.h"
#include "vecseal/core/deriver.h"
#include "vecseal/core/status.h"

namespace vecseal::calibrate {

struct CalibrationData {
  Matrix sample;
  Labels labels;  // empty, or one class index per sample row
  size_t classes = 0;
  std::optional<Matrix> queries;  // absent: queries are held out from the sample
};

struct CalibrationOptions {
  std::vector<double> betas;
  core::TransformKind transform = core::TransformKind::kRotate;
  uint64_t seed = 1;  // drives splits and subsamples only; the key is always fresh
  core::NonceSource* nonces = nullptr;  // null: the system CSPRNG; tests fix them
  size_t recall_k = 10;
  size_t max_queries = 500;
  size_t knn_k = 5;
  size_t max_train = 4000;
  size_t max_test = 1000;
  LogisticRegressionOptions logistic;
  // The attacker picks its ridge from these by validation on its own pairs.
  std::vector<double> ridge_candidates = {1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1};
  size_t max_attack_holdout = 200;
  size_t max_identification_pool = 5000;
  size_t max_alignment_half = 5000;
  // The suggested budget keeps the inversion cosine of an attacker holding that many pairs
  // below this.
  double max_inversion_cosine = 0.5;
};

struct InversionResult {
  size_t pairs = 0;
  Estimate mean_cosine;
  Estimate identified;
};

// The largest N whose inversion cosine stays below CalibrationOptions::max_inversion_cosine:
// the budget (docs/policy.md, Budgets) to give rules that serve test environments.
struct SuggestedBudget {
  size_t pairs = 0;            // 0: not even one pair stays below
  double mean_cosine = 0;      // the inversion cosine at `pairs` (the prior at 0)
  bool beyond_sample = false;  // every pair the sample holds stays below: at least `pairs`
};

struct Leakage {
  std::vector<InversionResult> inversion;  // one per N in {d/2, d, 2d} that the sample allows
  SuggestedBudget budget;
  Estimate aligned_permute;
  Estimate aligned_rotate;
};

struct BetaResult {
  double beta = 0;
  Estimate recall;
  std::optional<Estimate> knn_accuracy;
  std::optional<Estimate> logistic_accuracy;
  Leakage leakage;
};

struct CalibrationReport {
  size_t dimension = 0;
  size_t sample_rows = 0;
  size_t query_rows = 0;
  bool queries_given = false;
  size_t database_rows = 0;
  size_t train_rows = 0;
  size_t test_rows = 0;
  size_t classes = 0;
  size_t attack_holdout = 0;
  size_t identification_pool = 0;
  size_t alignment_rows = 0;
  core::TransformKind transform = core::TransformKind::kRotate;
  size_t recall_k = 10;
  size_t knn_k = 5;
  double median_norm = 0;
  double median_neighbour_distance = 0;  // from a query to its nearest database vector
  // The inversion cosine an attacker gets with no ciphertext at all, by guessing the mean of
  // the plaintexts it knows: the floor against which inversion cosines should be read.
  double prior_cosine = 0;
  std::optional<Estimate> plain_knn_accuracy;
  std::optional<Estimate> plain_logistic_accuracy;
  Leakage transform_only;  // β → 0: the secret transform with no noise at all
  std::vector<BetaResult> results;
  // The largest β meeting the targets below, or none if no β does.
  std::optional<double> recommended_beta;
  double min_recall = 0.9;
  double max_accuracy_drop = 0.02;
  double max_inversion_cosine = 0.5;
};

// Fails with kInvalidArgument when the data cannot support the measurement (too few rows for
// the splits, label count mismatch, query dimension mismatch, bad β).
Result<CalibrationReport> RunCalibration(const CalibrationData& data,
                                         const CalibrationOptions& options,
                                         std::shared_ptr<core::Deriver> deriver);

// The largest β whose recall@k ≥ min_recall and whose accuracies are within max_drop of
// plaintext; fills report.recommended_beta.
void Recommend(CalibrationReport& report);

}  // namespace vecseal::calibrate
