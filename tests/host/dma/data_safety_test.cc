// The mapping layer's data-safety cases (issue "Data safety", items 1, 2, 5, 6, 7 and 11): buffers
// that share cache lines with other data, buffers outside the direct map, bounced mappings over
// the maximum size, platforms without cache maintenance, sync directions that contradict the
// mapping, and bus offsets that wrap. Each runs against the host cache model, so a lost line
// shows as wrong data; each refusal is checked to leave every counter as it was.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <vector>

#include "arch/host/host_platform.h"
#include "dmakit/device_dma.h"
#include "dmakit/kernel_dma_op.h"

namespace {

constexpr uint64_t kMask28 = (1ull << 28) - 1;
constexpr uint64_t kMask30 = (1ull << 30) - 1;
constexpr uint64_t kMask64 = ~0ull;
constexpr uint64_t kRamBase = 0x4000'0000;

// A device reaching the lowest 16 MiB of RAM.
constexpr uint64_t kMaskLow = kRamBase + (16ull << 20) - 1;

// 64 MiB of RAM at 1 GiB, one 4 MiB bounce pool in its lowest 16 MiB: a kMaskLow device reaches
// the pool and bounces what lies above, a 64-bit one reaches everything. Buffers from pages()
// come from the top of RAM.
HostPlatform::Options options(size_t line = 64) {
  HostPlatform::Options o;
  o.ram.push_back(PhysRange{PhysAddr(kRamBase), 64ull << 20});
  o.pools.push_back(HostPlatform::PoolSpec{4ull << 20, kMaskLow});
  o.line_size = line;
  return o;
}

struct Counters {
  uint64_t free_pages;
  uint64_t used_slots;
  uint64_t live_maps;
  uint64_t coherent_live;
};

class DataSafetyTest : public testing::Test {
 protected:
  explicit DataSafetyTest(const HostPlatform::Options& o = options()) : plat_(o) {}
  void TearDown() override {
    for (auto& b : pages_) ASSERT_TRUE(plat_.pfa().free(PhysAddr(b.first), b.second).ok());
  }

  KernelDmaOp& op() { return plat_.op(); }
  DmaConstraints device(uint64_t mask, bool coherent) {
    DmaConstraints c;
    c.dma_mask = mask;
    c.coherence = dma_coherence(coherent);
    return c;
  }
  // Page-aligned RAM the caller uses as it likes (given back at teardown).
  uint8_t* pages(size_t bytes) {
    unsigned order = PageFrameAllocator::order_for(bytes);
    auto pa = plat_.pfa().alloc(order);
    EXPECT_TRUE(pa.ok());
    pages_.push_back({pa->value(), order});
    return plat_.phys_to_virt(pa->value());
  }
  uint64_t phys_of(const void* p) { return op().virt_to_phys(p)->value(); }
  Counters counters() {
    return {plat_.pfa().free_pages(), plat_.pool(0).stats().used_slots, op().stats().live_maps,
            op().stats().coherent_live};
  }
  void expect_unchanged(const Counters& s) {
    Counters now = counters();
    EXPECT_EQ(now.free_pages, s.free_pages);
    EXPECT_EQ(now.used_slots, s.used_slots);
    EXPECT_EQ(now.live_maps, s.live_maps);
    EXPECT_EQ(now.coherent_live, s.coherent_live);
  }

