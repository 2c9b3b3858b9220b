// DeviceDma and the RAII types: resources come back when the objects die, moves transfer them.
#include "dmakit/device_dma.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <thread>
#include <vector>

#include "arch/host/host_platform.h"
#include "dmakit/dma_buffer_pool.h"
#include "dmakit/support/fault_injection.h"

namespace {

constexpr uint64_t kMask32 = 0xFFFF'FFFFull;

class DeviceDmaTest : public testing::Test {
 protected:
  DeviceDmaTest() : plat_(HostPlatform::default_options()), dev_(&plat_.op(), kMask32) {}
  ~DeviceDmaTest() override { support::FaultInjector::disarm_all(); }
  uint8_t* buffer(size_t bytes) {
    auto pa = plat_.pfa().alloc(PageFrameAllocator::order_for(bytes));
    EXPECT_TRUE(pa.ok());
    held_.push_back({pa->value(), PageFrameAllocator::order_for(bytes)});
    return plat_.phys_to_virt(pa->value());
  }
  void TearDown() override {
    for (auto& b : held_) ASSERT_TRUE(plat_.pfa().free(PhysAddr(b.first), b.second).ok());
  }
  uint64_t used_slots() { return plat_.pool(0).stats().used_slots; }
  HostPlatform plat_;
  DeviceDma dev_;
  std::vector<std::pair<uint64_t, unsigned>> held_;
};

TEST_F(DeviceDmaTest, ConstraintsComeFromThePlatformAndOverrides) {
  EXPECT_EQ(dev_.dma_mask(), kMask32);
  EXPECT_EQ(dev_.constraints().coherence, DmaCoherence::kNonCoherent);
  EXPECT_FALSE(dev_.coherent());
  dev_.set_coherent(true);
  dev_.set_force_bounce(true);
  dev_.set_min_align_mask(0xFFF);
  ASSERT_TRUE(dev_.set_dma_mask(0xFFFF'FFFFull).ok());
  EXPECT_EQ(dev_.constraints().coherence, DmaCoherence::kCoherent);
  EXPECT_TRUE(dev_.coherent());
  EXPECT_TRUE(dev_.constraints().force_bounce);
  EXPECT_EQ(dev_.constraints().min_align_mask, 0xFFFu);
  EXPECT_EQ(dev_.dma_mask(), 0xFFFF'FFFFu);
  EXPECT_EQ(dev_.op(), &plat_.op());
}

// These observe a mapping through the bounce slots it holds (bouncing forced), which every build
// counts; the DmaOp's live_maps exists only with DMA_STATS.
TEST_F(DeviceDmaTest, StreamingMappingUnmapsWhenDestroyed) {
  uint8_t* buf = buffer(4096);
  dev_.set_force_bounce(true);
  {
    auto m = dev_.map(buf, 4096, DmaDirection::kToDevice);
    ASSERT_TRUE(m.ok());
    EXPECT_TRUE(m->valid());
    EXPECT_EQ(m->size(), 4096u);
    EXPECT_EQ(m->direction(), DmaDirection::kToDevice);
    EXPECT_GT(used_slots(), 0u);
#if DMA_STATS
    EXPECT_EQ(plat_.op().stats().live_maps, 1u);
#endif
  }
  EXPECT_EQ(used_slots(), 0u);
#if DMA_STATS
  EXPECT_EQ(plat_.op().stats().live_maps, 0u);
#endif
}

TEST_F(DeviceDmaTest, StreamingMappingMovesOwnership) {
  uint8_t* buf = buffer(4096);
  dev_.set_force_bounce(true);
  auto m = dev_.map(buf, 4096, DmaDirection::kFromDevice);
  ASSERT_TRUE(m.ok());
  const uint64_t held = used_slots();
  StreamingMapping a = std::move(*m);
  EXPECT_FALSE(m->valid());
  EXPECT_TRUE(a.valid());
  EXPECT_TRUE(a.bounced());
  StreamingMapping b;
  b = std::move(a);
  EXPECT_FALSE(a.valid());
  EXPECT_EQ(used_slots(), held);
#if DMA_STATS
  EXPECT_EQ(plat_.op().stats().live_maps, 1u);
#endif
  EXPECT_EQ(a.sync_for_cpu().code(), ErrorCode::kInvalidArgument);
  b.unmap();
  b.unmap();  // Idempotent.
#if DMA_STATS
  EXPECT_EQ(plat_.op().stats().live_maps, 0u);
#endif
  EXPECT_EQ(used_slots(), 0u);
}

TEST_F(DeviceDmaTest, MoveAssignOverALiveMappingUnmapsTheOldOne) {
  uint8_t* buf = buffer(8192);
  dev_.set_force_bounce(true);
  auto m1 = dev_.map(buf, 4096, DmaDirection::kToDevice);
  const uint64_t one = used_slots();
  auto m2 = dev_.map(buf + 4096, 4096, DmaDirection::kToDevice);
  ASSERT_TRUE(m1.ok() && m2.ok());
  EXPECT_EQ(used_slots(), 2 * one);
#if DMA_STATS
  EXPECT_EQ(plat_.op().stats().live_maps, 2u);
#endif
  *m1 = std::move(*m2);
  EXPECT_EQ(used_slots(), one);
#if DMA_STATS
  EXPECT_EQ(plat_.op().stats().live_maps, 1u);
#endif
}

TEST_F(DeviceDmaTest, SyncForCpuAndDeviceMoveData) {
  uint8_t* buf = buffer(4096);
  std::memset(buf, 0, 4096);
  dev_.set_force_bounce(true);
  auto m = dev_.map(buf, 4096, DmaDirection::kBidirectional);
  ASSERT_TRUE(m.ok());
  HostDevice hw(&plat_, kMask32, false);
  hw.fill(m->dma_addr(), 0x66, 16);
  ASSERT_TRUE(m->sync_for_cpu(0, 16).ok());
  EXPECT_EQ(buf[15], 0x66);
  buf[20] = 0x77;
  ASSERT_TRUE(m->sync_for_device(20, 1).ok());
  uint8_t b = 0;
  hw.read(m->dma_addr() + 20, &b, 1);
  EXPECT_EQ(b, 0x77);
  EXPECT_EQ(m->sync_for_cpu(4000, 100).code(), ErrorCode::kOutOfRange);
  ASSERT_TRUE(m->sync_for_device().ok());
  ASSERT_TRUE(m->sync_for_cpu().ok());
}

TEST_F(DeviceDmaTest, MapErrorsPropagate) {
  uint8_t* buf = buffer(4096);
  EXPECT_EQ(dev_.map(buf, 0, DmaDirection::kToDevice).code(), ErrorCode::kLayoutError);
  // A mask nothing serves is refused by set_dma_mask, but a device may be built with one (its
  // hardware's): then the map reports it.
  DeviceDma tiny(&plat_.op(), 0xFFFF);
  auto e = tiny.map(buf, 16, DmaDirection::kToDevice);
  EXPECT_EQ(e.code(), ErrorCode::kDmaMaskNotMatch);
  EXPECT_EQ(e.error().mask, 0xFFFFu);
}

struct Descriptor {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};

// ---- What may live in DMA memory (DmaPlain, include/dmakit/dma_plain.h) ----

struct NotTriviallyCopyable {
  NotTriviallyCopyable(const NotTriviallyCopyable& o) : v(o.v + 1) {}
  uint32_t v;
};
struct WithVirtual {
  virtual ~WithVirtual() = default;
  uint64_t v;
};
struct LayoutBase {
  uint32_t a;
};
struct NotStandardLayout : LayoutBase {  // Data members in both the base and the derived class.
  uint32_t b;
};
struct Padded {  // Three bytes of padding after `tag`.
  uint8_t tag;
  uint32_t value;
};
struct PaddedOptedIn {
  uint8_t tag;
  uint32_t value;
};
struct Reserved {  // Padded's layout with the padding named.
  uint8_t tag;
  uint8_t reserved[3];
  uint32_t value;
};

}  // namespace

template <>
inline constexpr bool kDmaAllowPadding<PaddedOptedIn> = true;

namespace {

static_assert(DmaPlain<uint8_t> && DmaPlain<uint64_t> && DmaPlain<Descriptor>);
static_assert(DmaPlain<Reserved>);
static_assert(!DmaTriviallyCopyable<NotTriviallyCopyable> && !DmaPlain<NotTriviallyCopyable>);
static_assert(!DmaPlain<WithVirtual>);
static_assert(DmaTriviallyCopyable<NotStandardLayout> && !DmaStandardLayout<NotStandardLayout> &&
              !DmaPlain<NotStandardLayout>);
static_assert(DmaTriviallyCopyable<Padded> && !DmaNoPadding<Padded> && !DmaPlain<Padded>);
static_assert(DmaPlain<PaddedOptedIn>);
static_assert(!DmaPlain<float> && !DmaPlain<double>);  // Two zeros: opt in if you must.

// A completion record as a device writes it: the CPU polls `done`.
struct Completion {
  uint32_t done;
  uint32_t status;
  uint64_t bytes;
};

// Odd sizes and alignments: accessed in units of min(alignof, 8) bytes.
struct Bytes5 {
  uint8_t b[5];
};
struct Wide {
  uint64_t a;
  uint32_t b;
  uint16_t c;
  uint16_t d;
  uint64_t e[2];
};

template <typename T>
bool same_bytes(const T& a, const T& b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

TEST_F(DeviceDmaTest, DArrayIsZeroedTypedAndFreedOnDestruction) {
  uint64_t before = plat_.pfa().free_pages();
  {
    auto a = dev_.alloc_array<Descriptor>(256);
    ASSERT_TRUE(a.ok());
    EXPECT_EQ(a->size(), 256u);
    EXPECT_EQ(a->bytes(), 256 * sizeof(Descriptor));
    EXPECT_EQ(a->read(255).len, 0u);
    a->write_field(3, &Descriptor::len, 99);
    EXPECT_EQ(a->dma_addr(3).value(), a->dma_addr(0).value() + 3 * sizeof(Descriptor));
    EXPECT_LE(a->dma_addr(255).value(), kMask32);
    EXPECT_LT(plat_.pfa().free_pages(), before);
    DArray<Descriptor> moved = std::move(*a);
    EXPECT_FALSE(a->valid());
    EXPECT_EQ(moved.read_field(3, &Descriptor::len), 99u);
  }
  EXPECT_EQ(plat_.pfa().free_pages(), before);
}

TEST_F(DeviceDmaTest, DArrayRejectsBadCounts) {
  EXPECT_EQ(dev_.alloc_array<Descriptor>(0).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(dev_.alloc_array<Descriptor>(~size_t{0} / 8).code(), ErrorCode::kLayoutError);
}

TEST_F(DeviceDmaTest, DBoxHoldsOneObject) {
  uint64_t before = plat_.pfa().free_pages();
  {
    auto b = dev_.alloc_box<Descriptor>();
    ASSERT_TRUE(b.ok());
    b->write_field(&Descriptor::flags, 7);
    EXPECT_EQ(b->read().flags, 7);
    EXPECT_EQ(b->dma_addr().value() % alignof(Descriptor), 0u);
    EXPECT_NE(b->raw(), nullptr);
  }
  EXPECT_EQ(plat_.pfa().free_pages(), before);
}

// ---- Element and field access ----

TEST_F(DeviceDmaTest, WriteReachesTheDeviceAndReadSeesWhatTheDeviceWrote) {
  auto ring = dev_.alloc_array<Completion>(8);
  ASSERT_TRUE(ring.ok());
  HostDevice hw(&plat_, kMask32, false);
  ring->write(2, Completion{1, 2, 3});
  Completion seen{};
  hw.read(ring->dma_addr(2), &seen, sizeof(seen));
  EXPECT_TRUE(same_bytes(seen, Completion{1, 2, 3}));

  Completion from_device{5, 6, 0x1'0000'0007};
  hw.write(ring->dma_addr(4), &from_device, sizeof(from_device));
  EXPECT_TRUE(same_bytes(ring->read(4), from_device));
  EXPECT_EQ(ring->read_field(4, &Completion::bytes), 0x1'0000'0007u);
  EXPECT_TRUE(same_bytes(ring->read(3), Completion{}));  // The neighbours are untouched.
  EXPECT_TRUE(same_bytes(ring->read(5), Completion{}));
}

TEST_F(DeviceDmaTest, WriteFieldChangesOnlyThatField) {
  auto ring = dev_.alloc_array<Completion>(2);
  ASSERT_TRUE(ring.ok());
  HostDevice hw(&plat_, kMask32, false);
  ring->write(1, Completion{0xAAAA'AAAA, 0xBBBB'BBBB, 0xCCCC'CCCC'CCCC'CCCC});
  ring->write_field(1, &Completion::status, 0x1234'5678);
  Completion seen{};
  hw.read(ring->dma_addr(1), &seen, sizeof(seen));
  EXPECT_EQ(seen.done, 0xAAAA'AAAAu);
  EXPECT_EQ(seen.status, 0x1234'5678u);
  EXPECT_EQ(seen.bytes, 0xCCCC'CCCC'CCCC'CCCCu);
  EXPECT_EQ(ring->read_field(1, &Completion::status), 0x1234'5678u);
}

TEST_F(DeviceDmaTest, ArrayFieldEntriesAreReadAndWrittenOneByOne) {
  struct Ring {
    uint16_t flags;
    uint16_t idx;
    uint16_t entries[8];
  };
  auto box = dev_.alloc_box<Ring>();
  ASSERT_TRUE(box.ok());
  HostDevice hw(&plat_, kMask32, false);
  box->write_field(&Ring::entries, 7, 0xBEEF);
  box->write_field(&Ring::idx, 1);
  Ring seen{};
  hw.read(box->dma_addr(), &seen, sizeof(seen));
  EXPECT_EQ(seen.entries[7], 0xBEEF);
  EXPECT_EQ(seen.entries[6], 0);
  EXPECT_EQ(seen.idx, 1);
  uint16_t v = 0x4242;
  hw.write(box->dma_addr() + offsetof(Ring, entries) + 3 * sizeof(uint16_t), &v, sizeof(v));
  EXPECT_EQ(box->read_field(&Ring::entries, 3), 0x4242);
  EXPECT_EQ(box->read().entries[3], 0x4242);
}

TEST_F(DeviceDmaTest, OddSizesAndAlignmentsRoundTrip) {
  auto bytes = dev_.alloc_array<Bytes5>(3);
  auto wide = dev_.alloc_array<Wide>(3);
  ASSERT_TRUE(bytes.ok() && wide.ok());
  HostDevice hw(&plat_, kMask32, false);
  Bytes5 b{{1, 2, 3, 4, 5}};
  bytes->write(1, b);
  Bytes5 seen_b{};
  hw.read(bytes->dma_addr(1), &seen_b, sizeof(seen_b));
  EXPECT_TRUE(same_bytes(seen_b, b));
  uint8_t zero[5] = {};
  EXPECT_EQ(std::memcmp(&bytes->raw_data()[0], zero, 5), 0);
  EXPECT_EQ(std::memcmp(&bytes->raw_data()[2], zero, 5), 0);

  Wide w{0x0102'0304'0506'0708, 0x1112'1314, 0x2122, 0x3132, {0x4142'4344'4546'4748, 0x51}};
  hw.write(wide->dma_addr(2), &w, sizeof(w));
  EXPECT_TRUE(same_bytes(wide->read(2), w));
  EXPECT_EQ(wide->read_field(2, &Wide::e, 0), 0x4142'4344'4546'4748u);
  EXPECT_EQ(wide->read_field(2, &Wide::d), 0x3132u);
  wide->write(0, w);
  Wide seen_w{};
  hw.read(wide->dma_addr(0), &seen_w, sizeof(seen_w));
  EXPECT_TRUE(same_bytes(seen_w, w));
}

TEST_F(DeviceDmaTest, PaddedTypeThatOptedInRoundTrips) {
  auto box = dev_.alloc_box<PaddedOptedIn>();
  ASSERT_TRUE(box.ok());
  box->write(PaddedOptedIn{9, 0x7777'7777});
  EXPECT_EQ(box->read().tag, 9);
  EXPECT_EQ(box->read_field(&PaddedOptedIn::value), 0x7777'7777u);
}

// A device write made while the CPU polls: the first read sees 0, the device writes, a later read
// in the same loop sees it. Were the poll a plain load, the compiler could (and at -O1 does) read
// once and spin on a register; the loop bound turns that into a failure rather than a hang.
constexpr uint64_t kPollLimit = uint64_t{1} << 32;

// The device thread: waits until the CPU has polled once, then completes the request, the status
// first and `done` last, as a device does.
void complete_later(HostDevice* hw, DmaAddr record, const std::atomic<bool>* polled) {
  while (!polled->load(std::memory_order_acquire)) std::this_thread::yield();
  std::this_thread::sleep_for(std::chrono::milliseconds(2));  // Let the CPU spin a while.
  uint32_t status = 7;
  uint64_t bytes = 4096;
  hw->write(record + offsetof(Completion, status), &status, sizeof(status));
  hw->write(record + offsetof(Completion, bytes), &bytes, sizeof(bytes));
  uint32_t done = 1;
  hw->write(record + offsetof(Completion, done), &done, sizeof(done));
}

TEST_F(DeviceDmaTest, ConcurrentDeviceWriteIsSeenByAPollingReadField) {
  auto box = dev_.alloc_box<Completion>();
  ASSERT_TRUE(box.ok());
  HostDevice hw(&plat_, kMask32, false);
  std::atomic<bool> polled{false};
  std::thread device(complete_later, &hw, box->dma_addr(), &polled);
  ASSERT_EQ(box->read_field(&Completion::done), 0u);
  polled.store(true, std::memory_order_release);
  uint64_t polls = 1;
  while (box->read_field(&Completion::done) == 0 && polls < kPollLimit) ++polls;
  device.join();
  EXPECT_LT(polls, kPollLimit) << "the poll never saw the device's write";
  EXPECT_GT(polls, 1u);
  Completion c = box->read();
  EXPECT_EQ(c.done, 1u);
  EXPECT_EQ(c.status, 7u);
  EXPECT_EQ(c.bytes, 4096u);
}

TEST_F(DeviceDmaTest, ConcurrentDeviceWriteIsSeenByAPollingRead) {
  auto ring = dev_.alloc_array<Completion>(4);
  ASSERT_TRUE(ring.ok());
  HostDevice hw(&plat_, kMask32, false);
  std::atomic<bool> polled{false};
  std::thread device(complete_later, &hw, ring->dma_addr(2), &polled);
  ASSERT_EQ(ring->read(2).done, 0u);
  polled.store(true, std::memory_order_release);
  uint64_t polls = 1;
  while (ring->read(2).done == 0 && polls < kPollLimit) ++polls;
  device.join();
  EXPECT_LT(polls, kPollLimit) << "the poll never saw the device's write";
  EXPECT_GT(polls, 1u);
  EXPECT_EQ(ring->read(2).status, 7u);
  EXPECT_EQ(ring->read(1).done, 0u);
}

TEST_F(DeviceDmaTest, CoherentMemoryNeedsNoSyncForACoherentDevice) {
  auto o = HostPlatform::default_options();
  o.platform_coherent = true;
  HostPlatform p(o);
  DeviceDma dev(&p.op(), kMask32);
  auto ring = dev.alloc_array<uint32_t>(64);
  ASSERT_TRUE(ring.ok());
  ring->write(5, 0xDEADBEEF);
  HostDevice hw(&p, kMask32, true);
  uint32_t seen = 0;
  hw.read(ring->dma_addr(5), &seen, sizeof(seen));
  EXPECT_EQ(seen, 0xDEADBEEFu);  // No flush: the device snoops.
}

TEST_F(DeviceDmaTest, StreamingBufferOfANonCoherentDeviceNeedsTheSync) {
  uint8_t* buf = buffer(4096);
  auto m = dev_.map(buf, 4096, DmaDirection::kToDevice);
  ASSERT_TRUE(m.ok());
  buf[0] = 0x44;  // After the map: invisible until synced.
  HostDevice hw(&plat_, kMask32, false);
  uint8_t b = 0;
  hw.read(m->dma_addr(), &b, 1);
  EXPECT_NE(b, 0x44);
  ASSERT_TRUE(m->sync_for_device(0, 1).ok());
  hw.read(m->dma_addr(), &b, 1);
  EXPECT_EQ(b, 0x44);
}

TEST_F(DeviceDmaTest, BufferPoolLendsAndTakesBack) {
  uint64_t before = plat_.pfa().free_pages();
  {
    DmaBufferPool pool;
    ASSERT_TRUE(pool.init(&dev_, 4, 2048).ok());
    EXPECT_EQ(pool.count(), 4u);
    EXPECT_EQ(pool.available(), 4u);
    EXPECT_EQ(pool.buffer_size(), 2048u);
    std::vector<PooledBuffer> out;
    for (int i = 0; i < 4; ++i) {
      auto b = pool.acquire();
      ASSERT_TRUE(b.ok());
      EXPECT_EQ(b->size(), 2048u);
      EXPECT_LE(b->dma_addr().value() + 2047, kMask32);
      std::memset(b->data(), i, 2048);
      out.push_back(std::move(*b));
    }
    EXPECT_EQ(pool.acquire().code(), ErrorCode::kNoMemory);
    EXPECT_EQ(out[2].data()[100], 2);
    out.pop_back();
    EXPECT_EQ(pool.available(), 1u);
    auto again = pool.acquire();
    ASSERT_TRUE(again.ok());
    again->release();
    again->release();  // Idempotent.
    out.clear();
    EXPECT_EQ(pool.available(), 4u);
    EXPECT_EQ(pool.init(&dev_, 1, 64).code(), ErrorCode::kInvalidArgument);
  }
  EXPECT_EQ(plat_.pfa().free_pages(), before);
}

TEST_F(DeviceDmaTest, BufferPoolRejectsBadSizes) {
  DmaBufferPool a, b, c;
  EXPECT_EQ(a.init(&dev_, 0, 64).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(b.init(&dev_, 65, 64).code(), ErrorCode::kLayoutError);
  EXPECT_EQ(c.init(&dev_, 1, 0).code(), ErrorCode::kLayoutError);
}

#if DMA_FAULT_INJECTION  // Fault injection: debug builds only.
TEST_F(DeviceDmaTest, BufferPoolInitFailingAtEveryAllocationLeaksNothing) {
  uint64_t before = plat_.pfa().free_pages();
  for (uint64_t n = 1; n <= 8; ++n) {
    DmaBufferPool pool;
    support::FaultInjector::fail_nth(support::FaultSite::kPageAlloc, n);
    EXPECT_EQ(pool.init(&dev_, 8, 4096).code(), ErrorCode::kNoMemory) << n;
    EXPECT_EQ(plat_.pfa().free_pages(), before) << n;
  }
  support::FaultInjector::disarm_all();
}
#endif

#if KDEBUG_ENABLED  // A KDEBUG_ASSERT: debug builds only.
TEST_F(DeviceDmaTest, BufferPoolDestroyedWithBuffersOutIsReported) {
  EXPECT_DEATH(
      {
        auto* pool = new DmaBufferPool;
        if (!pool->init(&dev_, 2, 64).ok()) std::abort();
        auto b = pool->acquire();
        PooledBuffer keep = std::move(*b);
        delete pool;
        (void)keep.valid();
      },
      "buffers still lent out");
}
#endif

}  // namespace
