#include "vecseal/daemon/metrics.h"

#include <sstream>

namespace vecseal::daemon {

void Metrics::CountRequest(const std::string& key, const std::string& operation,
                           const std::string& outcome, std::chrono::duration<double> duration) {
  std::lock_guard lock(mutex_);
  ++requests_[{key, operation, outcome}];
  size_t bucket = 0;
  while (bucket < kBuckets.size() && duration.count() > kBuckets[bucket]) ++bucket;
  Histogram& histogram = durations_[operation];
  ++histogram.buckets[bucket];
  histogram.sum += duration.count();
  ++histogram.count;
}

void Metrics::CountVectors(const std::string& key, const std::string& operation,
                           uint64_t vectors) {
  std::lock_guard lock(mutex_);
  vectors_[{key, operation}] += vectors;
}

void Metrics::SetConnectionsSource(std::function<ConnectionCounts()> source) {
  std::lock_guard lock(mutex_);
  connections_ = std::move(source);
}

void Metrics::SetHsmCallsSource(std::function<HsmCalls()> source) {
  std::lock_guard lock(mutex_);
  hsm_calls_ = std::move(source);
}

void Metrics::SetDigestCountsSource(std::function<DigestCounts()> source) {
  std::lock_guard lock(mutex_);
  digest_counts_ = std::move(source);
}

void Metrics::SetBudgetsSource(std::function<std::vector<BudgetGauge>()> source) {
  std::lock_guard lock(mutex_);
  budgets_ = std::move(source);
}

std::string Metrics::RenderPrometheus(
    const std::function<bool(const std::string&)>& may_see_key) const {
  std::ostringstream out;
  std::lock_guard lock(mutex_);
  const auto shown = [&](const std::string& key) { return may_see_key(key) ? key : std::string(); };
  std::map<std::tuple<std::string, std::string, std::string>, uint64_t> requests;
  for (const auto& [labels, count] : requests_) {
    const auto& [key, operation, outcome] = labels;
    requests[{shown(key), operation, outcome}] += count;
  }
  std::map<std::tuple<std::string, std::string>, uint64_t> vectors;
  for (const auto& [labels, count] : vectors_) {
    const auto& [key, operation] = labels;
    vectors[{shown(key), operation}] += count;
  }
  out << "# HELP vecseal_requests_total Requests answered, by key, operation and outcome.\n"
         "# TYPE vecseal_requests_total counter\n";
  for (const auto& [labels, count] : requests) {
    const auto& [key, operation, outcome] = labels;
    out << "vecseal_requests_total{key=\"" << key << "\",operation=\"" << operation
        << "\",outcome=\"" << outcome << "\"} " << count << '\n';
  }
  out << "# HELP vecseal_vectors_total Vectors encrypted or decrypted.\n"
         "# TYPE vecseal_vectors_total counter\n";
  for (const auto& [labels, count] : vectors) {
    const auto& [key, operation] = labels;
    out << "vecseal_vectors_total{key=\"" << key << "\",operation=\"" << operation << "\"} "
        << count << '\n';
  }
  out << "# HELP vecseal_request_duration_seconds Time from a complete request to its response, "
         "by operation.\n"
         "# TYPE vecseal_request_duration_seconds histogram\n";
  for (const auto& [operation, histogram] : durations_) {
    const std::string label = "operation=\"" + operation + "\"";
    uint64_t cumulative = 0;
    for (size_t i = 0; i < kBuckets.size(); ++i) {
      cumulative += histogram.buckets[i];
      out << "vecseal_request_duration_seconds_bucket{" << label << ",le=\"" << kBuckets[i]
          << "\"} " << cumulative << '\n';
    }
    cumulative += histogram.buckets.back();
    out << "vecseal_request_duration_seconds_bucket{" << label << ",le=\"+Inf\"} " << cumulative
        << '\n'
        << "vecseal_request_duration_seconds_sum{" << label << "} " << histogram.sum << '\n'
        << "vecseal_request_duration_seconds_count{" << label << "} " << histogram.count << '\n';
  }
  const ConnectionCounts connections = connections_ ? connections_() : ConnectionCounts{};
  out << "# HELP vecseal_hsm_errors_total HSM operations that failed.\n"
         "# TYPE vecseal_hsm_errors_total counter\n"
      << "vecseal_hsm_errors_total " << hsm_errors_.load() << '\n'
      << "# HELP vecseal_audit_errors_total Audit records that could not be written.\n"
         "# TYPE vecseal_audit_errors_total counter\n"
      << "vecseal_audit_errors_total " << audit_errors_.load() << '\n'
      << "# HELP vecseal_connections Open client connections.\n"
         "# TYPE vecseal_connections gauge\n"
      << "vecseal_connections " << connections.open << '\n'
      << "# HELP vecseal_delayed_for_denials_total Connections and requests held back because "
         "their uid had spent limits.denied_requests_per_minute_per_uid.\n"
         "# TYPE vecseal_delayed_for_denials_total counter\n"
      << "vecseal_delayed_for_denials_total " << connections.delayed_for_denials << '\n'
      << "# HELP vecseal_hsm_calls_total Cryptoki calls made, by function (those that cost the "
         "HSM work or a round trip).\n"
         "# TYPE vecseal_hsm_calls_total counter\n";
  if (hsm_calls_) {
    for (const auto& [function, count] : hsm_calls_()) {
      out << "vecseal_hsm_calls_total{function=\"" << function << "\"} " << count << '\n';
    }
  }
  const DigestCounts digests = digest_counts_ ? digest_counts_() : DigestCounts{};
  out << "# HELP vecseal_digest_files_hashed_total Callers' executables and scripts hashed "
         "(digest-cache misses a policy rule needed).\n"
         "# TYPE vecseal_digest_files_hashed_total counter\n"
      << "vecseal_digest_files_hashed_total " << digests.files_hashed << '\n'
      << "# HELP vecseal_digests_rate_limited_total Digests left unknown because the caller's uid "
         "had spent its hashing budget.\n"
         "# TYPE vecseal_digests_rate_limited_total counter\n"
      << "vecseal_digests_rate_limited_total " << digests.rate_limited << '\n';
  out << "# HELP vecseal_budget_spent_vectors Vectors spent in the current window of a rule's "
         "budget, by key (every caller together).\n"
         "# TYPE vecseal_budget_spent_vectors gauge\n";
  const std::vector<BudgetGauge> budgets = budgets_ ? budgets_() : std::vector<BudgetGauge>();
  const auto labels = [](const BudgetGauge& gauge) {
    return "{rule=\"" + gauge.rule + "\",operation=\"" + gauge.operation + "\",per=\"" +
           gauge.window + "\",key=\"" + gauge.key + "\"}";
  };
  for (const BudgetGauge& gauge : budgets) {
    if (may_see_key(gauge.key)) out << "vecseal_budget_spent_vectors" << labels(gauge) << ' ' << gauge.spent << '\n';
  }
  out << "# HELP vecseal_budget_limit_vectors The budget those vectors are spent from (for each "
         "caller, when the budget is per caller).\n"
         "# TYPE vecseal_budget_limit_vectors gauge\n";
  for (const BudgetGauge& gauge : budgets) {
    if (may_see_key(gauge.key)) out << "vecseal_budget_limit_vectors" << labels(gauge) << ' ' << gauge.limit << '\n';
  }
  return out.str();
}

}  // namespace vecseal::daemon
