#include "vecseal/calibrate/calibration.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>

#include "vecseal/calibrate/attacks.h"

namespace vecseal::calibrate {

namespace {

constexpr size_t kMinSampleRows = 50;

Status Invalid(std::string reason, std::string message) {
  return Status(Code::kInvalidArgument, std::move(reason), std::move(message));
}

std::vector<size_t> Slice(const std::vector<size_t>& order, size_t begin, size_t end) {
  return {order.begin() + static_cast<std::ptrdiff_t>(begin),
          order.begin() + static_cast<std::ptrdiff_t>(end)};
}

Labels SelectLabels(const Labels& labels, std::span<const size_t> rows) {
  Labels out(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) out[i] = labels[rows[i]];
  return out;
}

double Median(std::vector<double> values) {
  if (values.empty()) return 0;
  const auto middle = values.begin() + static_cast<std::ptrdiff_t>(values.size() / 2);
  std::nth_element(values.begin(), middle, values.end());
  return *middle;
}

// Which sample rows play which part. Drawn once from the seed, so that every β is measured on
// the same rows and differences between β are due to β alone.
struct Plan {
  std::vector<size_t> query_rows;     // empty when queries are given
  std::vector<size_t> database_rows;
  std::vector<size_t> train_rows;
  std::vector<size_t> test_rows;
  std::vector<size_t> holdout_rows;   // inversion targets, never among the pairs
  std::vector<size_t> pair_rows;      // the attacker's known pairs, 2d at most
  std::vector<size_t> pool_rows;      // holdout first, then others
  std::vector<size_t> public_rows;    // the distribution the alignment attacker knows
  std::vector<size_t> hidden_rows;    // what it sees encrypted
  std::vector<size_t> pair_counts;    // N ∈ {d/2, d, 2d} that fit
  // Fixed across β, so computed once.
  Matrix holdout_plain;
  Matrix pool;
  std::vector<size_t> holdout_in_pool;
  std::vector<uint32_t> true_nearest;
};

Plan MakePlan(const CalibrationData& data, const CalibrationOptions& options) {
  const size_t n = data.sample.rows;
  const size_t d = data.sample.cols;
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  std::mt19937_64 random(options.seed);
  std::shuffle(order.begin(), order.end(), random);

  Plan plan;
  if (data.queries) {
    plan.database_rows = order;
  } else {
    const size_t q = std::clamp<size_t>(n / 10, 1, options.max_queries);
    plan.query_rows = Slice(order, 0, q);
    plan.database_rows = Slice(order, q, n);
  }
  if (!data.labels.empty()) {
    const size_t test = std::clamp<size_t>(n / 5, 1, options.max_test);
    const size_t train = std::min(n - test, options.max_train);
    plan.test_rows = Slice(order, 0, test);
    plan.train_rows = Slice(order, test, test + train);
  }
  const size_t holdout = std::clamp<size_t>(n / 5, 1, options.max_attack_holdout);
  plan.holdout_rows = Slice(order, 0, holdout);
  plan.pair_rows = Slice(order, holdout, std::min(n, holdout + 2 * d));
  for (size_t pairs : {std::max<size_t>(d / 2, 1), d, 2 * d}) {
    if (pairs <= plan.pair_rows.size()) plan.pair_counts.push_back(pairs);
  }
  plan.pool_rows = Slice(order, 0, std::min(n, std::max(options.max_identification_pool, holdout)));
  const size_t half = std::min(n / 2, options.max_alignment_half);
  plan.public_rows = Slice(order, 0, half);
  plan.hidden_rows = Slice(order, n - half, n);

  plan.holdout_plain = SelectRows(data.sample, plan.holdout_rows);
  plan.pool = SelectRows(data.sample, plan.pool_rows);
  plan.holdout_in_pool.resize(holdout);  // the pool starts with the holdout
  std::iota(plan.holdout_in_pool.begin(), plan.holdout_in_pool.end(), size_t{0});
  plan.true_nearest = NearestOthers(plan.holdout_plain, plan.pool, plan.holdout_in_pool);
  return plan;
}

Result<Matrix> Encrypt(const core::Cipher& cipher, const Matrix& plain,
                       core::NonceSource* nonces) {
  Matrix out(plain.rows, plain.cols);
  core::EncryptOptions encrypt_options;
  encrypt_options.nonces = nonces;
  VECSEAL_RETURN_IF_ERROR(cipher.Encrypt(plain.values, out.values, plain.cols, encrypt_options, {}));
  return out;
}

Result<Matrix> TransformOnly(const core::Cipher& cipher, const Matrix& plain) {
  Matrix out(plain.rows, plain.cols);
  VECSEAL_RETURN_IF_ERROR(cipher.ApplyTransform(plain.values, out.values, plain.cols));
  return out;
}

// The secret transform as a matrix: T[j][i] is the weight of plaintext dimension i in
// ciphertext dimension j. Used only to score the alignment attack.
Result<Matrix> TransformMatrix(const core::Cipher& cipher, size_t d) {
  Matrix identity(d, d);
  for (size_t i = 0; i < d; ++i) identity.row(i)[i] = 1.0f;
  Result<Matrix> images = TransformOnly(cipher, identity);
  if (!images.ok()) return std::move(images).TakeStatus();
  Matrix transform(d, d);
  for (size_t i = 0; i < d; ++i) {
    for (size_t j = 0; j < d; ++j) transform.row(j)[i] = images->row(i)[j];
  }
  return transform;
}

// One noise level, either transform: the ciphers and what they do to plaintext.
struct Encryption {
  std::shared_ptr<core::Cipher> chosen;
  std::shared_ptr<core::Cipher> other;
  bool noise = true;  // false: the transform alone
  double noise_variance_per_dimension = 0;
  core::NonceSource* nonces = nullptr;

