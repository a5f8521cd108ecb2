#include "vecseal/policy/policy.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <map>
#include <set>
#include <utility>

#include "policy_internal.h"
#include "vecseal/wire/key_name.h"

namespace vecseal::policy {
namespace {

constexpr size_t kMaxPolicyBytes = size_t{1} << 20;
constexpr int kMaxDepth = 16;
constexpr size_t kMaxKeyPatternLength = 128;
constexpr size_t kMaxRuleIdLength = 64;

constexpr std::array<Operation, 9> kAllOperations = {
    Operation::kEncrypt,    Operation::kDecrypt,    Operation::kRewrap,
    Operation::kKeysList,   Operation::kKeysCreate, Operation::kKeysRotate,
    Operation::kKeysConfig, Operation::kKeysDelete, Operation::kAuditRead};

constexpr std::string_view kOperationList =
    "encrypt, decrypt, rewrap, keys.list, keys.create, keys.rotate, keys.config, keys.delete or "
    "audit.read";

enum class Field { kUser, kUid, kGroup, kGid, kUnit, kExe, kExeSha256, kScript, kScriptSha256 };

struct FieldInfo {
  std::string_view name;
  Field field;
  bool numeric;
};

constexpr std::array<FieldInfo, 9> kFields = {{
    {"user", Field::kUser, false},
    {"uid", Field::kUid, true},
    {"group", Field::kGroup, false},
    {"gid", Field::kGid, true},
    {"unit", Field::kUnit, false},
    {"exe", Field::kExe, false},
    {"exe_sha256", Field::kExeSha256, false},
    {"script", Field::kScript, false},
    {"script_sha256", Field::kScriptSha256, false},
}};

constexpr std::string_view kFieldList =
    "user, uid, group, gid, unit, exe, exe_sha256, script, script_sha256";

uint16_t Bit(Operation op) { return static_cast<uint16_t>(1u << static_cast<unsigned>(op)); }

// The operations on a key; a grant of any of them makes the key show in the caller's listing.
const uint16_t kKeyOperations = static_cast<uint16_t>(
    Bit(Operation::kEncrypt) | Bit(Operation::kDecrypt) | Bit(Operation::kKeysList) |
    Bit(Operation::kKeysCreate) | Bit(Operation::kKeysRotate) | Bit(Operation::kKeysConfig) |
    Bit(Operation::kKeysDelete) | Bit(Operation::kRewrap));

Status Invalid(const std::string& path, const std::string& problem) {
  return Status(Code::kInvalidArgument, "policy_invalid",
                (path.empty() ? std::string("/") : path) + ": " + problem);
}

std::string EscapePointer(std::string_view segment) {
  std::string out;
  for (char c : segment) {
    if (c == '~') {
      out += "~0";
    } else if (c == '/') {
      out += "~1";
    } else {
      out += c;
    }
  }
  return out;
}

std::string Join(const std::string& path, std::string_view segment) {
  return path + "/" + EscapePointer(segment);
}

std::string Join(const std::string& path, size_t index) {
  return path + "/" + std::to_string(index);
}

// Thrown from the parser callback to stop at a duplicate field or excessive nesting; caught in
// Parse and turned into a Status.
struct CallbackError {
  std::string path;
  std::string problem;
};

// Tracks the JSON pointer of the parser's position, to name duplicate fields, which
// nlohmann::json would otherwise silently collapse into the last one.
class PathTracker {
 public:
  bool operator()(int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using Event = nlohmann::json::parse_event_t;
    switch (event) {
      case Event::object_start:
      case Event::array_start:
        EnterElement();
        if (depth >= kMaxDepth) throw CallbackError{Path(), "nested too deeply"};
        frames_.push_back(Frame{event == Event::object_start, {}, {}, 0});
        break;
      case Event::key: {
        Frame& frame = frames_.back();
        std::string key = parsed.get<std::string>();
        if (!frame.keys.insert(key).second) {
          throw CallbackError{PathBelow(frames_.size() - 1),
                              "field " + Quote(key) + " appears twice; keep one"};
        }
        frame.key = std::move(key);
        break;
      }
      case Event::value:
        EnterElement();
        break;
      case Event::object_end:
      case Event::array_end:
        frames_.pop_back();
        break;
    }
    return true;
  }

 private:
  struct Frame {
    bool is_object;
    std::set<std::string> keys;
    std::string key;
    size_t next_index;
  };

  void EnterElement() {
    if (!frames_.empty() && !frames_.back().is_object) ++frames_.back().next_index;
  }

