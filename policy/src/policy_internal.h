// Shared by policy.cc and trusted_file.cc.
#pragma once

#include <sys/stat.h>

#include <string>
#include <string_view>

#include "vecseal/core/status.h"

namespace vecseal::policy::internal {

// CheckTrustedFile, also returning the stat of the resolved file so a later open can confirm it
// opened that same file.
Status CheckTrustedFileStat(const std::string& path, struct stat* file_stat);

// Matches a key name against a pattern of '*' (any run, possibly empty) and '?' (one character).
bool GlobMatch(std::string_view pattern, std::string_view name);

}  // namespace vecseal::policy::internal
