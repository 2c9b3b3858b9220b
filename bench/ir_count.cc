// Instruction counts per operation, for `valgrind --tool=callgrind` (bench/run_bench.sh runs it
// with --instr-atstart=no --collect-atstart=no).
//
// For each scenario the set-up runs uninstrumented; then instrumentation starts, the statistics
// are zeroed, collection is switched on around exactly the measured loop (`ops` operations) and
// the profile is dumped under the name "<scenario> ops=<ops>". bench/callgrind_ir.py reads the
// dumps and splits each one by source file: the subsystem's own code (support/, mm/, dma/, arch/,
// wherever the compiler inlined it), memcpy, and this harness.
//
// Also prints one line per scenario on stdout: "<scenario> ops=<n> <key>=<value>..." with the
// state actually reached (occupancy and so on), which the summary keeps next to the figures.
//
//   dma_ir [--native] [--list] [substring...]   run the scenarios whose names contain a substring
//   dma_ir --metadata                            print pfa_metadata_fraction for 16 GiB
#include <valgrind/callgrind.h>

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <functional>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "bench/iommu_scenarios.h"
#include "bench/scenarios.h"

namespace {

using bench::kGiB;
using bench::kKiB;

constexpr uint64_t kPfaRam = 1 * kGiB;
constexpr uint64_t kSeed = 0x5EED'0000'D1A7ull;
const int kOccupancies[] = {1, 10, 25, 50, 75, 90, 95};
struct SizeLabel {
  const char* label;
  uint64_t bytes;
};
const SizeLabel kMixedSizes[] = {
    {"256m", 256 * bench::kMiB}, {"1g", kGiB}, {"4g", 4 * kGiB}, {"16g", 16 * kGiB}};

struct Scenario {
  std::string name;
  uint64_t ops;
  // Builds the state, measures `ops` operations through `measure`, and returns what was reached.
  std::function<std::string(uint64_t ops, const std::function<void(const std::function<void()>&)>&)>
      body;
};

std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

std::vector<Scenario> scenarios() {
  std::vector<Scenario> v;
  using Measure = std::function<void(const std::function<void()>&)>;
  // One fill serves every occupancy, from the highest down (see PfaOrder0Ring).
  auto order0 = std::make_shared<std::unique_ptr<bench::PfaOrder0Ring>>();
  for (size_t i = std::size(kOccupancies); i-- > 0;) {
    int occ = kOccupancies[i];
    bool last = i == 0;
    v.push_back({"pfa_order0_pair_" + std::to_string(occ), 200'000,
                 [occ, last, order0](uint64_t ops, const Measure& m) {
                   if (!*order0) {
                     *order0 = std::make_unique<bench::PfaOrder0Ring>(kPfaRam, kSeed);
                   }
                   bench::PfaOrder0Ring& s = **order0;
                   s.set_occupancy(occ / 100.0);
                   m([&] { s.run(ops); });
                   std::string state = fmt("occupancy=%.4f", s.occupancy());
                   if (last) order0->reset();
                   return state;
                 }});
  }
  for (int occ : kOccupancies) {
    v.push_back(
        {"pfa_mixed_op_" + std::to_string(occ), 200'000, [occ](uint64_t ops, const Measure& m) {
           bench::PfaMixed s(occ / 100.0, kPfaRam, kSeed + 100 + static_cast<uint64_t>(occ));
           m([&] { s.run(ops); });
           return fmt("occupancy=%.4f", s.occupancy()) + " allocs=" + std::to_string(s.allocs()) +
                  " frees=" + std::to_string(s.frees()) +
                  " failures=" + std::to_string(s.failures());
         }});
  }
  // The mixed workload of orders 0-4 at 50% over RAM of growing size, for the cache simulation
  // (pfa_mixed_llmiss_*): a warm-up of as many operations as are measured runs first, inside
  // the instrumentation, so that the simulated caches hold the steady state's lines; then the
  // statistics are zeroed and the measured loop counted.
  for (const auto& [label, bytes] : kMixedSizes) {
    v.push_back(
        {std::string("pfa_mixed04_50_") + label, 200'000, [bytes](uint64_t ops, const Measure& m) {
           bench::PfaMixed s(0.5, bytes, kSeed + 150, 4);
           m([&] {
             s.run(ops);
             CALLGRIND_ZERO_STATS;
             s.run(ops);
           });
           return fmt("occupancy=%.4f", s.occupancy()) + " allocs=" + std::to_string(s.allocs()) +
                  " failures=" + std::to_string(s.failures());
         }});
  }
  v.push_back({"pfa_order9_pair_frag", 100'000, [](uint64_t ops, const Measure& m) {
                 bench::PfaOrder9Frag s(kPfaRam, kSeed + 200);
                 m([&] { s.run(ops); });
                 return fmt("occupancy=%.4f", s.occupancy());
               }});
  for (bool masked : {false, true}) {
    std::string mode = masked ? "masked" : "unmasked";
    v.push_back({"pfa_order9_pair_" + mode, 100'000, [masked](uint64_t ops, const Measure& m) {
                   bench::PfaOrder9Masked s(masked);
                   std::string before = fmt("free_above_4g=%.4f", s.free_above_limit());
                   m([&] { s.run(ops); });
                   return before;
                 }});
    // Allocations alone: collection is switched off while each batch is freed.
    v.push_back({"pfa_order9_alloc_" + mode, 100'000, [masked](uint64_t ops, const Measure& m) {
                   constexpr size_t kBatch = 16;
                   bench::PfaOrder9Masked s(masked);
                   std::string before = fmt("free_above_4g=%.4f", s.free_above_limit());
                   m([&] {
                     for (uint64_t done = 0; done < ops; done += kBatch) {
                       s.alloc_batch(kBatch);
                       CALLGRIND_TOGGLE_COLLECT;
                       s.free_batch();
                       CALLGRIND_TOGGLE_COLLECT;
                     }
                   });
                   return before;
                 }});
  }
  for (size_t size : {4 * kKiB, 64 * kKiB}) {
    for (int occ : kOccupancies) {
      v.push_back({"bounce_" + std::to_string(size / kKiB) + "k_" + std::to_string(occ),
                   size > 4 * kKiB ? uint64_t{5000} : uint64_t{20000},
                   [size, occ](uint64_t ops, const Measure& m) {
                     bench::BounceRing s(occ / 100.0, size, DmaDirection::kToDevice,
                                         kSeed + 300 + static_cast<uint64_t>(occ));
                     m([&] { s.run(ops); });
                     return fmt("occupancy=%.4f", s.occupancy()) +
                            fmt(" background=%.4f", s.background_occupancy()) +
                            " background_mappings=" + std::to_string(s.background_mappings());
                   }});
    }
  }
  // The same rings with the pool's per-CPU caches off: what a kernel that does not enable them
  // pays (every slot allocation and free under the pool's lock).
  for (size_t size : {4 * kKiB, 64 * kKiB}) {
    for (int occ : {1, 95}) {
      v.push_back({"bounce_locked_" + std::to_string(size / kKiB) + "k_" + std::to_string(occ),
                   size > 4 * kKiB ? uint64_t{5000} : uint64_t{20000},
                   [size, occ](uint64_t ops, const Measure& m) {
                     bench::BounceRing s(occ / 100.0, size, DmaDirection::kToDevice,
                                         kSeed + 300 + static_cast<uint64_t>(occ),
                                         /*cpu_caches=*/0);
                     m([&] { s.run(ops); });
                     return fmt("occupancy=%.4f", s.occupancy());
                   }});
    }
  }
  // Random-size churn: each operation unmaps one random mapping and maps a new random size.
  for (int occ : kOccupancies) {
    v.push_back(
        {"bounce_churn_" + std::to_string(occ), 2000, [occ](uint64_t ops, const Measure& m) {
           bench::BounceRing s(occ / 100.0, 4 * kKiB, DmaDirection::kToDevice,
                               kSeed + 500 + static_cast<uint64_t>(occ));
           m([&] { s.run_churn(ops); });
           return fmt("occupancy=%.4f", s.occupancy()) +
                  " misses=" + std::to_string(s.churn_misses());
         }});
  }
  v.push_back({"direct_map_unmap", 200'000, [](uint64_t ops, const Measure& m) {
                 bench::DirectMap s;
                 m([&] { s.run(ops); });
                 return std::string("coherent=1");
               }});
  // The IOMMU layer (issue 14) on the host model: strict map+unmap of 4 KiB, and the IOVA
  // allocator's alloc+free pairs beside the model of Linux's (bench/linux_iova.h): 1 page (the
  // per-CPU caches) and 64 pages (past them: the buddy layer, or Linux's red-black tree).
  for (int occ : {1, 50, 95}) {
    v.push_back({"iommu_map_unmap_4k_" + std::to_string(occ), 100'000,
                 [occ](uint64_t ops, const Measure& m) {
                   bench::IommuMapUnmap s(occ / 100.0, kSeed + 700 + static_cast<uint64_t>(occ));
                   m([&] { s.run(ops); });
                   return fmt("occupancy=%.4f", s.occupancy());
                 }});
    for (uint64_t pages : {uint64_t{1}, uint64_t{64}}) {
      std::string suffix = (pages == 1 ? "" : "_64p") + std::string("_") + std::to_string(occ);
      v.push_back(
          {"iova_alloc_free" + suffix, 100'000, [occ, pages](uint64_t ops, const Measure& m) {
             bench::IovaPair s(occ / 100.0, pages, kSeed + 800 + static_cast<uint64_t>(occ));
             m([&] { s.run(ops); });
             return fmt("occupancy=%.4f", s.occupancy());
           }});
      v.push_back(
          {"linux_iova_alloc_free" + suffix, 100'000, [occ, pages](uint64_t ops, const Measure& m) {
             bench::LinuxIovaPair s(occ / 100.0, pages, kSeed + 800 + static_cast<uint64_t>(occ));
             m([&] { s.run(ops); });
             return fmt("occupancy_nodes=%.4f", s.occupancy());
           }});
    }
  }
  return v;
}

