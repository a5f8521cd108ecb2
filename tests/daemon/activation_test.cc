// systemd's side of the daemon's contract, played for real against `vecseald --dev` processes:
// socket activation through systemd-socket-activate (systemd's own tool for it), and the
// sd_notify datagrams (READY, RELOADING, STOPPING, WATCHDOG) read from a NOTIFY_SOCKET that the
// test binds, as the service manager does.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "support/dev_daemon.h"

extern char** environ;

namespace vecseal::daemon::testing {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Guards against a daemon that never gets there; not a performance expectation.
constexpr auto kDeadline = std::chrono::seconds(120);

constexpr std::string_view kReady = "READY=1\nSTATUS=serving";

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// The first executable `name` on PATH (or in /usr/bin and /bin), or "".
std::string FindTool(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::istringstream dirs(std::string(path != nullptr ? path : "") + ":/usr/bin:/bin");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    if (dir.empty()) continue;
    const std::string candidate = dir + "/" + name;
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

// A scratch root holding the dev state directory (0700, as dev mode demands), a dev overlay and
// the logs.
class Scratch {
 public:
  Scratch() {
    char pattern[] = "/tmp/vecseal-act-XXXXXX";
    if (mkdtemp(pattern) == nullptr) return;
    root_ = pattern;
    // Append-only audit files (root's default) would outlive the scratch directory.
    std::ofstream(overlay_path()) << R"({"audit": {"try_append_only": false}})";
    if (mkdir(state_dir().c_str(), 0700) != 0 || chmod(overlay_path().c_str(), 0600) != 0) {
      root_.clear();
    }
  }
  ~Scratch() {
    std::error_code ignored;
    if (!root_.empty()) std::filesystem::remove_all(root_, ignored);
  }
  bool ok() const { return !root_.empty(); }
  const std::string& root() const { return root_; }
  std::string state_dir() const { return root_ + "/state"; }
  std::string socket_path() const { return state_dir() + "/vecseald.sock"; }
  std::string stderr_path() const { return root_ + "/stderr.log"; }
  std::string overlay_path() const { return root_ + "/overlay.json"; }
  // `vecseald --dev` with this scratch's state directory and overlay.
  std::vector<std::string> DevArgs() const {
    return {VECSEALD_PATH, "--dev", "--state-dir", state_dir(), "--config", overlay_path()};
  }

 private:
  std::string root_;
};

// A child process, killed and reaped at the end of the test if it is still running.
class Child {
 public:
  Child() = default;
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (stdout_fd_ >= 0) close(stdout_fd_);
  }

  // Runs argv with the test's environment minus systemd's variables, plus `extra_env`. When
  // `own_pid_variable` is set, the child gets NAME=<its own pid>, as systemd sets LISTEN_PID and
  // WATCHDOG_PID. Standard output is kept in a pipe for ReadStdoutUntil; stderr goes to a file.
  bool Spawn(const std::vector<std::string>& argv, const std::vector<std::string>& extra_env,
             const std::string& stderr_path, const char* own_pid_variable, std::string* error) {
    std::vector<std::string> env_strings;
    for (char** entry = environ; *entry != nullptr; ++entry) {
      const std::string_view text(*entry);
      const bool systemd_variable =
          text.starts_with("NOTIFY_SOCKET=") || text.starts_with("LISTEN_") ||
          text.starts_with("WATCHDOG_");
      if (!systemd_variable) env_strings.emplace_back(text);
    }
    for (const auto& entry : extra_env) env_strings.push_back(entry);
    // Room for the digits, filled in by the child after fork without allocating.
    size_t pid_entry = 0;
    size_t pid_digits_at = 0;
    if (own_pid_variable != nullptr) {
      pid_entry = env_strings.size();
      env_strings.push_back(std::string(own_pid_variable) + "=");
      pid_digits_at = env_strings.back().size();
      env_strings.back().append(24, '\0');
    }
    std::vector<char*> envp;
    for (auto& text : env_strings) envp.push_back(text.data());
    envp.push_back(nullptr);
    std::vector<std::string> args = argv;
    std::vector<char*> argp;
    for (auto& arg : args) argp.push_back(arg.data());
    argp.push_back(nullptr);

    int out[2];
    if (pipe2(out, O_CLOEXEC) != 0) {
      *error = std::string("pipe2: ") + std::strerror(errno);
      return false;
    }
    const pid_t parent = getpid();
    pid_ = fork();
    if (pid_ < 0) {
      *error = std::string("fork: ") + std::strerror(errno);
      close(out[0]);
      close(out[1]);
      return false;
    }
    if (pid_ == 0) {
      // A test that dies abruptly (a crash, a ctest timeout) takes its daemon along.
      if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) _exit(127);
      if (own_pid_variable != nullptr) {
        char digits[24];
        size_t n = 0;
        for (auto pid = static_cast<unsigned long>(getpid()); pid > 0; pid /= 10) {
          digits[n++] = static_cast<char>('0' + pid % 10);
        }
        char* at = envp[pid_entry] + pid_digits_at;
        while (n > 0) *at++ = digits[--n];
      }
      const int log = open(stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
      const int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
      if (log < 0 || null < 0 || dup2(null, STDIN_FILENO) < 0 ||
          dup2(out[1], STDOUT_FILENO) < 0 || dup2(log, STDERR_FILENO) < 0) {
        _exit(127);
      }
      execve(argp[0], argp.data(), envp.data());
      _exit(127);
    }
    close(out[1]);
    stdout_fd_ = out[0];
    return true;
  }

  pid_t pid() const { return pid_; }

  // Reads standard output until it holds `text`; false at EOF or the deadline.
  bool ReadStdoutUntil(const std::string& text, std::string* output) {
    const auto deadline = Clock::now() + kDeadline;
    while (output->find(text) == std::string::npos) {
      const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
      pollfd poll_fd{.fd = stdout_fd_, .events = POLLIN, .revents = 0};
      if (left.count() <= 0 || poll(&poll_fd, 1, static_cast<int>(left.count())) <= 0) {
        return false;
      }
      char buffer[512];
      const ssize_t n = read(stdout_fd_, buffer, sizeof(buffer));
      if (n <= 0) return false;
      output->append(buffer, static_cast<size_t>(n));
    }
    return true;
  }

  // The exit status (128+signal when killed by one), or -1 when it outlives the deadline.
  int Wait() {
    const auto deadline = Clock::now() + kDeadline;
    while (pid_ > 0) {
      int status = 0;
      const pid_t done = waitpid(pid_, &status, WNOHANG);
      if (done == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      if (Clock::now() > deadline) return -1;
      std::this_thread::sleep_for(milliseconds(10));
    }
    return -1;
  }

  int Terminate() {
    if (pid_ > 0) kill(pid_, SIGTERM);
    return Wait();
  }

 private:
  pid_t pid_ = -1;
  int stdout_fd_ = -1;
};

// The service manager's end of NOTIFY_SOCKET: one datagram per sd_notify call.
class NotifySocket {
 public:
  ~NotifySocket() {
    if (fd_ >= 0) close(fd_);
  }

  bool Bind(const std::string& path, std::string* error) {
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, path.c_str(), sizeof(address.sun_path) - 1);
    if (fd_ < 0 || bind(fd_, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
      *error = "notify socket " + path + ": " + std::strerror(errno);
      return false;
    }
    return true;
  }

  // The next message, or nullopt when none arrives within `timeout`.
  std::optional<std::string> Next(milliseconds timeout) {
    pollfd poll_fd{.fd = fd_, .events = POLLIN, .revents = 0};
    if (poll(&poll_fd, 1, static_cast<int>(timeout.count())) <= 0) return std::nullopt;
    char message[4096];
    const ssize_t n = recv(fd_, message, sizeof(message), 0);
    if (n < 0) return std::nullopt;
    return std::string(message, static_cast<size_t>(n));
  }

  std::optional<std::string> Next() {
    return Next(std::chrono::duration_cast<milliseconds>(kDeadline));
  }

 private:
  int fd_ = -1;
};

// Sanitizer builds configure their runtime through these; systemd-socket-activate passes on
// only what -E names.
std::vector<std::string> PassThroughSanitizerOptions() {
  std::vector<std::string> flags;
  for (const char* name : {"ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS", "TSAN_OPTIONS"}) {
    if (std::getenv(name) != nullptr) flags.push_back(std::string("--setenv=") + name);
  }
  return flags;
}

bool WaitForSocketFile(const std::string& path, struct stat* st) {
  const auto deadline = Clock::now() + kDeadline;
  while (Clock::now() < deadline) {
    if (lstat(path.c_str(), st) == 0 && S_ISSOCK(st->st_mode)) return true;
    std::this_thread::sleep_for(milliseconds(10));
  }
  return false;
}

// systemd-socket-activate binds the path before it listens, so a connect between the two is
// refused: the first connect retries until the socket listens (it also starts vecseald).
int ConnectWhenListening(const std::string& path) {
  const auto deadline = Clock::now() + kDeadline;
  for (;;) {
    const int fd = ConnectUnix(path);
    if (fd >= 0 || errno != ECONNREFUSED || Clock::now() >= deadline) return fd;
    std::this_thread::sleep_for(milliseconds(10));
  }
}

bool SameFile(const struct stat& a, const struct stat& b) {
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino && a.st_ctim.tv_sec == b.st_ctim.tv_sec &&
         a.st_ctim.tv_nsec == b.st_ctim.tv_nsec && a.st_mode == b.st_mode;
}

TEST(ActivationTest, ServesTheSocketSystemdPassesAndLeavesItsFileAlone) {
  const std::string tool = FindTool("systemd-socket-activate");
  if (tool.empty()) {
    GTEST_SKIP() << "systemd-socket-activate is not installed (Debian package systemd), so "
                    "socket activation cannot be exercised here";
  }
  Scratch scratch;
  ASSERT_TRUE(scratch.ok()) << std::strerror(errno);
  const std::string socket_path = scratch.socket_path();
  std::vector<std::string> argv = {tool, "--listen=" + socket_path};
  for (auto& flag : PassThroughSanitizerOptions()) argv.push_back(flag);
  for (auto& arg : scratch.DevArgs()) argv.push_back(arg);

  Child daemon;
  std::string error;
  ASSERT_TRUE(daemon.Spawn(argv, {}, scratch.stderr_path(), nullptr, &error)) << error;
  struct stat before {};
  ASSERT_TRUE(WaitForSocketFile(socket_path, &before)) << ReadFile(scratch.stderr_path());

  // Sent before vecseald exists: systemd-socket-activate starts it on this first connection,
  // and the request must wait in the passed socket's backlog rather than be lost.
  const int early = ConnectWhenListening(socket_path);
  ASSERT_GE(early, 0) << std::strerror(errno);
  const std::string request =
      "GET /v1/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
  ASSERT_EQ(write(early, request.data(), request.size()), static_cast<ssize_t>(request.size()));
  std::string output;
  const bool ready = daemon.ReadStdoutUntil("vecseald ready: socket " + socket_path + "\n",
                                            &output);
  ASSERT_TRUE(ready) << "stdout: " << output << "\nstderr: " << ReadFile(scratch.stderr_path());
  const std::string early_response = ReadToEof(early);
  close(early);
  EXPECT_EQ(StatusOf(early_response), 200u) << early_response;

  HttpClient client(socket_path);
  const HttpResult health = client.Get("/v1/health");
  EXPECT_EQ(health.status, 200u) << health.body;
  EXPECT_EQ(health.Json().value("status", ""), "ok") << health.body;

  const std::string log = ReadFile(scratch.stderr_path());
  EXPECT_NE(log.find("level=info event=socket source=systemd\n"), std::string::npos) << log;
  EXPECT_EQ(log.find("source=self"), std::string::npos) << log;
  struct stat during {};
  ASSERT_EQ(lstat(socket_path.c_str(), &during), 0) << std::strerror(errno);
  EXPECT_TRUE(SameFile(before, during)) << "vecseald replaced or altered the socket file";

  EXPECT_EQ(daemon.Terminate(), 0) << ReadFile(scratch.stderr_path());
  // The file belongs to the socket unit, which outlives the service.
  struct stat after {};
  ASSERT_EQ(lstat(socket_path.c_str(), &after), 0) << "vecseald unlinked the socket file";
  EXPECT_TRUE(SameFile(before, after)) << "vecseald replaced or altered the socket file";
}

// A misconfigured socket unit stops the daemon with a message that names the fix.
TEST(ActivationTest, RefusesTwoPassedSockets) {
  const std::string tool = FindTool("systemd-socket-activate");
  if (tool.empty()) {
    GTEST_SKIP() << "systemd-socket-activate is not installed (Debian package systemd), so "
                    "socket activation cannot be exercised here";
  }
  Scratch scratch;
  ASSERT_TRUE(scratch.ok()) << std::strerror(errno);
  const std::string first = scratch.root() + "/first.sock";
  std::vector<std::string> argv = {tool, "--listen=" + first,
                                   "--listen=" + scratch.root() + "/second.sock"};
  for (auto& flag : PassThroughSanitizerOptions()) argv.push_back(flag);
  for (auto& arg : scratch.DevArgs()) argv.push_back(arg);

  Child daemon;
  std::string error;
  ASSERT_TRUE(daemon.Spawn(argv, {}, scratch.stderr_path(), nullptr, &error)) << error;
  struct stat st {};
  ASSERT_TRUE(WaitForSocketFile(first, &st)) << ReadFile(scratch.stderr_path());
  const int trigger = ConnectWhenListening(first);
  ASSERT_GE(trigger, 0) << std::strerror(errno);
  EXPECT_EQ(daemon.Wait(), 1) << ReadFile(scratch.stderr_path());
  close(trigger);
  const std::string log = ReadFile(scratch.stderr_path());
  EXPECT_NE(log.find("vecseald: systemd passed 2 sockets; vecseald.socket must declare exactly "
                     "one ListenStream="),
            std::string::npos)
      << log;
  EXPECT_FALSE(std::filesystem::exists(scratch.socket_path()))
      << "vecseald created a socket of its own besides the ones systemd passed";
}

// A vecseald started the way systemd starts a Type=notify unit, with the manager's socket bound
// by the test.
class NotifyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(scratch_.ok()) << std::strerror(errno);
    std::string error;
    ASSERT_TRUE(notify_.Bind(scratch_.root() + "/notify.sock", &error)) << error;
  }

