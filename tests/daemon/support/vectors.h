// Test vectors and their comparison, for the daemon's tests in and out of process.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include <nlohmann/json.hpp>

namespace vecseal::daemon::testing {

inline std::vector<float> RandomVectors(size_t count, size_t dimension, uint32_t seed) {
  std::mt19937 generator(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> values(count * dimension);
  for (float& value : values) value = normal(generator);
  return values;
}

inline nlohmann::json Rows(const std::vector<float>& values, size_t dimension) {
  nlohmann::json rows = nlohmann::json::array();
  for (size_t i = 0; i < values.size(); i += dimension) {
    rows.push_back(std::vector<float>(values.begin() + static_cast<ptrdiff_t>(i),
                                      values.begin() + static_cast<ptrdiff_t>(i + dimension)));
  }
  return rows;
}

// JSON numbers read back as float32, the way a client that honours the API does.
inline std::vector<float> Flatten(const nlohmann::json& rows) {
  std::vector<float> values;
  for (const auto& row : rows) {
    for (const auto& value : row) values.push_back(value.get<float>());
  }
  return values;
}

inline double MaxAbsDifference(const std::vector<float>& a, const std::vector<float>& b) {
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::fabs(double{a[i]} - b[i]));
  return worst;
}

// Decryption is approximate in floating point; this bound is far below the noise (β/4 = 0.05
// in norm for the demo key), so passing it means the noise really was removed.
inline constexpr double kDecryptTolerance = 1e-3;

}  // namespace vecseal::daemon::testing
