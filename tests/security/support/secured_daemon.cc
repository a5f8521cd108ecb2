#include "support/secured_daemon.h"

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

extern char** environ;

namespace vecseal::security_testing {
namespace {

// Guards against a daemon that never answers; not a performance expectation.
constexpr auto kEventDeadline = std::chrono::seconds(120);

std::string ReadWhole(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

bool WriteWhole(const std::string& path, const std::string& text, mode_t mode) {
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
    if (!out) return false;
  }
  return chmod(path.c_str(), mode) == 0;
}

// Where the cgroup2 hierarchy is mounted ("/sys/fs/cgroup" or ".../unified"), or "".
std::string Cgroup2Mount() {
  std::istringstream mounts(ReadWhole("/proc/self/mounts"));
  std::string device, dir, type, rest;
  while (mounts >> device >> dir >> type && std::getline(mounts, rest)) {
    if (type == "cgroup2") return dir;
  }
  return "";
}

}  // namespace

std::unique_ptr<SecuredDaemon> SecuredDaemon::Prepare(const Options& options, std::string* error) {
  std::unique_ptr<SecuredDaemon> daemon(new SecuredDaemon());
  testing::SoftHsmToken::Options token_options;
  token_options.label = "vecseal-security";
  token_options.user_pin = kTokenPin;
  auto token = testing::SoftHsmToken::Create(token_options);
  if (!token.ok()) {
    *error = token.status().ToString();
    return nullptr;
  }
  daemon->token_ = std::move(token).value();
  if (options.audit_token) {
    auto audit_pin = daemon->token_->AddToken(
        {.label = kAuditTokenLabel, .user_pin = kAuditTokenPin, .so_pin = "audit-so-pin"});
    if (!audit_pin.ok()) {
      *error = audit_pin.status().ToString();
      return nullptr;
    }
    daemon->audit_pin_file_ = *audit_pin;
  }

  char root_template[] = "/tmp/vecseal-security-XXXXXX";
  if (mkdtemp(root_template) == nullptr) {
    *error = std::string("mkdtemp: ") + std::strerror(errno);
    return nullptr;
  }
  daemon->root_ = root_template;
  const std::string& root = daemon->root_;
  daemon->config_path_ = root + "/etc/vecseald.json";
  daemon->policy_path_ = root + "/etc/policy.json";
  daemon->socket_path_ = root + "/run/vecseald.sock";
  daemon->audit_dir_ = root + "/audit";
  daemon->notify_path_ = root + "/notify.sock";
  bool ok = chmod(root.c_str(), 0755) == 0 && mkdir((root + "/etc").c_str(), 0755) == 0 &&
            mkdir((root + "/run").c_str(), 0755) == 0 &&
            mkdir(daemon->audit_dir_.c_str(), 0700) == 0;

  nlohmann::json socket = {{"path", daemon->socket_path_}, {"mode", "0660"}};
  if (!options.socket_group.empty()) socket["group"] = options.socket_group;
  const std::string module =
      options.module.empty() ? daemon->token_->module_path() : options.module;
  nlohmann::json config = {
      {"socket", socket},
      {"pkcs11",
       {{"module", module},
        {"token_label", token_options.label},
        {"pin", {{"file", daemon->token_->pin_file()}}}}},
      {"policy", {{"file", daemon->policy_path_}}},
      // Append-only files would outlive the test directory; the flag is tested in tests/audit.
      {"audit",
       {{"directory", daemon->audit_dir_}, {"sync", "every_record"}, {"try_append_only", false}}}};
  if (options.audit_token) {
    config["audit"]["pkcs11"] = {{"module", module},
                                 {"token_label", kAuditTokenLabel},
                                 {"pin", {{"file", daemon->audit_pin_file_}}}};
  }
  if (!options.limits.is_null()) config["limits"] = options.limits;
  ok = ok && WriteWhole(daemon->config_path_, config.dump(2) + "\n", 0644) &&
       WriteWhole(daemon->policy_path_, options.policy_json, 0644);
  if (!ok) {
    *error = "cannot lay out " + root + ": " + std::strerror(errno);
    return nullptr;
  }
  return daemon;
}

SecuredDaemon::~SecuredDaemon() {
  if (pid_ > 0) Stop();
  if (notify_fd_ >= 0) close(notify_fd_);
  if (!root_.empty()) {
    std::error_code ignored;
    std::filesystem::remove_all(root_, ignored);
  }
}

bool SecuredDaemon::Start(std::string* error) {
  if (notify_fd_ < 0) {
    notify_fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, notify_path_.c_str(), sizeof(address.sun_path) - 1);
    if (notify_fd_ < 0 ||
        bind(notify_fd_, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
      *error = std::string("notify socket: ") + std::strerror(errno);
      return false;
    }
  }
  std::vector<std::string> env_strings = {"NOTIFY_SOCKET=" + notify_path_};
  for (char** entry = environ; *entry != nullptr; ++entry) {
    if (std::strncmp(*entry, "NOTIFY_SOCKET=", 14) != 0) env_strings.emplace_back(*entry);
  }
  std::vector<char*> envp;
  for (auto& text : env_strings) envp.push_back(text.data());
  envp.push_back(nullptr);
  std::string binary = VECSEALD_PATH, flag = "--config", config = config_path_;
  char* argv[] = {binary.data(), flag.data(), config.data(), nullptr};
  const std::string log_path = root_ + "/stderr.log";

  exit_status_.reset();
  const pid_t parent = getpid();
  pid_ = fork();
  if (pid_ < 0) {
    *error = std::string("fork: ") + std::strerror(errno);
    return false;
  }
  if (pid_ == 0) {
    // A test process that dies abruptly (a crash, a ctest timeout) takes its daemon along.
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) _exit(127);
    const int log = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    const int null = open("/dev/null", O_RDWR);
    if (log < 0 || null < 0 || dup2(null, STDIN_FILENO) < 0 || dup2(null, STDOUT_FILENO) < 0 ||
        dup2(log, STDERR_FILENO) < 0) {
      _exit(127);
    }
    execve(argv[0], argv, envp.data());
    _exit(127);
  }
  pidfd_ = static_cast<int>(syscall(SYS_pidfd_open, pid_, 0));
  if (pidfd_ < 0) {
    *error = std::string("pidfd_open: ") + std::strerror(errno);
    return false;
  }
  return WaitForState("READY=1", error);
}

