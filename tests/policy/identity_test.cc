// PeerIdentity with real processes on a real Unix socket: helpers that connect, a child that
// drops to another uid, a copied binary, a python3 script, a peer that execs, a peer that exits.
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "test_util.h"
#include "vecseal/policy/identity.h"
#include "vecseal/policy/policy.h"

namespace vecseal::policy {
namespace {

using testing_util::Sha256OfFile;
using testing_util::TempDir;
using testing_util::WriteFile;

// Only a guard against a broken helper hanging the suite; correctness never depends on it.
constexpr int kGuardMillis = 20000;

std::string RealPath(const std::string& path) {
  char buffer[PATH_MAX];
  return realpath(path.c_str(), buffer) ? std::string(buffer) : std::string();
}

class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  Fd& operator=(Fd&& other) noexcept {
    std::swap(fd_, other.fd_);
    return *this;
  }
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  int get() const { return fd_; }
  void reset() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

bool WaitReadable(int fd) {
  pollfd p{fd, POLLIN, 0};
  return poll(&p, 1, kGuardMillis) == 1;
}

// A python3 script that connects to argv[1], sends 'A' and waits.
constexpr const char* kConnectingScript =
    "import socket, sys\n"
    "s = socket.socket(socket.AF_UNIX)\n"
    "s.connect(sys.argv[1])\n"
    "s.sendall(b'A')\n"
    "s.recv(1)\n";

// Tells a connected peer_helper to exec its program, and waits for the new program's 'R'.
bool LetItExec(int conn) {
  char byte = 'G';
  return write(conn, &byte, 1) == 1 && WaitReadable(conn) && read(conn, &byte, 1) == 1 &&
         byte == 'R';
}

// The daemon's side: a listening socket in a temp dir, and the processes started against it.
class PeerTest : public testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    ASSERT_EQ(chmod(dir_.path().c_str(), 0755), 0);
    socket_path_ = dir_ / "s";
    listener_ = Fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    ASSERT_LT(socket_path_.size(), sizeof addr.sun_path);
    std::strcpy(addr.sun_path, socket_path_.c_str());
    ASSERT_EQ(bind(listener_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    ASSERT_EQ(chmod(socket_path_.c_str(), 0777), 0);
    ASSERT_EQ(listen(listener_.get(), 8), 0);
  }

  void TearDown() override {
    for (pid_t pid : children_) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }

  IdentityResolverOptions Options() const {
    IdentityResolverOptions options;
    options.use_peer_pidfd = GetParam();
    return options;
  }

  // Starts `argv` with `cwd`, as nobody (uid and gid 65534, no groups) if asked; returns its pid.
  pid_t Spawn(const std::vector<std::string>& argv, const std::string& cwd = "/",
              bool as_nobody = false, const std::vector<std::string>& env = {}) {
    pid_t pid = fork();
    if (pid == 0) {
      for (const std::string& entry : env) {
        size_t eq = entry.find('=');
        setenv(entry.substr(0, eq).c_str(), entry.substr(eq + 1).c_str(), 1);
      }
      if (chdir(cwd.c_str()) != 0) _exit(126);
      if (as_nobody && (setgroups(0, nullptr) != 0 || setgid(65534) != 0 || setuid(65534) != 0)) {
        _exit(125);
      }
      std::vector<char*> args;
      for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
    children_.push_back(pid);
    return pid;
  }

  // Accepts one connection and reads the peer's 'A'.
  Fd Accept() {
    if (!WaitReadable(listener_.get())) return Fd();
    Fd conn(accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    char byte = 0;
    if (!WaitReadable(conn.get()) || read(conn.get(), &byte, 1) != 1 || byte != 'A') return Fd();
    return conn;
  }

  void Reap(pid_t pid) {
    waitpid(pid, nullptr, 0);
    std::erase(children_, pid);
  }

  std::vector<std::string> HelperArgs() const {
    return {VECSEAL_PEER_HELPER, "connect", socket_path_};
  }

  TempDir dir_;
  std::string socket_path_;
  Fd listener_;
  std::vector<pid_t> children_;
};

TEST_P(PeerTest, IdentifiesHelperFromTheKernel) {
  IdentityResolver resolver(Options());
  pid_t pid = Spawn(HelperArgs());
  Fd conn = Accept();
  ASSERT_GE(conn.get(), 0);
  Result<PeerIdentity> peer = PeerIdentity::FromSocket(conn.get(), resolver);
  ASSERT_TRUE(peer.ok()) << peer.status().ToString();
  EXPECT_EQ(peer->pinned_by_socket(), GetParam());
  const CallerIdentity& id = peer->identity();
  EXPECT_EQ(id.pid, pid);
  EXPECT_EQ(id.uid, geteuid());
  EXPECT_EQ(id.gid, getegid());
  EXPECT_EQ(id.exe, RealPath(VECSEAL_PEER_HELPER));
  EXPECT_EQ(id.exe_sha256, Sha256OfFile(VECSEAL_PEER_HELPER));
  EXPECT_EQ(id.script, "");
  EXPECT_EQ(id.script_sha256, "");
  // Nothing changed: Refresh keeps the identity and does not re-resolve.
  uint64_t resolutions = resolver.stats().resolutions;
  ASSERT_TRUE(peer->Refresh(resolver).ok());
  EXPECT_EQ(resolver.stats().resolutions, resolutions);
  EXPECT_EQ(peer->identity().exe_sha256, id.exe_sha256);
}

TEST_P(PeerTest, DigestIsCachedAcrossConnections) {
  IdentityResolver resolver(Options());
  Spawn(HelperArgs());
  Fd first = Accept();
  ASSERT_GE(first.get(), 0);
  ASSERT_TRUE(PeerIdentity::FromSocket(first.get(), resolver).ok());
  IdentityResolver::Stats after_first = resolver.stats();
  Spawn(HelperArgs());
  Fd second = Accept();
  ASSERT_GE(second.get(), 0);
  Result<PeerIdentity> peer = PeerIdentity::FromSocket(second.get(), resolver);
  ASSERT_TRUE(peer.ok());
  IdentityResolver::Stats after_second = resolver.stats();
  EXPECT_EQ(after_second.digest_cache_misses, after_first.digest_cache_misses);
  EXPECT_EQ(after_second.digest_cache_hits, after_first.digest_cache_hits + 1);
  EXPECT_EQ(peer->identity().exe_sha256, Sha256OfFile(VECSEAL_PEER_HELPER));
}

TEST_P(PeerTest, CopiedBinaryWithOtherDigestIsDenied) {
  std::string copy = dir_ / "helper-copy";
  WriteFile(copy, testing_util::ReadFile(VECSEAL_PEER_HELPER) + std::string(1, '\0'), 0755);
  std::string original_digest = Sha256OfFile(VECSEAL_PEER_HELPER);
  ASSERT_NE(Sha256OfFile(copy), original_digest);
  Result<PolicyPtr> policy = Policy::Parse(R"({"version": 1, "rules": [{"id": "reviewed",
      "callers": {"exe_sha256": ")" + original_digest + R"("}, "keys": ["*"],
      "operations": ["encrypt"]}]})");
  ASSERT_TRUE(policy.ok());