  // The pointer of the value that frames_[0..count) lead to.
  std::string PathBelow(size_t count) const {
    std::string path;
    for (size_t i = 0; i < count; ++i) {
      const Frame& frame = frames_[i];
      path = frame.is_object ? Join(path, frame.key) : Join(path, frame.next_index - 1);
    }
    return path;
  }
  std::string Path() const { return PathBelow(frames_.size()); }

  std::vector<Frame> frames_;
};

bool IsRuleIdChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-';
}

bool IsHex(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
  });
}

std::string ToLower(std::string s) {
  for (char& c : s) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return s;
}

std::string QuoteList(const std::vector<std::string>& values) {
  std::string out;
  for (size_t i = 0; i < values.size(); ++i) {
    if (i > 0) out += i + 1 == values.size() ? " or " : ", ";
    out += Quote(values[i]);
  }
  return out;
}

std::string NumberList(const std::vector<uint32_t>& values) {
  std::string out;
  for (size_t i = 0; i < values.size(); ++i) {
    if (i > 0) out += i + 1 == values.size() ? " or " : ", ";
    out += std::to_string(values[i]);
  }
  return out;
}

}  // namespace

struct Policy::Rule {
  struct Condition {
    Field field;
    std::string_view name;
    std::vector<std::string> strings;  // for string fields
    std::vector<uint32_t> ids;         // for uid and gid
  };
  std::string id;
  std::vector<Condition> conditions;
  std::vector<std::string> key_patterns;
  uint16_t operations = 0;
  std::vector<Budget> budgets;
};

