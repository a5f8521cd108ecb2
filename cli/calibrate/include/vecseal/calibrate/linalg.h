// The little dense linear algebra calibration needs: row-major matrices, Euclidean nearest
// neighbours and a Cholesky solve. Written for clarity and cache reuse, not for BLAS speed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace vecseal::calibrate {

// rows×cols floats, row-major: the layout of .npy files and of Cipher's batches.
struct Matrix {
  Matrix() = default;
  Matrix(size_t row_count, size_t col_count)
      : rows(row_count), cols(col_count), values(row_count * col_count) {}

  std::span<float> row(size_t i) { return {values.data() + i * cols, cols}; }
  std::span<const float> row(size_t i) const { return {values.data() + i * cols, cols}; }

  size_t rows = 0;
  size_t cols = 0;
  std::vector<float> values;
};

Matrix SelectRows(const Matrix& matrix, std::span<const size_t> indices);

float Dot(std::span<const float> a, std::span<const float> b);
float SquaredDistance(std::span<const float> a, std::span<const float> b);
double Cosine(std::span<const float> a, std::span<const float> b);

// For every row of `queries`, the indices of its k nearest rows of `base` (Euclidean, nearest
// first, ties to the lower index), as queries.rows × k entries. Requires k <= base.rows.
std::vector<uint32_t> NearestNeighbours(const Matrix& queries, const Matrix& base, size_t k);

// Solves A·X = B in place (B becomes X) for a symmetric positive definite n×n matrix A, held
// row-major in doubles, and an n×m right-hand side. Returns false if A is not positive definite.
bool CholeskySolve(std::vector<double>& a, size_t n, std::vector<double>& b, size_t m);

}  // namespace vecseal::calibrate
