#include "vecseal/daemon/daemon.h"

#include <grp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <algorithm>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>

#include "log.h"
#include "startup.h"
#include "vecseal/audit/log.h"
#include "vecseal/audit/verify.h"
#include "vecseal/daemon/hsm_gate.h"
#include "vecseal/daemon/http_server.h"
#include "vecseal/daemon/init.h"
#include "vecseal/daemon/metrics.h"
#include "vecseal/daemon/peer_identifier.h"
#include "vecseal/daemon/service.h"
#include "vecseal/daemon/settings.h"
#include "vecseal/pkcs11/hsm.h"
#include "vecseal/policy/identity.h"
#include "vecseal/policy/policy.h"

namespace vecseal::daemon {
namespace {

// `text` as one shell word: in single quotes unless it needs none.
std::string ShellQuoted(const std::string& text) {
  const bool plain = !text.empty() && std::all_of(text.begin(), text.end(), [](unsigned char c) {
    return std::isalnum(c) != 0 || std::strchr("/._-+,:@%", c) != nullptr;
  });
  if (plain) return text;
  std::string quoted = "'";
  for (char c : text) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}

Status UsageError(std::string message) {
  return Status(Code::kInvalidArgument, "usage", std::move(message));
}

Status SocketError(std::string message) {
  return Status(Code::kUnavailable, "socket_unavailable", std::move(message));
}

// No core dumps and no ptrace by other users: derived secrets live in this process's memory.
void HardenProcess() {
  const rlimit no_core{0, 0};
  if (setrlimit(RLIMIT_CORE, &no_core) != 0) {
    LogLine("warning", "harden", "what=rlimit_core error=" + LogValue(std::strerror(errno)));
  }
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
    LogLine("warning", "harden", "what=dumpable error=" + LogValue(std::strerror(errno)));
  }
}

// Every connection holds about five descriptors: its socket, the peer's pidfd, and /proc/PID,
// its stat and its cmdline (policy/identity keeps them to pin the process). The rest is the
// module, the audit log, the listener and the journal.
constexpr rlim_t kFilesPerConnection = 5;
constexpr rlim_t kFilesReserve = 128;

// systemd starts services with a soft RLIMIT_NOFILE of 1024 and a hard one of 524288, and asks
// programs that need more to raise the soft limit themselves; 256 connections need about 1300.
Status RaiseFileLimit(const Limits& limits) {
  rlimit files{};
  if (getrlimit(RLIMIT_NOFILE, &files) != 0) return Status::Ok();
  const rlim_t needed = limits.max_connections * kFilesPerConnection + kFilesReserve;
  if (files.rlim_cur < needed && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = std::min(files.rlim_max, std::max<rlim_t>(needed, 65536));
    setrlimit(RLIMIT_NOFILE, &files);
    getrlimit(RLIMIT_NOFILE, &files);
  }
  if (files.rlim_cur >= needed) return Status::Ok();
  return Status(Code::kFailedPrecondition, "file_limit_too_low",
                "$.limits.max_connections: " + std::to_string(limits.max_connections) +
                    " connections need about " + std::to_string(needed) +
                    " file descriptors, but RLIMIT_NOFILE allows " +
                    std::to_string(files.rlim_cur) +
                    "; raise LimitNOFILE= in the unit or lower max_connections");
}

// The signals the main thread waits for; blocked before any thread starts so that every thread
// inherits the mask and only sigtimedwait sees them.
sigset_t ControlSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  return set;
}

// Between attempts to reach an HSM that did not answer at start: soon at first (a device that
// is slow to appear), then no more often than a module load and login is worth.
constexpr std::chrono::milliseconds kHsmRetryFirst{500};
constexpr std::chrono::milliseconds kHsmRetryMax{10000};

// Whether vecseald waits for the HSM rather than exiting: the device or the network did not
// answer. A module that cannot be loaded, an unknown token label, a refused PIN, a missing
// mechanism or a bad audit key are configuration, which waiting does not fix.
bool HsmMayComeBack(const Status& status) { return status.reason() == "hsm_unavailable"; }

// The audit key in the HSM as the log sees it: unavailable until the HSM is connected, so that
// the log can open, and record refusals, while vecseald waits for it (audit::Log retries seals).
class HsmAuditSigner final : public audit::Signer {
 public:
  void Connect(pkcs11::AuditKey key) {
    std::lock_guard lock(mutex_);
    key_.emplace(std::move(key));
  }
  Result<std::vector<uint8_t>> SignDigest(std::span<const uint8_t, 32> digest) override {
    auto key = Key();
    if (!key.ok()) return std::move(key).TakeStatus();
    return key->SignDigest(digest);
  }
  Result<std::string> PublicKeyPem() override {
    auto key = Key();
    if (!key.ok()) return std::move(key).TakeStatus();
    return key->PublicKeyPem();
  }