namespace {

using Rule = Policy::Rule;
using Condition = Policy::Rule::Condition;

bool AnyOf(const std::vector<std::string>& wanted, const std::string& have) {
  return !have.empty() && std::find(wanted.begin(), wanted.end(), have) != wanted.end();
}

bool AnyOf(const std::vector<uint32_t>& wanted, uint32_t have) {
  return std::find(wanted.begin(), wanted.end(), have) != wanted.end();
}

// Why a digest the caller's identity lacks was not computed, from its *_sha256_unknown reason.
std::string DigestUnknownBecause(const std::string& reason, uid_t uid) {
  if (reason == "digest_rate_limited") {
    return "not hashed, since uid " + std::to_string(uid) +
           " has spent its hashing budget (digest_rate_limited); a later connection is hashed "
           "once the budget refills";
  }
  if (reason == kDigestNotNeeded) {
    return "not computed, since no rule tested it when the caller was identified (not_needed)";
  }
  if (reason == "file_too_large") return "the file is larger than the hashing limit (file_too_large)";
  if (reason == "file_unreadable") return "the file could not be opened (file_unreadable)";
  return "the file could not be hashed (" + reason + ")";
}

// Empty when the caller satisfies `c`, else why not.
std::string CheckCondition(const Condition& c, const CallerIdentity& caller) {
  auto describe = [&](const std::string& have) {
    std::string wants = c.strings.size() == 1 ? Quote(c.strings[0])
                                              : "one of " + QuoteList(c.strings);
    std::string is = have.empty() ? "unknown" : Quote(have);
    return std::string(c.name) + " is " + is + ", the rule wants " + wants;
  };
  auto check = [&](const std::string& have) {
    return AnyOf(c.strings, have) ? std::string() : describe(have);
  };
  // A digest of the image or script proves nothing while other code may run in the process.
  auto unproven = [&]() {
    return caller.code_unproven.empty()
               ? std::string()
               : std::string(c.name) + " cannot hold: " + caller.code_unproven;
  };
  auto check_script = [&](const std::string& have) {
    if (!have.empty() || caller.script_refused.empty()) return check(have);
    return std::string(c.name) + " is unknown: " + caller.script_refused;
  };
  // A digest that was not computed is unknown for its own reason, not because it differs.
  auto not_computed = [&](const std::string& have, const std::string& unknown) {
    return have.empty() && !unknown.empty()
               ? std::string(c.name) + " is unknown: " + DigestUnknownBecause(unknown, caller.uid)
               : std::string();
  };
  switch (c.field) {
    case Field::kUser: return check(caller.user);
    case Field::kUnit: return check(caller.unit);
    case Field::kExe: return check(caller.exe);
    case Field::kExeSha256: {
      if (std::string why = unproven(); !why.empty()) return why;
      if (std::string why = not_computed(caller.exe_sha256, caller.exe_sha256_unknown);
          !why.empty()) {
        return why;
      }
      return check(caller.exe_sha256);
    }
    case Field::kScript: return unproven().empty() ? check_script(caller.script) : unproven();
    case Field::kScriptSha256: {
      if (std::string why = unproven(); !why.empty()) return why;
      if (std::string why = not_computed(caller.script_sha256, caller.script_sha256_unknown);
          !why.empty()) {
        return why;
      }
      return check_script(caller.script_sha256);
    }
    case Field::kGroup: {
      if (AnyOf(c.strings, caller.group)) return "";
      for (const std::string& name : caller.group_names) {
        if (AnyOf(c.strings, name)) return "";
      }
      std::vector<std::string> have;
      if (!caller.group.empty()) have.push_back(caller.group);
      for (const std::string& name : caller.group_names) {
        if (!name.empty() && std::find(have.begin(), have.end(), name) == have.end()) {
          have.push_back(name);
        }
      }
      std::string wants = c.strings.size() == 1 ? Quote(c.strings[0])
                                                : "one of " + QuoteList(c.strings);
      return "groups are " + (have.empty() ? std::string("unknown") : QuoteList(have)) +
             ", the rule wants " + wants;
    }
    case Field::kUid: {
      if (AnyOf(c.ids, caller.uid)) return "";
      return "uid is " + std::to_string(caller.uid) + ", the rule wants " +
             (c.ids.size() == 1 ? "" : "one of ") + NumberList(c.ids);
    }
    case Field::kGid: {
      if (AnyOf(c.ids, caller.gid)) return "";
      for (gid_t gid : caller.supplementary_gids) {
        if (AnyOf(c.ids, gid)) return "";
      }
      std::vector<uint32_t> have{caller.gid};
      for (gid_t gid : caller.supplementary_gids) {
        if (std::find(have.begin(), have.end(), gid) == have.end()) have.push_back(gid);
      }
      return "gids are " + NumberList(have) + ", the rule wants " +
             (c.ids.size() == 1 ? "" : "one of ") + NumberList(c.ids);
    }
  }
  return "unknown condition";
}

std::string CheckCallers(const Rule& rule, const CallerIdentity& caller) {
  for (const Condition& condition : rule.conditions) {
    std::string why = CheckCondition(condition, caller);
    if (!why.empty()) return why;
  }
  return "";
}

bool KeyMatches(const Rule& rule, std::string_view key) {
  for (const std::string& pattern : rule.key_patterns) {
    if (internal::GlobMatch(pattern, key)) return true;
  }
  return false;
}

nlohmann::json BudgetJson(const Budget& budget) {
  nlohmann::json out = {{"operation", std::string(OperationName(budget.operation))},
                        {"vectors", budget.vectors},
                        {"per", FormatWindow(budget.window_seconds)}};
  if (budget.per_caller != Budget::PerCaller::kNone) {
    out["per_caller"] = std::string(PerCallerName(budget.per_caller));
  }
  return out;
}

nlohmann::json OperationNames(uint16_t operations) {
  nlohmann::json names = nlohmann::json::array();
  for (Operation op : kAllOperations) {
    if (operations & Bit(op)) names.push_back(std::string(OperationName(op)));
  }
  return names;
}

Status ParseCondition(const std::string& path, const FieldInfo& info, const nlohmann::json& value,
                      Condition* out) {
  out->field = info.field;
  out->name = info.name;
  std::vector<const nlohmann::json*> items;
  bool is_list = value.is_array();
  if (is_list) {
    for (const nlohmann::json& item : value) items.push_back(&item);
    if (items.empty()) {
      return Invalid(path, "empty list; give at least one value or remove the condition");
    }
  } else {
    items.push_back(&value);
  }
  for (size_t i = 0; i < items.size(); ++i) {
    const nlohmann::json& item = *items[i];
    std::string item_path = is_list ? Join(path, i) : path;
    if (info.numeric) {
      if (!item.is_number_integer()) {
        return Invalid(item_path, is_list ? "expected an integer"
                                          : "expected an integer or a list of integers");
      }
      // 4294967295 is (uid_t)-1, which the kernel reserves as "no id".
      bool in_range = item.is_number_unsigned() && item.get<uint64_t>() < 4294967295u;
      if (!in_range) {
        return Invalid(item_path, item.dump() + " is not a valid " + std::string(info.name) +
                                      "; use 0 to 4294967294");
      }
      out->ids.push_back(static_cast<uint32_t>(item.get<uint64_t>()));
      continue;
    }
    if (!item.is_string()) {
      return Invalid(item_path,
                     is_list ? "expected a string" : "expected a string or a list of strings");
    }
    std::string text = item.get<std::string>();
    if (text.empty()) return Invalid(item_path, "empty string; give a value");
    if (text.find('\0') != std::string::npos) return Invalid(item_path, "contains a NUL byte");
    switch (info.field) {
      case Field::kExeSha256:
      case Field::kScriptSha256:
        if (text.size() != 64 || !IsHex(text)) {
          return Invalid(item_path, "expected 64 hex digits, as printed by sha256sum");
        }
        text = ToLower(std::move(text));
        break;
      case Field::kExe:
      case Field::kScript:
        if (text[0] != '/') {
          return Invalid(item_path, "expected an absolute path, as printed by realpath");
        }
        break;
      default:
        break;
    }
    out->strings.push_back(std::move(text));
  }
  return Status::Ok();
}

Status ParseCallers(const std::string& path, const nlohmann::json& callers, Rule* rule) {
  if (!callers.is_object()) {
    return Invalid(path, "expected an object of caller conditions (" + std::string(kFieldList) +
                             ")");
  }
  if (callers.empty()) {
    return Invalid(path, "no conditions, which would match every caller; add at least one of " +
                             std::string(kFieldList));
  }
  for (const auto& [name, value] : callers.items()) {
    auto info = std::find_if(kFields.begin(), kFields.end(),
                             [&wanted = name](const FieldInfo& f) { return f.name == wanted; });
    std::string field_path = Join(path, name);
    if (info == kFields.end()) {
      return Invalid(field_path, "unknown condition; use " + std::string(kFieldList));
    }
    Condition condition;
    VECSEAL_RETURN_IF_ERROR(ParseCondition(field_path, *info, value, &condition));
    rule->conditions.push_back(std::move(condition));
  }
  return Status::Ok();
}

Status ParseKeys(const std::string& path, const nlohmann::json& keys, Rule* rule) {
  if (!keys.is_array()) {
    return Invalid(path, "expected a list of key names or patterns, such as [\"support-*\"]");
  }
  if (keys.empty()) {
    return Invalid(path, "empty list; list at least one key name or pattern (\"*\" for all keys)");
  }
  for (size_t i = 0; i < keys.size(); ++i) {
    std::string item_path = Join(path, i);
    if (!keys[i].is_string()) return Invalid(item_path, "expected a string");
    std::string pattern = keys[i].get<std::string>();
    bool valid = !pattern.empty() && pattern.size() <= kMaxKeyPatternLength &&
                 std::all_of(pattern.begin(), pattern.end(),
                             [](char c) { return wire::IsKeyNameCharacter(c) || c == '*' || c == '?'; });
    if (!valid) {
      return Invalid(item_path, "invalid key pattern " + Quote(pattern) +
                                    "; key names use a-z, 0-9, '.', '_' and '-', and patterns "
                                    "add only '*' and '?'");
    }
    rule->key_patterns.push_back(std::move(pattern));
  }
  return Status::Ok();
}

Status ParseOperations(const std::string& path, const nlohmann::json& operations, Rule* rule) {
  if (!operations.is_array()) {
    return Invalid(path, "expected a list of operations, such as [\"encrypt\"]");
  }
  if (operations.empty()) {
    return Invalid(path, "empty list; list at least one of " + std::string(kOperationList));
  }
  for (size_t i = 0; i < operations.size(); ++i) {
    std::string item_path = Join(path, i);
    if (!operations[i].is_string()) return Invalid(item_path, "expected a string");
    std::string name = operations[i].get<std::string>();
    Operation op;
    if (!ParseOperation(name, &op)) {
      return Invalid(item_path, "unknown operation " + Quote(name) + "; use " +
                                    std::string(kOperationList));
    }
    rule->operations |= Bit(op);
  }
  return Status::Ok();
}

// "24h" and the like: a positive integer and one of s, m, h, d.
Status ParseWindow(const std::string& path, const nlohmann::json& value, uint64_t* seconds) {
  constexpr std::string_view kExample = "; write a number and a unit, s, m, h or d (\"24h\")";
  if (!value.is_string()) return Invalid(path, "expected a window such as \"24h\"" );
  const std::string text = value.get<std::string>();
  size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
  if (digits == 0 || digits > 9) {
    return Invalid(path, "invalid window " + Quote(text) + std::string(kExample));
  }
  const uint64_t number = std::stoull(text.substr(0, digits));
  const std::string unit = text.substr(digits);
  uint64_t scale = 0;
  if (unit == "s") scale = 1;
  if (unit == "m") scale = 60;
  if (unit == "h") scale = 3600;
  if (unit == "d") scale = 86400;
  if (scale == 0) {
    return Invalid(path, "unknown unit " + Quote(unit) + " in " + Quote(text) +
                             "; use s, m, h or d (\"7d\" for a week)");
  }
  if (number == 0) {
    return Invalid(path, "a window of 0 s counts nothing; use 1s to 366d");
  }
  if (number * scale > kMaxBudgetWindowSeconds) {
    return Invalid(path, Quote(text) + " is longer than 366d; spends are counted again "
                         "from the audit log at start, which must reach back a whole window");
  }
  *seconds = number * scale;
  return Status::Ok();
}

Status ParseBudget(const std::string& path, const nlohmann::json& json, Rule* rule) {
  if (!json.is_object()) {
    return Invalid(path, "expected a budget object with \"operation\", \"vectors\" and \"per\"");
  }
  for (const auto& [name, value] : json.items()) {
    if (name != "operation" && name != "vectors" && name != "per" && name != "per_caller") {
      return Invalid(Join(path, name), "unknown field; a budget has only \"operation\", "
                                       "\"vectors\", \"per\" and \"per_caller\"");
    }
  }
  for (std::string_view name : {"operation", "vectors", "per"}) {
    if (!json.contains(name)) {
      return Invalid(Join(path, name), "missing; every budget needs \"" + std::string(name) + "\"");
    }
  }
  Budget budget;
  const std::string op_path = Join(path, "operation");
  const nlohmann::json& op = json["operation"];
  if (!op.is_string() || !ParseOperation(op.get<std::string>(), &budget.operation)) {
    return Invalid(op_path, "expected \"encrypt\", \"decrypt\" or \"rewrap\"");
  }
  if (budget.operation != Operation::kEncrypt && budget.operation != Operation::kDecrypt &&
      budget.operation != Operation::kRewrap) {
    return Invalid(op_path,
                   "a budget counts vectors, so only encrypt, decrypt and rewrap take one");
  }
  if (!(rule->operations & Bit(budget.operation))) {
    return Invalid(op_path, "the rule does not grant " +
                                std::string(OperationName(budget.operation)) +
                                "; add it to \"operations\" or remove this budget");
  }
  const std::string vectors_path = Join(path, "vectors");
  const nlohmann::json& vectors = json["vectors"];
  if (!vectors.is_number_integer()) {
    return Invalid(vectors_path, "expected an integer number of vectors, 1 to " +
                                     std::to_string(kMaxBudgetVectors));
  }
  if (vectors.is_number_unsigned() && vectors.get<uint64_t>() == 0) {
    return Invalid(vectors_path, "a budget of 0 vectors refuses every request; remove " +
                                     std::string(OperationName(budget.operation)) +
                                     " from \"operations\" instead");
  }
  if (!vectors.is_number_unsigned() || vectors.get<uint64_t>() > kMaxBudgetVectors) {
    return Invalid(vectors_path, vectors.dump() + " is not a number of vectors; use 1 to " +
                                     std::to_string(kMaxBudgetVectors));
  }
  budget.vectors = vectors.get<uint64_t>();
  VECSEAL_RETURN_IF_ERROR(ParseWindow(Join(path, "per"), json["per"], &budget.window_seconds));
  if (json.contains("per_caller")) {
    const nlohmann::json& per_caller = json["per_caller"];
    const std::string text = per_caller.is_string() ? per_caller.get<std::string>() : "";
    if (text == "uid") {
      budget.per_caller = Budget::PerCaller::kUid;
    } else if (text == "unit") {
      budget.per_caller = Budget::PerCaller::kUnit;
    } else {
      return Invalid(Join(path, "per_caller"),
                     "expected \"uid\" or \"unit\"; leave it out to share the budget among "
                     "every caller of the rule");
    }
  }
  for (const Budget& other : rule->budgets) {
    if (other.operation == budget.operation && other.window_seconds == budget.window_seconds &&
        other.per_caller == budget.per_caller) {
      return Invalid(path, "a second budget for " + std::string(OperationName(budget.operation)) +
                               " per " + FormatWindow(budget.window_seconds) +
                               " counted alike; keep one");
    }
  }
  rule->budgets.push_back(budget);
  return Status::Ok();
}

Status ParseBudgets(const std::string& path, const nlohmann::json& budgets, Rule* rule) {
  if (!budgets.is_array()) {
    return Invalid(path, "expected a list of budgets, such as [{\"operation\": \"encrypt\", "
                         "\"vectors\": 100000, \"per\": \"24h\"}]");
  }
  if (budgets.empty()) {
    return Invalid(path, "empty list; give at least one budget or remove \"budgets\"");
  }
  for (size_t i = 0; i < budgets.size(); ++i) {
    VECSEAL_RETURN_IF_ERROR(ParseBudget(Join(path, i), budgets[i], rule));
  }
  return Status::Ok();
}

Status ParseRule(const std::string& path, const nlohmann::json& json, Rule* rule) {
  if (!json.is_object()) {
    return Invalid(path, "expected a rule object with \"id\", \"callers\", \"keys\" and "
                         "\"operations\"");
  }
  for (const auto& [name, value] : json.items()) {
    if (name != "id" && name != "callers" && name != "keys" && name != "operations" &&
        name != "budgets") {
      return Invalid(Join(path, name),
                     "unknown field; a rule has only \"id\", \"callers\", \"keys\", "
                     "\"operations\" and \"budgets\"");
    }
  }
  for (std::string_view name : {"id", "callers", "keys", "operations"}) {
    if (!json.contains(name)) {
      return Invalid(Join(path, name), "missing; every rule needs \"" + std::string(name) + "\"");
    }
  }
  const nlohmann::json& id = json["id"];
  if (!id.is_string()) return Invalid(Join(path, "id"), "expected a string");
  rule->id = id.get<std::string>();
  if (rule->id.empty() || rule->id.size() > kMaxRuleIdLength ||
      !std::all_of(rule->id.begin(), rule->id.end(), IsRuleIdChar)) {
    return Invalid(Join(path, "id"), "invalid rule id " + Quote(rule->id) +
                                         "; use 1 to 64 letters, digits, '.', '_' or '-'");
  }
  VECSEAL_RETURN_IF_ERROR(ParseCallers(Join(path, "callers"), json["callers"], rule));
  VECSEAL_RETURN_IF_ERROR(ParseKeys(Join(path, "keys"), json["keys"], rule));
  VECSEAL_RETURN_IF_ERROR(ParseOperations(Join(path, "operations"), json["operations"], rule));
  if (!json.contains("budgets")) return Status::Ok();
  return ParseBudgets(Join(path, "budgets"), json["budgets"], rule);
}

}  // namespace

