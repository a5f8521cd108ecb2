// A crash of vecseald must not write its memory (derived secrets, vectors in flight) to disk.
// The daemon runs as an unprivileged uid here, because only then does the kernel show whether a
// process is dumpable: it reports the files under /proc/PID of a non-dumpable process as root's. A
// `sleep` started the same way is the control that shows what a dumpable process looks like,
// and, when core_pattern names a plain file, that this machine would write its core.
#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "test_util.h"

namespace vecseal::security_testing {
namespace {

using policy::testing_util::ReadFile;

constexpr uid_t kDaemonUid = 64106;  // stands in for the `vecseal` system user

// A process started as kDaemonUid in `cwd`, its stdout on a pipe.
struct Child {
  pid_t pid = -1;
  int stdout_fd = -1;
};

Child SpawnAs(const std::vector<std::string>& argv, const std::string& cwd,
              const std::string& stderr_path, bool unlimited_core) {
  std::vector<std::string> args = argv;
  std::vector<char*> argp;
  for (auto& arg : args) argp.push_back(arg.data());
  argp.push_back(nullptr);
  char path_env[] = "PATH=/usr/bin:/bin";
  char* envp[] = {path_env, nullptr};
  int out[2];
  int exec_sync[2];  // close-on-exec: EOF on it means the exec happened (or the child died)
  if (pipe2(out, O_CLOEXEC) != 0 || pipe2(exec_sync, O_CLOEXEC) != 0) return {};
  const int err = open(stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  Child child;
  const pid_t parent = getpid();
  child.pid = fork();
  if (child.pid == 0) {
    const rlimit unlimited{RLIM_INFINITY, RLIM_INFINITY};
    if (dup2(out[1], STDOUT_FILENO) < 0 || dup2(err, STDERR_FILENO) < 0 ||
        chdir(cwd.c_str()) != 0 || (unlimited_core && setrlimit(RLIMIT_CORE, &unlimited) != 0) ||
        setgroups(0, nullptr) != 0 || setgid(kDaemonUid) != 0 || setuid(kDaemonUid) != 0) {
      _exit(127);
    }
    // After setuid, which clears it: a test that dies abruptly takes the child along.
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) _exit(127);
    execve(argp[0], argp.data(), envp);
    _exit(127);
  }
  close(out[1]);
  close(exec_sync[1]);
  close(err);
  char byte;
  while (read(exec_sync[0], &byte, 1) < 0 && errno == EINTR) {
  }
  close(exec_sync[0]);
  child.stdout_fd = out[0];
  return child;
}

// Waits (bounded, against a hang) for `marker` on the child's stdout.
bool WaitForLine(const Child& child, const std::string& marker) {
  std::string output;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (output.find(marker) == std::string::npos) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    pollfd fd{.fd = child.stdout_fd, .events = POLLIN, .revents = 0};
    if (left.count() <= 0 || poll(&fd, 1, static_cast<int>(left.count())) <= 0) return false;
    char buffer[512];
    const ssize_t n = read(child.stdout_fd, buffer, sizeof(buffer));
    if (n <= 0) return false;
    output.append(buffer, static_cast<size_t>(n));
  }
  return true;
}

int KillAndWait(pid_t pid, int signal_number) {
  kill(pid, signal_number);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

// The kernel gives the files under /proc/PID (not the directory itself) to root when the
// process is not dumpable, and to the process's euid otherwise.
uid_t ProcOwner(pid_t pid) {
  struct stat st {};
  const std::string path = "/proc/" + std::to_string(pid) + "/environ";
  return stat(path.c_str(), &st) == 0 ? st.st_uid : static_cast<uid_t>(-1);
}

// "Max core file size  0  0  bytes" -> "0 0".
std::string CoreLimit(pid_t pid) {
  std::istringstream lines(ReadFile("/proc/" + std::to_string(pid) + "/limits"));
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind("Max core file size", 0) != 0) continue;
    std::istringstream fields(line.substr(std::strlen("Max core file size")));
    std::string soft, hard;
    fields >> soft >> hard;
    return soft + " " + hard;
  }
  return "";
}

std::vector<std::string> Entries(const std::string& dir) {
  std::vector<std::string> names;
  std::error_code ignored;
  if (dir.empty()) return names;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ignored)) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

class CoreDumpTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    if (geteuid() != 0) {
      GTEST_SKIP() << "needs root: the daemon must run as another uid for /proc to show whether "
                      "it is dumpable";
    }
    char root_template[] = "/tmp/vecseal-security-core-XXXXXX";
    ASSERT_NE(mkdtemp(root_template), nullptr);
    root_ = root_template;
    ASSERT_EQ(chmod(root_.c_str(), 0755), 0);
    for (const std::string dir : {"/state", "/cwd", "/control"}) {
      ASSERT_EQ(mkdir((root_ + dir).c_str(), 0700), 0);
      ASSERT_EQ(chown((root_ + dir).c_str(), kDaemonUid, kDaemonUid), 0);
    }
  }
  void TearDown() override {
    std::error_code ignored;
    if (!root_.empty()) std::filesystem::remove_all(root_, ignored);
  }

  std::string root_;
};

TEST_P(CoreDumpTest, DaemonIsNotDumpableAndACrashWritesNoCore) {
  const int signal_number = GetParam();
  const std::string core_pattern = ReadFile("/proc/sys/kernel/core_pattern");
  const bool plain_core_file = !core_pattern.empty() && core_pattern[0] != '|' &&
                               core_pattern.find('/') == std::string::npos;

  // The control: an ordinary process of the same uid, started the same way, core limit raised.
  const Child control = SpawnAs({"/bin/sleep", "600"}, root_ + "/control", root_ + "/control.log",
                                /*unlimited_core=*/true);
  ASSERT_GT(control.pid, 0);
  close(control.stdout_fd);
  EXPECT_EQ(ProcOwner(control.pid), kDaemonUid) << "a dumpable process owns its /proc files";
  const int control_status = KillAndWait(control.pid, plain_core_file ? signal_number : SIGKILL);
  if (plain_core_file) {
    EXPECT_TRUE(WCOREDUMP(control_status))
        << "this machine writes cores (core_pattern " << core_pattern << "): the control dumped";
    EXPECT_FALSE(Entries(root_ + "/control").empty()) << "the control's core file";
  } else {
    RecordProperty("control_dump", "skipped: core_pattern is " + core_pattern);
  }

  const Child daemon = SpawnAs({VECSEALD_PATH, "--dev", "--state-dir", root_ + "/state"},
                               root_ + "/cwd", root_ + "/stderr.log", /*unlimited_core=*/true);
  ASSERT_GT(daemon.pid, 0);
  const bool ready = WaitForLine(daemon, "vecseald ready: socket ");
  close(daemon.stdout_fd);
  if (!ready) KillAndWait(daemon.pid, SIGKILL);
  ASSERT_TRUE(ready) << ReadFile(root_ + "/stderr.log");

  const std::string status = ReadFile("/proc/" + std::to_string(daemon.pid) + "/status");
  EXPECT_NE(status.find("\nUid:\t" + std::to_string(kDaemonUid) + "\t"), std::string::npos)
      << status;
  EXPECT_EQ(ProcOwner(daemon.pid), 0u) << "PR_SET_DUMPABLE 0 gives /proc/PID/* to root";
  EXPECT_EQ(CoreLimit(daemon.pid), "0 0") << "RLIMIT_CORE 0, although it was started unlimited";

  // A core_pattern naming an absolute directory would put the core there instead.
  std::string pattern_dir;
  if (!core_pattern.empty() && core_pattern[0] == '/') {
    pattern_dir = std::filesystem::path(core_pattern).parent_path().string();
  }
  const std::vector<std::string> pattern_dir_before = Entries(pattern_dir);
  const int crash = KillAndWait(daemon.pid, signal_number);
  if (!WIFSIGNALED(crash) &&
      ReadFile(root_ + "/stderr.log").find("Sanitizer") != std::string::npos) {
    GTEST_SKIP() << "the daemon is a sanitizer build, whose handler turns the signal into an "
                    "exit; dumpability and RLIMIT_CORE were checked above";
  }
  ASSERT_TRUE(WIFSIGNALED(crash)) << "status " << crash;
  EXPECT_EQ(WTERMSIG(crash), signal_number);
  EXPECT_FALSE(WCOREDUMP(crash)) << "the kernel wrote a core of the daemon";
  EXPECT_EQ(Entries(root_ + "/cwd"), std::vector<std::string>{}) << "no core file in its cwd";
  if (!pattern_dir.empty()) {
    EXPECT_EQ(Entries(pattern_dir), pattern_dir_before) << "no core file in " << pattern_dir;
  }
}

INSTANTIATE_TEST_SUITE_P(Signals, CoreDumpTest, ::testing::Values(SIGSEGV, SIGABRT),
                         [](const ::testing::TestParamInfo<int>& signal_info) {
                           return std::string(sigabbrev_np(signal_info.param));
                         });

}  // namespace
}  // namespace vecseal::security_testing
