#include "vecseal/wire/tokens.h"

#include <algorithm>

#include "vecseal/wire/base64.h"

namespace vecseal::wire {

std::optional<core::Token> DecodeToken(std::string_view text) {
  const auto bytes = Base64Decode(text);
  if (!bytes || bytes->size() != core::kTokenSize) return std::nullopt;
  core::Token token;
  std::copy(bytes->begin(), bytes->end(), token.begin());
  return token;
}

}  // namespace vecseal::wire
