// Who is on the other end of a Unix socket, as the kernel says, never as the client says.
//
// PeerIdentity pins the peer process with a pidfd (SO_PEERPIDFD, or pidfd_open plus a start-time
// check on kernels without it) and reads /proc/PID through a directory fd that is confirmed, after
// the reads, to still belong to the pinned process. Take it once per connection; call Refresh()
// before each request so a peer that exec'd another program is re-identified.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "vecseal/core/status.h"
#include "vecseal/policy/rate_limit.h"

namespace vecseal::policy {

// What the policy matches on. An empty string field means "could not be determined" (for
// example /proc/PID/exe is unreadable without ptrace rights); conditions on it never match.
struct CallerIdentity {
  pid_t pid = 0;
  // Effective uid and gid at connect() (SO_PEERCRED), kept across the peer's execs: a setuid
  // program exec'd later must not lend its euid to whoever else holds the socket.
  uid_t uid = 0;
  gid_t gid = 0;
  std::string user;   // name of uid; empty when it has none
  std::string group;  // name of gid; empty when it has none
  std::vector<gid_t> supplementary_gids;
  std::vector<std::string> group_names;  // group_names[i] names supplementary_gids[i], or ""
  std::string exe;         // /proc/PID/exe link text (may end in " (deleted)")
  std::string exe_sha256;  // lower-case hex of the image actually running
  // Why exe_sha256 is empty: kDigestNotNeeded when no policy rule tests it (it was not
  // computed), file_unreadable when the image could not be opened, else the hashing error's
  // reason (digest_rate_limited, file_too_large, ...). Empty when the digest is known.
  std::string exe_sha256_unknown;
  std::string unit;        // systemd system unit ("foo.service", "session-3.scope"), or empty
  std::string script;  // interpreters only: canonical path of the script, a regular file the
                       // caller may read (mode bits); else empty
  std::string script_sha256;  // when `script` is known and within the hashing limit
  // Why script_sha256 is empty although `script` is known, as for exe_sha256_unknown.
  std::string script_sha256_unknown;
  // Why exe_sha256, script and script_sha256 cannot vouch for the code running: a loader
  // variable (LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT), an executable mapping from outside the
  // system library directories, or /proc/PID/environ or maps unreadable. Empty when they can.
  // Conditions on those fields fail while it is set.
  std::string code_unproven;
  // Why the command line's script was left unknown (no recognised interpreter, python -i, a
  // PYTHON* variable, a relative path); empty when identified or when no script was named.
  std::string script_refused;

  // {"pid", "uid", "user", "gid", "group", "groups": [{"gid", "name"}], "exe", "exe_sha256",
  //  "exe_sha256_unknown", "unit", "script", "script_sha256", "script_sha256_unknown",
  //  "code_unproven", "script_refused"}; unknown (or, for the reasons, empty) strings are null.
  //  No lookups: cheap per request.
  nlohmann::json ToJson() const;
};

// exe_sha256_unknown or script_sha256_unknown when no rule of the policy tests that digest.
inline constexpr const char* kDigestNotNeeded = "not_needed";

// Which digests to compute when a peer is identified. Hashing reads the whole file, so the
// daemon asks only for those its policy's rules test (Policy::digest_needs()).
struct DigestNeeds {
  bool exe = true;
  bool script = true;
  bool operator==(const DigestNeeds&) const = default;
};

struct IdentityResolverOptions {
  // Use SO_PEERPIDFD when the kernel has it. Tests turn it off to exercise the fallback.
  bool use_peer_pidfd = true;
  // Executables and scripts larger than this are not hashed (their digest stays empty).
  uint64_t max_hash_bytes = uint64_t{512} << 20;
  // Digest cache entries, keyed by (dev, inode, size, mtime, ctime); cleared when full. Also
  // bounds each name cache.
  size_t digest_cache_capacity = 4096;
  // User and group names are cached for this long, and dropped at once when /etc/passwd or
  // /etc/group change; the limit covers NSS sources that are not files (LDAP, systemd). 0: no
  // cache, every identification asks NSS (tens of microseconds per name).
  int name_cache_seconds = 60;
  // Bytes of executables and scripts hashed for one peer uid, per second, on digest-cache misses
  // (a token bucket holding up to max_hash_bytes). Past it, that uid's digests stay unknown: a
  // user touching large files before each connect cannot make the daemon hash for everyone else.
  uint64_t digest_bytes_per_second_per_uid = uint64_t{64} << 20;
};

// Resolves identities and caches file digests and user and group names. Thread-safe; share one
// per daemon.
class IdentityResolver {
 public:
  struct Stats {
    uint64_t digest_cache_hits = 0;
    uint64_t digest_cache_misses = 0;
    uint64_t files_hashed = 0;           // digests actually computed
    uint64_t digests_rate_limited = 0;   // misses refused by digest_bytes_per_second_per_uid
    uint64_t resolutions = 0;  // full /proc reads (first identification and after an exec)
    uint64_t name_cache_hits = 0;
    uint64_t name_cache_misses = 0;
  };

