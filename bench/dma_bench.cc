// Google Benchmark programs over the DMA subsystem: wall-clock and CPU time of the same scenarios
// that bench/ir_count.cc counts instructions for (bench/scenarios.h), plus the bounce-copy pair
// whose time ratio is a figure of its own:
//
//   BM_BounceCopy/<size>         map_single + unmap_single of a kBidirectional buffer bounced
//                                through the pool: both copies (in at map, out at unmap) plus
//                                the mapping layer's work.
//   BM_MemcpyThroughPool/<size>  the same two memcpys, into and out of the very slot addresses
//                                the bounced run was given (recorded beforehand, replayed in
//                                order), with no mapping layer at all.
//
//   BM_BounceCopyRatio/<size>    the two above, batch against batch, alternating, in one loop:
//                                bounce_copy_<size>_ratio is its median per-pair time ratio.
//   BM_Bounce2ThreadRatio        4 KiB bounced map+unmap on ONE pool (per-CPU caches on), by one
//                                thread alone and then by two at once, round after round:
//                                bounce_2thread_ratio is the median per-round time ratio.
#include <benchmark/benchmark.h>

#include <atomic>
#include <thread>

#include <pthread.h>
#include <sched.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "bench/scenarios.h"
#include "dmakit/support/mem.h"

