// Budgets: the policy file's "budgets" (what is accepted, the exact message for each mistake),
// and BudgetLedger's window, refusals and exactness under racing threads.
#include "vecseal/policy/budget.h"

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "vecseal/policy/policy.h"

namespace vecseal::policy {
namespace {

using std::chrono::hours;
using std::chrono::seconds;
using Clock = BudgetLedger::Clock;

std::string WithBudgets(const std::string& budgets,
                        const std::string& operations = R"(["encrypt"])") {
  return R"({"version": 1, "rules": [{"id": "r", "callers": {"uid": 1}, "keys": ["k-*"],
             "operations": )" +
         operations + R"(, "budgets": )" + budgets + "}]}";
}

struct BadBudget {
  std::string name;
  std::string budgets;
  std::string message;
};

void PrintTo(const BadBudget& c, std::ostream* os) { *os << c.name; }

class BadBudgetTest : public testing::TestWithParam<BadBudget> {};

TEST_P(BadBudgetTest, RejectedWithPathAndFix) {
  Result<PolicyPtr> policy = Policy::Parse(WithBudgets(GetParam().budgets));
  ASSERT_FALSE(policy.ok());
  EXPECT_EQ(policy.status().reason(), "policy_invalid");
  EXPECT_EQ(policy.status().message(), GetParam().message);
}

INSTANTIATE_TEST_SUITE_P(
    Table, BadBudgetTest,
    testing::Values(
        BadBudget{"NotList", R"({"operation": "encrypt"})",
                  "/rules/0/budgets: expected a list of budgets, such as [{\"operation\": "
                  "\"encrypt\", \"vectors\": 100000, \"per\": \"24h\"}]"},
        BadBudget{"EmptyList", "[]",
                  "/rules/0/budgets: empty list; give at least one budget or remove \"budgets\""},
        BadBudget{"NotObject", "[100]",
                  "/rules/0/budgets/0: expected a budget object with \"operation\", \"vectors\" "
                  "and \"per\""},
        BadBudget{"UnknownField",
                  R"([{"operation": "encrypt", "vectors": 1, "per": "1h", "burst": 2}])",
                  "/rules/0/budgets/0/burst: unknown field; a budget has only \"operation\", "
                  "\"vectors\", \"per\" and \"per_caller\""},
        BadBudget{"MissingPer", R"([{"operation": "encrypt", "vectors": 1}])",
                  "/rules/0/budgets/0/per: missing; every budget needs \"per\""},
        BadBudget{"NotGranted", R"([{"operation": "decrypt", "vectors": 1, "per": "1h"}])",
                  "/rules/0/budgets/0/operation: the rule does not grant decrypt; add it to "
                  "\"operations\" or remove this budget"},
        BadBudget{"NotAVectorOperation",
                  R"([{"operation": "keys.list", "vectors": 1, "per": "1h"}])",
                  "/rules/0/budgets/0/operation: a budget counts vectors, so only encrypt, "
                  "decrypt and rewrap take one"},
        BadBudget{"UnknownOperation", R"([{"operation": "sign", "vectors": 1, "per": "1h"}])",
                  "/rules/0/budgets/0/operation: expected \"encrypt\", \"decrypt\" or \"rewrap\""},
        BadBudget{"Zero", R"([{"operation": "encrypt", "vectors": 0, "per": "1h"}])",
                  "/rules/0/budgets/0/vectors: a budget of 0 vectors refuses every request; "
                  "remove encrypt from \"operations\" instead"},
        BadBudget{"Negative", R"([{"operation": "encrypt", "vectors": -5, "per": "1h"}])",
                  "/rules/0/budgets/0/vectors: -5 is not a number of vectors; use 1 to "
                  "9223372036854775807"},
        BadBudget{"Fraction", R"([{"operation": "encrypt", "vectors": 2.5, "per": "1h"}])",
                  "/rules/0/budgets/0/vectors: expected an integer number of vectors, 1 to "
                  "9223372036854775807"},
        BadBudget{"Over2To63",
                  R"([{"operation": "encrypt", "vectors": 9223372036854775808, "per": "1h"}])",
                  "/rules/0/budgets/0/vectors: 9223372036854775808 is not a number of vectors; "
                  "use 1 to 9223372036854775807"},
        BadBudget{"Over2To64",
                  R"([{"operation": "encrypt", "vectors": 18446744073709551616, "per": "1h"}])",
                  "/rules/0/budgets/0/vectors: expected an integer number of vectors, 1 to "
                  "9223372036854775807"},
        BadBudget{"ZeroWindow", R"([{"operation": "encrypt", "vectors": 1, "per": "0s"}])",
                  "/rules/0/budgets/0/per: a window of 0 s counts nothing; use 1s to 366d"},
        BadBudget{"UnknownUnit", R"([{"operation": "encrypt", "vectors": 1, "per": "2w"}])",
                  "/rules/0/budgets/0/per: unknown unit 'w' in '2w'; use s, m, h or d (\"7d\" "
                  "for a week)"},
        BadBudget{"HundredYears", R"([{"operation": "encrypt", "vectors": 1, "per": "36500d"}])",
                  "/rules/0/budgets/0/per: '36500d' is longer than 366d; spends are counted "
                  "again from the audit log at start, which must reach back a whole window"},
        BadBudget{"WindowNumber", R"([{"operation": "encrypt", "vectors": 1, "per": 3600}])",
                  "/rules/0/budgets/0/per: expected a window such as \"24h\""},
        BadBudget{"NoNumber", R"([{"operation": "encrypt", "vectors": 1, "per": "h"}])",
                  "/rules/0/budgets/0/per: invalid window 'h'; write a number and a unit, s, m, "
                  "h or d (\"24h\")"},
        BadBudget{"PerCallerUser",
                  R"([{"operation": "encrypt", "vectors": 1, "per": "1h", "per_caller": "user"}])",
                  "/rules/0/budgets/0/per_caller: expected \"uid\" or \"unit\"; leave it out to "
                  "share the budget among every caller of the rule"},
        BadBudget{"Twice",
                  R"([{"operation": "encrypt", "vectors": 1, "per": "1h"},
                      {"operation": "encrypt", "vectors": 2, "per": "60m"}])",
                  "/rules/0/budgets/1: a second budget for encrypt per 1h counted alike; keep "
                  "one"}),
    [](const testing::TestParamInfo<BadBudget>& param) { return param.param.name; });