// Collects exactly the instructions executed by `run`.
void measure_under_callgrind(const std::string& desc, const std::function<void()>& run) {
  CALLGRIND_START_INSTRUMENTATION;
  CALLGRIND_ZERO_STATS;
  CALLGRIND_TOGGLE_COLLECT;
  run();
  CALLGRIND_TOGGLE_COLLECT;
  CALLGRIND_DUMP_STATS_AT(desc.c_str());
  CALLGRIND_STOP_INSTRUMENTATION;
}

}  // namespace

int main(int argc, char** argv) {
  bool list = false;
  bool native = false;
  std::vector<std::string> filters;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--metadata") == 0) {
      uint64_t meta = 0;
      uint64_t managed = 0;
      double f = bench::pfa_metadata_fraction_16g(&meta, &managed);
      if (f < 0) {
        std::fprintf(stderr, "dma_ir: metadata size mismatch\n");
        return 1;
      }
      std::printf("pfa_metadata_fraction %.6f metadata_bytes=%" PRIu64 " managed_bytes=%" PRIu64
                  "\n",
                  f, meta, managed);
      return 0;
    }
    if (std::strcmp(argv[i], "--list") == 0) {
      list = true;
    } else if (std::strcmp(argv[i], "--native") == 0) {
      native = true;
    } else {
      filters.emplace_back(argv[i]);
    }
  }
  if (!native && !RUNNING_ON_VALGRIND && !list) {
    std::fprintf(stderr, "dma_ir: run under valgrind --tool=callgrind, or pass --native\n");
    return 1;
  }
  for (const Scenario& s : scenarios()) {
    bool selected = filters.empty();
    for (const std::string& f : filters) selected = selected || s.name.find(f) != std::string::npos;
    if (!selected) continue;
    if (list) {
      std::printf("%s\n", s.name.c_str());
      continue;
    }
    std::string desc = s.name + " ops=" + std::to_string(s.ops);
    std::string state = s.body(
        s.ops, [&](const std::function<void()>& run) { measure_under_callgrind(desc, run); });
    std::printf("%s %s\n", desc.c_str(), state.c_str());
    std::fflush(stdout);
  }
  return 0;
}
