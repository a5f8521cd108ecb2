// vecseald's configuration file (/etc/vecseal/vecseald.json, docs/configuration.md). Parsing is
// strict: unknown keys, wrong types and out-of-range values are rejected with the JSON path of
// the problem, so that a typo never silently falls back to a default.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "vecseal/core/deriver.h"
#include "vecseal/core/status.h"
#include "vecseal/pkcs11/hsm.h"

namespace vecseal::daemon {

inline constexpr std::string_view kDefaultConfigPath = "/etc/vecseal/vecseald.json";
inline constexpr std::string_view kDefaultSocketPath = "/run/vecseal/vecseald.sock";
inline constexpr std::string_view kDefaultModulePath = "/usr/lib/softhsm/libsofthsm2.so";

struct SocketConfig {
  std::string path{kDefaultSocketPath};
  mode_t mode = 0660;
  std::string group;  // empty: the daemon's own group
};

// Where the token PIN comes from. Exactly one of the two is set.
struct PinSource {
  std::string file;        // a file holding the PIN (mode 0600 or stricter)
  std::string credential;  // a name under $CREDENTIALS_DIRECTORY (systemd LoadCredential=)

  bool operator==(const PinSource&) const = default;
};

struct Pkcs11Config {
  std::string module{kDefaultModulePath};
  std::string token_label = "vecseal";
  PinSource pin;
  size_t sessions = 1;  // derivation sessions; network HSMs want about one per worker
  bool accept_imported_keys = false;  // pkcs11::HsmConfig::accept_imported_keys
};

struct Limits {
  size_t max_body_bytes = 64 << 20;
  size_t max_vectors = 10000;
  size_t max_connections = 256;
  // One uid's share of max_connections, so that one caller's idle connections cannot lock the
  // others out.
  size_t max_connections_per_uid = 64;
  // Request bodies held in memory at once, across all connections; a body that would exceed it
  // is answered 503 body_memory_exhausted before it is read.
  size_t max_buffered_body_bytes = 256 << 20;
  // Wall time one uid may make the daemon spend, per minute, deriving the transforms of key
  // versions it has not used yet (a token bucket): a rotation at d = 4096 takes seconds of CPU.
  uint64_t derivation_ms_per_minute_per_uid = 30'000;
  // Requests of one uid the policy may refuse per minute (a token bucket holding a minute's
  // worth). Past it, that uid's next connections and requests wait, unread and unidentified,
  // until it has credit again: each refusal costs the daemon an identification and an audit
  // record, and a caller without a grant must not be able to spend them at will.
  uint64_t denied_requests_per_minute_per_uid = 120;
  size_t max_header_bytes = 16 << 10;
  std::chrono::milliseconds header_timeout{10'000};  // first byte to end of headers
  std::chrono::milliseconds body_timeout{60'000};    // end of headers to end of body
  std::chrono::milliseconds idle_timeout{60'000};    // keep-alive wait for the next request
  std::chrono::milliseconds write_timeout{60'000};   // sending one response
};

struct ThreadsConfig {
  unsigned io = 2;       // accept, parse, write
  unsigned workers = 4;  // HSM derivations, encryption, audit writes
};

// A token of the audit key's own, with its own PIN (audit.pkcs11): whoever holds the model-key
// PIN then cannot re-sign seals over an edited log (docs/audit.md).
struct AuditPkcs11Config {
  std::string module;  // the parser fills in pkcs11.module when the file leaves it out
  std::string token_label;
  PinSource pin;

  bool operator==(const AuditPkcs11Config&) const = default;
};

// The audit log (docs/audit.md). Defaults are audit::LogOptions's.
struct AuditConfig {
  std::string directory = "/var/lib/vecseal/audit";
  std::string single_file;                  // one fixed file instead of rotated files in directory
  std::string key_label = "vecseal-audit";  // the signing key's label on the token
  // The kind of audit key generated (docs/audit.md): "auto" (ECDSA P-256 where the token has
  // EC, else RSA-PSS 3072), "ecdsa-p256" or "rsa-pss-3072".
  pkcs11::AuditKeyAlgorithm key_algorithm = pkcs11::AuditKeyAlgorithm::kAuto;
  bool sync_every_record = false;           // fdatasync per record instead of every sync_interval
  std::chrono::milliseconds sync_interval{100};
  uint64_t seal_every_records = 1000;
  std::chrono::seconds seal_every{60};
  uint64_t rotate_bytes = 64ull << 20;
  uint64_t warn_free_bytes = 256ull << 20;
  uint64_t refuse_free_bytes = 64ull << 20;
  bool try_append_only = true;
  std::optional<AuditPkcs11Config> pkcs11;  // none: the audit key is on the model-key token
};

struct Config {
  SocketConfig socket;
  Pkcs11Config pkcs11;
  // Format v1 (hmac) key versions only: vectors per HSM derivation. v2 versions derive every
  // vector's own seed in one call per request, whatever this says.
  uint32_t group_size = 1;
  // The format of keys created without a "derivation" and of every new version made by rotation.
  core::KeyFormat new_keys = core::KeyFormat::kV2;
  Limits limits;
  ThreadsConfig threads;
  std::string policy_file = "/etc/vecseal/policy.json";
  AuditConfig audit;
};

// kDaemon: a production config, which must say where the PIN is. kDevOverlay: the tunables
// given to `vecseald --dev --config FILE`, where dev mode supplies the token and PIN.
enum class ConfigKind { kDaemon, kDevOverlay };

// Parses the JSON text of a config file. Errors are kInvalidArgument, reason "invalid_config",
// with a message that starts with the JSON path (e.g. "$.limits.max_vectors: ...").
Result<Config> ParseConfig(std::string_view json_text, ConfigKind kind = ConfigKind::kDaemon);

// Reads and parses `path`, and refuses an audit.pkcs11 that reaches the model keys' token through
// another path to the same module file. It does not check ownership or mode: callers do that
// with policy::CheckTrustedFile first, so that --check-config and the daemon agree.
Result<Config> LoadConfigFile(const std::string& path, ConfigKind kind = ConfigKind::kDaemon);

// What changes on SIGHUP: the policy path and the limits that new connections see. The socket,
// module, token, PIN, threads and audit settings need a restart; this names the first of those
// that differs, or returns nullopt when a reload can apply `next` in full.
std::optional<std::string> RestartOnlyChange(const Config& current, const Config& next);

}  // namespace vecseal::daemon
