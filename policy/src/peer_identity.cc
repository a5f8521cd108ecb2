// The /proc snapshot of a peer: PeerIdentity pins the process with a pidfd, reads its
// credentials, executable, unit, script and loaded code through /proc/PID, and reads again
// after an exec.
#include <fcntl.h>
#include <linux/openat2.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include "identity_internal.h"
#include "proc.h"
#include "vecseal/policy/identity.h"

// Debian 12's headers predate Linux 6.5.
#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif

namespace vecseal::policy {
namespace {

constexpr size_t kMaxCmdlineBytes = size_t{1} << 20;
constexpr size_t kMaxSmallFileBytes = size_t{1} << 16;
constexpr size_t kMaxMapsBytes = size_t{8} << 20;

using internal::Fd;
using internal::MayRead;
using internal::PathOfFd;

Status PeerGone(pid_t pid) {
  return Status(Code::kPermissionDenied, "peer_gone",
                "the peer process " + std::to_string(pid) + " exited before it could be identified");
}

Status ProcError(pid_t pid, const char* what, int err) {
  return Status(Code::kUnavailable, "identity_unavailable",
                "cannot read " + std::string(what) + " of process " + std::to_string(pid) + ": " +
                    std::strerror(err));
}

// Reads up to `limit` bytes of a /proc file relative to `dir_fd`; errno-style error in `*err`.
bool ReadProcFile(int dir_fd, const char* name, size_t limit, std::string* out, int* err) {
  Fd fd(openat(dir_fd, name, O_RDONLY | O_CLOEXEC | O_NOCTTY));
  if (fd.get() < 0) {
    *err = errno;
    return false;
  }
  out->clear();
  char buffer[4096];
  while (out->size() < limit) {
    ssize_t n = read(fd.get(), buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      *err = errno;
      return false;
    }
    if (n == 0) break;
    out->append(buffer, static_cast<size_t>(n));
  }
  if (out->size() > limit) out->resize(limit);
  return true;
}

// Reads up to `limit` bytes of an open /proc file from its start.
bool PreadAll(int fd, size_t limit, std::string* out, int* err) {
  out->clear();
  char buffer[4096];
  while (out->size() < limit) {
    ssize_t n = pread(fd, buffer, sizeof buffer, static_cast<off_t>(out->size()));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      *err = errno;
      return false;
    }
    if (n == 0) break;
    out->append(buffer, static_cast<size_t>(n));
  }
  if (out->size() > limit) out->resize(limit);
  return true;
}

// Whether the process behind `pidfd` has exited: a pidfd polls readable from then on, reaped or
// not (a zombie counts as exited).
bool Exited(int pidfd) {
  pollfd p{pidfd, POLLIN, 0};
  int ready;
  do {
    ready = poll(&p, 1, 0);
  } while (ready < 0 && errno == EINTR);
  return ready != 0;
}

// Whether the process behind `pidfd` is still running, by two independent means.
bool Alive(int pidfd) {
  if (Exited(pidfd)) return false;
  // EPERM still proves the process exists; only ESRCH means it is gone.
  long rc = syscall(SYS_pidfd_send_signal, pidfd, 0, nullptr, 0u);
  return rc == 0 || errno == EPERM;
}

uint64_t BootTimeTicks() {
  timespec now{};
  clock_gettime(CLOCK_BOOTTIME, &now);
  auto ticks_per_second = static_cast<uint64_t>(sysconf(_SC_CLK_TCK));
  return static_cast<uint64_t>(now.tv_sec) * ticks_per_second +
         static_cast<uint64_t>(now.tv_nsec) * ticks_per_second / 1000000000u;
}

// Opens the script the way the peer would: absolute paths inside its root directory, relative
// ones from its working directory. The path comes from a command line the peer can rewrite, so
// it is first opened O_PATH and read only if it is a regular file: opening a device node for
// reading can have side effects (a watchdog arms itself, a tape rewinds), and a FIFO can block.
int OpenScript(int proc_dir_fd, const std::string& script) {
  bool absolute = script[0] == '/';
  Fd base(openat(proc_dir_fd, absolute ? "root" : "cwd", O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (base.get() < 0) return -1;
  open_how how{};
  how.flags = O_PATH | O_CLOEXEC;
  how.resolve = absolute ? RESOLVE_IN_ROOT : 0;
  Fd path(static_cast<int>(syscall(SYS_openat2, base.get(), script.c_str(), &how, sizeof how)));
  struct stat st;
  if (path.get() < 0 || fstat(path.get(), &st) != 0 || !S_ISREG(st.st_mode)) return -1;
  // Reopening through /proc/self/fd opens the very inode just checked, not the path again.
  std::string self = "/proc/self/fd/" + std::to_string(path.get());
  return open(self.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
}

struct Snapshot {
  CallerIdentity identity;
  internal::ExecMarker marker;
  uint64_t start_time = 0;
};

// The /proc/PID files read on every Refresh, held open.
struct ProcFds {
  int dir = -1;
  int stat = -1;
  int cmdline = -1;
};

// Reads the parts of /proc/PID that change on exec.
Status ReadMarker(const ProcFds& fds, pid_t pid, internal::ExecMarker* marker,
                  uint64_t* start_time) {
  int err = 0;
  struct stat st;
  if (fstatat(fds.dir, "exe", &st, 0) == 0) {
    marker->exe_dev = st.st_dev;
    marker->exe_ino = st.st_ino;
  } else if (errno == ENOENT || errno == ESRCH) {
    return PeerGone(pid);
  }
  // Otherwise (no ptrace rights) the exe cannot be compared; stat and cmdline still can.
  std::string stat_text;
  if (!PreadAll(fds.stat, kMaxSmallFileBytes, &stat_text, &err)) {
    return err == ESRCH ? PeerGone(pid) : ProcError(pid, "stat", err);
  }
  std::optional<internal::ProcStat> stat = internal::ParseStat(stat_text);
  if (!stat) return PeerGone(pid);  // an exited process reads as empty
  marker->start_code = stat->start_code;
  marker->start_stack = stat->start_stack;
  if (start_time != nullptr) *start_time = stat->start_time;
  if (!PreadAll(fds.cmdline, kMaxCmdlineBytes, &marker->cmdline, &err)) {
    return err == ESRCH ? PeerGone(pid) : ProcError(pid, "cmdline", err);
  }
  return Status::Ok();
}

// Opens /proc/PID and the files ReadMarker reads.
Status OpenProc(pid_t pid, ProcFds* fds) {
  std::string dir = "/proc/" + std::to_string(pid);
  fds->dir = open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (fds->dir < 0) return errno == ENOENT ? PeerGone(pid) : ProcError(pid, "/proc", errno);
  fds->stat = openat(fds->dir, "stat", O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fds->stat < 0) return errno == ENOENT || errno == ESRCH ? PeerGone(pid)
                                                               : ProcError(pid, "stat", errno);
  fds->cmdline = openat(fds->dir, "cmdline", O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fds->cmdline < 0) return errno == ENOENT || errno == ESRCH ? PeerGone(pid)
                                                                  : ProcError(pid, "cmdline", errno);
  return Status::Ok();
}

Status ReadCredentialsFromStatus(int proc_dir_fd, CallerIdentity* id) {
  std::string text;
  int err = 0;
  if (!ReadProcFile(proc_dir_fd, "status", kMaxSmallFileBytes, &text, &err)) {
    return err == ESRCH ? PeerGone(id->pid) : ProcError(id->pid, "status", err);
  }
  std::optional<internal::StatusIds> ids = internal::ParseStatusIds(text);
  if (!ids) return PeerGone(id->pid);  // a zombie has no credentials lines worth trusting
  id->uid = ids->euid;
  id->gid = ids->egid;
  id->supplementary_gids = std::move(ids->groups);
  return Status::Ok();
}

// Reads a /proc/PID file that may be unreadable without ptrace rights; PeerGone when the process
// exited, else Ok with `*problem` saying why it could not be read (empty when it was).
Status ReadGuardedProcFile(int proc_dir_fd, pid_t pid, const char* name, size_t limit,
                           std::string* out, std::string* problem) {
  int err = 0;
  if (!ReadProcFile(proc_dir_fd, name, limit, out, &err)) {
    if (err == ESRCH) return PeerGone(pid);
    *problem = "/proc/" + std::to_string(pid) + "/" + name + " is unreadable (" +
               std::strerror(err) + ")";
  } else if (out->size() >= limit) {
    // What lies past the limit is unseen and could hold what the checks look for.
    *problem = "/proc/" + std::to_string(pid) + "/" + name + " is larger than " +
               std::to_string(limit) + " bytes";
  }
  return Status::Ok();
}

// Sets id.code_unproven when the loader environment or the executable mappings let code other
// than the executable and system libraries run. Fails closed when either file is unreadable.
Status CheckLoadedCode(int proc_dir_fd, const std::vector<std::string>& env_vars,
                       const std::string& environ_problem, CallerIdentity* id) {
  if (!environ_problem.empty()) {
    id->code_unproven = environ_problem;
    return Status::Ok();
  }
  if (std::string name = internal::LoaderVariableSet(env_vars); !name.empty()) {
    id->code_unproven = "the environment sets " + name;
    return Status::Ok();
  }
  std::string maps;
  std::string maps_problem;
  VECSEAL_RETURN_IF_ERROR(ReadGuardedProcFile(proc_dir_fd, id->pid, "maps", kMaxMapsBytes, &maps,
                                              &maps_problem));
  if (!maps_problem.empty()) {
    id->code_unproven = maps_problem;
  } else if (std::string file = internal::ForeignExecutableMapping(maps, id->exe); !file.empty()) {
    id->code_unproven = "code from " + file + ", outside the system library directories, is mapped";
  }
  return Status::Ok();
}

// Why the script named on an interpreter's command line cannot be trusted to be the code that
// runs; empty when it can. `exe_fd` is the running image.
std::string ScriptRefusal(const CallerIdentity& id, int exe_fd, const std::string& script,
                          const std::vector<std::string>& argv,
                          const std::vector<std::string>& env_vars,
                          const std::string& environ_problem) {
  struct stat running;
  struct stat installed;
  // The path must be a recognised interpreter and the running image that very file, so a copy of
  // another program named python3, or a container's own /usr/bin/python3, does not count.
  if (!internal::IsRecognisedInterpreterPath(id.exe) || exe_fd < 0 ||
      fstat(exe_fd, &running) != 0 || stat(id.exe.c_str(), &installed) != 0 ||
      running.st_dev != installed.st_dev || running.st_ino != installed.st_ino) {
    return "the executable is not a recognised interpreter (/usr/bin/python3.N)";
  }
  if (!environ_problem.empty()) return environ_problem;
  if (std::string problem = internal::PythonRunProblem(argv, env_vars); !problem.empty()) {
    return problem;
  }
  if (script[0] != '/') return "the script path '" + script + "' is relative";
  return "";
}

// Sets `*digest` to the digest of `fd`, charged to `uid`, when `needed`; otherwise, or when
// hashing fails, sets `*unknown` to why it stays empty.
void DigestIfNeeded(IdentityResolver& resolver, int fd, uid_t uid, bool needed,
                    std::string* digest, std::string* unknown) {
  if (!needed) {
    *unknown = kDigestNotNeeded;
    return;
  }
  Result<std::string> computed = resolver.DigestCharged(fd, uid);
  if (computed.ok()) {
    *digest = std::move(computed).value();
  } else {
    *unknown = computed.status().reason();
  }
}

// Fills id.script and id.script_sha256 from the script argument, or id.script_refused.
void IdentifyScript(int proc_dir_fd, int exe_fd, const std::vector<std::string>& argv,
                    const std::vector<std::string>& env_vars, const std::string& environ_problem,
                    bool digest_needed, IdentityResolver& resolver, CallerIdentity* id) {
  std::optional<std::string> script = internal::ScriptArgument(id->exe, argv);
  if (!script || script->empty()) return;
  id->script_refused = ScriptRefusal(*id, exe_fd, *script, argv, env_vars, environ_problem);
  if (!id->script_refused.empty()) return;
  Fd file(OpenScript(proc_dir_fd, *script));
  struct stat st;
  // A path that names no regular file stays unknown: the command line is the peer's to write,
  // and only a file actually opened is reported.
  if (file.get() >= 0 && fstat(file.get(), &st) == 0 && S_ISREG(st.st_mode) && MayRead(*id, st)) {
    id->script = PathOfFd(file.get());
    DigestIfNeeded(resolver, file.get(), id->uid, digest_needed, &id->script_sha256,
                   &id->script_sha256_unknown);
  }
}

// Reads everything but the credentials from /proc/PID (through `proc_dir_fd`). The caller must
// confirm afterwards that the pidfd's process is still alive, which proves the reads were of it.
Status ReadProcess(const ProcFds& fds, IdentityResolver& resolver, DigestNeeds needs,
                   Snapshot* snap) {
  int proc_dir_fd = fds.dir;
  CallerIdentity& id = snap->identity;
  pid_t pid = id.pid;
  int err = 0;

  id.exe.clear();
  id.exe_sha256.clear();
  id.exe_sha256_unknown.clear();
  id.unit.clear();
  id.script.clear();
  id.script_sha256.clear();
  id.script_sha256_unknown.clear();
  id.code_unproven.clear();
  id.script_refused.clear();
  VECSEAL_RETURN_IF_ERROR(ReadMarker(fds, pid, &snap->marker, &snap->start_time));

  char link[PATH_MAX];
  ssize_t n = readlinkat(proc_dir_fd, "exe", link, sizeof link);
  if (n < 0 && (errno == ENOENT || errno == ESRCH)) return PeerGone(pid);
  // Without ptrace rights (a non-root daemon and another user's process) exe stays unknown, and
  // rules that need it do not match.
  if (n > 0 && static_cast<size_t>(n) < sizeof link) id.exe.assign(link, static_cast<size_t>(n));

  Fd exe(openat(proc_dir_fd, "exe", O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
  if (exe.get() >= 0) {
    DigestIfNeeded(resolver, exe.get(), id.uid, needs.exe, &id.exe_sha256,
                   &id.exe_sha256_unknown);
  } else if (errno == ENOENT || errno == ESRCH) {
    return PeerGone(pid);
  } else {
    id.exe_sha256_unknown = "file_unreadable";
  }
  std::string cgroup;
  if (!ReadProcFile(proc_dir_fd, "cgroup", kMaxSmallFileBytes, &cgroup, &err)) {
    return err == ESRCH ? PeerGone(pid) : ProcError(pid, "cgroup", err);
  }
  id.unit = internal::UnitFromCgroup(cgroup);

  std::string environ_text;
  std::string environ_problem;
  VECSEAL_RETURN_IF_ERROR(ReadGuardedProcFile(proc_dir_fd, pid, "environ", kMaxCmdlineBytes,
                                              &environ_text, &environ_problem));
  std::vector<std::string> env_vars = internal::SplitCmdline(environ_text);
  VECSEAL_RETURN_IF_ERROR(CheckLoadedCode(proc_dir_fd, env_vars, environ_problem, &id));
  IdentifyScript(proc_dir_fd, exe.get(), internal::SplitCmdline(snap->marker.cmdline), env_vars,
                 environ_problem, needs.script, resolver, &id);
  return Status::Ok();
}

// ReadProcess (and, after an exec, the credentials), repeated until the exec marker is the same
// before and after: otherwise an exec in the middle could pair one program's path with another's
// digest.
Status ReadProcessConsistently(const ProcFds& fds, IdentityResolver& resolver,
                               bool read_credentials, DigestNeeds needs, Snapshot* snap) {
  constexpr int kAttempts = 3;
  pid_t pid = snap->identity.pid;
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    if (read_credentials) {
      VECSEAL_RETURN_IF_ERROR(ReadCredentialsFromStatus(fds.dir, &snap->identity));
    }
    VECSEAL_RETURN_IF_ERROR(ReadProcess(fds, resolver, needs, snap));
    internal::ExecMarker after;
    VECSEAL_RETURN_IF_ERROR(ReadMarker(fds, pid, &after, nullptr));
    if (after == snap->marker) return Status::Ok();
  }
  return Status(Code::kUnavailable, "identity_unavailable",
                "process " + std::to_string(pid) +
                    " kept exec'ing while it was being identified; try again");
}

std::vector<gid_t> PeerGroups(int socket_fd) {
  std::vector<gid_t> groups(64);
  while (true) {
    auto len = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    if (getsockopt(socket_fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &len) == 0) {
      groups.resize(len / sizeof(gid_t));
      return groups;
    }
    if (errno != ERANGE || len <= groups.size() * sizeof(gid_t)) return {};
    groups.resize(len / sizeof(gid_t));
  }
}

}  // namespace

namespace internal {

std::string PathOfFd(int fd) {
  std::string link = "/proc/self/fd/" + std::to_string(fd);
  char buffer[PATH_MAX];
  ssize_t n = readlink(link.c_str(), buffer, sizeof buffer);
  return n > 0 && static_cast<size_t>(n) < sizeof buffer ? std::string(buffer, static_cast<size_t>(n))
                                                       : std::string();
}

bool MayRead(const CallerIdentity& id, const struct stat& st) {
  if (id.uid == 0) return true;
  if (st.st_uid == id.uid) return (st.st_mode & S_IRUSR) != 0;
  bool in_group = st.st_gid == id.gid || std::find(id.supplementary_gids.begin(),
                                                   id.supplementary_gids.end(),
                                                   st.st_gid) != id.supplementary_gids.end();
  if (in_group) return (st.st_mode & S_IRGRP) != 0;
  return (st.st_mode & S_IROTH) != 0;
}

}  // namespace internal

Result<PeerIdentity> PeerIdentity::FromSocket(int connected_fd, IdentityResolver& resolver,
                                              DigestNeeds needs) {
  uint64_t accepted_ticks = BootTimeTicks();
  ucred cred{};
  socklen_t len = sizeof cred;
  if (getsockopt(connected_fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || len != sizeof cred ||
      cred.pid <= 0) {
    return Status(Code::kPermissionDenied, "peer_credentials_unavailable",
                  "the socket carries no peer credentials; only local Unix-socket peers are "
                  "served");
  }
  PeerIdentity peer;
  peer.identity_.pid = cred.pid;
  peer.identity_.uid = cred.uid;
  peer.identity_.gid = cred.gid;
  peer.identity_.supplementary_gids = PeerGroups(connected_fd);

  if (resolver.options().use_peer_pidfd) {
    int pidfd = -1;
    socklen_t pidfd_len = sizeof pidfd;
    int rc = getsockopt(connected_fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &pidfd_len);
    if (rc == 0 && pidfd >= 0) {
      peer.pidfd_ = pidfd;
      peer.pinned_by_socket_ = true;
    } else if (rc != 0 && errno == ESRCH) {
      // The kernel has SO_PEERPIDFD and says the connector exited: pidfd_open on its PID could
      // pin a newer process that reused it.
      return PeerGone(cred.pid);
    }
  }
  if (peer.pidfd_ < 0) {
    // The PID may already name a different process; the start-time check below catches a
    // process that started after the connection was accepted.
    peer.pidfd_ = static_cast<int>(syscall(SYS_pidfd_open, cred.pid, 0u));
    if (peer.pidfd_ < 0) {
      if (errno == ESRCH) return PeerGone(cred.pid);
      return ProcError(cred.pid, "a pidfd", errno);
    }
  }
  ProcFds fds;
  Status opened = OpenProc(cred.pid, &fds);
  peer.AdoptProcFds(fds.dir, fds.stat, fds.cmdline);
  VECSEAL_RETURN_IF_ERROR(opened);
  Snapshot snap;
  snap.identity = peer.identity_;
  VECSEAL_RETURN_IF_ERROR(ReadProcessConsistently(fds, resolver, false, needs, &snap));
  // A process that started after the connection was accepted reused the PID of the one that
  // connected (only possible without SO_PEERPIDFD).
  if (!peer.pinned_by_socket_ && snap.start_time > accepted_ticks) return PeerGone(cred.pid);
  if (!Alive(peer.pidfd_)) return PeerGone(cred.pid);
  resolver.FillNames(&snap.identity);
  peer.identity_ = std::move(snap.identity);
  peer.marker_ = std::move(snap.marker);
  peer.digests_sought_ = needs;
  {
    std::lock_guard<std::mutex> lock(resolver.mutex_);
    ++resolver.stats_.resolutions;
  }
  return peer;
}

Result<PeerIdentity> PeerIdentity::FromPid(pid_t pid, IdentityResolver& resolver,
                                           DigestNeeds needs) {
  if (pid <= 0) {
    return Status(Code::kInvalidArgument, "invalid_pid", "a PID must be a positive integer");
  }
  PeerIdentity peer;
  peer.identity_.pid = pid;
  peer.pidfd_ = static_cast<int>(syscall(SYS_pidfd_open, pid, 0u));
  if (peer.pidfd_ < 0) {
    if (errno == ESRCH) return PeerGone(pid);
    return ProcError(pid, "a pidfd", errno);
  }
  ProcFds fds;
  Status opened = OpenProc(pid, &fds);
  peer.AdoptProcFds(fds.dir, fds.stat, fds.cmdline);
  VECSEAL_RETURN_IF_ERROR(opened);
  Snapshot snap;
  snap.identity = peer.identity_;
  VECSEAL_RETURN_IF_ERROR(ReadProcessConsistently(fds, resolver, true, needs, &snap));
  if (!Alive(peer.pidfd_)) return PeerGone(pid);
  resolver.FillNames(&snap.identity);
  peer.identity_ = std::move(snap.identity);
  peer.marker_ = std::move(snap.marker);
  peer.digests_sought_ = needs;
  return peer;
}

Status PeerIdentity::Refresh(IdentityResolver& resolver, DigestNeeds needs) {
  pid_t pid = identity_.pid;
  if (pidfd_ < 0 || proc_dir_fd_ < 0) return PeerGone(pid);
  // Polling the pidfd suffices here: the /proc fds are bound to the pinned process, so a reused
  // PID cannot answer for it.
  if (Exited(pidfd_)) return PeerGone(pid);
  ProcFds fds{proc_dir_fd_, stat_fd_, cmdline_fd_};
  internal::ExecMarker marker;
  VECSEAL_RETURN_IF_ERROR(ReadMarker(fds, pid, &marker, nullptr));
  const bool newly_needed = (needs.exe && !digests_sought_.exe) ||
                            (needs.script && !digests_sought_.script);
  if (marker == marker_ && !newly_needed) return Status::Ok();

  // The peer exec'd (it is a different program now), or a reloaded policy tests a digest not
  // computed before; the whole program is read again so that the new digest is proven to be of
  // the same image as the rest. Its credentials stay those the kernel recorded at connect(): a
  // process that forked (keeping the socket) and then exec'd a setuid program would otherwise
  // lend that program's euid to the sibling still holding the socket.
  Snapshot snap;
  snap.identity = identity_;
  VECSEAL_RETURN_IF_ERROR(ReadProcessConsistently(fds, resolver, false, needs, &snap));
  if (!Alive(pidfd_)) return PeerGone(pid);
  resolver.FillNames(&snap.identity);
  identity_ = std::move(snap.identity);
  marker_ = std::move(snap.marker);
  digests_sought_ = needs;
  std::lock_guard<std::mutex> lock(resolver.mutex_);
  ++resolver.stats_.resolutions;
  return Status::Ok();
}

PeerIdentity::PeerIdentity(PeerIdentity&& other) noexcept
    : pidfd_(std::exchange(other.pidfd_, -1)),
      proc_dir_fd_(std::exchange(other.proc_dir_fd_, -1)),
      stat_fd_(std::exchange(other.stat_fd_, -1)),
      cmdline_fd_(std::exchange(other.cmdline_fd_, -1)),
      pinned_by_socket_(other.pinned_by_socket_),
      marker_(std::move(other.marker_)),
      digests_sought_(other.digests_sought_),
      identity_(std::move(other.identity_)) {}

PeerIdentity& PeerIdentity::operator=(PeerIdentity&& other) noexcept {
  if (this != &other) {
    Close();
    pidfd_ = std::exchange(other.pidfd_, -1);
    proc_dir_fd_ = std::exchange(other.proc_dir_fd_, -1);
    stat_fd_ = std::exchange(other.stat_fd_, -1);
    cmdline_fd_ = std::exchange(other.cmdline_fd_, -1);
    pinned_by_socket_ = other.pinned_by_socket_;
    marker_ = std::move(other.marker_);
    digests_sought_ = other.digests_sought_;
    identity_ = std::move(other.identity_);
  }
  return *this;
}

PeerIdentity::~PeerIdentity() { Close(); }

void PeerIdentity::Close() {
  if (pidfd_ >= 0) close(std::exchange(pidfd_, -1));
  for (int* fd : {&proc_dir_fd_, &stat_fd_, &cmdline_fd_}) {
    if (*fd >= 0) close(std::exchange(*fd, -1));
  }
}

void PeerIdentity::AdoptProcFds(int dir_fd, int stat_fd, int cmdline_fd) {
  proc_dir_fd_ = dir_fd;
  stat_fd_ = stat_fd;
  cmdline_fd_ = cmdline_fd;
}

}  // namespace vecseal::policy