namespace {

using bench::kGiB;
using bench::kKiB;

constexpr uint64_t kPfaRam = 1 * kGiB;
constexpr uint64_t kSeed = 0x5EED'0000'D1A7ull;

// The PFA scenarios hold up to 1 GiB of simulated RAM each: keep one alive at a time.
struct Current {
  std::string key;
  std::shared_ptr<void> obj;
};
Current& current() {
  static Current c;
  return c;
}
template <typename T, typename Make>
T& cached(const std::string& key, Make make) {
  Current& c = current();
  if (c.key != key) {
    c.obj.reset();
    c.obj = make();
    c.key = key;
  }
  return *static_cast<T*>(c.obj.get());
}

// ---- Page-frame allocator ----

struct Order0 {
  std::unique_ptr<bench::PfaOrder0Ring> ring;
  int occupancy = 101;
};

void BM_PfaOrder0Pair(benchmark::State& state) {
  int occ = static_cast<int>(state.range(0));
  auto& o = cached<Order0>("order0", [] { return std::make_shared<Order0>(); });
  if (occ > o.occupancy) o.ring.reset();  // Occupancy only goes down; start again to go up.
  if (!o.ring) {
    o.ring = std::make_unique<bench::PfaOrder0Ring>(kPfaRam, kSeed);
    o.occupancy = 101;
  }
  if (occ != o.occupancy) {
    o.ring->set_occupancy(occ / 100.0);
    o.occupancy = occ;
  }
  for (auto _ : state) o.ring->run(1);
  state.SetItemsProcessed(state.iterations());
  state.counters["occupancy"] = o.ring->occupancy();
}
BENCHMARK(BM_PfaOrder0Pair)->Arg(95)->Arg(10);

void BM_PfaMixed(benchmark::State& state) {
  int occ = static_cast<int>(state.range(0));
  auto& s = cached<bench::PfaMixed>("mixed" + std::to_string(occ), [occ] {
    return std::make_shared<bench::PfaMixed>(occ / 100.0, kPfaRam,
                                             kSeed + 100 + static_cast<uint64_t>(occ));
  });
  for (auto _ : state) s.run(1);
  state.SetItemsProcessed(state.iterations());
  state.counters["occupancy"] = s.occupancy();
}
BENCHMARK(BM_PfaMixed)->Arg(50);

// The mixed workload of orders 0-4 at 50% over simulated RAM of 256 MiB, 1 GiB, 4 GiB and
// 16 GiB, all four alive at once (the allocator never touches the simulated RAM, so 16 GiB of it
// costs no host memory). Each iteration is a round: one batch of operations on every size, in an
// order that rotates from round to round, each batch timed on its own, so that load from the rest
// of the machine falls on every size alike. ns_<size> is the median of that size's per-batch
// times per operation; ratio_16g_256m is the median over the rounds of the 16 GiB batch's time
// over the 256 MiB batch's (pfa_mixed_ns_ratio_16g_256m).
//
// BM_PfaMixedHarness runs the same rounds over the harness alone (PfaMixed's stand-in allocator):
// harness_ns_<size>. It runs on its own, not interleaved with the allocator's batches: its tables
// of live blocks are as large as theirs, and between two batches of the allocator they would
// evict its metadata, a cost that is the benchmark's and not the allocator's (interleaved, they
// raised ratio_16g_256m by about 0.15; BENCHMARKS.md).
struct MixedSizes {
  static constexpr size_t kSizes = 4;
  static constexpr uint64_t kBytes[kSizes] = {256 * bench::kMiB, 1 * kGiB, 4 * kGiB, 16 * kGiB};
  static constexpr const char* kLabels[kSizes] = {"256m", "1g", "4g", "16g"};
  MixedSizes() {
    for (size_t i = 0; i < kSizes; ++i) {
      s[i] = std::make_unique<bench::PfaMixed>(0.5, kBytes[i], kSeed + 150, 4);
      h[i] = std::make_unique<bench::PfaMixed>(0.5, kBytes[i], kSeed + 150, 4, /*stand_in=*/true);
    }
  }
  std::unique_ptr<bench::PfaMixed> s[kSizes];
  std::unique_ptr<bench::PfaMixed> h[kSizes];  // The harness alone (a stand-in allocator).
};

// Rounds over runs[0..kSizes) (see above): per-size median ns per operation as counters
// <prefix><size>, and the median per-round ratio of the 16 GiB batch to the 256 MiB batch.
void mixed_rounds(benchmark::State& state, std::unique_ptr<bench::PfaMixed> (&runs)[4],
                  const std::string& prefix, const char* ratio_name) {
  using Clock = std::chrono::steady_clock;
  constexpr uint64_t kBatch = 2048;  // Some 100 us: the clock reads are noise.
  constexpr size_t kSizes = MixedSizes::kSizes;
  std::vector<double> ns[kSizes];
  std::vector<double> ratios;
  size_t first = 0;
  for (auto _ : state) {
    double t[kSizes] = {};
    for (size_t k = 0; k < kSizes; ++k) {
      size_t i = (first + k) % kSizes;
      Clock::time_point t0 = Clock::now();
      runs[i]->run(kBatch);
      Clock::time_point t1 = Clock::now();
      t[i] = std::chrono::duration<double, std::nano>(t1 - t0).count();
      ns[i].push_back(t[i] / static_cast<double>(kBatch));
    }
    ratios.push_back(t[kSizes - 1] / t[0]);
    first = (first + 1) % kSizes;
  }
  auto median = [](std::vector<double>& v) {
    if (v.empty()) return 0.0;
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  for (size_t i = 0; i < kSizes; ++i) {
    state.counters[prefix + MixedSizes::kLabels[i]] = median(ns[i]);
  }
  state.counters[ratio_name] = median(ratios);
  state.counters["rounds"] = static_cast<double>(ratios.size());
}

void BM_PfaMixedSizes(benchmark::State& state) {
  auto& m = cached<MixedSizes>("mixed_sizes", [] { return std::make_shared<MixedSizes>(); });
  mixed_rounds(state, m.s, "ns_", "ratio_16g_256m");
}
BENCHMARK(BM_PfaMixedSizes)->UseRealTime();

void BM_PfaMixedHarness(benchmark::State& state) {
  auto& m = cached<MixedSizes>("mixed_sizes", [] { return std::make_shared<MixedSizes>(); });
  mixed_rounds(state, m.h, "harness_ns_", "harness_ratio_16g_256m");
}
BENCHMARK(BM_PfaMixedHarness)->UseRealTime();

void BM_PfaOrder9Frag(benchmark::State& state) {
  auto& s = cached<bench::PfaOrder9Frag>(
      "order9frag", [] { return std::make_shared<bench::PfaOrder9Frag>(kPfaRam, kSeed + 200); });
  for (auto _ : state) s.run(1);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_PfaOrder9Frag);

void BM_PfaOrder9Masked(benchmark::State& state) {
  bool masked = state.range(0) != 0;
  auto& s = cached<bench::PfaOrder9Masked>(masked ? "masked" : "unmasked", [masked] {
    return std::make_shared<bench::PfaOrder9Masked>(masked);
  });
  for (auto _ : state) s.run(1);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_PfaOrder9Masked)->ArgName("masked")->Arg(0)->Arg(1);

// ---- Mapping layer ----

void BM_BounceMapUnmap(benchmark::State& state) {
  auto size = static_cast<size_t>(state.range(0));
  int occ = static_cast<int>(state.range(1));
  auto& s = cached<bench::BounceRing>(
      "bounce" + std::to_string(size) + "_" + std::to_string(occ), [size, occ] {
        return std::make_shared<bench::BounceRing>(occ / 100.0, size, DmaDirection::kToDevice,
                                                   kSeed + 300 + static_cast<uint64_t>(occ));
      });
  for (auto _ : state) s.run(1);
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(size));
  state.counters["occupancy"] = s.occupancy();
}
BENCHMARK(BM_BounceMapUnmap)
    ->ArgNames({"size", "occupancy"})
    ->Args({4096, 1})
    ->Args({4096, 95})
    ->Args({65536, 1})
    ->Args({65536, 95});

void BM_DirectMapUnmap(benchmark::State& state) {
  auto& s = cached<bench::DirectMap>("direct", [] { return std::make_shared<bench::DirectMap>(); });
  for (auto _ : state) s.run(1);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_DirectMapUnmap);

// ---- Bounce copies against plain memcpy ----

// Lives for the whole run (small), so that interleaved repetitions of the two benchmarks of a
// size work on one pool.
struct CopyPair {
  static constexpr size_t kRecorded = 4096;
  explicit CopyPair(size_t size)
      : ring(0.5, size, DmaDirection::kBidirectional, kSeed + 400 + size) {
    ring.record(kRecorded, &placements);
  }
  bench::BounceRing ring;
  std::vector<bench::BounceRing::Placement> placements;
};

CopyPair& copy_pair(size_t size) {
  static std::map<size_t, std::unique_ptr<CopyPair>> pairs;
  auto& p = pairs[size];
  if (!p) p = std::make_unique<CopyPair>(size);
  return *p;
}

void BM_BounceCopy(benchmark::State& state) {
  CopyPair& p = copy_pair(static_cast<size_t>(state.range(0)));
  for (auto _ : state) p.ring.run(1);
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(2 * state.iterations() * static_cast<int64_t>(p.ring.size()));
}

void BM_MemcpyThroughPool(benchmark::State& state) {
  CopyPair& p = copy_pair(static_cast<size_t>(state.range(0)));
  size_t n = p.ring.size();
  size_t j = 0;
  for (auto _ : state) {
    const bench::BounceRing::Placement& pl = p.placements[j];
    uint8_t* src = pl.source;
    uint8_t* slot = pl.slot;
    benchmark::DoNotOptimize(src);
    benchmark::DoNotOptimize(slot);
    support::copy_bytes(slot, src, n);  // What map_single copies in...
    benchmark::ClobberMemory();
    support::copy_bytes(src, slot, n);  // ...and unmap_single copies out.
    benchmark::ClobberMemory();
    j = j + 1 == p.placements.size() ? 0 : j + 1;
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(2 * state.iterations() * static_cast<int64_t>(n));
}

BENCHMARK(BM_BounceCopy)->Arg(4096)->Arg(65536);
BENCHMARK(BM_MemcpyThroughPool)->Arg(4096)->Arg(65536);

// The ratio itself, measured pairwise: each iteration times one batch of bounced map+unmap and
// one batch of the plain copies (in alternating order), back to back, so that both see the same
// load from the rest of the machine; the figure is the median of the per-pair ratios. Batches
// last some 50 us, so the clock reads (vDSO, tens of ns) are noise.
void BM_BounceCopyRatio(benchmark::State& state) {
  using Clock = std::chrono::steady_clock;
  CopyPair& p = copy_pair(static_cast<size_t>(state.range(0)));
  size_t n = p.ring.size();
  size_t batch = n <= 4096 ? 256 : 32;
  std::vector<double> ratios;
  double bounced_ns = 0;
  double plain_ns = 0;
  size_t j = 0;
  auto bounced = [&] { p.ring.run(batch); };
  auto plain = [&] {
    for (size_t k = 0; k < batch; ++k) {
      const bench::BounceRing::Placement& pl = p.placements[j];
      uint8_t* src = pl.source;
      uint8_t* slot = pl.slot;
      benchmark::DoNotOptimize(src);
      benchmark::DoNotOptimize(slot);
      // The very routine the mapping layer copies with (support::copy_bytes, which becomes a call
      // of the C library's memcpy for a size not known at compile time), at the same addresses.
      support::copy_bytes(slot, src, n);
      benchmark::ClobberMemory();
      support::copy_bytes(src, slot, n);
      benchmark::ClobberMemory();
      j = j + 1 == p.placements.size() ? 0 : j + 1;
    }
  };
  bool bounced_first = true;
  for (auto _ : state) {
    Clock::time_point t0 = Clock::now();
    if (bounced_first) {
      bounced();
    } else {
      plain();
    }
    Clock::time_point t1 = Clock::now();
    if (bounced_first) {
      plain();
    } else {
      bounced();
    }
    Clock::time_point t2 = Clock::now();
    double first = std::chrono::duration<double, std::nano>(t1 - t0).count();
    double second = std::chrono::duration<double, std::nano>(t2 - t1).count();
    double b = bounced_first ? first : second;
    double m = bounced_first ? second : first;
    bounced_ns += b;
    plain_ns += m;
    ratios.push_back(b / m);
    bounced_first = !bounced_first;
  }
  std::sort(ratios.begin(), ratios.end());
  auto ops = static_cast<double>(ratios.size() * batch);
  state.counters["ratio_median"] = ratios.empty() ? 0.0 : ratios[ratios.size() / 2];
  state.counters["ratio_of_sums"] = plain_ns > 0 ? bounced_ns / plain_ns : 0.0;
  state.counters["bounced_ns"] = ops > 0 ? bounced_ns / ops : 0.0;
  state.counters["memcpy_ns"] = ops > 0 ? plain_ns / ops : 0.0;
  state.counters["pairs"] = static_cast<double>(ratios.size());
}
BENCHMARK(BM_BounceCopyRatio)->Arg(4096)->Arg(65536);

// Two CPUs on one pool. Two worker threads live for the whole benchmark (each stands for one
// CPU of the pool's per-CPU caches: HostPlatform::host_current_cpu numbers threads in the order
// they first ask), each with its own ring of four 4 KiB buffers above the device's reach, so
// that every map bounces. A round runs n map+unmap pairs on worker 0 alone, then n on each
// worker at once; its ratio is the two-thread wall time over the one-thread wall time (both for
// n operations per thread). With two idle cores a ratio of 1 means the threads never slow each
// other (no shared lock, no false sharing); the figure is the median over the rounds.
// The control: each round also runs both workers at once on two private platforms (worker 1 on a
// second op and pool of its own: nothing of the library shared), and private_ratio is that time
// over the one-thread time. What the control pays (the two virtual CPUs sharing a physical
// core, memory bandwidth) is the machine's, not the library's; the shared figure's excess over it
// is what sharing one pool costs.
class TwoCpuBounce {
 public:
  static constexpr size_t kSize = 4096;
  static constexpr size_t kRing = 4;
  static constexpr uint64_t kLimit = 256 * bench::kMiB - 1;

  TwoCpuBounce() {
    HostPlatform::Options o;
    o.ram.push_back(PhysRange{PhysAddr(0), 512 * bench::kMiB});
    o.pools.push_back(HostPlatform::PoolSpec{64 * bench::kMiB, kLimit});
    o.platform_coherent = true;
    o.cpu_caches = 64;  // Every thread that ever asks gets a cache of its own.
    plat_ = std::make_unique<HostPlatform>(o);
    private_plat_ = std::make_unique<HostPlatform>(o);
    dev_.dma_mask = kLimit;
    dev_.coherence = DmaCoherence::kCoherent;
    dev_.name = "bench-2cpu";
    for (auto& w : workers_) {
      for (size_t i = 0; i < kRing; ++i) w.src[i] = plat_->buffer_above(kLimit + 1, kSize);
    }
    for (size_t i = 0; i < kRing; ++i) {
      private_src_[i] = private_plat_->buffer_above(kLimit + 1, kSize);
    }
    for (unsigned i = 0; i < 2; ++i) threads_[i] = std::thread([this, i] { loop(i); });
  }
  ~TwoCpuBounce() {
    stop_.store(true);
    round_.fetch_add(1, std::memory_order_release);
    round_.notify_all();
    for (auto& t : threads_) t.join();
  }
  TwoCpuBounce(const TwoCpuBounce&) = delete;
  TwoCpuBounce& operator=(const TwoCpuBounce&) = delete;

  // Runs n pairs on each worker of `mask` (bit 0: worker 0, bit 1: worker 1) at once, worker 1 on
  // its private platform when `private_pool`; returns the wall time in nanoseconds.
  double run(unsigned mask, uint64_t n, bool private_pool = false) {
    using Clock = std::chrono::steady_clock;
    ops_.store(n, std::memory_order_relaxed);
    private_.store(private_pool, std::memory_order_relaxed);
    mask_.store(mask, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    Clock::time_point t0 = Clock::now();
    round_.fetch_add(1, std::memory_order_release);
    round_.notify_all();
    // Blocking waits (futexes), not spinning: on a two-core machine a spinning third thread would
    // take a core from the workers.
    const auto want = static_cast<unsigned>(__builtin_popcount(mask));
    for (unsigned d; (d = done_.load(std::memory_order_acquire)) != want;) done_.wait(d);
    Clock::time_point t1 = Clock::now();
    return std::chrono::duration<double, std::nano>(t1 - t0).count();
  }
  // Worker i's CPU time in the last round it ran.
  double cpu_ns(unsigned i) const { return workers_[i].cpu_ns; }

 private:
  struct alignas(64) Worker {
    uint8_t* src[kRing] = {};
    double cpu_ns = 0;  // The thread's CPU time in its last round.
  };
  void loop(unsigned i) {
    // Each worker stands for one CPU: pinned to its own (when the machine has two), so that the
    // scheduler never runs both on one core while the other idles (that is a ratio of 2 that
    // says nothing about the pool).
    if (std::thread::hardware_concurrency() >= 2) {
      cpu_set_t set;
      CPU_ZERO(&set);
      CPU_SET(i, &set);
      (void)pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
    }
    uint64_t last = 0;
    for (;;) {
      uint64_t r;
      while ((r = round_.load(std::memory_order_acquire)) == last) round_.wait(last);
      last = r;
      if (stop_.load()) return;
      if ((mask_.load(std::memory_order_relaxed) & (1u << i)) == 0) continue;
      const uint64_t n = ops_.load(std::memory_order_relaxed);
      const bool alone = i == 1 && private_.load(std::memory_order_relaxed);
      KernelDmaOp& op = alone ? private_plat_->op() : plat_->op();
      Worker& w = workers_[i];
      uint8_t* const* src = alone ? private_src_ : w.src;
      timespec c0;
      clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
      for (uint64_t k = 0; k < n; ++k) {
        auto h = op.map_single(dev_, src[k % kRing], kSize, 0, DmaDirection::kToDevice);
        if (!h.ok() || !h->bounced()) std::abort();
        op.unmap_single(*h);
      }
      timespec c1;
      clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
      w.cpu_ns = static_cast<double>(c1.tv_sec - c0.tv_sec) * 1e9 +
                 static_cast<double>(c1.tv_nsec - c0.tv_nsec);
      done_.fetch_add(1, std::memory_order_acq_rel);
      done_.notify_one();
    }
  }

  std::unique_ptr<HostPlatform> plat_;
  std::unique_ptr<HostPlatform> private_plat_;  // Worker 1's in the control.
  uint8_t* private_src_[kRing] = {};
  DmaConstraints dev_;
  Worker workers_[2];
  std::thread threads_[2];
  alignas(64) std::atomic<uint64_t> round_{0};
  std::atomic<unsigned> mask_{0};
  std::atomic<bool> private_{false};
  std::atomic<uint64_t> ops_{0};
  std::atomic<bool> stop_{false};
  alignas(64) std::atomic<unsigned> done_{0};
};

void BM_Bounce2ThreadRatio(benchmark::State& state) {
  constexpr uint64_t kOps = 20000;  // Some 3 ms a round: the futex wake-ups are noise.
  TwoCpuBounce s;
  std::vector<double> ratios;
  std::vector<double> cpu_ratios;
  std::vector<double> private_ratios;
  std::vector<double> private_cpu_ratios;
  for (auto _ : state) {
    double one = s.run(1u, kOps);
    double one_cpu = s.cpu_ns(0);
    double two = s.run(3u, kOps);
    ratios.push_back(two / one);
    cpu_ratios.push_back((s.cpu_ns(0) + s.cpu_ns(1)) / (2 * one_cpu));
    double apart = s.run(3u, kOps, /*private_pool=*/true);
    private_ratios.push_back(apart / one);
    private_cpu_ratios.push_back((s.cpu_ns(0) + s.cpu_ns(1)) / (2 * one_cpu));
  }
  auto median = [](std::vector<double>& v) {
    if (v.empty()) return 0.0;
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  state.counters["ratio_median"] = median(ratios);
  state.counters["cpu_ratio_median"] = median(cpu_ratios);
  state.counters["private_ratio_median"] = median(private_ratios);
  state.counters["private_cpu_ratio_median"] = median(private_cpu_ratios);
  state.counters["rounds"] = static_cast<double>(ratios.size());
}
BENCHMARK(BM_Bounce2ThreadRatio)->Iterations(100)->UseRealTime();

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
