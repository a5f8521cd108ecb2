// The .npy header (NumPy format versions 1.0-3.0), parsed as hostile input: a fuzz target.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "vecseal/core/status.h"

namespace vecseal::client::internal {

inline constexpr std::string_view kNpyMagic = "\x93NUMPY";
// NumPy itself refuses headers above 10000 bytes by default; a little more room costs nothing.
inline constexpr size_t kMaxNpyHeader = 65536;

// What an array may hold: vectors are a 2-D float matrix; a column of labels is 1-D or (n, 1),
// of integers, booleans or floats.
enum class NpyArray { kVectors, kColumn };

struct NpyHeader {
  char kind = 'f';       // 'f' float, 'i' signed, 'u' unsigned integer, 'b' bool (kColumn only)
  size_t item_size = 4;  // in bytes: 4 or 8 for vectors; 1, 2, 4 or 8 for a column
  bool big_endian = false;
  uint64_t rows = 0;
  uint64_t dimension = 0;  // 1 for a column
  uint64_t data_offset = 0;  // preamble + header
};

// The size of the preamble (magic, version, header length) for the given first 8 bytes, or an
// error if they are not an .npy preamble.
Result<size_t> NpyPreambleSize(std::string_view first8);
// `prefix` is the preamble followed by the header text. Errors have reason "invalid_npy" and a
// message without the file name.
Result<NpyHeader> ParseNpyHeader(std::string_view prefix, NpyArray array = NpyArray::kVectors);
// The header of a C-order float32 little-endian array, padded to `total_size` (a multiple of
// 64, at least 128) so that it can be rewritten in place once the row count is known.
std::string FormatNpyHeader(uint64_t rows, uint64_t dimension, size_t total_size);

}  // namespace vecseal::client::internal
