// A measured mean or share with the half-width of its normal-approximation 95% interval, so that
// a reader can tell a real difference between two β from sampling noise.
#pragma once

#include <cstddef>
#include <span>

namespace vecseal::calibrate {

struct Estimate {
  double value = 0;
  double ci95 = 0;
};

Estimate MeanEstimate(std::span<const double> samples);
Estimate ShareEstimate(size_t successes, size_t trials);

}  // namespace vecseal::calibrate