  HostPlatform plat_;
  std::vector<std::pair<uint64_t, unsigned>> pages_;
};

// ---- 1. Buffers that share a cache line with other data -------------------------------------

// One placement of a device buffer inside a line-aligned block: [offset, offset + size), with
// the CPU writing the bytes around it while the device owns it.
struct Placement {
  const char* name;
  size_t offset;
  size_t size;
};

void PrintTo(const Placement& p, std::ostream* os) {
  *os << p.name << " [" << p.offset << ", +" << p.size << ")";
}

class SharedLineTest : public DataSafetyTest,
                       public testing::WithParamInterface<std::tuple<Placement, DmaDirection>> {};

// The struct { uint8_t hdr[32]; uint8_t rx[96]; } and its relatives: head-only,
// tail-only and both-edge sharing, and one byte inside a line.
const Placement kPlacements[] = {
    {"hdr32_rx96", 32, 96},       // Head shared, tail aligned (128 = two 64-byte lines).
    {"head_only", 32, 32 + 128},  // Head shared, tail aligned.
    {"tail_only", 0, 100},        // Tail shared.
    {"both_edges", 10, 300},      // Both shared.
    {"one_byte", 17, 1},          // Inside one line.
    {"inside_line", 8, 40},       // Head and tail in the same line.
};

TEST_P(SharedLineTest, NoDeviceByteIsLostAndTheNeighbourKeepsTheCpuWrite) {
  auto [pl, dir] = GetParam();
  constexpr size_t kBlock = 1024;
  uint8_t* block = pages(4096);
  std::memset(block, 0x11, kBlock);
  uint8_t* buf = block + pl.offset;
  HostDevice dev(&plat_, kMask64, false);
  auto m = op().map_single(device(kMask64, false), buf, pl.size, 0, dir);
  ASSERT_TRUE(m.ok());
  // While the device owns the buffer the CPU writes the neighbours (the header, the next
  // object), then the device writes the whole buffer; the cache may write any dirty line back
  // at any moment, before and after the device's write.
  for (size_t i = 0; i < pl.offset; ++i) block[i] = 0xA0;
  for (size_t i = pl.offset + pl.size; i < kBlock; ++i) block[i] = 0xB0;
  plat_.model().evict_all();
  std::vector<uint8_t> data(pl.size);
  for (size_t i = 0; i < pl.size; ++i) data[i] = static_cast<uint8_t>(0x40 + i * 7);
  dev.write(m->dma_addr, data.data(), data.size());
  // And again, after the device wrote.
  for (size_t i = 0; i < pl.offset; ++i) block[i] = 0xA1;
  for (size_t i = pl.offset + pl.size; i < kBlock; ++i) block[i] = 0xB1;
  plat_.model().evict_all();
  op().unmap_single(*m);
  plat_.model().evict_all();
  for (size_t i = 0; i < pl.size; ++i) ASSERT_EQ(buf[i], data[i]) << "device byte " << i << " lost";
  for (size_t i = 0; i < pl.offset; ++i) ASSERT_EQ(block[i], 0xA1) << "head neighbour " << i;
  for (size_t i = pl.offset + pl.size; i < kBlock; ++i) {
    ASSERT_EQ(block[i], 0xB1) << "tail neighbour " << i;
  }
  // What the device sees of the neighbours after the CPU's writes reached memory is the CPU's.
  std::vector<uint8_t> seen(kBlock);
  op().flush(block, kBlock);
  dev.read(DmaAddr(phys_of(block)), seen.data(), kBlock);
  for (size_t i = 0; i < pl.offset; ++i) ASSERT_EQ(seen[i], 0xA1) << i;
  EXPECT_EQ(op().stats().live_maps, 0u);
  EXPECT_EQ(plat_.pool(0).stats().used_slots, 0u);
}

INSTANTIATE_TEST_SUITE_P(Placements, SharedLineTest,
                         testing::Combine(testing::ValuesIn(kPlacements),
                                          testing::Values(DmaDirection::kFromDevice,
                                                          DmaDirection::kBidirectional)),
                         [](const testing::TestParamInfo<SharedLineTest::ParamType>& info) {
                           return std::string(std::get<0>(info.param).name) + "_" +
                                  (std::get<1>(info.param) == DmaDirection::kFromDevice ? "from"
                                                                                        : "bidi");
                         });

TEST_F(DataSafetyTest, CacheAlignmentIsThePlatformsLine) {
  EXPECT_EQ(op().cache_alignment(), 64u);
  HostPlatform wide(options(128));
  EXPECT_EQ(wide.op().cache_alignment(), 128u);
  DeviceDma dev(&wide.op(), kMask64);
  EXPECT_EQ(dev.cache_alignment(), 128u);
}

// Aligned to the line at both ends, a non-coherent device's receive buffer is mapped directly;
// shifted by one byte it is bounced; coherent devices and kToDevice never bounce for this.
TEST_F(DataSafetyTest, OnlyBuffersThatShareLinesAreBounced) {
  uint8_t* block = pages(8192);
  auto mapped_bounced = [&](DmaConstraints c, uint8_t* p, size_t n, DmaDirection d) {
    auto m = op().map_single(c, p, n, 0, d);
    EXPECT_TRUE(m.ok());
    bool b = m.ok() && m->bounced();
    if (m.ok()) op().unmap_single(*m);
    return b;
  };
  DmaConstraints nc = device(kMask64, false);
  DmaConstraints co = device(kMask64, true);
  EXPECT_FALSE(mapped_bounced(nc, block + 64, 4096, DmaDirection::kFromDevice));
  EXPECT_FALSE(mapped_bounced(nc, block, 64, DmaDirection::kBidirectional));
  EXPECT_TRUE(mapped_bounced(nc, block + 1, 4096, DmaDirection::kFromDevice));
  EXPECT_TRUE(mapped_bounced(nc, block + 64, 4095, DmaDirection::kBidirectional));
  EXPECT_FALSE(mapped_bounced(nc, block + 1, 4095, DmaDirection::kToDevice));
  EXPECT_FALSE(mapped_bounced(co, block + 1, 4095, DmaDirection::kFromDevice));
}

// Without a reachable bounce pool, a buffer that shares lines cannot be mapped safely: a clear
// kLayoutError, nothing changed.
TEST_F(DataSafetyTest, SharedLinesWithoutABouncePoolIsALayoutError) {
  HostPlatform::Options o = options();
  o.pools.clear();
  HostPlatform bare(o);
  auto pa = bare.pfa().alloc(0);
  ASSERT_TRUE(pa.ok());
  uint8_t* buf = bare.phys_to_virt(pa->value());
  uint64_t free_before = bare.pfa().free_pages();
  auto m = bare.op().map_single(device(kMask64, false), buf + 8, 100, 0, DmaDirection::kFromDevice);
  EXPECT_EQ(m.code(), ErrorCode::kLayoutError);
  EXPECT_EQ(bare.pfa().free_pages(), free_before);
  EXPECT_EQ(bare.op().stats().live_maps, 0u);
  ASSERT_TRUE(bare.pfa().free(*pa, 0).ok());
}

// ---- 2. Buffers outside the direct map --------------------------------------------------------

// A KernelDmaOp whose virt_to_phys also translates a vmalloc-like window page by page through a
// table the test fills in. Only coherent devices are used, so the cache methods do nothing.
class PagedDmaOp final : public KernelDmaOp {
 public:
  static constexpr uintptr_t kWindow = 0x7100'0000'0000;
  explicit PagedDmaOp(const Config& cfg) : KernelDmaOp(cfg) {}
  ~PagedDmaOp() { shutdown(); }
  void flush(const void*, size_t) override {}
  void invalidate(const void*, size_t) override {}
  void flush_invalidate(const void*, size_t) override {}
  Result<PhysAddr> virt_to_phys(const void* va) const override {
    auto v = reinterpret_cast<uintptr_t>(va);
    if (v < kWindow) return KernelDmaOp::virt_to_phys(va);
    auto it = pages_.find((v - kWindow) / 4096);
    if (it == pages_.end()) return ErrorCode::kInvalidArgument;
    return PhysAddr(it->second + (v & 4095));
  }
  void set_page(size_t index, uint64_t phys) { pages_[index] = phys; }
  void* window(size_t page, size_t offset = 0) {
    return reinterpret_cast<void*>(kWindow + page * 4096 + offset);
  }

