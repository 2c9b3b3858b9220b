// libFuzzer target: random operation sequences on a BouncePool of random geometry, checked
// against a shadow map of its slots.
//
// The input first picks the geometry (slot size 64..4096, 1..2048 slots, a base address anywhere
// in a 48-bit physical space), then a sequence of operations: alloc with any size, original
// address, min_align_mask and alignment (valid or not), free of a live allocation, free of
// something that is not one (a stale copy, an altered copy), arming the kBounceSlot fault point,
// draining the cache, and (when the input turns the per-CPU caches on, for 1-4 CPUs) switching
// the CPU that makes the calls. After every step:
//   - check_invariants() holds, and used_slots equals the slots of the live allocations;
//   - an allocation lies inside the pool, within the slots it names, overlaps no live one, keeps
//     the bits of min_align_mask of the original address, and honours the alignment;
//   - the bytes written into every live allocation are still there (the pool never writes its
//     memory, and nobody else was handed those slots);
//   - a kLayoutError is returned exactly for requests that are malformed or that no placement in
//     the whole pool could satisfy; a kNoMemory only when no free run is large enough for the
//     good-fit search to be sure of (twice the slots needed, alignment slack included), and never
//     in an empty pool for a request the pool can hold (with CPU caches too: a request that finds
//     no room takes every CPU's cached blocks back before it fails);
//   - a bad free is refused (kNotFound), counted in invalid_frees, and changes nothing else;
//   - each request is made for one of three devices (anonymous, one with a random quota, one
//     without): device_slots() of each equals the slots of its live allocations, a request that
//     would take the quota device over its quota is refused with kNoMemory (counted in
//     quota_failures), and no other request is.
// At the end every allocation is freed; after a drain the pool is one free block again.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <vector>

#include "dmakit/bounce_pool.h"
#include "dmakit/support/fault_injection.h"
#include "tests/fuzz/common/fuzz_input.h"

namespace {

constexpr size_t kMaxOps = 500;
constexpr size_t kArenaBytes = 8u << 20;

// The CPU the harness is calling from (BouncePool::enable_cpu_caches).
unsigned g_cpu = 0;
unsigned current_cpu() {
  return g_cpu;
}

uint8_t* arena() {
  static uint8_t* a = new uint8_t[kArenaBytes];
  return a;
}

struct Live {
  BounceSlot slot;
  uint8_t tag;
  unsigned device;  // Index into Harness::devices_.
};

class Harness {
 public:
  explicit Harness(FuzzInput& in) : in_(in) {}
  // The end-of-life check (in debug builds: everything given back), which run() leaves true.
  ~Harness() { pool_.shutdown(); }

  void run() {
    slot_size_ = size_t{1} << in_.range(6, 12);
    num_slots_ = static_cast<uint32_t>(in_.range(1, 2048));
    bytes_ = num_slots_ * slot_size_;
    base_ = (in_.range(0, (uint64_t{1} << 36) - 1) * slot_size_) & ((uint64_t{1} << 48) - 1);
    meta_.assign(BouncePool::metadata_size(bytes_, slot_size_) / 4 + 1, 0);
    // The largest mapping: the default (kMaxMapping or the whole pool), or any valid choice.
    BouncePool::Options options;
    options.slot_size = slot_size_;
    if (in_.boolean()) options.max_mapping = static_cast<size_t>(in_.range(slot_size_, bytes_));
    auto r = pool_.init(PhysAddr(base_), bytes_, arena(), meta_.data(), meta_.size() * 4, options);
    FUZZ_CHECK(r.ok());
    size_t max_mapping =
        options.max_mapping != 0
            ? options.max_mapping
            : (bytes_ < BouncePool::kMaxMapping ? bytes_ : BouncePool::kMaxMapping);
    FUZZ_CHECK(pool_.max_mapping_size() == max_mapping);
    owner_.assign(num_slots_, 0);
    devices_[1].quota = in_.range(1, bytes_);
    g_cpu = 0;
    if (in_.boolean()) {
      num_cpus_ = static_cast<unsigned>(in_.range(1, 4));
      FUZZ_CHECK(pool_.enable_cpu_caches(&current_cpu, num_cpus_).ok());
    }
    for (size_t step = 0; step < kMaxOps && !in_.done(); ++step) {
      switch (in_.pick(11)) {
        case 0:
        case 1:
        case 2:
        case 3:
          alloc();
          break;
        case 4:
        case 5:
        case 6:
          free_live();
          break;
        case 7:
          bad_free();
          break;
        case 8:
          fault_nth_ = in_.range(1, 3);
          support::FaultInjector::fail_nth(support::FaultSite::kBounceSlot, fault_nth_);
          break;
        case 9:
          pool_.drain_cache();
          break;
        default:
          // Index num_cpus_ stands for a CPU without a cache (beyond those enabled).
          if (num_cpus_ != 0) g_cpu = static_cast<unsigned>(in_.pick(num_cpus_ + 1));
          break;
      }
      check();
    }
    support::FaultInjector::disarm_all();
    while (!live_.empty()) free_one(live_.begin());
    for (unsigned c = 0; c < num_cpus_; ++c) {
      g_cpu = c;
      pool_.drain_cache();
    }
    g_cpu = 0;
    pool_.drain_cache();
    check();
    FUZZ_CHECK(pool_.stats().used_slots == 0);
    FUZZ_CHECK(pool_.free_block_count() == 1);
  }

