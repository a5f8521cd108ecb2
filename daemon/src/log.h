// Structured log lines on stderr (journald under systemd): `level=... event=... key=value ...`.
// Callers pass only operational facts: never vectors, key bytes, tokens or the PIN.
#pragma once

#include <cstdio>
#include <string>
#include <string_view>

namespace vecseal::daemon {

// Quotes a value when it contains spaces, quotes or '=' so that lines stay machine-parsable.
inline std::string LogValue(std::string_view value) {
  if (!value.empty() && value.find_first_of(" \"=\n\\") == std::string_view::npos) {
    return std::string(value);
  }
  std::string quoted = "\"";
  for (char c : value) {
    if (c == '"' || c == '\\') quoted += '\\';
    quoted += c == '\n' ? ' ' : c;
  }
  return quoted + '"';
}

inline void LogLine(std::string_view level, std::string_view event, std::string_view fields = {}) {
  std::string line = "level=" + std::string(level) + " event=" + std::string(event);
  if (!fields.empty()) line += ' ' + std::string(fields);
  line += '\n';
  std::fwrite(line.data(), 1, line.size(), stderr);
}

}  // namespace vecseal::daemon