std::string_view OperationName(Operation op) {
  switch (op) {
    case Operation::kEncrypt: return "encrypt";
    case Operation::kDecrypt: return "decrypt";
    case Operation::kKeysList: return "keys.list";
    case Operation::kKeysCreate: return "keys.create";
    case Operation::kKeysRotate: return "keys.rotate";
    case Operation::kAuditRead: return "audit.read";
    case Operation::kKeysConfig: return "keys.config";
    case Operation::kKeysDelete: return "keys.delete";
    case Operation::kRewrap: return "rewrap";
  }
  return "unknown";
}

std::string FormatWindow(uint64_t seconds) {
  if (seconds > 0 && seconds % 86400 == 0) return std::to_string(seconds / 86400) + "d";
  if (seconds > 0 && seconds % 3600 == 0) return std::to_string(seconds / 3600) + "h";
  if (seconds > 0 && seconds % 60 == 0) return std::to_string(seconds / 60) + "m";
  return std::to_string(seconds) + "s";
}

std::string_view PerCallerName(Budget::PerCaller per_caller) {
  switch (per_caller) {
    case Budget::PerCaller::kNone: return "";
    case Budget::PerCaller::kUid: return "uid";
    case Budget::PerCaller::kUnit: return "unit";
  }
  return "";
}

