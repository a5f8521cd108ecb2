// The policy parser (policy::Policy::Parse) and the decisions of what it accepts. Invariants: a
// refusal is policy_invalid with "<JSON path>: <problem>"; for an accepted policy and a fixed set
// of callers, every operation and a few key names: a grant names its rule, a denial names none,
// the granting rule is one whose callers match (Explain) and appears in GrantsFor, GrantsAny
// agrees with Decide, and deciding twice gives the same answer.
#include <array>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_util.h"
#include "vecseal/policy/policy.h"

namespace {

using vecseal::policy::CallerIdentity;
using vecseal::policy::Operation;

constexpr std::array<Operation, 9> kOperations = {
    Operation::kEncrypt,    Operation::kDecrypt,    Operation::kRewrap,
    Operation::kKeysList,   Operation::kKeysCreate, Operation::kKeysRotate,
    Operation::kKeysConfig, Operation::kKeysDelete, Operation::kAuditRead};

std::vector<CallerIdentity> Callers() {
  CallerIdentity scorer;
  scorer.pid = 4242;
  scorer.uid = 998;
  scorer.gid = 998;
  scorer.user = "scorer";
  scorer.group = "scorer";
  scorer.exe = "/usr/bin/python3.11";
  scorer.exe_sha256 = std::string(64, 'a');
  scorer.unit = "ticket-scorer.service";
  scorer.script = "/opt/etl/export.py";
  scorer.script_sha256 = std::string(64, 'b');

  CallerIdentity admin;
  admin.pid = 1;
  admin.uid = 0;
  admin.gid = 0;
  admin.user = "root";
  admin.group = "root";
  admin.supplementary_gids = {27, 1001};
  admin.group_names = {"sudo", "vecseal-admin"};
  admin.exe = "/usr/bin/vecseal";
  admin.exe_sha256 = std::string(64, '0');
  admin.unit = "session-4.scope";

  CallerIdentity unknown;  // nothing could be determined but the ids
  unknown.pid = 77;
  unknown.uid = 1000;
  unknown.gid = 1000;
  unknown.exe = "/tmp/x (deleted)";
  return {scorer, admin, unknown};
}

bool GrantsRule(const nlohmann::json& grants, const std::string& rule_id) {
  for (const auto& grant : grants) {
    if (grant.contains("rule") && grant["rule"] == rule_id) return true;
  }
  return false;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::vector<CallerIdentity> callers = Callers();
  static const std::array<std::string, 4> keys = {"", "support-ratings", "demo", "a.b_c-9"};

  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto parsed = vecseal::policy::Policy::Parse(text);
  if (!parsed.ok()) {
    const vecseal::Status& error = parsed.status();
    vecseal::fuzz::CheckTypedError(error, {"policy_invalid"});
    VECSEAL_FUZZ_CHECK(error.code() == vecseal::Code::kInvalidArgument, "code %d",
                       static_cast<int>(error.code()));
    VECSEAL_FUZZ_CHECK(error.message().find(": ") != std::string::npos,
                       "message without a path: %s", error.message().c_str());
    return 0;
  }
  const vecseal::policy::Policy& policy = **parsed;
  for (const CallerIdentity& caller : callers) {
    const auto explanations = policy.Explain(caller);
    VECSEAL_FUZZ_CHECK(explanations.size() == policy.rule_count(), "Explain has %zu of %zu rules",
                       explanations.size(), policy.rule_count());
    const nlohmann::json grants = policy.GrantsFor(caller);
    VECSEAL_FUZZ_CHECK(grants.is_array(), "GrantsFor is not an array");
    for (Operation op : kOperations) {
      bool granted_any = false;
      for (const std::string& key : keys) {
        const auto decision = policy.Decide(caller, op, key);
        const auto again = policy.Decide(caller, op, key);
        VECSEAL_FUZZ_CHECK(decision.granted == again.granted && decision.rule_id == again.rule_id,
                           "Decide is not deterministic");
        VECSEAL_FUZZ_CHECK(decision.granted != decision.rule_id.empty(),
                           "granted=%d with rule '%s'", decision.granted,
                           decision.rule_id.c_str());
        if (!decision.granted) continue;
        granted_any = true;
        bool matches = false;
        for (const auto& explanation : explanations) {
          if (explanation.rule_id == decision.rule_id && explanation.caller_matches) matches = true;
        }
        VECSEAL_FUZZ_CHECK(matches, "rule '%s' granted to a caller it does not match",
                           decision.rule_id.c_str());
        VECSEAL_FUZZ_CHECK(GrantsRule(grants, decision.rule_id),
                           "rule '%s' granted but is missing from GrantsFor",
                           decision.rule_id.c_str());
      }
      if (granted_any) {
        VECSEAL_FUZZ_CHECK(policy.GrantsAny(caller, op), "Decide grants %s but GrantsAny denies",
                           std::string(vecseal::policy::OperationName(op)).c_str());
      }
    }
    // GET /v1/keys: allowed exactly when some rule grants keys.list, and a key is listed exactly
    // when an operation on it (audit.read names no key) is granted.
    VECSEAL_FUZZ_CHECK(policy.DecideKeysList(caller).granted ==
                           policy.GrantsAny(caller, Operation::kKeysList),
                       "DecideKeysList disagrees with GrantsAny(keys.list)");
    for (const std::string& key : keys) {
      bool any = false;
      for (Operation op : kOperations) {
        any = any || (op != Operation::kAuditRead && policy.Decide(caller, op, key).granted);
      }
      VECSEAL_FUZZ_CHECK(policy.DecideListed(caller, key).granted == any,
                         "DecideListed('%s') disagrees with Decide", key.c_str());
    }
  }
  return 0;
}
