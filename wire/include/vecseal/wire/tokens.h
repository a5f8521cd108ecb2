// Tokens on the wire: in JSON, each is the base64 (wire/base64.h) of its core::kTokenSize bytes;
// in a binary decrypt body, the n tokens' raw bytes follow the n vectors.
#pragma once

#include <optional>
#include <string_view>

#include "vecseal/core/cipher.h"

namespace vecseal::wire {

// nullopt unless `text` is the canonical base64 of exactly core::kTokenSize bytes.
std::optional<core::Token> DecodeToken(std::string_view text);

}  // namespace vecseal::wire