std::string DescribeBudget(const Budget& budget) {
  std::string out = std::string(OperationName(budget.operation)) + " at most " +
                    std::to_string(budget.vectors) + " vectors per " +
                    FormatWindow(budget.window_seconds) + ", for each key";
  if (budget.per_caller != Budget::PerCaller::kNone) {
    out += " and each " + std::string(PerCallerName(budget.per_caller));
  }
  return out;
}

bool ParseOperation(std::string_view name, Operation* op) {
  for (Operation candidate : kAllOperations) {
    if (OperationName(candidate) == name) {
      *op = candidate;
      return true;
    }
  }
  return false;
}

Policy::Policy(std::vector<Rule> rules) : rules_(std::move(rules)) {
  digest_needs_ = DigestNeeds{.exe = false, .script = false};
  for (const Rule& rule : rules_) {
    for (const Condition& condition : rule.conditions) {
      if (condition.field == Field::kExeSha256) digest_needs_.exe = true;
      if (condition.field == Field::kScriptSha256) digest_needs_.script = true;
    }
  }
}
Policy::~Policy() = default;

size_t Policy::rule_count() const { return rules_.size(); }

std::vector<RuleBudget> Policy::budgets() const {
  std::vector<RuleBudget> out;
  for (const Rule& rule : rules_) {
    for (const Budget& budget : rule.budgets) out.push_back(RuleBudget{rule.id, budget});
  }
  return out;
}

