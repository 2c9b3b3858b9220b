// libFuzzer target: random operation sequences through the mapping layer (KernelDmaOp over the
// host platform: non-coherent cache model, page-frame allocator, two bounce pools) with simulated
// devices doing the DMA, and the misuse checker watching.
//
// Operations: map_single of part of one of eight buffers (below 1 GiB, between 1 and 4 GiB, above
// 4 GiB) for a device with a random mask (28, 30, 32 or 64 bits), coherence, forced bouncing,
// min_align_mask, bus offset and alignment; the device writing or reading part of a mapping;
// prepare_read / confirm_write of part of a mapping (with the CPU reading what the device wrote,
// or writing what the device then reads); unmap; alloc_coherent / dealloc_coherent; arming a
// fault point; and deliberate misuse (double unmap, wrong size, wrong direction, a sync outside
// the mapping, freeing through the wrong path, dropping a failed map unchecked).
//
// Checked after every step, against a model of what each mapping must hold:
//   - data: what the device reads of a mapping is what the CPU put there (at map time or through
//     confirm_write); what the CPU reads after prepare_read or unmap is what the device wrote
//     where it wrote, and the buffer's own bytes elsewhere (bounce hygiene included);
//   - a map succeeds directly exactly when the buffer is reachable and aligned and bouncing is not
//     forced; a bounced one lies in the right pool, keeps the min_align_mask bits, honours the
//     alignment in the device's address space and overlaps no other live mapping; every DMA
//     address is under the device's mask; failures carry the error the request deserves;
//   - coherent memory comes zeroed, under the mask, overlapping nothing live;
//   - accounting: live maps, coherent allocations, slots in use per pool and the checker's table
//     all equal the model; the allocator's and pools' invariants hold;
//   - the checker reports each deliberate misuse exactly once, refuses it (nothing changes), and
//     reports nothing else.
// At the end of each input everything is released and all accounting must be back where it was.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "arch/host/host_platform.h"
#include "dmakit/device_dma.h"
#include "dmakit/dma_debug.h"
#include "dmakit/support/fault_injection.h"
#include "tests/fuzz/common/fuzz_input.h"

