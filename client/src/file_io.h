// POSIX file access for the format readers and writers: whole reads that report truncation, and
// output that appears under its final name only when complete.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "vecseal/core/status.h"

namespace vecseal::client::internal {

Status ErrnoStatus(const std::string& what, const std::string& path, int error);

class InputFile {
 public:
  static Result<InputFile> Open(const std::string& path);
  InputFile(InputFile&& other) noexcept;
  InputFile& operator=(InputFile&& other) noexcept;
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;
  ~InputFile();

  const std::string& path() const { return path_; }
  uint64_t size() const { return size_; }
  uint64_t position() const { return position_; }

  // Fills `out` completely or fails; fewer bytes than asked is "unexpected end of file".
  Status ReadExact(std::span<uint8_t> out);
  // Up to out.size() bytes; 0 at the end of the file.
  Result<size_t> ReadSome(std::span<uint8_t> out);

 private:
  InputFile(int fd, std::string path, uint64_t size) : fd_(fd), path_(std::move(path)), size_(size) {}
  int fd_ = -1;
  std::string path_;
  uint64_t size_ = 0;
  uint64_t position_ = 0;
};

// Splits a file into lines with a bounded buffer.
class LineReader {
 public:
  LineReader(InputFile file, size_t max_line) : file_(std::move(file)), max_line_(max_line) {}

  // The next line without its '\n' (and without a '\r' before it); false at the end of file.
  Result<bool> Next(std::string& line);
  const InputFile& file() const { return file_; }
  uint64_t bytes_consumed() const { return file_.position() - (buffer_.size() - begin_); }

 private:
  InputFile file_;
  size_t max_line_;
  std::vector<uint8_t> buffer_;
  size_t begin_ = 0;
  bool eof_ = false;
};

// A temporary file in the destination's directory, renamed over the destination by Commit().
// Until then the destination is untouched; destroying an uncommitted file unlinks it.
class AtomicOutputFile {
 public:
  static Result<AtomicOutputFile> Create(const std::string& path);
  AtomicOutputFile(AtomicOutputFile&& other) noexcept;
  AtomicOutputFile& operator=(AtomicOutputFile&& other) noexcept;
  AtomicOutputFile(const AtomicOutputFile&) = delete;
  AtomicOutputFile& operator=(const AtomicOutputFile&) = delete;
  ~AtomicOutputFile();

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_path_; }

  Status Write(std::span<const uint8_t> bytes);
  Status Write(std::string_view text) {
    return Write(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
  }
  // Overwrites already written bytes (a header whose row count is known only at the end).
  Status WriteAt(uint64_t offset, std::span<const uint8_t> bytes);
  Status Commit();

 private:
  AtomicOutputFile(int fd, std::string path, std::string temp_path)
      : fd_(fd), path_(std::move(path)), temp_path_(std::move(temp_path)) {}
  Status FlushBuffer();
  void Discard();

  int fd_ = -1;
  std::string path_;
  std::string temp_path_;
  std::vector<uint8_t> buffer_;
  bool failed_ = false;
};

}  // namespace vecseal::client::internal
