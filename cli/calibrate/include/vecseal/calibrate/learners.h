// The two models a data scientist would train on encrypted vectors, to measure what β costs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "vecseal/calibrate/estimate.h"
#include "vecseal/calibrate/linalg.h"

namespace vecseal::calibrate {

// Labels are class indices 0..classes-1, one per row.
using Labels = std::vector<uint32_t>;

// Majority vote of the k nearest training rows; a tied vote goes to the class of the nearest
// row among the tied classes.
Labels KnnPredict(const Matrix& train, std::span<const uint32_t> train_labels,
                  const Matrix& test, size_t k, size_t classes);

struct LogisticRegressionOptions {
  double l2 = 1e-3;  // on the weights of standardised features, not on the biases
  int max_iterations = 100;
  int history = 8;  // L-BFGS memory
};

// Multinomial logistic regression on standardised features, fitted by L-BFGS with a
// backtracking (Armijo) line search.
class LogisticRegression {
 public:
  static LogisticRegression Fit(const Matrix& train, std::span<const uint32_t> labels,
                                size_t classes, const LogisticRegressionOptions& options);
  Labels Predict(const Matrix& test) const;
  // Mean cross-entropy plus penalty at the fitted weights, for tests.
  double final_loss() const { return final_loss_; }

 private:
  size_t classes_ = 0;
  std::vector<float> mean_;
  std::vector<float> inverse_scale_;
  std::vector<float> weights_;  // classes × (cols + 1): the last column is the bias
  double final_loss_ = 0;
};

// The share of right predictions, with its 95% interval.
Estimate Accuracy(std::span<const uint32_t> predicted, std::span<const uint32_t> truth);

}  // namespace vecseal::calibrate
