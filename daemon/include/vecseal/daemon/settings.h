// What a Config asks of the parts that serve requests: the audit log's options and the
// service's settings. Shared by the daemon and the tests that build those parts in process.
#pragma once

#include <string>

#include "vecseal/audit/log.h"
#include "vecseal/daemon/config.h"
#include "vecseal/daemon/service.h"

namespace vecseal::daemon {

// The log's notices go to the daemon's own log (stderr).
audit::LogOptions AuditLogOptions(const AuditConfig& config);

// Dev mode lets a key without a dimension take any size (ServiceSettings).
ServiceSettings ServiceSettingsOf(const Config& config, bool dev);

// Said wherever the config is checked or applied, so that a group size is never ignored
// silently: it cannot apply to format v2 key versions. Empty when there is nothing to say.
std::string GroupSizeNote(const Config& config);

}  // namespace vecseal::daemon
