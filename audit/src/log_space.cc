// The audit log's low-space state machine: free-space thresholds, the preallocated reserve,
// suspension (for space or after a failure) and resumption.
#include <sys/stat.h>

#include "log_impl.h"

namespace vecseal::audit {

void Log::Impl::CheckSpaceLocked() {
  bytes_since_space_check_ = 0;
  Result<uint64_t> free_bytes = fs_->FreeBytes(dir_);
  if (!free_bytes.ok()) return;  // e.g. a device; the writes themselves still fail closed
  if (*free_bytes < options_.refuse_free_bytes) {
    SuspendForSpaceLocked(*free_bytes, "free space is below refuse_free_bytes");
    return;
  }
  if (*free_bytes < options_.warn_free_bytes) {
    if (!space_low_) {
      space_low_ = true;
      std::string body;
      internal::AppendStringField(&body, "event", "space_low");
      internal::AppendUintField(&body, "free_bytes", *free_bytes);
      internal::AppendUintField(&body, "refuse_below", options_.refuse_free_bytes);
      const Status written = WriteRecordLocked(body);
      if (!written.ok()) {
        SuspendLocked(written);
        return;
      }
      Notice("warning", "audit log: only " + std::to_string(*free_bytes) + " bytes free on " +
                            dir_ + "; requests are refused below " +
                            std::to_string(options_.refuse_free_bytes));
    }
  } else {
    space_low_ = false;
  }
  if (reserve_supported_ && file_->size() + options_.reserve_bytes / 2 > reserved_until_) {
    if (file_->Reserve(file_->size(), options_.reserve_bytes).ok()) {
      reserved_until_ = file_->size() + options_.reserve_bytes;
    } else {
      SuspendForSpaceLocked(*free_bytes, "cannot renew the preallocated reserve");
    }
  }
}

void Log::Impl::SuspendForSpaceLocked(uint64_t free_bytes, std::string_view why) {
  if (!healthy_) return;
  std::string body;
  internal::AppendStringField(&body, "event", "suspended");
  internal::AppendStringField(&body, "reason", "disk_space");
  internal::AppendUintField(&body, "free_bytes", free_bytes);
  Status written = WriteRecordLocked(body);
  if (written.ok() && options_.sync == LogOptions::Sync::kInterval) written = SyncLocked();
  space_suspended_ = true;
  SuspendLocked(Unavailable("audit log suspended: " + std::string(why) + " (" +
                            std::to_string(free_bytes) + " bytes free on " + dir_ + ")"));
}

void Log::Impl::SuspendLocked(Status cause) {
  if (file_torn_ || !file_) needs_new_file_ = true;
  last_error_ = Status(Code::kUnavailable, "audit_unavailable", cause.message());
  next_retry_micros_ = internal::NowMicros() +
      std::chrono::duration_cast<std::chrono::microseconds>(options_.retry_interval).count();
  if (healthy_) {
    healthy_ = false;
    Notice("error", "audit log suspended, requests are refused: " + cause.message());
  }
}

bool Log::Impl::TryResumeLocked() {
  const int64_t now = internal::NowMicros();
  if (now < next_retry_micros_) return false;
  next_retry_micros_ = now + std::chrono::duration_cast<std::chrono::microseconds>(
                                 options_.retry_interval).count();
  if (space_suspended_) {
    Result<uint64_t> free_bytes = fs_->FreeBytes(dir_);
    if (free_bytes.ok() && *free_bytes < options_.refuse_free_bytes) return false;
    if (reserve_supported_ && !needs_new_file_) {
      if (!file_->Reserve(file_->size(), options_.reserve_bytes).ok()) return false;
      reserved_until_ = file_->size() + options_.reserve_bytes;
    }
  }
  if (needs_new_file_) {
    const Status started = StartFileLocked("recover");
    if (!started.ok()) {
      last_error_ = Status(Code::kUnavailable, "audit_unavailable", started.message());
      return false;
    }
    needs_new_file_ = false;
  } else if (!pending_start_.empty() || !pending_unclean_stop_.empty()) {
    const Status written = WriteStartLocked();
    if (!written.ok()) {
      if (file_torn_) needs_new_file_ = true;
      last_error_ = Status(Code::kUnavailable, "audit_unavailable", written.message());
      return false;
    }
  }
  // Every-record syncs each write above; under the interval policy nothing would, and a disk
  // whose fdatasync keeps failing would be resumed on every retry, answering requests between
  // background failures.
  if (options_.sync == LogOptions::Sync::kInterval && file_) {
    const Status synced = SyncLocked();
    if (!synced.ok()) {
      needs_new_file_ = true;
      last_error_ = Status(Code::kUnavailable, "audit_unavailable", synced.message());
      return false;
    }
  }
  std::string body;
  internal::AppendStringField(&body, "event", "resumed");
  internal::AppendUintField(&body, "refused", refused_);
  internal::AppendStringField(&body, "cause", last_error_.message());
  const Status written = WriteRecordLocked(body);
  if (!written.ok()) {
    if (file_torn_) needs_new_file_ = true;
    last_error_ = written;
    return false;
  }
  Notice("info", "audit log resumed after refusing " + std::to_string(refused_) + " events");
  healthy_ = true;
  space_suspended_ = false;
  space_low_ = false;
  refused_ = 0;
  return true;
}

}  // namespace vecseal::audit