uint64_t Policy::longest_window_seconds() const {
  uint64_t longest = 0;
  for (const Rule& rule : rules_) {
    for (const Budget& budget : rule.budgets) longest = std::max(longest, budget.window_seconds);
  }
  return longest;
}

Result<PolicyPtr> Policy::Parse(std::string_view json_text) {
  if (json_text.size() > kMaxPolicyBytes) {
    return Status(Code::kResourceExhausted, "policy_too_large",
                  "the policy is larger than 1 MiB; split it or remove unused rules");
  }
  nlohmann::json doc;
  try {
    PathTracker tracker;
    doc = nlohmann::json::parse(json_text.begin(), json_text.end(), std::ref(tracker));
  } catch (const CallbackError& e) {
    return Invalid(e.path, e.problem);
  } catch (const nlohmann::json::exception& e) {
    // nlohmann prefixes "[json.exception.parse_error.101] "; keep only the human part.
    std::string what = e.what();
    size_t bracket = what.find("] ");
    if (bracket != std::string::npos) what = what.substr(bracket + 2);
    return Invalid("", "not valid JSON: " + what);
  }
  if (!doc.is_object()) {
    return Invalid("", "expected an object with \"version\" and \"rules\"");
  }
  for (const auto& [name, value] : doc.items()) {
    if (name != "version" && name != "rules") {
      return Invalid(Join("", name), "unknown field; a policy has only \"version\" and \"rules\"");
    }
  }
  if (!doc.contains("version")) return Invalid("/version", "missing; add \"version\": 1");
  const nlohmann::json& version = doc["version"];
  if (!version.is_number_integer()) return Invalid("/version", "expected the integer 1");
  if (version != 1) {
    return Invalid("/version", "unsupported version " + version.dump() +
                                   "; this vecseal reads version 1");
  }
  if (!doc.contains("rules")) {
    return Invalid("/rules", "missing; add a list of rules (an empty list denies everything)");
  }
  const nlohmann::json& rules_json = doc["rules"];
  if (!rules_json.is_array()) return Invalid("/rules", "expected a list of rules");
  std::vector<Rule> rules;
  std::map<std::string, size_t> first_index;
  for (size_t i = 0; i < rules_json.size(); ++i) {
    std::string path = Join("/rules", i);
    Rule rule;
    VECSEAL_RETURN_IF_ERROR(ParseRule(path, rules_json[i], &rule));
    auto [it, inserted] = first_index.emplace(rule.id, i);
    if (!inserted) {
      return Invalid(Join(path, "id"), "duplicate rule id " + Quote(rule.id) +
                                           " (also /rules/" + std::to_string(it->second) +
                                           "/id); give each rule its own id");
    }
    rules.push_back(std::move(rule));
  }
  return PolicyPtr(std::make_shared<const Policy>(std::move(rules)));
}

