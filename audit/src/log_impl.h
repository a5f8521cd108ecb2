// Log::Impl, one object under one mutex whose jobs live in three files: log.cc writes the
// chain (records, files, rotation, durability), log_seal.cc seals it, and log_space.cc runs the
// low-space and suspension state machine.
#pragma once

#include <array>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "record.h"
#include "vecseal/audit/log.h"

namespace vecseal::audit {

// kUnavailable "audit_unavailable".
Status Unavailable(std::string message);
std::string Basename(const std::string& path);
// The signer's public key, once a signature over a fixed digest verifies under it: a signer that
// does not match its own public key would write seals no one can verify.
Result<internal::PublicKey> SelfTestedKey(Signer& signer);

class Log::Impl {
 public:
  Impl(LogOptions options, std::shared_ptr<Signer> signer,
       std::optional<internal::PublicKey> key);

  ~Impl() { (void)Close(); }

  Status Start();
  Status Append(const Event& event);
  Status Seal();
  Status Close();

  bool healthy() const {
    std::lock_guard lock(mu_);
    return healthy_ && !closed_;
  }
  std::optional<SealInfo> last_seal() const {
    std::lock_guard lock(mu_);
    return last_seal_;
  }
  std::string current_file() const {
    std::lock_guard lock(mu_);
    return file_path_;
  }
  uint64_t next_seq() const {
    std::lock_guard lock(mu_);
    return next_seq_;
  }

 private:
  // Finds the chain head: the last complete record of the newest file under dir_.
  Status DiscoverHeadLocked();

  // The seq of the last seal in the newest files (0: none found), read newest first and at most
  // kSealSearchBytes of them, so that a start after a crash does not read back a whole large log.
  uint64_t FindLastSealSeq(const std::vector<std::string>& candidates);

  Status StartFileLocked(std::string_view reason);

  // The file_start record of the current file, retried in the same (still empty) file when it
  // could not be written; then the unclean_stop record that the start found due, if any.
  Status WriteStartLocked();

  // The stop record Close writes when the caller wrote none.
  Status WriteStopLocked();

  // One write() of one record; advances the chain only when every byte landed.
  // With `sync_now` false under the every-record policy the caller waits for a group commit
  // (WaitDurableLocked) instead of syncing here.
  Status WriteRecordLocked(std::string_view body, bool sync_now = true);

  // fdatasync with the lock held. A group-commit fdatasync may be running outside the lock at
  // the same time, and the kernel reports a writeback error to only one of the two: so only
  // the group commit may then declare records durable, and a failure refuses every record
  // written so far.
  Status SyncLocked();

  // After a failed fdatasync the page cache may no longer match the disk: never append to this
  // file again, and acknowledge none of the records waiting for durability.
  void SyncFailedLocked();

  // Group commit for the every-record policy: one thread runs fdatasync for every record
  // written so far while the others wait for it, so that concurrent requests share a sync.
  // A failure is checked before success: a failed sync refuses every record written before it
  // returned, even one that a later sync reported durable (see SyncLocked).
  Status WaitDurableLocked(std::unique_lock<std::mutex>& lock, uint64_t seq);

  Status AppendLocked(std::unique_lock<std::mutex>& lock, std::string_view body, bool is_stop);

  void AfterWriteLocked();
  void RotateLocked();

  // Sealing (log_seal.cc).
  Status SealLocked(std::string_view reason);
  // Seals are retried (by count, by time, at rotation and at close); the operator hears of a
  // failure once per distinct cause, not on every retry.
  Status SealFailedLocked(const Status& cause);

  // Space and suspension (log_space.cc).
  // Free-space thresholds, and the preallocated reserve kept ahead of the end of the file.
  void CheckSpaceLocked();

  // A controlled suspension: the "suspended" record goes into the reserve.
  void SuspendForSpaceLocked(uint64_t free_bytes, std::string_view why);

  void SuspendLocked(Status cause);

  bool TryResumeLocked();

  void FlusherLoop();

  void Notice(std::string level, std::string message) {
    if (options_.notice) pending_notices_.emplace_back(std::move(level), std::move(message));
  }

  // Delivers queued notices without the lock held, so that the callback may take its own locks.
  void FlushNoticesUnlocking(std::unique_lock<std::mutex>& lock);

  const LogOptions options_;
  const std::shared_ptr<Signer> signer_;
  // Unset while the signer's key is not reachable yet (guarded by mu_): learnt at the first seal.
  std::optional<internal::PublicKey> key_;
  std::shared_ptr<FileSystem> fs_;
  std::string dir_;

  mutable std::mutex mu_;
  std::shared_ptr<AppendFile> file_;
  std::string file_path_;
  std::array<uint8_t, 16> file_id_{};
  std::string file_id_hex_;
  std::string prev_file_;
  uint64_t next_seq_ = 1;
  internal::Digest head_{};
  std::string head_hex_{internal::kZeroHead};
  bool file_torn_ = false;       // the file ends in a partial line or failed fdatasync
  bool needs_new_file_ = false;  // so resume in a fresh file
  std::string pending_start_;    // a file_start body not yet written
  std::string pending_unclean_stop_;  // an unclean_stop body, written after the file_start
  bool ends_with_stop_ = false;  // the last record other than a seal is a stop
  bool dirty_ = false;           // written since the last fdatasync
  uint64_t synced_seq_ = 0;      // every record up to this seq is durable
  uint64_t failed_sync_seq_ = 0; // records up to this seq were in a failed fdatasync
  bool syncing_ = false;
  std::condition_variable sync_done_;
  uint64_t bytes_since_space_check_ = 0;
  bool reserve_supported_ = false;
  uint64_t reserved_until_ = 0;
  bool space_low_ = false;
  bool space_suspended_ = false;
  bool warned_append_only_ = false;

  bool healthy_ = true;
  Status last_error_;
  uint64_t refused_ = 0;
  int64_t next_retry_micros_ = 0;

  uint64_t records_since_seal_ = 0;
  uint64_t next_seal_retry_ = 0;
  int64_t last_seal_micros_ = 0;
  int64_t next_time_seal_micros_ = 0;  // a failed time seal is retried no sooner than this
  std::string seal_failure_;           // the cause of the failing seals, last noticed
  std::optional<SealInfo> last_seal_;

  bool closed_ = false;
  bool stopping_ = false;
  std::condition_variable cv_;
  std::thread flusher_;
  std::vector<std::pair<std::string, std::string>> pending_notices_;
};

}  // namespace vecseal::audit
