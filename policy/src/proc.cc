#include "proc.h"

#include <algorithm>
#include <charconv>

namespace vecseal::policy::internal {
namespace {

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

std::string UnitFromCgroupPath(std::string_view path) {
  size_t i = 0;
  while (i < path.size()) {
    while (i < path.size() && path[i] == '/') ++i;
    size_t end = path.find('/', i);
    if (end == std::string_view::npos) end = path.size();
    std::string_view component = path.substr(i, end - i);
    if (component.empty()) break;
    if (!EndsWith(component, ".slice")) {
      bool is_unit = EndsWith(component, ".service") || EndsWith(component, ".scope");
      return is_unit ? std::string(component) : std::string();
    }
    i = end;
  }
  return "";
}

template <typename T>
std::optional<T> ParseNumber(std::string_view text) {
  T value{};
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || ptr != text.data() + text.size()) return std::nullopt;
  return value;
}

std::vector<std::string_view> SplitWhitespace(std::string_view text) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && (text[i] == ' ' || text[i] == '\t')) ++i;
    size_t start = i;
    while (i < text.size() && text[i] != ' ' && text[i] != '\t') ++i;
    if (i > start) out.push_back(text.substr(start, i - start));
  }
  return out;
}

enum class Family { kNone, kPython, kNode, kPerl, kRuby, kPhp, kJava, kShell };

// Matches "python", "python3" and "python3.11", but not "pythonista".
bool IsVersioned(std::string_view base, std::string_view name) {
  if (!StartsWith(base, name)) return false;
  std::string_view version = base.substr(name.size());
  return version.find_first_not_of("0123456789.") == std::string_view::npos;
}

Family FamilyOf(std::string_view exe_path) {
  if (EndsWith(exe_path, " (deleted)")) exe_path.remove_suffix(10);
  std::string_view base = exe_path.substr(exe_path.rfind('/') + 1);
  if (IsVersioned(base, "python") || IsVersioned(base, "pypy")) return Family::kPython;
  if (base == "node" || base == "nodejs") return Family::kNode;
  if (IsVersioned(base, "perl")) return Family::kPerl;
  if (IsVersioned(base, "ruby")) return Family::kRuby;
  if (IsVersioned(base, "php")) return Family::kPhp;
  if (base == "java") return Family::kJava;
  if (base == "sh" || base == "bash" || base == "dash" || base == "zsh" || base == "ksh") {
    return Family::kShell;
  }
  return Family::kNone;
}

struct Grammar {
  // Options after which no script file runs (code inline, a module, stdin).
  std::vector<std::string_view> no_script;
  // Options whose value is the next argument.
  std::vector<std::string_view> takes_value;
  // In a cluster of short options ("-Ic", "-le"): letters that run inline code, and letters
  // whose value is the rest of the cluster (or, last in it, the next argument when "-<letter>"
  // is in takes_value).
  std::string_view inline_letters;
  std::string_view value_letters;
};

const Grammar& GrammarOf(Family family) {
  static const Grammar kPython{{"-c", "-m", "-"},
                               {"-W", "-X", "--check-hash-based-pycs"},
                               "cm",
                               "WX"};
  static const Grammar kNode{{"-e", "--eval", "-p", "--print", "-", "-i", "--interactive"},
                             {"-r", "--require", "--import", "--loader",
                              "--experimental-loader", "-C", "--conditions", "--title"},
                             "",
                             ""};
  static const Grammar kPerl{{"-e", "-E", "-"}, {}, "eE", "MmIxiCdDF"};
  static const Grammar kRuby{{"-e", "-"}, {"-I", "-r", "-C", "-E", "--encoding"}, "e", "IrCExF"};
  static const Grammar kPhp{{"-r", "-a", "-"}, {"-c", "-d", "-z"}, "r", "cdz"};
  static const Grammar kShell{{"-c", "-s", "-i", "-"}, {"-o", "+o", "-O", "+O"}, "cs", "oO"};
  static const Grammar kJava{{}, {"-cp", "-classpath", "--class-path", "-p", "--module-path",
                                  "--add-modules", "--add-opens", "--add-exports", "-d"},
                             "",
                             ""};
  switch (family) {
    case Family::kPython: return kPython;
    case Family::kNode: return kNode;
    case Family::kPerl: return kPerl;
    case Family::kRuby: return kRuby;
    case Family::kPhp: return kPhp;
    case Family::kShell: return kShell;
    case Family::kJava:
    case Family::kNone: break;
  }
  return kJava;
}

bool Contains(const std::vector<std::string_view>& list, std::string_view s) {
  for (std::string_view item : list) {
    if (item == s) return true;
  }
  return false;
}

}  // namespace

