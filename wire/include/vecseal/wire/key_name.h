// Key names, as the API (docs/api.md, "Errors") and the HSM's labels take them:
// [a-z0-9][a-z0-9._-]{0,63}.
#pragma once

#include <cstddef>
#include <string_view>

#include "vecseal/core/status.h"

namespace vecseal::wire {

inline constexpr size_t kMaxKeyNameLength = 64;

// One of a-z 0-9 . _ -: what a key name is made of (policy key patterns add only '*' and '?').
bool IsKeyNameCharacter(char c);

// kInvalidArgument "invalid_key_name" unless `name` is a key name; the message (docs/cli.md,
// "DIAGNOSTICS") quotes the name, with bytes that are not printable ASCII shown as '?'.
Status CheckKeyName(std::string_view name);

}  // namespace vecseal::wire
