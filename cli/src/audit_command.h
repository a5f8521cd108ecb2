// `vecseal audit`: verify and show the audit log offline, with the audit library's verifier.
#pragma once

#include <ostream>
#include <span>
#include <string>

namespace vecseal::audit {

// `vecseal audit ARGS...` (ARGS after "audit"): verify | show. Returns the process exit code:
// 0 verified (warnings allowed), 1 alteration found, 2 usage error, 3 cannot read key or files.
int RunAuditCommand(std::span<const std::string> args, std::ostream& out, std::ostream& err);

}  // namespace vecseal::audit
