// The policy file: which callers may use which model keys for which operations. Default deny.
// See docs/policy.md for the file format and the matching rules.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <ostream>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "vecseal/core/status.h"
#include "vecseal/policy/identity.h"

namespace vecseal::policy {

enum class Operation {
  kEncrypt,
  kDecrypt,
  kKeysList,
  kKeysCreate,
  kKeysRotate,
  kAuditRead,
  kKeysConfig,
  kKeysDelete,
  kRewrap,
};

// "encrypt", "decrypt", "keys.list", "keys.create", "keys.rotate", "audit.read", "keys.config",
// "keys.delete", "rewrap".
std::string_view OperationName(Operation op);
// The inverse of OperationName; false for anything else.
bool ParseOperation(std::string_view name, Operation* op);

// At most `vectors` vectors of `operation` in any `window_seconds`, counted per rule and key
// name (all versions together) and, with `per_caller`, per caller too (docs/policy.md, Budgets).
struct Budget {
  enum class PerCaller : uint8_t { kNone, kUid, kUnit };
  Operation operation = Operation::kEncrypt;
  uint64_t vectors = 0;
  uint64_t window_seconds = 0;
  PerCaller per_caller = PerCaller::kNone;
};

inline constexpr uint64_t kMaxBudgetVectors = 9223372036854775807u;  // 2^63 - 1
inline constexpr uint64_t kMaxBudgetWindowSeconds = 366u * 86400u;

// "24h", "90m", "7d", "45s": the largest unit that divides the window.
std::string FormatWindow(uint64_t seconds);
// "uid", "unit", or "" for a budget shared by every caller of the rule.
std::string_view PerCallerName(Budget::PerCaller per_caller);
// "encrypt at most 100000 vectors per 24h, for each key and each uid".
std::string DescribeBudget(const Budget& budget);

struct Decision {
  bool granted = false;
  std::string rule_id;  // the rule that granted; empty when denied
  // The granting rule's budgets on the decided operation; they point into the Policy, which
  // the caller keeps alive.
  std::vector<const Budget*> budgets;
};

// A budget with the rule that carries it, as every part of the daemon names it.
struct RuleBudget {
  std::string rule_id;
  Budget budget;
};

// How one rule relates to a caller, for `--check-policy` ("which rule would decide, and why").
struct RuleExplanation {
  std::string rule_id;
  bool caller_matches = false;
  // When the caller does not match: the first failing condition, e.g.
  // "unit is 'session-3.scope', the rule wants 'ticket-scorer.service'".
  std::string why_not;
};

class Policy;
using PolicyPtr = std::shared_ptr<const Policy>;

// Immutable once built, so a reload can swap a shared_ptr<const Policy> atomically while requests
// keep deciding against the old one.
class Policy {
 public:
  // Errors: kInvalidArgument "policy_invalid", message "<JSON path>: <problem>; <fix>", e.g.
  // "/rules/2/callers/uid: expected an integer or a list of integers".
  static Result<PolicyPtr> Parse(std::string_view json_text);
  // CheckTrustedFile, then Parse. Errors: file_untrusted (kPermissionDenied), file_unreadable
  // (kNotFound when missing, kUnavailable otherwise), policy_too_large (kResourceExhausted, over
  // 1 MiB), policy_invalid (message prefixed with the file path).
  static Result<PolicyPtr> LoadFile(const std::string& path);

  // The dev-mode policy: the user `uid` may do every operation on every key.
  static PolicyPtr AllowUser(uid_t uid);
  // The same policy as JSON text, for writing DIR/policy.json.
  static std::string AllowUserJson(uid_t uid);

  // The first rule whose callers match and that lists `op` and a key pattern matching `key`
  // grants. audit.read, which names no key, passes an empty `key`, which only the pattern "*"
  // matches. keys.list is decided by DecideKeysList and DecideListed instead.
  Decision Decide(const CallerIdentity& caller, Operation op, std::string_view key) const;

