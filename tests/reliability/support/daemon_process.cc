#include "support/daemon_process.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

extern char** environ;

namespace vecseal::reliability {
namespace {

// A guard against a daemon that never becomes ready on a loaded machine, not an expectation.
constexpr int kReadyDeadlineMs = 120'000;

int WaitStatus(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

std::vector<std::string> Environment(const std::map<std::string, std::string>& extra) {
  std::vector<std::string> result;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    const std::string text = *entry;
    if (!extra.contains(text.substr(0, text.find('=')))) result.push_back(text);
  }
  for (const auto& [name, value] : extra) result.push_back(name + "=" + value);
  return result;
}

std::vector<char*> Pointers(std::vector<std::string>& strings) {
  std::vector<char*> result;
  for (std::string& s : strings) result.push_back(s.data());
  result.push_back(nullptr);
  return result;
}

}  // namespace

ScratchDir::ScratchDir() {
  char pattern[] = "/tmp/vecseal-rel-XXXXXX";
  if (mkdtemp(pattern) != nullptr) path_ = pattern;
}

ScratchDir::~ScratchDir() {
  std::error_code ignored;
  if (!path_.empty()) std::filesystem::remove_all(path_, ignored);
}

DaemonProcess::~DaemonProcess() {
  if (pid_ > 0) KillAndWait(SIGKILL);
}

pid_t DaemonProcess::Spawn(int stdout_fd) {
  std::vector<std::string> args = {VECSEALD_PATH, "--dev", "--state-dir", options_.state_dir};
  if (!options_.overlay_path.empty()) {
    args.push_back("--config");
    args.push_back(options_.overlay_path);
  }
  std::vector<std::string> env = Environment(options_.env);
  std::vector<char*> argv = Pointers(args), envp = Pointers(env);
  // stderr is appended to, so that Log() holds every run against this state directory.
  const std::string log_path = options_.state_dir + ".stderr.log";
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  if (stdout_fd >= 0) {
    posix_spawn_file_actions_adddup2(&actions, stdout_fd, STDOUT_FILENO);
  } else {
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  }
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, log_path.c_str(),
                                   O_WRONLY | O_CREAT | O_APPEND, 0600);
  pid_t pid = -1;
  if (posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), envp.data()) != 0) pid = -1;
  posix_spawn_file_actions_destroy(&actions);
  return pid;
}

bool DaemonProcess::Start(std::string* error) {
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) {
    *error = std::string("pipe: ") + std::strerror(errno);
    return false;
  }
  pid_ = Spawn(out[1]);
  close(out[1]);
  if (pid_ < 0) {
    close(out[0]);
    *error = std::string("cannot spawn ") + VECSEALD_PATH;
    return false;
  }
  const std::string marker = "vecseald ready: socket ";
  std::string output;
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(kReadyDeadlineMs);
  while (output.find(marker) == std::string::npos ||
         output.find('\n', output.find(marker)) == std::string::npos) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    pollfd poll_fd{.fd = out[0], .events = POLLIN, .revents = 0};
    if (left.count() <= 0 || poll(&poll_fd, 1, static_cast<int>(left.count())) <= 0) break;
    char buffer[512];
    const ssize_t n = read(out[0], buffer, sizeof(buffer));
    if (n <= 0) break;  // EOF: the daemon exited
    output.append(buffer, static_cast<size_t>(n));
  }
  close(out[0]);
  if (output.find(marker) == std::string::npos) {
    *error = "vecseald did not become ready; stdout: " + output + "\nstderr: " + Log();
    KillAndWait(SIGKILL);
    return false;
  }
  return true;
}

int DaemonProcess::StartExpectingExit() {
  pid_ = Spawn(-1);
  if (pid_ < 0) return -1;
  const int status = WaitStatus(pid_);
  pid_ = -1;
  return status;
}

int DaemonProcess::KillAndWait(int signal_number) {
  if (pid_ <= 0) return -1;
  kill(pid_, signal_number);
  const int status = WaitStatus(pid_);
  pid_ = -1;
  return status;
}

std::optional<int> DaemonProcess::WaitForExit(std::chrono::milliseconds timeout) {
  if (pid_ <= 0) return std::nullopt;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    int status = 0;
    const pid_t reaped = waitpid(pid_, &status, WNOHANG);
    if (reaped == pid_) {
      pid_ = -1;
      return status;
    }
    if (reaped < 0 && errno != EINTR) return std::nullopt;
    if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

void DaemonProcess::Signal(int signal_number) const {
  if (pid_ > 0) kill(pid_, signal_number);
}

bool DaemonProcess::Running() const {
  if (pid_ <= 0) return false;
  int status = 0;
  return waitpid(pid_, &status, WNOHANG) == 0;
}

std::string DaemonProcess::Log() const { return ReadFileText(options_.state_dir + ".stderr.log"); }

void ReplaceFile(const std::string& path, const std::string& text) {
  const std::string temporary = path + ".new";
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    out << text;
  }
  chmod(temporary.c_str(), 0600);
  std::filesystem::rename(temporary, path);
}

std::string ReadFileText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::optional<size_t> OpenFdCount(pid_t pid) {
  DIR* dir = opendir(("/proc/" + std::to_string(pid) + "/fd").c_str());
  if (dir == nullptr) return std::nullopt;
  size_t count = 0;
  while (const dirent* entry = readdir(dir)) {
    if (entry->d_name[0] != '.') ++count;
  }
  closedir(dir);
  return count;
}

std::optional<size_t> RssKib(pid_t pid) {
  std::istringstream status(ReadFileText("/proc/" + std::to_string(pid) + "/status"));
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoul(line.substr(6));
  }
  return std::nullopt;
}

std::vector<nlohmann::json> AuditRecords(const std::string& path) {
  std::vector<std::string> files;
  if (std::filesystem::is_directory(path)) {
    for (const auto& entry : std::filesystem::directory_iterator(path)) {
      if (entry.path().extension() == ".jsonl") files.push_back(entry.path().string());
    }
    std::sort(files.begin(), files.end());
  } else {
    files.push_back(path);
  }
  std::vector<nlohmann::json> records;
  for (const std::string& file : files) {
    std::istringstream lines(ReadFileText(file));
    std::string line;
    while (std::getline(lines, line)) {
      auto record = nlohmann::json::parse(line, nullptr, false);
      if (!record.is_discarded()) records.push_back(std::move(record));
    }
  }
  return records;
}

CommandResult RunCommand(const std::vector<std::string>& command) {
  CommandResult result;
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return result;
  std::vector<std::string> args = command;
  std::vector<char*> argv = Pointers(args);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, out[1], STDERR_FILENO);
  pid_t pid = -1;
  const int spawned = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(out[1]);
  if (spawned != 0) {
    close(out[0]);
    result.output = "cannot spawn " + command[0];
    return result;
  }
  char buffer[4096];
  for (;;) {
    const ssize_t n = read(out[0], buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    result.output.append(buffer, static_cast<size_t>(n));
  }
  close(out[0]);
  const int status = WaitStatus(pid);
  if (WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  return result;
}

CommandResult VerifyAuditLog(const DaemonProcess& daemon, const std::vector<std::string>& options) {
  std::vector<std::string> argv = {VECSEAL_CLI_PATH, "audit", "verify", "--json"};
  argv.insert(argv.end(), options.begin(), options.end());
  argv.insert(argv.end(), {"--pubkey", daemon.audit_pubkey(), daemon.audit_dir()});
  return RunCommand(argv);
}

}  // namespace vecseal::reliability