TEST(BudgetParseTest, AcceptedBudgetsAreDecidedWithTheirRule) {
  Result<PolicyPtr> policy = Policy::Parse(WithBudgets(
      R"([{"operation": "encrypt", "vectors": 100000, "per": "24h", "per_caller": "uid"},
          {"operation": "encrypt", "vectors": 9223372036854775807, "per": "366d"},
          {"operation": "decrypt", "vectors": 10, "per": "1s"}])",
      R"(["encrypt", "decrypt"])"));
  ASSERT_TRUE(policy.ok()) << policy.status().ToString();
  CallerIdentity caller;
  caller.uid = 1;
  const Decision encrypt = (*policy)->Decide(caller, Operation::kEncrypt, "k-1");
  ASSERT_TRUE(encrypt.granted);
  ASSERT_EQ(encrypt.budgets.size(), 2u);
  EXPECT_EQ(DescribeBudget(*encrypt.budgets[0]),
            "encrypt at most 100000 vectors per 1d, for each key and each uid");
  EXPECT_EQ(encrypt.budgets[1]->window_seconds, 366u * 86400);
  const Decision decrypt = (*policy)->Decide(caller, Operation::kDecrypt, "k-1");
  ASSERT_EQ(decrypt.budgets.size(), 1u);
  EXPECT_EQ(decrypt.budgets[0]->vectors, 10u);
  EXPECT_EQ((*policy)->longest_window_seconds(), 366u * 86400);
  const nlohmann::json grants = (*policy)->GrantsFor(caller);
  EXPECT_EQ(grants[0]["budgets"][0],
            (nlohmann::json{{"operation", "encrypt"}, {"vectors", 100000}, {"per", "1d"},
                            {"per_caller", "uid"}}));
}

