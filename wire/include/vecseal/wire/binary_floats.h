// float32 vectors as binary bodies carry them: little-endian, 4 bytes each, row-major. On a
// little-endian host every conversion here is a copy or nothing; NaN payloads pass unchanged.
#pragma once

#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace vecseal::wire {

// Between wire order and host order, in place; the same swap serves both directions.
void ConvertLittleEndian(std::span<float> values);

// The wire bytes of `values`, appended to `out`.
void AppendLittleEndian(std::string& out, std::span<const float> values);

// The wire bytes of `values`: a view of them where the host is little-endian (no copy of
// megabytes per request), else a converted copy held in `scratch`.
std::string_view LittleEndianBytes(std::span<const float> values, std::string& scratch);

// `bytes` (a multiple of 4 long) as host floats in `out`, which it replaces.
void ReadLittleEndian(std::string_view bytes, std::vector<float>& out);

}  // namespace vecseal::wire