  IdentityResolver() : IdentityResolver(IdentityResolverOptions{}) {}
  explicit IdentityResolver(IdentityResolverOptions options);
  IdentityResolver(const IdentityResolver&) = delete;
  IdentityResolver& operator=(const IdentityResolver&) = delete;

  const IdentityResolverOptions& options() const { return options_; }
  Stats stats() const;

  // SHA-256 (lower-case hex) of the open regular file `fd`, from the cache when its
  // (dev, inode, size, mtime, ctime) is known. Reads through the fd, so the digest is of the
  // file actually opened, whatever its path says now.
  Result<std::string> DigestOf(int fd);
  // DigestOf for a peer: a cache miss is charged to `uid`'s hashing budget
  // (digest_bytes_per_second_per_uid); digest_rate_limited (kResourceExhausted) when it is spent.
  Result<std::string> DigestCharged(int fd, uid_t uid);

  // Fills user, group and group_names from uid, gid and supplementary_gids.
  void FillNames(CallerIdentity* identity);

  // What `vecseald --check-policy --as-uid N --exe PATH [--unit UNIT] [--script PATH]` describes.
  struct SyntheticCaller {
    uid_t uid = 0;
    std::string exe;     // the executable file, digested as the daemon would digest its image
    std::string unit;    // the systemd unit, taken as given; empty: none
    std::string script;  // the interpreter's script file; empty: none. Needs an interpreter exe.
  };

  // The identity a process with these credentials, executable, unit and script would have: for
  // `vecseald --check-policy --as-uid`. Not from the kernel; never use it to decide a live
  // request. The script is reported as the daemon would report it (canonical path and digest),
  // and refused when the daemon would leave it unknown: `exe` is no interpreter
  // (not_an_interpreter), the path is no regular file (file_unreadable), or the user may not read
  // it by its mode bits (script_unreadable).
  Result<CallerIdentity> Synthesize(const SyntheticCaller& caller);

 private:
  friend class PeerIdentity;
  struct FileKey {
    dev_t dev;
    ino_t ino;
    off_t size;
    int64_t mtime_ns;
    int64_t ctime_ns;
    bool operator==(const FileKey&) const = default;
  };
  struct FileKeyHash {
    size_t operator()(const FileKey& key) const;
  };

  Result<std::string> Digest(int fd, const uid_t* charged_uid);
  // Takes `bytes` from `uid`'s token bucket; false (taking nothing) when it holds fewer.
  bool ChargeHashBudget(uid_t uid, uint64_t bytes);

  struct FileStamp {
    ino_t ino = 0;
    off_t size = 0;
    int64_t mtime_ns = 0;
    bool operator==(const FileStamp&) const = default;
  };

