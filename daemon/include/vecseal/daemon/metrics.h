// Counters for GET /metrics in the Prometheus text format. Label values are key names that
// exist on the token and fixed operation/outcome words, never caller input, so that a client
// cannot grow the label set; each reader sees only the key names it may list.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace vecseal::daemon {

class Metrics {
 public:
  // `key` is empty when the request named no key or a key that does not exist.
  void CountRequest(const std::string& key, const std::string& operation,
                    const std::string& outcome, std::chrono::duration<double> duration);
  void CountVectors(const std::string& key, const std::string& operation, uint64_t vectors);
  void CountHsmError() { hsm_errors_.fetch_add(1, std::memory_order_relaxed); }
  void CountAuditError() { audit_errors_.fetch_add(1, std::memory_order_relaxed); }
  // Read at render time: the server's live connections, and the connections and requests it
  // held back for their uid's refusals.
  struct ConnectionCounts {
    size_t open = 0;
    uint64_t delayed_for_denials = 0;
  };
  void SetConnectionsSource(std::function<ConnectionCounts()> source);
  // Read at render time: (Cryptoki function, calls so far) for vecseal_hsm_calls_total.
  using HsmCalls = std::vector<std::pair<std::string, uint64_t>>;
  void SetHsmCallsSource(std::function<HsmCalls()> source);
  // Read at render time: the identity resolver's hashing of callers' executables and scripts.
  struct DigestCounts {
    uint64_t files_hashed = 0;
    uint64_t rate_limited = 0;
  };
  void SetDigestCountsSource(std::function<DigestCounts()> source);
  // Read at render time: what each rule's budget has spent on each key (all callers together).
  struct BudgetGauge {
    std::string rule;
    std::string operation;
    std::string window;
    std::string key;
    uint64_t spent = 0;
    uint64_t limit = 0;
  };
  void SetBudgetsSource(std::function<std::vector<BudgetGauge>()> source);

  // Every series. Key names the reader may not see (`may_see_key` false) are not shown: their
  // series are added into those of the empty key, so that totals stay right and a caller without
  // keys.list learns neither which keys exist nor how much each is used (issue #17 row 12).
  // Budget series, which also name rules, are left out for those keys altogether.
  std::string RenderPrometheus(const std::function<bool(const std::string&)>& may_see_key) const;

  // Upper bounds, in seconds, of the request-duration histogram buckets (then +Inf).
  static constexpr std::array<double, 12> kBuckets = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                      0.05,   0.1,   0.25,   0.5,   1.0,  5.0};

 private:
  struct Histogram {
    std::array<uint64_t, kBuckets.size() + 1> buckets{};  // not cumulative; the last is +Inf
    double sum = 0;
    uint64_t count = 0;
  };

  mutable std::mutex mutex_;
  std::map<std::tuple<std::string, std::string, std::string>, uint64_t> requests_;
  std::map<std::tuple<std::string, std::string>, uint64_t> vectors_;
  // By operation only: a histogram per key would multiply 14 series by every key on the token.
  std::map<std::string, Histogram> durations_;
  std::atomic<uint64_t> hsm_errors_{0};
  std::atomic<uint64_t> audit_errors_{0};
  std::function<ConnectionCounts()> connections_;
  std::function<HsmCalls()> hsm_calls_;
  std::function<DigestCounts()> digest_counts_;
  std::function<std::vector<BudgetGauge>()> budgets_;
};

}  // namespace vecseal::daemon
