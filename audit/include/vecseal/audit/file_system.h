// The file operations the audit log needs, behind an interface so that tests can inject the
// failures (EIO, EROFS, a failed fdatasync, a short write) that a real disk rarely produces on
// demand. Errors are Status(Code::kUnavailable, "io_error", "<operation> <path>: <strerror>").
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "vecseal/core/status.h"

namespace vecseal::audit {

class AppendFile {
 public:
  virtual ~AppendFile() = default;

  // Exactly one write(2) of `data`. A short write is an error; `*written` (when given) reports
  // how many bytes did land, so that the log knows the file now ends in a torn line.
  virtual Status Append(std::string_view data, size_t* written) = 0;
  virtual Status Sync() = 0;  // fdatasync(2)
  // fallocate(FALLOC_FL_KEEP_SIZE) of [offset, offset+bytes): space that later appends use even
  // when the file system is full.
  virtual Status Reserve(uint64_t offset, uint64_t bytes) = 0;
  // Sets FS_APPEND_FL (chattr +a); needs CAP_LINUX_IMMUTABLE. Returns whether it took.
  virtual bool SetAppendOnly() = 0;
  virtual uint64_t size() const = 0;
};

class FileSystem {
 public:
  virtual ~FileSystem() = default;

  // Opens `path` for appending (O_WRONLY|O_APPEND|O_CREAT|O_CLOEXEC, mode 0600), creating it.
  virtual Result<std::unique_ptr<AppendFile>> OpenAppend(const std::string& path) = 0;
  // Names (not paths) of the entries of `dir`, unsorted.
  virtual Result<std::vector<std::string>> ListDir(const std::string& dir) = 0;
  // At most the last `max_bytes` bytes of `path`, and its total size.
  virtual Status ReadTail(const std::string& path, uint64_t max_bytes, std::string* tail,
                          uint64_t* file_size) = 0;
  // Bytes available to an unprivileged writer on the file system holding `path` (statvfs).
  virtual Result<uint64_t> FreeBytes(const std::string& path) = 0;
  // fsync(2) of a directory, so that a newly created file's entry is durable.
  virtual Status SyncDir(const std::string& dir) = 0;
};

// The real thing: POSIX calls, no buffering.
std::shared_ptr<FileSystem> PosixFileSystem();

}  // namespace vecseal::audit