Result<PolicyPtr> Policy::LoadFile(const std::string& path) {
  struct stat checked;
  VECSEAL_RETURN_IF_ERROR(internal::CheckTrustedFileStat(path, &checked));
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) {
    int err = errno;
    return Status(err == ENOENT ? Code::kNotFound : Code::kUnavailable, "file_unreadable",
                  "cannot open " + path + ": " + std::strerror(err));
  }
  std::string text;
  Status status;
  struct stat opened;
  if (fstat(fd, &opened) != 0 || opened.st_dev != checked.st_dev ||
      opened.st_ino != checked.st_ino) {
    status = Status(Code::kUnavailable, "file_unreadable",
                    path + " changed while it was being checked; try again");
  } else if (static_cast<uint64_t>(opened.st_size) > kMaxPolicyBytes) {
    status = Status(Code::kResourceExhausted, "policy_too_large",
                    path + " is larger than 1 MiB; split it or remove unused rules");
  } else {
    char buffer[16384];
    while (text.size() <= kMaxPolicyBytes) {
      ssize_t n = read(fd, buffer, sizeof buffer);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        status = Status(Code::kUnavailable, "file_unreadable",
                        "cannot read " + path + ": " + std::strerror(errno));
        break;
      }
      if (n == 0) break;
      text.append(buffer, static_cast<size_t>(n));
    }
  }
  close(fd);
  VECSEAL_RETURN_IF_ERROR(status);
  Result<PolicyPtr> policy = Parse(text);
  if (!policy.ok()) {
    const Status& error = policy.status();
    return Status(error.code(), error.reason(), path + ": " + error.message());
  }
  return policy;
}

std::string Policy::AllowUserJson(uid_t uid) {
  nlohmann::json rule = {
      {"id", "dev-user-" + std::to_string(uid)},
      {"callers", {{"uid", uid}}},
      {"keys", {"*"}},
      {"operations", OperationNames(0x1ff)},
  };
  nlohmann::json doc = {{"version", 1}, {"rules", {rule}}};
  return doc.dump(2) + "\n";
}

