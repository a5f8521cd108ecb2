// Synthetic data for calibration tests, where the right answer is known: clustered vectors
// whose dimensions each have their own offset and scale, as real embedding dimensions do.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>

#include "vecseal/calibrate/learners.h"
#include "vecseal/calibrate/linalg.h"

namespace vecseal::calibrate::testing {

struct Clustered {
  Matrix vectors;
  Labels labels;
};

// n vectors in `clusters` Gaussian clusters with unit-variance centres and the given spread
// around them; dimension j is then shifted and scaled by its own amount.
inline Clustered MakeClustered(size_t n, size_t d, size_t clusters, double spread,
                               uint64_t seed) {
  std::mt19937_64 random(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> centres(clusters * d);
  for (double& v : centres) v = normal(random);
  std::vector<double> offset(d), scale(d);
  for (size_t j = 0; j < d; ++j) {
    offset[j] = 2.0 * static_cast<double>(j) / static_cast<double>(d) - 1.0;
    scale[j] = 0.3 + 1.4 * static_cast<double>((j * 7) % d) / static_cast<double>(d);
  }
  Clustered data{Matrix(n, d), Labels(n)};
  for (size_t i = 0; i < n; ++i) {
    const size_t c = i % clusters;
    data.labels[i] = static_cast<uint32_t>(c);
    for (size_t j = 0; j < d; ++j) {
      const double v = centres[c * d + j] + spread * normal(random);
      data.vectors.row(i)[j] = static_cast<float>(offset[j] + scale[j] * v);
    }
  }
  return data;
}

// A Haar-ish random rotation by Gram–Schmidt on Gaussian rows: ciphertext = R·plaintext.
inline Matrix RandomRotation(size_t d, uint64_t seed) {
  std::mt19937_64 random(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> r(d * d);
  for (double& v : r) v = normal(random);
  for (size_t i = 0; i < d; ++i) {
    for (size_t p = 0; p < i; ++p) {
      double dot = 0;
      for (size_t j = 0; j < d; ++j) dot += r[i * d + j] * r[p * d + j];
      for (size_t j = 0; j < d; ++j) r[i * d + j] -= dot * r[p * d + j];
    }
    double norm = 0;
    for (size_t j = 0; j < d; ++j) norm += r[i * d + j] * r[i * d + j];
    norm = std::sqrt(norm);
    for (size_t j = 0; j < d; ++j) r[i * d + j] /= norm;
  }
  Matrix rotation(d, d);
  for (size_t i = 0; i < d * d; ++i) rotation.values[i] = static_cast<float>(r[i]);
  return rotation;
}

inline Matrix RandomPermutationMatrix(size_t d, uint64_t seed) {
  std::vector<size_t> order(d);
  for (size_t i = 0; i < d; ++i) order[i] = i;
  std::mt19937_64 random(seed);
  std::shuffle(order.begin(), order.end(), random);
  Matrix permutation(d, d);
  for (size_t j = 0; j < d; ++j) permutation.row(j)[order[j]] = 1.0f;
  return permutation;
}

// rows of x mapped by `transform` (ciphertext_j = Σ_i T[j][i]·x_i), plus Gaussian noise of the
// given standard deviation per dimension.
inline Matrix Apply(const Matrix& transform, const Matrix& x, double noise, uint64_t seed) {
  std::mt19937_64 random(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  Matrix out(x.rows, transform.rows);
  for (size_t i = 0; i < x.rows; ++i) {
    for (size_t j = 0; j < transform.rows; ++j) {
      out.row(i)[j] = Dot(transform.row(j), x.row(i)) +
                      static_cast<float>(noise * normal(random));
    }
  }
  return out;
}

}  // namespace vecseal::calibrate::testing