  IdentityResolver resolver(Options());
  Spawn(HelperArgs());
  Fd original_conn = Accept();
  ASSERT_GE(original_conn.get(), 0);
  Result<PeerIdentity> original = PeerIdentity::FromSocket(original_conn.get(), resolver);
  ASSERT_TRUE(original.ok());
  EXPECT_EQ((*policy)->Decide(original->identity(), Operation::kEncrypt, "k").rule_id, "reviewed");

  Spawn({copy, "connect", socket_path_});
  Fd copy_conn = Accept();
  ASSERT_GE(copy_conn.get(), 0);
  Result<PeerIdentity> copied = PeerIdentity::FromSocket(copy_conn.get(), resolver);
  ASSERT_TRUE(copied.ok());
  EXPECT_EQ(copied->identity().exe, copy);
  EXPECT_EQ(copied->identity().exe_sha256, Sha256OfFile(copy));
  EXPECT_FALSE((*policy)->Decide(copied->identity(), Operation::kEncrypt, "k").granted);
}

TEST_P(PeerTest, ReplacingTheFileOnDiskDoesNotChangeTheDigest) {
  // The peer runs a modified copy, then puts the reviewed binary at the path it ran from. The
  // digest must still be that of the image running, read through /proc/PID/exe.
  std::string path = dir_ / "helper";
  WriteFile(path, testing_util::ReadFile(VECSEAL_PEER_HELPER) + "tampered", 0755);
  std::string running_digest = Sha256OfFile(path);
  IdentityResolver resolver(Options());
  Spawn({path, "connect", socket_path_});
  Fd conn = Accept();
  ASSERT_GE(conn.get(), 0);
  ASSERT_EQ(unlink(path.c_str()), 0);
  WriteFile(path, testing_util::ReadFile(VECSEAL_PEER_HELPER), 0755);
  ASSERT_NE(Sha256OfFile(path), running_digest);

  Result<PeerIdentity> peer = PeerIdentity::FromSocket(conn.get(), resolver);
  ASSERT_TRUE(peer.ok()) << peer.status().ToString();
  EXPECT_EQ(peer->identity().exe_sha256, running_digest);
  EXPECT_EQ(peer->identity().exe, path + " (deleted)");
}

TEST_P(PeerTest, PythonScriptIsIdentifiedByPathAndDigest) {
  if (access("/usr/bin/python3", X_OK) != 0) GTEST_SKIP() << "/usr/bin/python3 is not installed";
  std::string script = dir_ / "export.py";
  WriteFile(script,
            "import socket, sys\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "s.connect(sys.argv[1])\n"
            "s.sendall(b'A')\n"
            "s.recv(1)\n");
  IdentityResolver resolver(Options());
  Spawn({"/usr/bin/python3", "-u", script, socket_path_}, dir_.path());
  Fd conn = Accept();
  ASSERT_GE(conn.get(), 0);
  Result<PeerIdentity> peer = PeerIdentity::FromSocket(conn.get(), resolver);
  ASSERT_TRUE(peer.ok()) << peer.status().ToString();
  const CallerIdentity& id = peer->identity();
  EXPECT_EQ(id.exe, RealPath("/usr/bin/python3"));
  EXPECT_EQ(id.script, RealPath(script));
  EXPECT_EQ(id.script_sha256, Sha256OfFile(script));

  Result<PolicyPtr> policy = Policy::Parse(R"({"version": 1, "rules": [{"id": "export",
      "callers": {"script": ")" + RealPath(script) + R"(", "script_sha256": ")" +
                                           Sha256OfFile(script) + R"("},
      "keys": ["support-*"], "operations": ["encrypt"]}]})");
  ASSERT_TRUE(policy.ok()) << policy.status().ToString();
  EXPECT_EQ((*policy)->Decide(id, Operation::kEncrypt, "support-ratings").rule_id, "export");
  CallerIdentity edited = id;
  edited.script_sha256 = std::string(64, '0');
  EXPECT_FALSE((*policy)->Decide(edited, Operation::kEncrypt, "support-ratings").granted);
}

