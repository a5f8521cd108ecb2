#include "vecseal/calibrate/learners.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <deque>
#include <limits>

#include "clones.h"

namespace vecseal::calibrate {

Labels KnnPredict(const Matrix& train, std::span<const uint32_t> train_labels,
                  const Matrix& test, size_t k, size_t classes) {
  assert(train.rows == train_labels.size());
  k = std::min(k, train.rows);
  const std::vector<uint32_t> neighbours = NearestNeighbours(test, train, k);
  Labels predicted(test.rows);
  std::vector<uint32_t> votes(classes);
  for (size_t q = 0; q < test.rows; ++q) {
    std::ranges::fill(votes, 0u);
    const uint32_t* nearest = neighbours.data() + q * k;
    for (size_t i = 0; i < k; ++i) ++votes[train_labels[nearest[i]]];
    const uint32_t top = *std::ranges::max_element(votes);
    // Neighbours come nearest first, so the first one with a top-voted class breaks the tie.
    for (size_t i = 0; i < k; ++i) {
      if (votes[train_labels[nearest[i]]] == top) {
        predicted[q] = train_labels[nearest[i]];
        break;
      }
    }
  }
  return predicted;
}

Estimate Accuracy(std::span<const uint32_t> predicted, std::span<const uint32_t> truth) {
  assert(predicted.size() == truth.size());
  size_t right = 0;
  for (size_t i = 0; i < truth.size(); ++i) right += predicted[i] == truth[i] ? 1 : 0;
  return ShareEstimate(right, truth.size());
}

namespace {

// Standardised rows with a trailing 1 for the bias.
Matrix Standardise(const Matrix& x, std::span<const float> mean, std::span<const float> scale) {
  Matrix z(x.rows, x.cols + 1);
  for (size_t i = 0; i < x.rows; ++i) {
    const auto in = x.row(i);
    auto out = z.row(i);
    for (size_t j = 0; j < x.cols; ++j) out[j] = (in[j] - mean[j]) * scale[j];
    out[x.cols] = 1.0f;
  }
  return z;
}

// gradient[c] += residuals[c]·z for every class c (rows of `width`).
VECSEAL_CALIBRATE_HOT void AddResiduals(
    const float* z, const double* residuals, size_t classes, size_t width, double* gradient) {
  for (size_t c = 0; c < classes; ++c) {
    const double r = residuals[c];
    double* g = gradient + c * width;
#pragma omp simd
    for (size_t j = 0; j < width; ++j) g[j] += r * z[j];
  }
}

// Loss and gradient of the penalised mean cross-entropy at `w` (classes × width).
class Objective {
 public:
  Objective(const Matrix& z, std::span<const uint32_t> labels, size_t classes, double l2)
      : z_(z), labels_(labels), classes_(classes), l2_(l2), logits_(classes),
        weights_(classes * z.cols) {}

  double Evaluate(const std::vector<double>& w, std::vector<double>& gradient) {
    const size_t width = z_.cols;
    std::ranges::copy(w, weights_.begin());
    std::ranges::fill(gradient, 0.0);
    double loss = 0;
    for (size_t i = 0; i < z_.rows; ++i) {
      const auto zi = z_.row(i);
      double max_logit = -std::numeric_limits<double>::infinity();
      for (size_t c = 0; c < classes_; ++c) {
        logits_[c] = Dot(zi, std::span<const float>(weights_.data() + c * width, width));
        max_logit = std::max(max_logit, logits_[c]);
      }
      double partition = 0;
      for (size_t c = 0; c < classes_; ++c) {
        logits_[c] = std::exp(logits_[c] - max_logit);
        partition += logits_[c];
      }
      loss += std::log(partition) + max_logit -
              (std::log(logits_[labels_[i]]) + max_logit);
      for (size_t c = 0; c < classes_; ++c) {
        logits_[c] = logits_[c] / partition - (c == labels_[i] ? 1.0 : 0.0);
      }
      AddResiduals(zi.data(), logits_.data(), classes_, width, gradient.data());
    }
    const double inverse_n = 1.0 / static_cast<double>(z_.rows);
    loss *= inverse_n;
    for (size_t c = 0; c < classes_; ++c) {
      for (size_t j = 0; j < width; ++j) {
        const size_t p = c * width + j;
        gradient[p] *= inverse_n;
        if (j + 1 < width) {
          gradient[p] += l2_ * w[p];
          loss += 0.5 * l2_ * w[p] * w[p];
        }
      }
    }
    return loss;
  }

