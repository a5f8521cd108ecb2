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


#include "log_impl.h"
#include "record.h"

namespace vecseal::audit {
namespace {

using internal::Digest;

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

}  // namespace

Status Unavailable(std::string message) {
  return Status(Code::kUnavailable, "audit_unavailable", std::move(message));
}

std::string Basename(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

Log::Impl::Impl(LogOptions options, std::shared_ptr<Signer> signer,
                std::optional<internal::PublicKey> key)
    : options_(std::move(options)), signer_(std::move(signer)), key_(std::move(key)) {
  fs_ = options_.fs ? options_.fs : PosixFileSystem();
  dir_ = options_.single_file.empty() ? options_.dir : Dirname(options_.single_file);
  last_seal_micros_ = internal::NowMicros();
}

Status Log::Impl::Start() {
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

Status Log::Impl::Append(const Event& event) {
  Result<std::string> body = internal::SerializeEventBody(event);
  if (!body.ok()) return std::move(body).TakeStatus();
  std::unique_lock lock(mu_);
  Status status = AppendLocked(lock, *body, event.event == "stop");
  FlushNoticesUnlocking(lock);
  return status;
}

Status Log::Impl::Seal() {
  std::unique_lock lock(mu_);
  Status status = closed_ ? Unavailable("the audit log is closed")
                  : healthy_ ? SealLocked("request")
                             : Unavailable(last_error_.message());
  FlushNoticesUnlocking(lock);
  return status;
}

Status Log::Impl::Close() {
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

Status Log::Impl::DiscoverHeadLocked() {
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

uint64_t Log::Impl::FindLastSealSeq(const std::vector<std::string>& candidates) {
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

Status Log::Impl::StartFileLocked(std::string_view reason) {
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

Status Log::Impl::WriteStartLocked() {
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

Status Log::Impl::WriteStopLocked() {
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

Status Log::Impl::WriteRecordLocked(std::string_view body, bool sync_now) {
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

Status Log::Impl::SyncLocked() {
  const Status synced = file_->Sync();
  if (!synced.ok()) {
    SyncFailedLocked();
    return synced;
  }
  dirty_ = false;
  if (!syncing_) synced_seq_ = next_seq_ - 1;
  return Status::Ok();
}

void Log::Impl::SyncFailedLocked() {
  file_torn_ = true;
  failed_sync_seq_ = next_seq_ - 1;
}

Status Log::Impl::WaitDurableLocked(std::unique_lock<std::mutex>& lock, uint64_t seq) {
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

Status Log::Impl::AppendLocked(std::unique_lock<std::mutex>& lock, std::string_view body, bool is_stop) {
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

void Log::Impl::AfterWriteLocked() {
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

void Log::Impl::RotateLocked() {
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

void Log::Impl::FlusherLoop() {
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

void Log::Impl::FlushNoticesUnlocking(std::unique_lock<std::mutex>& lock) {
  std::vector<std::pair<std::string, std::string>> notices;
  notices.swap(pending_notices_);
  lock.unlock();
  for (const auto& [level, message] : notices) options_.notice(level, message);
}

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