 private:
  Result<pkcs11::AuditKey> Key() const {
    std::lock_guard lock(mutex_);
    if (!key_) {
      return Status(Code::kUnavailable, "hsm_unavailable",
                    "the audit key is in the HSM, which has not answered since vecseald started");
    }
    return *key_;
  }

  mutable std::mutex mutex_;
  std::optional<pkcs11::AuditKey> key_;
};

struct Listener {
  int fd = -1;
  std::string created_path;  // unlinked at exit; empty for a socket passed by systemd
};

// Anyone who can write the socket's directory can bind the path first, or replace the socket,
// and receive callers' plaintext: the sticky bit does not stop the first (issue #17 row 13). So
// the directory must be the daemon's (or root's) and writable by nobody else, and no symlink on
// the way may belong to another user.
Status CheckSocketDirectory(const std::string& socket_path) {
  const std::string dir = std::filesystem::path(socket_path).parent_path().string();
  if (Status above = policy::CheckTrustedDirectory(dir); !above.ok()) {
    return SocketError("the socket directory: " + above.message());
  }
  struct stat st {};
  if (stat(dir.c_str(), &st) != 0) {
    return SocketError("the socket directory " + dir + " does not exist: the package's "
                       "tmpfiles.d creates /run/vecseal at boot; by hand, see "
                       "docs/operations.md, \"Without systemd\"");
  }
  if (st.st_uid != 0 && st.st_uid != geteuid()) {
    return SocketError("the socket directory " + dir + " belongs to uid " +
                       std::to_string(st.st_uid) + ", not to the daemon's user or root; put the "
                       "socket in a directory of the daemon's, such as /run/vecseal");
  }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    return SocketError("the socket directory " + dir +
                       " is writable by group or others, so another user could bind the socket "
                       "path first; chmod go-w " + dir + " or use a directory of the daemon's");
  }
  return Status::Ok();
}

Result<Listener> OpenListener(const SocketConfig& config) {
  const int passed = sd_listen_fds(1);
  if (passed < 0) return SocketError(std::string("sd_listen_fds: ") + std::strerror(-passed));
  if (passed > 1) {
    return SocketError("systemd passed " + std::to_string(passed) +
                       " sockets; vecseald.socket must declare exactly one ListenStream=");
  }
  if (passed == 1) {
    if (sd_is_socket_unix(SD_LISTEN_FDS_START, SOCK_STREAM, 1, nullptr, 0) <= 0) {
      return SocketError("the socket systemd passed is not a listening Unix stream socket");
    }
    LogLine("info", "socket", "source=systemd");
    return Listener{.fd = SD_LISTEN_FDS_START, .created_path = {}};
  }

  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (config.path.size() >= sizeof(address.sun_path)) {
    return SocketError("socket path " + config.path + " is longer than " +
                       std::to_string(sizeof(address.sun_path) - 1) + " bytes");
  }
  std::memcpy(address.sun_path, config.path.c_str(), config.path.size() + 1);
  VECSEAL_RETURN_IF_ERROR(CheckSocketDirectory(config.path));

  gid_t gid = static_cast<gid_t>(-1);
  if (!config.group.empty()) {
    std::vector<char> buffer(16384);
    group entry{};
    group* found = nullptr;
    if (getgrnam_r(config.group.c_str(), &entry, buffer.data(), buffer.size(), &found) != 0 ||
        found == nullptr) {
      return SocketError("socket.group '" + config.group + "' is not a known group");
    }
    gid = found->gr_gid;
  }

  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return SocketError(std::string("socket: ") + std::strerror(errno));
  const auto* raw_address = reinterpret_cast<const sockaddr*>(&address);
  struct stat st {};
  if (lstat(config.path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      close(fd);
      return SocketError(config.path + " exists and is not a socket; remove it");
    }
    // A stale socket from a crashed daemon is replaced; a live one means a second daemon.
    if (connect(fd, raw_address, sizeof(address)) == 0) {
      close(fd);
      return SocketError("another daemon is already listening on " + config.path);
    }
    unlink(config.path.c_str());
  }
  // Bind under a tight umask so that the socket is never reachable with looser permissions.
  const mode_t old_umask = umask(0177);
  const int bound = bind(fd, raw_address, sizeof(address));
  umask(old_umask);
  if (bound != 0) {
    const int error = errno;
    std::string message = "bind " + config.path + ": " + std::strerror(error);
    if (error == EACCES || error == EPERM) {
      message += "; uid " + std::to_string(geteuid()) + " may not create files in " +
                 std::filesystem::path(config.path).parent_path().string() +
                 ": start vecseald.socket (systemd binds the socket and passes it), or make the "
                 "directory the daemon user's (docs/operations.md, \"Without systemd\")";
    }
    close(fd);
    return SocketError(std::move(message));
  }
  if (gid != static_cast<gid_t>(-1) &&
      chown(config.path.c_str(), static_cast<uid_t>(-1), gid) != 0) {
    const int error = errno;
    std::string message =
        "giving " + config.path + " to group " + config.group + ": " + std::strerror(error);
    if (error == EPERM) {
      message += "; the daemon's user is not a member of " + config.group +
                 ": add it (usermod -aG " + config.group + " USER) or start it with that "
                 "group (docs/operations.md, \"Without systemd\")";
    }
    close(fd);
    unlink(config.path.c_str());
    return SocketError(std::move(message));
  }
  if (chmod(config.path.c_str(), config.mode) != 0 || listen(fd, SOMAXCONN) != 0) {
    const Status error = SocketError("setting up " + config.path + ": " + std::strerror(errno));
    close(fd);
    unlink(config.path.c_str());
    return error;
  }
  LogLine("info", "socket", "source=self path=" + LogValue(config.path));
  return Listener{.fd = fd, .created_path = config.path};
}

