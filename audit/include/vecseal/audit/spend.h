// The vectors that encrypt and decrypt records say were spent: what budgets are rebuilt from at
// start (docs/policy.md, Budgets) and what `vecseal audit show --sum` adds up. A fast reader of
// the canonical record format (docs/audit.md), not a verifier.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "vecseal/core/status.h"

namespace vecseal::audit {

// One successful encrypt or decrypt. The views live until the callback returns.
struct Spend {
  int64_t time_micros = 0;  // the record's wall-clock time
  std::string_view operation;
  std::string_view rule_id;
  std::string_view key;
  int64_t uid = -1;
  std::string_view unit;  // empty when the caller ran in none
  uint64_t vectors = 0;
};

struct SpendScan {
  uint64_t files_read = 0;
  uint64_t bytes_read = 0;
  uint64_t records = 0;
  uint64_t spends = 0;
  // Set when records are missing (the oldest file does not start at seq 1, or seqs jump between
  // files): the time of the first record after the last such gap. Spends before it are unknown.
  std::optional<int64_t> complete_since_micros;
};

// Calls `each` for every encrypt, decrypt and rewrap record of `files` (oldest first) timed at or after
// `since_micros`. Files last modified more than a minute before `since_micros` are not read
// (only their last record, to see that no file is missing after them). A torn last line (a crash
// mid-write) is skipped, as the writer skips it. Errors (audit_unreadable, kUnavailable): a file
// that cannot be read, or a complete line that is not a record this reader understands; then
// nothing can be said about the spends.
// Records from seq `until_seq` on are left out.
Result<SpendScan> ScanSpends(std::span<const std::string> files, int64_t since_micros,
                             const std::function<void(const Spend&)>& each,
                             uint64_t until_seq = UINT64_MAX);

// A record's "2026-11-25T03:04:31.123456Z" as microseconds since the epoch; nullopt when it is
// not exactly such a time.
std::optional<int64_t> ParseRecordTime(std::string_view text);

}  // namespace vecseal::audit
