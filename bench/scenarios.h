// The measured situations of the benchmarks (issue "Performance"), shared by the Google Benchmark
// program (bench/dma_bench.cc, time) and the callgrind driver (bench/ir_count.cc, instructions).
//
// Each scenario builds a HostPlatform (simulated RAM, the real PageFrameAllocator, BouncePool and
// KernelDmaOp compiled from the kernel's sources), brings it into the state the issue describes
// in its constructor (not measured), and then runs the measured operation `run(n)` times. A
// scenario's state is a steady state: running it any number of times leaves the occupancy as it
// was, so the two programs can call run() in batches of any size.
//
// Every random choice comes from a fixed-seed generator, so each run of `make bench` measures the
// same sequence of operations.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "arch/host/host_platform.h"

namespace bench {

inline constexpr uint64_t kKiB = 1024;
inline constexpr uint64_t kMiB = 1024 * kKiB;
inline constexpr uint64_t kGiB = 1024 * kMiB;

// splitmix64: small, fast, and good enough to scatter allocations.
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed) {}
  uint64_t next() {
    uint64_t z = (s_ += 0x9E37'79B9'7F4A'7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58'476D'1CE4'E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D0'49BB'1331'11EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n), n > 0.
  uint64_t below(uint64_t n) {
    return static_cast<uint64_t>((static_cast<unsigned __int128>(next()) * n) >> 64);
  }

 private:
  uint64_t s_;
};

// Fisher-Yates shuffle with a fixed seed.
template <typename T>
void shuffle(std::vector<T>& v, Rng& rng) {
  for (size_t i = v.size(); i > 1; --i) {
    size_t j = static_cast<size_t>(rng.below(i));
    T tmp = v[i - 1];
    v[i - 1] = v[j];
    v[j] = tmp;
  }
}

// A page-frame allocator over simulated RAM that is never mapped: the allocator keeps all its
// bookkeeping out of band and never dereferences a managed page (the poisoning layer, which
// would, is off), so `bytes` of RAM at physical `base` cost only the metadata. The metadata lives
// in its own mapping on transparent huge pages, as a kernel's sits in a direct map of large pages.
class PfaMemory {
 public:
  PfaMemory(uint64_t base, uint64_t bytes);
  ~PfaMemory();
  PfaMemory(const PfaMemory&) = delete;
  PfaMemory& operator=(const PfaMemory&) = delete;
  PageFrameAllocator& pfa() { return pfa_; }

 private:
  void* meta_map_ = nullptr;
  size_t meta_map_bytes_ = 0;
  PageFrameAllocator pfa_;
};

// Order-0 pairs: a fraction of `ram_bytes` allocated as single pages scattered at random (every
// page taken one by one, then a random selection given back), part of it being a ring of 4096
// pages. run(n): n times, allocate one page and free the oldest page of the ring (FIFO).
// set_occupancy() lowers the occupancy by giving back more of the scattered pages at random, so
// one fill serves every occupancy (the pages still held are a random subset either way).
class PfaOrder0Ring {
 public:
  static constexpr size_t kRing = 4096;
  PfaOrder0Ring(uint64_t ram_bytes, uint64_t seed);
  ~PfaOrder0Ring();
  // Precondition: `occupancy` at most the current one (ring included), and at least the ring's.
  void set_occupancy(double occupancy);
  void run(uint64_t pairs);
  double occupancy() const;

 private:
  std::unique_ptr<PfaMemory> plat_;
  PageFrameAllocator* pfa_;
  uint64_t total_pages_ = 0;
  std::vector<PhysAddr> held_;  // The scattered background, in random order.
  std::vector<PhysAddr> ring_;
  size_t head_ = 0;
};

// Mixed operations: blocks of random order 0-max_order (uniform), allocated or freed at random,
// memory kept around `target` full. run(n): n operations, each one alloc or one free. Whether an
// operation allocates is random (even odds) while occupancy is within 2% of the target, and
// corrective outside.
//
// With `stand_in`, the allocator is set up and filled alike, but run() then calls a stand-in
// instead of it (an alloc hands out fresh fake addresses, a free does nothing): the harness's own
// cost at this size (its table of live blocks grows with RAM), which BM_PfaMixedSizes reports
// beside the allocator's.
class PfaMixed {
 public:
  PfaMixed(double target, uint64_t ram_bytes, uint64_t seed, unsigned max_order = 9,
           bool stand_in = false);
  ~PfaMixed();
  void run(uint64_t ops);
  double occupancy() const;
  uint64_t allocs() const { return allocs_; }
  uint64_t frees() const { return frees_; }
  uint64_t failures() const { return failures_; }

 private:
  // A live block, in 4 bytes: its page number from the simulated RAM's base, above
  // kStandInBit (set for a block the stand-in made, never given to the allocator) and the order.
  // The table of live blocks is the harness's own memory, and it grows with RAM: at 16 bytes an
  // entry it was 5.4 MiB at 16 GiB, more than this machine's L2 and L3 keep for one program, so
  // it pushed the allocator's metadata out of the caches it is measured in.
  using Block = uint32_t;
  static constexpr unsigned kOrderBits = 4;
  static constexpr uint32_t kStandInBit = 1u << kOrderBits;
  static constexpr unsigned kPageNumberShift = kOrderBits + 1;
  // The stand-in's fake page numbers go round in the page-number field.
  static constexpr uint64_t kStandInPages = 1ull << (32 - kPageNumberShift);
  Block make_block(PhysAddr a, unsigned order, bool stand_in) const;
  PhysAddr block_addr(Block b) const;
  static unsigned block_order(Block b) { return b & (kStandInBit - 1); }
  template <bool kStandIn>
  void run_loop(uint64_t ops);
  std::unique_ptr<PfaMemory> plat_;
  PageFrameAllocator* pfa_;
  uint64_t base_ = 0;  // The simulated RAM's base address.
  bool stand_in_ = false;
  uint64_t stand_in_next_ = 0;  // The stand-in's next page number.
  // Uniform in [0, n) from a random word, as Rng::below.
  static size_t index_below(uint64_t draw, size_t n) {
    return static_cast<size_t>((static_cast<unsigned __int128>(draw) * n) >> 64);
  }
  Rng rng_;
  // The victims of the next kAhead frees are drawn kAhead frees ahead and their entries
  // prefetched then: the table of live blocks grows with RAM and each free reads a random entry
  // of it, whose miss (the harness's, not the allocator's) one operation ahead was not enough to
  // hide at 16 GiB. An index is drawn uniformly over the table as it was then; the table changes
  // by at most kAhead entries meanwhile, so the choice stays uniform but for that edge.
  static constexpr size_t kAhead = 16;
  size_t draw_victim();  // Draws an index into live_ (not empty) and prefetches its entry.
  size_t next_victim();  // The index of the next free's victim; draws the one kAhead later.
  size_t ahead_[kAhead] = {};
  size_t ahead_head_ = 0;
  unsigned orders_;  // max_order + 1.
  std::vector<Block> live_;
  uint64_t used_pages_ = 0;
  uint64_t target_pages_ = 0;
  uint64_t slack_pages_ = 0;
  uint64_t allocs_ = 0;
  uint64_t frees_ = 0;
  uint64_t failures_ = 0;
};

// Order-9 pairs over a fragmented memory: filled with single pages, then 1 in 8 of the 4 MiB
// regions (chosen at random) freed whole and every other region half freed (512 random pages of
// its 1024). run(n): n times, allocate an order-9 block and free the oldest of a ring of 16.
class PfaOrder9Frag {
 public:
  static constexpr size_t kRing = 16;
  PfaOrder9Frag(uint64_t ram_bytes, uint64_t seed);
  ~PfaOrder9Frag();
  void run(uint64_t pairs);
  double occupancy() const;

 private:
  std::unique_ptr<PfaMemory> plat_;
  PageFrameAllocator* pfa_;
  std::vector<PhysAddr> held_;
  std::vector<PhysAddr> ring_;
  size_t head_ = 0;
};

// Order-9 allocations with or without a 4 GiB limit, on RAM [3.75 GiB, 6.25 GiB): 256 MiB below
// the limit and 2.25 GiB (90% of the free memory) above it. run(n): n times, allocate an order-9
// block (under the limit when `masked`) and free the oldest of a ring of 16. A naive allocator
// would walk past the 576 free 4 MiB blocks above the limit to find one below it.
class PfaOrder9Masked {
 public:
  static constexpr size_t kRing = 16;
  static constexpr uint64_t kLimit = 0xFFFF'FFFFull;
  explicit PfaOrder9Masked(bool masked);
  ~PfaOrder9Masked();
  void run(uint64_t pairs);
  // For the cost of an allocation alone: alloc_batch takes n order-9 blocks (same limit),
  // free_batch gives them back.
  void alloc_batch(size_t n);
  void free_batch();
  // Fraction of free memory above the limit, measured.
  double free_above_limit() const;

 private:
  std::unique_ptr<PfaMemory> plat_;
  PageFrameAllocator* pfa_;
  uint64_t limit_;
  std::vector<PhysAddr> ring_;
  std::vector<PhysAddr> batch_;
  size_t head_ = 0;
};

// Streaming mappings bounced through a 64 MiB pool (2 KiB slots), for a coherent device with a
// 28-bit mask (QEMU's edu device has that default) and buffers above 256 MiB. A ring of 4
// mappings of `size` bytes is set up first; then mappings of random size (uniform in 2-64 KiB)
// fill the pool up to `occupancy` (ring included) and the pool is aged (as many random
// unmap + map-a-new-random-size replacements as there are mappings). run(n): n times, unmap the
// oldest mapping of the ring and map its buffer again (map_single + unmap_single of the mapping
// layer, through the DmaOp interface, as a driver calls them).
class BounceRing {
 public:
  static constexpr size_t kRing = 4;
  static constexpr size_t kPoolBytes = 64 * kMiB;
  static constexpr uint64_t kDeviceLimit = 256 * kMiB - 1;
  static constexpr unsigned kCpus = 4;  // HostPlatform::Options::cpu_caches.
  // cpu_caches: HostPlatform::Options::cpu_caches (the pool's per-CPU slot caches, for kCpus
  // CPUs by default; 0 measures the pool without them, every alloc and free under its lock).
  BounceRing(double occupancy, size_t size, DmaDirection dir, uint64_t seed,
             unsigned cpu_caches = kCpus);
  ~BounceRing();
  void run(uint64_t ops);
  // Random churn instead of the ring: n times, unmap a random one of the random-size mappings and
  // map a new one of random size (2-64 KiB). When the new size finds no room (a fragmented pool
  // at high occupancy), the size just unmapped is mapped instead and the miss is counted.
  void run_churn(uint64_t ops);
  uint64_t churn_misses() const { return churn_misses_; }
  // Runs n operations like run(), appending for each the CPU buffer mapped and the CPU address of
  // its new bounce slot.
  struct Placement {
    uint8_t* source;
    uint8_t* slot;
  };
  void record(uint64_t ops, std::vector<Placement>* out);
  // The CPU buffer of ring entry i (what run() maps).
  uint8_t* source(size_t i) const { return sources_[i % kRing]; }
  size_t size() const { return size_; }
  double occupancy() const;  // Fraction of the pool's slots in use, ring included.
  // The random-size mappings' share of the pool's slots after ageing.
  double background_occupancy() const { return background_occupancy_; }
  size_t background_mappings() const { return background_.size(); }

 private:
  DmaMapHandle map_or_die(uint8_t* buf, size_t size);
  size_t random_size();
  std::unique_ptr<HostPlatform> plat_;
  Rng rng_;
  uint64_t churn_misses_ = 0;
  DmaOp* op_;
  BouncePool* pool_;
  DmaConstraints dev_;
  DmaDirection dir_;
  size_t size_;
  uint8_t* background_src_;
  std::vector<DmaMapHandle> background_;
  std::vector<uint8_t*> sources_;
  std::vector<DmaMapHandle> ring_;
  double background_occupancy_ = 0;
  size_t head_ = 0;
};

// Direct mappings: a coherent device whose mask covers all RAM maps a 4 KiB buffer and unmaps it.
class DirectMap {
 public:
  DirectMap();
  ~DirectMap();
  void run(uint64_t ops);

 private:
  std::unique_ptr<HostPlatform> plat_;
  DmaOp* op_;
  DmaConstraints dev_;
  uint8_t* buf_;
};

// Allocator metadata for 16 GiB of RAM: metadata_size() plus the allocator object itself, divided
// by the managed bytes. Also initialises an allocator over 16 GiB of lazily mapped simulated RAM
// and checks that it reports the same metadata size (returns a negative value if not).
double pfa_metadata_fraction_16g(uint64_t* metadata_bytes, uint64_t* managed_bytes);

}  // namespace bench