TEST_P(PeerTest, ScriptArgumentThatIsNoRegularFileStaysUnknown) {
  // The helper, named python3, takes its "connect" argument for the script; here that is a FIFO
  // in its working directory. The command line is the peer's to write: a path that is no regular
  // file is neither opened for reading nor reported.
  std::string interpreter = dir_ / "python3";
  WriteFile(interpreter, testing_util::ReadFile(VECSEAL_PEER_HELPER), 0755);
  ASSERT_EQ(mkfifo((dir_ / "connect").c_str(), 0644), 0);
  IdentityResolver resolver(Options());
  Spawn({interpreter, "connect", socket_path_}, dir_.path());
  Fd conn = Accept();
  ASSERT_GE(conn.get(), 0);
  Result<PeerIdentity> peer = PeerIdentity::FromSocket(conn.get(), resolver);
  ASSERT_TRUE(peer.ok()) << peer.status().ToString();
  EXPECT_EQ(peer->identity().exe, interpreter);
  EXPECT_EQ(peer->identity().script, "");
  EXPECT_EQ(peer->identity().script_sha256, "");
}

TEST_P(PeerTest, ScriptTheCallerCannotReadIsNotReported) {
  // python3 runs as nobody; once it has read its script, the file becomes root-only. Nobody must
  // not learn the path or digest of a root-only file through the daemon, which opens it as root.
  if (geteuid() != 0) GTEST_SKIP() << "dropping to nobody needs root";
  if (access("/usr/bin/python3", X_OK) != 0) GTEST_SKIP() << "/usr/bin/python3 is not installed";
  std::string script = dir_ / "export.py";
  for (mode_t mode : {0600, 0644}) {
    WriteFile(script, kConnectingScript, 0644);
    ASSERT_EQ(chmod(script.c_str(), 0644), 0);
    Spawn({"/usr/bin/python3", script, socket_path_}, dir_.path(), /*as_nobody=*/true);
    IdentityResolver resolver(Options());
    Fd conn = Accept();
    ASSERT_GE(conn.get(), 0);
    ASSERT_EQ(chmod(script.c_str(), mode), 0);
    Result<PeerIdentity> peer = PeerIdentity::FromSocket(conn.get(), resolver);
    ASSERT_TRUE(peer.ok()) << peer.status().ToString();
    bool readable = mode == 0644;
    EXPECT_EQ(peer->identity().script, readable ? script : "") << std::oct << mode;
    EXPECT_EQ(peer->identity().script_sha256, readable ? Sha256OfFile(script) : "")
        << std::oct << mode;
  }
}

TEST_P(PeerTest, PeerThatExecsIsReidentified) {
  std::string other = dir_ / "other-program";
  WriteFile(other, testing_util::ReadFile(VECSEAL_PEER_HELPER) + "other", 0755);
  IdentityResolver resolver(Options());
  std::vector<std::string> args = HelperArgs();
  args.insert(args.end(), {other, "hold"});
  Spawn(args);
  Fd conn = Accept();
  ASSERT_GE(conn.get(), 0);
  Result<PeerIdentity> peer = PeerIdentity::FromSocket(conn.get(), resolver);
  ASSERT_TRUE(peer.ok());
  EXPECT_EQ(peer->identity().exe, RealPath(VECSEAL_PEER_HELPER));

  ASSERT_TRUE(LetItExec(conn.get()));

  uint64_t resolutions = resolver.stats().resolutions;
  ASSERT_TRUE(peer->Refresh(resolver).ok());
  EXPECT_EQ(resolver.stats().resolutions, resolutions + 1);
  EXPECT_EQ(peer->identity().exe, other);
  EXPECT_EQ(peer->identity().exe_sha256, Sha256OfFile(other));
  EXPECT_EQ(peer->identity().uid, geteuid());
}

TEST_P(PeerTest, ExecOfTheSameProgramWithTheSameArgumentsIsNoticed) {
  if (testing_util::ReadFile("/proc/sys/kernel/randomize_va_space") == "0\n") {
    GTEST_SKIP() << "ASLR is off (kernel.randomize_va_space=0): such an exec is invisible";
  }
  setenv("VECSEAL_TEST_SOCKET", socket_path_.c_str(), 1);
  Spawn({VECSEAL_PEER_HELPER, "again"});
  unsetenv("VECSEAL_TEST_SOCKET");
  Fd conn = Accept();
  ASSERT_GE(conn.get(), 0);
  IdentityResolver resolver(Options());
  Result<PeerIdentity> peer = PeerIdentity::FromSocket(conn.get(), resolver);
  ASSERT_TRUE(peer.ok());
  ASSERT_TRUE(LetItExec(conn.get()));
  uint64_t resolutions = resolver.stats().resolutions;
  ASSERT_TRUE(peer->Refresh(resolver).ok());
  EXPECT_EQ(resolver.stats().resolutions, resolutions + 1);
  EXPECT_EQ(peer->identity().exe, RealPath(VECSEAL_PEER_HELPER));
}

