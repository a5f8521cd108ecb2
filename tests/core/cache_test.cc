// The per-dimension transform cache: bounded (least recently used out first) and derived once
// per dimension even when many threads ask for it at the same time.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "test_util.h"
#include "vecseal/core/cipher.h"

namespace vecseal::core {
namespace {

using testing::CountingNonces;

// A real SoftwareDeriver that counts transform derivations. When `hold_transforms` is set, a
// transform derivation waits (up to 300 ms) for a second one to arrive, so that a cache letting
// two threads derive the same dimension is caught instead of depending on luck.
class CountingDeriver final : public Deriver {
 public:
  explicit CountingDeriver(bool hold_transforms) : hold_transforms_(hold_transforms) {
    std::vector<uint8_t> key(32, 0x11);
    inner_ = testing::KeyedDeriver(key);
  }

  Status Derive(std::span<const std::span<const uint8_t>> messages, std::span<Seed> out) override {
    for (const auto& message : messages) {
      const std::string_view text(reinterpret_cast<const char*>(message.data()), message.size());
      if (text.starts_with(kDomainTransform)) OnTransform();
    }
    return inner_->Derive(messages, out);
  }

  int transforms() const { return transforms_.load(); }

 private:
  void OnTransform() {
    std::unique_lock lock(mutex_);
    ++transforms_;
    changed_.notify_all();
    if (hold_transforms_) {
      changed_.wait_for(lock, std::chrono::milliseconds(300), [&] { return transforms_ > 1; });
    }
  }

  const bool hold_transforms_;
  std::shared_ptr<Deriver> inner_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::atomic<int> transforms_{0};
};

Status EncryptOnes(const Cipher& cipher, size_t d) {
  CountingNonces nonces;
  std::vector<float> m(2 * d, 0.5f), c(2 * d);
  return cipher.Encrypt(m, c, d, EncryptOptions{false, 1, &nonces}, {});
}

TEST(TransformCache, KeepsAtMostTheBoundAndEvictsTheLeastRecentlyUsed) {
  auto deriver = std::make_shared<CountingDeriver>(false);
  auto cipher = Cipher::Create(deriver, SchemeParams{1.0, TransformKind::kPermute, 1});
  ASSERT_TRUE(cipher.ok());
  const Cipher& c = **cipher;
  // Dimensions 1..bound fill the cache; touching 1 again makes 2 the least recently used.
  for (size_t d = 1; d <= kMaxCachedTransforms; ++d) ASSERT_TRUE(EncryptOnes(c, d).ok());
  ASSERT_TRUE(EncryptOnes(c, 1).ok());
  EXPECT_EQ(deriver->transforms(), static_cast<int>(kMaxCachedTransforms));

  ASSERT_TRUE(EncryptOnes(c, kMaxCachedTransforms + 1).ok());  // evicts 2
  ASSERT_TRUE(EncryptOnes(c, 1).ok());                         // still cached
  EXPECT_EQ(deriver->transforms(), static_cast<int>(kMaxCachedTransforms) + 1);
  ASSERT_TRUE(EncryptOnes(c, 2).ok());  // derived again
  EXPECT_EQ(deriver->transforms(), static_cast<int>(kMaxCachedTransforms) + 2);
}

TEST(TransformCache, ReDerivedTransformEqualsTheEvictedOne) {
  auto cipher = testing::MakeCipher(TransformKind::kRotate, 1.0);
  const size_t d = 5;
  std::vector<float> m(3 * d), before(m.size()), after(m.size());
  for (size_t i = 0; i < m.size(); ++i) m[i] = static_cast<float>(i % 7) - 3.0f;
  ASSERT_TRUE(cipher->ApplyTransform(m, before, d).ok());
  for (size_t other = 6; other < 6 + kMaxCachedTransforms; ++other) {
    ASSERT_TRUE(EncryptOnes(*cipher, other).ok());
  }
  ASSERT_TRUE(cipher->ApplyTransform(m, after, d).ok());
  EXPECT_EQ(before, after);
}

TEST(TransformCache, ConcurrentFirstUsersShareOneDerivation) {
  auto deriver = std::make_shared<CountingDeriver>(true);
  auto cipher = Cipher::Create(deriver, SchemeParams{1.0, TransformKind::kRotate, 1});
  ASSERT_TRUE(cipher.ok());
  constexpr int kThreads = 4;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      if (!EncryptOnes(**cipher, 32).ok()) ++failures;
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(deriver->transforms(), 1);
}

// A failed derivation is not cached: the next call derives again and succeeds.
class FlakyDeriver final : public Deriver {
 public:
  Status Derive(std::span<const std::span<const uint8_t>> messages, std::span<Seed> out) override {
    if (fail_next_.exchange(false)) {
      for (auto& seed : out) seed.fill(0);
      return Status(Code::kUnavailable, "hsm_unavailable", "the token is not present");
    }
    return inner_->Derive(messages, out);
  }

 private:
  std::shared_ptr<Deriver> inner_ = testing::KeyedDeriver(std::vector<uint8_t>(32, 0x22));
  std::atomic<bool> fail_next_{true};
};

TEST(TransformCache, FailedDerivationIsRetried) {
  auto cipher = Cipher::Create(std::make_shared<FlakyDeriver>(),
                               SchemeParams{1.0, TransformKind::kPermute, 1});
  ASSERT_TRUE(cipher.ok());
  EXPECT_EQ(EncryptOnes(**cipher, 8).reason(), "hsm_unavailable");
  EXPECT_TRUE(EncryptOnes(**cipher, 8).ok());
}

}  // namespace
}  // namespace vecseal::core
