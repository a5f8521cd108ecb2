// The two attacks calibration runs for real against SAP ciphertexts, to measure leakage.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "vecseal/calibrate/estimate.h"
#include "vecseal/calibrate/linalg.h"

namespace vecseal::calibrate {

// Known-plaintext inversion: the attacker holds pairs (c, m) and fits the affine ridge map
// m ≈ W·c + b on them. The ridge strength is relative: λ = ridge · trace(CᵀC)/d.
struct InversionMap {
  Matrix weights;  // d_c × d_m: reconstruction = (c − c_mean)·weights + m_mean
  std::vector<float> cipher_mean;
  std::vector<float> plain_mean;
};
InversionMap FitInversion(const Matrix& ciphertexts, const Matrix& plaintexts, double ridge);
Matrix Reconstruct(const InversionMap& map, const Matrix& ciphertexts);

// What an attacker does before FitInversion: fits on the first 80% of its pairs with each
// candidate ridge and keeps the one that reconstructs the last 20% best (squared error).
// Without it the fit degrades badly near N = d, where the unregularised solution interpolates
// the noise.
double ChooseRidge(const Matrix& ciphertexts, const Matrix& plaintexts,
                   std::span<const double> candidates);

struct InversionScore {
  Estimate mean_cosine;  // between reconstruction and true plaintext
  Estimate identified;   // share whose nearest plaintext neighbour was found, see below
};
// For each row of `vectors`, the nearest row of `pool` other than vectors' own row
// self_in_pool[i].
std::vector<uint32_t> NearestOthers(const Matrix& vectors, const Matrix& pool,
                                    std::span<const size_t> self_in_pool);

// `pool` holds plaintexts the attacker can search (a public corpus, a customer table), and
// truth_in_pool[i] is the row of pool holding truth[i]. A held-out vector counts as identified
// when the nearest pool row to its reconstruction, other than itself, is its own nearest pool
// row other than itself (true_nearest, from NearestOthers): the attacker learns which known
// record it is closest to.
InversionScore ScoreInversion(const Matrix& reconstructed, const Matrix& truth,
                              const Matrix& pool, std::span<const size_t> truth_in_pool,
                              std::span<const uint32_t> true_nearest);

// Ciphertext-only alignment: the attacker knows the public distribution of plaintexts and sees
// ciphertexts only. It summarises every dimension by statistics that a permutation carries over
// (mean, spread with the known noise variance removed, quantiles) and pairs ciphertext with
// plaintext dimensions by a minimum-cost assignment. Returns, for every ciphertext dimension,
// the plaintext dimension it is taken for.
std::vector<uint32_t> AlignDimensions(const Matrix& public_plaintexts, const Matrix& ciphertexts,
                                      double noise_variance_per_dimension);

// The share of ciphertext dimensions j whose guessed plaintext dimension i = guess[j] carries
// most of it: transform[j][i]² ≥ 1/2 for the true orthogonal transform (d×d, row-major,
// ciphertext = transform·plaintext). A permutation guessed right scores 1; no rotation in high
// dimension has entries that large.
Estimate RecoveredDimensionShare(std::span<const uint32_t> guess, const Matrix& transform);

// Minimum-cost perfect matching of an n×n cost matrix (row-major): result[row] = column.
std::vector<uint32_t> MinimumCostAssignment(std::span<const double> cost, size_t n);

}  // namespace vecseal::calibrate