// Said wherever the config is checked or applied, so that a group size is never ignored
// silently: it cannot apply to format v2 key versions.
std::string GroupSizeNote(const Config& config) {
  if (config.group_size == 1) return "";
  return "derivation.group_size=" + std::to_string(config.group_size) +
         " applies to format v1 (hmac) key versions only; format v2 (aes) versions derive every "
         "vector's own seed in one HSM call per request";
}

// The model key `demo` and the exported audit public key of dev mode.
Status SeedDevKeys(pkcs11::Hsm& hsm, const pkcs11::AuditKey& audit_key, const std::string& dir) {
  auto demo = hsm.FindKey("demo");
  if (!demo.ok() && demo.status().reason() == "key_not_found") {
    pkcs11::KeyParams params;
    // What `vecseal calibrate` recommends on the demo's unit-norm digits (docs/choosing-beta.md;
    // its doc test holds docs/configuration.md, and so this value, to that recommendation).
    params.approximation_factor = 0.2;
    params.transform = core::TransformKind::kRotate;
    auto created = hsm.CreateKey("demo", params);
    if (!created.ok()) return std::move(created).TakeStatus();
  } else if (!demo.ok()) {
    return std::move(demo).TakeStatus();
  }
  const std::string pem_path = dir + "/audit-key.pem";
  std::ofstream pem(pem_path, std::ios::trunc);
  pem << audit_key.PublicKeyPem();
  pem.close();
  if (!pem) return Status(Code::kUnavailable, "dev_setup_failed", "cannot write " + pem_path);
  return Status::Ok();
}

// Everything the running daemon holds; torn down in reverse order.
class Daemon {
 public:
  explicit Daemon(const CommandLine& command_line) : command_line_(command_line) {}

  int Run() {
    const Status started = Start();
    if (!started.ok()) {
      LogLine("error", "start_failed",
              "reason=" + started.reason() + " message=" + LogValue(started.message()));
      std::cerr << "vecseald: " << started.message() << "\n";
      Cleanup();
      return 1;
    }
    const Status stopped = WaitForSignals();
    if (!stopped.ok()) {
      LogLine("error", "hsm_failed",
              "reason=" + stopped.reason() + " message=" + LogValue(stopped.message()));
      std::cerr << "vecseald: " << stopped.message() << "\n";
    }
    Stop(stopped);
    return stopped.ok() ? 0 : 1;
  }