std::string UnitFromCgroup(std::string_view text) {
  std::string v1_unit;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    if (StartsWith(line, "0::")) return UnitFromCgroupPath(line.substr(3));
    size_t first = line.find(':');
    if (first == std::string_view::npos) continue;
    size_t second = line.find(':', first + 1);
    if (second == std::string_view::npos) continue;
    if (line.substr(first + 1, second - first - 1) == "name=systemd" && v1_unit.empty()) {
      v1_unit = UnitFromCgroupPath(line.substr(second + 1));
    }
  }
  return v1_unit;
}

std::vector<std::string> SplitCmdline(std::string_view cmdline) {
  std::vector<std::string> args;
  while (!cmdline.empty()) {
    size_t nul = cmdline.find('\0');
    args.emplace_back(cmdline.substr(0, nul));
    if (nul == std::string_view::npos) break;
    cmdline.remove_prefix(nul + 1);
  }
  return args;
}

bool IsInterpreter(std::string_view exe_path) { return FamilyOf(exe_path) != Family::kNone; }

std::optional<std::string> ScriptArgument(std::string_view exe_path,
                                          const std::vector<std::string>& argv) {
  Family family = FamilyOf(exe_path);
  if (family == Family::kNone) return std::nullopt;
  const Grammar& grammar = GrammarOf(family);
  for (size_t i = 1; i < argv.size(); ++i) {
    std::string_view arg = argv[i];
    if (family == Family::kJava && (arg == "-jar" || arg == "--jar")) {
      if (i + 1 < argv.size() && !argv[i + 1].empty()) return argv[i + 1];
      return std::nullopt;
    }
    if (arg == "--") {
      if (i + 1 < argv.size() && !argv[i + 1].empty() && argv[i + 1] != "-") return argv[i + 1];
      return std::nullopt;
    }
    if (Contains(grammar.no_script, arg)) return std::nullopt;
    if (Contains(grammar.takes_value, arg)) {
      ++i;
      continue;
    }
    // A cluster such as "-Ic CODE", "-le CODE" or "-cprint(1)": without this, the inline code
    // would be taken for the script's path.
    if (arg.size() > 2 && arg[0] == '-' && arg[1] != '-') {
      for (size_t j = 1; j < arg.size(); ++j) {
        if (grammar.inline_letters.find(arg[j]) != std::string_view::npos) return std::nullopt;
        if (grammar.value_letters.find(arg[j]) != std::string_view::npos) {
          char option[] = {'-', arg[j], '\0'};
          if (j + 1 == arg.size() && Contains(grammar.takes_value, option)) ++i;
          break;
        }
      }
      continue;
    }
    if (arg.empty() || arg[0] == '-' || (family == Family::kShell && arg[0] == '+')) continue;
    // Java without -jar runs a class named on the command line, not a file.
    if (family == Family::kJava) return std::nullopt;
    return std::string(arg);
  }
  return std::nullopt;
}

namespace {

std::string_view VariableName(std::string_view entry) { return entry.substr(0, entry.find('=')); }

// PYTHON* variables that change neither which code runs nor where it is imported from.
bool IsHarmlessPythonVariable(std::string_view name) {
  static constexpr std::string_view kHarmless[] = {
      "PYTHONUNBUFFERED",  "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED",     "PYTHONIOENCODING",
      "PYTHONUTF8",        "PYTHONSAFEPATH",          "PYTHONNOUSERSITE",   "PYTHONFAULTHANDLER",
      "PYTHONCOERCECLOCALE", "PYTHONLEGACYWINDOWSSTDIO"};
  for (std::string_view harmless : kHarmless) {
    if (name == harmless) return true;
  }
  return false;
}

// Whether a Python option argument asks for the interactive prompt (after the script, or
// instead of it): "-i" alone or in a cluster such as "-ui", up to a letter that takes a value.
bool AsksForInspect(std::string_view arg) {
  if (arg.size() < 2 || arg[0] != '-' || arg[1] == '-') return false;
  for (size_t j = 1; j < arg.size(); ++j) {
    if (arg[j] == 'i') return true;
    if (std::string_view("cmWX").find(arg[j]) != std::string_view::npos) return false;
  }
  return false;
}

}  // namespace

std::string LoaderVariableSet(const std::vector<std::string>& env_vars) {
  for (const std::string& entry : env_vars) {
    std::string_view name = VariableName(entry);
    if (name == "LD_PRELOAD" || name == "LD_LIBRARY_PATH" || name == "LD_AUDIT") {
      return std::string(name);
    }
  }
  return "";
}

