#include "vecseal/wire/json_floats.h"

#include <array>
#include <charconv>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace vecseal::wire {

void AppendFloat(std::string& out, float value) {
  std::array<char, 32> text;
  const auto result = std::to_chars(text.data(), text.data() + text.size(), value);
  out.append(text.data(), result.ptr);
}

void AppendVectorsJson(std::string& out, std::span<const float> values, size_t dimension) {
  out.reserve(out.size() + values.size() * 12 + 8);
  out += '[';
  for (size_t i = 0; i < values.size(); ++i) {
    if (i % dimension == 0) out += (i == 0 ? "[" : "],[");
    else out += ',';
    AppendFloat(out, values[i]);
  }
  if (!values.empty()) out += ']';
  out += ']';
}

namespace {

// For a number outside even double's range: whether its magnitude is above 1, from the position
// of its first significant digit and its exponent (the JSON number grammar, already checked).
bool BeyondOne(std::string_view text) {
  size_t i = (!text.empty() && text[0] == '-') ? 1 : 0;
  int64_t position = 0;  // the power of ten of the first significant digit, plus one
  bool significant = false, fraction = false;
  for (; i < text.size() && text[i] != 'e' && text[i] != 'E'; ++i) {
    if (text[i] == '.') {
      fraction = true;
    } else if (!significant && text[i] == '0') {
      if (fraction) --position;
    } else {
      significant = true;
      if (!fraction) ++position;
    }
  }
  if (!significant) return false;
  int64_t exponent = 0;
  const bool negative = i + 1 < text.size() && text[i + 1] == '-';
  for (size_t j = i + 1; j < text.size(); ++j) {
    if (text[j] >= '0' && text[j] <= '9') {
      exponent = std::min<int64_t>(exponent * 10 + (text[j] - '0'), 1'000'000'000);
    }
  }
  return position + (negative ? -exponent : exponent) > 0;
}

}  // namespace

float ParseFloat32(std::string_view text) {
  float value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error == std::errc() && end == text.data() + text.size()) return value;
  double wide = 0;
  const bool negative = !text.empty() && text[0] == '-';
  if (std::from_chars(text.data(), text.data() + text.size(), wide).ec != std::errc()) {
    wide = BeyondOne(text) ? std::numeric_limits<double>::infinity() : 0.0;  // 1e400, 1e-400
    if (negative) wide = -wide;
  }
  if (std::isfinite(wide) && std::fabs(wide) < 1.0) return static_cast<float>(wide);
  return std::signbit(wide) ? -std::numeric_limits<float>::infinity()
                            : std::numeric_limits<float>::infinity();
}

}  // namespace vecseal::wire
