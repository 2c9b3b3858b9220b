#!/usr/bin/env bash
# `make bench`: builds the benchmark programs into $BUILD/bench (from scratch if needed), counts
# instructions per operation under callgrind, times the bounce copies with Google Benchmark, and
# writes:
#   $BUILD/bench/summary.txt     one "name value" line per figure (the issue's names first)
#   $BUILD/bench/targets.txt     "name value target within|MISSED" for the figures with a target
#   $BUILD/bench/occupancy.png   cost against occupancy (gnuplot), from occupancy.dat
#   $BUILD/bench/ir.txt          per-scenario callgrind breakdown (bench/callgrind_ir.py)
#   $BUILD/bench/timing.txt      Google Benchmark's report of every scenario (time, not a figure)
# Runs in about two minutes on two cores. Missed targets are reported, not turned into a failure:
# these are measurements, not tests.
set -euo pipefail

cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
OUT=$BUILD/bench
JOBS=${JOBS:-2}
mkdir -p "$OUT"

echo "bench: building into $OUT"
make --no-print-directory -s -f bench/bench.mk BUILD="$BUILD" -j"$JOBS"

# ---- Time: the bounce-copy ratios and the two-thread ratio (Google Benchmark) -------------------
# BM_BounceCopyRatio alternates batches of bounced map+unmap and of the two plain copies (the same
# copy routine at the same addresses) in one loop, so that load from other processes falls on both
# alike; a run's figure is the median of its per-pair ratios. BM_Bounce2ThreadRatio runs one
# thread, then two, round after round; a run's figure is the median per-round ratio. Load that
# shares the core still moves a run's figure, for tens of seconds at a time, so each is measured
# by five processes spread over the script (two before the callgrind counts, two after them, one
# at the end), each after a `sync` so that the write-back of this script's own output does not
# run meanwhile. The figure is the median of the five runs, never the best; summary.txt lists
# every run's value and the spread (min-max). The allocator's time ratio from 256 MiB to 16 GiB
# (BM_PfaMixedSizes) is taken the same way: it depends on what the rest of the machine leaves of
# the shared last-level cache, which changes as much from minute to minute.
rm -f "$OUT"/copy-*.json "$OUT"/copy-*.txt
copy_run() {
  local n=$1
  echo "bench: timing bounce copies against memcpy, two threads against one, the allocator at 256 MiB and 16 GiB: run $n of 5 [${SECONDS}s]"
  sync
  "$OUT/dma_bench" --benchmark_filter='BM_BounceCopyRatio/|BM_Bounce2ThreadRatio|BM_PfaMixedSizes' \
    --benchmark_min_time=3 \
    --benchmark_out="$OUT/copy-$n.json" --benchmark_out_format=json >"$OUT/copy-$n.txt" 2>&1
}
copy_run 1
copy_run 2

# ---- Instruction counts (callgrind) -------------------------------------------------------------
# Set-up runs uninstrumented (--instr-atstart=no); dma_ir switches instrumentation and collection
# on around each measured loop only and dumps one profile per scenario. Two valgrind processes
# share the scenarios between the two cores.
CG=$OUT/callgrind
rm -rf "$CG"
mkdir -p "$CG"
run_callgrind() {
  local tag=$1
  shift
  valgrind --tool=callgrind --instr-atstart=no --collect-atstart=no --compress-strings=no \
    --compress-pos=no --callgrind-out-file="$CG/$tag.out" "$OUT/dma_ir" "$@" \
    >"$CG/$tag.state" 2>"$CG/$tag.log" || {
    echo "bench: callgrind run '$tag' failed:" >&2
    tail -n 20 "$CG/$tag.log" >&2
    return 1
  }
}
echo "bench: counting instructions under callgrind [${SECONDS}s]"
run_callgrind pfa pfa_ &
pid_pfa=$!
run_callgrind map bounce_ direct_ &
pid_map=$!
status=0
wait $pid_pfa || status=1
wait $pid_map || status=1
[ $status -eq 0 ] || exit 1
# The IOMMU layer (issue 14) and the model of Linux's IOVA allocator.
run_callgrind iommu iommu_ iova_ || exit 1
{
  python3 bench/callgrind_ir.py "$CG/pfa.out"
  python3 bench/callgrind_ir.py "$CG/map.out"
  python3 bench/callgrind_ir.py "$CG/iommu.out"
} >"$OUT/ir.txt"
cat "$CG/pfa.state" "$CG/map.state" "$CG/iommu.state" >"$OUT/ir_state.txt"
"$OUT/dma_ir" --metadata >"$OUT/metadata.txt"

