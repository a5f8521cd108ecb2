// Input checks of docs/format.md §8: every refusal names its reason and, where there is one, the
// offending vector.
#include <cmath>
#include <cstdio>
#include <string>

#include "kernels.h"
#include "vecseal/core/cipher.h"

namespace vecseal::core {
namespace {

std::string FormatDouble(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char text[32];
  std::snprintf(text, sizeof(text), "%g", value);
  return text;
}

}  // namespace

std::string_view TransformName(TransformKind kind) {
  switch (kind) {
    case TransformKind::kPermute:
      return "permute";
    case TransformKind::kRotate:
      return "rotate";
  }
  return "unknown";
}

Result<TransformKind> ParseTransform(std::string_view name) {
  if (name == "permute") return TransformKind::kPermute;
  if (name == "rotate") return TransformKind::kRotate;
  return Status(Code::kInvalidArgument, "invalid_transform",
                "unknown transform \"" + std::string(name) + "\"; use \"permute\" or \"rotate\"");
}

Status ValidateParams(const SchemeParams& params) {
  if (!std::isfinite(params.approximation_factor) || params.approximation_factor <= 0) {
    return Status(Code::kInvalidArgument, "invalid_approximation_factor",
                  "the approximation factor beta must be finite and greater than 0, got " +
                      FormatDouble(params.approximation_factor));
  }
  if (params.transform != TransformKind::kPermute && params.transform != TransformKind::kRotate) {
    return Status(Code::kInvalidArgument, "invalid_transform",
                  "unknown transform id " + std::to_string(static_cast<int>(params.transform)));
  }
  return Status::Ok();
}

Status ValidateDimension(size_t dimension, TransformKind transform) {
  if (dimension == 0 || dimension > kMaxDimension) {
    return Status(Code::kInvalidArgument, "invalid_dimension",
                  "the dimension must be between 1 and " + std::to_string(kMaxDimension) +
                      ", got " + std::to_string(dimension));
  }
  if (transform == TransformKind::kRotate && dimension > kMaxRotateDimension) {
    return Status(Code::kInvalidArgument, "invalid_dimension",
                  "the rotate transform supports dimensions up to " +
                      std::to_string(kMaxRotateDimension) + ", got " + std::to_string(dimension) +
                      "; use the permute transform for larger vectors");
  }
  return Status::Ok();
}

Status ValidateVectors(std::span<const float> data, size_t dimension) {
  if (dimension == 0) {
    return Status(
        Code::kInvalidArgument, "invalid_dimension",
        "the dimension must be between 1 and " + std::to_string(kMaxDimension) + ", got 0");
  }
  if (data.size() % dimension != 0) {
    return Status(Code::kInvalidArgument, "invalid_length",
                  "the input holds " + std::to_string(data.size()) +
                      " values, which is not a whole number of vectors of dimension " +
                      std::to_string(dimension));
  }
  if (detail::AllFinite(data.data(), data.size())) return Status::Ok();
  for (size_t i = 0; i < data.size(); ++i) {
    if (!std::isfinite(data[i])) {
      const size_t vector = i / dimension;
      return Status(Code::kInvalidArgument, "non_finite_value",
                    "vector " + std::to_string(vector) + " has a non-finite value (" +
                        FormatDouble(data[i]) + ") at component " + std::to_string(i % dimension))
          .WithVectorIndex(vector);
    }
  }
  return Status::Ok();
}

Status ValidateResults(std::span<const float> data, size_t dimension) {
  if (detail::AllFinite(data.data(), data.size())) return Status::Ok();
  for (size_t i = 0; i < data.size(); ++i) {
    if (!std::isfinite(data[i])) {
      const size_t vector = i / dimension;
      return Status(Code::kInvalidArgument, "non_finite_value",
                    "vector " + std::to_string(vector) +
                        " cannot be encrypted or decrypted: its result would not be finite at "
                        "component " +
                        std::to_string(i % dimension) +
                        " (its values are too close to float32's limit of 3.4e38)")
          .WithVectorIndex(vector);
    }
  }
  return Status::Ok();
}

Result<size_t> CommonDimension(std::span<const size_t> row_lengths) {
  if (row_lengths.empty()) {
    return Status(Code::kInvalidArgument, "invalid_length", "there are no vectors");
  }
  const size_t dimension = row_lengths[0];
  for (size_t i = 1; i < row_lengths.size(); ++i) {
    if (row_lengths[i] != dimension) {
      return Status(Code::kInvalidArgument, "dimension_mismatch",
                    "vector " + std::to_string(i) + " has " + std::to_string(row_lengths[i]) +
                        " components but vector 0 has " + std::to_string(dimension))
          .WithVectorIndex(i);
    }
  }
  return dimension;
}

}  // namespace vecseal::core