TEST_P(PeerTest, PeerThatExitsIsGone) {
  IdentityResolver resolver(Options());
  pid_t pid = Spawn(HelperArgs());
  Fd conn = Accept();
  ASSERT_GE(conn.get(), 0);
  Result<PeerIdentity> peer = PeerIdentity::FromSocket(conn.get(), resolver);
  ASSERT_TRUE(peer.ok());
  // Exited but not yet reaped (a zombie) already counts as gone.
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  siginfo_t info{};
  ASSERT_EQ(waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOWAIT), 0);
  Status zombie = peer->Refresh(resolver);
  EXPECT_EQ(zombie.reason(), "peer_gone");
  EXPECT_EQ(zombie.code(), Code::kPermissionDenied);
  Reap(pid);
  EXPECT_EQ(peer->Refresh(resolver).reason(), "peer_gone");
}

TEST_P(PeerTest, PeerGoneBeforeIdentification) {
  IdentityResolver resolver(Options());
  pid_t pid = Spawn(HelperArgs());
  Fd conn = Accept();
  ASSERT_GE(conn.get(), 0);
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  Reap(pid);
  Result<PeerIdentity> peer = PeerIdentity::FromSocket(conn.get(), resolver);
  ASSERT_FALSE(peer.ok());
  EXPECT_EQ(peer.status().reason(), "peer_gone");
  EXPECT_EQ(peer.status().code(), Code::kPermissionDenied);
}

TEST_P(PeerTest, ChildThatDropsToAnotherUidAndGid) {
  if (geteuid() != 0) GTEST_SKIP() << "dropping to another uid and gid needs root";
  constexpr uid_t kNobody = 65534;
  constexpr gid_t kNogroup = 65534;
  constexpr gid_t kUsers = 100;
  pid_t pid = fork();
  if (pid == 0) {
    // Only async-signal-safe calls between fork and _exit.
    if (setgroups(1, &kUsers) != 0 || setgid(kNogroup) != 0 || setuid(kNobody) != 0) _exit(10);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strcpy(addr.sun_path, socket_path_.c_str());
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) _exit(11);
    char byte = 'A';
    if (write(fd, &byte, 1) != 1) _exit(12);
    while (read(fd, &byte, 1) > 0) {
    }
    _exit(0);
  }
  children_.push_back(pid);
  IdentityResolver resolver(Options());
  Fd conn = Accept();
  ASSERT_GE(conn.get(), 0);
  Result<PeerIdentity> peer = PeerIdentity::FromSocket(conn.get(), resolver);
  ASSERT_TRUE(peer.ok()) << peer.status().ToString();
  const CallerIdentity& id = peer->identity();
  EXPECT_EQ(id.uid, kNobody);
  EXPECT_EQ(id.gid, kNogroup);
  EXPECT_EQ(id.supplementary_gids, std::vector<gid_t>{kUsers});
  const struct group* users = getgrgid(kUsers);
  const struct passwd* nobody = getpwuid(kNobody);
  ASSERT_NE(nobody, nullptr) << "this test expects uid 65534 to be in /etc/passwd";
  ASSERT_NE(users, nullptr) << "this test expects gid 100 to be in /etc/group";
  EXPECT_EQ(id.user, nobody->pw_name);
  EXPECT_EQ(id.group_names, std::vector<std::string>{users->gr_name});
  // The running image is this test binary, whatever the uid.
  EXPECT_EQ(id.exe_sha256, Sha256OfFile("/proc/self/exe"));

  Result<PolicyPtr> policy = Policy::Parse(R"({"version": 1, "rules": [
      {"id": "root-only", "callers": {"uid": 0}, "keys": ["*"], "operations": ["encrypt"]},
      {"id": "by-gid", "callers": {"uid": 65534, "gid": 100}, "keys": ["k"],
       "operations": ["decrypt"]}]})");
  ASSERT_TRUE(policy.ok());
  EXPECT_FALSE((*policy)->Decide(id, Operation::kEncrypt, "k").granted);
  EXPECT_EQ((*policy)->Decide(id, Operation::kDecrypt, "k").rule_id, "by-gid");
}

