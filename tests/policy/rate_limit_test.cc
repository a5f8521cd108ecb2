// policy::UidRateLimiter, the token bucket behind the per-uid budgets of hashing, derivation time
// and refusals. Refills are checked only from below (a sleep lasts at least as long as asked).
#include "vecseal/policy/rate_limit.h"

#include <chrono>
#include <thread>

#include <gtest/gtest.h>

namespace vecseal::policy {
namespace {

TEST(UidRateLimiterTest, AFullBucketGivesItsCapacityThenRefusesUntilItRefills) {
  UidRateLimiter limiter(10, 100);  // 10 units, refilled at 100 a second
  EXPECT_TRUE(limiter.TryTake(1000, 10));
  EXPECT_FALSE(limiter.TryTake(1000, 1)) << "empty: nothing refilled in the meantime";
  EXPECT_TRUE(limiter.TryTake(1001, 10)) << "another uid has its own bucket";
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_TRUE(limiter.TryTake(1000, 4)) << "50 ms at 100 a second refill 5 units";
}

TEST(UidRateLimiterTest, AChargeCanOverdrawAndTheWaitIsTheDebtOverTheRate) {
  UidRateLimiter limiter(2, 10);
  EXPECT_TRUE(limiter.HasCredit(7));
  EXPECT_EQ(limiter.SecondsUntilCredit(7), 0);
  limiter.Charge(7, 5);  // level 2 - 5 = -3: 0.3 s at 10 a second
  EXPECT_FALSE(limiter.HasCredit(7));
  const double wait = limiter.SecondsUntilCredit(7);
  EXPECT_GT(wait, 0.25);
  EXPECT_LE(wait, 0.3);
  EXPECT_TRUE(limiter.HasCredit(8));
}

TEST(UidRateLimiterTest, ConfigureKeepsLevelsButNotAboveTheNewCapacity) {
  UidRateLimiter limiter(100, 0.001);
  ASSERT_TRUE(limiter.TryTake(1, 40));  // 60 left
  limiter.Configure(50, 0.001);
  EXPECT_FALSE(limiter.TryTake(1, 51)) << "capped at the new capacity";
  EXPECT_TRUE(limiter.TryTake(1, 50));
  limiter.Charge(2, 60);  // a new uid starts full (50), then owes 10
  limiter.Configure(1000, 0.001);
  EXPECT_FALSE(limiter.HasCredit(2)) << "a debt survives a reload";
}

TEST(UidRateLimiterTest, PastMaxUidsEveryBucketStartsFullAgain) {
  UidRateLimiter limiter(1, 0.001, /*max_uids=*/2);
  ASSERT_TRUE(limiter.TryTake(1, 1));
  ASSERT_TRUE(limiter.TryTake(2, 1));
  EXPECT_FALSE(limiter.TryTake(1, 1));
  ASSERT_TRUE(limiter.TryTake(3, 1));  // a third uid: the map is cleared, not grown
  EXPECT_TRUE(limiter.TryTake(1, 1));
}

}  // namespace
}  // namespace vecseal::policy