 private:
  std::map<uint64_t, uint64_t> pages_;
};

class OutsideDirectMapTest : public DataSafetyTest {
 protected:
  OutsideDirectMapTest() : paged_(config()) {}
  KernelDmaOp::Config config() {
    KernelDmaOp::Config c = plat_.op().config();
    return c;
  }
  PagedDmaOp paged_;
};

TEST_F(OutsideDirectMapTest, ScatteredPagesAreRefusedNeverPartlyMapped) {
  uint8_t* p = pages(4 * 4096);
  uint64_t pp = phys_of(p);
  uint8_t* x = pages(4096);
  // Pages P, X, P + 2: contiguous virtually, not physically. The device would write P + 1.
  paged_.set_page(0, pp);
  paged_.set_page(1, phys_of(x));
  paged_.set_page(2, pp + 2 * 4096);
  Counters s = counters();
  auto m = paged_.map_single(device(kMask64, true), paged_.window(0, 100), 2 * 4096 + 10, 0,
                             DmaDirection::kFromDevice);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.code(), ErrorCode::kNotContiguous);
  EXPECT_EQ(m.error().addr, reinterpret_cast<uintptr_t>(paged_.window(1)));
  expect_unchanged(s);
  EXPECT_EQ(paged_.stats().live_maps, 0u);
  // A hole (an untranslatable page) in the middle is refused too.
  paged_.set_page(4, pp);
  paged_.set_page(6, pp + 2 * 4096);
  EXPECT_EQ(
      paged_
          .map_single(device(kMask64, true), paged_.window(4), 3 * 4096, 0, DmaDirection::kToDevice)
          .code(),
      ErrorCode::kInvalidArgument);
}