 private:
  Status LoadConfig() {
    if (!command_line_.dev) {
      config_path_ = command_line_.config_path.empty() ? std::string(kDefaultConfigPath)
                                                       : command_line_.config_path;
      auto config = LoadTrustedConfig(config_path_, ConfigKind::kDaemon);
      if (!config.ok()) return std::move(config).TakeStatus();
      config_ = std::move(config).value();
      return Status::Ok();
    }
    std::cerr << "\n"
                 "  ==============================================================\n"
                 "  vecseald DEV MODE: NOT FOR PRODUCTION.\n"
                 "  The token, its PIN and a grant-everything policy sit in one\n"
                 "  directory readable by you. Use it to try vecseal, never with\n"
                 "  real data or a real model key.\n"
                 "  ==============================================================\n\n";
    Config overlay;
    config_path_ = command_line_.config_path;
    if (!config_path_.empty()) {
      auto loaded = LoadTrustedConfig(config_path_, ConfigKind::kDevOverlay);
      if (!loaded.ok()) return std::move(loaded).TakeStatus();
      overlay = std::move(loaded).value();
    }
    auto state = PrepareDevState(command_line_.state_dir, std::move(overlay));
    if (!state.ok()) return std::move(state).TakeStatus();
    dev_dir_ = state->dir;
    config_ = std::move(state->config);
    LogLine("warning", "dev_mode", "state_dir=" + LogValue(dev_dir_));
    return Status::Ok();
  }

  // Opens the HSM (and the audit key's own token, when configured) and finishes what needs it:
  // the audit key, and dev mode's demo key. The Hsms are kept only when all of it succeeded, so
  // that a retry starts afresh.
  Status ConnectHsm() {
    auto hsm = pkcs11::Hsm::Open(HsmConfigOf(config_));
    if (!hsm.ok()) return std::move(hsm).TakeStatus();
    std::unique_ptr<pkcs11::Hsm> audit_hsm;
    if (auto audit_config = AuditHsmConfigOf(config_)) {
      auto opened = pkcs11::Hsm::Open(*audit_config);
      if (!opened.ok()) return AuditTokenError(opened.status());
      audit_hsm = std::move(opened).value();
    }
    pkcs11::Hsm& audit_token = audit_hsm ? *audit_hsm : **hsm;
    auto audit_key =
        audit_token.EnsureAuditKey(config_.audit.key_label, config_.audit.key_algorithm);
    if (!audit_key.ok()) {
      return audit_hsm ? AuditTokenError(audit_key.status()) : std::move(audit_key).TakeStatus();
    }
    if (!dev_dir_.empty()) VECSEAL_RETURN_IF_ERROR(SeedDevKeys(**hsm, *audit_key, dev_dir_));
    hsm_ = std::move(hsm).value();
    audit_hsm_ = std::move(audit_hsm);
    audit_signer_->Connect(*audit_key);
    return Status::Ok();
  }

  // The HSM did not answer (at start or on a retry): requests that need it keep getting 503,
  // and WaitForSignals tries again after a bounded backoff.
  void WaitForHsm(const Status& why) {
    hsm_gate_.SetWaiting(why);
    next_hsm_attempt_ = std::chrono::steady_clock::now() + hsm_backoff_;
    const std::string failure = why.reason() + ": " + why.message();
    if (failure != hsm_failure_) {  // once per change of cause, not on every retry
      hsm_failure_ = failure;
      LogLine("warning", "hsm_unavailable",
              "reason=" + why.reason() + " message=" + LogValue(why.message()) +
                  " attempts=" + std::to_string(hsm_attempts_) +
                  " next_attempt_ms=" + std::to_string(hsm_backoff_.count()));
      sd_notify(0, ("STATUS=" + StatusText()).c_str());
    }
    hsm_backoff_ = std::min(hsm_backoff_ * 2, kHsmRetryMax);
  }