bool SecuredDaemon::WaitForState(const std::string& state, std::string* error) {
  const auto deadline = std::chrono::steady_clock::now() + kEventDeadline;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    pollfd fds[2] = {{.fd = notify_fd_, .events = POLLIN, .revents = 0},
                     {.fd = pidfd_, .events = POLLIN, .revents = 0}};
    if (left.count() <= 0 || poll(fds, 2, static_cast<int>(left.count())) == 0) {
      *error = "vecseald sent no " + state + " within the deadline; stderr:\n" + Log();
      return false;
    }
    if ((fds[0].revents & POLLIN) != 0) {
      char message[1024];
      const ssize_t n = recv(notify_fd_, message, sizeof(message) - 1, 0);
      if (n > 0 && std::string(message, static_cast<size_t>(n)).find(state) != std::string::npos) {
        return true;
      }
      continue;
    }
    if ((fds[1].revents & POLLIN) != 0) {
      int status = 0;
      waitpid(pid_, &status, 0);
      Reap(status);
      *error =
          "vecseald exited with status " + std::to_string(*exit_status_) + "; stderr:\n" + Log();
      return false;
    }
  }
}

void SecuredDaemon::Reap(int status) {
  exit_status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  pid_ = -1;
  if (pidfd_ >= 0) close(pidfd_);
  pidfd_ = -1;
}

bool SecuredDaemon::Reload(std::string* error) {
  if (pid_ <= 0) {
    *error = "vecseald is not running";
    return false;
  }
  kill(pid_, SIGHUP);
  return WaitForState("READY=1", error);
}

int SecuredDaemon::Stop() {
  if (pid_ <= 0) return exit_status_.value_or(-1);
  kill(pid_, SIGTERM);
  // A daemon that does not stop is killed rather than hanging the suite; the exit status then
  // says so (128 + SIGKILL).
  pollfd exited{.fd = pidfd_, .events = POLLIN, .revents = 0};
  if (poll(&exited, 1, static_cast<int>(kEventDeadline / std::chrono::milliseconds(1))) <= 0) {
    kill(pid_, SIGKILL);
  }
  int status = 0;
  while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  Reap(status);
  return *exit_status_;
}

void SecuredDaemon::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  int status = 0;
  while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  Reap(status);
}

std::string SecuredDaemon::Log() const { return ReadWhole(root_ + "/stderr.log"); }

std::vector<nlohmann::json> SecuredDaemon::AuditRecords() const {
  std::vector<nlohmann::json> records;
  std::istringstream lines(AuditBytes());
  std::string line;
  while (std::getline(lines, line)) {
    auto record = nlohmann::json::parse(line, nullptr, false);
    if (!record.is_discarded()) records.push_back(std::move(record));
  }
  return records;
}

