// Parsers for /proc text, kept pure so tests can drive them with tables.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace vecseal::policy::internal {

// The systemd system unit from /proc/PID/cgroup text: the first cgroup path component that is
// not a slice ("/system.slice/foo.service" -> "foo.service"; a user's own units below
// "user@1000.service" yield "user@1000.service", so users cannot claim a system unit's name).
// Uses the cgroup v2 line ("0::"), else the v1 "name=systemd" line. Empty when none.
std::string UnitFromCgroup(std::string_view cgroup_text);

// Splits NUL-separated /proc/PID/cmdline bytes into arguments.
std::vector<std::string> SplitCmdline(std::string_view cmdline);

// Whether the executable's base name is one of the interpreters ScriptArgument knows.
bool IsInterpreter(std::string_view exe_path);

// For an interpreter (by executable base name: python*, pypy*, node, nodejs, perl*, ruby*, php*,
// java, sh, bash, dash, zsh, ksh), the script argument of `argv` as written (possibly relative);
// nullopt when the executable is not an interpreter or runs no script file (-c, -m, -e, stdin).
std::optional<std::string> ScriptArgument(std::string_view exe_path,
                                          const std::vector<std::string>& argv);

// Why the loader was told to run code besides the executable and its declared libraries: names
// the first of LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT set in `env_vars` ("NAME=value" entries);
// empty when none is.
std::string LoaderVariableSet(const std::vector<std::string>& env_vars);

// Directories whose files may be mapped executable in a process whose digest is trusted: only
// root can write them on a standard system. /usr/local is left out (group staff on Debian).
const std::vector<std::string_view>& SystemLibraryDirs();

// The first executable mapping in /proc/PID/maps text of a file that is neither `exe_path` nor
// inside SystemLibraryDirs(), quoted; empty when none. Anonymous and [vdso]-style mappings pass.
std::string ForeignExecutableMapping(std::string_view maps_text, std::string_view exe_path);

// Whether `canonical_exe` is a CPython the script conditions recognise: /usr/bin/python3 or
// /usr/bin/python3.N (also under /bin). Any other program, whatever its name, runs no script.
bool IsRecognisedInterpreterPath(std::string_view canonical_exe);

// Why a CPython run with this argv and environment may execute code other than its script: an
// interactive flag (-i in any cluster) before the script, or a PYTHON* variable outside a short
// list of harmless ones (PYTHONPATH, PYTHONSTARTUP, PYTHONHOME, PYTHONINSPECT, PYTHONUSERBASE,
// ...); empty when neither.
std::string PythonRunProblem(const std::vector<std::string>& argv,
                             const std::vector<std::string>& env_vars);

struct StatusIds {
  uid_t euid = 0;
  gid_t egid = 0;
  std::vector<gid_t> groups;
};
// The effective uid and gid and the supplementary groups from /proc/PID/status text.
std::optional<StatusIds> ParseStatusIds(std::string_view status_text);

struct ProcStat {
  uint64_t start_time = 0;   // field 22: clock ticks after boot
  uint64_t start_code = 0;   // field 26: with ASLR, different after each exec; 0 without ptrace
  uint64_t start_stack = 0;  // field 28: likewise
};
// The fields above of /proc/PID/stat text.
std::optional<ProcStat> ParseStat(std::string_view stat_text);

}  // namespace vecseal::policy::internal
