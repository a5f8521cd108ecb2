#include "vecseal/policy/budget.h"

#include <algorithm>
#include <charconv>
#include <tuple>

namespace vecseal::policy {
namespace {

using std::chrono::nanoseconds;

int64_t Nanos(BudgetLedger::Clock::time_point t) {
  return std::chrono::duration_cast<nanoseconds>(t.time_since_epoch()).count();
}

int64_t WindowNanos(const Budget& budget) {
  return static_cast<int64_t>(budget.window_seconds) * 1'000'000'000;
}

// Floor division: monotonic times rebuilt from the log may lie before boot, below zero.
int64_t FloorDiv(int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }

void AppendPrefix(std::string& id, std::string_view rule_id, const Budget& budget) {
  id += rule_id;
  id += '\0';
  id += OperationName(budget.operation);
  id += '\0';
  char digits[24];
  const auto [end, ec] = std::to_chars(digits, digits + sizeof digits, budget.window_seconds);
  id.append(digits, end);
  id += '\0';
  id += PerCallerName(budget.per_caller);
  id += '\0';
}

std::string Prefix(std::string_view rule_id, const Budget& budget) {
  std::string id;
  AppendPrefix(id, rule_id, budget);
  return id;
}

}  // namespace

std::string BudgetCaller(Budget::PerCaller per_caller, int64_t uid, std::string_view unit) {
  switch (per_caller) {
    case Budget::PerCaller::kNone: return "";
    case Budget::PerCaller::kUid: return "uid:" + std::to_string(uid);
    case Budget::PerCaller::kUnit: return "unit:" + std::string(unit);
  }
  return "";
}

int64_t BudgetLedger::SlotNanos(const Budget& budget) {
  return std::max<int64_t>(1'000'000, WindowNanos(budget) / 1024);
}

std::string BudgetLedger::CounterId(const Budget& budget, const BudgetSpender& spender) {
  std::string id;
  CounterIdInto(id, budget, spender);
  return id;
}

void BudgetLedger::CounterIdInto(std::string& id, const Budget& budget,
                                 const BudgetSpender& spender) {
  id.clear();
  AppendPrefix(id, spender.rule_id, budget);
  id += spender.key;
  id += '\0';
  switch (budget.per_caller) {
    case Budget::PerCaller::kNone: break;
    case Budget::PerCaller::kUid: {
      char digits[24];
      const auto [end, ec] = std::to_chars(digits, digits + sizeof digits, spender.uid);
      id += "uid:";
      id.append(digits, end);
      break;
    }
    case Budget::PerCaller::kUnit:
      id += "unit:";
      id += spender.unit;
      break;
  }
}

void BudgetLedger::ExpireLocked(Counter& counter, const Budget& budget, Clock::time_point now) {
  const int64_t slot_nanos = SlotNanos(budget);
  const int64_t now_nanos = Nanos(now);
  while (!counter.slots.empty() &&
         (counter.slots.front().first + 1) * slot_nanos + WindowNanos(budget) <= now_nanos) {
    counter.total -= counter.slots.front().second;
    counter.slots.pop_front();
  }
}

std::optional<BudgetLedger::Clock::duration> BudgetLedger::RoomInLocked(
    const Counter& counter, const Budget& budget, uint64_t needed, Clock::time_point now) const {
  if (needed > budget.vectors) return std::nullopt;
  uint64_t left = counter.total;
  if (left <= budget.vectors - needed) return Clock::duration::zero();
  for (const auto& [slot, amount] : counter.slots) {
    left -= amount;
    if (left <= budget.vectors - needed) {
      const int64_t expiry = (slot + 1) * SlotNanos(budget) + WindowNanos(budget);
      return std::chrono::duration_cast<Clock::duration>(nanoseconds(expiry - Nanos(now)));
    }
  }
  return Clock::duration::zero();
}

void BudgetLedger::AddLocked(const std::string& id, int64_t slot, uint64_t amount) {
  auto found = counters_.find(id);
  if (found == counters_.end()) found = counters_.emplace(id, Counter{}).first;
  Counter& counter = found->second;
  counter.total += amount;
  if (!counter.slots.empty() && counter.slots.back().first == slot) {
    counter.slots.back().second += amount;
    return;
  }
  if (counter.slots.empty() || counter.slots.back().first < slot) {
    counter.slots.emplace_back(slot, amount);
    return;
  }
  // Rebuilt spends arrive in log order, which a clock step may have shuffled.
  auto at = std::lower_bound(counter.slots.begin(), counter.slots.end(), slot,
                             [](const auto& entry, int64_t s) { return entry.first < s; });
  if (at != counter.slots.end() && at->first == slot) {
    at->second += amount;
  } else {
    counter.slots.insert(at, {slot, amount});
  }
}

std::optional<BudgetLedger::Refusal> BudgetLedger::Reserve(std::span<const Budget* const> budgets,
                                                           const BudgetSpender& spender,
                                                           uint64_t amount, Clock::time_point now,
                                                           Reservation* reservation) {
  std::lock_guard lock(mutex_);
  std::vector<std::string> ids;
  ids.reserve(budgets.size());
  for (const Budget* budget : budgets) {
    ids.push_back(CounterId(*budget, spender));
    auto found = counters_.find(ids.back());
    if (found == counters_.end()) {
      if (amount <= budget->vectors) continue;
      return Refusal{budget, 0, std::nullopt};
    }
    ExpireLocked(found->second, *budget, now);
    if (found->second.total <= budget->vectors && amount <= budget->vectors - found->second.total) {
      continue;
    }
    return Refusal{budget, found->second.total, RoomInLocked(found->second, *budget, amount, now)};
  }
  if (reservation == nullptr) return std::nullopt;
  reservation->amount = amount;
  for (size_t i = 0; i < budgets.size(); ++i) {
    const int64_t slot = FloorDiv(Nanos(now), SlotNanos(*budgets[i]));
    AddLocked(ids[i], slot, amount);
    reservation->parts.push_back({std::move(ids[i]), slot});
  }
  return std::nullopt;
}

void BudgetLedger::Release(const Reservation& reservation) {
  std::lock_guard lock(mutex_);
  for (const Reservation::Part& part : reservation.parts) {
    auto found = counters_.find(part.counter);
    if (found == counters_.end()) continue;
    Counter& counter = found->second;
    for (auto& [slot, amount] : counter.slots) {
      if (slot != part.slot) continue;
      const uint64_t back = std::min(amount, reservation.amount);
      amount -= back;
      counter.total -= back;
      break;
    }
    std::erase_if(counter.slots, [](const auto& entry) { return entry.second == 0; });
    // Counters exist only for spends that happened, so names that were refused leave nothing.
    if (counter.total == 0) counters_.erase(found);
  }
}

void BudgetLedger::Add(const Budget& budget, const BudgetSpender& spender, uint64_t amount,
                       Clock::time_point when) {
  std::lock_guard lock(mutex_);
  CounterIdInto(scratch_, budget, spender);  // reused: a rebuild adds millions
  AddLocked(scratch_, FloorDiv(Nanos(when), SlotNanos(budget)), amount);
}

BudgetLedger::Usage BudgetLedger::Spent(const Budget& budget, const BudgetSpender& spender,
                                        Clock::time_point now) {
  std::lock_guard lock(mutex_);
  auto found = counters_.find(CounterId(budget, spender));
  if (found == counters_.end()) return Usage{};
  ExpireLocked(found->second, budget, now);
  const uint64_t needed = std::min<uint64_t>(1, budget.vectors);
  return Usage{found->second.total,
               RoomInLocked(found->second, budget, needed, now).value_or(Clock::duration::zero())};
}

std::vector<BudgetCounter> BudgetLedger::Counters(std::string_view rule_id, const Budget& budget,
                                                  Clock::time_point now) {
  const std::string prefix = Prefix(rule_id, budget);
  std::vector<BudgetCounter> out;
  std::lock_guard lock(mutex_);
  for (auto& [id, counter] : counters_) {
    if (!id.starts_with(prefix)) continue;
    ExpireLocked(counter, budget, now);
    if (counter.total == 0) continue;
    const size_t separator = id.find('\0', prefix.size());
    out.push_back(BudgetCounter{id.substr(prefix.size(), separator - prefix.size()),
                                id.substr(separator + 1), counter.total});
  }
  std::sort(out.begin(), out.end(), [](const BudgetCounter& a, const BudgetCounter& b) {
    return std::tie(a.key, a.caller) < std::tie(b.key, b.caller);
  });
  return out;
}

void BudgetLedger::Adopt(BudgetLedger& from, std::span<const RuleBudget> budgets) {
  std::scoped_lock lock(mutex_, from.mutex_);
  for (const RuleBudget& entry : budgets) {
    const std::string prefix = Prefix(entry.rule_id, entry.budget);
    std::erase(counting_, prefix);
    std::erase_if(counters_, [&](const auto& item) { return item.first.starts_with(prefix); });
    for (auto& [id, counter] : from.counters_) {
      if (id.starts_with(prefix)) counters_[id] = std::move(counter);
    }
  }
  known_since_ = from.known_since_ ? std::max(known_since_.value_or(*from.known_since_),
                                              *from.known_since_)
                                   : known_since_;
  if (broken_.empty()) broken_ = from.broken_;
}

void BudgetLedger::SetKnownSince(std::optional<Clock::time_point> since) {
  std::lock_guard lock(mutex_);
  known_since_ = since;
}

void BudgetLedger::SetBroken(std::string reason) {
  std::lock_guard lock(mutex_);
  broken_ = std::move(reason);
}

void BudgetLedger::SetCounting(std::span<const RuleBudget> budgets) {
  std::lock_guard lock(mutex_);
  for (const RuleBudget& entry : budgets) counting_.push_back(Prefix(entry.rule_id, entry.budget));
}

std::string BudgetLedger::Unavailable(std::string_view rule_id, const Budget& budget,
                                      Clock::time_point now,
                                      std::optional<Clock::duration>* lasts) {
  std::lock_guard lock(mutex_);
  if (!broken_.empty()) {
    *lasts = std::nullopt;
    return broken_;
  }
  if (!counting_.empty() &&
      std::find(counting_.begin(), counting_.end(), Prefix(rule_id, budget)) != counting_.end()) {
    *lasts = std::chrono::seconds(1);
    return "a reload added this budget and its spends are being counted from the audit log";
  }
  if (!known_since_) return "";
  const Clock::time_point window_start = now - std::chrono::seconds(budget.window_seconds);
  if (window_start >= *known_since_) return "";
  *lasts = *known_since_ - window_start;
  return "the audit log no longer holds the start of this budget's window (older files were "
         "removed or are missing), so what was spent in it is unknown";
}

}  // namespace vecseal::policy
