#include "vecseal/calibrate/linalg.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <numeric>

#include "clones.h"

namespace vecseal::calibrate {

Matrix SelectRows(const Matrix& matrix, std::span<const size_t> indices) {
  Matrix out(indices.size(), matrix.cols);
  for (size_t i = 0; i < indices.size(); ++i) {
    std::ranges::copy(matrix.row(indices[i]), out.row(i).begin());
  }
  return out;
}

VECSEAL_CALIBRATE_HOT float Dot(
    std::span<const float> a, std::span<const float> b) {
  assert(a.size() == b.size());
  const float* x = a.data();
  const float* y = b.data();
  float sum = 0;
#pragma omp simd reduction(+ : sum)
  for (size_t i = 0; i < a.size(); ++i) sum += x[i] * y[i];
  return sum;
}

float SquaredDistance(std::span<const float> a, std::span<const float> b) {
  assert(a.size() == b.size());
  const float* x = a.data();
  const float* y = b.data();
  float sum = 0;
#pragma omp simd reduction(+ : sum)
  for (size_t i = 0; i < a.size(); ++i) sum += (x[i] - y[i]) * (x[i] - y[i]);
  return sum;
}

double Cosine(std::span<const float> a, std::span<const float> b) {
  const double norms = std::sqrt(static_cast<double>(Dot(a, a)) * Dot(b, b));
  return norms > 0 ? Dot(a, b) / norms : 0.0;
}

namespace {

// Distances from one query to `count` consecutive base rows, four rows per pass so that each
// load of the query feeds four accumulators. Cloned for AVX-512 and AVX2 and picked at load
// time, because the baseline x86-64 target has only 4-wide SSE.
VECSEAL_CALIBRATE_HOT void DistancesToRows(
    const float* query, const float* base, size_t count, size_t d, float* out) {
  size_t b = 0;
  for (; b + 4 <= count; b += 4) {
    const float* r0 = base + b * d;
    const float* r1 = r0 + d;
    const float* r2 = r1 + d;
    const float* r3 = r2 + d;
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (size_t i = 0; i < d; ++i) {
      const float q = query[i];
      s0 += (q - r0[i]) * (q - r0[i]);
      s1 += (q - r1[i]) * (q - r1[i]);
      s2 += (q - r2[i]) * (q - r2[i]);
      s3 += (q - r3[i]) * (q - r3[i]);
    }
    out[b] = s0;
    out[b + 1] = s1;
    out[b + 2] = s2;
    out[b + 3] = s3;
  }
  for (; b < count; ++b) {
    const float* r = base + b * d;
    float sum = 0;
#pragma omp simd reduction(+ : sum)
    for (size_t i = 0; i < d; ++i) sum += (query[i] - r[i]) * (query[i] - r[i]);
    out[b] = sum;
  }
}

}  // namespace

std::vector<uint32_t> NearestNeighbours(const Matrix& queries, const Matrix& base, size_t k) {
  assert(queries.cols == base.cols && k <= base.rows);
  // Tiles of queries × base rows small enough to stay in L2 while every pair is computed.
  constexpr size_t kQueryTile = 16;
  constexpr size_t kBaseTile = 64;
  std::vector<uint32_t> result(queries.rows * k);
  std::vector<float> distances(kQueryTile * base.rows);
  std::vector<uint32_t> order(base.rows);
  for (size_t q0 = 0; q0 < queries.rows; q0 += kQueryTile) {
    const size_t q1 = std::min(queries.rows, q0 + kQueryTile);
    for (size_t b0 = 0; b0 < base.rows; b0 += kBaseTile) {
      const size_t b1 = std::min(base.rows, b0 + kBaseTile);
      for (size_t q = q0; q < q1; ++q) {
        DistancesToRows(queries.row(q).data(), base.row(b0).data(), b1 - b0, base.cols,
                        distances.data() + (q - q0) * base.rows + b0);
      }
    }
    for (size_t q = q0; q < q1; ++q) {
      const float* dist = distances.data() + (q - q0) * base.rows;
      std::iota(order.begin(), order.end(), 0u);
      const auto closer = [dist](uint32_t x, uint32_t y) {
        return dist[x] < dist[y] || (dist[x] == dist[y] && x < y);
      };
      std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(k), order.end(),
                        closer);
      std::copy_n(order.begin(), k, result.begin() + static_cast<std::ptrdiff_t>(q * k));
    }
  }
  return result;
}

VECSEAL_CALIBRATE_HOT bool CholeskySolve(
    std::vector<double>& a, size_t n, std::vector<double>& b, size_t m) {
  assert(a.size() == n * n && b.size() == n * m);
  // A = L·Lᵀ, with L overwriting the lower triangle of A row by row.
  for (size_t i = 0; i < n; ++i) {
    double* row_i = a.data() + i * n;
    for (size_t j = 0; j <= i; ++j) {
      const double* row_j = a.data() + j * n;
      double sum = 0;
#pragma omp simd reduction(+ : sum)
      for (size_t p = 0; p < j; ++p) sum += row_i[p] * row_j[p];
      sum = row_i[j] - sum;
      if (i == j) {
        if (!(sum > 0) || !std::isfinite(sum)) return false;
        row_i[i] = std::sqrt(sum);
      } else {
        row_i[j] = sum / row_j[j];
      }
    }
  }
  // Forward substitution L·Y = B, then back substitution Lᵀ·X = Y, one row of B at a time so
  // that the inner loops run along contiguous rows.
  for (size_t i = 0; i < n; ++i) {
    double* bi = b.data() + i * m;
    for (size_t p = 0; p < i; ++p) {
      const double l = a[i * n + p];
      const double* bp = b.data() + p * m;
#pragma omp simd
      for (size_t c = 0; c < m; ++c) bi[c] -= l * bp[c];
    }
    const double inverse = 1.0 / a[i * n + i];
    for (size_t c = 0; c < m; ++c) bi[c] *= inverse;
  }
  for (size_t i = n; i-- > 0;) {
    double* bi = b.data() + i * m;
    for (size_t p = i + 1; p < n; ++p) {
      const double l = a[p * n + i];
      const double* bp = b.data() + p * m;
#pragma omp simd
      for (size_t c = 0; c < m; ++c) bi[c] -= l * bp[c];
    }
    const double inverse = 1.0 / a[i * n + i];
    for (size_t c = 0; c < m; ++c) bi[c] *= inverse;
  }
  return true;
}

}  // namespace vecseal::calibrate