const std::vector<std::string_view>& SystemLibraryDirs() {
  static const std::vector<std::string_view> kDirs = {"/usr/lib/",   "/lib/",   "/usr/lib64/",
                                                      "/lib64/",     "/usr/lib32/", "/lib32/",
                                                      "/usr/libexec/"};
  return kDirs;
}

std::string ForeignExecutableMapping(std::string_view text, std::string_view exe_path) {
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    // address perms offset dev inode [path]; the path may itself contain spaces.
    size_t pos = 0;
    std::string_view perms;
    for (int field = 0; field < 5 && pos < line.size(); ++field) {
      while (pos < line.size() && line[pos] == ' ') ++pos;
      size_t end = line.find(' ', pos);
      if (end == std::string_view::npos) end = line.size();
      if (field == 1) perms = line.substr(pos, end - pos);
      pos = end;
    }
    if (perms.size() < 3 || perms[2] != 'x') continue;
    while (pos < line.size() && line[pos] == ' ') ++pos;
    std::string_view path = line.substr(std::min(pos, line.size()));
    if (path.empty() || path[0] == '[' || path == exe_path) continue;
    bool in_system_dir = false;
    for (std::string_view dir : SystemLibraryDirs()) in_system_dir |= StartsWith(path, dir);
    if (!in_system_dir) return "'" + std::string(path) + "'";
  }
  return "";
}

bool IsRecognisedInterpreterPath(std::string_view canonical_exe) {
  for (std::string_view dir : {std::string_view("/usr/bin/"), std::string_view("/bin/")}) {
    if (!StartsWith(canonical_exe, dir)) continue;
    std::string_view base = canonical_exe.substr(dir.size());
    if (base == "python3") return true;
    if (!StartsWith(base, "python3.") || base.size() == 8) return false;
    return base.substr(8).find_first_not_of("0123456789") == std::string_view::npos;
  }
  return false;
}

std::string PythonRunProblem(const std::vector<std::string>& argv,
                             const std::vector<std::string>& env_vars) {
  for (const std::string& entry : env_vars) {
    std::string_view name = VariableName(entry);
    if (StartsWith(name, "PYTHON") && !IsHarmlessPythonVariable(name)) {
      return "the environment sets " + std::string(name);
    }
  }
  static const std::vector<std::string_view> kTakesValue = {"-W", "-X", "--check-hash-based-pycs"};
  for (size_t i = 1; i < argv.size(); ++i) {
    std::string_view arg = argv[i];
    if (arg == "--" || arg.empty() || arg[0] != '-') break;  // the script comes next
    if (AsksForInspect(arg)) return "python runs with -i (an interactive prompt after the script)";
    if (Contains(kTakesValue, arg)) ++i;
  }
  return "";
}

std::optional<StatusIds> ParseStatusIds(std::string_view text) {
  StatusIds ids;
  bool have_uid = false;
  bool have_gid = false;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    size_t colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    std::string_view name = line.substr(0, colon);
    std::vector<std::string_view> fields = SplitWhitespace(line.substr(colon + 1));
    if (name == "Uid" || name == "Gid") {
      // Real, effective, saved, filesystem.
      if (fields.size() != 4) return std::nullopt;
      auto value = ParseNumber<uint32_t>(fields[1]);
      if (!value) return std::nullopt;
      if (name == "Uid") {
        ids.euid = *value;
        have_uid = true;
      } else {
        ids.egid = *value;
        have_gid = true;
      }
    } else if (name == "Groups") {
      for (std::string_view field : fields) {
        auto value = ParseNumber<uint32_t>(field);
        if (!value) return std::nullopt;
        ids.groups.push_back(*value);
      }
    }
  }
  if (!have_uid || !have_gid) return std::nullopt;
  return ids;
}

std::optional<ProcStat> ParseStat(std::string_view text) {
  // The command name in parentheses may itself contain spaces and parentheses.
  size_t paren = text.rfind(')');
  if (paren == std::string_view::npos) return std::nullopt;
  std::vector<std::string_view> fields = SplitWhitespace(text.substr(paren + 1));
  // Fields after ')' begin with field 3 (state).
  auto field = [&](size_t number) -> std::optional<uint64_t> {
    if (fields.size() <= number - 3) return std::nullopt;
    std::string_view value = fields[number - 3];
    while (!value.empty() && value.back() == '\n') value.remove_suffix(1);
    return ParseNumber<uint64_t>(value);
  };
  std::optional<uint64_t> start_time = field(22);
  std::optional<uint64_t> start_code = field(26);
  std::optional<uint64_t> start_stack = field(28);
  if (!start_time || !start_code || !start_stack) return std::nullopt;
  return ProcStat{*start_time, *start_code, *start_stack};
}

}  // namespace vecseal::policy::internal