TEST_P(PeerTest, ExecOfASetuidProgramKeepsTheConnectTimeUid) {
  // nobody connects, then execs a setuid-root program. Had Refresh taken the euid from
  // /proc/PID/status, any user could become root to the daemon through a blocking setuid program
  // while a forked sibling kept using the socket.
  if (geteuid() != 0) {
    GTEST_SKIP() << "making a setuid-root program and dropping to nobody needs root";
  }
  if (testing_util::ReadFile("/proc/self/status").find("NoNewPrivs:\t1") != std::string::npos) {
    GTEST_SKIP() << "no_new_privs is set: a setuid exec would not raise the euid";
  }
  constexpr uid_t kNobody = 65534;
  constexpr gid_t kNogroup = 65534;
  std::string plain = dir_ / "plain";
  std::string setuid_root = dir_ / "setuid-root";
  WriteFile(plain, testing_util::ReadFile(VECSEAL_PEER_HELPER), 0755);
  WriteFile(setuid_root, testing_util::ReadFile(VECSEAL_PEER_HELPER) + "suid", 0755);
  ASSERT_EQ(chmod(setuid_root.c_str(), 04755), 0);
  pid_t pid = Spawn({plain, "connect", socket_path_, setuid_root, "hold"}, "/", /*as_nobody=*/true);
  IdentityResolver resolver(Options());
  Fd conn = Accept();
  ASSERT_GE(conn.get(), 0);
  Result<PeerIdentity> peer = PeerIdentity::FromSocket(conn.get(), resolver);
  ASSERT_TRUE(peer.ok()) << peer.status().ToString();
  ASSERT_EQ(peer->identity().uid, kNobody);

  ASSERT_TRUE(LetItExec(conn.get()));
  std::string status = testing_util::ReadFile("/proc/" + std::to_string(pid) + "/status");
  if (status.find("\nUid:\t65534\t0\t") == std::string::npos) {
    GTEST_SKIP() << "the setuid exec did not raise the euid (nosuid mount?)";
  }

  ASSERT_TRUE(peer->Refresh(resolver).ok());
  EXPECT_EQ(peer->identity().exe, setuid_root);
  EXPECT_EQ(peer->identity().uid, kNobody);
  EXPECT_EQ(peer->identity().gid, kNogroup);
  Result<PolicyPtr> policy = Policy::Parse(R"({"version": 1, "rules": [
      {"id": "root-only", "callers": {"uid": 0}, "keys": ["*"], "operations": ["encrypt"]}]})");
  ASSERT_TRUE(policy.ok());
  EXPECT_FALSE((*policy)->Decide(peer->identity(), Operation::kEncrypt, "k").granted);
}

TEST_P(PeerTest, SocketPairWithoutPeerProcessCredentialsStillNamesUs) {
  // socketpair() records the creator's credentials: the peer is this process.
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
  Fd a(fds[0]);
  Fd b(fds[1]);
  IdentityResolver resolver(Options());
  Result<PeerIdentity> peer = PeerIdentity::FromSocket(a.get(), resolver);
  ASSERT_TRUE(peer.ok()) << peer.status().ToString();
  EXPECT_EQ(peer->identity().pid, getpid());
}

// Why the only rule of `policy_json` does not match `id`; empty when it matches.
std::string WhyNot(const std::string& policy_json, const CallerIdentity& id) {
  Result<PolicyPtr> policy = Policy::Parse(policy_json);
  if (!policy.ok()) return "bad policy: " + policy.status().ToString();
  std::vector<RuleExplanation> rules = (*policy)->Explain(id);
  if (rules.size() != 1) return "expected one rule";
  return rules[0].caller_matches ? std::string() : rules[0].why_not;
}

std::string ExeSha256Rule(const std::string& digest) {
  return R"({"version": 1, "rules": [{"id": "pinned", "callers": {"exe_sha256": ")" + digest +
         R"("}, "keys": ["*"], "operations": ["encrypt"]}]})";
}

std::string ScriptRule(const std::string& script) {
  return R"({"version": 1, "rules": [{"id": "export", "callers": {"user": "root", "script": ")" +
         script + R"(", "script_sha256": ")" + Sha256OfFile(script) +
         R"("}, "keys": ["*"], "operations": ["encrypt"]}]})";
}

// The identity of a peer started with `argv`, `env` and working directory `cwd`.
class CodeTest : public PeerTest {
 protected:
  Result<CallerIdentity> Identify(const std::vector<std::string>& argv,
                                  const std::vector<std::string>& env, const std::string& cwd = "/") {
    Spawn(argv, cwd, /*as_nobody=*/false, env);
    Fd conn = Accept();
    if (conn.get() < 0) return Status(Code::kUnavailable, "no_peer", "the peer did not connect");
    IdentityResolver resolver(Options());
    Result<PeerIdentity> peer = PeerIdentity::FromSocket(conn.get(), resolver);
    if (!peer.ok()) return peer.status();
    return peer->identity();
  }

  // A copy of the helper in the temp dir, so its digest is the helper's and nothing else's.
  std::string HelperDigest() const { return Sha256OfFile(VECSEAL_PEER_HELPER); }

  bool HavePython() const { return access("/usr/bin/python3", X_OK) == 0; }

  std::string WriteScript() {
    std::string script = dir_ / "export.py";
    WriteFile(script, kConnectingScript, 0644);
    return script;
  }
};

TEST_P(CodeTest, CleanProgramIsGrantedByExeSha256) {
  Result<CallerIdentity> id = Identify(HelperArgs(), {});
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  EXPECT_EQ(id->code_unproven, "");
  EXPECT_EQ(WhyNot(ExeSha256Rule(HelperDigest()), *id), "");
}

TEST_P(CodeTest, LoaderVariablesRefuseExeSha256) {
  // A library path that does not exist: the loader reports it and carries on, so only the
  // variable itself, not a mapping, shows what the caller asked for.
  for (const std::string name : {"LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT"}) {
    Result<CallerIdentity> id = Identify(HelperArgs(), {name + "=" + dir_.path() + "/evil.so"});
    ASSERT_TRUE(id.ok()) << id.status().ToString();
    EXPECT_EQ(id->exe_sha256, HelperDigest());
    EXPECT_EQ(WhyNot(ExeSha256Rule(HelperDigest()), *id),
              "exe_sha256 cannot hold: the environment sets " + name);
  }
}

