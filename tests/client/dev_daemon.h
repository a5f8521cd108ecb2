// Test support shared by tests/client and tests/cli: run real processes, and a real
// `vecseald --dev` in a temporary state directory for the whole test binary.
#pragma once

#include <fcntl.h>
#include <linux/fs.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

extern char** environ;

namespace vecseal::testing {

struct ProcessResult {
  int exit_code = -1;  // 128 + signal when killed
  std::string out;
  std::string err;
};

inline std::vector<char*> CStrings(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (std::string& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// The current environment with `overrides` ("NAME=value"; "NAME=" alone removes NAME).
inline std::vector<std::string> EnvironmentWith(const std::vector<std::string>& overrides) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string entry = *e;
    bool replaced = false;
    for (const std::string& o : overrides) {
      if (entry.compare(0, o.find('=') + 1, o, 0, o.find('=') + 1) == 0) replaced = true;
    }
    if (!replaced) env.push_back(entry);
  }
  for (const std::string& o : overrides) {
    if (o.back() != '=') env.push_back(o);
  }
  return env;
}

// Starts argv[0] with stdout and stderr on pipes; returns the pid or -1.
inline pid_t Spawn(std::vector<std::string> argv, const std::vector<std::string>& env_overrides,
                   int& out_fd, int& err_fd) {
  int out_pipe[2], err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0 || ::pipe2(err_pipe, O_CLOEXEC) != 0) return -1;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err_pipe[1], 2);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  std::vector<std::string> env = EnvironmentWith(env_overrides);
  pid_t pid = -1;
  if (posix_spawn(&pid, argv[0].c_str(), &actions, nullptr, CStrings(argv).data(),
                  CStrings(env).data()) != 0) {
    pid = -1;
  }
  posix_spawn_file_actions_destroy(&actions);
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  out_fd = out_pipe[0];
  err_fd = err_pipe[0];
  return pid;
}

