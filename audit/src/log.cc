#include "vecseal/audit/log.h"

#include <openssl/rand.h>
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "record.h"

namespace vecseal::audit {
namespace {

using internal::Digest;

Status Unavailable(std::string message) {
  return Status(Code::kUnavailable, "audit_unavailable", std::move(message));
}

constexpr std::string_view kFilePrefix = "audit-";
constexpr std::string_view kFileSuffix = ".jsonl";
constexpr size_t kFileNameLength = 6 + 20 + 1 + 8 + 6;

bool IsLogFileName(std::string_view name) {
  if (name.size() != kFileNameLength || !name.starts_with(kFilePrefix) ||
      !name.ends_with(kFileSuffix) || name[26] != '-') {
    return false;
  }
  return std::all_of(name.begin() + 6, name.begin() + 26, [](char c) { return c >= '0' && c <= '9'; });
}

std::string LogFileName(uint64_t first_seq, std::string_view file_id_hex) {
  char digits[32];
  snprintf(digits, sizeof digits, "%020llu", static_cast<unsigned long long>(first_seq));
  return std::string(kFilePrefix) + digits + "-" + std::string(file_id_hex.substr(0, 8)) +
         std::string(kFileSuffix);
}

std::string Basename(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// The first seq that a log file's name gives (IsLogFileName checked it has the digits).
uint64_t FirstSeqOfName(const std::string& path) {
  const std::string name = Basename(path);
  uint64_t seq = 0;
  std::from_chars(name.data() + kFilePrefix.size(), name.data() + 26, seq);
  return seq;
}

std::string Dirname(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

// The event of a record line, or "" when the line is not a record.
std::string EventOfLine(std::string_view line) {
  const auto record = nlohmann::json::parse(line, nullptr, false);
  if (record.is_discarded() || !record.is_object()) return "";
  const auto event = record.find("event");
  return event != record.end() && event->is_string() ? event->get<std::string>() : "";
}

// What a stop leaves at the end of the log: the stop record, and the seal that signs it unless
// the audit key was out of reach then.
bool EndsWithStop(std::string_view last, const std::optional<std::string>& before_last) {
  const std::string event = EventOfLine(last);
  return event == "stop" || (event == "seal" && before_last && EventOfLine(*before_last) == "stop");
}

// How much of the newest files a start after an unclean stop reads back to find the last seal.
constexpr uint64_t kSealSearchBytes = 64ull << 20;

// The signer's public key, once a signature over a fixed digest verifies under it: a signer that
// does not match its own public key would write seals no one can verify.
Result<internal::PublicKey> SelfTestedKey(Signer& signer) {
  Result<std::string> pem = signer.PublicKeyPem();
  if (!pem.ok()) return std::move(pem).TakeStatus();
  Result<internal::PublicKey> key = internal::PublicKey::FromPem(*pem);
  if (!key.ok()) return std::move(key).TakeStatus();
  const Digest probe = internal::Sha256("vecseal/v1/audit-signer-self-test");
  Result<std::vector<uint8_t>> signature = signer.SignDigest(probe);
  if (signature.ok()) signature = key->NormalizeSignature(std::move(*signature));
  if (!signature.ok()) return std::move(signature).TakeStatus();
  if (!key->VerifyDigest(probe, *signature)) {
    return Status(Code::kFailedPrecondition, "audit_signer_mismatch",
                  "the audit signer's signatures do not verify under its public key");
  }
  return key;
}

}  // namespace

class Log::Impl {
 public:
  Impl(LogOptions options, std::shared_ptr<Signer> signer,
       std::optional<internal::PublicKey> key)
      : options_(std::move(options)), signer_(std::move(signer)), key_(std::move(key)) {
    fs_ = options_.fs ? options_.fs : PosixFileSystem();
    dir_ = options_.single_file.empty() ? options_.dir : Dirname(options_.single_file);
    last_seal_micros_ = internal::NowMicros();
  }

  ~Impl() { (void)Close(); }

  Status Start() {
    {
      std::unique_lock lock(mu_);
      VECSEAL_RETURN_IF_ERROR(DiscoverHeadLocked());
      if (!key_) {
        Notice("warning", "the audit key is not reachable yet: records are written, and sealed "
                          "once it is");
      }
      const Status started = StartFileLocked("open");
      if (!started.ok()) SuspendLocked(started);
      FlushNoticesUnlocking(lock);
    }
    flusher_ = std::thread([this] { FlusherLoop(); });
    return Status::Ok();
  }

  Status Append(const Event& event) {
    Result<std::string> body = internal::SerializeEventBody(event);
    if (!body.ok()) return std::move(body).TakeStatus();
    std::unique_lock lock(mu_);
    Status status = AppendLocked(lock, *body, event.event == "stop");
    FlushNoticesUnlocking(lock);
    return status;
  }

  Status Seal() {
    std::unique_lock lock(mu_);
    Status status = closed_ ? Unavailable("the audit log is closed")
                    : healthy_ ? SealLocked("request")
                               : Unavailable(last_error_.message());
    FlushNoticesUnlocking(lock);
    return status;
  }

  Status Close() {
    std::unique_lock lock(mu_);
    if (closed_) return Status::Ok();
    if (!healthy_) {
      next_retry_micros_ = 0;  // one last attempt, so that the final seal can be written
      (void)TryResumeLocked();
    }
    Status status = Status::Ok();
    if (healthy_) {
      // The verifier takes a stop record and the seal that signs it as the proof that the log
      // ends here, so Close writes one if the caller did not.
      if (!ends_with_stop_) status = WriteStopLocked();
      if (status.ok()) status = SealLocked("close");
      const Status synced = file_ ? file_->Sync() : Status::Ok();
      if (status.ok()) status = synced;
    } else {
      status = Unavailable(last_error_.message());
    }
    closed_ = true;
    stopping_ = true;
    FlushNoticesUnlocking(lock);
    cv_.notify_all();
    if (flusher_.joinable()) flusher_.join();
    return status;
  }

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
  Status DiscoverHeadLocked() {
    std::vector<std::string> candidates;
    if (!options_.single_file.empty()) {
      candidates.push_back(options_.single_file);
    } else {
      if (!options_.fs) ::mkdir(dir_.c_str(), 0700);  // the daemon's state dir; EEXIST is fine
      Result<std::vector<std::string>> names = fs_->ListDir(dir_);
      if (!names.ok()) {
        return Status(Code::kFailedPrecondition, "audit_dir_unusable",
                      "audit.dir: " + names.status().message() +
                          "; create the directory (mode 0700, owned by the daemon's user)");
      }
      for (const std::string& name : *names) {
        if (IsLogFileName(name)) candidates.push_back(dir_ + "/" + name);
      }
      std::sort(candidates.begin(), candidates.end(), std::greater<>());
    }
    for (const std::string& path : candidates) {
      std::string tail;
      uint64_t size = 0;
      uint64_t window = 1 << 20;
      std::optional<std::string> line;
      std::optional<std::string> before_line;
      bool torn = false;
      while (true) {
        const Status read = fs_->ReadTail(path, window, &tail, &size);
        if (!read.ok()) {
          if (!options_.single_file.empty()) break;  // a device or a file not yet created
          return Status(Code::kFailedPrecondition, "audit_dir_unusable", read.message());
        }
        const bool whole = tail.size() == size;
        const size_t end = tail.rfind('\n');
        if (end == std::string::npos) {
          if (whole) break;  // no complete line in the whole file
          window = size;
          continue;
        }
        const size_t start = end == 0 ? std::string::npos : tail.rfind('\n', end - 1);
        const size_t before = start == std::string::npos || start == 0
                                  ? std::string::npos
                                  : tail.rfind('\n', start - 1);
        if (before == std::string::npos && !whole) {  // the window may cut one of the two lines
          window = size;
          continue;
        }
        const size_t begin = start == std::string::npos ? 0 : start + 1;
        line = tail.substr(begin, end - begin);
        if (start != std::string::npos) {
          const size_t before_begin = before == std::string::npos ? 0 : before + 1;
          before_line = tail.substr(before_begin, start - before_begin);
        }
        torn = end + 1 < tail.size();
        break;
      }
      if (!line) continue;  // only a torn fragment: the chain ends in an older file
      const auto record = nlohmann::json::parse(*line, nullptr, false);
      if (record.is_discarded() || !record.is_object() || !record.contains("seq") ||
          !record["seq"].is_number_unsigned()) {
        return Status(Code::kFailedPrecondition, "audit_log_corrupt",
                      "the last record of " + path +
                          " cannot be parsed, so the chain cannot be continued; check it with "
                          "`vecseal audit verify`, then move the file aside to start a new chain");
      }
      next_seq_ = record["seq"].get<uint64_t>() + 1;
      head_ = internal::Sha256(*line);
      head_hex_ = internal::Hex(head_);
      prev_file_ = Basename(path);
      // A newer file without a complete record, a torn line, or an end that is not a stop: the
      // last run was killed or crashed, which nothing else in the log would show. The newer file
      // counts only if it would have held the next seq: one an earlier such kill left has the
      // first seq of the file after it, and may sort on either side of it by its random id.
      bool started_file_lost = false;
      for (auto newer = candidates.begin(); *newer != path; ++newer) {
        started_file_lost = started_file_lost || FirstSeqOfName(*newer) >= next_seq_;
      }
      if (started_file_lost || torn || !EndsWithStop(*line, before_line)) {
        const uint64_t last_sealed_seq = FindLastSealSeq(candidates);
        std::string body;
        internal::AppendStringField(&body, "event", "unclean_stop");
        internal::AppendUintField(&body, "last_seq", next_seq_ - 1);
        internal::AppendUintField(&body, "last_sealed_seq", last_sealed_seq);
        pending_unclean_stop_ = std::move(body);
        Notice("warning", "the audit log does not end with a stop record: vecseald was killed or "
                          "crashed (last record seq " + std::to_string(next_seq_ - 1) +
                              ", last seal seq " + std::to_string(last_sealed_seq) + ")");
      }
      return Status::Ok();
    }
    return Status::Ok();  // the first file ever
  }

  // The seq of the last seal in the newest files (0: none found), read newest first and at most
  // kSealSearchBytes of them, so that a start after a crash does not read back a whole large log.
  uint64_t FindLastSealSeq(const std::vector<std::string>& candidates) {
    static constexpr std::string_view kSealEvent = "\"event\":\"seal\"";
    uint64_t budget = kSealSearchBytes;
    for (const std::string& path : candidates) {
      if (budget == 0) break;
      std::string tail;
      uint64_t size = 0;
      if (!fs_->ReadTail(path, budget, &tail, &size).ok()) return 0;
      budget -= std::min<uint64_t>(budget, tail.size());
      size_t from = tail.size();
      while (from > 0) {
        const size_t found = tail.rfind(kSealEvent, from - 1);
        if (found == std::string::npos) break;
        const size_t newline = found == 0 ? std::string::npos : tail.rfind('\n', found - 1);
        const size_t begin = newline == std::string::npos ? 0 : newline + 1;
        const size_t end = tail.find('\n', found);
        if (end != std::string::npos) {
          // The marker may sit in a caller's extra fields: only the record's own event counts.
          const auto record = nlohmann::json::parse(
              std::string_view(tail).substr(begin, end - begin), nullptr, false);
          if (record.is_object() && record.value("event", nlohmann::json()) == "seal" &&
              record.contains("seq") && record["seq"].is_number_unsigned()) {
            return record["seq"].get<uint64_t>();
          }
        }
        from = begin;
      }
    }
    return 0;
  }

  Status StartFileLocked(std::string_view reason) {
    std::array<uint8_t, 16> file_id{};
    if (RAND_bytes(file_id.data(), static_cast<int>(file_id.size())) != 1) {
      return Status(Code::kInternal, "audit_random_failed", "cannot draw a random file id");
    }
    const std::string file_id_hex = internal::Hex(file_id);
    const std::string path = options_.single_file.empty()
                                 ? dir_ + "/" + LogFileName(next_seq_, file_id_hex)
                                 : options_.single_file;
    Result<std::unique_ptr<AppendFile>> opened = fs_->OpenAppend(path);
    if (!opened.ok()) return Unavailable(opened.status().message());
    std::shared_ptr<AppendFile> file = std::move(*opened);
    const bool append_only = options_.try_append_only && file->SetAppendOnly();
    bool reserved = false;
    if (options_.reserve_bytes > 0) {
      reserved = file->Reserve(file->size(), options_.reserve_bytes).ok();
    }
    if (options_.single_file.empty()) {
      const Status synced = fs_->SyncDir(dir_);
      if (!synced.ok()) return Unavailable(synced.message());
    }
    file_ = std::move(file);
    file_path_ = path;
    file_id_ = file_id;
    file_id_hex_ = file_id_hex;
    file_torn_ = false;
    reserve_supported_ = reserved;
    reserved_until_ = reserved ? file_->size() + options_.reserve_bytes : 0;

    std::string body;
    internal::AppendStringField(&body, "event", "file_start");
    internal::AppendStringField(&body, "version", internal::kFormatVersion);
    internal::AppendStringField(&body, "file_id", file_id_hex_);
    internal::AppendKey(&body, "prev_file");
    if (prev_file_.empty()) {
      body.append("null");
    } else {
      internal::AppendString(&body, prev_file_);
    }
    internal::AppendStringField(&body, "reason", reason);
    internal::AppendBoolField(&body, "append_only", append_only);
    internal::AppendUintField(&body, "reserve_bytes", reserved ? options_.reserve_bytes : 0);
    if (key_) internal::AppendStringField(&body, "key_id", key_->key_id());
    pending_start_ = std::move(body);
    VECSEAL_RETURN_IF_ERROR(WriteStartLocked());
    if (options_.try_append_only && !append_only && !warned_append_only_) {
      warned_append_only_ = true;
      Notice("info", "audit files are not append-only (FS_APPEND_FL needs CAP_LINUX_IMMUTABLE "
                     "and a file system that supports it)");
    }
    if (options_.reserve_bytes > 0 && !reserved) {
      Notice("warning", "cannot preallocate the audit reserve in " + path);
    }
    return Status::Ok();
  }

  // The file_start record of the current file, retried in the same (still empty) file when it
  // could not be written; then the unclean_stop record that the start found due, if any.
  Status WriteStartLocked() {
    if (!pending_start_.empty()) {
      VECSEAL_RETURN_IF_ERROR(WriteRecordLocked(pending_start_));
      pending_start_.clear();
      prev_file_ = Basename(file_path_);
    }
    if (!pending_unclean_stop_.empty()) {
      VECSEAL_RETURN_IF_ERROR(WriteRecordLocked(pending_unclean_stop_));
      pending_unclean_stop_.clear();
    }
    return Status::Ok();
  }

  // The stop record Close writes when the caller wrote none.
  Status WriteStopLocked() {
    Event stop;
    stop.event = "stop";
    stop.operation = "stop";
    Result<std::string> body = internal::SerializeEventBody(stop);
    if (!body.ok()) return std::move(body).TakeStatus();
    const Status written = WriteRecordLocked(*body);
    if (!written.ok()) {
      SuspendLocked(written);
      return written;
    }
    ends_with_stop_ = true;
    return Status::Ok();
  }

  // One write() of one record; advances the chain only when every byte landed.
  // With `sync_now` false under the every-record policy the caller waits for a group commit
  // (WaitDurableLocked) instead of syncing here.
  Status WriteRecordLocked(std::string_view body, bool sync_now = true) {
    if (!file_) return Unavailable("no audit file is open");
    std::string line = internal::ComposeRecord(
        next_seq_, internal::FormatTimeMicros(internal::NowMicros()), head_hex_, body);
    const Digest digest = internal::Sha256(line);
    line.push_back('\n');
    size_t written = 0;
    const Status status = file_->Append(line, &written);
    if (!status.ok()) {
      if (written > 0) file_torn_ = true;
      return Unavailable(status.message());
    }
    head_ = digest;
    head_hex_ = internal::Hex(head_);
    ends_with_stop_ = false;
    ++next_seq_;
    ++records_since_seal_;
    bytes_since_space_check_ += line.size();
    dirty_ = true;
    if (options_.sync == LogOptions::Sync::kEveryRecord && sync_now) {
      const Status synced = SyncLocked();
      if (!synced.ok()) return Unavailable(synced.message());
    }
    return Status::Ok();
  }

  // fdatasync with the lock held. A group-commit fdatasync may be running outside the lock at
  // the same time, and the kernel reports a writeback error to only one of the two: so only
  // the group commit may then declare records durable, and a failure refuses every record
  // written so far.
  Status SyncLocked() {
    const Status synced = file_->Sync();
    if (!synced.ok()) {
      SyncFailedLocked();
      return synced;
    }
    dirty_ = false;
    if (!syncing_) synced_seq_ = next_seq_ - 1;
    return Status::Ok();
  }

  // After a failed fdatasync the page cache may no longer match the disk: never append to this
  // file again, and acknowledge none of the records waiting for durability.
  void SyncFailedLocked() {
    file_torn_ = true;
    failed_sync_seq_ = next_seq_ - 1;
  }

  // Group commit for the every-record policy: one thread runs fdatasync for every record
  // written so far while the others wait for it, so that concurrent requests share a sync.
  // A failure is checked before success: a failed sync refuses every record written before it
  // returned, even one that a later sync reported durable (see SyncLocked).
  Status WaitDurableLocked(std::unique_lock<std::mutex>& lock, uint64_t seq) {
    for (;;) {
      if (failed_sync_seq_ >= seq) return Unavailable(last_error_.message());
      if (synced_seq_ >= seq) return Status::Ok();
      if (syncing_) {
        sync_done_.wait(lock);
        continue;
      }
      if (!healthy_ || !file_) return Unavailable(last_error_.message());
      syncing_ = true;
      const uint64_t target = next_seq_ - 1;
      std::shared_ptr<AppendFile> file = file_;
      lock.unlock();
      const Status synced = file->Sync();
      lock.lock();
      syncing_ = false;
      if (synced.ok()) {
        synced_seq_ = std::max(synced_seq_, target);
      } else {
        // Records appended while it ran may have been in its writeback too.
        failed_sync_seq_ = next_seq_ - 1;
        if (file == file_) {
          file_torn_ = true;
          SuspendLocked(Unavailable(synced.message()));
        }
      }
      sync_done_.notify_all();
    }
  }

  Status AppendLocked(std::unique_lock<std::mutex>& lock, std::string_view body, bool is_stop) {
    if (closed_) return Unavailable("the audit log is closed");
    if (!healthy_ && !TryResumeLocked()) {
      ++refused_;
      return Unavailable(last_error_.message());
    }
    const bool group_commit = options_.sync == LogOptions::Sync::kEveryRecord;
    const Status written = WriteRecordLocked(body, !group_commit);
    if (!written.ok()) {
      SuspendLocked(written);
      ++refused_;
      return written;
    }
    const uint64_t seq = next_seq_ - 1;
    ends_with_stop_ = is_stop;
    AfterWriteLocked();
    if (group_commit) {
      const Status durable = WaitDurableLocked(lock, seq);
      if (!durable.ok()) {
        ++refused_;
        return durable;
      }
    }
    return Status::Ok();
  }

  void AfterWriteLocked() {
    if (bytes_since_space_check_ >= options_.reserve_bytes / 4) CheckSpaceLocked();
    if (healthy_ && records_since_seal_ >= options_.seal_every_records &&
        records_since_seal_ >= next_seal_retry_) {
      if (!SealLocked("count").ok() && healthy_) {
        next_seal_retry_ = records_since_seal_ + std::max<uint64_t>(1, options_.seal_every_records / 16);
      }
    }
    // A stop record and its seal share a file: deleting the file after a rotation seal must not
    // leave a log that ends with a stop record and a seal.
    if (healthy_ && !ends_with_stop_ && options_.single_file.empty() &&
        file_->size() >= options_.rotate_bytes) {
      RotateLocked();
    }
  }

  Status SealLocked(std::string_view reason) {
    if (records_since_seal_ == 0) return Status::Ok();  // the last record is already a seal
    if (!key_) {
      Result<internal::PublicKey> key = SelfTestedKey(*signer_);
      if (!key.ok()) return SealFailedLocked(key.status());
      key_.emplace(std::move(key).value());
    }
    const Digest digest = internal::SealDigest(file_id_, next_seq_, head_);
    Result<std::vector<uint8_t>> signature = signer_->SignDigest(digest);
    if (signature.ok()) signature = key_->NormalizeSignature(std::move(*signature));
    if (!signature.ok()) return SealFailedLocked(signature.status());
    const std::string head_hex = head_hex_;
    std::string body;
    internal::AppendStringField(&body, "event", "seal");
    internal::AppendStringField(&body, "file_id", file_id_hex_);
    internal::AppendStringField(&body, "head", head_hex);
    internal::AppendStringField(&body, "key_id", key_->key_id());
    internal::AppendStringField(&body, "sig", internal::Base64(*signature));
    internal::AppendStringField(&body, "reason", reason);
    const uint64_t seal_seq = next_seq_;
    const bool sealing_a_stop = ends_with_stop_;
    Status status = WriteRecordLocked(body);
    ends_with_stop_ = sealing_a_stop;
    if (status.ok() && options_.sync == LogOptions::Sync::kInterval) status = SyncLocked();
    if (!status.ok()) {
      SuspendLocked(status);
      return status;
    }
    records_since_seal_ = 0;
    next_seal_retry_ = 0;
    if (!seal_failure_.empty()) {
      seal_failure_.clear();
      Notice("info", "audit seals resumed");
    }
    last_seal_micros_ = internal::NowMicros();
    last_seal_ = SealInfo{file_path_, seal_seq, head_hex};
    // Kept outside the files as well: an anchor against truncation of the newest file.
    Notice("info", "audit seal seq " + std::to_string(seal_seq) + " head " + head_hex + " file " +
                       Basename(file_path_));
    return Status::Ok();
  }

  // Seals are retried (by count, by time, at rotation and at close); the operator hears of a
  // failure once per distinct cause, not on every retry.
  Status SealFailedLocked(const Status& cause) {
    if (cause.ToString() != seal_failure_) {
      seal_failure_ = cause.ToString();
      Notice("error", "cannot seal the audit log: " + seal_failure_);
    }
    return Status(Code::kUnavailable, "audit_seal_failed", cause.message());
  }

  void RotateLocked() {
    (void)SealLocked("rotation");  // if it fails, the next file's seals still cover this one
    if (!healthy_) return;
    const Status synced = SyncLocked();
    if (!synced.ok()) {
      SuspendLocked(Unavailable(synced.message()));
      return;
    }
    const Status started = StartFileLocked("rotation");
    if (!started.ok()) SuspendLocked(started);
  }

  // Free-space thresholds, and the preallocated reserve kept ahead of the end of the file.
  void CheckSpaceLocked() {
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

  // A controlled suspension: the "suspended" record goes into the reserve.
  void SuspendForSpaceLocked(uint64_t free_bytes, std::string_view why) {
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

  void SuspendLocked(Status cause) {
    if (file_torn_ || !file_) needs_new_file_ = true;
    last_error_ = Status(Code::kUnavailable, "audit_unavailable", cause.message());
    next_retry_micros_ = internal::NowMicros() +
        std::chrono::duration_cast<std::chrono::microseconds>(options_.retry_interval).count();
    if (healthy_) {
      healthy_ = false;
      Notice("error", "audit log suspended, requests are refused: " + cause.message());
    }
  }

  bool TryResumeLocked() {
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

  void FlusherLoop() {
    const auto seal_every = std::chrono::duration_cast<std::chrono::milliseconds>(options_.seal_every);
    const auto tick = options_.sync == LogOptions::Sync::kInterval
                          ? std::min(options_.sync_interval, seal_every)
                          : seal_every;
    std::unique_lock lock(mu_);
    while (!stopping_) {
      cv_.wait_for(lock, tick, [this] { return stopping_; });
      if (stopping_) break;
      const int64_t now = internal::NowMicros();
      const int64_t seal_every_micros =
          std::chrono::duration_cast<std::chrono::microseconds>(options_.seal_every).count();
      if (healthy_ && records_since_seal_ > 0 && now >= next_time_seal_micros_ &&
          now - last_seal_micros_ >= seal_every_micros) {
        // Signing holds the lock and may sit out the HSM's recovery backoff: retried on every
        // tick while the HSM is down, it would stall every Append (as the count rule avoids).
        if (!SealLocked("time").ok()) next_time_seal_micros_ = now + seal_every_micros / 16;
      }
      // Under every-record, group commit syncs each record; a second fdatasync racing it could
      // take the writeback error that group commit must see.
      if (options_.sync == LogOptions::Sync::kInterval && healthy_ && dirty_ && file_) {
        // fdatasync outside the lock, so that appends go on meanwhile.
        std::shared_ptr<AppendFile> file = file_;
        dirty_ = false;
        lock.unlock();
        const Status synced = file->Sync();
        lock.lock();
        if (!synced.ok() && file == file_) {
          SyncFailedLocked();
          SuspendLocked(synced);
        }
      }
      FlushNoticesUnlocking(lock);
      lock.lock();
    }
  }

  void Notice(std::string level, std::string message) {
    if (options_.notice) pending_notices_.emplace_back(std::move(level), std::move(message));
  }

  // Delivers queued notices without the lock held, so that the callback may take its own locks.
  void FlushNoticesUnlocking(std::unique_lock<std::mutex>& lock) {
    std::vector<std::pair<std::string, std::string>> notices;
    notices.swap(pending_notices_);
    lock.unlock();
    for (const auto& [level, message] : notices) options_.notice(level, message);
  }

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
  Digest head_{};
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

Result<std::unique_ptr<Log>> Log::Open(LogOptions options, std::shared_ptr<Signer> signer) {
  const auto bad = [](std::string path, std::string why) {
    return Status(Code::kInvalidArgument, "audit_bad_option", "audit." + path + ": " + why);
  };
  if (options.dir.empty() && options.single_file.empty()) return bad("dir", "must be set");
  if (!signer) return bad("signer", "an audit signer is required");
  if (options.seal_every_records == 0) return bad("seal_every_records", "must be at least 1");
  if (options.seal_every.count() <= 0) return bad("seal_every", "must be at least 1 second");
  if (options.rotate_bytes < 4096) return bad("rotate_bytes", "must be at least 4096");
  if (options.sync == LogOptions::Sync::kInterval && options.sync_interval.count() <= 0) {
    return bad("sync_interval", "must be positive; use sync \"every-record\" for no interval");
  }
  if (options.refuse_free_bytes > options.warn_free_bytes) {
    return bad("refuse_free_bytes", "must not exceed warn_free_bytes");
  }
  std::optional<internal::PublicKey> key;
  const Result<std::string> pem = signer->PublicKeyPem();
  if (pem.ok() || pem.status().code() != Code::kUnavailable) {
    Result<internal::PublicKey> tested = SelfTestedKey(*signer);
    if (!tested.ok()) return std::move(tested).TakeStatus();
    key.emplace(std::move(tested).value());
  }
  auto impl = std::make_unique<Impl>(std::move(options), std::move(signer), std::move(key));
  VECSEAL_RETURN_IF_ERROR(impl->Start());
  return std::unique_ptr<Log>(new Log(std::move(impl)));
}

Log::Log(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Log::~Log() = default;
Status Log::Append(const Event& event) { return impl_->Append(event); }
Status Log::Seal() { return impl_->Seal(); }
Status Log::Close() { return impl_->Close(); }
bool Log::healthy() const { return impl_->healthy(); }
std::optional<SealInfo> Log::last_seal() const { return impl_->last_seal(); }
std::string Log::current_file() const { return impl_->current_file(); }
uint64_t Log::next_seq() const { return impl_->next_seq(); }

}  // namespace vecseal::audit