TEST_P(CodeTest, PreloadedLibraryRefusesExeSha256) {
  std::string plugin = dir_ / "evil.so";
  WriteFile(plugin, testing_util::ReadFile(VECSEAL_TEST_PLUGIN), 0755);
  Result<CallerIdentity> id = Identify(HelperArgs(), {"LD_PRELOAD=" + plugin});
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  EXPECT_EQ(WhyNot(ExeSha256Rule(HelperDigest()), *id),
            "exe_sha256 cannot hold: the environment sets LD_PRELOAD");
}

TEST_P(CodeTest, DlopenedLibraryFromTmpRefusesExeSha256) {
  std::string plugin = RealPath(dir_.path()) + "/plugin.so";
  WriteFile(plugin, testing_util::ReadFile(VECSEAL_TEST_PLUGIN), 0755);
  Result<CallerIdentity> id = Identify(HelperArgs(), {"VECSEAL_TEST_DLOPEN=" + plugin});
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  EXPECT_EQ(WhyNot(ExeSha256Rule(HelperDigest()), *id),
            "exe_sha256 cannot hold: code from '" + plugin +
                "', outside the system library directories, is mapped");
}

TEST_P(CodeTest, CleanPythonScriptIsGranted) {
  if (!HavePython()) GTEST_SKIP() << "/usr/bin/python3 is not installed";
  std::string script = WriteScript();
  Result<CallerIdentity> id = Identify({"/usr/bin/python3", script, socket_path_}, {});
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  EXPECT_EQ(id->script_refused, "");
  EXPECT_EQ(WhyNot(ScriptRule(script), *id), "");
}

TEST_P(CodeTest, PythonThatMayRunOtherCodeIsRefused) {
  if (!HavePython()) GTEST_SKIP() << "/usr/bin/python3 is not installed";
  std::string script = WriteScript();
  WriteFile(dir_ / "sitecustomize.py", "import os\n", 0644);
  WriteFile(dir_ / "startup.py", "import os\n", 0644);
  struct Case {
    std::vector<std::string> argv;
    std::vector<std::string> env;
    std::string why;
  };
  const std::string python = "/usr/bin/python3";
  const std::string interactive = "python runs with -i (an interactive prompt after the script)";
  std::vector<Case> cases = {
      {{python, "-i", script, socket_path_}, {}, interactive},
      {{python, "-ui", script, socket_path_}, {}, interactive},
      {{python, script, socket_path_}, {"PYTHONPATH=" + dir_.path()},
       "the environment sets PYTHONPATH"},
      {{python, script, socket_path_}, {"PYTHONSTARTUP=" + (dir_ / "startup.py")},
       "the environment sets PYTHONSTARTUP"},
      {{python, script, socket_path_}, {"PYTHONINSPECT=1"}, "the environment sets PYTHONINSPECT"},
      {{python, "export.py", socket_path_}, {}, "the script path 'export.py' is relative"},
  };
  for (const Case& c : cases) {
    Result<CallerIdentity> id = Identify(c.argv, c.env, dir_.path());
    ASSERT_TRUE(id.ok()) << id.status().ToString();
    EXPECT_EQ(id->script, "") << c.why;
    EXPECT_EQ(WhyNot(ScriptRule(script), *id), "script is unknown: " + c.why);
  }
}

TEST_P(CodeTest, RenamedProgramIsNoInterpreter) {
  if (!HavePython()) GTEST_SKIP() << "/usr/bin/python3 is not installed";
  std::string script = WriteScript();
  std::string impostor = dir_ / "python3";
  WriteFile(impostor, testing_util::ReadFile(VECSEAL_PEER_HELPER), 0755);
  Result<CallerIdentity> id =
      Identify({impostor, script}, {"VECSEAL_TEST_SOCKET=" + socket_path_});
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  EXPECT_EQ(id->exe, impostor);
  EXPECT_EQ(WhyNot(ScriptRule(script), *id),
            "script is unknown: the executable is not a recognised interpreter "
            "(/usr/bin/python3.N)");
}

// A caller touching its executable before each connect gets it hashed again, but only within
// its uid's hashing budget; an unchanged file is never hashed twice.
TEST_P(CodeTest, DigestsAreCachedRehashedOnChangeAndRateLimitedPerUid) {
  std::string exe = dir_ / "helper";
  WriteFile(exe, testing_util::ReadFile(VECSEAL_PEER_HELPER), 0755);
  struct stat st;
  ASSERT_EQ(stat(exe.c_str(), &st), 0);
  IdentityResolverOptions options = Options();
  options.max_hash_bytes = static_cast<uint64_t>(st.st_size) * 2;  // the bucket: two hashes
  options.digest_bytes_per_second_per_uid = 1;
  IdentityResolver resolver(options);
  auto connect = [&]() -> std::string {
    Spawn({exe, "connect", socket_path_});
    Fd conn = Accept();
    Result<PeerIdentity> peer = PeerIdentity::FromSocket(conn.get(), resolver);
    return peer.ok() ? peer->identity().exe_sha256 : "error: " + peer.status().ToString();
  };
  auto touch = [&](time_t seconds) {
    timespec times[2] = {{seconds, 0}, {seconds, 0}};
    return utimensat(AT_FDCWD, exe.c_str(), times, 0) == 0;
  };
  const std::string digest = Sha256OfFile(exe);
  EXPECT_EQ(connect(), digest);
  EXPECT_EQ(connect(), digest);
  EXPECT_EQ(resolver.stats().files_hashed, 1u);
  ASSERT_TRUE(touch(1000));
  EXPECT_EQ(connect(), digest);
  EXPECT_EQ(resolver.stats().files_hashed, 2u);
  ASSERT_TRUE(touch(2000));
  EXPECT_EQ(connect(), "");
  EXPECT_EQ(resolver.stats().files_hashed, 2u);
  EXPECT_EQ(resolver.stats().digests_rate_limited, 1u);
}