  Result<Matrix> Apply(const core::Cipher& cipher, const Matrix& plain) const {
    return noise ? Encrypt(cipher, plain, nonces) : TransformOnly(cipher, plain);
  }
};

// The inversion cosine an attacker holding the first `pairs` of the plan's pairs gets.
double InversionCosine(const CalibrationData& data, const Plan& plan,
                       const Matrix& encrypted_sample, const Matrix& holdout_cipher, size_t pairs,
                       const CalibrationOptions& options) {
  const std::span<const size_t> rows(plan.pair_rows.data(), pairs);
  const Matrix pair_cipher = SelectRows(encrypted_sample, rows);
  const Matrix pair_plain = SelectRows(data.sample, rows);
  const InversionMap map = FitInversion(
      pair_cipher, pair_plain, ChooseRidge(pair_cipher, pair_plain, options.ridge_candidates));
  const Matrix reconstructed = Reconstruct(map, holdout_cipher);
  double sum = 0;
  for (size_t i = 0; i < reconstructed.rows; ++i) {
    sum += Cosine(reconstructed.row(i), plan.holdout_plain.row(i));
  }
  return reconstructed.rows == 0 ? 0 : sum / static_cast<double>(reconstructed.rows);
}

// Doubles N until the cosine reaches the limit, then bisects to within 1/16 of N: a few fits
// of small N, since the limit is crossed long before N nears d.
SuggestedBudget SuggestBudget(const CalibrationData& data, const Plan& plan,
                              const Matrix& encrypted_sample, const Matrix& holdout_cipher,
                              const CalibrationOptions& options) {
  const size_t most = plan.pair_rows.size();
  const auto cosine = [&](size_t pairs) {
    return InversionCosine(data, plan, encrypted_sample, holdout_cipher, pairs, options);
  };
  SuggestedBudget budget;
  size_t bad = 0;
  for (size_t pairs = 1; most > 0; pairs = std::min(most, 2 * pairs)) {
    const double value = cosine(pairs);
    if (value >= options.max_inversion_cosine) {
      bad = pairs;
      break;
    }
    budget.pairs = pairs;
    budget.mean_cosine = value;
    if (pairs == most) {
      budget.beyond_sample = true;
      return budget;
    }
  }
  while (bad - budget.pairs > std::max<size_t>(1, budget.pairs / 16)) {
    const size_t middle = budget.pairs + (bad - budget.pairs) / 2;
    const double value = cosine(middle);
    if (value >= options.max_inversion_cosine) {
      bad = middle;
    } else {
      budget.pairs = middle;
      budget.mean_cosine = value;
    }
  }
  return budget;
}

Result<Leakage> MeasureLeakage(const CalibrationData& data, const Plan& plan,
                               const Encryption& encryption, const Matrix& encrypted_sample,
                               const CalibrationOptions& options) {
  const Matrix& sample = data.sample;
  Leakage leakage;
  const Matrix& holdout_plain = plan.holdout_plain;
  const Matrix& pool = plan.pool;
  const Matrix holdout_cipher = SelectRows(encrypted_sample, plan.holdout_rows);
  for (size_t pairs : plan.pair_counts) {
    const std::span<const size_t> rows(plan.pair_rows.data(), pairs);
    const Matrix pair_cipher = SelectRows(encrypted_sample, rows);
    const Matrix pair_plain = SelectRows(sample, rows);
    const InversionMap map = FitInversion(
        pair_cipher, pair_plain, ChooseRidge(pair_cipher, pair_plain, options.ridge_candidates));
    const InversionScore score = ScoreInversion(Reconstruct(map, holdout_cipher), holdout_plain,
                                                pool, plan.holdout_in_pool, plan.true_nearest);
    leakage.inversion.push_back({pairs, score.mean_cosine, score.identified});
  }
  leakage.budget = SuggestBudget(data, plan, encrypted_sample, holdout_cipher, options);

  const Matrix public_plain = SelectRows(sample, plan.public_rows);
  const Matrix hidden_plain = SelectRows(sample, plan.hidden_rows);
  Result<Matrix> hidden_other = encryption.Apply(*encryption.other, hidden_plain);
  if (!hidden_other.ok()) return std::move(hidden_other).TakeStatus();
  const Matrix hidden_chosen = SelectRows(encrypted_sample, plan.hidden_rows);
  Result<Matrix> chosen_transform = TransformMatrix(*encryption.chosen, sample.cols);
  if (!chosen_transform.ok()) return std::move(chosen_transform).TakeStatus();
  Result<Matrix> other_transform = TransformMatrix(*encryption.other, sample.cols);
  if (!other_transform.ok()) return std::move(other_transform).TakeStatus();
  const Estimate chosen_share = RecoveredDimensionShare(
      AlignDimensions(public_plain, hidden_chosen, encryption.noise_variance_per_dimension),
      *chosen_transform);
  const Estimate other_share = RecoveredDimensionShare(
      AlignDimensions(public_plain, *hidden_other, encryption.noise_variance_per_dimension),
      *other_transform);
  const bool chosen_is_permute = options.transform == core::TransformKind::kPermute;
  leakage.aligned_permute = chosen_is_permute ? chosen_share : other_share;
  leakage.aligned_rotate = chosen_is_permute ? other_share : chosen_share;
  return leakage;
}

Result<Encryption> MakeEncryption(const std::shared_ptr<core::Deriver>& deriver, double beta,
                                  const CalibrationOptions& options, size_t d) {
  const core::TransformKind other = options.transform == core::TransformKind::kPermute
                                        ? core::TransformKind::kRotate
                                        : core::TransformKind::kPermute;
  Encryption encryption;
  auto chosen = core::Cipher::Create(deriver, {beta, options.transform, 1});
  if (!chosen.ok()) return std::move(chosen).TakeStatus();
  auto second = core::Cipher::Create(deriver, {beta, other, 1});
  if (!second.ok()) return std::move(second).TakeStatus();
  encryption.chosen = std::move(chosen).value();
  encryption.other = std::move(second).value();
  encryption.nonces = options.nonces;
  // ‖noise‖ = (β/4)·x'^(1/d) with x' uniform, so E‖noise‖² = (β/4)²·d/(d+2), spread evenly.
  const double radius = beta / 4;
  encryption.noise_variance_per_dimension = radius * radius / static_cast<double>(d + 2);
  return encryption;
}

Status Validate(const CalibrationData& data, const CalibrationOptions& options) {
  const size_t n = data.sample.rows;
  const size_t d = data.sample.cols;
  if (n < kMinSampleRows) {
    return Invalid("sample_too_small", "the sample has " + std::to_string(n) +
                                           " vectors; calibration needs at least " +
                                           std::to_string(kMinSampleRows));
  }
  VECSEAL_RETURN_IF_ERROR(core::ValidateDimension(d, core::TransformKind::kRotate));
  VECSEAL_RETURN_IF_ERROR(core::ValidateVectors(data.sample.values, d));
  if (data.queries) {
    if (data.queries->cols != d) {
      return Invalid("query_dimension_mismatch",
                     "the queries have dimension " + std::to_string(data.queries->cols) +
                         " but the sample has " + std::to_string(d));
    }
    if (data.queries->rows == 0) return Invalid("no_queries", "the query file holds no vectors");
    VECSEAL_RETURN_IF_ERROR(core::ValidateVectors(data.queries->values, d));
  }
  if (!data.labels.empty()) {
    if (data.labels.size() != n) {
      return Invalid("label_count_mismatch", "there are " + std::to_string(data.labels.size()) +
                                                 " labels for " + std::to_string(n) +
                                                 " sample vectors");
    }
    if (data.classes < 2) {
      return Invalid("too_few_classes", "the labels name fewer than 2 classes");
    }
  }
  if (options.betas.empty()) return Invalid("no_betas", "give at least one β");
  for (double beta : options.betas) {
    VECSEAL_RETURN_IF_ERROR(core::ValidateParams({beta, options.transform, 1}));
  }
  return Status::Ok();
}

}  // namespace

void Recommend(CalibrationReport& report) {
  report.recommended_beta.reset();
  for (const BetaResult& result : report.results) {
    bool meets = result.recall.value >= report.min_recall;
    if (result.knn_accuracy && report.plain_knn_accuracy) {
      meets = meets && result.knn_accuracy->value >=
                           report.plain_knn_accuracy->value - report.max_accuracy_drop;
    }
    if (result.logistic_accuracy && report.plain_logistic_accuracy) {
      meets = meets && result.logistic_accuracy->value >=
                           report.plain_logistic_accuracy->value - report.max_accuracy_drop;
    }
    if (meets && (!report.recommended_beta || result.beta > *report.recommended_beta)) {
      report.recommended_beta = result.beta;
    }
  }
}

Result<CalibrationReport> RunCalibration(const CalibrationData& data,
                                         const CalibrationOptions& options,
                                         std::shared_ptr<core::Deriver> deriver) {
  VECSEAL_RETURN_IF_ERROR(Validate(data, options));
  const Matrix& sample = data.sample;
  const size_t d = sample.cols;
  const Plan plan = MakePlan(data, options);

  CalibrationReport report;
  report.dimension = d;
  report.sample_rows = sample.rows;
  report.queries_given = data.queries.has_value();
  report.transform = options.transform;
  report.max_inversion_cosine = options.max_inversion_cosine;
  report.classes = data.classes;
  report.train_rows = plan.train_rows.size();
  report.test_rows = plan.test_rows.size();
  report.attack_holdout = plan.holdout_rows.size();
  report.identification_pool = plan.pool_rows.size();
  report.alignment_rows = plan.public_rows.size();
  report.knn_k = options.knn_k;

  const Matrix plain_queries =
      data.queries ? *data.queries : SelectRows(sample, plan.query_rows);
  const Matrix plain_database = SelectRows(sample, plan.database_rows);
  const size_t k = std::min(options.recall_k, plain_database.rows);
  report.recall_k = k;
  report.query_rows = plain_queries.rows;
  report.database_rows = plain_database.rows;
  const std::vector<uint32_t> plain_neighbours = NearestNeighbours(plain_queries, plain_database, k);

  std::vector<double> values(sample.rows);
  for (size_t i = 0; i < sample.rows; ++i) values[i] = std::sqrt(Dot(sample.row(i), sample.row(i)));
  report.median_norm = Median(values);
  values.assign(plain_queries.rows, 0.0);
  for (size_t q = 0; q < plain_queries.rows; ++q) {
    values[q] = std::sqrt(SquaredDistance(plain_queries.row(q),
                                          plain_database.row(plain_neighbours[q * k])));
  }
  report.median_neighbour_distance = Median(values);

  {
    const Matrix known = SelectRows(sample, plan.pair_rows);
    std::vector<float> mean(d, 0.0f);
    for (size_t i = 0; i < known.rows; ++i) {
      for (size_t j = 0; j < d; ++j) mean[j] += known.row(i)[j] / static_cast<float>(known.rows);
    }
    std::vector<double> cosines;
    for (size_t row : plan.holdout_rows) cosines.push_back(Cosine(mean, sample.row(row)));
    report.prior_cosine = MeanEstimate(cosines).value;
  }

  Matrix plain_train, plain_test;
  Labels train_labels, test_labels;
  if (!data.labels.empty()) {
    plain_train = SelectRows(sample, plan.train_rows);
    plain_test = SelectRows(sample, plan.test_rows);
    train_labels = SelectLabels(data.labels, plan.train_rows);
    test_labels = SelectLabels(data.labels, plan.test_rows);
    report.plain_knn_accuracy = Accuracy(
        KnnPredict(plain_train, train_labels, plain_test, options.knn_k, data.classes),
        test_labels);
    const LogisticRegression model =
        LogisticRegression::Fit(plain_train, train_labels, data.classes, options.logistic);
    report.plain_logistic_accuracy = Accuracy(model.Predict(plain_test), test_labels);
  }

  {
    Result<Encryption> encryption = MakeEncryption(deriver, 1.0, options, d);
    if (!encryption.ok()) return std::move(encryption).TakeStatus();
    encryption->noise = false;
    encryption->noise_variance_per_dimension = 0;
    Result<Matrix> transformed = TransformOnly(*encryption->chosen, sample);
    if (!transformed.ok()) return std::move(transformed).TakeStatus();
    Result<Leakage> leakage = MeasureLeakage(data, plan, *encryption, *transformed, options);
    if (!leakage.ok()) return std::move(leakage).TakeStatus();
    report.transform_only = std::move(leakage).value();
  }

  for (double beta : options.betas) {
    Result<Encryption> encryption = MakeEncryption(deriver, beta, options, d);
    if (!encryption.ok()) return std::move(encryption).TakeStatus();
    Result<Matrix> encrypted = encryption->Apply(*encryption->chosen, sample);
    if (!encrypted.ok()) return std::move(encrypted).TakeStatus();
    BetaResult result;
    result.beta = beta;

    Result<Matrix> encrypted_queries = data.queries
                                           ? encryption->Apply(*encryption->chosen, *data.queries)
                                           : Result<Matrix>(SelectRows(*encrypted, plan.query_rows));
    if (!encrypted_queries.ok()) return std::move(encrypted_queries).TakeStatus();
    const std::vector<uint32_t> neighbours = NearestNeighbours(
        *encrypted_queries, SelectRows(*encrypted, plan.database_rows), k);
    std::vector<double> recalls(plain_queries.rows);
    for (size_t q = 0; q < plain_queries.rows; ++q) {
      const auto truth = std::span(plain_neighbours).subspan(q * k, k);
      size_t found = 0;
      for (size_t i = 0; i < k; ++i) found += std::ranges::count(truth, neighbours[q * k + i]);
      recalls[q] = static_cast<double>(found) / static_cast<double>(k);
    }
    result.recall = MeanEstimate(recalls);

    if (!data.labels.empty()) {
      const Matrix train = SelectRows(*encrypted, plan.train_rows);
      const Matrix test = SelectRows(*encrypted, plan.test_rows);
      result.knn_accuracy =
          Accuracy(KnnPredict(train, train_labels, test, options.knn_k, data.classes), test_labels);
      const LogisticRegression model =
          LogisticRegression::Fit(train, train_labels, data.classes, options.logistic);
      result.logistic_accuracy = Accuracy(model.Predict(test), test_labels);
    }

    Result<Leakage> leakage = MeasureLeakage(data, plan, *encryption, *encrypted, options);
    if (!leakage.ok()) return std::move(leakage).TakeStatus();
    result.leakage = std::move(leakage).value();
    report.results.push_back(std::move(result));
  }
  Recommend(report);
  return report;
}

}  // namespace vecseal::calibrate
