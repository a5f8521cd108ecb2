#include "file_io.h"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

namespace vecseal::client::internal {
namespace {

constexpr size_t kReadBlock = 1 << 20;
constexpr size_t kWriteBuffer = 1 << 20;

std::string DirectoryOf(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string BaseName(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace

Status ErrnoStatus(const std::string& what, const std::string& path, int error) {
  const std::string message = what + " " + path + ": " + std::strerror(error);
  switch (error) {
    case ENOENT:
    case ENOTDIR:
      return Status(Code::kNotFound, "file_not_found", message);
    case EACCES:
    case EPERM:
      return Status(Code::kPermissionDenied, "file_permission_denied", message);
    case ENOSPC:
    case EDQUOT:
      return Status(Code::kResourceExhausted, "no_space", message);
    default:
      return Status(Code::kUnavailable, "io_error", message);
  }
}

Result<InputFile> InputFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("cannot open", path, errno);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int error = errno;
    ::close(fd);
    return ErrnoStatus("cannot stat", path, error);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return Status(Code::kInvalidArgument, "not_a_regular_file",
                  "cannot read " + path + ": not a regular file");
  }
  return InputFile(fd, path, static_cast<uint64_t>(st.st_size));
}

InputFile::InputFile(InputFile&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      path_(std::move(other.path_)),
      size_(other.size_),
      position_(other.position_) {}

InputFile& InputFile::operator=(InputFile&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
    path_ = std::move(other.path_);
    size_ = other.size_;
    position_ = other.position_;
  }
  return *this;
}

InputFile::~InputFile() {
  if (fd_ >= 0) ::close(fd_);
}

Result<size_t> InputFile::ReadSome(std::span<uint8_t> out) {
  while (true) {
    const ssize_t n = ::read(fd_, out.data(), std::min(out.size(), kReadBlock * 64));
    if (n >= 0) {
      position_ += static_cast<uint64_t>(n);
      return static_cast<size_t>(n);
    }
    if (errno != EINTR) return ErrnoStatus("cannot read", path_, errno);
  }
}

Status InputFile::ReadExact(std::span<uint8_t> out) {
  size_t done = 0;
  while (done < out.size()) {
    Result<size_t> n = ReadSome(out.subspan(done));
    if (!n.ok()) return std::move(n).TakeStatus();
    if (*n == 0) {
      return Status(Code::kInvalidArgument, "truncated_file",
                    path_ + ": unexpected end of file at byte " + std::to_string(position_));
    }
    done += *n;
  }
  return Status::Ok();
}

Result<bool> LineReader::Next(std::string& line) {
  size_t scanned = begin_;
  while (true) {
    const auto newline = std::find(buffer_.begin() + static_cast<ptrdiff_t>(scanned), buffer_.end(),
                                   static_cast<uint8_t>('\n'));
    if (newline != buffer_.end() || (eof_ && begin_ < buffer_.size())) {
      const size_t end = static_cast<size_t>(newline - buffer_.begin());
      size_t line_end = end;
      if (line_end > begin_ && buffer_[line_end - 1] == '\r') --line_end;
      line.assign(reinterpret_cast<const char*>(buffer_.data()) + begin_, line_end - begin_);
      begin_ = newline != buffer_.end() ? end + 1 : end;
      return true;
    }
    if (eof_) return false;
    if (buffer_.size() - begin_ > max_line_) {
      return Status(Code::kInvalidArgument, "line_too_long",
                    file_.path() + ": a line is longer than " + std::to_string(max_line_) +
                        " bytes");
    }
    // Compact, then read one more block.
    buffer_.erase(buffer_.begin(), buffer_.begin() + static_cast<ptrdiff_t>(begin_));
    begin_ = 0;
    scanned = buffer_.size();
    buffer_.resize(scanned + kReadBlock);
    Result<size_t> n = file_.ReadSome(std::span<uint8_t>(buffer_).subspan(scanned));
    if (!n.ok()) return std::move(n).TakeStatus();
    buffer_.resize(scanned + *n);
    if (*n == 0) eof_ = true;
  }
}

Result<AtomicOutputFile> AtomicOutputFile::Create(const std::string& path) {
  if (path.empty() || path.back() == '/') {
    return Status(Code::kInvalidArgument, "invalid_path", "output path '" + path + "' names no file");
  }
  // A random name: O_EXCL then fails only on a genuine collision. Mode 0666 lets the umask
  // decide, as for any file a command creates.
  for (int attempt = 0; attempt < 8; ++attempt) {
    uint64_t random = 0;
    if (::getrandom(&random, sizeof(random), 0) != sizeof(random)) {
      return ErrnoStatus("cannot get random bytes for a temporary file next to", path, errno);
    }
    char suffix[24];
    std::snprintf(suffix, sizeof(suffix), "%016llx", static_cast<unsigned long long>(random));
    std::string temp = DirectoryOf(path) + "/." + BaseName(path) + ".tmp-" + suffix;
    const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0) return AtomicOutputFile(fd, path, std::move(temp));
    if (errno != EEXIST) return ErrnoStatus("cannot create a temporary file for", path, errno);
  }
  return Status(Code::kUnavailable, "io_error", "cannot create a temporary file for " + path);
}

AtomicOutputFile::AtomicOutputFile(AtomicOutputFile&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      path_(std::move(other.path_)),
      temp_path_(std::move(other.temp_path_)),
      buffer_(std::move(other.buffer_)),
      failed_(other.failed_) {}

AtomicOutputFile& AtomicOutputFile::operator=(AtomicOutputFile&& other) noexcept {
  if (this != &other) {
    Discard();
    fd_ = std::exchange(other.fd_, -1);
    path_ = std::move(other.path_);
    temp_path_ = std::move(other.temp_path_);
    buffer_ = std::move(other.buffer_);
    failed_ = other.failed_;
  }
  return *this;
}

AtomicOutputFile::~AtomicOutputFile() { Discard(); }

void AtomicOutputFile::Discard() {
  if (fd_ < 0) return;
  ::close(fd_);
  ::unlink(temp_path_.c_str());
  fd_ = -1;
}

Status AtomicOutputFile::FlushBuffer() {
  size_t done = 0;
  while (done < buffer_.size()) {
    const ssize_t n = ::write(fd_, buffer_.data() + done, buffer_.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      failed_ = true;
      return ErrnoStatus("cannot write", temp_path_, errno);
    }
    done += static_cast<size_t>(n);
  }
  buffer_.clear();
  return Status::Ok();
}

Status AtomicOutputFile::Write(std::span<const uint8_t> bytes) {
  if (fd_ < 0 || failed_) {
    return Status(Code::kFailedPrecondition, "write_failed", "cannot write " + path_ + ": closed");
  }
  if (buffer_.size() + bytes.size() > kWriteBuffer) VECSEAL_RETURN_IF_ERROR(FlushBuffer());
  buffer_.insert(buffer_.end(), bytes.begin(), bytes.end());
  if (buffer_.size() > kWriteBuffer) return FlushBuffer();
  return Status::Ok();
}

Status AtomicOutputFile::WriteAt(uint64_t offset, std::span<const uint8_t> bytes) {
  if (fd_ < 0 || failed_) {
    return Status(Code::kFailedPrecondition, "write_failed", "cannot write " + path_ + ": closed");
  }
  VECSEAL_RETURN_IF_ERROR(FlushBuffer());
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::pwrite(fd_, bytes.data() + done, bytes.size() - done,
                               static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      failed_ = true;
      return ErrnoStatus("cannot write", temp_path_, errno);
    }
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

Status AtomicOutputFile::Commit() {
  if (fd_ < 0 || failed_) {
    return Status(Code::kFailedPrecondition, "write_failed", "cannot commit " + path_ + ": closed");
  }
  VECSEAL_RETURN_IF_ERROR(FlushBuffer());
  if (::fsync(fd_) != 0) return ErrnoStatus("cannot sync", temp_path_, errno);
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    return ErrnoStatus("cannot rename " + temp_path_ + " to", path_, errno);
  }
  ::close(fd_);
  fd_ = -1;
  // The rename is durable only once the directory is synced; failing that is not an error of
  // the data, so it is not reported.
  const int dir = ::open(DirectoryOf(path_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    ::fsync(dir);
    ::close(dir);
  }
  return Status::Ok();
}

}  // namespace vecseal::client::internal