// Issue #17: a digest is computed only when some rule tests it. The caller runs a 200 MB sparse
// copy of the helper, touched before each connect so that the digest cache cannot answer.
TEST_P(CodeTest, DigestsAreComputedOnlyWhenARuleNeedsThem) {
  const std::string exe = dir_ / "large-helper";
  WriteFile(exe, testing_util::ReadFile(VECSEAL_PEER_HELPER), 0755);
  ASSERT_EQ(truncate(exe.c_str(), off_t{200} << 20), 0);
  const std::string digest = Sha256OfFile(exe);
  time_t stamp = 1000;
  auto connect = [&]() {
    timespec times[2] = {{stamp, 0}, {stamp, 0}};
    ++stamp;
    EXPECT_EQ(utimensat(AT_FDCWD, exe.c_str(), times, 0), 0);
    Spawn({exe, "connect", socket_path_});
    return Accept();
  };
  Result<PolicyPtr> by_uid = Policy::Parse(
      R"({"version": 1, "rules": [{"id": "by-uid", "callers": {"uid": )" +
      std::to_string(geteuid()) + R"(}, "keys": ["*"], "operations": ["encrypt"]}]})");
  ASSERT_TRUE(by_uid.ok()) << by_uid.status().ToString();
  Result<PolicyPtr> pinned = Policy::Parse(ExeSha256Rule(digest));
  ASSERT_TRUE(pinned.ok()) << pinned.status().ToString();
  EXPECT_EQ((*by_uid)->digest_needs(), (DigestNeeds{.exe = false, .script = false}));
  EXPECT_EQ((*pinned)->digest_needs(), (DigestNeeds{.exe = true, .script = false}));
  IdentityResolver resolver(Options());

  using Clock = std::chrono::steady_clock;
  auto millis = [](Clock::duration d) {
    return std::chrono::duration<double, std::milli>(d).count();
  };
  Fd conn = connect();
  const Clock::time_point unhashed_start = Clock::now();
  Result<PeerIdentity> peer = PeerIdentity::FromSocket(conn.get(), resolver,
                                                       (*by_uid)->digest_needs());
  const Clock::duration unhashed = Clock::now() - unhashed_start;
  ASSERT_TRUE(peer.ok()) << peer.status().ToString();
  EXPECT_EQ(peer->identity().exe, exe);
  EXPECT_EQ(peer->identity().exe_sha256, "");
  EXPECT_EQ(peer->identity().exe_sha256_unknown, kDigestNotNeeded);
  EXPECT_TRUE(peer->identity().ToJson()["exe_sha256"].is_null());
  EXPECT_EQ(peer->identity().ToJson()["exe_sha256_unknown"], "not_needed");
  EXPECT_TRUE((*by_uid)->Decide(peer->identity(), Operation::kEncrypt, "k").granted);
  ASSERT_TRUE(peer->Refresh(resolver, (*by_uid)->digest_needs()).ok());
  EXPECT_EQ(resolver.stats().files_hashed, 0u);
  EXPECT_EQ(resolver.stats().digest_cache_misses, 0u);

  // A reload adds a digest rule: the next request on the same connection hashes.
  const Clock::time_point hashed_start = Clock::now();
  ASSERT_TRUE(peer->Refresh(resolver, (*pinned)->digest_needs()).ok());
  const Clock::duration hashed = Clock::now() - hashed_start;
  std::cout << "[ figures  ] identified without a digest rule in " << millis(unhashed)
            << " ms; re-identified with one (200 MB hashed) in " << millis(hashed) << " ms\n";
  EXPECT_EQ(peer->identity().exe_sha256, digest);
  EXPECT_EQ(peer->identity().exe_sha256_unknown, "");
  EXPECT_TRUE((*pinned)->Decide(peer->identity(), Operation::kEncrypt, "k").granted);
  EXPECT_EQ(resolver.stats().files_hashed, 1u);

  // A new connection under the digest rule hashes the touched file again, as before.
  Fd second = connect();
  Result<PeerIdentity> again = PeerIdentity::FromSocket(second.get(), resolver,
                                                        (*pinned)->digest_needs());
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->identity().exe_sha256, digest);
  EXPECT_EQ(resolver.stats().files_hashed, 2u);
}

