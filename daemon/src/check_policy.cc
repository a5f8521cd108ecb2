// `vecseald --check-policy`: validate a policy file and show how it treats one caller.
#include <algorithm>
#include <charconv>
#include <optional>

#include "check_policy.h"
#include "vecseal/policy/identity.h"
#include "vecseal/policy/policy.h"

namespace vecseal::daemon {
namespace {

using policy::CallerIdentity;
using policy::Decision;
using policy::IdentityResolver;
using policy::Operation;
using policy::OperationName;
using policy::ParseOperation;
using policy::PeerIdentity;
using policy::Policy;
using policy::PolicyPtr;
using policy::Quote;
using policy::RuleBudget;
using policy::RuleExplanation;

constexpr std::string_view kUsage =
    "usage: vecseald --check-policy FILE [--as-pid PID | --as-uid N --exe PATH [--unit UNIT] "
    "[--script PATH]] [--op OPERATION --key NAME]\n";

struct Args {
  std::string file;
  std::optional<uint32_t> pid;
  std::optional<uint32_t> uid;
  std::string exe;
  std::optional<std::string> unit;
  std::optional<std::string> script;
  std::optional<Operation> op;
  std::optional<std::string> key;
};

bool ParseU32(const std::string& text, uint32_t* out) {
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), *out);
  return ec == std::errc() && ptr == text.data() + text.size() && !text.empty();
}

// What the daemon can read as a unit from a cgroup path: systemd puts processes only in services
// and scopes, and a path component cannot hold a '/'.
bool IsUnitName(const std::string& name) {
  bool typed = name.ends_with(".service") || name.ends_with(".scope");
  return typed && name.front() != '.' && name.find('/') == std::string::npos &&
         std::all_of(name.begin(), name.end(), [](char c) {
           return static_cast<unsigned char>(c) > 0x20 && c != 0x7f;
         });
}

// Empty on success, else the usage problem.
std::string ParseArgs(std::span<const std::string> args, Args* out) {
  if (args.empty()) return "missing the policy FILE";
  out->file = args[0];
  for (size_t i = 1; i < args.size(); ++i) {
    const std::string& flag = args[i];
    if (i + 1 >= args.size()) return flag + " needs a value";
    const std::string& value = args[++i];
    uint32_t number = 0;
    if (flag == "--as-pid") {
      if (!ParseU32(value, &number) || number == 0) return "--as-pid needs a positive PID";
      out->pid = number;
    } else if (flag == "--as-uid") {
      if (!ParseU32(value, &number)) return "--as-uid needs a numeric uid";
      out->uid = number;
    } else if (flag == "--exe") {
      out->exe = value;
    } else if (flag == "--unit") {
      if (!IsUnitName(value)) {
        return "--unit needs a systemd unit name such as ticket-scorer.service (a .service or "
               ".scope, as the daemon reads it from the caller's cgroup)";
      }
      out->unit = value;
    } else if (flag == "--script") {
      if (value.empty()) return "--script needs a path";
      out->script = value;
    } else if (flag == "--op") {
      Operation op;
      if (!ParseOperation(value, &op)) {
        return "--op must be one of encrypt, decrypt, rewrap, keys.list, keys.create, "
               "keys.rotate, keys.config, keys.delete, audit.read";
      }
      out->op = op;
    } else if (flag == "--key") {
      out->key = value;
    } else {
      return "unknown option " + Quote(flag);
    }
  }
  if (out->pid && out->uid) return "give either --as-pid or --as-uid, not both";
  if (out->uid.has_value() != !out->exe.empty()) return "--as-uid and --exe go together";
  if ((out->unit || out->script) && !out->uid) {
    return "--unit and --script describe an --as-uid caller; --as-pid reads them from the process";
  }
  if (out->op && !out->pid && !out->uid) return "--op needs a caller (--as-pid or --as-uid)";
  if (out->key && !out->op) return "--key needs --op";
  // The daemon decides every operation but keys.list and audit.read on a named key.
  if (out->op && !out->key && *out->op != Operation::kKeysList &&
      *out->op != Operation::kAuditRead) {
    return "--op " + std::string(OperationName(*out->op)) + " needs --key NAME";
  }
  if (out->key && out->op == Operation::kAuditRead) {
    return "--op audit.read names no key; drop --key";
  }
  return "";
}

// Paths and names come from the inspected process, which may put newlines or terminal escapes in
// them to forge lines of this report; those are printed quoted and escaped.
std::string OrDash(const std::string& s) {
  if (s.empty()) return "-";
  bool printable = std::all_of(s.begin(), s.end(), [](char c) {
    return static_cast<unsigned char>(c) >= 0x20 && c != 0x7f;
  });
  return printable ? s : Quote(s);
}

// A digest, or "-" followed by why it was not computed, in parentheses, when that is known.
std::string DigestOrWhyNot(const std::string& digest, const std::string& unknown) {
  if (!digest.empty() || unknown.empty()) return OrDash(digest);
  return "- (" + unknown + ")";
}

