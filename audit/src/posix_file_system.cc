#include <dirent.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "vecseal/audit/file_system.h"

namespace vecseal::audit {
namespace {

Status IoError(std::string_view operation, const std::string& path, int error) {
  return Status(Code::kUnavailable, "io_error",
                std::string(operation) + " " + path + ": " + std::strerror(error));
}

Status OpenAndStat(const std::string& path, int flags, int* fd, struct stat* st) {
  *fd = ::open(path.c_str(), flags | O_CLOEXEC, 0600);
  if (*fd < 0) return IoError("open", path, errno);
  if (::fstat(*fd, st) != 0) {
    const int error = errno;
    ::close(*fd);
    return IoError("fstat", path, error);
  }
  return Status::Ok();
}

class PosixAppendFile final : public AppendFile {
 public:
  PosixAppendFile(int fd, std::string path, uint64_t size)
      : fd_(fd), path_(std::move(path)), size_(size) {}
  ~PosixAppendFile() override { ::close(fd_); }
  PosixAppendFile(const PosixAppendFile&) = delete;
  PosixAppendFile& operator=(const PosixAppendFile&) = delete;

  Status Append(std::string_view data, size_t* written) override {
    if (written != nullptr) *written = 0;
    ssize_t n;
    do {
      n = ::write(fd_, data.data(), data.size());
    } while (n < 0 && errno == EINTR);
    if (n < 0) return IoError("write", path_, errno);
    size_ += static_cast<uint64_t>(n);
    if (written != nullptr) *written = static_cast<size_t>(n);
    if (static_cast<size_t>(n) != data.size()) {
      return Status(Code::kUnavailable, "io_error",
                    "write " + path_ + ": short write (" + std::to_string(n) + " of " +
                        std::to_string(data.size()) + " bytes)");
    }
    return Status::Ok();
  }

  Status Sync() override {
    if (::fdatasync(fd_) != 0) return IoError("fdatasync", path_, errno);
    return Status::Ok();
  }

  Status Reserve(uint64_t offset, uint64_t bytes) override {
    const int error = ::fallocate(fd_, FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                                  static_cast<off_t>(bytes));
    if (error != 0) return IoError("fallocate", path_, errno);
    return Status::Ok();
  }

  bool SetAppendOnly() override {
    int flags = 0;
    if (::ioctl(fd_, FS_IOC_GETFLAGS, &flags) != 0) return false;
    flags |= FS_APPEND_FL;
    return ::ioctl(fd_, FS_IOC_SETFLAGS, &flags) == 0;
  }

  uint64_t size() const override { return size_; }

 private:
  int fd_;
  std::string path_;
  uint64_t size_;
};

class PosixFileSystemImpl final : public FileSystem {
 public:
  Result<std::unique_ptr<AppendFile>> OpenAppend(const std::string& path) override {
    int fd = -1;
    struct stat st {};
    VECSEAL_RETURN_IF_ERROR(OpenAndStat(path, O_WRONLY | O_APPEND | O_CREAT, &fd, &st));
    const uint64_t size = S_ISREG(st.st_mode) ? static_cast<uint64_t>(st.st_size) : 0;
    return std::unique_ptr<AppendFile>(std::make_unique<PosixAppendFile>(fd, path, size));
  }

  Result<std::vector<std::string>> ListDir(const std::string& dir) override {
    DIR* handle = ::opendir(dir.c_str());
    if (handle == nullptr) return IoError("opendir", dir, errno);
    std::vector<std::string> names;
    while (const dirent* entry = ::readdir(handle)) {
      const std::string_view name = entry->d_name;
      if (name != "." && name != "..") names.emplace_back(name);
    }
    ::closedir(handle);
    return names;
  }

  Status ReadTail(const std::string& path, uint64_t max_bytes, std::string* tail,
                  uint64_t* file_size) override {
    int fd = -1;
    struct stat st {};
    VECSEAL_RETURN_IF_ERROR(OpenAndStat(path, O_RDONLY, &fd, &st));
    const auto size = static_cast<uint64_t>(st.st_size);
    const uint64_t length = std::min(size, max_bytes);
    tail->assign(length, '\0');
    uint64_t done = 0;
    while (done < length) {
      const ssize_t n = ::pread(fd, tail->data() + done, length - done,
                                static_cast<off_t>(size - length + done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        const int error = n < 0 ? errno : EIO;
        ::close(fd);
        return IoError("read", path, error);
      }
      done += static_cast<uint64_t>(n);
    }
    ::close(fd);
    *file_size = size;
    return Status::Ok();
  }

  Result<uint64_t> FreeBytes(const std::string& path) override {
    struct statvfs st {};
    if (::statvfs(path.c_str(), &st) != 0) return IoError("statvfs", path, errno);
    return static_cast<uint64_t>(st.f_bavail) * static_cast<uint64_t>(st.f_frsize);
  }

  Status SyncDir(const std::string& dir) override {
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return IoError("open", dir, errno);
    const int result = ::fsync(fd);
    const int error = errno;
    ::close(fd);
    if (result != 0) return IoError("fsync", dir, error);
    return Status::Ok();
  }
};

}  // namespace

std::shared_ptr<FileSystem> PosixFileSystem() { return std::make_shared<PosixFileSystemImpl>(); }

}  // namespace vecseal::audit
