#include "vecseal/calibrate/attacks.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <limits>

#include "clones.h"

namespace vecseal::calibrate {

namespace {

std::vector<float> ColumnMeans(const Matrix& x) {
  std::vector<double> sums(x.cols, 0.0);
  for (size_t i = 0; i < x.rows; ++i) {
    const auto row = x.row(i);
    for (size_t j = 0; j < x.cols; ++j) sums[j] += row[j];
  }
  std::vector<float> means(x.cols);
  for (size_t j = 0; j < x.cols; ++j) {
    means[j] = static_cast<float>(sums[j] / static_cast<double>(std::max<size_t>(x.rows, 1)));
  }
  return means;
}

}  // namespace

namespace {

// gram += c·cᵀ (lower triangle only) and cross += c·mᵀ, for one centred pair.
VECSEAL_CALIBRATE_HOT void AddPair(
    const double* c, size_t dc, const double* m, size_t dm, double* gram, double* cross) {
  for (size_t a = 0; a < dc; ++a) {
    const double ca = c[a];
    double* gram_row = gram + a * dc;
#pragma omp simd
    for (size_t b = 0; b <= a; ++b) gram_row[b] += ca * c[b];
    double* cross_row = cross + a * dm;
#pragma omp simd
    for (size_t b = 0; b < dm; ++b) cross_row[b] += ca * m[b];
  }
}

// The centred normal equations CᵀC and CᵀM of a set of pairs, solved for any ridge strength.
class InversionProblem {
 public:
  InversionProblem(const Matrix& ciphertexts, const Matrix& plaintexts)
      : dc_(ciphertexts.cols), dm_(plaintexts.cols), gram_(dc_ * dc_, 0.0), cross_(dc_ * dm_, 0.0) {
    assert(ciphertexts.rows == plaintexts.rows && ciphertexts.rows > 0);
    cipher_mean_ = ColumnMeans(ciphertexts);
    plain_mean_ = ColumnMeans(plaintexts);
    std::vector<double> c(dc_), m(dm_);
    for (size_t i = 0; i < ciphertexts.rows; ++i) {
      for (size_t j = 0; j < dc_; ++j) c[j] = ciphertexts.row(i)[j] - cipher_mean_[j];
      for (size_t j = 0; j < dm_; ++j) m[j] = plaintexts.row(i)[j] - plain_mean_[j];
      AddPair(c.data(), dc_, m.data(), dm_, gram_.data(), cross_.data());
    }
    for (size_t a = 0; a < dc_; ++a) {
      trace_ += gram_[a * dc_ + a];
      for (size_t b = 0; b < a; ++b) gram_[b * dc_ + a] = gram_[a * dc_ + b];
    }
  }

  InversionMap Solve(double ridge) const {
    std::vector<double> system = gram_;
    std::vector<double> solution = cross_;
    // A floor keeps the system positive definite even when every ciphertext is identical.
    const double lambda = std::max(ridge * trace_ / static_cast<double>(dc_), 1e-12);
    for (size_t a = 0; a < dc_; ++a) system[a * dc_ + a] += lambda;
    const bool solved = CholeskySolve(system, dc_, solution, dm_);
    assert(solved);  // CᵀC + λI with λ > 0 is positive definite
    (void)solved;
    InversionMap map;
    map.cipher_mean = cipher_mean_;
    map.plain_mean = plain_mean_;
    map.weights = Matrix(dc_, dm_);
    std::ranges::transform(solution, map.weights.values.begin(),
                           [](double v) { return static_cast<float>(v); });
    return map;
  }

