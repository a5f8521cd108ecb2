// The user PIN: where it is read from, how its file is told apart from the one the token last
// refused, and what a refused login says. The PIN lives only in locked memory.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "hsm_state.h"

namespace vecseal::pkcs11 {
namespace {

constexpr size_t kMaxPinSize = 255;

}  // namespace

Result<std::string> PinPath(const PinSource& source) {
  if (source.file.empty() == source.credential.empty()) {
    return Status(Code::kFailedPrecondition, "pin_source_invalid",
                  "set exactly one of the PIN file and the systemd credential name");
  }
  std::string path = source.file;
  if (!source.credential.empty()) {
    if (source.credential.find('/') != std::string::npos || source.credential == "." ||
        source.credential == "..") {
      return Status(Code::kFailedPrecondition, "pin_source_invalid",
                    "a credential name is a plain file name under $CREDENTIALS_DIRECTORY, "
                    "without \"/\"");
    }
    const char* directory = std::getenv("CREDENTIALS_DIRECTORY");
    if (directory == nullptr || *directory == '\0') {
      return Status(Code::kFailedPrecondition, "pin_source_invalid",
                    "the PIN is the systemd credential \"" + source.credential +
                        "\" but $CREDENTIALS_DIRECTORY is not set; add LoadCredential=" +
                        source.credential + ":<path> to the unit, or without systemd set it to "
                        "a directory holding the file (docs/operations.md, \"Without systemd\")");
    }
    path = std::string(directory) + "/" + source.credential;
  }
  return path;
}

std::optional<PinFileStamp> StampPinFile(const std::string& path) {
  struct stat info {};
  if (stat(path.c_str(), &info) != 0) return std::nullopt;
  return PinFileStamp{static_cast<int64_t>(info.st_dev),  static_cast<int64_t>(info.st_ino),
                      static_cast<int64_t>(info.st_size), info.st_mtim.tv_sec,
                      info.st_mtim.tv_nsec,               info.st_ctim.tv_sec,
                      info.st_ctim.tv_nsec};
}

Status LoginFailed(const HsmConfig& config, CK_RV rv) {
  std::string source = !config.pin.credential.empty()
                           ? "systemd credential \"" + config.pin.credential + "\""
                           : "PIN file " + config.pin.file;
  return Status(Code::kUnavailable, "hsm_login_failed",
                "login to token \"" + config.token_label + "\" failed: " + CkrSentence(rv) + " (" +
                    std::string(CkrName(rv)) + "); check the PIN in " + source +
                    ". vecseal tried exactly once, so at most one attempt counted against the "
                    "token's retry limit");
}

bool IsPinError(CK_RV rv) {
  return rv == CKR_PIN_INCORRECT || rv == CKR_PIN_LOCKED || rv == CKR_PIN_EXPIRED ||
         rv == CKR_PIN_INVALID || rv == CKR_PIN_LEN_RANGE || rv == CKR_USER_PIN_NOT_INITIALIZED;
}

Result<core::SecureBuffer> ReadPin(const PinSource& source) {
  auto resolved = PinPath(source);
  if (!resolved.ok()) return std::move(resolved).TakeStatus();
  const std::string path = std::move(resolved).value();
  auto unreadable = [&path](std::string why) {
    return Status(Code::kUnavailable, "pin_unreadable",
                  "cannot read the PIN from " + path + ": " + why);
  };
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return unreadable(std::strerror(errno));
  struct stat info {};
  if (fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
    close(fd);
    return unreadable("not a regular file");
  }
  if ((info.st_mode & (S_IROTH | S_IWOTH)) != 0) {
    close(fd);
    return Status(Code::kPermissionDenied, "pin_file_permissions",
                  path + " is readable or writable by other users; chmod o-rw " + path);
  }
  auto buffer = core::SecureBuffer::Allocate(kMaxPinSize + 2);
  if (!buffer.ok()) {
    close(fd);
    return std::move(buffer).TakeStatus();
  }
  size_t size = 0;
  for (;;) {
    ssize_t n = read(fd, buffer->data() + size, buffer->size() - size);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int error = errno;
      close(fd);
      return unreadable(std::strerror(error));
    }
    if (n == 0) break;
    size += static_cast<size_t>(n);
    if (size == buffer->size()) break;
  }
  close(fd);
  if (size > 0 && buffer->data()[size - 1] == '\n') --size;
  if (size > 0 && buffer->data()[size - 1] == '\r') --size;
  if (size == 0) return unreadable("the file is empty");
  if (size > kMaxPinSize) return unreadable("longer than 255 bytes");
  auto pin = core::SecureBuffer::Allocate(size);
  if (!pin.ok()) return std::move(pin).TakeStatus();
  std::memcpy(pin->data(), buffer->data(), size);
  return std::move(pin).value();  // `buffer` is wiped by its destructor
}
}  // namespace vecseal::pkcs11
