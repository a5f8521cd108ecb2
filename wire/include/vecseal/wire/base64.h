// Base64 as the API carries tokens (and the audit log its seals): RFC 4648 with padding, and
// only the canonical form, so that every byte string has exactly one text.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace vecseal::wire {

std::string Base64Encode(std::span<const uint8_t> bytes);

// nullopt unless `text` is exactly what Base64Encode writes for some bytes: the standard
// alphabet, padding to a multiple of 4, and zero bits under the padding.
std::optional<std::vector<uint8_t>> Base64Decode(std::string_view text);

}  // namespace vecseal::wire