 private:
  size_t dc_;
  size_t dm_;
  std::vector<float> cipher_mean_;
  std::vector<float> plain_mean_;
  std::vector<double> gram_;
  std::vector<double> cross_;
  double trace_ = 0;
};

}  // namespace

InversionMap FitInversion(const Matrix& ciphertexts, const Matrix& plaintexts, double ridge) {
  return InversionProblem(ciphertexts, plaintexts).Solve(ridge);
}

Matrix Reconstruct(const InversionMap& map, const Matrix& ciphertexts) {
  const size_t dc = map.weights.rows;
  const size_t dm = map.weights.cols;
  assert(ciphertexts.cols == dc);
  Matrix out(ciphertexts.rows, dm);
  for (size_t i = 0; i < ciphertexts.rows; ++i) {
    float* o = out.row(i).data();
    std::ranges::copy(map.plain_mean, o);
    for (size_t j = 0; j < dc; ++j) {
      const float centred = ciphertexts.row(i)[j] - map.cipher_mean[j];
      const float* w = map.weights.row(j).data();
#pragma omp simd
      for (size_t b = 0; b < dm; ++b) o[b] += centred * w[b];
    }
  }
  return out;
}

double ChooseRidge(const Matrix& ciphertexts, const Matrix& plaintexts,
                   std::span<const double> candidates) {
  assert(!candidates.empty() && ciphertexts.rows == plaintexts.rows);
  const size_t fit_rows = ciphertexts.rows - ciphertexts.rows / 5;
  if (fit_rows == 0 || fit_rows == ciphertexts.rows) return candidates.front();
  std::vector<size_t> fit(fit_rows), check(ciphertexts.rows - fit_rows);
  for (size_t i = 0; i < fit.size(); ++i) fit[i] = i;
  for (size_t i = 0; i < check.size(); ++i) check[i] = fit_rows + i;
  const Matrix fit_cipher = SelectRows(ciphertexts, fit);
  const Matrix fit_plain = SelectRows(plaintexts, fit);
  const Matrix check_cipher = SelectRows(ciphertexts, check);
  const Matrix check_plain = SelectRows(plaintexts, check);
  const InversionProblem problem(fit_cipher, fit_plain);
  double best_ridge = candidates.front();
  double best_error = std::numeric_limits<double>::infinity();
  for (double ridge : candidates) {
    const Matrix guess = Reconstruct(problem.Solve(ridge), check_cipher);
    double error = 0;
    for (size_t i = 0; i < guess.rows; ++i) error += SquaredDistance(guess.row(i), check_plain.row(i));
    if (error < best_error) {
      best_error = error;
      best_ridge = ridge;
    }
  }
  return best_ridge;
}

std::vector<uint32_t> NearestOthers(const Matrix& vectors, const Matrix& pool,
                                    std::span<const size_t> self_in_pool) {
  assert(vectors.rows == self_in_pool.size() && pool.rows >= 2);
  // Two neighbours each, so that the vector itself can be skipped.
  const std::vector<uint32_t> pairs = NearestNeighbours(vectors, pool, 2);
  std::vector<uint32_t> nearest(vectors.rows);
  for (size_t i = 0; i < vectors.rows; ++i) {
    nearest[i] = pairs[2 * i] != self_in_pool[i] ? pairs[2 * i] : pairs[2 * i + 1];
  }
  return nearest;
}

InversionScore ScoreInversion(const Matrix& reconstructed, const Matrix& truth,
                              const Matrix& pool, std::span<const size_t> truth_in_pool,
                              std::span<const uint32_t> true_nearest) {
  assert(reconstructed.rows == truth.rows && truth.rows == truth_in_pool.size() &&
         truth.rows == true_nearest.size());
  InversionScore score;
  std::vector<double> cosines(truth.rows);
  for (size_t i = 0; i < truth.rows; ++i) cosines[i] = Cosine(reconstructed.row(i), truth.row(i));
  score.mean_cosine = MeanEstimate(cosines);
  if (pool.rows < 2 || truth.rows == 0) return score;
  const std::vector<uint32_t> guessed = NearestOthers(reconstructed, pool, truth_in_pool);
  size_t identified = 0;
  for (size_t i = 0; i < truth.rows; ++i) identified += guessed[i] == true_nearest[i] ? 1 : 0;
  score.identified = ShareEstimate(identified, truth.rows);
  return score;
}

namespace {

constexpr double kQuantiles[] = {0.05, 0.25, 0.5, 0.75, 0.95};
constexpr size_t kFeatures = 2 + std::size(kQuantiles);

// Per dimension: mean, standard deviation with `noise_variance` removed, and quantiles.
std::vector<double> DimensionFeatures(const Matrix& x, double noise_variance) {
  std::vector<double> features(x.cols * kFeatures);
  // Columns gathered in one row-major pass, so that each column is then contiguous.
  std::vector<float> columns(x.rows * x.cols);
  for (size_t i = 0; i < x.rows; ++i) {
    for (size_t j = 0; j < x.cols; ++j) columns[j * x.rows + i] = x.row(i)[j];
  }
  for (size_t j = 0; j < x.cols; ++j) {
    const std::span<float> column(columns.data() + j * x.rows, x.rows);
    double sum = 0, sum_squares = 0;
    for (float v : column) {
      sum += v;
      sum_squares += static_cast<double>(v) * v;
    }
    const double n = static_cast<double>(std::max<size_t>(x.rows, 1));
    const double mean = sum / n;
    const double variance = sum_squares / n - mean * mean;
    double* f = features.data() + j * kFeatures;
    f[0] = mean;
    f[1] = std::sqrt(std::max(0.0, variance - noise_variance));
    // Quantiles in increasing order, each selection narrowing the range of the next.
    auto from = column.begin();
    for (size_t q = 0; q < std::size(kQuantiles) && x.rows > 0; ++q) {
      const auto at = column.begin() + static_cast<std::ptrdiff_t>(
                                           std::min(x.rows - 1, static_cast<size_t>(kQuantiles[q] * n)));
      std::nth_element(from, at, column.end());
      f[2 + q] = *at;
      from = at;
    }
  }
  return features;
}

}  // namespace

std::vector<uint32_t> AlignDimensions(const Matrix& public_plaintexts, const Matrix& ciphertexts,
                                      double noise_variance_per_dimension) {
  assert(public_plaintexts.cols == ciphertexts.cols);
  const size_t d = ciphertexts.cols;
  const std::vector<double> plain = DimensionFeatures(public_plaintexts, 0.0);
  const std::vector<double> cipher = DimensionFeatures(ciphertexts, noise_variance_per_dimension);
  std::vector<double> cost(d * d);
  for (size_t j = 0; j < d; ++j) {
    for (size_t i = 0; i < d; ++i) {
      double sum = 0;
      for (size_t f = 0; f < kFeatures; ++f) {
        const double delta = cipher[j * kFeatures + f] - plain[i * kFeatures + f];
        sum += delta * delta;
      }
      cost[j * d + i] = sum;
    }
  }
  return MinimumCostAssignment(cost, d);
}

Estimate RecoveredDimensionShare(std::span<const uint32_t> guess, const Matrix& transform) {
  assert(transform.rows == guess.size() && transform.cols == guess.size());
  size_t recovered = 0;
  for (size_t j = 0; j < guess.size(); ++j) {
    const double weight = transform.row(j)[guess[j]];
    recovered += weight * weight >= 0.5 ? 1 : 0;
  }
  return ShareEstimate(recovered, guess.size());
}

std::vector<uint32_t> MinimumCostAssignment(std::span<const double> cost, size_t n) {
  assert(cost.size() == n * n);
  // The Hungarian method with potentials (Kuhn–Munkres, O(n³)): rows are added one at a time,
  // each along a shortest augmenting path in reduced costs. Index 0 is a sentinel column.
  constexpr double kInfinity = std::numeric_limits<double>::infinity();
  std::vector<double> row_potential(n + 1, 0.0), column_potential(n + 1, 0.0);
  std::vector<size_t> column_owner(n + 1, 0), previous(n + 1, 0);
  std::vector<double> slack(n + 1);
  std::vector<char> visited(n + 1);
  for (size_t row = 1; row <= n; ++row) {
    column_owner[0] = row;
    size_t column = 0;
    std::ranges::fill(slack, kInfinity);
    std::ranges::fill(visited, char{0});
    do {
      visited[column] = 1;
      const size_t owner = column_owner[column];
      double delta = kInfinity;
      size_t next = 0;
      for (size_t c = 1; c <= n; ++c) {
        if (visited[c]) continue;
        const double reduced =
            cost[(owner - 1) * n + (c - 1)] - row_potential[owner] - column_potential[c];
        if (reduced < slack[c]) {
          slack[c] = reduced;
          previous[c] = column;
        }
        if (slack[c] < delta) {
          delta = slack[c];
          next = c;
        }
      }
      for (size_t c = 0; c <= n; ++c) {
        if (visited[c]) {
          row_potential[column_owner[c]] += delta;
          column_potential[c] -= delta;
        } else {
          slack[c] -= delta;
        }
      }
      column = next;
    } while (column_owner[column] != 0);
    do {
      const size_t from = previous[column];
      column_owner[column] = column_owner[from];
      column = from;
    } while (column != 0);
  }
  std::vector<uint32_t> assignment(n);
  for (size_t c = 1; c <= n; ++c) assignment[column_owner[c] - 1] = static_cast<uint32_t>(c - 1);
  return assignment;
}

}  // namespace vecseal::calibrate