  // One more attempt. A configuration error found only now (a refused PIN, once the device
  // answers) stops the daemon, as it would have at start.
  Status RetryHsm() {
    ++hsm_attempts_;
    const Status connected = ConnectHsm();
    if (!connected.ok()) {
      if (!HsmMayComeBack(connected)) return connected;
      WaitForHsm(connected);
      return Status::Ok();
    }
    const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::steady_clock::now() - started_at_);
    AuditEvent("hsm_connected", Status::Ok(),
               nlohmann::json{{"attempts", hsm_attempts_}, {"waited_ms", waited.count()}});
    // A seal now vouches for every record written while the audit key was out of reach.
    const Status sealed = audit_log_->Seal();
    if (!sealed.ok()) {
      LogLine("error", "audit_seal_failed",
              "reason=" + sealed.reason() + " message=" + LogValue(sealed.message()));
    }
    hsm_gate_.Open(*hsm_);
    sd_notify(0, ("STATUS=" + StatusText()).c_str());
    LogLine("info", "hsm_connected", "attempts=" + std::to_string(hsm_attempts_) +
                                         " waited_ms=" + std::to_string(waited.count()));
    return Status::Ok();
  }

  std::string StatusText() const {
    if (hsm_gate_.open()) return "serving";
    // STATUS= is one line; the cause is in the journal.
    return "waiting for the HSM; requests that need it get 503 hsm_unavailable";
  }

  Status Start() {
    started_at_ = std::chrono::steady_clock::now();
    HardenProcess();
    VECSEAL_RETURN_IF_ERROR(LoadConfig());
    VECSEAL_RETURN_IF_ERROR(RaiseFileLimit(config_.limits));
    auto policy = policy::Policy::LoadFile(config_.policy_file);
    if (!policy.ok()) return std::move(policy).TakeStatus();

    hsm_attempts_ = 1;
    const Status hsm = ConnectHsm();
    if (hsm.ok()) {
      hsm_gate_.Open(*hsm_);
    } else if (HsmMayComeBack(hsm)) {
      WaitForHsm(hsm);
    } else {
      return hsm;
    }

    auto log = audit::Log::Open(AuditLogOptions(config_.audit), audit_signer_);
    if (!log.ok()) return std::move(log).TakeStatus();
    audit_log_ = std::move(log).value();

    auto listener = OpenListener(config_.socket);
    if (!listener.ok()) return std::move(listener).TakeStatus();
    listener_ = *listener;

    service_ = std::make_unique<Service>(hsm_gate_, *audit_log_, peers_, metrics_,
                                         std::move(policy).value(),
                                         ServiceSettingsOf(config_, !dev_dir_.empty()));
    server_ = std::make_unique<HttpServer>(
        *service_,
        ServerOptions{.io_threads = config_.threads.io, .worker_threads = config_.threads.workers},
        config_.limits);
    // Before the first request: a budget counted from nothing would hand out a fresh window.
    (void)service_->RebuildBudgets([audit = config_.audit]() -> Result<std::vector<std::string>> {
      if (!audit.single_file.empty()) return std::vector<std::string>{audit.single_file};
      return audit::LogFilesInOrder(audit.directory);
    });
    VECSEAL_RETURN_IF_ERROR(server_->Adopt(listener_.fd));
    listener_.fd = -1;  // the server's acceptor owns it now and closes it; Cleanup must not
    metrics_.SetConnectionsSource([server = server_.get()] {
      return Metrics::ConnectionCounts{server->active_connections(),
                                       server->delayed_for_denials()};
    });
    metrics_.SetHsmCallsSource([gate = &hsm_gate_] { return gate->CallCounts(); });
    metrics_.SetDigestCountsSource([resolver = &resolver_] {
      const policy::IdentityResolver::Stats stats = resolver->stats();
      return Metrics::DigestCounts{stats.files_hashed, stats.digests_rate_limited};
    });
    server_->Start();

    if (hsm.ok()) {
      AuditEvent("start", Status::Ok(), nlohmann::json{{"version", kVersion}});
    } else {
      AuditEvent("start", hsm,
                 nlohmann::json{
                     {"version", kVersion}, {"hsm", "unavailable"}, {"message", hsm.message()}});
    }
    if (const std::string note = GroupSizeNote(config_); !note.empty()) {
      LogLine("info", "group_size_v1_only", "message=" + LogValue(note));
    }
    sd_notify(0, ("READY=1\nSTATUS=" + StatusText()).c_str());
    LogLine("info", "ready", "socket=" + LogValue(config_.socket.path) +
                                 " version=" + std::string(kVersion) +
                                 " hsm=" + (hsm.ok() ? "connected" : "waiting"));
    if (!dev_dir_.empty()) {
      // The second line is for pasting into the shell that will call the daemon.
      std::cout << "vecseald ready: socket " << config_.socket.path << "\n"
                << "export VECSEAL_SOCKET=" << ShellQuoted(config_.socket.path) << std::endl;
    }
    return Status::Ok();
  }

  // Until SIGTERM or SIGINT (ok), or until an HSM that did not answer at start turns out to be
  // misconfigured when it does (that error). The HSM is retried here, between signals, so that
  // a reload and a connection never run at the same time.
  Status WaitForSignals() {
    const sigset_t signals = ControlSignals();
    uint64_t watchdog_usec = 0;
    const bool watchdog = sd_watchdog_enabled(0, &watchdog_usec) > 0 && watchdog_usec > 0;
    // Pet the watchdog at half its period; otherwise wake up only for signals and HSM retries.
    const uint64_t idle_usec = watchdog ? watchdog_usec / 2 : 3600ull * 1000000;
    for (;;) {
      uint64_t wait_usec = idle_usec;
      if (!hsm_gate_.open()) {
        const auto until = std::chrono::duration_cast<std::chrono::microseconds>(
            next_hsm_attempt_ - std::chrono::steady_clock::now());
        wait_usec = std::min<uint64_t>(wait_usec, static_cast<uint64_t>(
                                                      std::max<int64_t>(until.count(), 0)));
      }
      const timespec timeout{.tv_sec = static_cast<time_t>(wait_usec / 1000000),
                             .tv_nsec = static_cast<long>((wait_usec % 1000000) * 1000)};
      const int signal_number = sigtimedwait(&signals, nullptr, &timeout);
      if (watchdog) sd_notify(0, "WATCHDOG=1");
      if (signal_number == SIGHUP) {
        Reload();
      } else if (signal_number == SIGTERM || signal_number == SIGINT) {
        LogLine("info", "stopping", std::string("signal=") + strsignal(signal_number));
        return Status::Ok();
      }
      if (!hsm_gate_.open() && std::chrono::steady_clock::now() >= next_hsm_attempt_) {
        VECSEAL_RETURN_IF_ERROR(RetryHsm());
      }
    }
  }

  // All or nothing: a new config and policy replace the old ones only when both load.
  void Reload() {
    sd_notify(0, "RELOADING=1");
    Config next = config_;
    Status status = Status::Ok();
    if (!config_path_.empty()) {
      auto loaded = LoadTrustedConfig(
          config_path_, command_line_.dev ? ConfigKind::kDevOverlay : ConfigKind::kDaemon);
      if (!loaded.ok()) {
        status = std::move(loaded).TakeStatus();
      } else {
        next = std::move(loaded).value();
        if (command_line_.dev) {
          // Dev mode owns the paths; the overlay only tunes.
          next.socket = config_.socket;
          next.pkcs11.token_label = config_.pkcs11.token_label;
          next.pkcs11.pin = config_.pkcs11.pin;
          next.policy_file = config_.policy_file;
          next.audit.directory = config_.audit.directory;
        }
        if (auto field = RestartOnlyChange(config_, next)) {
          status = Status(Code::kFailedPrecondition, "restart_required",
                          config_path_ + ": " + *field +
                              " changed, which takes effect only on a restart; nothing reloaded");
        }
      }
    }
    if (status.ok()) status = RaiseFileLimit(next.limits);
    policy::PolicyPtr policy;
    if (status.ok()) {
      auto loaded = policy::Policy::LoadFile(next.policy_file);
      if (loaded.ok()) {
        policy = std::move(loaded).value();
      } else {
        status = std::move(loaded).TakeStatus();
      }
    }
    if (status.ok()) {
      service_->Reload(policy, ServiceSettingsOf(next, !dev_dir_.empty()));
      service_->ForgetKeys();
      server_->SetLimits(next.limits);
      config_ = std::move(next);
      LogLine("info", "reloaded", "policy_rules=" + std::to_string(policy->rule_count()));
    } else {
      LogLine("error", "reload_failed", "reason=" + status.reason() + " message=" +
                                            LogValue(status.message()) + " kept=previous");
    }
    AuditEvent("reload", status,
               status.ok() ? nlohmann::json(nullptr)
                           : nlohmann::json{{"message", status.message()}});
    if (const std::string note = GroupSizeNote(config_); !note.empty()) {
      LogLine("info", "group_size_v1_only", "message=" + LogValue(note));
    }
    sd_notify(0, ("READY=1\nSTATUS=" + StatusText()).c_str());
  }

  // `why` is ok for a requested stop, else the error that ends the daemon.
  void Stop(const Status& why) {
    sd_notify(0, "STOPPING=1");
    if (server_) server_->Drain();
    AuditEvent("stop", why,
               why.ok() ? nlohmann::json(nullptr) : nlohmann::json{{"message", why.message()}});
    Cleanup();
    LogLine("info", "stopped");
  }

  void Cleanup() {
    server_.reset();
    service_.reset();
    if (audit_log_) {
      const Status closed = audit_log_->Close();
      if (!closed.ok()) {
        LogLine("error", "audit_close_failed",
                "reason=" + closed.reason() + " message=" + LogValue(closed.message()));
      }
      if (auto seal = audit_log_->last_seal()) {
        // An anchor outside the log: a verifier compares it with the log's last seal.
        LogLine("info", "audit_seal", "file=" + LogValue(seal->file) +
                                          " seq=" + std::to_string(seal->seq) +
                                          " head=" + seal->head);
      }
      audit_log_.reset();
    }
    if (!listener_.created_path.empty()) unlink(listener_.created_path.c_str());
    if (listener_.fd >= 0 && listener_.created_path.empty()) close(listener_.fd);
    listener_ = {};
    hsm_.reset();
    audit_hsm_.reset();
  }

  void AuditEvent(const char* name, const Status& status, nlohmann::json extra) {
    if (!audit_log_) return;
    audit::Event event;
    event.event = name;
    event.operation = name;
    if (!status.ok()) event.error_code = status.reason();
    event.extra = std::move(extra);
    const Status recorded = audit_log_->Append(event);
    if (!recorded.ok()) {
      metrics_.CountAuditError();
      LogLine("error", "audit_failed", std::string("event=") + name + " reason=" +
                                           recorded.reason());
    }
  }

  const CommandLine& command_line_;
  std::string config_path_;
  std::string dev_dir_;
  Config config_;
  std::unique_ptr<pkcs11::Hsm> hsm_;
  std::unique_ptr<pkcs11::Hsm> audit_hsm_;  // null: the audit key is on hsm_'s token
  HsmGate hsm_gate_;
  std::shared_ptr<HsmAuditSigner> audit_signer_ = std::make_shared<HsmAuditSigner>();
  // While the HSM has not answered since the start (main thread only).
  std::chrono::steady_clock::time_point started_at_;
  std::chrono::steady_clock::time_point next_hsm_attempt_;
  std::chrono::milliseconds hsm_backoff_ = kHsmRetryFirst;
  int hsm_attempts_ = 0;
  std::string hsm_failure_;  // the cause last logged
  std::unique_ptr<audit::Log> audit_log_;
  policy::IdentityResolver resolver_;
  KernelPeerIdentifier peers_{resolver_};
  Metrics metrics_;
  Listener listener_;
  std::unique_ptr<Service> service_;
  std::unique_ptr<HttpServer> server_;
};

}  // namespace

