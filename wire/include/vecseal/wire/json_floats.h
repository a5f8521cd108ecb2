// float32 vectors as JSON text, bit-exact both ways: the shortest text that reads back as the
// same float32 (std::to_chars), read with one rounding from the decimal text (not via double).
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <string_view>

namespace vecseal::wire {

// Non-finite values come out as "nan" or "inf", which no JSON reader takes: callers refuse
// them before writing.
void AppendFloat(std::string& out, float value);

// [[v, ...], ...] for n×d floats, row-major; "[]" for none.
void AppendVectorsJson(std::string& out, std::span<const float> values, size_t dimension);

// A JSON number's text as float32. Beyond float32's range it is ±inf, so that the vector
// checks report it as non-finite with its index; too small, it underflows to zero or a
// subnormal, as a cast would.
float ParseFloat32(std::string_view text);

}  // namespace vecseal::wire
