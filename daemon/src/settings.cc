#include "vecseal/daemon/settings.h"

#include "log.h"

namespace vecseal::daemon {

audit::LogOptions AuditLogOptions(const AuditConfig& config) {
  audit::LogOptions options;
  options.dir = config.directory;
  options.single_file = config.single_file;
  options.sync = config.sync_every_record ? audit::LogOptions::Sync::kEveryRecord
                                          : audit::LogOptions::Sync::kInterval;
  options.sync_interval = config.sync_interval;
  options.seal_every_records = config.seal_every_records;
  options.seal_every = config.seal_every;
  options.rotate_bytes = config.rotate_bytes;
  options.warn_free_bytes = config.warn_free_bytes;
  options.refuse_free_bytes = config.refuse_free_bytes;
  options.try_append_only = config.try_append_only;
  options.notice = [](std::string_view level, std::string_view message) {
    LogLine(level, "audit_notice", "message=" + LogValue(message));
  };
  return options;
}

ServiceSettings ServiceSettingsOf(const Config& config, bool dev) {
  return ServiceSettings{.group_size = config.group_size,
                         .new_keys = config.new_keys,
                         .max_vectors = config.limits.max_vectors,
                         .derivation_ms_per_minute_per_uid =
                             config.limits.derivation_ms_per_minute_per_uid,
                         .fix_dimension_at_first_use = !dev};
}

std::string GroupSizeNote(const Config& config) {
  if (config.group_size == 1) return "";
  return "derivation.group_size=" + std::to_string(config.group_size) +
         " applies to format v1 (hmac) key versions only; format v2 (aes) versions derive every "
         "vector's own seed in one HSM call per request";
}


}  // namespace vecseal::daemon
