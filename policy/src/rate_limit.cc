#include "vecseal/policy/rate_limit.h"

#include <algorithm>

namespace vecseal::policy {

UidRateLimiter::UidRateLimiter(double capacity, double per_second, size_t max_uids)
    : capacity_(capacity), per_second_(per_second), max_uids_(max_uids) {}

UidRateLimiter::Bucket& UidRateLimiter::RefilledLocked(uid_t uid) {
  const auto now = std::chrono::steady_clock::now();
  auto found = buckets_.find(uid);
  if (found == buckets_.end()) {
    if (buckets_.size() >= max_uids_) buckets_.clear();
    found = buckets_.emplace(uid, Bucket{capacity_, now}).first;
  }
  Bucket& bucket = found->second;
  const double elapsed = std::chrono::duration<double>(now - bucket.refilled).count();
  bucket.level = std::min(capacity_, bucket.level + elapsed * per_second_);
  bucket.refilled = now;
  return bucket;
}

bool UidRateLimiter::TryTake(uid_t uid, double amount) {
  std::lock_guard lock(mutex_);
  Bucket& bucket = RefilledLocked(uid);
  if (bucket.level < amount) return false;
  bucket.level -= amount;
  return true;
}

bool UidRateLimiter::HasCredit(uid_t uid) {
  std::lock_guard lock(mutex_);
  return RefilledLocked(uid).level > 0;
}

void UidRateLimiter::Charge(uid_t uid, double amount) {
  std::lock_guard lock(mutex_);
  RefilledLocked(uid).level -= amount;
}

double UidRateLimiter::SecondsUntilCredit(uid_t uid) {
  std::lock_guard lock(mutex_);
  const Bucket& bucket = RefilledLocked(uid);
  if (bucket.level > 0) return 0;
  return per_second_ > 0 ? -bucket.level / per_second_ : 0;
}

void UidRateLimiter::Configure(double capacity, double per_second) {
  std::lock_guard lock(mutex_);
  capacity_ = capacity;
  per_second_ = per_second;
  for (auto& [uid, bucket] : buckets_) bucket.level = std::min(bucket.level, capacity_);
}

}  // namespace vecseal::policy