 private:
  const Matrix& z_;
  std::span<const uint32_t> labels_;
  size_t classes_;
  double l2_;
  std::vector<double> logits_;
  std::vector<float> weights_;
};

double DotD(const std::vector<double>& a, const std::vector<double>& b) {
  double sum = 0;
  for (size_t i = 0; i < a.size(); ++i) sum += a[i] * b[i];
  return sum;
}

}  // namespace

LogisticRegression LogisticRegression::Fit(const Matrix& train, std::span<const uint32_t> labels,
                                           size_t classes,
                                           const LogisticRegressionOptions& options) {
  assert(train.rows == labels.size() && train.rows > 0 && classes > 0);
  LogisticRegression model;
  model.classes_ = classes;
  model.mean_.assign(train.cols, 0.0f);
  model.inverse_scale_.assign(train.cols, 1.0f);
  for (size_t j = 0; j < train.cols; ++j) {
    double sum = 0, sum_squares = 0;
    for (size_t i = 0; i < train.rows; ++i) {
      sum += train.row(i)[j];
      sum_squares += static_cast<double>(train.row(i)[j]) * train.row(i)[j];
    }
    const double mean = sum / static_cast<double>(train.rows);
    const double variance = std::max(0.0, sum_squares / static_cast<double>(train.rows) - mean * mean);
    model.mean_[j] = static_cast<float>(mean);
    // A constant feature carries nothing; leave it at scale 1 rather than divide by zero.
    if (variance > 1e-12) model.inverse_scale_[j] = static_cast<float>(1.0 / std::sqrt(variance));
  }
  const Matrix z = Standardise(train, model.mean_, model.inverse_scale_);
  Objective objective(z, labels, classes, options.l2);

  const size_t size = classes * z.cols;
  std::vector<double> w(size, 0.0), gradient(size), next_w(size), next_gradient(size);
  std::vector<double> direction(size);
  double loss = objective.Evaluate(w, gradient);
  std::deque<std::vector<double>> steps, gradient_changes;
  std::deque<double> curvatures;
  std::vector<double> alphas;
  for (int iteration = 0; iteration < options.max_iterations; ++iteration) {
    // Two-loop recursion: direction = -H·gradient from the last `history` curvature pairs.
    direction = gradient;
    alphas.assign(steps.size(), 0.0);
    for (size_t m = steps.size(); m-- > 0;) {
      alphas[m] = DotD(steps[m], direction) / curvatures[m];
      for (size_t p = 0; p < size; ++p) direction[p] -= alphas[m] * gradient_changes[m][p];
    }
    if (!steps.empty()) {
      const double scale = curvatures.back() / DotD(gradient_changes.back(), gradient_changes.back());
      for (double& v : direction) v *= scale;
    } else {
      const double norm = std::sqrt(DotD(gradient, gradient));
      for (double& v : direction) v /= std::max(norm, 1.0);
    }
    for (size_t m = 0; m < steps.size(); ++m) {
      const double beta = DotD(gradient_changes[m], direction) / curvatures[m];
      for (size_t p = 0; p < size; ++p) direction[p] += (alphas[m] - beta) * steps[m][p];
    }
    for (double& v : direction) v = -v;

    double slope = DotD(gradient, direction);
    if (slope >= 0) {  // not a descent direction: restart from steepest descent
      steps.clear();
      gradient_changes.clear();
      curvatures.clear();
      for (size_t p = 0; p < size; ++p) direction[p] = -gradient[p];
      slope = DotD(gradient, direction);
    }
    double step = 1.0;
    double next_loss = 0;
    bool accepted = false;
    for (int trial = 0; trial < 30; ++trial, step *= 0.5) {
      for (size_t p = 0; p < size; ++p) next_w[p] = w[p] + step * direction[p];
      next_loss = objective.Evaluate(next_w, next_gradient);
      if (next_loss <= loss + 1e-4 * step * slope) {
        accepted = true;
        break;
      }
    }
    if (!accepted) break;

    std::vector<double> s(size), y(size);
    for (size_t p = 0; p < size; ++p) {
      s[p] = next_w[p] - w[p];
      y[p] = next_gradient[p] - gradient[p];
    }
    const double curvature = DotD(s, y);
    if (curvature > 1e-12) {
      steps.push_back(std::move(s));
      gradient_changes.push_back(std::move(y));
      curvatures.push_back(curvature);
      if (steps.size() > static_cast<size_t>(options.history)) {
        steps.pop_front();
        gradient_changes.pop_front();
        curvatures.pop_front();
      }
    }
    const double improvement = loss - next_loss;
    w.swap(next_w);
    gradient.swap(next_gradient);
    loss = next_loss;
    if (improvement < 1e-9 * std::max(1.0, std::abs(loss))) break;
  }
  model.final_loss_ = loss;
  model.weights_.assign(w.begin(), w.end());
  return model;
}

Labels LogisticRegression::Predict(const Matrix& test) const {
  const Matrix z = Standardise(test, mean_, inverse_scale_);
  Labels predicted(test.rows);
  for (size_t i = 0; i < z.rows; ++i) {
    float best = -std::numeric_limits<float>::infinity();
    for (size_t c = 0; c < classes_; ++c) {
      const float logit = Dot(z.row(i), std::span<const float>(weights_.data() + c * z.cols, z.cols));
      if (logit > best) {
        best = logit;
        predicted[i] = static_cast<uint32_t>(c);
      }
    }
  }
  return predicted;
}

}  // namespace vecseal::calibrate