  void Start(std::vector<std::string> env, const char* own_pid_variable) {
    env.push_back("NOTIFY_SOCKET=" + scratch_.root() + "/notify.sock");
    std::string error;
    ASSERT_TRUE(daemon_.Spawn(scratch_.DevArgs(), env, scratch_.stderr_path(), own_pid_variable,
                              &error))
        << error;
  }

  std::string Log() const { return ReadFile(scratch_.stderr_path()); }

  // The next notification, or a marker that names what happened instead.
  std::string NextMessage() {
    auto message = notify_.Next();
    return message ? *message : "(no notification within the deadline)";
  }

  Scratch scratch_;
  NotifySocket notify_;
  Child daemon_;
};

TEST_F(NotifyTest, ReadyThenReloadingAndReadyOnSighupThenStoppingOnSigterm) {
  Start({}, nullptr);
  ASSERT_EQ(NextMessage(), kReady) << Log();
  // READY=1 comes once the socket accepts connections.
  HttpClient client(scratch_.socket_path());
  EXPECT_EQ(client.Get("/v1/health").status, 200u);

  kill(daemon_.pid(), SIGHUP);
  EXPECT_EQ(NextMessage(), "RELOADING=1") << Log();
  EXPECT_EQ(NextMessage(), kReady) << Log();
  EXPECT_NE(Log().find("event=reloaded"), std::string::npos) << Log();

  kill(daemon_.pid(), SIGTERM);
  EXPECT_EQ(NextMessage(), "STOPPING=1") << Log();
  EXPECT_EQ(daemon_.Wait(), 0) << Log();
  // Nothing else, in particular no WATCHDOG=1 without WATCHDOG_USEC.
  const auto extra = notify_.Next(milliseconds(0));
  EXPECT_FALSE(extra.has_value()) << extra.value_or("");
}

