// Shared helpers for the audit tests: temp dirs, line-level file surgery, sample events and a
// FileSystem that injects the failures a healthy disk will not produce on demand.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "vecseal/audit/file_system.h"
#include "vecseal/audit/log.h"

namespace vecseal::audit::testing {

class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// The audit-*.jsonl files under `dir`, oldest first.
std::vector<std::string> LogFiles(const std::string& dir);
// Complete lines without their newline; `torn` receives a trailing fragment, if any.
std::vector<std::string> ReadLines(const std::string& path, std::string* torn = nullptr);
void WriteLines(const std::string& path, const std::vector<std::string>& lines);
std::string ReadFileText(const std::string& path);
void WriteFileText(const std::string& path, const std::string& text);

// A request event as the daemon would write it; `i` varies the fields.
Event SampleEvent(int i);

// Options for a test log: no append-only flag (tests rewrite files), no thresholds, a flusher
// that stays out of the way unless a test wants it.
LogOptions TestOptions(const std::string& dir);

struct FaultPlan {
  std::atomic<bool> fail_open{false};
  std::atomic<bool> fail_write{false};     // EIO-like: nothing written
  std::atomic<bool> read_only{false};      // EROFS on open and write
  std::atomic<int> short_writes{0};        // the next N writes land only half their bytes
  std::atomic<bool> fail_sync{false};
  std::atomic<bool> fail_reserve{false};
  std::atomic<int64_t> free_bytes{-1};     // -1: the real statvfs figure
  std::atomic<int> opens{0};
};

// PosixFileSystem with the faults of `plan` applied.
std::shared_ptr<FileSystem> FaultyFileSystem(std::shared_ptr<FaultPlan> plan);

}  // namespace vecseal::audit::testing
