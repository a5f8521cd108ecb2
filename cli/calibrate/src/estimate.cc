#include "vecseal/calibrate/estimate.h"

#include <cmath>

namespace vecseal::calibrate {

namespace {
constexpr double kZ95 = 1.959964;
}

Estimate MeanEstimate(std::span<const double> samples) {
  if (samples.empty()) return {};
  const double n = static_cast<double>(samples.size());
  double sum = 0;
  for (double v : samples) sum += v;
  const double mean = sum / n;
  if (samples.size() < 2) return {mean, 0};
  double squares = 0;
  for (double v : samples) squares += (v - mean) * (v - mean);
  return {mean, kZ95 * std::sqrt(squares / (n - 1) / n)};
}

Estimate ShareEstimate(size_t successes, size_t trials) {
  if (trials == 0) return {};
  const double n = static_cast<double>(trials);
  const double p = static_cast<double>(successes) / n;
  return {p, kZ95 * std::sqrt(p * (1 - p) / n)};
}

}  // namespace vecseal::calibrate