Result<Config> LoadTrustedConfig(const std::string& path, ConfigKind kind) {
  VECSEAL_RETURN_IF_ERROR(policy::CheckTrustedFile(path));
  return LoadConfigFile(path, kind);
}

pkcs11::HsmConfig HsmConfigOf(const Config& config) {
  pkcs11::HsmConfig hsm_config;
  hsm_config.module_path = config.pkcs11.module;
  hsm_config.token_label = config.pkcs11.token_label;
  hsm_config.pin.file = config.pkcs11.pin.file;
  hsm_config.pin.credential = config.pkcs11.pin.credential;
  hsm_config.sessions = config.pkcs11.sessions;
  hsm_config.accept_imported_keys = config.pkcs11.accept_imported_keys;
  return hsm_config;
}

std::optional<pkcs11::HsmConfig> AuditHsmConfigOf(const Config& config) {
  const auto& token = config.audit.pkcs11;
  if (!token) return std::nullopt;
  pkcs11::HsmConfig hsm_config;
  hsm_config.module_path = token->module;
  hsm_config.token_label = token->token_label;
  hsm_config.pin.file = token->pin.file;
  hsm_config.pin.credential = token->pin.credential;
  hsm_config.sessions = 1;  // seals are signed one at a time, under the audit log's lock
  return hsm_config;
}