std::string SecuredDaemon::AuditBytes() const {
  std::vector<std::filesystem::path> files;
  std::error_code ignored;
  for (const auto& entry : std::filesystem::directory_iterator(audit_dir_, ignored)) {
    if (entry.is_regular_file()) files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  std::string bytes;
  for (const auto& file : files) bytes += ReadWhole(file.string());
  return bytes;
}

CallerRun RunAs(const CallerIdentity& identity, const std::vector<std::string>& argv,
                const std::vector<std::string>& environment) {
  CallerRun run;
  std::vector<std::string> args = argv;
  std::vector<char*> argp;
  for (auto& arg : args) argp.push_back(arg.data());
  argp.push_back(nullptr);
  std::vector<std::string> env_entries = environment;
  std::vector<char*> envp;
  for (auto& entry : env_entries) envp.push_back(entry.data());
  envp.push_back(nullptr);
  const std::string procs =
      identity.cgroup_dir.empty() ? "" : identity.cgroup_dir + "/cgroup.procs";
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return run;
  run.pid = fork();
  if (run.pid == 0) {
    // Only system calls from here on: the parent may have had other threads.
    if (dup2(out[1], STDOUT_FILENO) < 0) _exit(126);
    if (!procs.empty()) {
      const int fd = open(procs.c_str(), O_WRONLY | O_CLOEXEC);
      if (fd < 0 || write(fd, "0", 1) != 1) _exit(125);  // "0": the writing process
      close(fd);
    }
    if (setgroups(identity.groups.size(), identity.groups.data()) != 0 ||
        setgid(identity.gid) != 0 || setuid(identity.uid) != 0) {
      _exit(124);
    }
    execve(argp[0], argp.data(), envp.data());
    _exit(123);
  }
  close(out[1]);
  if (run.pid < 0) {
    close(out[0]);
    return run;
  }
  char buffer[4096];
  ssize_t n;
  while ((n = read(out[0], buffer, sizeof(buffer))) > 0 || (n < 0 && errno == EINTR)) {
    if (n > 0) run.output.append(buffer, static_cast<size_t>(n));
  }
  close(out[0]);
  int status = 0;
  while (waitpid(run.pid, &status, 0) < 0 && errno == EINTR) {
  }
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return run;
}

std::vector<Answer> ParseAnswers(const std::string& output) {
  std::vector<Answer> answers;
  std::istringstream lines(output);
  std::string line;
  while (std::getline(lines, line)) {
    const size_t first = line.find(' ');
    const size_t second = first == std::string::npos ? first : line.find(' ', first + 1);
    if (second == std::string::npos) continue;
    unsigned status = 0;
    const auto parsed = std::from_chars(line.data(), line.data() + first, status);
    if (parsed.ec != std::errc() || parsed.ptr != line.data() + first) continue;
    answers.push_back(Answer{.status = status,
                             .request_id = line.substr(first + 1, second - first - 1),
                             .body = line.substr(second + 1)});
  }
  return answers;
}

std::unique_ptr<TestUnit> TestUnit::Create(const std::string& role, std::string* why) {
  const std::string mount = Cgroup2Mount();
  if (mount.empty()) {
    *why = "no cgroup2 hierarchy is mounted";
    return nullptr;
  }
  // Groups left by test processes that were killed before they could remove them.
  std::error_code ignored;
  for (const auto& entry : std::filesystem::directory_iterator(mount, ignored)) {
    const std::string name = entry.path().filename().string();
    int pid = 0;
    if (std::sscanf(name.c_str(), "vecseal-security-%d-", &pid) == 1 && pid > 0 &&
        kill(pid, 0) != 0 && errno == ESRCH) {
      rmdir(entry.path().c_str());
    }
  }
  std::unique_ptr<TestUnit> unit(new TestUnit());
  unit->name_ = "vecseal-security-" + std::to_string(getpid()) + "-" + role + ".service";
  unit->dir_ = mount + "/" + unit->name_;
  if (mkdir(unit->dir_.c_str(), 0755) != 0) {
    *why = "cannot create the cgroup " + unit->dir_ + ": " + std::strerror(errno);
    unit->dir_.clear();
    return nullptr;
  }
  return unit;
}

TestUnit::~TestUnit() {
  // Every caller in it has been waited for, so the group is empty.
  if (!dir_.empty()) rmdir(dir_.c_str());
}

std::vector<std::string> PrintedForms(float value) {
  std::vector<std::string> forms;
  char text[64];
  const double wide = value;
  const auto add = [&](int) { forms.emplace_back(text); };
  add(std::snprintf(text, sizeof(text), "%g", wide));
  add(std::snprintf(text, sizeof(text), "%f", wide));
  add(std::snprintf(text, sizeof(text), "%e", wide));
  add(std::snprintf(text, sizeof(text), "%.7g", wide));
  add(std::snprintf(text, sizeof(text), "%.8g", wide));
  add(std::snprintf(text, sizeof(text), "%.9g", wide));
  add(std::snprintf(text, sizeof(text), "%.17g", wide));
  auto shortest = std::to_chars(text, text + sizeof(text), value);
  forms.emplace_back(text, shortest.ptr);
  shortest = std::to_chars(text, text + sizeof(text), wide);
  forms.emplace_back(text, shortest.ptr);
  std::sort(forms.begin(), forms.end());
  forms.erase(std::unique(forms.begin(), forms.end()), forms.end());
  return forms;
}

std::optional<std::string> FindAny(const std::string& haystack,
                                   const std::vector<std::string>& needles) {
  for (const auto& needle : needles) {
    if (!needle.empty() && haystack.find(needle) != std::string::npos) return needle;
  }
  return std::nullopt;
}

}  // namespace vecseal::security_testing
