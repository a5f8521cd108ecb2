// The append-only, hash-chained, HSM-sealed audit log that vecseald writes one record to per
// request or event. The record format, the chain and the seals are specified in docs/audit.md;
// Verify() in verify.h checks them.
//
// Failure is closed: when a record cannot be written (ENOSPC, EIO, EROFS, a failed fdatasync, or
// free space below refuse_free_bytes), Append returns
// Status(Code::kUnavailable, "audit_unavailable", ...) and the caller must refuse the request it
// belongs to. The log stays suspended, and every later Append retries, until a write succeeds
// again; it then writes a "resumed" record that counts the refused events.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "vecseal/audit/file_system.h"
#include "vecseal/audit/signer.h"
#include "vecseal/core/status.h"

namespace vecseal::audit {

// Who called, as the kernel and /proc told the daemon (policy::CallerIdentity).
struct Caller {
  int64_t pid = -1;
  int64_t uid = -1;
  std::string user;
  int64_t gid = -1;
  std::string exe;
  std::string exe_sha256;
  std::string unit;    // systemd unit, if any
  std::string script;  // interpreter script, if any
  // Why exe_sha256 is empty (policy::CallerIdentity::exe_sha256_unknown), such as "not_needed".
  // Last, so that positional initializers of the fields above keep their meaning; the record
  // writes it right after exe_sha256.
  std::string exe_sha256_unknown;
};

// One request or daemon event. Empty strings and empty optionals are left out of the record.
// Never put vector values, tokens, key bytes or the PIN here: Append refuses an `extra` that has
// a field named like one of them ("vector", "vectors", "values", "token", "pin", "secret",
// "key_bytes") with kInvalidArgument "audit_forbidden_field".
struct Event {
  std::string event;  // "encrypt", "decrypt", "deny", "error", "start", "stop", "reload", ...
  std::string request_id;
  std::optional<Caller> caller;
  std::string key;
  std::optional<uint32_t> key_version;
  std::string operation;
  std::optional<uint64_t> vectors;
  std::optional<uint64_t> dimension;
  std::optional<bool> reversible;
  std::string decision;  // "granted" | "denied" | ""
  std::string rule_id;
  std::string error_code;
  nlohmann::json extra;  // null, or an object of small extra fields
};

struct LogOptions {
  enum class Sync { kEveryRecord, kInterval };

  std::string dir;  // files are dir/audit-<first seq, 20 digits>-<file id prefix>.jsonl
  // Write every record to this one path instead of managing files under `dir` (no rotation);
  // for pointing the log at a device such as /dev/full in fail-closed tests.
  std::string single_file;
  uint64_t seal_every_records = 1000;
  std::chrono::seconds seal_every{60};
  uint64_t rotate_bytes = 64ull << 20;
  Sync sync = Sync::kInterval;
  std::chrono::milliseconds sync_interval{100};
  uint64_t warn_free_bytes = 256ull << 20;   // a "space_low" record and a notice below this
  uint64_t refuse_free_bytes = 64ull << 20;  // suspended (fail closed) below this
  uint64_t reserve_bytes = 256ull << 10;     // preallocated for suspended/resumed/final seal
  std::chrono::milliseconds retry_interval{1000};  // between attempts to resume; 0: every Append
  // Set FS_APPEND_FL (chattr +a) on each file; takes only with CAP_LINUX_IMMUTABLE, and such a
  // file cannot be deleted until the flag is cleared, so it is opt-in.
  bool try_append_only = false;
  std::shared_ptr<FileSystem> fs;                  // null: PosixFileSystem()
  // Called (without the log's lock, possibly from several threads at once) for what an operator
  // should see in the daemon's own log: suspension, resumption, low space, seal failures, each
  // seal's seq and head (an anchor kept outside the files), whether append-only took.
  std::function<void(std::string_view level, std::string_view message)> notice;
};

// The last seal written: worth logging elsewhere (journald) as an external anchor, because a
// verifier cannot tell a truncated log from a short one without it.
struct SealInfo {
  std::string file;
  uint64_t seq = 0;   // the seal record's own seq
  std::string head;   // hex SHA-256 of the record before it
};

class Log {
 public:
  // Fails on unusable options, an unreadable dir, a last record it cannot parse, or a signer
  // whose signature does not verify under its own public key. A log that cannot be *written*
  // opens suspended (healthy() false) rather than failing, so that the daemon can start and
  // answer 503 until the disk comes back. A signer whose PublicKeyPem() is kUnavailable (the HSM
  // is not there yet) does not fail it either: records are written and acknowledged as usual,
  // the file_start records leave out key_id, and each seal first fetches the key and checks it
  // as Open would; until that succeeds seals fail and are retried like any failed seal.
  // When the newest file does not end with a stop record (and its seal), the last run was
  // killed or crashed: the new file's second record is then `unclean_stop`, naming the last seq
  // and the last sealed seq found.
  static Result<std::unique_ptr<Log>> Open(LogOptions options, std::shared_ptr<Signer> signer);
  ~Log();  // Close() if not closed
  Log(const Log&) = delete;
  Log& operator=(const Log&) = delete;

  // Thread-safe. Durable per the sync policy when it returns ok; otherwise kUnavailable
  // "audit_unavailable" (refuse the request), or kInvalidArgument for a malformed event.
  Status Append(const Event& event);
  // Writes a seal record now (the daemon need not call it: count, time, rotation and Close seal).
  Status Seal();
  // A stop record (unless the last record other than a seal is one: the daemon writes its own,
  // with its cause), the final seal, fdatasync; stops the flusher. Idempotent. The verifier
  // takes that stop record and its seal as the proof that nothing was cut from the end.
  Status Close();

  bool healthy() const;
  std::optional<SealInfo> last_seal() const;
  std::string current_file() const;
  uint64_t next_seq() const;

  class Impl;

 private:
  explicit Log(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace vecseal::audit
