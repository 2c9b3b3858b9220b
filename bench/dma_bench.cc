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
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "bench/scenarios.h"

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
    std::memcpy(slot, src, n);  // What map_single copies in...
    benchmark::ClobberMemory();
    std::memcpy(src, slot, n);  // ...and unmap_single copies out.
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
      std::memcpy(slot, src, n);
      benchmark::ClobberMemory();
      std::memcpy(src, slot, n);
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

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