# ---- Cache misses of the page-frame allocator (callgrind's cache simulation) --------------------
# The mixed workload of orders 0-4 at 50% over 256 MiB .. 16 GiB of simulated RAM (pfa_mixed04_*),
# with a stated geometry, the same on every machine: 32 KiB 8-way first-level caches and a 32 MiB
# 16-way last level (pfa_mixed_llmiss_*), and once more with a last level of 1 MiB, 16-way (the
# private L2 of the development machine, whose share of its L3 is small: pfa_mixed_l2miss_*).
# 64-byte lines throughout.
PFA_CACHE_GEOMETRY="I1=32768,8,64 D1=32768,8,64 LL=33554432,16,64"
PFA_L2_GEOMETRY="I1=32768,8,64 D1=32768,8,64 LL=1048576,16,64"
run_cachesim() {
  local tag=$1 geometry=$2
  # shellcheck disable=SC2046  # one --XX=... option per word
  valgrind --tool=callgrind --instr-atstart=no --collect-atstart=no --compress-strings=no \
    --compress-pos=no --cache-sim=yes $(printf -- '--%s ' $geometry) \
    --callgrind-out-file="$CG/$tag.out" "$OUT/dma_ir" pfa_mixed04 \
    >"$CG/$tag.state" 2>"$CG/$tag.log" || {
    echo "bench: callgrind run '$tag' failed:" >&2
    tail -n 20 "$CG/$tag.log" >&2
    return 1
  }
}
echo "bench: simulating the allocator's cache misses [${SECONDS}s]"
run_cachesim llc "$PFA_CACHE_GEOMETRY" &
pid_llc=$!
run_cachesim l2 "$PFA_L2_GEOMETRY" &
pid_l2=$!
status=0
wait $pid_llc || status=1
wait $pid_l2 || status=1
[ $status -eq 0 ] || exit 1
{
  echo "# geometry $PFA_CACHE_GEOMETRY"
  python3 bench/callgrind_ir.py "$CG/llc.out"
} >"$OUT/cachesim.txt"
{
  echo "# geometry $PFA_L2_GEOMETRY"
  python3 bench/callgrind_ir.py "$CG/l2.out"
} >"$OUT/cachesim_l2.txt"

# ---- Time: the allocator at 256 MiB .. 16 GiB, interleaved in one process -----------------------
echo "bench: timing the allocator from 256 MiB to 16 GiB [${SECONDS}s]"
"$OUT/dma_bench" --benchmark_filter='BM_PfaMixed(Sizes|Harness)' --benchmark_min_time=3 \
  --benchmark_out="$OUT/pfa_sizes.json" --benchmark_out_format=json >"$OUT/pfa_sizes.txt" 2>&1

copy_run 3
copy_run 4

# ---- Time: every scenario (Google Benchmark, informative) ---------------------------------------
echo "bench: timing every scenario (Google Benchmark) [${SECONDS}s]"
"$OUT/dma_bench" --benchmark_filter='-BM_BounceCopyRatio/|BM_Bounce2ThreadRatio|BM_PfaMixed(Sizes|Harness)' \
  --benchmark_min_time=0.2 \
  --benchmark_out="$OUT/timing.json" --benchmark_out_format=json >"$OUT/timing.txt" 2>&1
copy_run 5

# ---- Summary and plot ---------------------------------------------------------------------------
python3 bench/summarize.py "$OUT"
gnuplot -e "datafile='$OUT/occupancy.dat'; outfile='$OUT/occupancy.png'" bench/occupancy.gp
echo "bench: wrote $OUT/summary.txt, $OUT/targets.txt and $OUT/occupancy.png in ${SECONDS}s"
cat "$OUT/targets.txt"