 private:
  uint8_t* cpu(uint64_t phys) { return arena() + (phys - base_); }

  // Whether any placement in the whole (empty) pool satisfies addr & low == target.
  bool feasible(uint64_t size, uint64_t low, uint64_t target) const {
    uint64_t first = (target - base_) & low;  // Lowest offset from base with the right bits.
    return first < bytes_ && size <= bytes_ - first;
  }

  // Length of the longest run of free slots.
  uint64_t longest_free_run() const {
    uint64_t best = 0, run = 0;
    for (uint32_t s = 0; s < num_slots_; ++s) {
      run = owner_[s] == 0 ? run + 1 : 0;
      if (run > best) best = run;
    }
    return best;
  }

  void alloc() {
    uint64_t size;
    switch (in_.pick(8)) {
      case 0:
        size = in_.range(0, bytes_ + slot_size_);  // Anything, including 0 and too large.
        break;
      case 1:
        size = in_.range(1, bytes_);
        break;
      default:
        size = in_.range(1, 4 * slot_size_);  // Mostly a few slots.
        break;
    }
    uint64_t orig = in_.boolean() ? in_.u64() : base_ + in_.range(0, 0xFFFF);
    uint64_t mask = 0;
    switch (in_.pick(4)) {
      case 0:
        mask = (uint64_t{1} << in_.range(1, 16)) - 1;
        break;
      case 1:
        mask = in_.range(0, 0xFFFF);  // Usually not of the form 2^k - 1.
        break;
      default:
        break;
    }
    uint64_t align = 0;
    switch (in_.pick(4)) {
      case 0:
        align = uint64_t{1} << in_.range(0, 16);
        break;
      case 1:
        align = in_.range(0, 0x10000);
        break;
      default:
        break;
    }
    uint64_t align_mask = align == 0 ? 0 : align - 1;
    uint64_t target = orig & mask;
    bool malformed = size == 0 || size > pool_.max_mapping_size() || (align & align_mask) != 0 ||
                     (mask & (mask + 1)) != 0 || (target & align_mask) != 0;
    uint64_t low = mask | align_mask;
    bool can_fit = !malformed && feasible(size, low, target);
    unsigned d = static_cast<unsigned>(in_.pick(kDevices));
    const BounceDevice& dev = devices_[d];
    uint64_t slots_needed = ((target & (slot_size_ - 1)) + size + slot_size_ - 1) / slot_size_;
    uint64_t quota_slots = (dev.quota + slot_size_ - 1) / slot_size_;
    bool over_quota = can_fit && dev.quota != 0 && held_[d] + slots_needed > quota_slots;

    BouncePool::Stats before = pool_.stats();
    bool injected = false;
    auto attempt = [&] {
      uint64_t hits = support::FaultInjector::hits(support::FaultSite::kBounceSlot);
      auto res = pool_.alloc(size, PhysAddr(orig), mask, align, dev);
      uint64_t now = support::FaultInjector::hits(support::FaultSite::kBounceSlot);
      FUZZ_CHECK(now == hits + 1 || (res.code() == ErrorCode::kLayoutError && now == hits));
      injected = fault_nth_ != 0 && now > hits && now == fault_nth_;
      if (injected) fault_nth_ = 0;
      return res;
    };
    // With CPU caches, a request that finds no room takes every CPU's cached blocks back itself
    // before it fails: judged exactly as without caches.
    auto r = attempt();

    if (!r.ok()) {
      FUZZ_CHECK(pool_.stats().used_slots == before.used_slots);
      if (r.code() == ErrorCode::kLayoutError) {
        FUZZ_CHECK(!can_fit);
        return;
      }
      FUZZ_CHECK(r.code() == ErrorCode::kNoMemory);
      FUZZ_CHECK(can_fit);
      if (injected) return;
      if (over_quota) {
        FUZZ_CHECK(pool_.stats().quota_failures > before.quota_failures);
        return;
      }
      FUZZ_CHECK(pool_.stats().quota_failures == before.quota_failures);
      uint64_t offset = target & (slot_size_ - 1);
      uint64_t n = (offset + size + slot_size_ - 1) / slot_size_;
      uint64_t period = (low / slot_size_) + 1;
      if (live_.empty()) FUZZ_CHECK(n + period - 1 > num_slots_);
      FUZZ_CHECK(longest_free_run() < 2 * (n + period));
      return;
    }
    FUZZ_CHECK(!injected);
    FUZZ_CHECK(can_fit);
    FUZZ_CHECK(!over_quota);
    const BounceSlot& s = *r;
    FUZZ_CHECK(s.num_slots == slots_needed);
    held_[d] += s.num_slots;
    uint64_t a = s.addr.value();
    FUZZ_CHECK(s.size == size);
    FUZZ_CHECK(a >= base_ && a - base_ < bytes_ && size <= bytes_ - (a - base_));
    FUZZ_CHECK((a & mask) == (orig & mask));
    FUZZ_CHECK(align <= 1 || a % align == 0);
    FUZZ_CHECK(s.num_slots >= 1 && s.first_slot + uint64_t{s.num_slots} <= num_slots_);
    uint64_t first_byte = base_ + uint64_t{s.first_slot} * slot_size_;
    FUZZ_CHECK(a >= first_byte && a - first_byte < slot_size_);
    FUZZ_CHECK(a + size <= first_byte + uint64_t{s.num_slots} * slot_size_);
    FUZZ_CHECK(a + size > first_byte + (uint64_t{s.num_slots} - 1) * slot_size_);  // No waste.
    for (uint32_t k = 0; k < s.num_slots; ++k) {
      FUZZ_CHECK(owner_[s.first_slot + k] == 0);
      owner_[s.first_slot + k] = 1;
    }
    uint8_t tag = static_cast<uint8_t>(++serial_);
    std::memset(cpu(a), tag, size);
    live_[a] = Live{s, tag, d};
  }

