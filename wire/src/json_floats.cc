#include "vecseal/wire/json_floats.h"

#include <array>
#include <charconv>
#include <cmath>
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

float ParseFloat32(std::string_view text) {
  float value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error == std::errc() && end == text.data() + text.size()) return value;
  double wide = 0;
  std::from_chars(text.data(), text.data() + text.size(), wide);
  if (std::isfinite(wide) && std::fabs(wide) < 1.0) return static_cast<float>(wide);
  return std::signbit(wide) ? -std::numeric_limits<float>::infinity()
                            : std::numeric_limits<float>::infinity();
}

}  // namespace vecseal::wire
