#include "vecseal/wire/key_name.h"

#include <algorithm>
#include <string>

namespace vecseal::wire {
namespace {

bool IsLowerAlphanumeric(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

// The name is caller input echoed back (over HTTP, onto a terminal): printable and bounded.
std::string Printable(std::string_view name) {
  std::string out;
  for (char c : name.substr(0, kMaxKeyNameLength)) {
    out += (c >= 0x20 && c < 0x7f && c != '\'') ? c : '?';
  }
  if (name.size() > kMaxKeyNameLength) out += "...";
  return out;
}

}  // namespace

bool IsKeyNameCharacter(char c) {
  return IsLowerAlphanumeric(c) || c == '.' || c == '_' || c == '-';
}

Status CheckKeyName(std::string_view name) {
  if (!name.empty() && name.size() <= kMaxKeyNameLength && IsLowerAlphanumeric(name.front()) &&
      std::all_of(name.begin(), name.end(), IsKeyNameCharacter)) {
    return Status::Ok();
  }
  return Status(Code::kInvalidArgument, "invalid_key_name",
                "key name '" + Printable(name) +
                    "' is invalid (1-64 characters: a-z 0-9 . _ -, starting with a letter or "
                    "digit)");
}

}  // namespace vecseal::wire