Status AuditTokenError(const Status& error) {
  const bool pin = error.reason() == "hsm_login_failed" || error.reason().starts_with("pin_");
  return Status(error.code(), error.reason(),
                std::string(pin ? "audit.pkcs11.pin" : "audit.pkcs11") + " (the audit key's token): " +
                    error.message());
}

std::string UsageText() {
  return "usage: vecseald [--config FILE]\n"
         "       vecseald --init [--config FILE] [--export-audit-key PEM]\n"
         "       vecseald --dev [--state-dir DIR] [--config FILE]\n"
         "       vecseald --check-config FILE\n"
         "       vecseald --check-policy FILE [--as-pid PID | --as-uid N --exe PATH "
         "[--unit UNIT] [--script PATH]] [--op OPERATION --key NAME]\n"
         "       vecseald --version\n";
}

Result<CommandLine> ParseCommandLine(std::span<const std::string> args) {
  CommandLine result;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    const auto value = [&](const char* flag) -> Result<std::string> {
      if (i + 1 >= args.size()) return UsageError(std::string(flag) + " needs a value");
      return args[++i];
    };
    if (arg == "--help" || arg == "-h") {
      result.mode = CommandLine::Mode::kHelp;
    } else if (arg == "--version") {
      result.mode = CommandLine::Mode::kVersion;
    } else if (arg == "--dev") {
      result.dev = true;
    } else if (arg == "--init") {
      result.mode = CommandLine::Mode::kInit;
    } else if (arg == "--config" || arg == "--check-config" || arg == "--state-dir" ||
               arg == "--export-audit-key") {
      auto text = value(arg.c_str());
      if (!text.ok()) return std::move(text).TakeStatus();
      if (arg == "--state-dir") {
        result.state_dir = *text;
      } else if (arg == "--export-audit-key") {
        result.export_audit_key = *text;
      } else {
        result.config_path = *text;
        if (arg == "--check-config") result.mode = CommandLine::Mode::kCheckConfig;
      }
    } else if (arg == "--check-policy") {
      result.mode = CommandLine::Mode::kCheckPolicy;
      result.check_policy_args.assign(args.begin() + static_cast<ptrdiff_t>(i) + 1, args.end());
      break;
    } else {
      return UsageError("unknown argument '" + arg + "'");
    }
  }
  if (!result.state_dir.empty() && !result.dev) {
    return UsageError("--state-dir is only meaningful with --dev");
  }
  if (result.dev && result.mode != CommandLine::Mode::kServe &&
      result.mode != CommandLine::Mode::kHelp) {
    return UsageError("--dev cannot be combined with --init, --check-config or --check-policy");
  }
  if (!result.export_audit_key.empty() && result.mode != CommandLine::Mode::kInit) {
    return UsageError("--export-audit-key is only meaningful with --init");
  }
  return result;
}

