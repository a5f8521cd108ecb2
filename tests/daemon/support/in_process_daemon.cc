#include "support/in_process_daemon.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "support/software_signer.h"
#include "vecseal/audit/verify.h"
#include "vecseal/daemon/settings.h"
#include "vecseal/policy/policy.h"

namespace vecseal::daemon::testing {
namespace {

Status SetupError(std::string message) {
  return Status(Code::kFailedPrecondition, "harness_setup_failed", std::move(message));
}

Result<Config> OverlayConfig(const std::string& overlay_json) {
  if (overlay_json.empty()) return Config{};
  return ParseConfig(overlay_json, ConfigKind::kDevOverlay);
}

Result<policy::PolicyPtr> PolicyOf(const std::string& policy_json) {
  return policy::Policy::Parse(policy_json.empty() ? policy::Policy::AllowUserJson(geteuid())
                                                   : policy_json);
}

Result<int> Listen(const std::string& path) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.size() >= sizeof(address.sun_path)) return SetupError("socket path too long: " + path);
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || bind(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0 ||
      listen(fd, SOMAXCONN) != 0) {
    const Status error = SetupError("listening on " + path + ": " + std::strerror(errno));
    if (fd >= 0) close(fd);
    return error;
  }
  return fd;
}

}  // namespace

std::unique_ptr<InProcessDaemon> InProcessDaemon::Start(const InProcessOptions& options,
                                                        std::string* error) {
  std::unique_ptr<InProcessDaemon> daemon(new InProcessDaemon());
  const Status built = daemon->Build(options);
  if (built.ok()) return daemon;
  *error = built.ToString();
  return nullptr;
}

Status InProcessDaemon::Build(const InProcessOptions& options) {
  char root[] = "/tmp/vecseal-inproc-XXXXXX";
  if (mkdtemp(root) == nullptr) return SetupError(std::string("mkdtemp: ") + std::strerror(errno));
  root_ = root;
  socket_path_ = root_ + "/vecseald.sock";
  audit_dir_ = root_ + "/audit";
  std::error_code ec;
  if (!std::filesystem::create_directory(audit_dir_, ec)) {
    return SetupError("cannot create " + audit_dir_ + ": " + ec.message());
  }
  auto overlay = OverlayConfig(options.overlay_json);
  if (!overlay.ok()) return std::move(overlay).TakeStatus();
  config_ = std::move(overlay).value();
  auto policy = PolicyOf(options.policy_json);
  if (!policy.ok()) return std::move(policy).TakeStatus();

  // Dev mode's demo key (daemon.cc, SeedDevKeys).
  pkcs11::KeyParams demo;
  demo.approximation_factor = 0.2;
  demo.transform = core::TransformKind::kRotate;
  auto created = keys_.CreateKey("demo", demo);
  if (!created.ok()) return std::move(created).TakeStatus();

  config_.audit.directory = audit_dir_;
  audit::LogOptions log_options = AuditLogOptions(config_.audit);
  log_options.try_append_only = false;  // root could not remove the directory afterwards
  auto log = audit::Log::Open(log_options, audit::testing::SoftwareSigner::Generate());
  if (!log.ok()) return std::move(log).TakeStatus();
  audit_log_ = std::move(log).value();

  service_ = std::make_unique<Service>(keys_, *audit_log_, peers_, metrics_,
                                       std::move(policy).value(),
                                       ServiceSettingsOf(config_, /*dev=*/true));
  server_ = std::make_unique<HttpServer>(
      *service_,
      ServerOptions{.io_threads = config_.threads.io, .worker_threads = config_.threads.workers},
      config_.limits);
  const std::string single_file = config_.audit.single_file;
  (void)service_->RebuildBudgets([single_file, dir = audit_dir_]()
                                     -> Result<std::vector<std::string>> {
    if (!single_file.empty()) return std::vector<std::string>{single_file};
    return audit::LogFilesInOrder(dir);
  });
  auto listener = Listen(socket_path_);
  if (!listener.ok()) return std::move(listener).TakeStatus();
  VECSEAL_RETURN_IF_ERROR(server_->Adopt(*listener));
  metrics_.SetConnectionsSource([server = server_.get()] {
    return Metrics::ConnectionCounts{server->active_connections(), server->delayed_for_denials()};
  });
  metrics_.SetHsmCallsSource([keys = &keys_] { return keys->CallCounts(); });
  server_->Start();
  return Status::Ok();
}

InProcessDaemon::~InProcessDaemon() {
  if (server_) server_->Drain();
  server_.reset();
  service_.reset();
  if (audit_log_) (void)audit_log_->Close();
  audit_log_.reset();
  if (!root_.empty()) {
    std::error_code ignored;
    std::filesystem::remove_all(root_, ignored);
  }
}

Status InProcessDaemon::Reload(const std::string& policy_json, const std::string& overlay_json) {
  Config next = config_;
  if (!overlay_json.empty()) {
    auto loaded = OverlayConfig(overlay_json);
    if (!loaded.ok()) return std::move(loaded).TakeStatus();
    next = std::move(loaded).value();
    next.audit = config_.audit;
  }
  auto policy = PolicyOf(policy_json);
  if (!policy.ok()) return std::move(policy).TakeStatus();
  service_->Reload(std::move(policy).value(), ServiceSettingsOf(next, /*dev=*/true));
  service_->ForgetKeys();
  server_->SetLimits(next.limits);
  config_ = std::move(next);
  return Status::Ok();
}

}  // namespace vecseal::daemon::testing
