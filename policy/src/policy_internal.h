// Shared by policy.cc, trusted_file.cc and check_policy.cc.
#pragma once

#include <sys/stat.h>

#include <string>
#include <string_view>

#include "vecseal/core/status.h"

namespace vecseal::policy::internal {

// `s` in single quotes, with control and non-ASCII bytes escaped, for error messages and output.
std::string Quote(std::string_view s);

// CheckTrustedFile, also returning the stat of the resolved file so a later open can confirm it
// opened that same file.
Status CheckTrustedFileStat(const std::string& path, struct stat* file_stat);

// Matches a key name against a pattern of '*' (any run, possibly empty) and '?' (one character).
bool GlobMatch(std::string_view pattern, std::string_view name);

}  // namespace vecseal::policy::internal
