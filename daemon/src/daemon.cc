// vecseald's lifecycle: start (config, HSM, audit log, listener, service), serve until a signal
// (SIGHUP reloads, SIGTERM drains), retry an HSM that did not answer, stop.
#include "vecseal/daemon/daemon.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <algorithm>
#include <chrono>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iostream>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>

#include "listener.h"
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

int Serve(const CommandLine& command_line) {
  const sigset_t signals = ControlSignals();
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  // A client that hangs up mid-response must not kill the daemon.
  signal(SIGPIPE, SIG_IGN);
  Daemon daemon(command_line);
  return daemon.Run();
}

}  // namespace vecseal::daemon
