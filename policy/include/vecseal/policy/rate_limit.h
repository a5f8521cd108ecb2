// Per-uid budgets for what a caller can make the daemon spend (hashing, derivations): a token
// bucket per uid that holds up to `capacity` units and refills at `per_second`.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <mutex>
#include <unordered_map>

namespace vecseal::policy {

class UidRateLimiter {
 public:
  // At most `max_uids` buckets are kept; past that all are dropped, and each starts full again,
  // so that many uids cannot grow the map (each uid is a real account on the host).
  UidRateLimiter(double capacity, double per_second, size_t max_uids = 4096);

  // Takes `amount` when the bucket holds it.
  bool TryTake(uid_t uid, double amount);
  // For costs known only afterwards: true while the bucket is not empty; Charge then takes the
  // measured cost, which may leave it below zero until it refills.
  bool HasCredit(uid_t uid);
  void Charge(uid_t uid, double amount);
  // Seconds until the bucket is no longer empty (0 when it is not).
  double SecondsUntilCredit(uid_t uid);
  // New limits for every bucket, e.g. after a SIGHUP; levels are kept.
  void Configure(double capacity, double per_second);

 private:
  struct Bucket {
    double level = 0;
    std::chrono::steady_clock::time_point refilled;
  };
  Bucket& RefilledLocked(uid_t uid);

  std::mutex mutex_;
  double capacity_;
  double per_second_;
  const size_t max_uids_;
  std::unordered_map<uid_t, Bucket> buckets_;
};

}  // namespace vecseal::policy