Budget Make(uint64_t vectors, uint64_t window_seconds,
            Budget::PerCaller per_caller = Budget::PerCaller::kNone) {
  return Budget{Operation::kEncrypt, vectors, window_seconds, per_caller};
}

constexpr BudgetSpender kAlice{"r", "k-1", 1000, "a.service"};

TEST(BudgetLedgerTest, TheWindowSlidesAndARequestOverTheEdgeIsRefusedWhole) {
  const Budget budget = Make(100, 3600);
  const Budget* budgets[] = {&budget};
  BudgetLedger ledger;
  const Clock::time_point t0 = Clock::time_point() + hours(1000);
  BudgetLedger::Reservation first;
  EXPECT_FALSE(ledger.Reserve(budgets, kAlice, 60, t0, &first));
  BudgetLedger::Reservation second;
  EXPECT_FALSE(ledger.Reserve(budgets, kAlice, 30, t0 + seconds(1800), &second));
  BudgetLedger::Reservation refused;
  const auto refusal = ledger.Reserve(budgets, kAlice, 11, t0 + seconds(1801), &refused);
  ASSERT_TRUE(refusal);
  EXPECT_EQ(refusal->spent, 90u) << "nothing of the refused request was taken";
  EXPECT_TRUE(refused.parts.empty());
  // Room opens when the first 60 leave the window: an hour (and at most a slot) after them.
  ASSERT_TRUE(refusal->room_in);
  EXPECT_GE(*refusal->room_in, seconds(1799));
  EXPECT_LE(*refusal->room_in, seconds(1799 + 4));
  EXPECT_FALSE(ledger.Reserve(budgets, kAlice, 10, t0 + seconds(1802), &refused))
      << "exactly up to the limit";
  EXPECT_EQ(ledger.Spent(budget, kAlice, t0 + seconds(1803)).spent, 100u);
  EXPECT_EQ(ledger.Spent(budget, kAlice, t0 + seconds(3600 + 4)).spent, 40u)
      << "a sliding window: the first spend left, the later ones stay";
  EXPECT_EQ(ledger.Spent(budget, kAlice, t0 + seconds(5400 + 8)).spent, 0u);
}

TEST(BudgetLedgerTest, ARequestLargerThanTheBudgetNeverFits) {
  const Budget budget = Make(10, 60);
  const Budget* budgets[] = {&budget};
  BudgetLedger ledger;
  BudgetLedger::Reservation reservation;
  const auto refusal = ledger.Reserve(budgets, kAlice, 11, Clock::time_point(), &reservation);
  ASSERT_TRUE(refusal);
  EXPECT_FALSE(refusal->room_in);
}

TEST(BudgetLedgerTest, ReleaseGivesBackAndLeavesNoCounterForNamesThatFailed) {
  const Budget budget = Make(10, 60);
  const Budget* budgets[] = {&budget};
  BudgetLedger ledger;
  const Clock::time_point now = Clock::time_point() + hours(1);
  BudgetLedger::Reservation reservation;
  ASSERT_FALSE(ledger.Reserve(budgets, kAlice, 10, now, &reservation));
  ledger.Release(reservation);
  EXPECT_EQ(ledger.Spent(budget, kAlice, now).spent, 0u);
  EXPECT_TRUE(ledger.Counters("r", budget, now).empty());
}