PolicyPtr Policy::AllowUser(uid_t uid) {
  Result<PolicyPtr> policy = Parse(AllowUserJson(uid));
  assert(policy.ok());
  return std::move(policy).value();
}

Decision Policy::Decide(const CallerIdentity& caller, Operation op, std::string_view key) const {
  for (const Rule& rule : rules_) {
    if ((rule.operations & Bit(op)) && KeyMatches(rule, key) && CheckCallers(rule, caller).empty()) {
      Decision decision{true, rule.id, {}};
      for (const Budget& budget : rule.budgets) {
        if (budget.operation == op) decision.budgets.push_back(&budget);
      }
      return decision;
    }
  }
  return Decision{};
}

bool Policy::GrantsAny(const CallerIdentity& caller, Operation op) const {
  for (const Rule& rule : rules_) {
    if ((rule.operations & Bit(op)) && CheckCallers(rule, caller).empty()) return true;
  }
  return false;
}

Decision Policy::DecideKeysList(const CallerIdentity& caller) const {
  for (const Rule& rule : rules_) {
    if ((rule.operations & Bit(Operation::kKeysList)) && CheckCallers(rule, caller).empty()) {
      return Decision{true, rule.id, {}};
    }
  }
  return Decision{};
}

Decision Policy::DecideListed(const CallerIdentity& caller, std::string_view key) const {
  for (const Rule& rule : rules_) {
    if ((rule.operations & kKeyOperations) && KeyMatches(rule, key) &&
        CheckCallers(rule, caller).empty()) {
      return Decision{true, rule.id, {}};
    }
  }
  return Decision{};
}

std::vector<std::string> Policy::RulesNaming(std::string_view key) const {
  std::vector<std::string> ids;
  for (const Rule& rule : rules_) {
    const bool names = std::any_of(rule.key_patterns.begin(), rule.key_patterns.end(),
                                   [&](const std::string& pattern) {
                                     return pattern != "*" && internal::GlobMatch(pattern, key);
                                   });
    if (names) ids.push_back(rule.id);
  }
  return ids;
}

std::vector<std::string> Policy::ListedPatterns(const CallerIdentity& caller) const {
  std::vector<std::string> patterns;
  for (const Rule& rule : rules_) {
    if (!(rule.operations & kKeyOperations) || !CheckCallers(rule, caller).empty()) continue;
    for (const std::string& pattern : rule.key_patterns) {
      if (std::find(patterns.begin(), patterns.end(), pattern) == patterns.end()) {
        patterns.push_back(pattern);
      }
    }
  }
  return patterns;
}

nlohmann::json Policy::GrantsFor(const CallerIdentity& caller) const {
  nlohmann::json grants = nlohmann::json::array();
  for (const Rule& rule : rules_) {
    if (!CheckCallers(rule, caller).empty()) continue;
    nlohmann::json grant = {{"rule", rule.id},
                            {"keys", rule.key_patterns},
                            {"operations", OperationNames(rule.operations)}};
    if (!rule.budgets.empty()) {
      grant["budgets"] = nlohmann::json::array();
      for (const Budget& budget : rule.budgets) grant["budgets"].push_back(BudgetJson(budget));
    }
    grants.push_back(std::move(grant));
  }
  return grants;
}

std::vector<RuleExplanation> Policy::Explain(const CallerIdentity& caller) const {
  std::vector<RuleExplanation> out;
  for (const Rule& rule : rules_) {
    std::string why = CheckCallers(rule, caller);
    out.push_back(RuleExplanation{rule.id, why.empty(), std::move(why)});
  }
  return out;
}

std::string Quote(std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out = "'";
  for (char c : s) {
    auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte >= 0x7f || c == '\'' || c == '\\') {
      out += "\\x";
      out += kHex[byte >> 4];
      out += kHex[byte & 0xf];
    } else {
      out += c;
    }
  }
  return out + "'";
}

namespace internal {

bool GlobMatch(std::string_view pattern, std::string_view name) {
  // Iterative matching with one backtrack point: linear in practice, never exponential.
  size_t p = 0;
  size_t n = 0;
  size_t star = std::string_view::npos;
  size_t star_n = 0;
  while (n < name.size()) {
    if (p < pattern.size() && (pattern[p] == '?' || pattern[p] == name[n])) {
      ++p;
      ++n;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      star_n = n;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      n = ++star_n;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

}  // namespace internal
}  // namespace vecseal::policy
