// What callers have spent of the policy's vector budgets (docs/policy.md, Budgets): a sliding
// window per rule, operation, key and caller, on the monotonic clock, exact under concurrency.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "vecseal/policy/policy.h"

namespace vecseal::policy {

// Who spends: each budget of the rule picks its counter from these (docs/policy.md, Budgets).
struct BudgetSpender {
  std::string_view rule_id;
  std::string_view key;
  int64_t uid = -1;
  std::string_view unit;  // empty when the caller runs in no unit
};

// The caller part of a counter: "uid:1000", "unit:x.service", "unit:" (in no unit), or ""
// for a budget shared by every caller of the rule.
std::string BudgetCaller(Budget::PerCaller per_caller, int64_t uid, std::string_view unit);

// One counter that holds something.
struct BudgetCounter {
  std::string key;
  std::string caller;  // as BudgetCaller
  uint64_t spent = 0;
};

class BudgetLedger {
 public:
  using Clock = std::chrono::steady_clock;

  // What a refused request is told.
  struct Refusal {
    const Budget* budget = nullptr;
    uint64_t spent = 0;
    // How long until the window holds room for the request; nullopt when it never will (the
    // request alone is larger than the budget).
    std::optional<Clock::duration> room_in;
  };
  // The spends of one admitted request, to return if it fails before any vector left.
  struct Reservation {
    struct Part {
      std::string counter;
      int64_t slot = 0;
    };
    std::vector<Part> parts;
    uint64_t amount = 0;
  };
  struct Usage {
    uint64_t spent = 0;
    Clock::duration room_in{};  // until at least one vector fits again (zero when it does)
  };

  // Takes `amount` from every budget in `budgets`, or from none: the first budget without room
  // is the refusal. Holds one lock, so racing requests never overspend. With a null
  // `reservation` it only checks.
  std::optional<Refusal> Reserve(std::span<const Budget* const> budgets,
                                 const BudgetSpender& spender, uint64_t amount,
                                 Clock::time_point now, Reservation* reservation);
  // Gives back what Reserve took, for a request that ended without encrypting or decrypting.
  void Release(const Reservation& reservation);
  // A spend found in the audit log at start or reload, at the monotonic time it happened.
  void Add(const Budget& budget, const BudgetSpender& spender, uint64_t amount,
           Clock::time_point when);
  // What the window of `budget` holds now for this spender, without creating anything.
  Usage Spent(const Budget& budget, const BudgetSpender& spender, Clock::time_point now);
  // Every counter of `budget` under `rule_id` that holds anything, by key and caller.
  std::vector<BudgetCounter> Counters(std::string_view rule_id, const Budget& budget,
                                      Clock::time_point now);
  // Replaces every counter of `budgets` with those of `from` (a ledger filled from the log).
  void Adopt(BudgetLedger& from, std::span<const RuleBudget> budgets);

  // Spends before `since` are not known (a pruned log): a budget whose window reaches back
  // before it is unavailable until it no longer does.
  void SetKnownSince(std::optional<Clock::time_point> since);
  // The spends could not be read at all: every budget is unavailable, with this reason.
  void SetBroken(std::string reason);
  // These budgets are being counted from the log (a reload added them): unavailable until
  // Adopt brings their counts.
  void SetCounting(std::span<const RuleBudget> budgets);
  // Empty when `budget` of `rule_id` can be decided at `now`; else why not, and how long that
  // lasts (nullopt: until a restart).
  std::string Unavailable(std::string_view rule_id, const Budget& budget, Clock::time_point now,
                          std::optional<Clock::duration>* lasts);

 private:
  struct Counter {
    std::deque<std::pair<int64_t, uint64_t>> slots;  // (slot index, vectors), oldest first
    uint64_t total = 0;
  };
  // Spends land in slots of window/1024 (at least 1 ms); a spend counts from its slot's start
  // until a whole window after its slot's end, so a window never holds more than the budget.
  static int64_t SlotNanos(const Budget& budget);
  static std::string CounterId(const Budget& budget, const BudgetSpender& spender);
  static void CounterIdInto(std::string& id, const Budget& budget, const BudgetSpender& spender);
  void ExpireLocked(Counter& counter, const Budget& budget, Clock::time_point now);
  // Time until `needed` fits under `budget`'s limit, nullopt if never.
  std::optional<Clock::duration> RoomInLocked(const Counter& counter, const Budget& budget,
                                              uint64_t needed, Clock::time_point now) const;
  void AddLocked(const std::string& id, int64_t slot, uint64_t amount);

  std::mutex mutex_;
  std::unordered_map<std::string, Counter> counters_;
  std::optional<Clock::time_point> known_since_;
  std::string broken_;
  std::vector<std::string> counting_;  // counter id prefixes
  std::string scratch_;
};

}  // namespace vecseal::policy
