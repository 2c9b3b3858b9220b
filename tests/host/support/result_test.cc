// Result<T>, TRY / TRY_ASSIGN, Defer and the small freestanding helpers.
#include "dmakit/support/result.h"

#include <gtest/gtest.h>

#include <type_traits>

#include "dmakit/support/addr.h"
#include "dmakit/support/bitops.h"
#include "dmakit/support/defer.h"
#include "dmakit/support/spinlock.h"
#include "support/intrusive_list.h"

namespace {

Result<int> half(int x) {
  if (x % 2 != 0) return ErrorCode::kInvalidArgument;
  return x / 2;
}

Result<int> quarter(int x) {
  TRY_ASSIGN(int h, half(x));
  TRY_ASSIGN(int q, half(h));
  return q;
}

Result<void> check_even(int x) {
  TRY(half(x));
  return support::ok();
}

TEST(Result, ValueAndError) {
  auto a = half(8);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(*a, 4);
  auto b = half(3);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.code(), ErrorCode::kInvalidArgument);
  EXPECT_TRUE(b.error() == ErrorCode::kInvalidArgument);
}

TEST(Result, TryPropagates) {
  EXPECT_EQ(*quarter(8), 2);
  EXPECT_EQ(quarter(6).code(), ErrorCode::kInvalidArgument);
  EXPECT_TRUE(check_even(2).ok());
  EXPECT_EQ(check_even(1).code(), ErrorCode::kInvalidArgument);
}

TEST(Result, ErrorCarriesAddressAndMask) {
  Result<int> r = Error(ErrorCode::kDmaMaskNotMatch, 0x1234, 0xFFF);
  EXPECT_EQ(r.error().addr, 0x1234u);
  EXPECT_EQ(r.error().mask, 0xFFFu);
  EXPECT_STREQ(error_code_name(r.code()), "dma mask not match");
}

TEST(Result, EveryCodeHasAName) {
  for (int c = 0; c <= static_cast<int>(ErrorCode::kNotSupported); ++c) {
    EXPECT_STRNE(error_code_name(static_cast<ErrorCode>(c)), "unknown");
  }
}

TEST(Result, ValueOfAnErrorPanics) {
  EXPECT_DEATH(
      {
        auto r = half(3);
        (void)r.value();
      },
      "value\\(\\) of an error Result");
}

TEST(Bitops, PowersAndAlignment) {
  EXPECT_TRUE(support::is_pow2(4096));
  EXPECT_FALSE(support::is_pow2(0));
  EXPECT_FALSE(support::is_pow2(24));
  EXPECT_EQ(support::log2_floor(4097), 12u);
  EXPECT_EQ(support::log2_ceil(4097), 13u);
  EXPECT_EQ(support::log2_ceil(1), 0u);
  EXPECT_EQ(support::align_up(4097, 4096), 8192u);
  EXPECT_EQ(support::align_down(4097, 4096), 4096u);
  EXPECT_TRUE(support::add_overflows(~0ull, 1));
  EXPECT_FALSE(support::add_overflows(~0ull, 0));
}

TEST(Addr, TypesDoNotMixButDoArithmetic) {
  PhysAddr p(0x1000);
  EXPECT_EQ((p + 0x10).value(), 0x1010u);
  EXPECT_EQ(PhysAddr(0x2000) - p, 0x1000u);
  EXPECT_LT(p, PhysAddr(0x1001));
  PhysRange r{p, 0x100};
  EXPECT_EQ(r.end().value(), 0x1100u);
  static_assert(!std::is_convertible_v<PhysAddr, DmaAddr>);
  static_assert(!std::is_convertible_v<uint64_t, PhysAddr>);
}

TEST(Defer, RunsUnlessCancelled) {
  int runs = 0;
  {
    auto d = support::defer([&] { ++runs; });
  }
  EXPECT_EQ(runs, 1);
  {
    auto d = support::defer([&] { ++runs; });
    d.cancel();
  }
  EXPECT_EQ(runs, 1);
}

struct Item {
  int v;
  support::ListNode node;
};

TEST(IntrusiveList, PushRemovePop) {
  support::IntrusiveList<Item, &Item::node> list;
  Item a{1, {}}, b{2, {}}, c{3, {}};
  list.push_back(&a);
  list.push_back(&b);
  list.push_front(&c);
  EXPECT_EQ(list.size(), 3u);
  EXPECT_EQ(list.front()->v, 3);
  list.remove(&a);
  int sum = 0;
  list.for_each([&](Item* i) { sum += i->v; });
  EXPECT_EQ(sum, 5);
  EXPECT_EQ(list.pop_front()->v, 3);
  EXPECT_EQ(list.pop_front()->v, 2);
  EXPECT_TRUE(list.empty());
  EXPECT_EQ(list.pop_front(), nullptr);
}

// Outside the analysis on purpose: probes a lock the caller may hold.
bool lock_is_free(support::SpinLock& l) TA_NO_THREAD_SAFETY_ANALYSIS {
  bool got = l.try_lock();
  if (got) l.unlock();
  return got;
}

TEST(SpinLock, GuardLocksAndUnlocks) {
  support::SpinLock l;
  {
    support::Guard<support::SpinLock> g{&l};
    EXPECT_TRUE(l.is_locked());
    EXPECT_FALSE(lock_is_free(l));
  }
  EXPECT_FALSE(l.is_locked());
  EXPECT_TRUE(lock_is_free(l));
}

}  // namespace
