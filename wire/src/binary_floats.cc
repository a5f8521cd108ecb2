#include "vecseal/wire/binary_floats.h"

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>

namespace vecseal::wire {

void ConvertLittleEndian(std::span<float> values) {
  if constexpr (std::endian::native == std::endian::big) {
    for (float& value : values) {
      value = std::bit_cast<float>(__builtin_bswap32(std::bit_cast<uint32_t>(value)));
    }
  }
}

void AppendLittleEndian(std::string& out, std::span<const float> values) {
  if (values.empty()) return;
  const size_t start = out.size();
  out.resize(start + values.size() * sizeof(float));
  std::memcpy(out.data() + start, values.data(), values.size() * sizeof(float));
  if constexpr (std::endian::native == std::endian::big) {
    for (size_t i = start; i < out.size(); i += sizeof(float)) {
      std::reverse(out.begin() + static_cast<ptrdiff_t>(i),
                   out.begin() + static_cast<ptrdiff_t>(i + sizeof(float)));
    }
  }
}

std::string_view LittleEndianBytes(std::span<const float> values, std::string& scratch) {
  if constexpr (std::endian::native == std::endian::little) {
    return std::string_view(reinterpret_cast<const char*>(values.data()),
                            values.size() * sizeof(float));
  }
  scratch.clear();
  AppendLittleEndian(scratch, values);
  return scratch;
}

void ReadLittleEndian(std::string_view bytes, std::vector<float>& out) {
  out.resize(bytes.size() / sizeof(float));
  if (out.empty()) return;
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(float));
  ConvertLittleEndian(out);
}

}  // namespace vecseal::wire