int CheckConfig(const std::string& path, std::ostream& out, std::ostream& err) {
  auto config = LoadTrustedConfig(path, ConfigKind::kDaemon);
  if (!config.ok()) {
    err << config.status().message() << "\n";
    return 1;
  }
  auto policy = policy::Policy::LoadFile(config->policy_file);
  if (!policy.ok()) {
    err << path << ": policy.file: " << policy.status().message() << "\n";
    return 1;
  }
  const size_t rules = (*policy)->rule_count();
  out << path << ": ok (policy " << config->policy_file << ": " << rules
      << (rules == 1 ? " rule)\n" : " rules)\n");
  if (const auto& token = config->audit.pkcs11) {
    out << path << ": audit key \"" << config->audit.key_label << "\" on its own token \""
        << token->token_label << "\" in " << token->module << "\n";
  }
  if (const std::string note = GroupSizeNote(*config); !note.empty()) {
    out << path << ": note: " << note << "\n";
  }
  return 0;
}

int Serve(const CommandLine& command_line) {
  const sigset_t signals = ControlSignals();
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  // A client that hangs up mid-response must not kill the daemon.
  signal(SIGPIPE, SIG_IGN);
  Daemon daemon(command_line);
  return daemon.Run();
}

int Main(std::span<const std::string> args) {
  auto command_line = ParseCommandLine(args);
  if (!command_line.ok()) {
    std::cerr << "vecseald: " << command_line.status().message() << "\n" << UsageText();
    return 2;
  }
  switch (command_line->mode) {
    case CommandLine::Mode::kHelp:
      std::cout << UsageText();
      return 0;
    case CommandLine::Mode::kVersion:
      std::cout << "vecseald " << kVersion << "\n";
      return 0;
    case CommandLine::Mode::kInit: {
      InitOptions options;
      if (!command_line->config_path.empty()) options.config_path = command_line->config_path;
      if (!command_line->export_audit_key.empty()) {
        options.export_audit_key = command_line->export_audit_key;
      }
      return Init(options, std::cout);
    }
    case CommandLine::Mode::kCheckConfig:
      return CheckConfig(command_line->config_path, std::cout, std::cerr);
    case CommandLine::Mode::kCheckPolicy:
      return policy::RunCheckPolicy(command_line->check_policy_args, std::cout, std::cerr);
    case CommandLine::Mode::kServe:
      break;
  }
  return Serve(*command_line);
}

}  // namespace vecseal::daemon
