// BufferPool: recycles large body buffers within its bound, and only where they fit.
#include <gtest/gtest.h>

#include "vecseal/daemon/http_body.h"

namespace vecseal::daemon {
namespace {

constexpr size_t kMegabyte = 1 << 20;

TEST(BufferPoolTest, ALargeBufferIsRecycledForARequestItFits) {
  BufferPool pool(8 * kMegabyte);
  ByteBuffer first = pool.Take(3 * kMegabyte);
  const std::byte* storage = first.data();
  pool.Give(std::move(first));
  EXPECT_EQ(pool.retained_bytes(), 3 * kMegabyte);

  ByteBuffer second = pool.Take(3 * kMegabyte - 100);
  EXPECT_EQ(second.data(), storage) << "the given buffer was not reused";
  EXPECT_EQ(second.size(), 3 * kMegabyte - 100);
  EXPECT_EQ(pool.retained_bytes(), 0u);
}

TEST(BufferPoolTest, AMovedFromBufferIsEmptyAndIsNotRetained) {
  BufferPool pool(8 * kMegabyte);
  ByteBuffer original = pool.Take(kMegabyte);
  ByteBuffer taken = std::move(original);
  EXPECT_EQ(original.data(), nullptr);  // NOLINT(bugprone-use-after-move): the contract
  EXPECT_EQ(original.size(), 0u);
  EXPECT_EQ(original.capacity(), 0u);
  pool.Give(std::move(original));
  EXPECT_EQ(pool.retained_bytes(), 0u);
  pool.Give(std::move(taken));
  EXPECT_EQ(pool.retained_bytes(), kMegabyte);
}

TEST(BufferPoolTest, BuffersThatDoNotFitAreNotHandedOut) {
  BufferPool pool(16 * kMegabyte);
  ByteBuffer large = pool.Take(8 * kMegabyte);
  const std::byte* storage = large.data();
  pool.Give(std::move(large));
  // Too small for the request, and more than twice what a small request needs.
  ByteBuffer bigger = pool.Take(9 * kMegabyte);
  EXPECT_NE(bigger.data(), storage);
  ByteBuffer smaller = pool.Take(kMegabyte);
  EXPECT_NE(smaller.data(), storage);
  EXPECT_EQ(pool.retained_bytes(), 8 * kMegabyte);
}

TEST(BufferPoolTest, RetainsNoMoreThanItsBoundAndNoSmallBuffers) {
  BufferPool pool(5 * kMegabyte);
  pool.Give(pool.Take(2 * kMegabyte));
  pool.Give(pool.Take(2 * kMegabyte));  // the same buffer again
  ByteBuffer a = pool.Take(2 * kMegabyte);
  ByteBuffer b = pool.Take(2 * kMegabyte);
  ByteBuffer c = pool.Take(2 * kMegabyte);
  pool.Give(std::move(a));
  pool.Give(std::move(b));
  pool.Give(std::move(c));  // would exceed 5 MiB: freed instead
  EXPECT_EQ(pool.retained_bytes(), 4 * kMegabyte);
  pool.Give(pool.Take(BufferPool::kMinBytes - 100));
  EXPECT_EQ(pool.retained_bytes(), 4 * kMegabyte);
}

}  // namespace
}  // namespace vecseal::daemon