  IdentityResolverOptions options_;
  mutable std::mutex mutex_;
  std::unordered_map<FileKey, std::string, FileKeyHash> digests_;
  UidRateLimiter hash_budgets_;
  std::unordered_map<uid_t, std::string> user_names_;
  std::unordered_map<gid_t, std::string> group_names_;
  int64_t names_since_ns_ = 0;  // CLOCK_MONOTONIC when the name caches were last emptied
  FileStamp passwd_stamp_;
  FileStamp group_stamp_;
  Stats stats_;
};

namespace internal {
// What PeerIdentity::Refresh compares to notice an exec. ASLR places code and stack anew on each
// exec, even of the same program with the same arguments.
struct ExecMarker {
  dev_t exe_dev = 0;
  ino_t exe_ino = 0;
  uint64_t start_code = 0;
  uint64_t start_stack = 0;
  std::string cmdline;
  bool operator==(const ExecMarker&) const = default;
};
}  // namespace internal

// The identity of one connection's peer. Holds the pidfd and /proc/PID fds (four in all);
// move-only; not thread-safe (a connection's requests are handled one at a time).
//
// Without SO_PEERPIDFD (kernels before 6.5) the PID is pinned with pidfd_open, and a process that
// started after FromSocket was entered is refused as a PID reuse; one that reused the PID between
// connect() and that moment is not caught. Call FromSocket right after accept().
//
// Errors (reason, code):
//   peer_credentials_unavailable (kPermissionDenied): the socket has no peer credentials.
//   peer_gone (kPermissionDenied): the peer exited (or its PID was reused) before it could be
//     identified. Fail closed: the daemon denies and closes; retrying on this connection cannot
//     succeed, since the process that connected is gone.
//   identity_unavailable (kUnavailable): /proc could not be read for a live peer.
class PeerIdentity {
 public:
  // Computes only the digests `needs` asks for; the others are reported as kDigestNotNeeded.
  static Result<PeerIdentity> FromSocket(int connected_fd, IdentityResolver& resolver,
                                         DigestNeeds needs = {});
  // A process named by PID, for `--check-policy --as-pid`: credentials come from /proc/PID/status
  // instead of the socket. Diagnostics only; requests are decided from FromSocket.
  static Result<PeerIdentity> FromPid(pid_t pid, IdentityResolver& resolver,
                                      DigestNeeds needs = {});

  PeerIdentity(PeerIdentity&& other) noexcept;
  PeerIdentity& operator=(PeerIdentity&& other) noexcept;
  PeerIdentity(const PeerIdentity&) = delete;
  PeerIdentity& operator=(const PeerIdentity&) = delete;
  ~PeerIdentity();

  const CallerIdentity& identity() const { return identity_; }

  // Cheap when nothing changed (a poll on the pidfd, a stat of /proc/PID/exe and reads of
  // /proc/PID/stat and /proc/PID/cmdline). Re-resolves the program (exe, digests, unit, script)
  // when the peer exec'd since, or when `needs` asks for a digest that was not needed before (a
  // reloaded policy), keeping the credentials taken at connect(); returns peer_gone when it
  // exited.
  // On error the previous identity must not be used.
  Status Refresh(IdentityResolver& resolver, DigestNeeds needs = {});

  // True when the pidfd came from SO_PEERPIDFD rather than the pidfd_open fallback.
  bool pinned_by_socket() const { return pinned_by_socket_; }

 private:
  PeerIdentity() = default;
  void Close();
  void AdoptProcFds(int dir_fd, int stat_fd, int cmdline_fd);

  int pidfd_ = -1;
  int proc_dir_fd_ = -1;
  // Kept open so that Refresh() costs two preads rather than two path lookups.
  int stat_fd_ = -1;
  int cmdline_fd_ = -1;
  bool pinned_by_socket_ = false;
  internal::ExecMarker marker_;
  DigestNeeds digests_sought_;  // what the last resolution was asked to compute
  CallerIdentity identity_;
};

}  // namespace vecseal::policy