namespace {

using support::FaultInjector;
using support::FaultSite;

constexpr uint64_t kMask28 = (1ull << 28) - 1;
constexpr uint64_t kMask30 = (1ull << 30) - 1;
constexpr uint64_t kMask32 = 0xFFFF'FFFFull;
constexpr size_t kRegions = 8;
constexpr size_t kRegionBytes = 64 * 1024;
constexpr size_t kMaxOps = 300;
constexpr size_t kDevices = 4;

bool copies_out(DmaDirection d) {
  return d != DmaDirection::kToDevice;
}
bool copies_in(DmaDirection d) {
  return d != DmaDirection::kFromDevice;
}

void print_sink(void*, const char* line) {
  std::fprintf(stderr, "%s\n", line);
}

struct World {
  std::unique_ptr<HostPlatform> plat;
  uint8_t* region[kRegions] = {};
  uint32_t device_id[kDevices] = {};
  uint64_t baseline_free_pages = 0;
};

World& world() {
  static World* w = [] {
    auto* w = new World;
    HostPlatform::Options o;
    o.ram.push_back(PhysRange{PhysAddr(0x3C00'0000), 128ull << 20});   // Straddles 1 GiB.
    o.ram.push_back(PhysRange{PhysAddr(0x1'0000'0000), 32ull << 20});  // Above 4 GiB.
    o.pools.push_back(HostPlatform::PoolSpec{4ull << 20, kMask30});
    o.pools.push_back(HostPlatform::PoolSpec{1ull << 20, kMask32, 512});
    o.cpu_caches = 1;  // The bounced maps and unmaps go through the per-CPU slot cache.
    w->plat = std::make_unique<HostPlatform>(o);
    PageFrameAllocator& pfa = w->plat->pfa();
    unsigned order = PageFrameAllocator::order_for(kRegionBytes);
    std::vector<uint64_t> rejected;  // Blocks in the wrong place, given back at the end.
    for (size_t i = 0; i < kRegions; ++i) {
      uint64_t limit = i < 3 ? kMask30 : i < 6 ? kMask32 : ~0ull;
      uint64_t floor = i < 3 ? 0 : i < 6 ? kMask30 + 1 : kMask32 + 1;
      for (;;) {
        auto pa = pfa.alloc(order, limit);
        FUZZ_CHECK(pa.ok());
        if (pa->value() >= floor) {
          w->region[i] = w->plat->phys_to_virt(pa->value());
          break;
        }
        rejected.push_back(pa->value());
      }
    }
    for (uint64_t pa : rejected) FUZZ_CHECK(pfa.free(PhysAddr(pa), order).ok());
    for (uint32_t& id : w->device_id) id = DmaDebug::new_device_id();
    w->baseline_free_pages = pfa.free_pages();
    DmaDebug::set_sink(print_sink, nullptr);
    return w;
  }();
  return *w;
}

struct Mapping {
  size_t region;
  size_t off;
  DmaConstraints c;
  DmaMapHandle h;
  std::vector<uint8_t> expect;  // What the mapping holds, as the device sees it.
  bool cpu_synced;              // The CPU's view equals `expect` (nothing written since a sync).
};

struct Coherent {
  DmaConstraints c;
  DmaHandle h;
  std::vector<uint8_t> expect;
};

class Harness {
 public:
  explicit Harness(FuzzInput& in) : in_(in), w_(world()), op_(w_.plat->op()) {}

  void run() {
    FUZZ_CHECK(DmaDebug::live_entries() == 0);
    DmaDebug::reset();
    for (size_t step = 0; step < kMaxOps && !in_.done(); ++step) {
      switch (in_.pick(16)) {
        case 0:
        case 1:
        case 2:
          map();
          break;
        case 3:
        case 4:
          device_write();
          break;
        case 5:
          device_read();
          break;
        case 6:
        case 7:
          sync_for_cpu();
          break;
        case 8:
          cpu_write();
          break;
        case 9:
        case 10:
          unmap();
          break;
        case 11:
          alloc_coherent();
          break;
        case 12:
          free_coherent();
          break;
        case 13:
          arm_fault();
          break;
        default:
          misuse();
          break;
      }
      check();
    }
    FaultInjector::disarm_all();
    while (!maps_.empty()) unmap_at(maps_.size() - 1);
    while (!coh_.empty()) free_coherent_at(coh_.size() - 1);
    check();
    FUZZ_CHECK(w_.plat->pfa().free_pages() == w_.baseline_free_pages);
    FUZZ_CHECK(DmaDebug::live_entries() == 0);
    FUZZ_CHECK(DmaDebug::total() == expected_reports_);
  }

 private:
  // ---- the device and the request ----

  DmaConstraints constraints() {
    static constexpr uint64_t kMasks[] = {kMask28, kMask30, kMask32, ~0ull};
    // Negative offsets (mod 2^64) too: RAM seen by the device below where the CPU sees it.
    static constexpr uint64_t kOffsets[] = {0,
                                            0,
                                            0x1000'0000,
                                            0x800,
                                            0x40,
                                            0x4000'0000,
                                            0 - uint64_t{0x1000'0000},
                                            0 - uint64_t{0x3C00'0000}};
    DmaConstraints c;
    c.dma_mask = kMasks[in_.pick(4)];
    c.bus_offset = kOffsets[in_.pick(8)];
    c.coherence = dma_coherence(in_.boolean());
    c.force_bounce = in_.range(0, 3) == 0;
    c.min_align_mask = in_.boolean() ? 0 : (uint64_t{1} << in_.range(1, 13)) - 1;
    size_t d = in_.pick(kDevices);
    c.device_id = w_.device_id[d];
    static const char* const kNames[] = {"dev0", "dev1", nullptr, "dev3"};
    c.name = kNames[d];
    return c;
  }

  HostDevice device(const DmaConstraints& c) {
    return HostDevice(w_.plat.get(), c.dma_mask, c.coherence == DmaCoherence::kCoherent,
                      c.bus_offset);
  }

  uint64_t phys_of(const void* p) const {
    return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p) - w_.plat->direct_map_offset());
  }

  bool region_busy(size_t r) const {
    for (const Mapping& m : maps_) {
      if (m.region == r) return true;
    }
    return false;
  }

  // Whether the armed fault at `site` fired during the call that began with `before` hits.
  bool fired(FaultSite site, uint64_t before) {
    size_t i = static_cast<size_t>(site);
    uint64_t now = FaultInjector::hits(site);
    bool f = armed_[i] != 0 && now > before && now == armed_[i];
    if (f) armed_[i] = 0;
    return f;
  }

  // ---- operations ----

  void map() {
    size_t r = in_.pick(kRegions);
    if (region_busy(r)) return;
    DmaConstraints c = constraints();
    size_t off = in_.range(0, 4095);
    size_t size = in_.range(1, in_.boolean() ? 300 : 20000);
    size_t align = in_.boolean() ? size_t{1} << in_.range(0, 12) : 0;
    auto dir = static_cast<DmaDirection>(in_.pick(3));
    uint8_t* buf = w_.region[r] + off;
    uint8_t seed = in_.u8();
    for (size_t i = 0; i < size; ++i) buf[i] = static_cast<uint8_t>(seed + i * 31);

    uint64_t p = phys_of(buf);
    // The device reaches [q, q + n) when its DMA addresses (phys + bus_offset, mod 2^64) all lie
    // in [0, dma_mask].
    auto reaches = [&c](uint64_t q, uint64_t n) {
      uint64_t d = q + c.bus_offset;
      return d <= c.dma_mask && n - 1 <= c.dma_mask - d;
    };
    bool reachable = reaches(p, size);
    bool aligned = align <= 1 || (p + c.bus_offset) % align == 0;
    // A receive buffer of a non-coherent device sharing a cache line with other data bounces.
    size_t line = op_.cache_alignment();
    auto va = reinterpret_cast<uintptr_t>(buf);
    bool lines = c.coherence != DmaCoherence::kCoherent && dir != DmaDirection::kToDevice &&
                 ((va | (va + size)) & (line - 1));
    bool direct = !c.force_bounce && reachable && aligned && !lines;
    bool only_lines = lines && !c.force_bounce && reachable && aligned;
    int pool = -1;  // The highest pool the device reaches wholly.
    for (size_t i = 0; i < w_.plat->num_pools(); ++i) {
      const BouncePool& bp = w_.plat->pool(i);
      if (reaches(bp.base().value(), bp.bytes()) &&
          (pool < 0 || bp.base() > w_.plat->pool(static_cast<size_t>(pool)).base())) {
        pool = static_cast<int>(i);
      }
    }

    Snapshot before = snapshot();
    uint64_t map_hits = FaultInjector::hits(FaultSite::kMapping);
    uint64_t slot_hits = FaultInjector::hits(FaultSite::kBounceSlot);
    auto res = op_.map_single(c, buf, size, align, dir);
    bool map_fault = fired(FaultSite::kMapping, map_hits);
    bool slot_fault = fired(FaultSite::kBounceSlot, slot_hits);

    if (!res.ok()) {
      expect_snapshot(before);
      ErrorCode e = res.code();
      if (map_fault || slot_fault) {
        FUZZ_CHECK(e == ErrorCode::kNoMemory);
        return;
      }
      FUZZ_CHECK(!direct);
      if (pool < 0) {
        FUZZ_CHECK(e == (only_lines ? ErrorCode::kLayoutError : ErrorCode::kDmaMaskNotMatch));
        return;
      }
      FUZZ_CHECK(e == ErrorCode::kNoMemory || e == ErrorCode::kLayoutError);
      return;
    }
    FUZZ_CHECK(!map_fault && !slot_fault);
    const DmaMapHandle& h = *res;
    uint64_t dma = h.dma_addr.value();
    FUZZ_CHECK(h.size == size && h.cpu_addr == buf && h.direction == dir);
    FUZZ_CHECK(dma + size - 1 <= c.dma_mask && dma + size - 1 >= dma);
    FUZZ_CHECK(align <= 1 || dma % align == 0);
    FUZZ_CHECK(h.bounced() == !direct);
    if (direct) {
      FUZZ_CHECK(dma == p + c.bus_offset);
    } else {
      // The highest pool the device reaches, or, when that one is full, another it reaches wholly
      // (KernelDmaOp's fallback).
      FUZZ_CHECK(pool >= 0 && h.bounce_pool_index < w_.plat->num_pools());
      const BouncePool& bp = w_.plat->pool(h.bounce_pool_index);
      FUZZ_CHECK(h.bounce_pool_index == pool || reaches(bp.base().value(), bp.bytes()));
      uint64_t slot = dma - c.bus_offset;
      FUZZ_CHECK(bp.contains(PhysAddr(slot)) && bp.contains(PhysAddr(slot + size - 1)));
      FUZZ_CHECK((slot & c.min_align_mask) == (p & c.min_align_mask));
      for (const Mapping& m : maps_) {
        if (!m.h.bounced()) continue;
        uint64_t a = m.h.dma_addr.value() - m.c.bus_offset;
        FUZZ_CHECK(slot + size <= a || a + m.h.size <= slot);  // No two live slots overlap.
      }
    }
    Mapping m{r, off, c, h, std::vector<uint8_t>(buf, buf + size), true};
    // Whatever the direction, the device sees the buffer's bytes: for kFromDevice that is the
    // hygiene rule (never a previous user's bytes in the slot).
    std::vector<uint8_t> seen(size);
    device(c).read(h.dma_addr, seen.data(), size);
    FUZZ_CHECK(seen == m.expect);
    maps_.push_back(std::move(m));
  }

  // The newest mapping half of the time (so that map, DMA and sync chains come often), else any.
  Mapping* pick_mapping() {
    if (maps_.empty()) return nullptr;
    return in_.boolean() ? &maps_.back() : &maps_[in_.pick(maps_.size())];
  }

  // A sub-range [off, off + len) of a mapping of `size` bytes, len >= 1.
  void sub_range(size_t size, size_t* off, size_t* len) {
    *off = in_.range(0, size - 1);
    *len = in_.range(1, size - *off);
  }

  void device_write() {
    Mapping* m = pick_mapping();
    if (m == nullptr || m->h.direction == DmaDirection::kToDevice) return;
    size_t off, len;
    sub_range(m->h.size, &off, &len);
    uint8_t v = in_.u8();
    std::vector<uint8_t> data(len);
    for (size_t i = 0; i < len; ++i) data[i] = static_cast<uint8_t>(v ^ (i * 7));
    device(m->c).write(m->h.dma_addr + off, data.data(), len);
    std::memcpy(m->expect.data() + off, data.data(), len);
    m->cpu_synced = false;
  }

  void device_read() {
    Mapping* m = pick_mapping();
    if (m == nullptr) return;
    size_t off, len;
    sub_range(m->h.size, &off, &len);
    std::vector<uint8_t> seen(len);
    device(m->c).read(m->h.dma_addr + off, seen.data(), len);
    FUZZ_CHECK(std::memcmp(seen.data(), m->expect.data() + off, len) == 0);
  }

  void sync_for_cpu() {
    Mapping* m = pick_mapping();
    if (m == nullptr) return;
    DmaDirection dir = m->h.direction;
    if (dir == DmaDirection::kBidirectional && in_.boolean()) dir = DmaDirection::kFromDevice;
    size_t off, len;
    sub_range(m->h.size, &off, &len);
    if (in_.boolean()) {
      off = 0;
      len = m->h.size;
    }
    FUZZ_CHECK(op_.prepare_read(m->h, off, len, dir).ok());
    if (!copies_out(dir)) return;
    const uint8_t* cpu = static_cast<const uint8_t*>(m->h.cpu_addr);
    FUZZ_CHECK(std::memcmp(cpu + off, m->expect.data() + off, len) == 0);
    if (off == 0 && len == m->h.size) m->cpu_synced = true;
  }

  void cpu_write() {
    Mapping* m = pick_mapping();
    if (m == nullptr || !copies_in(m->h.direction)) return;
    if (!m->cpu_synced) {
      // The CPU takes the buffer back before writing into it (it may share lines with what the
      // device wrote).
      FUZZ_CHECK(op_.prepare_read(m->h, 0, m->h.size, m->h.direction).ok());
      m->cpu_synced = true;
    }
    DmaDirection dir = m->h.direction;
    if (dir == DmaDirection::kBidirectional && in_.boolean()) dir = DmaDirection::kToDevice;
    size_t off, len;
    sub_range(m->h.size, &off, &len);
    uint8_t v = in_.u8();
    auto* cpu = static_cast<uint8_t*>(m->h.cpu_addr);
    for (size_t i = 0; i < len; ++i) cpu[off + i] = static_cast<uint8_t>(v + i);
    FUZZ_CHECK(op_.confirm_write(m->h, off, len, dir).ok());
    std::memcpy(m->expect.data() + off, cpu + off, len);
    std::vector<uint8_t> seen(len);
    device(m->c).read(m->h.dma_addr + off, seen.data(), len);
    FUZZ_CHECK(std::memcmp(seen.data(), m->expect.data() + off, len) == 0);
  }

  void unmap_at(size_t i) {
    Mapping m = std::move(maps_[i]);
    maps_.erase(maps_.begin() + static_cast<long>(i));
    op_.unmap_single(m.h);
    // The CPU owns the buffer again: it holds what the device wrote and its own bytes elsewhere.
    FUZZ_CHECK(std::memcmp(m.h.cpu_addr, m.expect.data(), m.h.size) == 0);
    stale_.push_back(m.h);
    if (stale_.size() > 16) stale_.erase(stale_.begin());
  }

  void unmap() {
    if (!maps_.empty()) unmap_at(in_.pick(maps_.size()));
  }

  void alloc_coherent() {
    DmaConstraints c = constraints();
    size_t size = in_.range(1, 64 * 1024);
    size_t align = size_t{1} << in_.range(0, 16);
    Snapshot before = snapshot();
    uint64_t hits = FaultInjector::hits(FaultSite::kPageAlloc);
    auto res = op_.alloc_coherent(c, Layout{size, align});
    bool fault = fired(FaultSite::kPageAlloc, hits);
    if (!res.ok()) {
      expect_snapshot(before);
      ErrorCode e = res.code();
      FUZZ_CHECK(e == ErrorCode::kNoMemory || e == ErrorCode::kDmaMaskNotMatch);
      if (fault) FUZZ_CHECK(e == ErrorCode::kNoMemory);
      if (c.dma_mask == ~0ull && c.bus_offset == 0 && !fault) {
        fuzz_fail(__FILE__, __LINE__, "an unconstrained coherent allocation failed");
      }
      return;
    }
    FUZZ_CHECK(!fault);
    const DmaHandle& h = *res;
    uint64_t dma = h.dma_addr.value();
    FUZZ_CHECK(dma == h.phys.value() + c.bus_offset);
    FUZZ_CHECK(dma + size - 1 <= c.dma_mask);
    FUZZ_CHECK(h.phys.value() % align == 0 && h.phys.value() % PageFrameAllocator::kPageSize == 0);
    uint64_t bytes = PageFrameAllocator::kPageSize << h.order;
    FUZZ_CHECK(bytes >= size);
    // Overlaps nothing live: the buffers, the pools, other coherent blocks.
    uint64_t lo = h.phys.value(), hi = lo + bytes;
    for (uint8_t* reg : w_.region) {
      uint64_t a = phys_of(reg);
      FUZZ_CHECK(hi <= a || a + kRegionBytes <= lo);
    }
    for (size_t i = 0; i < w_.plat->num_pools(); ++i) {
      uint64_t a = w_.plat->pool(i).base().value();
      FUZZ_CHECK(hi <= a || a + w_.plat->pool(i).bytes() <= lo);
    }
    for (const Coherent& o : coh_) {
      uint64_t a = o.h.phys.value();
      FUZZ_CHECK(hi <= a || a + (PageFrameAllocator::kPageSize << o.h.order) <= lo);
    }
    // Zeroed, as the CPU and as the device see it.
    const auto* cpu = static_cast<const uint8_t*>(h.cpu_addr);
    std::vector<uint8_t> zero(size, 0), seen(size, 1);
    FUZZ_CHECK(std::memcmp(cpu, zero.data(), size) == 0);
    device(c).read(h.dma_addr, seen.data(), size);
    FUZZ_CHECK(seen == zero);
    // Dirty it for whoever gets the memory next; the model needs the flush to show the device.
    uint8_t v = in_.u8();
    std::vector<uint8_t> data(size);
    for (size_t i = 0; i < size; ++i) data[i] = static_cast<uint8_t>(v * 3 + i);
    std::memcpy(h.cpu_addr, data.data(), size);
    op_.flush(h.cpu_addr, size);
    coh_.push_back(Coherent{c, h, std::move(data)});
  }

  void free_coherent_at(size_t i) {
    Coherent co = std::move(coh_[i]);
    coh_.erase(coh_.begin() + static_cast<long>(i));
    std::vector<uint8_t> seen(co.expect.size());
    device(co.c).read(co.h.dma_addr, seen.data(), seen.size());
    FUZZ_CHECK(seen == co.expect);
    op_.dealloc_coherent(co.h);
  }

  void free_coherent() {
    if (!coh_.empty()) free_coherent_at(in_.pick(coh_.size()));
  }

  void arm_fault() {
    auto site = static_cast<FaultSite>(in_.pick(static_cast<size_t>(FaultSite::kCount)));
    uint64_t n = in_.range(1, 3);
    armed_[static_cast<size_t>(site)] = n;
    FaultInjector::fail_nth(site, n);
  }

  // ---- deliberate misuse: reported once, refused, nothing changes ----

  void misuse() {
    Snapshot before = snapshot();
    uint64_t reports = DmaDebug::total();
    switch (in_.pick(6)) {
      case 0: {  // Unmap of a stale handle.
        if (stale_.empty()) return;
        const DmaMapHandle& h = stale_[in_.pick(stale_.size())];
        for (const Mapping& m : maps_) {
          if (m.h.dma_addr == h.dma_addr && m.h.device_id == h.device_id &&
              m.h.cpu_addr == h.cpu_addr && m.h.size == h.size && m.h.direction == h.direction) {
            return;  // Indistinguishable from that live mapping.
          }
        }
        op_.unmap_single(h);
        break;
      }
      case 1: {  // A sync outside the mapping.
        Mapping* m = pick_mapping();
        if (m == nullptr) return;
        size_t off = m->h.size - in_.range(0, m->h.size - 1);
        size_t len = m->h.size - off + in_.range(1, 100);
        uint64_t n = DmaDebug::count(DmaDebugKind::kSyncOutOfRange);
        auto r = in_.boolean() ? op_.prepare_read(m->h, off, len, m->h.direction)
                               : op_.confirm_write(m->h, off, len, m->h.direction);
        FUZZ_CHECK(r.code() == ErrorCode::kOutOfRange);
        FUZZ_CHECK(DmaDebug::count(DmaDebugKind::kSyncOutOfRange) == n + 1);
        break;
      }
      case 2: {  // A sync in a direction the mapping does not allow: reported, and the
                 // mapping's own direction governs what is done (nothing, for these two).
        Mapping* m = pick_mapping();
        if (m == nullptr || m->h.direction == DmaDirection::kBidirectional) return;
        uint64_t n = DmaDebug::count(DmaDebugKind::kDirectionMismatch);
        auto r = m->h.direction == DmaDirection::kToDevice
                     ? op_.prepare_read(m->h, 0, m->h.size, DmaDirection::kFromDevice)
                     : op_.confirm_write(m->h, 0, m->h.size, DmaDirection::kToDevice);
        FUZZ_CHECK(r.ok());
        FUZZ_CHECK(DmaDebug::count(DmaDebugKind::kDirectionMismatch) == n + 1);
        break;
      }
      case 3: {  // Unmap with another size.
        Mapping* m = pick_mapping();
        if (m == nullptr) return;
        DmaMapHandle wrong = m->h;
        wrong.size += in_.range(1, 64);
        uint64_t n = DmaDebug::count(DmaDebugKind::kSizeMismatch);
        op_.unmap_single(wrong);
        FUZZ_CHECK(DmaDebug::count(DmaDebugKind::kSizeMismatch) == n + 1);
        break;
      }
      case 4: {  // A streaming mapping freed as coherent memory.
        Mapping* m = pick_mapping();
        if (m == nullptr) return;
        for (const Coherent& co : coh_) {
          if (co.h.dma_addr == m->h.dma_addr) return;  // Then it would name that allocation.
        }
        DmaHandle as_coherent;
        as_coherent.cpu_addr = m->h.cpu_addr;
        as_coherent.dma_addr = m->h.dma_addr;
        as_coherent.phys = PhysAddr(phys_of(m->h.cpu_addr));
        as_coherent.layout = Layout{m->h.size, 1};
        as_coherent.device_id = m->h.device_id;
        uint64_t n = DmaDebug::count(DmaDebugKind::kWrongFreeType);
        op_.dealloc_coherent(as_coherent);
        FUZZ_CHECK(DmaDebug::count(DmaDebugKind::kWrongFreeType) == n + 1);
        break;
      }
      default: {  // A failed map dropped unchecked.
        DmaConstraints c = constraints();
        c.dma_mask = 0xFFFF;  // Under all memory and every pool: the map must fail.
        c.bus_offset = 0;
        DeviceDma dev(&op_, c);
        uint64_t n = DmaDebug::count(DmaDebugKind::kErrorIgnored);
        {
          auto dropped = dev.map(w_.region[in_.pick(kRegions)], 64, DmaDirection::kToDevice);
        }
        FUZZ_CHECK(DmaDebug::count(DmaDebugKind::kErrorIgnored) == n + 1);
        break;
      }
    }
    FUZZ_CHECK(DmaDebug::total() == reports + 1);
    ++expected_reports_;
    expect_snapshot(before);
  }

  // ---- accounting ----

  struct Snapshot {
    uint64_t free_pages;
    uint64_t used_slots[KernelDmaOp::kMaxPools];
    uint64_t live_maps;
    uint64_t coherent_live;
    size_t entries;
  };

  Snapshot snapshot() {
    Snapshot s{};
    s.free_pages = w_.plat->pfa().free_pages();
    for (size_t i = 0; i < w_.plat->num_pools(); ++i) {
      s.used_slots[i] = w_.plat->pool(i).stats().used_slots;
    }
    s.live_maps = op_.stats().live_maps;
    s.coherent_live = op_.stats().coherent_live;
    s.entries = DmaDebug::live_entries();
    return s;
  }

  void expect_snapshot(const Snapshot& a) {
    Snapshot b = snapshot();
    FUZZ_CHECK(a.free_pages == b.free_pages);
    for (size_t i = 0; i < KernelDmaOp::kMaxPools; ++i)
      FUZZ_CHECK(a.used_slots[i] == b.used_slots[i]);
    FUZZ_CHECK(a.live_maps == b.live_maps);
    FUZZ_CHECK(a.coherent_live == b.coherent_live);
    FUZZ_CHECK(a.entries == b.entries);
  }

  void check() {
    Snapshot s = snapshot();
    FUZZ_CHECK(s.live_maps == maps_.size());
    FUZZ_CHECK(s.coherent_live == coh_.size());
    FUZZ_CHECK(s.entries == maps_.size() + coh_.size());
    uint64_t slots[KernelDmaOp::kMaxPools] = {};
    for (const Mapping& m : maps_) {
      if (m.h.bounced()) slots[m.h.bounce_pool_index] += m.h.bounce_num_slots;
    }
    for (size_t i = 0; i < w_.plat->num_pools(); ++i) {
      FUZZ_CHECK(s.used_slots[i] == slots[i]);
      FUZZ_CHECK(w_.plat->pool(i).check_invariants());
    }
    uint64_t coherent_pages = 0;
    for (const Coherent& co : coh_) coherent_pages += uint64_t{1} << co.h.order;
    FUZZ_CHECK(s.free_pages + coherent_pages == w_.baseline_free_pages);
    FUZZ_CHECK(w_.plat->pfa().check_invariants());
    FUZZ_CHECK(DmaDebug::total() == expected_reports_);
  }

  FuzzInput& in_;
  World& w_;
  HostDmaOp& op_;
  std::vector<Mapping> maps_;
  std::vector<Coherent> coh_;
  std::vector<DmaMapHandle> stale_;
  uint64_t armed_[static_cast<size_t>(FaultSite::kCount)] = {};
  uint64_t expected_reports_ = 0;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FaultInjector::disarm_all();
  FuzzInput in(data, size);
  Harness h(in);
  h.run();
  FaultInjector::disarm_all();
  return 0;
}