  void free_one(std::map<uint64_t, Live>::iterator it) {
    const BounceSlot& s = it->second.slot;
    const uint8_t* p = cpu(s.addr.value());
    for (size_t i = 0; i < s.size; ++i) {
      if (p[i] != it->second.tag) fuzz_fail(__FILE__, __LINE__, "an allocation's bytes changed");
    }
    FUZZ_CHECK(pool_.free(s).ok());
    for (uint32_t k = 0; k < s.num_slots; ++k) owner_[s.first_slot + k] = 0;
    held_[it->second.device] -= s.num_slots;
    stale_.push_back(s);
    live_.erase(it);
  }

  void free_live() {
    if (live_.empty()) return;
    auto it = live_.begin();
    std::advance(it, static_cast<long>(in_.pick(live_.size())));
    free_one(it);
  }

  bool is_live(const BounceSlot& s) const {
    auto it = live_.find(s.addr.value());
    if (it == live_.end()) return false;
    const BounceSlot& l = it->second.slot;
    return l.first_slot == s.first_slot && l.num_slots == s.num_slots && l.size == s.size;
  }

  void bad_free() {
    BounceSlot s;
    if (in_.boolean() && !stale_.empty()) {
      s = stale_[in_.pick(stale_.size())];  // Already freed.
    } else if (!live_.empty()) {
      auto it = live_.begin();
      std::advance(it, static_cast<long>(in_.pick(live_.size())));
      s = it->second.slot;
      switch (in_.pick(5)) {  // Altered.
        case 0:
          s.addr = s.addr + 1;
          break;
        case 1:
          s.size += 1 + in_.range(0, 100);
          break;
        case 2:
          s.num_slots += 1;
          break;
        case 3:
          s.first_slot += 1;
          break;
        default:
          s.size = s.size > 1 ? s.size - 1 : 0;
          break;
      }
    } else {
      s.addr = PhysAddr(in_.u64());
      s.first_slot = in_.u32();
      s.num_slots = in_.u32();
      s.size = in_.u32();
    }
    if (is_live(s)) return;  // Indistinguishable from the live allocation: a real free.
    BouncePool::Stats before = pool_.stats();
    auto r = pool_.free(s);
    FUZZ_CHECK(!r.ok() && r.code() == ErrorCode::kNotFound);
    FUZZ_CHECK(pool_.stats().used_slots == before.used_slots);
    FUZZ_CHECK(pool_.stats().invalid_frees == before.invalid_frees + 1);
  }

  void check() {
    FUZZ_CHECK(pool_.check_invariants());
    uint64_t used = 0;
    for (uint8_t o : owner_) used += o;
    FUZZ_CHECK(pool_.stats().used_slots == used);
    for (unsigned d = 0; d < kDevices; ++d) {
      FUZZ_CHECK(pool_.device_slots(devices_[d].id) == held_[d]);
    }
  }

  FuzzInput& in_;
  size_t slot_size_ = 0;
  uint32_t num_slots_ = 0;
  size_t bytes_ = 0;
  uint64_t base_ = 0;
  std::vector<uint32_t> meta_;
  std::vector<uint8_t> owner_;  // 1 when a live allocation holds the slot.
  std::map<uint64_t, Live> live_;
  std::vector<BounceSlot> stale_;
  uint64_t fault_nth_ = 0;
  uint32_t serial_ = 0;
  unsigned num_cpus_ = 0;  // CPUs with a cache; 0: caches off.
  // The devices requests are made for: anonymous, one with a quota (set by run()), one without;
  // and the slots each holds.
  static constexpr unsigned kDevices = 3;
  BounceDevice devices_[kDevices] = {{0, nullptr, 0}, {7, "quota", 0}, {9, "free", 0}};
  uint64_t held_[kDevices] = {};
  BouncePool pool_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  support::FaultInjector::disarm_all();
  FuzzInput in(data, size);
  Harness h(in);
  h.run();
  support::FaultInjector::disarm_all();
  return 0;
}