  // Whether any rule grants `op` to this caller, whatever its key patterns.
  bool GrantsAny(const CallerIdentity& caller, Operation op) const;

  // GET /v1/keys: allowed when a rule grants the caller keys.list, on any key pattern; the first
  // such rule decides. The listing then holds exactly the keys DecideListed grants.
  Decision DecideKeysList(const CallerIdentity& caller) const;

  // Whether GET /v1/keys shows `key` to this caller: the first rule that grants it any operation
  // on that key name (audit.read, which concerns no key, does not count), so that a listing
  // never names a key on which the caller holds nothing.
  Decision DecideListed(const CallerIdentity& caller, std::string_view key) const;

  // The ids of the rules that name `key`: a key pattern other than the catch-all "*" matches
  // it, whatever the rule's callers and operations. A key they name is still meant to be used,
  // so deleting it needs force; "*" names no key in particular (admin rules use it).
  std::vector<std::string> RulesNaming(std::string_view key) const;

  // The key patterns of the rules that make keys listed for this caller (DecideListed), in file
  // order without repeats: what `--check-policy --op keys.list` reports.
  std::vector<std::string> ListedPatterns(const CallerIdentity& caller) const;

  // The rules whose callers match: [{"rule", "keys": [patterns], "operations": [names]}], in
  // file order, with "budgets": [{"operation", "vectors", "per", "per_caller"}] on rules that
  // carry any; for /v1/whoami.
  nlohmann::json GrantsFor(const CallerIdentity& caller) const;

  // Every rule with whether the caller matches it and, if not, why.
  std::vector<RuleExplanation> Explain(const CallerIdentity& caller) const;

  size_t rule_count() const;

  // Every budget of every rule, in file order.
  std::vector<RuleBudget> budgets() const;
  // The longest budget window, 0 when no rule has a budget.
  uint64_t longest_window_seconds() const;

  // The digests some rule tests (exe_sha256, script_sha256): the only ones worth computing when
  // a caller is identified under this policy.
  DigestNeeds digest_needs() const { return digest_needs_; }

  // Public for std::make_shared only; build with Parse.
  struct Rule;
  explicit Policy(std::vector<Rule> rules);
  ~Policy();

 private:
  std::vector<Rule> rules_;
  DigestNeeds digest_needs_;
};

// sshd StrictModes for a file the daemon trusts (policy, config): the file and every directory
// above it, up to /, must be owned by root or the daemon's euid and not writable by group or
// others. A directory with the sticky bit (like /tmp) may be writable by others, since they cannot
// replace entries they do not own. Symlinks are resolved and the target's path is checked, and
// every symlink met on the way (CheckSymlinkOwners) must be owned by root or the daemon's euid.
// Errors: file_untrusted (kPermissionDenied) naming the path and the chmod/chown that fixes it;
// file_unreadable (kNotFound when missing, kUnavailable otherwise) when it cannot be examined.
Status CheckTrustedFile(const std::string& path);

// Every symlink met while resolving `path` (as given, then each link's target, up to 40 links)
// is owned by root or the daemon's euid: whoever owns a link decides where it points, so a link
// of another user's would let them choose which file the daemon trusts or writes. Components that
// do not exist end the walk without error (the caller reports them). file_untrusted naming the
// link otherwise.
Status CheckSymlinkOwners(const std::string& path);

// For a directory the daemon creates files in (the socket's, --dev's state): CheckSymlinkOwners,
// and every directory above it passes CheckTrustedFile's rules, so that nobody else can rename
// it away and put their own in its place. The directory itself is for the caller to judge.
Status CheckTrustedDirectory(const std::string& directory);

// `s` in single quotes, with control and non-ASCII bytes escaped: how messages and
// `--check-policy` show names and values taken from a policy file or a caller.
std::string Quote(std::string_view s);

}  // namespace vecseal::policy