TEST(BudgetLedgerTest, CountersAreSeparatePerKeyAndPerCallerWhenAsked) {
  const Budget shared = Make(10, 60);
  const Budget per_uid = Make(10, 60, Budget::PerCaller::kUid);
  const Budget per_unit = Make(10, 60, Budget::PerCaller::kUnit);
  BudgetLedger ledger;
  const Clock::time_point now = Clock::time_point() + hours(1);
  const BudgetSpender bob{"r", "k-1", 1001, "a.service"};
  const BudgetSpender alice_other_key{"r", "k-2", 1000, "a.service"};
  for (const Budget* budget : {&shared, &per_uid, &per_unit}) {
    const Budget* budgets[] = {budget};
    BudgetLedger::Reservation reservation;
    ASSERT_FALSE(ledger.Reserve(budgets, kAlice, 10, now, &reservation));
    EXPECT_FALSE(ledger.Reserve(budgets, alice_other_key, 10, now, &reservation))
        << "another key has its own count";
    const bool bob_refused = ledger.Reserve(budgets, bob, 1, now, &reservation).has_value();
    EXPECT_EQ(bob_refused, budget != &per_uid) << DescribeBudget(*budget);
  }
  EXPECT_EQ(ledger.Counters("r", per_uid, now).size(), 3u);
  EXPECT_EQ(ledger.Counters("r", per_uid, now)[0].caller, "uid:1000");
}

TEST(BudgetLedgerTest, AllBudgetsOfARuleMustHaveRoomAndNoneIsTakenOtherwise) {
  const Budget hourly = Make(10, 3600);
  const Budget daily = Make(15, 86400);
  const Budget* budgets[] = {&hourly, &daily};
  BudgetLedger ledger;
  const Clock::time_point t0 = Clock::time_point() + hours(100);
  BudgetLedger::Reservation reservation;
  ASSERT_FALSE(ledger.Reserve(budgets, kAlice, 10, t0, &reservation));
  const auto refusal = ledger.Reserve(budgets, kAlice, 10, t0 + hours(2), &reservation);
  ASSERT_TRUE(refusal);
  EXPECT_EQ(refusal->budget, &daily);
  EXPECT_EQ(ledger.Spent(hourly, kAlice, t0 + hours(2)).spent, 0u);
}

// Many threads at the edge of a budget: exactly the budget is handed out, never one more.
TEST(BudgetLedgerTest, RacingReservationsNeverExceedTheBudget) {
  const Budget budget = Make(1000, 3600);
  const Budget* budgets[] = {&budget};
  BudgetLedger ledger;
  std::atomic<uint64_t> granted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 500; ++i) {
        BudgetLedger::Reservation reservation;
        const uint64_t amount = 1 + static_cast<uint64_t>((t + i) % 3);
        if (!ledger.Reserve(budgets, kAlice, amount, Clock::now(), &reservation)) {
          granted += amount;
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_LE(granted.load(), 1000u);
  EXPECT_GE(granted.load(), 998u) << "refusals only at the very edge";
  EXPECT_EQ(ledger.Spent(budget, kAlice, Clock::now()).spent, granted.load());
}

TEST(BudgetLedgerTest, RebuiltSpendsCountAndAnUnknownStartFailsClosed) {
  const Budget budget = Make(10, 3600);
  const Budget* budgets[] = {&budget};
  BudgetLedger ledger;
  const Clock::time_point now = Clock::time_point() + hours(10);
  ledger.Add(budget, kAlice, 8, now - seconds(600));
  BudgetLedger::Reservation reservation;
  EXPECT_TRUE(ledger.Reserve(budgets, kAlice, 3, now, &reservation));
  std::optional<Clock::duration> lasts;
  EXPECT_EQ(ledger.Unavailable("r", budget, now, &lasts), "");
  ledger.SetKnownSince(now - seconds(60));
  EXPECT_NE(ledger.Unavailable("r", budget, now, &lasts), "");
  ASSERT_TRUE(lasts);
  EXPECT_EQ(*lasts, seconds(3540));
  EXPECT_EQ(ledger.Unavailable("r", budget, now + seconds(3540), &lasts), "");
  ledger.SetBroken("unreadable");
  EXPECT_EQ(ledger.Unavailable("r", budget, now + hours(100), &lasts), "unreadable");
  EXPECT_FALSE(lasts);
}

}  // namespace
}  // namespace vecseal::policy
