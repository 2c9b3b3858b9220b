// Host tests of BouncePool: a private pool over a host buffer that pretends to sit at a physical
// address, with its metadata from metadata_size().
#include "dmakit/bounce_pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <iterator>
#include <map>
#include <memory>
#include <new>
#include <random>
#include <thread>
#include <vector>

#include "tests/host/mm/bounce_test_pool.h"

namespace {

using bounce_test::kBase;
constexpr size_t kSlot = BouncePool::kDefaultSlotSize;
constexpr size_t kKiB = 1024;
constexpr size_t kMiB = 1024 * kKiB;

using bounce_test::TestPool;

// Everything free() and alloc() may change, to check that a failing call changed nothing.
struct Snapshot {
  BouncePool::Stats stats;
  size_t free_blocks;
};

Snapshot snapshot(const BouncePool& p) {
  return Snapshot{p.stats(), p.free_block_count()};
}

void expect_same(const Snapshot& a, const Snapshot& b, uint64_t extra_failures = 0) {
  EXPECT_EQ(a.stats.total_slots, b.stats.total_slots);
  EXPECT_EQ(a.stats.used_slots, b.stats.used_slots);
  EXPECT_EQ(a.stats.high_water_slots, b.stats.high_water_slots);
  EXPECT_EQ(a.stats.allocations, b.stats.allocations);
  EXPECT_EQ(a.stats.failures + extra_failures, b.stats.failures);
  EXPECT_EQ(a.stats.bytes_bounced, b.stats.bytes_bounced);
  EXPECT_EQ(a.stats.cached_slots, b.stats.cached_slots);
  EXPECT_EQ(a.free_blocks, b.free_blocks);
}

// After every allocation was freed: once the cache is drained, the pool is one free block again
// (full coalescing) and nothing is accounted as used or cached.
void expect_all_free(BouncePool& p) {
  p.drain_cache();
  EXPECT_TRUE(p.check_invariants());
  BouncePool::Stats s = p.stats();
  EXPECT_EQ(s.used_slots, 0u);
  EXPECT_EQ(s.cached_slots, 0u);
  EXPECT_EQ(p.free_block_count(), 1u);
}

// The slot's data lies inside its slots, starting in the first one, and inside the pool.
void expect_well_placed(const BouncePool& p, const BounceSlot& s) {
  uint64_t first = p.base().value() + uint64_t{s.first_slot} * p.slot_size();
  EXPECT_GE(s.addr.value(), first);
  EXPECT_LT(s.addr.value(), first + p.slot_size());
  EXPECT_LE(s.addr.value() + s.size, first + uint64_t{s.num_slots} * p.slot_size());
  EXPECT_TRUE(p.contains(s.addr));
  EXPECT_TRUE(p.contains(s.addr + (s.size - 1)));
  // Never more slots than the data needs.
  uint64_t needed = (s.addr.value() - first + s.size + p.slot_size() - 1) / p.slot_size();
  EXPECT_EQ(s.num_slots, needed);
}

BounceSlot must_alloc(BouncePool& p, size_t size, PhysAddr orig = PhysAddr(0), uint64_t mask = 0,
                      size_t align = 0) {
  auto r = p.alloc(size, orig, mask, align);
  EXPECT_TRUE(r.ok()) << "alloc(" << size << ") failed: " << error_code_name(r.code());
  if (!r.ok()) return BounceSlot{};
  return *r;
}

// ---------------------------------------------------------------------------------------------
// init and metadata_size

TEST(BouncePoolInit, MetadataSizeIsTwentyBytesPerSlotPlusASentinel) {
  EXPECT_EQ(BouncePool::metadata_size(1 * kMiB), 513u * 20u);
  EXPECT_EQ(BouncePool::metadata_size(1 * kMiB, 64), 16385u * 20u);
  // Invalid slot sizes: not a power of two, too small, too large.
  EXPECT_EQ(BouncePool::metadata_size(1 * kMiB, 3000), 0u);
  EXPECT_EQ(BouncePool::metadata_size(1 * kMiB, 32), 0u);
  EXPECT_EQ(BouncePool::metadata_size(1 * kMiB, BouncePool::kMaxSlotSize * 2), 0u);
}

TEST(BouncePoolInit, RejectsBadSlotSize) {
  std::vector<uint8_t> mem(64 * kKiB);
  std::vector<uint64_t> meta(4096);
  for (size_t slot : {size_t{0}, size_t{32}, size_t{63}, size_t{96}, size_t{3000},
                      BouncePool::kMaxSlotSize * 2}) {
    BouncePool p;
    EXPECT_EQ(
        p.init(PhysAddr(kBase), mem.size(), mem.data(), meta.data(), meta.size() * 8, slot).code(),
        ErrorCode::kInvalidArgument)
        << slot;
    EXPECT_EQ(p.max_mapping_size(), 0u);
  }
}

TEST(BouncePoolInit, RejectsZeroBytes) {
  std::vector<uint8_t> mem(kSlot);
  std::vector<uint64_t> meta(16);
  BouncePool p;
  EXPECT_EQ(p.init(PhysAddr(kBase), 0, mem.data(), meta.data(), meta.size() * 8).code(),
            ErrorCode::kLayoutError);
}

TEST(BouncePoolInit, RejectsMisalignedRegion) {
  std::vector<uint8_t> mem(64 * kKiB);
  std::vector<uint64_t> meta(4096);
  BouncePool p;
  EXPECT_EQ(
      p.init(PhysAddr(kBase + 1024), mem.size(), mem.data(), meta.data(), meta.size() * 8).code(),
      ErrorCode::kInvalidArgument);
  EXPECT_EQ(
      p.init(PhysAddr(kBase), mem.size() - 64, mem.data(), meta.data(), meta.size() * 8).code(),
      ErrorCode::kInvalidArgument);
  // A region that wraps past the end of the physical address space.
  EXPECT_EQ(
      p.init(PhysAddr(~uint64_t{0} - 2047), 4096, mem.data(), meta.data(), meta.size() * 8).code(),
      ErrorCode::kInvalidArgument);
  // A base that is only aligned to a smaller slot size is fine with that slot size.
  EXPECT_TRUE(
      p.init(PhysAddr(kBase + 1024), mem.size(), mem.data(), meta.data(), meta.size() * 8, 1024)
          .ok());
  EXPECT_TRUE(p.check_invariants());
}

TEST(BouncePoolInit, RejectsNullOrMisalignedPointers) {
  std::vector<uint8_t> mem(64 * kKiB);
  std::vector<uint64_t> meta(4096);
  BouncePool p;
  EXPECT_EQ(p.init(PhysAddr(kBase), mem.size(), nullptr, meta.data(), meta.size() * 8).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(p.init(PhysAddr(kBase), mem.size(), mem.data(), nullptr, meta.size() * 8).code(),
            ErrorCode::kInvalidArgument);
  auto* odd = reinterpret_cast<uint8_t*>(meta.data()) + 1;
  EXPECT_EQ(p.init(PhysAddr(kBase), mem.size(), mem.data(), odd, meta.size() * 8 - 1).code(),
            ErrorCode::kInvalidArgument);
}

TEST(BouncePoolInit, MetadataMustBeLargeEnough) {
  std::vector<uint8_t> mem(64 * kKiB);
  size_t need = BouncePool::metadata_size(mem.size());
  ASSERT_EQ(need, 33u * 20u);
  std::vector<uint64_t> meta((need + 7) / 8);
  {
    BouncePool p;
    EXPECT_EQ(p.init(PhysAddr(kBase), mem.size(), mem.data(), meta.data(), need - 1).code(),
              ErrorCode::kNoMemory);
    EXPECT_EQ(p.alloc(100).code(), ErrorCode::kLayoutError);  // Still uninitialised.
    EXPECT_TRUE(p.init(PhysAddr(kBase), mem.size(), mem.data(), meta.data(), need).ok());
    BounceSlot s = must_alloc(p, mem.size());
    EXPECT_TRUE(p.check_invariants());
    EXPECT_TRUE(p.free(s).ok());
  }
}

TEST(BouncePoolInit, SecondInitFailsAndLeavesThePoolAlone) {
  TestPool t(64 * kKiB);
  BounceSlot s = must_alloc(t.pool, 3000);
  std::vector<uint8_t> mem2(128 * kKiB);
  std::vector<uint64_t> meta2(4096);
  EXPECT_EQ(
      t.pool.init(PhysAddr(0x1000'0000), mem2.size(), mem2.data(), meta2.data(), meta2.size() * 8)
          .code(),
      ErrorCode::kInvalidArgument);
  EXPECT_EQ(t.pool.base(), PhysAddr(kBase));
  EXPECT_EQ(t.pool.bytes(), 64 * kKiB);
  EXPECT_EQ(t.pool.stats().used_slots, 2u);
  EXPECT_TRUE(t.pool.check_invariants());
  EXPECT_TRUE(t.pool.free(s).ok());
}

TEST(BouncePoolInit, RejectsMoreSlotsThanItCanIndex) {
  // init checks the slot count before it touches the metadata, so no real memory is needed.
  uint8_t byte = 0;
  uint64_t meta[4] = {};
  BouncePool p;
  size_t bytes = (BouncePool::kMaxSlots + 1) * 64;
  EXPECT_EQ(p.init(PhysAddr(0), bytes, &byte, meta, sizeof(meta), 64).code(),
            ErrorCode::kInvalidArgument);
  // One slot fewer passes that check and fails on the (too small) metadata instead.
  EXPECT_EQ(p.init(PhysAddr(0), bytes - 64, &byte, meta, sizeof(meta), 64).code(),
            ErrorCode::kNoMemory);
}

TEST(BouncePoolInit, UninitialisedPoolRefusesEverything) {
  BouncePool p;
  EXPECT_EQ(p.alloc(1).code(), ErrorCode::kLayoutError);
  BounceSlot bogus{PhysAddr(kBase), 0, 1, 1};
  EXPECT_EQ(p.free(bogus).code(), ErrorCode::kNotFound);
  EXPECT_EQ(p.max_mapping_size(), 0u);
  EXPECT_EQ(p.bytes(), 0u);
  EXPECT_FALSE(p.contains(PhysAddr(0)));
  EXPECT_EQ(p.free_block_count(), 0u);
  EXPECT_TRUE(p.check_invariants());
  BouncePool::Stats s = p.stats();
  EXPECT_EQ(s.total_slots, 0u);
  EXPECT_EQ(s.used_slots, 0u);
}

// ---------------------------------------------------------------------------------------------
// Accessors and basic allocation

TEST(BouncePool, AccessorsDescribeTheRegion) {
  TestPool t(1 * kMiB);
  BouncePool& p = t.pool;
  EXPECT_EQ(p.base(), PhysAddr(kBase));
  EXPECT_EQ(p.bytes(), 1 * kMiB);
  EXPECT_EQ(p.slot_size(), kSlot);
  EXPECT_EQ(p.max_mapping_size(), BouncePool::kMaxMapping);
  EXPECT_TRUE(p.contains(PhysAddr(kBase)));
  EXPECT_TRUE(p.contains(PhysAddr(kBase + kMiB - 1)));
  EXPECT_FALSE(p.contains(PhysAddr(kBase + kMiB)));
  EXPECT_FALSE(p.contains(PhysAddr(kBase - 1)));
  EXPECT_EQ(p.cpu_addr(PhysAddr(kBase)), t.mem.data());
  EXPECT_EQ(p.cpu_addr(PhysAddr(kBase + 12345)), t.mem.data() + 12345);
  BouncePool::Stats s = p.stats();
  EXPECT_EQ(s.total_slots, 512u);
  EXPECT_EQ(s.used_slots, 0u);
  EXPECT_EQ(s.high_water_slots, 0u);
  EXPECT_EQ(s.allocations, 0u);
  EXPECT_EQ(s.failures, 0u);
  EXPECT_EQ(s.bytes_bounced, 0u);
  EXPECT_EQ(p.free_block_count(), 1u);
  EXPECT_TRUE(p.check_invariants());
}

TEST(BouncePool, AllocTakesWholeSlotsAndFreeGivesThemBack) {
  TestPool t(1 * kMiB);
  BouncePool& p = t.pool;
  const size_t sizes[] = {1, 100, kSlot - 1, kSlot, kSlot + 1, 4 * kKiB, 64 * kKiB - 3};
  std::vector<BounceSlot> slots;
  uint64_t used = 0;
  for (size_t size : sizes) {
    BounceSlot s = must_alloc(p, size);
    expect_well_placed(p, s);
    EXPECT_EQ(s.size, size);
    EXPECT_EQ(s.num_slots, (size + kSlot - 1) / kSlot);
    // No constraint: the data starts at the slot's start.
    EXPECT_EQ((s.addr.value() - kBase) % kSlot, 0u);
    used += s.num_slots;
    slots.push_back(s);
    EXPECT_EQ(p.stats().used_slots, used);
    EXPECT_TRUE(p.check_invariants());
  }
  EXPECT_EQ(p.stats().allocations, std::size(sizes));
  for (const BounceSlot& s : slots) {
    EXPECT_TRUE(p.free(s).ok());
    used -= s.num_slots;
    EXPECT_EQ(p.stats().used_slots, used);
    EXPECT_TRUE(p.check_invariants());
  }
  expect_all_free(p);
}

TEST(BouncePool, NoteBouncedAccumulates) {
  TestPool t(64 * kKiB);
  t.pool.note_bounced(4096);
  t.pool.note_bounced(17);
  EXPECT_EQ(t.pool.stats().bytes_bounced, 4113u);
}

// ---------------------------------------------------------------------------------------------
// Argument errors

TEST(BouncePool, SizeZeroIsALayoutError) {
  TestPool t(64 * kKiB);
  Snapshot before = snapshot(t.pool);
  EXPECT_EQ(t.pool.alloc(0).code(), ErrorCode::kLayoutError);
  expect_same(before, snapshot(t.pool));
}

TEST(BouncePool, AlignMustBeAPowerOfTwo) {
  TestPool t(64 * kKiB);
  Snapshot before = snapshot(t.pool);
  for (size_t align : {size_t{3}, size_t{6}, size_t{100}, size_t{4097}}) {
    EXPECT_EQ(t.pool.alloc(100, PhysAddr(0), 0, align).code(), ErrorCode::kLayoutError) << align;
  }
  expect_same(before, snapshot(t.pool));
  // 0 and 1 both mean "no alignment".
  BounceSlot a = must_alloc(t.pool, 100, PhysAddr(0), 0, 0);
  BounceSlot b = must_alloc(t.pool, 100, PhysAddr(0), 0, 1);
  EXPECT_TRUE(t.pool.free(a).ok());
  EXPECT_TRUE(t.pool.free(b).ok());
}

TEST(BouncePool, MinAlignMaskMustBeLowBits) {
  TestPool t(64 * kKiB);
  Snapshot before = snapshot(t.pool);
  EXPECT_EQ(t.pool.alloc(100, PhysAddr(0x123), 0xF0F).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(t.pool.alloc(100, PhysAddr(0x123), 0x1000).code(), ErrorCode::kLayoutError);
  expect_same(before, snapshot(t.pool));
}

TEST(BouncePool, AlignContradictingPreservedBitsIsALayoutError) {
  TestPool t(1 * kMiB);
  Snapshot before = snapshot(t.pool);
  // The preserved offset 0x100 is not a multiple of 0x200.
  EXPECT_EQ(t.pool.alloc(100, PhysAddr(0x1234'5100), 0xFFF, 0x200).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(t.pool.alloc(100, PhysAddr(0x1234'5008), 0xFFF, 16).code(), ErrorCode::kLayoutError);
  expect_same(before, snapshot(t.pool));
  // Compatible combinations work.
  BounceSlot a = must_alloc(t.pool, 100, PhysAddr(0x1234'5100), 0xFFF, 0x100);
  EXPECT_EQ(a.addr.value() & 0xFFF, 0x100u);
  // An align above the mask: the preserved bits must be zero, and the address 64 KiB-aligned.
  EXPECT_EQ(t.pool.alloc(100, PhysAddr(0x1234'5800), 0xFFF, 0x10000).code(),
            ErrorCode::kLayoutError);
  BounceSlot b = must_alloc(t.pool, 100, PhysAddr(0x1234'5000), 0xFFF, 0x10000);
  EXPECT_EQ(b.addr.value() % 0x10000, 0u);
  EXPECT_TRUE(t.pool.free(a).ok());
  EXPECT_TRUE(t.pool.free(b).ok());
}

TEST(BouncePool, SizeLargerThanThePoolIsALayoutErrorNotNoMemory) {
  TestPool t(256 * kKiB, kSlot, kBase + 64 * kKiB);
  BounceSlot held = must_alloc(t.pool, 1000);
  Snapshot before = snapshot(t.pool);
  EXPECT_EQ(t.pool.alloc(256 * kKiB + 1).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(t.pool.alloc(SIZE_MAX).code(), ErrorCode::kLayoutError);
  // Fits in the pool, but the preserved offset pushes its end past the pool's end.
  EXPECT_EQ(t.pool.alloc(256 * kKiB, PhysAddr(0x10), 0xFFF).code(), ErrorCode::kLayoutError);
  // An alignment no address in the pool meets (the pool starts 64 KiB past a 1 GiB boundary).
  EXPECT_EQ(t.pool.alloc(100, PhysAddr(0), 0, 1 * kMiB * 1024).code(), ErrorCode::kLayoutError);
  expect_same(before, snapshot(t.pool));  // In particular, failures is unchanged.
  // The whole pool fits but not right now: that is kNoMemory.
  EXPECT_EQ(t.pool.alloc(256 * kKiB).code(), ErrorCode::kNoMemory);
  expect_same(before, snapshot(t.pool), 1);
  EXPECT_TRUE(t.pool.free(held).ok());
}

// ---------------------------------------------------------------------------------------------
// Offset preservation and alignment

TEST(BouncePool, MinAlignMaskKeepsTheOffsetForManyOffsetsAndMasks) {
  for (size_t slot : {size_t{64}, size_t{2048}, size_t{4096}}) {
    // A base that is only slot-aligned, so the pool cannot rely on a 16 KiB-aligned base.
    TestPool t(4 * kMiB, slot, kBase + slot);
    BouncePool& p = t.pool;
    std::mt19937_64 rng(slot);
    for (uint64_t mask : {uint64_t{0x7FF}, uint64_t{0xFFF}, uint64_t{0x3FFF}}) {
      std::vector<BounceSlot> live;
      std::vector<uint64_t> offsets = {0, 1, 8, 0x7FF, 0x800, mask - 1, mask};
      for (int i = 0; i < 40; ++i) offsets.push_back(rng() & mask);
      for (uint64_t off : offsets) {
        uint64_t orig = (rng() << 20) ^ 0x40'0000'0000ull;
        orig = (orig & ~mask) | off;
        size_t size = 1 + rng() % (64 * kKiB);
        BounceSlot s = must_alloc(p, size, PhysAddr(orig), mask);
        EXPECT_EQ(s.addr.value() & mask, orig & mask) << "mask " << mask << " off " << off;
        expect_well_placed(p, s);
        live.push_back(s);
        ASSERT_TRUE(p.check_invariants());
      }
      for (const BounceSlot& s : live) ASSERT_TRUE(p.free(s).ok());
      expect_all_free(p);
    }
  }
}

TEST(BouncePool, AlignmentIsHonoured) {
  TestPool t(8 * kMiB, kSlot, kBase + 3 * kSlot);
  BouncePool& p = t.pool;
  std::vector<BounceSlot> live;
  for (size_t align : {size_t{8}, size_t{512}, size_t{4096}, size_t{16 * kKiB}, size_t{64 * kKiB},
                       size_t{256 * kKiB}, size_t{1 * kMiB}}) {
    for (size_t size : {size_t{1}, size_t{3000}, size_t{70000}}) {
      BounceSlot s = must_alloc(p, size, PhysAddr(0x1234), 0, align);
      EXPECT_EQ(s.addr.value() % align, 0u) << "align " << align << " size " << size;
      expect_well_placed(p, s);
      live.push_back(s);
      ASSERT_TRUE(p.check_invariants());
    }
  }
  for (const BounceSlot& s : live) ASSERT_TRUE(p.free(s).ok());
  expect_all_free(p);
}

TEST(BouncePool, AlignmentSlackGoesBackToTheFreeLists) {
  TestPool t(128 * kKiB);  // 64 slots at a 64 KiB-aligned base.
  BouncePool& p = t.pool;
  // Keep offset 0x4000 within 32 KiB: the data must start at slot 8 (mod 16).
  BounceSlot s = must_alloc(p, 100, PhysAddr(0x9000'4000), 0x7FFF);
  EXPECT_EQ(s.first_slot % 16, 8u);
  EXPECT_EQ(s.num_slots, 1u);
  EXPECT_EQ(s.addr, PhysAddr(kBase + s.first_slot * kSlot));
  // One free block in front of the data and one behind it, neither of them empty.
  uint32_t front = s.first_slot;
  uint32_t tail = 64 - s.first_slot - 1;
  ASSERT_GT(front, 0u);
  ASSERT_GT(tail, 0u);
  EXPECT_EQ(p.free_block_count(), 2u);
  EXPECT_EQ(p.stats().used_slots, 1u);
  EXPECT_TRUE(p.check_invariants());
  // Both pieces are usable, whole.
  BounceSlot a = must_alloc(p, front * kSlot);
  BounceSlot b = must_alloc(p, tail * kSlot);
  EXPECT_EQ(std::min(a.first_slot, b.first_slot), 0u);
  EXPECT_EQ(std::max(a.first_slot, b.first_slot), s.first_slot + 1);
  EXPECT_EQ(p.alloc(1).code(), ErrorCode::kNoMemory);
  EXPECT_TRUE(p.free(s).ok());
  EXPECT_TRUE(p.free(a).ok());
  EXPECT_TRUE(p.free(b).ok());
  expect_all_free(p);
}

TEST(BouncePool, ExactFitFallbackHonoursThePhase) {
  TestPool t(128 * kKiB);  // 64 slots at a 64 KiB-aligned base.
  BouncePool& p = t.pool;
  BounceSlot rest = must_alloc(p, 54 * kSlot);  // Leaves one free block: slots 0-9.
  ASSERT_EQ(rest.first_slot, 10u);
  // 8 slots starting at slot 8 (mod 16): good fit wants 8 + 15 slots, the exact-fit check of
  // the 10-slot block finds no start with that phase inside it.
  Snapshot before = snapshot(p);
  EXPECT_EQ(p.alloc(8 * kSlot, PhysAddr(0x4000), 0x7FFF).code(), ErrorCode::kNoMemory);
  expect_same(before, snapshot(p), 1);
  EXPECT_TRUE(p.check_invariants());
  // Phase 2 (mod 16) fits: slots 2-9.
  BounceSlot s = must_alloc(p, 8 * kSlot, PhysAddr(0x1000), 0x7FFF);
  EXPECT_EQ(s.first_slot, 2u);
  EXPECT_EQ(p.free_block_count(), 1u);
  EXPECT_TRUE(p.check_invariants());
  EXPECT_TRUE(p.free(s).ok());
  EXPECT_TRUE(p.free(rest).ok());
  expect_all_free(p);
}

TEST(BouncePool, GoodFitSkipsSmallerBlocksOfTheSameClass) {
  TestPool t(256 * kSlot);  // Cache budget 8 slots: the blocks freed below are not cached.
  BouncePool& p = t.pool;
  BounceSlot x1 = must_alloc(p, 120 * kSlot);  // Slots 136-255.
  BounceSlot x2 = must_alloc(p, 1);            // 135.
  BounceSlot x3 = must_alloc(p, 32 * kSlot);   // 103-134.
  BounceSlot x4 = must_alloc(p, 1);            // 102; slots 0-101 stay free.
  ASSERT_EQ(x3.first_slot, 103u);
  ASSERT_TRUE(p.free(x1).ok());
  ASSERT_TRUE(p.free(x3).ok());
  ASSERT_EQ(p.free_block_count(), 3u);  // 102, 32 and 120 slots.
  // 33 slots share a size class with the 32-slot block, which must not be chosen (and the
  // request must not fail for it).
  BounceSlot s = must_alloc(p, 33 * kSlot);
  EXPECT_TRUE(s.first_slot + 33 <= 102 || s.first_slot >= 136) << s.first_slot;
  EXPECT_TRUE(p.check_invariants());
  EXPECT_EQ(p.stats().failures, 0u);
  for (const BounceSlot& b : {s, x2, x4}) ASSERT_TRUE(p.free(b).ok());
  expect_all_free(p);
}

TEST(BouncePool, FullWidthMaskPinsTheExactAddress) {
  TestPool t(64 * kKiB);
  BouncePool& p = t.pool;
  // Every bit preserved: the slot must be the original address itself, if it lies in the pool.
  BounceSlot s = must_alloc(p, 100, PhysAddr(kBase + 5 * kSlot + 3), ~uint64_t{0});
  EXPECT_EQ(s.addr, PhysAddr(kBase + 5 * kSlot + 3));
  EXPECT_EQ(s.first_slot, 5u);
  EXPECT_TRUE(p.check_invariants());
  EXPECT_EQ(p.alloc(100, PhysAddr(0x1000), ~uint64_t{0}).code(), ErrorCode::kLayoutError);
  EXPECT_TRUE(p.free(s).ok());
}

TEST(BouncePool, OffsetBelowTheSlotSizeNeedsNoExtraSlots) {
  TestPool t(64 * kKiB);
  // With mask 0x7FF and 2 KiB slots the offset fits in the first slot: any slot will do.
  BounceSlot s = must_alloc(t.pool, kSlot, PhysAddr(0x1234'5678), 0x7FF);
  EXPECT_EQ(s.addr.value() & 0x7FF, 0x678u);
  EXPECT_EQ(s.num_slots, 2u);                // 0x678 + 2048 bytes span two slots.
  EXPECT_EQ(t.pool.free_block_count(), 1u);  // No slack was left behind.
  EXPECT_TRUE(t.pool.free(s).ok());
}

// ---------------------------------------------------------------------------------------------
// Large allocations, exhaustion, high-water mark

TEST(BouncePool, MaxMappingAllocationsWork) {
  TestPool t(1 * kMiB);
  BouncePool& p = t.pool;
  std::vector<BounceSlot> live;
  for (int i = 0; i < 4; ++i) {
    BounceSlot s = must_alloc(p, BouncePool::kMaxMapping);
    EXPECT_EQ(s.num_slots, BouncePool::kMaxMapping / kSlot);
    expect_well_placed(p, s);
    live.push_back(s);
  }
  EXPECT_EQ(p.stats().used_slots, 512u);
  EXPECT_EQ(p.alloc(1).code(), ErrorCode::kNoMemory);
  for (const BounceSlot& s : live) ASSERT_TRUE(p.free(s).ok());
  // 256 KiB with a preserved 4 KiB offset: one extra slot.
  BounceSlot s = must_alloc(p, BouncePool::kMaxMapping, PhysAddr(0x7654'3A10), 0xFFF);
  EXPECT_EQ(s.addr.value() & 0xFFF, 0xA10u);
  EXPECT_EQ(s.num_slots, BouncePool::kMaxMapping / kSlot + 1);
  expect_well_placed(p, s);
  EXPECT_TRUE(p.free(s).ok());
  expect_all_free(p);
}

TEST(BouncePool, WholePoolAllocationWhenEmpty) {
  // 101 slots: not a size-class boundary, so only the exact-fit fallback can serve it.
  TestPool t(101 * kSlot);
  BouncePool& p = t.pool;
  EXPECT_EQ(p.max_mapping_size(), 101 * kSlot);
  BounceSlot s = must_alloc(p, p.max_mapping_size());
  EXPECT_EQ(s.first_slot, 0u);
  EXPECT_EQ(s.num_slots, 101u);
  EXPECT_EQ(p.free_block_count(), 0u);
  EXPECT_TRUE(p.check_invariants());
  EXPECT_EQ(p.alloc(1).code(), ErrorCode::kNoMemory);
  EXPECT_TRUE(p.free(s).ok());
  expect_all_free(p);
}

TEST(BouncePool, HugePoolCapsASingleRequestAt4GiB) {
  // 8 GiB of 1 MiB slots: the pool never touches its own memory, so a tiny buffer stands in.
  uint8_t byte = 0;
  size_t bytes = size_t{8} << 30;
  std::vector<uint64_t> meta(BouncePool::metadata_size(bytes, 1 * kMiB) / 8 + 1);
  BouncePool p;
  p.set_poisoning(false);
  BouncePool::Options o;
  o.slot_size = 1 * kMiB;
  o.max_mapping = bytes;  // Capped at kMaxRequest.
  ASSERT_TRUE(
      p.init(PhysAddr(uint64_t{1} << 40), bytes, &byte, meta.data(), meta.size() * 8, o).ok());
  EXPECT_EQ(p.max_mapping_size(), BouncePool::kMaxRequest);
  EXPECT_EQ(p.alloc(BouncePool::kMaxRequest + 1).code(), ErrorCode::kLayoutError);
  BounceSlot s = must_alloc(p, BouncePool::kMaxRequest);
  EXPECT_EQ(s.num_slots, 4096u);
  EXPECT_TRUE(p.check_invariants());
  EXPECT_TRUE(p.free(s).ok());
  expect_all_free(p);
}

TEST(BouncePool, ExhaustionIsNoMemoryAndChangesOnlyTheFailureCount) {
  TestPool t(64 * kKiB);
  BouncePool& p = t.pool;
  std::vector<BounceSlot> live;
  for (int i = 0; i < 32; ++i) live.push_back(must_alloc(p, 1 + static_cast<size_t>(i)));
  Snapshot before = snapshot(p);
  EXPECT_EQ(before.stats.used_slots, 32u);
  EXPECT_EQ(p.alloc(1).code(), ErrorCode::kNoMemory);
  EXPECT_EQ(p.alloc(4096, PhysAddr(0x800), 0xFFF).code(), ErrorCode::kNoMemory);
  expect_same(before, snapshot(p), 2);
  EXPECT_TRUE(p.check_invariants());
  // Freeing one slot makes room for exactly one slot again.
  ASSERT_TRUE(p.free(live[7]).ok());
  BounceSlot again = must_alloc(p, 10);
  EXPECT_EQ(again.first_slot, live[7].first_slot);
  live[7] = again;
  for (const BounceSlot& s : live) ASSERT_TRUE(p.free(s).ok());
  expect_all_free(p);
}

TEST(BouncePool, FragmentedPoolRecoversOnceNeighboursAreFreed) {
  TestPool t(128 * kKiB);  // 64 slots
  BouncePool& p = t.pool;
  std::vector<BounceSlot> live;
  for (int i = 0; i < 64; ++i) live.push_back(must_alloc(p, 1));
  for (size_t i = 0; i < live.size(); i += 2) ASSERT_TRUE(p.free(live[i]).ok());
  EXPECT_EQ(p.stats().used_slots, 32u);
  p.drain_cache();
  EXPECT_EQ(p.free_block_count(), 32u);
  // Half the pool is free, but no two free slots are neighbours.
  EXPECT_EQ(p.alloc(kSlot + 1).code(), ErrorCode::kNoMemory);
  EXPECT_TRUE(p.check_invariants());
  for (size_t i = 1; i < live.size(); i += 2) ASSERT_TRUE(p.free(live[i]).ok());
  expect_all_free(p);
  BounceSlot all = must_alloc(p, 128 * kKiB);
  EXPECT_TRUE(p.free(all).ok());
}

TEST(BouncePool, HighWaterMarkRemembersThePeak) {
  TestPool t(1 * kMiB);
  BouncePool& p = t.pool;
  std::vector<BounceSlot> live;
  for (int i = 0; i < 10; ++i) live.push_back(must_alloc(p, 2 * kSlot));
  EXPECT_EQ(p.stats().high_water_slots, 20u);
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(p.free(live.back()).ok());
    live.pop_back();
  }
  EXPECT_EQ(p.stats().used_slots, 10u);
  EXPECT_EQ(p.stats().high_water_slots, 20u);
  live.push_back(must_alloc(p, 8 * kSlot));
  EXPECT_EQ(p.stats().high_water_slots, 20u);
  live.push_back(must_alloc(p, 3 * kSlot));
  EXPECT_EQ(p.stats().used_slots, 21u);
  EXPECT_EQ(p.stats().high_water_slots, 21u);
  EXPECT_EQ(p.stats().allocations, 12u);
  for (const BounceSlot& s : live) ASSERT_TRUE(p.free(s).ok());
  EXPECT_EQ(p.stats().high_water_slots, 21u);
}

// ---------------------------------------------------------------------------------------------
// free validation

TEST(BouncePool, FreeOfANeverAllocatedSlotIsNotFound) {
  TestPool t(64 * kKiB);
  BouncePool& p = t.pool;
  BounceSlot a = must_alloc(p, 3 * kSlot);
  BounceSlot b = must_alloc(p, 100);
  Snapshot before = snapshot(p);
  // Inside the free block, inside a used block, past the end, empty, wild.
  ASSERT_EQ(p.free_block_count(), 1u);
  uint32_t in_free = std::min(a.first_slot, b.first_slot) / 2;
  EXPECT_EQ(p.free(BounceSlot{PhysAddr(kBase + in_free * kSlot), in_free, 1, 100}).code(),
            ErrorCode::kNotFound);
  EXPECT_EQ(p.free(BounceSlot{PhysAddr(kBase + (a.first_slot + 1) * kSlot), a.first_slot + 1, 2,
                              2 * kSlot})
                .code(),
            ErrorCode::kNotFound);
  EXPECT_EQ(p.free(BounceSlot{PhysAddr(kBase + 32 * kSlot), 32, 1, 1}).code(),
            ErrorCode::kNotFound);
  EXPECT_EQ(p.free(BounceSlot{}).code(), ErrorCode::kNotFound);
  EXPECT_EQ(p.free(BounceSlot{PhysAddr(kBase), 0xFFFF'FFFFu, 0xFFFF'FFFFu, 1}).code(),
            ErrorCode::kNotFound);
  expect_same(before, snapshot(p));
  EXPECT_TRUE(p.check_invariants());
  EXPECT_TRUE(p.free(a).ok());
  EXPECT_TRUE(p.free(b).ok());
}

TEST(BouncePool, DoubleFreeIsNotFound) {
  TestPool t(64 * kKiB);  // 32 slots: the cache holds at most one slot.
  BouncePool& p = t.pool;
  BounceSlot a = must_alloc(p, 100);  // Slots are taken from the end: a is slot 31, b 30, ...
  BounceSlot b = must_alloc(p, 100);
  BounceSlot c = must_alloc(p, 100);
  BounceSlot d = must_alloc(p, 100);
  auto expect_double_free_refused = [&](const BounceSlot& s, const char* state) {
    Snapshot before = snapshot(p);
    EXPECT_EQ(p.free(s).code(), ErrorCode::kNotFound) << state;
    expect_same(before, snapshot(p));
    EXPECT_TRUE(p.check_invariants()) << state;
  };
  ASSERT_TRUE(p.free(b).ok());
  EXPECT_EQ(p.stats().cached_slots, 1u);
  expect_double_free_refused(b, "b in the cache");
  p.drain_cache();  // b's neighbours a and c are used: b is a free block of its own.
  expect_double_free_refused(b, "b a free block");
  ASSERT_TRUE(p.free(c).ok());
  p.drain_cache();  // c merges with b behind it: c heads the merged block, b is inside it.
  expect_double_free_refused(b, "b inside a free block");
  expect_double_free_refused(c, "c heading a free block");
  ASSERT_TRUE(p.free(d).ok());  // Into the cache, which is then full.
  ASSERT_TRUE(p.free(a).ok());  // Straight to the free lists: merges into the block in front.
  expect_double_free_refused(a, "a inside a free block");
  expect_double_free_refused(d, "d in the cache");
  expect_all_free(p);
  expect_double_free_refused(d, "d inside the only free block");
}

TEST(BouncePool, FreeOfAnAlteredSlotIsNotFound) {
  TestPool t(64 * kKiB);
  BouncePool& p = t.pool;
  BounceSlot s = must_alloc(p, 5000, PhysAddr(0x1234), 0xFFF);
  BounceSlot other = must_alloc(p, 100);
  Snapshot before = snapshot(p);
  auto altered = [&](auto change) {
    BounceSlot x = s;
    change(x);
    return p.free(x).code();
  };
  EXPECT_EQ(altered([](BounceSlot& x) { x.first_slot += 1; }), ErrorCode::kNotFound);
  EXPECT_EQ(altered([](BounceSlot& x) { x.num_slots += 1; }), ErrorCode::kNotFound);
  EXPECT_EQ(altered([](BounceSlot& x) { x.num_slots -= 1; }), ErrorCode::kNotFound);
  EXPECT_EQ(altered([](BounceSlot& x) { x.num_slots = 0; }), ErrorCode::kNotFound);
  EXPECT_EQ(altered([](BounceSlot& x) { x.addr += 1; }), ErrorCode::kNotFound);
  EXPECT_EQ(altered([](BounceSlot& x) { x.addr = x.addr - 0x234; }), ErrorCode::kNotFound);
  EXPECT_EQ(altered([](BounceSlot& x) { x.size += 1; }), ErrorCode::kNotFound);
  EXPECT_EQ(altered([](BounceSlot& x) { x.size += uint64_t{1} << 32; }), ErrorCode::kNotFound);
  EXPECT_EQ(altered([](BounceSlot& x) { x.num_slots |= 0x8000'0000u; }), ErrorCode::kNotFound);
  expect_same(before, snapshot(p));
  EXPECT_TRUE(p.check_invariants());
  EXPECT_TRUE(p.free(s).ok());
  EXPECT_TRUE(p.free(other).ok());
}

TEST(BouncePool, FreeOfAnotherPoolsSlotIsNotFound) {
  TestPool t1(64 * kKiB);
  TestPool t2(64 * kKiB, kSlot, kBase + 1 * kMiB);
  BounceSlot s = must_alloc(t1.pool, 100);
  Snapshot before = snapshot(t2.pool);
  EXPECT_EQ(t2.pool.free(s).code(), ErrorCode::kNotFound);
  expect_same(before, snapshot(t2.pool));
  // Even with the same geometry and a live allocation at the same slot, the address differs.
  BounceSlot s2 = must_alloc(t2.pool, 100);
  EXPECT_EQ(s2.first_slot, s.first_slot);
  EXPECT_EQ(t2.pool.free(s).code(), ErrorCode::kNotFound);
  EXPECT_TRUE(t2.pool.free(s2).ok());
  EXPECT_TRUE(t1.pool.free(s).ok());
}

// ---------------------------------------------------------------------------------------------
// Coalescing and data

TEST(BouncePool, FreeingInAnyOrderCoalescesFully) {
  TestPool t(256 * kKiB);  // 128 slots
  BouncePool& p = t.pool;
  for (int order = 0; order < 4; ++order) {
    std::vector<BounceSlot> live;
    for (size_t i = 0; i < 40; ++i) live.push_back(must_alloc(p, 1 + (i * 1543) % (3 * kSlot)));
    std::vector<size_t> idx(live.size());
    for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
    if (order == 1) std::reverse(idx.begin(), idx.end());
    if (order == 2) {  // Every other block first, then the ones in between.
      idx.clear();
      for (size_t i = 1; i < live.size(); i += 2) idx.push_back(i);
      for (size_t i = 0; i < live.size(); i += 2) idx.push_back(i);
    }
    if (order == 3) std::shuffle(idx.begin(), idx.end(), std::mt19937(42));
    for (size_t i : idx) {
      ASSERT_TRUE(p.free(live[i]).ok());
      ASSERT_TRUE(p.check_invariants());
    }
    expect_all_free(p);
  }
}

TEST(BouncePool, DataSurvivesOtherAllocationsAndFrees) {
  TestPool t(512 * kKiB);
  BouncePool& p = t.pool;
  BounceSlot keep = must_alloc(p, 10000, PhysAddr(0x4321), 0xFFF);
  uint8_t* d = t.data(keep);
  for (size_t i = 0; i < keep.size; ++i) d[i] = static_cast<uint8_t>(i * 7 + 1);
  std::mt19937 rng(7);
  std::vector<BounceSlot> others;
  for (int round = 0; round < 200; ++round) {
    if (others.empty() || rng() % 3 != 0) {
      auto r = p.alloc(1 + rng() % (32 * kKiB), PhysAddr(rng()), rng() % 2 ? 0xFFF : 0);
      if (r.ok()) {
        // Scribble over the whole of every other allocation.
        std::fill(t.data(*r), t.data(*r) + r->size, uint8_t{0xEE});
        others.push_back(*r);
      }
    } else {
      size_t i = rng() % others.size();
      ASSERT_TRUE(p.free(others[i]).ok());
      others.erase(others.begin() + static_cast<std::ptrdiff_t>(i));
    }
  }
  for (size_t i = 0; i < keep.size; ++i) ASSERT_EQ(d[i], static_cast<uint8_t>(i * 7 + 1)) << i;
  for (const BounceSlot& s : others) ASSERT_TRUE(p.free(s).ok());
  ASSERT_TRUE(p.free(keep).ok());
  expect_all_free(p);
}

// ---------------------------------------------------------------------------------------------
// The cache of freed blocks

TEST(BouncePoolCache, AFreedBlockIsReusedForTheSameSize) {
  TestPool t(1 * kMiB);  // 512 slots: the cache holds up to 16.
  BouncePool& p = t.pool;
  BounceSlot a = must_alloc(p, 4096);
  size_t blocks = p.free_block_count();
  ASSERT_TRUE(p.free(a).ok());
  EXPECT_EQ(p.stats().cached_slots, 2u);
  EXPECT_EQ(p.stats().used_slots, 0u);
  EXPECT_EQ(p.free_block_count(), blocks);  // Not merged back.
  EXPECT_TRUE(p.check_invariants());
  BounceSlot b = must_alloc(p, 4000);
  EXPECT_EQ(b.first_slot, a.first_slot);
  EXPECT_EQ(b.addr, a.addr);
  EXPECT_EQ(p.stats().cached_slots, 0u);
  EXPECT_EQ(p.stats().used_slots, 2u);
  EXPECT_EQ(p.stats().allocations, 2u);
  // The stale handle differs from the live one in its size only, and is refused.
  EXPECT_EQ(p.free(a).code(), ErrorCode::kNotFound);
  // A different slot count does not take the cached block.
  ASSERT_TRUE(p.free(b).ok());
  BounceSlot c = must_alloc(p, 3 * kSlot);
  EXPECT_NE(c.first_slot, a.first_slot);
  EXPECT_EQ(p.stats().cached_slots, 2u);
  ASSERT_TRUE(p.free(c).ok());
  expect_all_free(p);
}

TEST(BouncePoolCache, ACachedBlockIsTakenOnlyWithTheRightPhase) {
  TestPool t(1 * kMiB);
  BouncePool& p = t.pool;
  // With 2 KiB slots and a 4 KiB mask, the first slot's index parity follows bit 11 of orig.
  BounceSlot a = must_alloc(p, 100, PhysAddr(0x5'0000'0010), 0xFFF);
  ASSERT_TRUE(p.free(a).ok());
  ASSERT_EQ(p.stats().cached_slots, 1u);
  BounceSlot b = must_alloc(p, 100, PhysAddr(0x5'0000'0810), 0xFFF);
  EXPECT_EQ(b.addr.value() & 0xFFF, 0x810u);
  EXPECT_NE(b.first_slot, a.first_slot);
  EXPECT_EQ(p.stats().cached_slots, 1u);
  // Same phase again: the cached block is reused, at a new offset inside its slot.
  BounceSlot c = must_alloc(p, 100, PhysAddr(0x7'0000'0020), 0xFFF);
  EXPECT_EQ(c.first_slot, a.first_slot);
  EXPECT_EQ(c.addr.value() & 0xFFF, 0x020u);
  EXPECT_EQ(p.stats().cached_slots, 0u);
  // Both phases cached: either request finds its own, also when it is not on top.
  ASSERT_TRUE(p.free(c).ok());
  ASSERT_TRUE(p.free(b).ok());  // b (odd phase) on top of c's block (even phase).
  BounceSlot d = must_alloc(p, 100, PhysAddr(0x10), 0xFFF);
  EXPECT_EQ(d.first_slot, c.first_slot);
  BounceSlot e = must_alloc(p, 100, PhysAddr(0x810), 0xFFF);
  EXPECT_EQ(e.first_slot, b.first_slot);
  EXPECT_EQ(p.stats().cached_slots, 0u);
  EXPECT_TRUE(p.check_invariants());
  ASSERT_TRUE(p.free(d).ok());
  ASSERT_TRUE(p.free(e).ok());
  expect_all_free(p);
}

TEST(BouncePoolCache, DepthSizeAndBudgetAreLimited) {
  {
    TestPool t(1 * kMiB);  // Budget 16 slots.
    BouncePool& p = t.pool;
    std::vector<BounceSlot> live;
    for (int i = 0; i < 3; ++i) live.push_back(must_alloc(p, 100));
    for (const BounceSlot& s : live) ASSERT_TRUE(p.free(s).ok());
    EXPECT_EQ(p.stats().cached_slots, uint64_t{BouncePool::kQuickDepth});  // Depth limit.
    live.clear();
    for (int i = 0; i < 2; ++i) live.push_back(must_alloc(p, 7 * kSlot));
    for (const BounceSlot& s : live) ASSERT_TRUE(p.free(s).ok());
    EXPECT_EQ(p.stats().cached_slots, 2u + 14u);  // Up to the budget exactly.
    BounceSlot x = must_alloc(p, 1);              // From the cache (the size-1 stack).
    ASSERT_TRUE(p.free(x).ok());
    BounceSlot y = must_alloc(p, 3 * kSlot);
    ASSERT_TRUE(p.free(y).ok());  // Would exceed the budget: merged instead.
    EXPECT_EQ(p.stats().cached_slots, 16u);
    EXPECT_TRUE(p.check_invariants());
    expect_all_free(p);
  }
  {
    TestPool t(8 * kMiB);  // Budget 128 slots, but blocks of kQuickSlots or more are not cached.
    BouncePool& p = t.pool;
    BounceSlot big = must_alloc(p, BouncePool::kQuickSlots * kSlot);
    ASSERT_TRUE(p.free(big).ok());
    EXPECT_EQ(p.stats().cached_slots, 0u);
    BounceSlot below = must_alloc(p, (BouncePool::kQuickSlots - 1) * kSlot);
    ASSERT_TRUE(p.free(below).ok());
    EXPECT_EQ(p.stats().cached_slots, BouncePool::kQuickSlots - 1);
    expect_all_free(p);
  }
  {
    TestPool t(31 * kSlot);  // Budget 0: nothing is ever cached.
    BounceSlot s = must_alloc(t.pool, 1);
    ASSERT_TRUE(t.pool.free(s).ok());
    EXPECT_EQ(t.pool.stats().cached_slots, 0u);
    EXPECT_EQ(t.pool.free_block_count(), 1u);
  }
}

TEST(BouncePoolCache, AllocDrainsTheCacheBeforeGivingUp) {
  TestPool t(128 * kKiB);  // 64 slots: budget 2.
  BouncePool& p = t.pool;
  std::vector<BounceSlot> live;
  for (int i = 0; i < 64; ++i) live.push_back(must_alloc(p, 1));
  ASSERT_TRUE(p.free(live[10]).ok());
  ASSERT_TRUE(p.free(live[11]).ok());
  EXPECT_EQ(p.stats().cached_slots, 2u);
  EXPECT_EQ(p.free_block_count(), 0u);
  // Two neighbouring slots are free, but only in the cache: the drain merges them.
  BounceSlot two = must_alloc(p, 2 * kSlot);
  EXPECT_EQ(two.first_slot, std::min(live[10].first_slot, live[11].first_slot));
  EXPECT_EQ(p.stats().failures, 0u);
  EXPECT_EQ(p.stats().cached_slots, 0u);
  EXPECT_TRUE(p.check_invariants());
  // When even the drained cache is not enough: kNoMemory, with the cache given back.
  ASSERT_TRUE(p.free(live[20]).ok());
  EXPECT_EQ(p.stats().cached_slots, 1u);
  EXPECT_EQ(p.alloc(2 * kSlot).code(), ErrorCode::kNoMemory);
  EXPECT_EQ(p.stats().failures, 1u);
  EXPECT_EQ(p.stats().cached_slots, 0u);
  EXPECT_EQ(p.free_block_count(), 1u);
  EXPECT_EQ(p.stats().used_slots, 63u);  // 64 - 2 freed + 2 taken - 1 freed.
  EXPECT_TRUE(p.check_invariants());
  ASSERT_TRUE(p.free(two).ok());
  for (size_t i = 0; i < live.size(); ++i) {
    if (i != 10 && i != 11 && i != 20) ASSERT_TRUE(p.free(live[i]).ok());
  }
  expect_all_free(p);
}

TEST(BouncePoolCache, DrainIsHarmlessWhenEmptyOrUninitialised) {
  BouncePool uninit;
  uninit.drain_cache();
  EXPECT_TRUE(uninit.check_invariants());
  TestPool t(64 * kKiB);
  t.pool.drain_cache();
  t.pool.drain_cache();
  EXPECT_EQ(t.pool.free_block_count(), 1u);
  EXPECT_TRUE(t.pool.check_invariants());
}

// ---------------------------------------------------------------------------------------------
// Random operation sequences

struct Live {
  BounceSlot slot;
  uint8_t tag;
};

void random_sequence(uint64_t seed, size_t pool_bytes, size_t slot_size, int ops) {
  TestPool t(pool_bytes, bounce_test::whole_pool_options(pool_bytes, slot_size),
             kBase + 7 * slot_size);
  BouncePool& p = t.pool;
  std::mt19937_64 rng(seed);
  std::map<uint32_t, Live> live;  // By first slot.
  uint64_t used = 0;
  uint64_t allocations = 0;
  uint64_t failures = 0;
  const uint64_t masks[] = {0, 0, 0x7FF, 0xFFF, 0x3FFF};
  const size_t aligns[] = {0, 0, 0, 8, 512, 4096, 16 * kKiB};
  size_t max_size = pool_bytes / 8;

  for (int op = 0; op < ops; ++op) {
    bool do_alloc = live.empty() || rng() % 100 < 55;
    if (do_alloc) {
      size_t size = rng() % 4 == 0 ? 1 + rng() % slot_size : 1 + rng() % max_size;
      uint64_t mask = masks[rng() % std::size(masks)];
      size_t align = aligns[rng() % std::size(aligns)];
      uint64_t orig = rng() & 0xF'FFFF'FFFF;
      bool contradicts = align > 1 && ((orig & mask) & (align - 1)) != 0;
      Snapshot before = snapshot(p);
      auto r = p.alloc(size, PhysAddr(orig), mask, align);
      if (contradicts) {
        ASSERT_EQ(r.code(), ErrorCode::kLayoutError);
        expect_same(before, snapshot(p));
      } else if (r.ok()) {
        const BounceSlot& s = *r;
        ASSERT_EQ(s.addr.value() & mask, orig & mask);
        if (align > 1) ASSERT_EQ(s.addr.value() % align, 0u);
        expect_well_placed(p, s);
        // No overlap with the live neighbours.
        auto next = live.lower_bound(s.first_slot);
        if (next != live.end()) ASSERT_GE(next->first, s.first_slot + s.num_slots);
        if (next != live.begin()) {
          auto prev = std::prev(next);
          ASSERT_LE(prev->first + prev->second.slot.num_slots, s.first_slot);
        }
        auto tag = static_cast<uint8_t>(rng());
        std::fill(t.data(s), t.data(s) + s.size, tag);
        live[s.first_slot] = Live{s, tag};
        used += s.num_slots;
        ++allocations;
      } else {
        ASSERT_EQ(r.code(), ErrorCode::kNoMemory) << error_code_name(r.code());
        ++failures;
        // Before giving up, alloc gave the cache back to the free lists.
        BouncePool::Stats after = p.stats();
        EXPECT_EQ(after.cached_slots, 0u);
        before.stats.cached_slots = 0;
        before.free_blocks = p.free_block_count();
        expect_same(before, snapshot(p), 1);
      }
    } else {
      auto it = live.begin();
      std::advance(it, static_cast<std::ptrdiff_t>(rng() % live.size()));
      const BounceSlot& s = it->second.slot;
      const uint8_t* d = t.data(s);
      for (size_t i = 0; i < s.size; ++i) {
        ASSERT_EQ(d[i], it->second.tag) << "seed " << seed << " op " << op << " byte " << i;
      }
      ASSERT_TRUE(p.free(s).ok());
      used -= s.num_slots;
      live.erase(it);
    }
    ASSERT_TRUE(p.check_invariants()) << "seed " << seed << " op " << op;
    BouncePool::Stats st = p.stats();
    ASSERT_EQ(st.used_slots, used);
    ASSERT_EQ(st.allocations, allocations);
    ASSERT_EQ(st.failures, failures);
    ASSERT_GE(st.high_water_slots, used);
  }
  EXPECT_GT(failures, 0u) << "the sequence should have exhausted the pool at least once";
  for (auto& [first, l] : live) ASSERT_TRUE(p.free(l.slot).ok());
  expect_all_free(p);
  BounceSlot all = must_alloc(p, p.max_mapping_size());
  EXPECT_TRUE(p.free(all).ok());
}

TEST(BouncePoolRandom, Seed1DefaultSlots) {
  random_sequence(1, 2 * kMiB, kSlot, 4000);
}
TEST(BouncePoolRandom, Seed2DefaultSlots) {
  random_sequence(2, 1 * kMiB, kSlot, 4000);
}
TEST(BouncePoolRandom, Seed3SmallSlots) {
  random_sequence(3, 256 * kKiB, 64, 3000);
}
TEST(BouncePoolRandom, Seed4LargeSlots) {
  random_sequence(4, 4 * kMiB, 4096, 4000);
}

// ---------------------------------------------------------------------------------------------
// Concurrency and teardown

TEST(BouncePool, ConcurrentAllocAndFreeKeepTheAccounting) {
  TestPool t(1 * kMiB);
  BouncePool& p = t.pool;
  std::atomic<int> errors{0};
  auto worker = [&](uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::vector<BounceSlot> mine;
    for (int i = 0; i < 2000; ++i) {
      if (mine.empty() || rng() % 2 == 0) {
        auto r = p.alloc(1 + rng() % (16 * kKiB), PhysAddr(rng()), 0xFFF);
        if (r.ok()) {
          mine.push_back(*r);
        } else if (r.code() != ErrorCode::kNoMemory) {
          ++errors;
        }
      } else {
        size_t k = rng() % mine.size();
        if (!p.free(mine[k]).ok()) ++errors;
        mine[k] = mine.back();
        mine.pop_back();
      }
    }
    for (const BounceSlot& s : mine) {
      if (!p.free(s).ok()) ++errors;
    }
  };
  std::thread a(worker, 11);
  std::thread b(worker, 12);
  a.join();
  b.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_TRUE(p.check_invariants());
  expect_all_free(p);
}

#if KDEBUG_ENABLED
TEST(BouncePoolDeathTest, DestroyingAPoolWithLiveSlotsAsserts) {
  EXPECT_DEATH(
      {
        auto t = std::make_unique<TestPool>(64 * kKiB);
        BounceSlot s = must_alloc(t->pool, 100);
        (void)s;
        t.reset();
      },
      "still in use");
}
#endif

TEST(BouncePool, DestroyingAnEmptiedPoolIsFine) {
  auto t = std::make_unique<TestPool>(64 * kKiB);
  BounceSlot s = must_alloc(t->pool, 100);
  ASSERT_TRUE(t->pool.free(s).ok());
  ASSERT_EQ(t->pool.stats().cached_slots, 1u);  // A cached block counts as given back.
  t.reset();                                    // Must not assert.
  SUCCEED();
}

}  // namespace