void PrintCaller(const CallerIdentity& id, std::ostream& out) {
  out << "caller: pid " << id.pid << ", uid " << id.uid << " (" << OrDash(id.user) << "), gid "
      << id.gid << " (" << OrDash(id.group) << "), groups [";
  for (size_t i = 0; i < id.supplementary_gids.size(); ++i) {
    out << (i ? ", " : "") << id.supplementary_gids[i];
    if (i < id.group_names.size() && !id.group_names[i].empty()) {
      out << " (" << OrDash(id.group_names[i]) << ")";
    }
  }
  out << "]\n"
      << "  exe " << OrDash(id.exe) << "\n"
      << "  exe_sha256 " << DigestOrWhyNot(id.exe_sha256, id.exe_sha256_unknown) << "\n"
      << "  unit " << OrDash(id.unit) << "\n"
      << "  script " << OrDash(id.script) << "\n"
      << "  script_sha256 " << DigestOrWhyNot(id.script_sha256, id.script_sha256_unknown)
      << "\n";
}

// keys.list as GET /v1/keys decides it: allowed by a keys.list grant on any key pattern, and then
// showing only the keys on which the caller holds an operation. With a key: whether it is shown.
int DecideListing(const Policy& policy, const CallerIdentity& caller,
                  const std::optional<std::string>& key, std::ostream& out) {
  Decision allowed = policy.DecideKeysList(caller);
  if (!allowed.granted) {
    out << "decision: no rule grants keys.list on any key\n";
    return 3;
  }
  out << "decision: keys.list granted by rule " << Quote(allowed.rule_id);
  if (!key) {
    out << "; it lists the keys matching";
    for (const std::string& pattern : policy.ListedPatterns(caller)) out << " " << pattern;
    out << "\n";
    return 0;
  }
  Decision listed = policy.DecideListed(caller, *key);
  if (listed.granted) {
    out << "; key " << Quote(*key) << " is listed, through rule "
        << Quote(listed.rule_id) << "\n";
    return 0;
  }
  out << "; key " << Quote(*key)
      << " is not listed: no rule grants this caller an operation on it\n";
  return 3;
}

}  // namespace

int RunCheckPolicy(std::span<const std::string> args, std::ostream& out, std::ostream& err) {
  Args parsed;
  std::string problem = ParseArgs(args, &parsed);
  if (!problem.empty()) {
    err << "vecseald: " << problem << "\n" << kUsage;
    return 2;
  }
  Result<PolicyPtr> policy = Policy::LoadFile(parsed.file);
  if (!policy.ok()) {
    err << "vecseald: " << policy.status().message() << "\n";
    return 1;
  }
  out << "policy " << parsed.file << ": valid, " << (*policy)->rule_count() << " rule"
      << ((*policy)->rule_count() == 1 ? "" : "s") << "\n";
  for (const RuleBudget& entry : (*policy)->budgets()) {
    out << "budget: rule " << Quote(entry.rule_id) << ": " << DescribeBudget(entry.budget)
        << "\n";
  }
  if (!parsed.pid && !parsed.uid) return 0;

  IdentityResolver resolver;
  CallerIdentity caller;
  if (parsed.pid) {
    Result<PeerIdentity> peer = PeerIdentity::FromPid(static_cast<pid_t>(*parsed.pid), resolver,
                                                      (*policy)->digest_needs());
    if (!peer.ok()) {
      err << "vecseald: " << peer.status().message() << "\n";
      return 1;
    }
    caller = peer->identity();
  } else {
    Result<CallerIdentity> synthesized = resolver.Synthesize(
        {.uid = *parsed.uid,
         .exe = parsed.exe,
         .unit = parsed.unit.value_or(""),
         .script = parsed.script.value_or("")});
    if (!synthesized.ok()) {
      err << "vecseald: " << synthesized.status().message() << "\n";
      return 1;
    }
    caller = std::move(synthesized).value();
  }
  PrintCaller(caller, out);
  nlohmann::json grants = (*policy)->GrantsFor(caller);
  for (const RuleExplanation& rule : (*policy)->Explain(caller)) {
    out << "rule " << Quote(rule.rule_id) << ": ";
    if (!rule.caller_matches) {
      out << "does not match: " << rule.why_not << "\n";
      continue;
    }
    for (const nlohmann::json& grant : grants) {
      if (grant["rule"] != rule.rule_id) continue;
      out << "matches: grants";
      for (const auto& op : grant["operations"]) out << " " << op.get<std::string>();
      out << " on";
      for (const auto& key : grant["keys"]) out << " " << key.get<std::string>();
      out << "\n";
    }
  }
  if (!parsed.op) return 0;
  if (*parsed.op == Operation::kKeysList) return DecideListing(**policy, caller, parsed.key, out);
  std::string key = parsed.key.value_or("");
  Decision decision = (*policy)->Decide(caller, *parsed.op, key);
  if (decision.granted) {
    out << "decision: " << OperationName(*parsed.op) << " on key " << Quote(key)
        << " granted by rule " << Quote(decision.rule_id) << "\n";
    return 0;
  }
  out << "decision: no rule grants " << OperationName(*parsed.op) << " on key "
      << Quote(key) << "\n";
  return 3;
}

}  // namespace vecseal::daemon
