// vecseald's config parser (daemon::ParseConfig), both as a production config and as a dev-mode
// overlay. Invariants: a refusal is invalid_config with a message that starts with the JSON path
// ("$..."); an accepted config holds only values inside the documented ranges; the overlay kind
// accepts everything the production kind accepts; parsing is deterministic and a config is never
// a restart-only change from itself.
#include <string_view>

#include "fuzz_util.h"
#include "vecseal/daemon/config.h"

namespace {

using vecseal::daemon::Config;
using vecseal::daemon::ConfigKind;

void CheckRanges(const Config& config, ConfigKind kind) {
  const auto& limits = config.limits;
  VECSEAL_FUZZ_CHECK(limits.max_body_bytes >= 64 && limits.max_body_bytes <= (1ull << 32),
                     "max_body_bytes %zu", limits.max_body_bytes);
  VECSEAL_FUZZ_CHECK(limits.max_vectors >= 1 && limits.max_vectors <= 10'000'000,
                     "max_vectors %zu", limits.max_vectors);
  VECSEAL_FUZZ_CHECK(limits.max_connections >= 1 && limits.max_connections <= 65536,
                     "max_connections %zu", limits.max_connections);
  VECSEAL_FUZZ_CHECK(limits.max_header_bytes >= 1024 && limits.max_header_bytes <= (1u << 20),
                     "max_header_bytes %zu", limits.max_header_bytes);
  for (auto timeout : {limits.header_timeout, limits.body_timeout, limits.idle_timeout,
                       limits.write_timeout, config.audit.sync_interval}) {
    VECSEAL_FUZZ_CHECK(timeout.count() > 0, "a timeout of %lld ms",
                       static_cast<long long>(timeout.count()));
  }
  VECSEAL_FUZZ_CHECK(config.threads.io >= 1 && config.threads.io <= 64, "threads.io %u",
                     config.threads.io);
  VECSEAL_FUZZ_CHECK(config.threads.workers >= 1 && config.threads.workers <= 256,
                     "threads.workers %u", config.threads.workers);
  VECSEAL_FUZZ_CHECK(config.pkcs11.sessions >= 1 && config.pkcs11.sessions <= 256,
                     "pkcs11.sessions %zu", config.pkcs11.sessions);
  VECSEAL_FUZZ_CHECK(config.group_size >= 1 && config.group_size <= 4096, "group_size %u",
                     config.group_size);
  VECSEAL_FUZZ_CHECK((config.socket.mode & 0007) == 0 && (config.socket.mode & 0600) == 0600,
                     "socket.mode %o", config.socket.mode);
  VECSEAL_FUZZ_CHECK(config.pkcs11.token_label.size() <= 32, "token_label of %zu bytes",
                     config.pkcs11.token_label.size());
  VECSEAL_FUZZ_CHECK(config.pkcs11.pin.file.empty() || config.pkcs11.pin.credential.empty(),
                     "both PIN sources set");
  VECSEAL_FUZZ_CHECK(config.pkcs11.pin.credential.find('/') == std::string::npos,
                     "a credential name with '/'");
  if (kind == ConfigKind::kDaemon) {
    VECSEAL_FUZZ_CHECK(!config.pkcs11.pin.file.empty() || !config.pkcs11.pin.credential.empty(),
                       "a production config without a PIN source");
  }
  VECSEAL_FUZZ_CHECK(config.audit.rotate_bytes >= (1u << 20), "rotate_bytes %llu",
                     static_cast<unsigned long long>(config.audit.rotate_bytes));
  VECSEAL_FUZZ_CHECK(config.audit.seal_every_records >= 1, "seal_every_records 0");
  VECSEAL_FUZZ_CHECK(config.audit.seal_every.count() >= 1 && config.audit.seal_every.count() <= 86400,
                     "seal_every %lld s", static_cast<long long>(config.audit.seal_every.count()));
}

void CheckOne(std::string_view text, ConfigKind kind) {
  auto parsed = vecseal::daemon::ParseConfig(text, kind);
  if (!parsed.ok()) {
    const vecseal::Status& error = parsed.status();
    vecseal::fuzz::CheckTypedError(error, {"invalid_config"});
    VECSEAL_FUZZ_CHECK(error.code() == vecseal::Code::kInvalidArgument, "code %d",
                       static_cast<int>(error.code()));
    VECSEAL_FUZZ_CHECK(error.message().starts_with("$"), "message without a JSON path: %s",
                       error.message().c_str());
    return;
  }
  CheckRanges(*parsed, kind);
  VECSEAL_FUZZ_CHECK(!vecseal::daemon::RestartOnlyChange(*parsed, *parsed),
                     "a config differs from itself");
  auto again = vecseal::daemon::ParseConfig(text, kind);
  VECSEAL_FUZZ_CHECK(again.ok(), "second parse failed: %s", again.status().ToString().c_str());
  const auto changed = vecseal::daemon::RestartOnlyChange(*parsed, *again);
  VECSEAL_FUZZ_CHECK(!changed, "second parse differs in %s", changed->c_str());
  VECSEAL_FUZZ_CHECK(parsed->policy_file == again->policy_file &&
                         parsed->limits.max_vectors == again->limits.max_vectors &&
                         parsed->limits.max_body_bytes == again->limits.max_body_bytes &&
                         parsed->group_size == again->group_size,
                     "second parse differs in a reloadable field");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  CheckOne(text, ConfigKind::kDaemon);
  CheckOne(text, ConfigKind::kDevOverlay);
  // A valid production config is a valid overlay, but for the audit key's own token, which dev
  // mode (one token) refuses by name.
  if (auto production = vecseal::daemon::ParseConfig(text, ConfigKind::kDaemon); production.ok()) {
    auto overlay = vecseal::daemon::ParseConfig(text, ConfigKind::kDevOverlay);
    if (production->audit.pkcs11) {
      VECSEAL_FUZZ_CHECK(!overlay.ok() && overlay.status().message().starts_with("$.audit.pkcs11"),
                         "an overlay accepts audit.pkcs11");
    } else {
      VECSEAL_FUZZ_CHECK(overlay.ok(), "an overlay refuses a valid production config");
    }
  }
  return 0;
}
