// The offline verifier: needs only the audit public key (PEM) and the files.
#pragma once

#include <cstdint>
#include <optional>
#include <ostream>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "vecseal/core/status.h"

namespace vecseal::audit {

// One problem, located. `code` is stable snake_case (docs/audit.md lists them all).
struct Finding {
  std::string code;
  std::string file;
  uint64_t line = 0;  // 1-based; 0 when about a whole file
  uint64_t seq = 0;   // 0 when unknown
  std::string message;
};

struct VerifyReport {
  bool ok() const { return !error.has_value(); }

  std::optional<Finding> error;    // the first alteration found; verification stops there
  std::vector<Finding> warnings;   // unclean stop, torn line, unsealed tail of a live log, ...
  uint64_t files = 0;
  uint64_t records = 0;
  uint64_t seals = 0;
  uint64_t first_seq = 0;
  uint64_t last_seq = 0;
  uint64_t last_sealed_seq = 0;  // seq of the last record covered by a valid seal
  uint64_t unsealed_tail = 0;    // records after the last seal
};

// A seal noted outside the files earlier (the daemon logs each one as "audit seal seq N head H"):
// it must still be there, which no chain check can tell if the newest file lost its end.
struct Anchor {
  uint64_t seq = 0;
  std::string head;
};

// What the end of the files must show. A cleanly stopped log ends in a `stop` record and the
// seal right after it; a running daemon's live file ends in records no seal covers yet.
enum class LogEnd {
  kStopped,  // anything else at the end (no seal, unsealed or torn tail, no stop) is an error
  kLive,     // those are warnings (--allow-unsealed-tail); the middle is checked as strictly
};

// The audit-*.jsonl files of `dir`, oldest first. Names sort by their first seq, except that a
// file holding no complete record (a writer killed while starting it leaves one) comes before
// the file with the same first seq that the next start wrote: ids are random, so names alone
// may order the two either way.
Result<std::vector<std::string>> LogFilesInOrder(const std::string& dir);

// `files` in order (oldest first). Fails (rather than reporting) only when the key cannot be
// parsed; an unreadable file is a finding.
Result<VerifyReport> Verify(std::span<const std::string> files, const std::string& pubkey_pem,
                            std::span<const Anchor> anchors = {}, LogEnd end = LogEnd::kStopped);

// True for the findings about the end of the log (no_seal, torn_end, unsealed_end,
// missing_stop, missing_last_file): nothing vouches for the end, rather than something altered.
bool IsEndOfLogFinding(std::string_view code);

}  // namespace vecseal::audit
