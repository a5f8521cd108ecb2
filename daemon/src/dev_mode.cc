// Dev mode, like `vault server -dev`: everything under one directory, nothing to set up first.
#include <fcntl.h>
#include <limits.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "vecseal/core/secure_memory.h"
#include "vecseal/daemon/daemon.h"
#include "vecseal/pkcs11/cryptoki.h"
#include "vecseal/pkcs11/token_init.h"
#include "vecseal/policy/policy.h"

namespace vecseal::daemon {
namespace {

constexpr std::string_view kDevTokenLabel = "vecseal-dev";

Status DevError(std::string message) {
  return Status(Code::kFailedPrecondition, "dev_setup_failed", std::move(message));
}

Status ErrnoError(const std::string& what, const std::string& path) {
  return DevError(what + " " + path + ": " + std::strerror(errno));
}

bool Exists(const std::string& path) {
  struct stat st {};
  return lstat(path.c_str(), &st) == 0;
}

// Creates `path` with `content` and `mode`, never following or replacing an existing entry.
Status WriteNewFile(const std::string& path, std::string_view content, mode_t mode) {
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
  if (fd < 0) return ErrnoError("cannot create", path);
  size_t written = 0;
  while (written < content.size()) {
    const ssize_t n = write(fd, content.data() + written, content.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const Status error = ErrnoError("cannot write", path);
      close(fd);
      return error;
    }
    written += static_cast<size_t>(n);
  }
  if (close(fd) != 0) return ErrnoError("cannot write", path);
  return Status::Ok();
}

// 32 hex characters from the kernel CSPRNG.
Result<std::string> RandomPin() {
  std::array<uint8_t, 16> bytes{};
  if (getrandom(bytes.data(), bytes.size(), 0) != static_cast<ssize_t>(bytes.size())) {
    return DevError(std::string("getrandom failed: ") + std::strerror(errno));
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string pin;
  for (uint8_t byte : bytes) {
    pin += kHex[byte >> 4];
    pin += kHex[byte & 15];
  }
  core::SecureWipe(bytes.data(), bytes.size());
  return pin;
}

Result<std::string> MakeStateDir(std::string dir) {
  if (dir.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") +
                          "/vecseald-dev-XXXXXX";
    std::vector<char> buffer(pattern.begin(), pattern.end());
    buffer.push_back('\0');
    if (mkdtemp(buffer.data()) == nullptr) return ErrnoError("cannot create", pattern);
    dir = buffer.data();
  } else {
    // A symlink of another user's would choose where the state (PINs included) is written.
    VECSEAL_RETURN_IF_ERROR(policy::CheckTrustedDirectory(dir));
    if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) return ErrnoError("cannot create", dir);
    VECSEAL_RETURN_IF_ERROR(policy::CheckTrustedDirectory(dir));
  }
  char resolved[PATH_MAX];
  if (realpath(dir.c_str(), resolved) == nullptr) return ErrnoError("cannot resolve", dir);
  dir = resolved;
  struct stat st {};
  if (stat(dir.c_str(), &st) != 0) return ErrnoError("cannot examine", dir);
  if (!S_ISDIR(st.st_mode)) return DevError(dir + " is not a directory");
  if (st.st_uid != geteuid() || (st.st_mode & 0077) != 0) {
    return DevError("the state directory " + dir +
                    " must be owned by you with mode 0700 (chmod 700 " + dir + ")");
  }
  const size_t socket_limit = sizeof(sockaddr_un::sun_path) - 1;
  if (dir.size() + std::string_view("/vecseald.sock").size() > socket_limit) {
    return DevError("the state directory path " + dir + " is too long for a Unix socket path (" +
                    std::to_string(socket_limit) + " bytes); choose a shorter --state-dir");
  }
  return dir;
}

// Initialises the first free SoftHSM2 slot as the dev token, with random SO and user PINs
// written to their files.
Status InitDevToken(const std::string& module_path, const std::string& pin_path,
                    const std::string& so_pin_path) {
  auto module = pkcs11::Module::Load(module_path);
  if (!module.ok()) return std::move(module).TakeStatus();
  if (module->FindTokenSlot(kDevTokenLabel).ok()) return Status::Ok();
  auto free_slot = pkcs11::FindUninitialisedSlot(*module);
  if (!free_slot.ok()) return std::move(free_slot).TakeStatus();
  if (!*free_slot) return DevError("the PKCS#11 module offers no uninitialised token slot");

  auto so_pin = RandomPin();
  if (!so_pin.ok()) return std::move(so_pin).TakeStatus();
  auto pin = RandomPin();
  if (!pin.ok()) return std::move(pin).TakeStatus();
  auto bytes = [](const std::string& text) {
    return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(text.data()), text.size());
  };
  auto slot = pkcs11::InitToken(*module, **free_slot, kDevTokenLabel, bytes(*so_pin), bytes(*pin));
  Status written = slot.ok() ? Status::Ok() : std::move(slot).TakeStatus();
  if (written.ok()) written = WriteNewFile(pin_path, *pin + "\n", 0600);
  if (written.ok()) written = WriteNewFile(so_pin_path, *so_pin + "\n", 0600);
  core::SecureWipe(pin->data(), pin->size());
  core::SecureWipe(so_pin->data(), so_pin->size());
  return written;
}

}  // namespace

Result<DevState> PrepareDevState(std::string state_dir, Config overlay) {
  auto dir = MakeStateDir(std::move(state_dir));
  if (!dir.ok()) return std::move(dir).TakeStatus();
  DevState state{.dir = *dir, .config = std::move(overlay)};
  Config& config = state.config;

  const std::string token_dir = state.dir + "/tokens";
  if (mkdir(token_dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return ErrnoError("cannot create", token_dir);
  }
  // SoftHSM2 reads its configuration file from this variable when the module is initialised,
  // so it must be set in-process before any module load.
  const std::string softhsm_conf = state.dir + "/softhsm2.conf";
  if (!Exists(softhsm_conf)) {
    VECSEAL_RETURN_IF_ERROR(WriteNewFile(softhsm_conf,
                                         "directories.tokendir = " + token_dir +
                                             "\nobjectstore.backend = file\nlog.level = ERROR\n"
                                             "slots.removable = false\n",
                                         0600));
  }
  if (setenv("SOFTHSM2_CONF", softhsm_conf.c_str(), 1) != 0) {
    return DevError("cannot set SOFTHSM2_CONF");
  }
  const std::string pin_path = state.dir + "/hsm-pin";
  const bool have_pin = Exists(pin_path);
  if (!have_pin) {
    VECSEAL_RETURN_IF_ERROR(
        InitDevToken(config.pkcs11.module, pin_path, state.dir + "/hsm-so-pin"));
  }

  const std::string policy_path = state.dir + "/policy.json";
  if (!Exists(policy_path)) {
    VECSEAL_RETURN_IF_ERROR(
        WriteNewFile(policy_path, policy::Policy::AllowUserJson(geteuid()), 0600));
  }
  const std::string audit_dir = state.dir + "/audit";
  if (mkdir(audit_dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return ErrnoError("cannot create", audit_dir);
  }

  config.socket.path = state.dir + "/vecseald.sock";
  config.socket.mode = 0600;
  config.socket.group.clear();
  config.pkcs11.token_label = std::string(kDevTokenLabel);
  config.pkcs11.pin = PinSource{.file = pin_path, .credential = {}};
  config.policy_file = policy_path;
  config.audit.directory = audit_dir;
  return state;
}

}  // namespace vecseal::daemon
