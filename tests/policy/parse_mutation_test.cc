// Policy::Parse on many deterministic corruptions of a valid policy: every result is either a
// policy or a policy_invalid/policy_too_large error with a message that starts with a JSON path.
// Nothing may crash, hang or throw.
#include <cstdint>
#include <random>
#include <string>

#include <gtest/gtest.h>

#include "vecseal/policy/policy.h"

namespace vecseal::policy {
namespace {

constexpr char kSeed[] = R"({ "version": 1,
  "rules": [
    { "id": "ticket-scorer",
      "callers": { "unit": "ticket-scorer.service", "uid": [1001, 1002],
                   "exe_sha256": "9f2c000000000000000000000000000000000000000000000000000000000000" },
      "keys": ["support-ratings"], "operations": ["encrypt"] },
    { "id": "nightly-export",
      "callers": { "user": "etl", "script": "/opt/etl/export.py", "group": ["a", "b"] },
      "keys": ["support-*", "m?del"], "operations": ["encrypt", "decrypt"] } ] })";

TEST(PolicyParseMutationTest, CorruptedPoliciesAreRejectedCleanly) {
  constexpr int kRounds = 5000;
  std::mt19937 rng(20261125);  // fixed: a failure must reproduce
  const std::string alphabet = "{}[]\":,0123456789-.e*?/ abcxyz\\\x01\xff";
  const std::string seed = kSeed;
  int accepted = 0;
  for (int round = 0; round < kRounds; ++round) {
    std::string text = seed;
    int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      size_t at = rng() % (text.size() + 1);
      switch (rng() % 3) {
        case 0:
          text.insert(at, 1, alphabet[rng() % alphabet.size()]);
          break;
        case 1:
          if (at < text.size()) text.erase(at, 1 + rng() % 8);
          break;
        default:
          if (at < text.size()) text[at] = alphabet[rng() % alphabet.size()];
          break;
      }
    }
    Result<PolicyPtr> policy = Policy::Parse(text);
    if (policy.ok()) {
      ++accepted;
      // An accepted policy must still decide without trouble.
      CallerIdentity caller;
      caller.user = "etl";
      (void)(*policy)->Decide(caller, Operation::kEncrypt, "support-ratings");
      continue;
    }
    ASSERT_EQ(policy.status().reason(), "policy_invalid") << text;
    ASSERT_EQ(policy.status().message().front(), '/') << text;
    ASSERT_NE(policy.status().message().find(": "), std::string::npos) << text;
  }
  // Some mutations (in whitespace, in values) leave a valid policy; most do not.
  EXPECT_GT(accepted, 0);
  EXPECT_LT(accepted, kRounds);
}

}  // namespace
}  // namespace vecseal::policy