// A digest left unknown by the uid's hashing budget is explained as such, not as a mismatch.
TEST_P(CodeTest, RateLimitedDigestIsExplainedAsUnknownNotAsDifferent) {
  const std::string exe = dir_ / "helper";
  WriteFile(exe, testing_util::ReadFile(VECSEAL_PEER_HELPER), 0755);
  struct stat st;
  ASSERT_EQ(stat(exe.c_str(), &st), 0);
  IdentityResolverOptions options = Options();
  options.max_hash_bytes = static_cast<uint64_t>(st.st_size);  // the bucket: one hash
  options.digest_bytes_per_second_per_uid = 1;
  IdentityResolver resolver(options);
  const std::string digest = Sha256OfFile(exe);
  std::vector<CallerIdentity> seen;
  for (time_t stamp : {1000, 2000}) {
    timespec times[2] = {{stamp, 0}, {stamp, 0}};
    ASSERT_EQ(utimensat(AT_FDCWD, exe.c_str(), times, 0), 0);
    Spawn({exe, "connect", socket_path_});
    Fd conn = Accept();
    Result<PeerIdentity> peer = PeerIdentity::FromSocket(conn.get(), resolver);
    ASSERT_TRUE(peer.ok()) << peer.status().ToString();
    seen.push_back(peer->identity());
  }
  EXPECT_EQ(seen[0].exe_sha256, digest);
  EXPECT_EQ(WhyNot(ExeSha256Rule(digest), seen[0]), "");
  EXPECT_EQ(seen[1].exe_sha256, "");
  EXPECT_EQ(seen[1].exe_sha256_unknown, "digest_rate_limited");
  EXPECT_EQ(resolver.stats().digests_rate_limited, 1u);
  EXPECT_EQ(WhyNot(ExeSha256Rule(digest), seen[1]),
            "exe_sha256 is unknown: not hashed, since uid " + std::to_string(geteuid()) +
                " has spent its hashing budget (digest_rate_limited); a later connection is "
                "hashed once the budget refills");
}

TEST(NameCacheTest, NamesAreCachedUnlessDisabled) {
  const struct passwd* root = getpwuid(0);
  const struct group* root_group = getgrgid(0);
  if (root == nullptr || root_group == nullptr) GTEST_SKIP() << "no entry for uid or gid 0";
  std::string root_name = root->pw_name;
  std::string root_group_name = root_group->gr_name;
  CallerIdentity id;
  id.supplementary_gids = {0, 4294967294u};

  IdentityResolver cached;
  cached.FillNames(&id);
  EXPECT_EQ(id.user, root_name);
  EXPECT_EQ(id.group, root_group_name);
  EXPECT_EQ(id.group_names, (std::vector<std::string>{root_group_name, ""}));
  IdentityResolver::Stats first = cached.stats();
  EXPECT_EQ(first.name_cache_misses, 3u);  // uid 0, gid 0, gid 4294967294
  EXPECT_EQ(first.name_cache_hits, 1u);    // the second gid 0
  cached.FillNames(&id);
  EXPECT_EQ(cached.stats().name_cache_misses, 3u);
  EXPECT_EQ(cached.stats().name_cache_hits, 5u);
  EXPECT_EQ(id.group_names, (std::vector<std::string>{root_group_name, ""}));

  IdentityResolverOptions options;
  options.name_cache_seconds = 0;
  IdentityResolver uncached(options);
  uncached.FillNames(&id);
  uncached.FillNames(&id);
  EXPECT_EQ(uncached.stats().name_cache_hits, 0u);
  EXPECT_EQ(id.user, root_name);
}

TEST(PeerIdentityErrorsTest, NonSocketHasNoCredentials) {
  IdentityResolver resolver;
  Fd file(open("/dev/null", O_RDONLY | O_CLOEXEC));
  Result<PeerIdentity> peer = PeerIdentity::FromSocket(file.get(), resolver);
  ASSERT_FALSE(peer.ok());
  EXPECT_EQ(peer.status().reason(), "peer_credentials_unavailable");
  EXPECT_EQ(peer.status().code(), Code::kPermissionDenied);
}

TEST(PeerIdentityErrorsTest, FromPidOfAnExitedProcess) {
  pid_t pid = fork();
  if (pid == 0) _exit(0);
  waitpid(pid, nullptr, 0);
  IdentityResolver resolver;
  Result<PeerIdentity> peer = PeerIdentity::FromPid(pid, resolver);
  ASSERT_FALSE(peer.ok());
  EXPECT_EQ(peer.status().reason(), "peer_gone");
}

TEST(PeerIdentityErrorsTest, FromPidOfSelf) {
  IdentityResolver resolver;
  Result<PeerIdentity> peer = PeerIdentity::FromPid(getpid(), resolver);
  ASSERT_TRUE(peer.ok()) << peer.status().ToString();
  EXPECT_EQ(peer->identity().uid, geteuid());
  EXPECT_EQ(peer->identity().exe_sha256, Sha256OfFile("/proc/self/exe"));
}

INSTANTIATE_TEST_SUITE_P(PidfdSource, CodeTest, testing::Values(true, false));
INSTANTIATE_TEST_SUITE_P(PidfdSource, PeerTest, testing::Values(true, false),
                         [](const testing::TestParamInfo<bool>& param) {
                           return param.param ? "SoPeerPidfd" : "PidfdOpenFallback";
                         });

}  // namespace
}  // namespace vecseal::policy
