// The identity a described caller would have, for `vecseald --check-policy --as-uid`: built
// from the passwd entry and the files named, with the script rules of the /proc snapshot.
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

#include "identity_internal.h"
#include "proc.h"
#include "vecseal/policy/identity.h"

namespace vecseal::policy {

using internal::Fd;
using internal::MayRead;
using internal::PathOfFd;

Result<CallerIdentity> IdentityResolver::Synthesize(const SyntheticCaller& caller) {
  const uid_t uid = caller.uid;
  const std::string& exe_path = caller.exe;
  CallerIdentity id;
  id.uid = uid;
  passwd entry{};
  passwd* found = nullptr;
  std::vector<char> buffer(1 << 16);
  if (getpwuid_r(uid, &entry, buffer.data(), buffer.size(), &found) != 0 || found == nullptr) {
    return Status(Code::kNotFound, "unknown_user",
                  "uid " + std::to_string(uid) + " has no passwd entry; give a uid that has one");
  }
  id.user = found->pw_name;
  id.gid = found->pw_gid;
  int count = 64;
  std::vector<gid_t> groups(static_cast<size_t>(count));
  if (getgrouplist(found->pw_name, found->pw_gid, groups.data(), &count) < 0) {
    groups.resize(static_cast<size_t>(count));
    getgrouplist(found->pw_name, found->pw_gid, groups.data(), &count);
  }
  groups.resize(static_cast<size_t>(count));
  id.supplementary_gids = std::move(groups);
  FillNames(&id);
  Fd exe(open(exe_path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
  if (exe.get() < 0) {
    return Status(Code::kNotFound, "file_unreadable",
                  "cannot open " + exe_path + ": " + std::strerror(errno));
  }
  id.exe = PathOfFd(exe.get());
  Result<std::string> digest = DigestOf(exe.get());
  if (!digest.ok()) return std::move(digest).TakeStatus();
  id.exe_sha256 = std::move(digest).value();
  id.unit = caller.unit;
  if (caller.script.empty()) return id;

  // The daemon looks for a script only on an interpreter's command line, so a script given with
  // any other program would describe a caller that cannot exist.
  if (!internal::IsRecognisedInterpreterPath(id.exe)) {
    return Status(Code::kInvalidArgument, "not_an_interpreter",
                  id.exe + " is not a recognised interpreter, so the daemon identifies no script "
                           "for it; give /usr/bin/python3 as the executable");
  }
  // Like OpenScript: look before reading, so that a device or a FIFO is never opened for reading.
  Fd path(open(caller.script.c_str(), O_PATH | O_CLOEXEC));
  if (path.get() < 0) {
    return Status(Code::kNotFound, "file_unreadable",
                  "cannot open " + caller.script + ": " + std::strerror(errno));
  }
  struct stat st;
  if (fstat(path.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return Status(Code::kInvalidArgument, "file_unreadable",
                  caller.script + " is not a regular file; the daemon identifies only regular "
                                  "files as scripts");
  }
  if (!MayRead(id, st)) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return Status(Code::kPermissionDenied, "script_unreadable",
                  "uid " + std::to_string(uid) + " (" + id.user + ") may not read " +
                      caller.script + " (mode " + mode +
                      "), so the daemon would leave the script unknown; make it readable to "
                      "that user");
  }
  std::string self = "/proc/self/fd/" + std::to_string(path.get());
  Fd file(open(self.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
  if (file.get() < 0) {
    return Status(Code::kNotFound, "file_unreadable",
                  "cannot open " + caller.script + ": " + std::strerror(errno));
  }
  id.script = PathOfFd(file.get());
  Result<std::string> script_digest = DigestOf(file.get());
  if (!script_digest.ok()) return std::move(script_digest).TakeStatus();
  id.script_sha256 = std::move(script_digest).value();
  return id;
}

}  // namespace vecseal::policy