// `usage`, when given, receives the child's resource usage (e.g. its peak RSS, ru_maxrss).
inline int WaitExit(pid_t pid, struct rusage* usage = nullptr) {
  int status = 0;
  while (::wait4(pid, &status, 0, usage) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

// Reads both pipes to their ends, then reaps the process.
inline ProcessResult Collect(pid_t pid, int out_fd, int err_fd, struct rusage* usage = nullptr) {
  ProcessResult result;
  pollfd fds[2] = {{out_fd, POLLIN, 0}, {err_fd, POLLIN, 0}};
  std::string* sinks[2] = {&result.out, &result.err};
  int open = 2;
  char buffer[65536];
  while (open > 0) {
    if (::poll(fds, 2, -1) < 0 && errno != EINTR) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      const ssize_t n = ::read(fds[i].fd, buffer, sizeof(buffer));
      if (n > 0) {
        sinks[i]->append(buffer, static_cast<size_t>(n));
      } else if (n == 0 || errno != EINTR) {
        ::close(fds[i].fd);
        fds[i].fd = -1;
        --open;
      }
    }
  }
  result.exit_code = WaitExit(pid, usage);
  return result;
}

inline ProcessResult RunProcess(std::vector<std::string> argv,
                                const std::vector<std::string>& env_overrides = {}) {
  int out_fd = -1, err_fd = -1;
  const pid_t pid = Spawn(std::move(argv), env_overrides, out_fd, err_fd);
  if (pid < 0) return ProcessResult{-1, "", "spawn failed"};
  return Collect(pid, out_fd, err_fd);
}

inline std::string MakeTempDir(const char* prefix) {
  std::string pattern = std::string("/tmp/") + prefix + "-XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) return "";
  return pattern;
}

// One `vecseald --dev` for the whole test binary: starting it (and its SoftHSM2 token) is the
// slow part, and tests use distinct key names so that they do not interfere. A test that needs
// a differently configured daemon makes its own and calls SetUp() and TearDown() itself.
class DevDaemon : public ::testing::Environment {
 public:
  // `overlay_json`: passed as --config (dev mode's tunables). `policy_json`: written as the
  // state directory's policy.json before the start, which dev mode then keeps instead of its
  // grant-everything policy. Empty: none.
  explicit DevDaemon(std::string binary, std::string overlay_json = {}, std::string policy_json = {})
      : binary_(std::move(binary)),
        overlay_json_(std::move(overlay_json)),
        policy_json_(std::move(policy_json)) {}
  // A test's own daemon is stopped even when an assertion returns early.
  ~DevDaemon() override { TearDown(); }

  static DevDaemon* instance() { return instance_; }
  static void set_instance(DevDaemon* daemon) { instance_ = daemon; }

  // Empty when the daemon runs; otherwise why not (for GTEST_SKIP).
  const std::string& unavailable() const { return unavailable_; }
  const std::string& socket() const { return socket_; }
  const std::string& state_dir() const { return state_dir_; }
  pid_t pid() const { return pid_; }
  // What the daemon wrote on stdout and stderr so far, for failure messages.
  std::string Log() const { return root_.empty() ? "" : ReadFile(root_ + "/vecseald.log"); }

  void SetUp() override {
    if (!std::filesystem::exists(binary_)) {
      unavailable_ = "vecseald is not built at " + binary_;
      return;
    }
    root_ = MakeTempDir("vecseal-dev");
    state_dir_ = root_ + "/state";
    const std::string log = root_ + "/vecseald.log";
    std::filesystem::create_directory(state_dir_);
    std::filesystem::permissions(state_dir_, std::filesystem::perms::owner_all);
    std::vector<std::string> argv = {binary_, "--dev", "--state-dir", state_dir_};
    if (!policy_json_.empty() && !WriteFile(state_dir_ + "/policy.json", policy_json_)) {
      unavailable_ = "cannot write " + state_dir_ + "/policy.json";
      return;
    }
    if (!overlay_json_.empty()) {
      if (!WriteFile(root_ + "/overlay.json", overlay_json_)) {
        unavailable_ = "cannot write " + root_ + "/overlay.json";
        return;
      }
      argv.push_back("--config");
      argv.push_back(root_ + "/overlay.json");
    }
    // Output goes to a file, not a pipe: nobody drains a pipe during the tests, and a full one
    // would block the daemon.
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    std::vector<std::string> env = EnvironmentWith({});
    if (posix_spawn(&pid_, binary_.c_str(), &actions, nullptr, CStrings(argv).data(),
                    CStrings(env).data()) != 0) {
      pid_ = -1;
    }
    posix_spawn_file_actions_destroy(&actions);
    if (pid_ < 0) {
      unavailable_ = "cannot start " + binary_;
      return;
    }
    // Wait for the ready line. The bound only keeps a broken daemon from hanging the suite.
    const std::string marker = "vecseald ready: socket ";
    std::string seen;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (std::chrono::steady_clock::now() < deadline) {
      seen = ReadFile(log);
      const size_t at = seen.find(marker);
      if (at != std::string::npos && seen.find('\n', at) != std::string::npos) {
        const size_t begin = at + marker.size();
        socket_ = seen.substr(begin, seen.find('\n', at) - begin);
        return;
      }
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        break;
      }
      ::usleep(20000);
    }
    unavailable_ = "vecseald --dev did not become ready; its output: " + seen;
    TearDown();
  }

  // Mode 0600: the daemon refuses config and policy files that others may write.
  static bool WriteFile(const std::string& path, const std::string& text) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return false;
    const bool written = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
    return ::close(fd) == 0 && written;
  }

  static std::string ReadFile(const std::string& path) {
    std::string out;
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return out;
    char buffer[4096];
    ssize_t n;
    while ((n = ::read(fd, buffer, sizeof(buffer))) > 0) out.append(buffer, static_cast<size_t>(n));
    ::close(fd);
    return out;
  }

  void TearDown() override {
    if (pid_ > 0) {
      ::kill(pid_, SIGCONT);
      ::kill(pid_, SIGTERM);
      WaitExit(pid_);
      pid_ = -1;
    }
    if (!root_.empty()) {
      ClearAppendOnly(root_);
      std::error_code ignored;
      std::filesystem::remove_all(root_, ignored);
      root_.clear();
    }
  }

  // Run as root, the daemon makes its audit files append-only (chattr +a), which no one may
  // delete; clearing the flag again lets the directory go.
  static void ClearAppendOnly(const std::string& dir) {
    std::error_code ec;
    for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
         !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
      if (!it->is_regular_file(ec)) continue;
      const int fd = ::open(it->path().c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
      if (fd < 0) continue;
      int flags = 0;
      if (::ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0 && (flags & FS_APPEND_FL) != 0) {
        flags &= ~FS_APPEND_FL;
        ::ioctl(fd, FS_IOC_SETFLAGS, &flags);
      }
      ::close(fd);
    }
  }

 private:
  static inline DevDaemon* instance_ = nullptr;
  std::string binary_;
  std::string overlay_json_;
  std::string policy_json_;
  std::string state_dir_;
  std::string socket_;
  std::string unavailable_;
  std::string root_;
  pid_t pid_ = -1;
};

#define VECSEAL_REQUIRE_DAEMON()                                                     \
  do {                                                                               \
    auto* daemon_ = ::vecseal::testing::DevDaemon::instance();                       \
    if (daemon_ == nullptr || !daemon_->unavailable().empty()) {                     \
      GTEST_SKIP() << (daemon_ ? daemon_->unavailable() : "no daemon environment"); \
    }                                                                                \
  } while (false)

}  // namespace vecseal::testing
