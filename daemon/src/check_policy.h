// `vecseald --check-policy`: validate a policy file and show how it treats one caller.
#pragma once

#include <ostream>
#include <span>
#include <string>

namespace vecseal::daemon {

// The work behind `vecseald --check-policy FILE [--as-pid PID | --as-uid N --exe PATH
// [--unit UNIT] [--script PATH]] [--op OPERATION --key NAME]`. `args` holds what follows
// --check-policy, starting at FILE.
// Prints a verdict to `out`, errors to `err`. Exit status: 0 valid (and granted, when --op was
// given), 1 invalid or untrusted file or unresolvable caller, 2 usage error, 3 valid but denied.
int RunCheckPolicy(std::span<const std::string> args, std::ostream& out, std::ostream& err);

}  // namespace vecseal::daemon
