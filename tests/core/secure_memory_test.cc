// SecureBuffer as the kernel sees it: the mapping's VmFlags in /proc/self/smaps say whether it is
// locked (`lo`) and excluded from core dumps (`dd`), and an munmap interposed in this binary
// sees the pages at the moment they are given back, so it can tell whether they were wiped.
// A binary of its own, because the interposed munmap applies to the whole process.
#include <dlfcn.h>
#include <linux/capability.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>
#include <string>
#include <utility>

#include <gtest/gtest.h>

#include "vecseal/core/secure_memory.h"

namespace {

using MunmapFunction = int (*)(void*, size_t);

// The mapping whose release the interposer inspects, and what it found.
std::atomic<void*> g_watched{nullptr};
std::atomic<int> g_watched_unmaps{0};
std::atomic<bool> g_watched_all_zero{false};

// The munmap this one stands in front of: a sanitizer's interceptor or libc's.
MunmapFunction NextMunmap() {
  static std::atomic<MunmapFunction> next{nullptr};
  thread_local bool resolving = false;
  MunmapFunction function = next.load(std::memory_order_acquire);
  if (function == nullptr && !resolving) {
    resolving = true;
    void* symbol = dlsym(RTLD_NEXT, "munmap");
    resolving = false;
    std::memcpy(&function, &symbol, sizeof(function));
    next.store(function, std::memory_order_release);
  }
  return function;
}

}  // namespace

// core is a static library, so SecureBuffer's munmap binds to this definition.
extern "C" int munmap(void* address, size_t length) noexcept {
  if (address != nullptr && address == g_watched.load()) {
    const auto* bytes = static_cast<const uint8_t*>(address);
    g_watched_all_zero = std::all_of(bytes, bytes + length, [](uint8_t b) { return b == 0; });
    g_watched_unmaps.fetch_add(1);
  }
  const MunmapFunction next = NextMunmap();
  if (next != nullptr) return next(address, length);
  return static_cast<int>(syscall(SYS_munmap, address, length));
}

namespace vecseal::core {
namespace {

// Sanitizer runtimes replace mlock with a no-op that reports success, so there is nothing locked
// to observe.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kMlockIsANoOp = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
constexpr bool kMlockIsANoOp = true;
#else
constexpr bool kMlockIsANoOp = false;
#endif
#else
constexpr bool kMlockIsANoOp = false;
#endif
constexpr const char* kMlockIsANoOpReason =
    "this is a sanitizer build, whose runtime replaces mlock with a no-op that returns 0";

void Watch(void* address) {
  g_watched_unmaps = 0;
  g_watched_all_zero = false;
  g_watched = address;
}

// The VmFlags of the mapping in /proc/self/smaps that contains [address, address + size), or
// an empty set when there is none. Adjacent mappings with equal flags may have been merged, so
// containment rather than an exact start is what identifies it.
std::set<std::string> VmFlagsOf(const void* address, size_t size) {
  const auto begin = reinterpret_cast<uintptr_t>(address);
  std::ifstream smaps("/proc/self/smaps");
  bool inside = false;
  for (std::string line; std::getline(smaps, line);) {
    uintptr_t start = 0, end = 0;
    char dash = 0;
    std::istringstream header(line);
    if (header >> std::hex >> start >> dash >> end && dash == '-') {
      inside = start <= begin && begin + size <= end;
      continue;
    }
    if (inside && line.rfind("VmFlags:", 0) == 0) {
      std::istringstream words(line.substr(8));
      std::set<std::string> flags;
      for (std::string word; words >> word;) flags.insert(word);
      return flags;
    }
  }
  return {};
}

std::string Describe(const std::set<std::string>& flags) {
  std::string text;
  for (const auto& flag : flags) text += flag + " ";
  return text;
}

std::string MemlockLimit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_MEMLOCK, &limit) != 0) return "unknown";
  const auto text = [](rlim_t value) {
    return value == RLIM_INFINITY ? std::string("unlimited") : std::to_string(value);
  };
  return "soft " + text(limit.rlim_cur) + ", hard " + text(limit.rlim_max) + " bytes";
}

TEST(SecureBufferTest, MappingIsLockedAndExcludedFromCoreDumps) {
  const size_t unlocked_before = UnlockedSecureBufferCount();
  auto buffer = SecureBuffer::Allocate(100);
  ASSERT_TRUE(buffer.ok()) << buffer.status().ToString();
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(buffer->data()) % page, 0u);
  const std::set<std::string> flags = VmFlagsOf(buffer->data(), buffer->size());
  ASSERT_FALSE(flags.empty()) << "no mapping in /proc/self/smaps holds the buffer";
  EXPECT_TRUE(flags.contains("dd")) << "VmFlags: " << Describe(flags);
  if (kMlockIsANoOp) GTEST_SKIP() << "dd checked; lo cannot be: " << kMlockIsANoOpReason;
  if (buffer->locked()) {
    EXPECT_TRUE(flags.contains("lo")) << "VmFlags: " << Describe(flags);
    EXPECT_EQ(UnlockedSecureBufferCount(), unlocked_before);
  } else {
    std::cout << "mlock was refused (RLIMIT_MEMLOCK " << MemlockLimit()
              << "); checking that the buffer says so\n";
    EXPECT_FALSE(flags.contains("lo")) << "VmFlags: " << Describe(flags);
    EXPECT_EQ(UnlockedSecureBufferCount(), unlocked_before + 1);
  }
}