TEST_F(OutsideDirectMapTest, ContiguousPagesOutsideTheDirectMapAreMapped) {
  uint8_t* p = pages(4 * 4096);
  uint64_t pp = phys_of(p);
  for (size_t i = 0; i < 4; ++i) paged_.set_page(10 + i, pp + i * 4096);
  auto m = paged_.map_single(device(kMask64, true), paged_.window(10, 4000), 3 * 4096, 0,
                             DmaDirection::kToDevice);
  ASSERT_TRUE(m.ok());
  EXPECT_FALSE(m->bounced());
  EXPECT_EQ(m->dma_addr.value(), pp + 4000);
  paged_.unmap_single(*m);
  // The last byte exactly at a page's end, one byte at a page's start.
  auto one = paged_.map_single(device(kMask64, true), paged_.window(13, 4095), 1, 0,
                               DmaDirection::kToDevice);
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(one->dma_addr.value(), pp + 3 * 4096 + 4095);
  paged_.unmap_single(*one);
}

// ---- 5. One mapping cannot take the whole bounce pool ----------------------------------------

TEST_F(DataSafetyTest, BouncedMappingLargerThanTheMaximumIsALayoutError) {
  DmaConstraints low = device(kMaskLow, true);  // Buffers at the top of RAM bounce.
  size_t max = op().max_mapping_size(low);
  ASSERT_LT(max, plat_.pool(0).bytes());
  uint8_t* buf = pages(4ull << 20);
  Counters s = counters();
  EXPECT_EQ(op().map_single(low, buf, 4ull << 20, 0, DmaDirection::kToDevice).code(),
            ErrorCode::kLayoutError);
  EXPECT_EQ(op().map_single(low, buf, max + 1, 0, DmaDirection::kToDevice).code(),
            ErrorCode::kLayoutError);
  expect_unchanged(s);
  auto m = op().map_single(low, buf, max, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(m.ok());
  EXPECT_TRUE(m->bounced());
  op().unmap_single(*m);
  // A device that never bounces is not limited; through DeviceDma too.
  EXPECT_EQ(op().max_mapping_size(device(kMask64, true)), ~size_t{0});
  DeviceDma d(&op(), kMaskLow);
  EXPECT_EQ(d.max_mapping_size(), max);
  auto big = op().map_single(device(kMask64, true), buf, 4ull << 20, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(big.ok());
  EXPECT_FALSE(big->bounced());
  op().unmap_single(*big);
}

// ---- 6. Cache maintenance that silently does nothing -----------------------------------------

TEST_F(DataSafetyTest, NoCacheMaintenanceRefusesNonCoherentDevices) {
  HostPlatform::Options o = options();
  o.cache_maintenance = false;
  HostPlatform plat(o);
  auto pa = plat.pfa().alloc(0);
  ASSERT_TRUE(pa.ok());
  uint8_t* buf = plat.phys_to_virt(pa->value());
  uint64_t free_before = plat.pfa().free_pages();
  for (DmaDirection d :
       {DmaDirection::kToDevice, DmaDirection::kFromDevice, DmaDirection::kBidirectional}) {
    EXPECT_EQ(plat.op().map_single(device(kMask64, false), buf, 4096, 0, d).code(),
              ErrorCode::kNotSupported);
    // Bounced or not.
    EXPECT_EQ(plat.op().map_single(device(kMaskLow, false), buf, 4096, 0, d).code(),
              ErrorCode::kNotSupported);
  }
  EXPECT_EQ(plat.op().alloc_coherent(device(kMask64, false), Layout{4096, 1}).code(),
            ErrorCode::kNotSupported);
  EXPECT_EQ(plat.pfa().free_pages(), free_before);
  EXPECT_EQ(plat.pool(0).stats().used_slots, 0u);
  EXPECT_EQ(plat.op().stats().live_maps, 0u);
  EXPECT_EQ(plat.op().stats().coherent_live, 0u);
  // A coherent device needs no maintenance and is served.
  auto m = plat.op().map_single(device(kMask64, true), buf, 4096, 0, DmaDirection::kFromDevice);
  ASSERT_TRUE(m.ok());
  plat.op().unmap_single(*m);
  auto h = plat.op().alloc_coherent(device(kMask64, true), Layout{4096, 1});
  ASSERT_TRUE(h.ok());
  plat.op().dealloc_coherent(*h);
  ASSERT_TRUE(plat.pfa().free(*pa, 0).ok());
}

// ---- 7. A sync direction that contradicts the mapping ----------------------------------------

TEST_F(DataSafetyTest, ConfirmWriteWithAContradictingDirectionStillReachesTheDevice) {
  for (uint64_t mask : {kMask64, kMaskLow}) {  // Direct, then bounced.
    SCOPED_TRACE(mask == kMask64 ? "direct" : "bounced");
    uint8_t* buf = pages(4096);
    std::memset(buf, 0x11, 4096);
    HostDevice dev(&plat_, mask, false);
    auto m = op().map_single(device(mask, false), buf, 4096, 0, DmaDirection::kToDevice);
    ASSERT_TRUE(m.ok());
    std::memset(buf, 0x77, 4096);  // The CPU fills the buffer again for the next transfer...
    // ...and syncs with the wrong direction: the mapping's own governs (and it is reported).
    (void)op().confirm_write(*m, 0, 4096, DmaDirection::kFromDevice);
    std::vector<uint8_t> seen(4096);
    dev.read(m->dma_addr, seen.data(), seen.size());
    EXPECT_EQ(seen, std::vector<uint8_t>(4096, 0x77));
    op().unmap_single(*m);
  }
}

TEST_F(DataSafetyTest, PrepareReadWithAContradictingDirectionStillSeesTheDevice) {
  uint8_t* buf = pages(4096);
  HostDevice dev(&plat_, kMask64, false);
  auto m = op().map_single(device(kMask64, false), buf, 4096, 0, DmaDirection::kFromDevice);
  ASSERT_TRUE(m.ok());
  (void)buf[0];  // The CPU's cache holds the line.
  dev.fill(m->dma_addr, 0x5C, 4096);
  (void)op().prepare_read(*m, 0, 4096, DmaDirection::kToDevice);
  EXPECT_EQ(buf[0], 0x5C);
  EXPECT_EQ(buf[4095], 0x5C);
  op().unmap_single(*m);
}

// A receive buffer used again and again: the CPU writes it between transfers (clears it), hands
// it back with confirm_write, the device writes the next message. No line the CPU dirtied may be
// evicted over the device's data.
TEST_F(DataSafetyTest, ReusedReceiveBufferLosesNothingToTheCpusWrites) {
  uint8_t* buf = pages(4096);
  HostDevice dev(&plat_, kMask64, false);
  auto m = op().map_single(device(kMask64, false), buf, 4096, 0, DmaDirection::kFromDevice);
  ASSERT_TRUE(m.ok());
  for (uint8_t round = 1; round <= 3; ++round) {
    dev.fill(m->dma_addr, static_cast<uint8_t>(0x30 + round), 4096);
    ASSERT_TRUE(op().prepare_read(*m, 0, 4096, DmaDirection::kFromDevice).ok());
    ASSERT_EQ(buf[100], 0x30 + round);
    std::memset(buf, 0, 4096);  // Cleared for the next message.
    ASSERT_TRUE(op().confirm_write(*m, 0, 4096, DmaDirection::kFromDevice).ok());
  }
  dev.fill(m->dma_addr, 0x99, 4096);
  plat_.model().evict_all();
  op().unmap_single(*m);
  for (size_t i = 0; i < 4096; ++i) ASSERT_EQ(buf[i], 0x99) << i;
}

// ---- 11. A wrapping bus offset ---------------------------------------------------------------

// RAM at 1 GiB seen by the device from 0: bus_offset = -1 GiB (mod 2^64).
TEST_F(DataSafetyTest, NegativeBusOffsetMapsAndAllocates) {
  constexpr uint64_t kOffset = 0 - kRamBase;
  DmaConstraints c = device(kMask28, false);
  c.bus_offset = kOffset;
  HostDevice dev(&plat_, kMask28, false, kOffset);
  uint8_t* buf = pages(4096);
  std::memset(buf, 0x6D, 4096);
  auto m = op().map_single(c, buf, 4096, 0, DmaDirection::kBidirectional);
  ASSERT_TRUE(m.ok()) << error_code_name(m.code());
  EXPECT_FALSE(m->bounced());
  EXPECT_EQ(m->dma_addr.value(), phys_of(buf) - kRamBase);
  std::vector<uint8_t> seen(4096);
  dev.read(m->dma_addr, seen.data(), 4096);
  EXPECT_EQ(seen, std::vector<uint8_t>(4096, 0x6D));
  dev.fill(m->dma_addr, 0x2E, 4096);
  op().unmap_single(*m);
  EXPECT_EQ(buf[0], 0x2E);
  auto h = op().alloc_coherent(c, Layout{8192, 1});
  ASSERT_TRUE(h.ok()) << error_code_name(h.code());
  EXPECT_EQ(h->dma_addr.value(), h->phys.value() - kRamBase);
  EXPECT_LE(h->dma_addr.value() + 8191, kMask28);
  dev.fill(h->dma_addr, 0x3F, 8192);
  EXPECT_EQ(static_cast<uint8_t*>(h->cpu_addr)[8191], 0x3F);
  op().dealloc_coherent(*h);
  // The fast path of a coherent device too.
  c.coherence = DmaCoherence::kCoherent;
  auto f = op().map_single(c, buf, 4096, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->dma_addr.value(), phys_of(buf) - kRamBase);
  op().unmap_single(*f);
}

// A negative offset with a full mask: the device addresses wrap past 2^64 and every byte of RAM
// is reachable (found by fuzz_dma_mapping: a first version kept only the low piece).
TEST_F(DataSafetyTest, NegativeBusOffsetWithAFullMaskReachesAllMemory) {
  DmaConstraints c = device(kMask64, false);
  c.bus_offset = 0 - uint64_t{0x1000'0000};
  uint8_t* buf = pages(4096);
  auto m = op().map_single(c, buf, 4096, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(m.ok());
  EXPECT_FALSE(m->bounced());
  EXPECT_EQ(m->dma_addr.value(), phys_of(buf) - 0x1000'0000);
  op().unmap_single(*m);
  c.coherence = DmaCoherence::kCoherent;  // The fast path.
  auto f = op().map_single(c, buf, 4096, 0, DmaDirection::kToDevice);
  ASSERT_TRUE(f.ok());
  EXPECT_FALSE(f->bounced());
  op().unmap_single(*f);
  auto h = op().alloc_coherent(c, Layout{4096, 1});
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->dma_addr.value(), h->phys.value() - 0x1000'0000);
  op().dealloc_coherent(*h);
  EXPECT_EQ(op().max_mapping_size(c), ~size_t{0});
}

// A window that starts above 0 has a floor: what lies below it is out of reach.
TEST_F(DataSafetyTest, NegativeBusOffsetBeyondAllMemoryIsAMaskMismatch) {
  DmaConstraints c = device(kMask28, false);
  c.bus_offset = 0 - (kRamBase + (64ull << 20));  // DMA address 0 is the end of RAM.
  Counters s = counters();
  auto h = op().alloc_coherent(c, Layout{4096, 1});
  EXPECT_EQ(h.code(), ErrorCode::kDmaMaskNotMatch);
  EXPECT_GT(h.error().addr, kMask28);
  uint8_t* buf = pages(4096);
  s = counters();
  EXPECT_EQ(op().map_single(c, buf, 4096, 0, DmaDirection::kToDevice).code(),
            ErrorCode::kDmaMaskNotMatch);
  expect_unchanged(s);
}

// alloc_coherent's kDmaMaskNotMatch names a device address beyond the mask, as map_single's
// does, not a physical one.
TEST_F(DataSafetyTest, AllocCoherentMaskErrorNamesADeviceAddress) {
  DmaConstraints c = device(kMask30, true);
  c.bus_offset = 0x1000'0000;  // RAM at 1 GiB appears at 0x5000'0000 on the bus.
  Counters s = counters();
  auto h = op().alloc_coherent(c, Layout{4096, 1});
  ASSERT_EQ(h.code(), ErrorCode::kDmaMaskNotMatch);
  EXPECT_EQ(h.error().mask, kMask30);
  EXPECT_EQ(h.error().addr, kRamBase + 0x1000'0000 + 4095);
  expect_unchanged(s);
}

}  // namespace
