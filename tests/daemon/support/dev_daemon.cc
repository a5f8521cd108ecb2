#include "support/dev_daemon.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

extern char** environ;

namespace vecseal::daemon::testing {
namespace {

// A guard against a daemon that never becomes ready; not a performance expectation.
constexpr int kReadyDeadlineMs = 120'000;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// Run as root, a dev daemon makes its audit files append-only, which remove_all cannot delete.
void ClearAppendOnly(const std::string& root) {
  std::error_code error;
  for (auto it = std::filesystem::recursive_directory_iterator(root, error);
       !error && it != std::filesystem::recursive_directory_iterator(); it.increment(error)) {
    if (!it->is_regular_file(error)) continue;
    const int fd = open(it->path().c_str(), O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) continue;
    int flags = 0;
    if (ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0 && (flags & FS_APPEND_FL) != 0) {
      flags &= ~FS_APPEND_FL;
      ioctl(fd, FS_IOC_SETFLAGS, &flags);
    }
    close(fd);
  }
}

}  // namespace

std::unique_ptr<DevDaemon> DevDaemon::Start(const DevDaemonOptions& options, std::string* error) {
  std::unique_ptr<DevDaemon> daemon(new DevDaemon());
  char root_template[] = "/tmp/vecseald-test-XXXXXX";
  if (mkdtemp(root_template) == nullptr) {
    *error = std::string("mkdtemp: ") + std::strerror(errno);
    return nullptr;
  }
  daemon->root_ = root_template;
  daemon->state_dir_ = daemon->root_ + "/state";
  std::vector<std::string> args = {VECSEALD_PATH, "--dev", "--state-dir", daemon->state_dir_};
  if (!options.overlay_json.empty()) {
    daemon->overlay_path_ = daemon->root_ + "/overlay.json";
    std::ofstream(daemon->overlay_path_) << options.overlay_json;
    chmod(daemon->overlay_path_.c_str(), 0600);
    args.push_back("--config");
    args.push_back(daemon->overlay_path_);
  }

  int out_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0) {
    *error = "pipe failed";
    return nullptr;
  }
  const std::string log_path = daemon->root_ + "/stderr.log";
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], STDOUT_FILENO);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, log_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0600);
  std::vector<char*> argv;
  for (auto& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);
  const int spawned =
      posix_spawn(&daemon->pid_, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(out_pipe[1]);
  if (spawned != 0) {
    close(out_pipe[0]);
    *error = std::string("posix_spawn ") + VECSEALD_PATH + ": " + std::strerror(spawned);
    daemon->pid_ = -1;
    return nullptr;
  }

  std::string output;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kReadyDeadlineMs);
  const std::string marker = "vecseald ready: socket ";
  while (output.find('\n', output.find(marker)) == std::string::npos ||
         output.find(marker) == std::string::npos) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    pollfd poll_fd{.fd = out_pipe[0], .events = POLLIN, .revents = 0};
    if (left.count() <= 0 || poll(&poll_fd, 1, static_cast<int>(left.count())) <= 0) break;
    char buffer[512];
    const ssize_t n = read(out_pipe[0], buffer, sizeof(buffer));
    if (n <= 0) break;
    output.append(buffer, static_cast<size_t>(n));
  }
  close(out_pipe[0]);
  const size_t at = output.find(marker);
  if (at == std::string::npos) {
    *error = "vecseald did not become ready; stdout: " + output + "\nstderr: " + ReadFile(log_path);
    return nullptr;  // the destructor stops the process
  }
  const size_t start = at + marker.size();
  daemon->socket_path_ = output.substr(start, output.find('\n', start) - start);
  return daemon;
}

DevDaemon::~DevDaemon() {
  if (pid_ > 0) Stop();
  if (!root_.empty()) {
    ClearAppendOnly(root_);
    std::error_code ignored;
    std::filesystem::remove_all(root_, ignored);
  }
}

void DevDaemon::Signal(int signal_number) const {
  if (pid_ > 0) kill(pid_, signal_number);
}

int DevDaemon::Stop() {
  if (pid_ <= 0) return -1;
  kill(pid_, SIGTERM);
  int status = 0;
  while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

std::string DevDaemon::Log() const { return ReadFile(root_ + "/stderr.log"); }

std::vector<nlohmann::json> DevDaemon::AuditRecords() const {
  return ReadAuditRecords(state_dir_ + "/audit");
}

}  // namespace vecseal::daemon::testing