// Drops CAP_IPC_LOCK from the effective set, which lets root lock past RLIMIT_MEMLOCK.
bool DropIpcLock() {
  __user_cap_header_struct header{.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
  __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {};
  if (syscall(SYS_capget, &header, data) != 0) return false;
  data[CAP_IPC_LOCK / 32].effective &= ~(1u << (CAP_IPC_LOCK % 32));
  return syscall(SYS_capset, &header, data) == 0;
}

// Exit codes of the child below, so that a failure says which check failed.
enum RefusedLockExit {
  kRefusedLockOk = 0,
  kCannotLimit = 10,
  kAllocateFailed,
  kClaimsLocked,
  kNotCounted,
  kFlagsWrong,
};

int AllocateUnderZeroMemlock() {
  const rlimit none{0, 0};
  if (!DropIpcLock() || setrlimit(RLIMIT_MEMLOCK, &none) != 0) return kCannotLimit;
  const size_t before = UnlockedSecureBufferCount();
  auto buffer = SecureBuffer::Allocate(64);
  if (!buffer.ok()) return kAllocateFailed;
  if (buffer->locked()) return kClaimsLocked;
  if (UnlockedSecureBufferCount() != before + 1) return kNotCounted;
  const std::set<std::string> flags = VmFlagsOf(buffer->data(), buffer->size());
  if (!flags.contains("dd") || flags.contains("lo")) return kFlagsWrong;
  return kRefusedLockOk;
}

// The refused path, forced: the buffer still works, still is not dumpable, and is counted.
TEST(SecureBufferTest, RefusedLockIsReportedAndCounted) {
  if (kMlockIsANoOp) GTEST_SKIP() << "mlock cannot be refused: " << kMlockIsANoOpReason;
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(std::exit(AllocateUnderZeroMemlock()), ::testing::ExitedWithCode(kRefusedLockOk),
              "")
      << "exit codes: 10 cannot drop CAP_IPC_LOCK or lower RLIMIT_MEMLOCK, 11 allocation "
         "failed, 12 locked() is true, 13 not counted, 14 VmFlags wrong (want dd, not lo)";
}

// A control for the detector: pages nobody wiped are seen as not wiped.
TEST(SecureBufferTest, InterposedMunmapSeesUnwipedPages) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  void* pages = mmap(nullptr, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(pages, MAP_FAILED);
  std::memset(pages, 0xA5, 16);
  Watch(pages);
  ASSERT_EQ(munmap(pages, page), 0);
  g_watched = nullptr;
  EXPECT_EQ(g_watched_unmaps.load(), 1);
  EXPECT_FALSE(g_watched_all_zero.load());
}

TEST(SecureBufferTest, PagesAreWipedBeforeTheyAreUnmapped) {
  {
    auto allocated = SecureBuffer::Allocate(5000);  // two pages on 4 KiB systems
    ASSERT_TRUE(allocated.ok()) << allocated.status().ToString();
    std::memset(allocated->data(), 0xA5, allocated->size());
    void* pages = allocated->data();
    Watch(pages);
    {
      // Ownership moves twice; only the last owner gives the pages back, once.
      SecureBuffer moved = std::move(*allocated);
      SecureBuffer owner;
      owner = std::move(moved);
      EXPECT_EQ(owner.data(), pages);
      EXPECT_EQ(g_watched_unmaps.load(), 0);
    }
    EXPECT_EQ(g_watched_unmaps.load(), 1);
    EXPECT_TRUE(g_watched_all_zero.load()) << "the secret bytes were still there at munmap";
  }
  // The moved-from buffer, destroyed just now, gave back nothing.
  g_watched = nullptr;
  EXPECT_EQ(g_watched_unmaps.load(), 1);
}

// Assigning over a buffer that holds secrets wipes them before its pages go.
TEST(SecureBufferTest, MoveAssignmentWipesTheOverwrittenBuffer) {
  auto first = SecureBuffer::Allocate(32);
  auto second = SecureBuffer::Allocate(32);
  ASSERT_TRUE(first.ok() && second.ok());
  std::memset(first->data(), 0x5A, first->size());
  void* first_pages = first->data();
  Watch(first_pages);
  *first = std::move(*second);
  g_watched = nullptr;
  EXPECT_EQ(g_watched_unmaps.load(), 1);
  EXPECT_TRUE(g_watched_all_zero.load()) << "the overwritten secret was still there at munmap";
  EXPECT_NE(first->data(), first_pages);
}

}  // namespace
}  // namespace vecseal::core