TEST_F(NotifyTest, WatchdogIsPettedAtHalfThePeriodUntilStopping) {
  constexpr int kPeriodUsec = 200'000;
  Start({"WATCHDOG_USEC=" + std::to_string(kPeriodUsec)}, "WATCHDOG_PID");
  ASSERT_EQ(NextMessage(), kReady) << Log();

  constexpr int kPets = 6;
  std::vector<Clock::time_point> pets;
  while (pets.size() < kPets) {
    const std::string message = NextMessage();
    ASSERT_EQ(message, "WATCHDOG=1") << Log();
    pets.push_back(Clock::now());
  }
  // sigtimedwait never returns early, so the pets cannot come faster than half the period; a
  // slower machine only stretches the gaps, which are reported rather than asserted.
  const auto span = std::chrono::duration_cast<std::chrono::microseconds>(pets.back() -
                                                                          pets.front());
  EXPECT_GE(span.count(), (kPets - 1) * kPeriodUsec / 2 * 9 / 10);
  long longest_gap_us = 0;
  for (size_t i = 1; i < pets.size(); ++i) {
    longest_gap_us = std::max<long>(
        longest_gap_us,
        std::chrono::duration_cast<std::chrono::microseconds>(pets[i] - pets[i - 1]).count());
  }
  std::cout << "watchdog period " << kPeriodUsec << " us: " << kPets - 1 << " gaps in "
            << span.count() << " us, longest " << longest_gap_us << " us\n";

  kill(daemon_.pid(), SIGTERM);
  std::string message;
  do {
    message = NextMessage();
  } while (message == "WATCHDOG=1");
  EXPECT_EQ(message, "STOPPING=1") << Log();
  EXPECT_EQ(daemon_.Wait(), 0) << Log();
}

// systemd names the process the watchdog applies to; another process's watchdog is not ours.
TEST_F(NotifyTest, NoWatchdogWhenWatchdogPidNamesAnotherProcess) {
  Start({"WATCHDOG_USEC=200000", "WATCHDOG_PID=" + std::to_string(getpid())}, nullptr);
  ASSERT_EQ(NextMessage(), kReady) << Log();
  // Five periods: a daemon that ignored WATCHDOG_PID would have sent about ten pets.
  const auto unexpected = notify_.Next(milliseconds(1000));
  EXPECT_FALSE(unexpected.has_value()) << unexpected.value_or("");
  kill(daemon_.pid(), SIGTERM);
  EXPECT_EQ(NextMessage(), "STOPPING=1") << Log();
  EXPECT_EQ(daemon_.Wait(), 0) << Log();
}

}  // namespace
}  // namespace vecseal::daemon::testing
