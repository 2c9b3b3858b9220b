#!/usr/bin/env python3
"""Turns the raw measurements of bench/run_bench.sh into the figures of the issue.

Reads, in the output directory: ir.txt (bench/callgrind_ir.py), ir_state.txt (dma_ir's stdout:
the state each scenario reached), metadata.txt (dma_ir --metadata), copy-<n>.json (one per
timing run of BM_BounceCopyRatio, BM_Bounce2ThreadRatio and BM_PfaMixedSizes), timing.json
(Google Benchmark),
cachesim.txt and cachesim_l2.txt (callgrind_ir.py over the allocator's cache simulations, each
after a "# geometry" line) and pfa_sizes.json (BM_PfaMixedSizes, BM_PfaMixedHarness). Writes
summary.txt ("name value"), targets.txt ("name value target verdict") and occupancy.dat (the plot's data).

How each figure is derived is documented in BENCHMARKS.md; in short, instruction figures are the
instructions executed in the subsystem's own source files (support/, mm/, dma/, arch/, inlined
code included; bench/callgrind_ir.py's `subsys`) per operation of the measured loop. The bounce
figures leave out the instructions inside memcpy (`copy`); *_with_copy figures add them back.
"""
import glob
import json
import os
import sys

OCCUPANCIES = [1, 10, 25, 50, 75, 90, 95]

# name -> (target, "max")
TARGETS = {
    "pfa_order0_pair_ir_10": 150,
    "pfa_order0_pair_ir_95": 150,
    "pfa_mixed_op_ir_50": 200,
    "pfa_order9_pair_ir_frag": 300,
    "pfa_masked_order9_ratio": 2,
    "bounce_map_unmap_ir_4k_1": 400,
    "bounce_map_unmap_ir_4k_95": 400,
    "bounce_map_unmap_ir_64k_1": 400,
    "bounce_map_unmap_ir_64k_95": 400,
    "bounce_copy_64k_ratio": 1.11,
    "bounce_copy_4k_ratio": 1.15,
    "direct_map_unmap_ir": 50,
    "iommu_map_unmap_ir_4k_1": 400,
    "iommu_map_unmap_ir_4k_95": 400,
    "iova_alloc_free_ir_95": 100,
    "pfa_metadata_fraction": 0.001,
    "bounce_2thread_ratio": 1.25,
    "pfa_mixed_llmiss_16g": 0.25,
    "pfa_mixed_ns_ratio_16g_256m": 1.5,
}
PFA_SIZES = ["256m", "1g", "4g", "16g"]


def read_kv_lines(path):
    rows = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            row = {}
            for p in parts[1:]:
                k, eq, v = p.partition("=")
                if eq:
                    row[k] = float(v)
            rows[parts[0]] = row
    return rows


def copy_ratios(path):
    """size -> the counters of BM_BounceCopyRatio/<size>, and "2thread" -> those of
    BM_Bounce2ThreadRatio (Google Benchmark JSON)."""
    with open(path) as f:
        data = json.load(f)
    out = {}
    for b in data["benchmarks"]:
        if b.get("run_type") != "iteration":
            continue
        if b["run_name"].startswith("BM_BounceCopyRatio/"):
            out[int(b["run_name"].split("/")[1])] = b
        elif b["run_name"].startswith("BM_Bounce2ThreadRatio"):
            out["2thread"] = b
        elif b["run_name"].startswith("BM_PfaMixedSizes"):
            out["pfa"] = dict(b, ratio_median=b["ratio_16g_256m"])
    return out


def copy_runs(out_dir):
    """The copy-<n>.json of every run, in run order, as copy_ratios() dicts."""
    paths = sorted(glob.glob(os.path.join(out_dir, "copy-*.json")),
                   key=lambda p: int(p.rsplit("-", 1)[1].split(".")[0]))
    if not paths:
        raise SystemExit("summarize: no copy-<n>.json in " + out_dir)
    return [copy_ratios(p) for p in paths]


def median_run(runs, key):
    """The counters of the run whose ratio_median is the median of the runs' (the lower middle
    one for an even count): the figure, never the best run (run_bench.sh)."""
    ordered = sorted((r for r in runs if key in r), key=lambda r: r[key]["ratio_median"])
    return ordered[(len(ordered) - 1) // 2][key] if ordered else None


def median_of_runs(runs, size):
    ordered = sorted(r[size]["ratio_median"] for r in runs)
    return ordered[(len(ordered) - 1) // 2]


def cachesim(path):
    """(geometry, rows) of a cachesim*.txt written by run_bench.sh: its "# geometry ..." line and
    callgrind_ir.py's lines."""
    geometry = ""
    rows = {}
    with open(path) as f:
        for line in f:
            if line.startswith("# geometry "):
                geometry = line[len("# geometry "):].strip()
            elif line.strip():
                parts = line.split()
                rows[parts[0]] = {k: float(v) for k, eq, v in (p.partition("=") for p in parts[1:])
                                  if eq}
    return geometry, rows


def main():
    out = sys.argv[1]
    ir = read_kv_lines(os.path.join(out, "ir.txt"))
    state = read_kv_lines(os.path.join(out, "ir_state.txt"))
    figures = []  # (name, value, fmt)

    def add(name, value, fmt="%.2f"):
        figures.append((name, value, fmt))

    def pfa_pair(s):
        return ir[s]["subsys"]

    def bounce(s):
        return ir[s]["subsys"]

    # The figures, in its order.
    add("pfa_order0_pair_ir_10", pfa_pair("pfa_order0_pair_10"))
    add("pfa_order0_pair_ir_95", pfa_pair("pfa_order0_pair_95"))
    add("pfa_mixed_op_ir_50", pfa_pair("pfa_mixed_op_50"))
    add("pfa_order9_pair_ir_frag", pfa_pair("pfa_order9_pair_frag"))
    masked = ir["pfa_order9_alloc_masked"]["subsys"]
    unmasked = ir["pfa_order9_alloc_unmasked"]["subsys"]
    add("pfa_masked_order9_ratio", masked / unmasked, "%.3f")
    for size in ("4k", "64k"):
        for occ in (1, 95):
            add("bounce_map_unmap_ir_%s_%d" % (size, occ), bounce("bounce_%s_%d" % (size, occ)))

    runs = copy_runs(out)
    ratios = {size: median_run(runs, size) for size in (65536, 4096)}
    for size, label in ((65536, "64k"), (4096, "4k")):
        add("bounce_copy_%s_ratio" % label, ratios[size]["ratio_median"], "%.3f")

    add("direct_map_unmap_ir", ir["direct_map_unmap"]["subsys"])
    # Issue 14: the IOMMU layer on the host model. The library's instructions: subsys without the
    # simulated IOMMU's own (its IOTLB invalidation, model_code).
    for occ in (1, 95):
        r = ir["iommu_map_unmap_4k_%d" % occ]
        add("iommu_map_unmap_ir_4k_%d" % occ, r["subsys"] - r["model_code"])
    add("iova_alloc_free_ir_95", ir["iova_alloc_free_95"]["subsys"])
    meta = read_kv_lines(os.path.join(out, "metadata.txt"))
    with open(os.path.join(out, "metadata.txt")) as f:
        meta_value = float(f.read().split()[1])
    add("pfa_metadata_fraction", meta_value, "%.6f")
    # Two threads on one pool against one (BM_Bounce2ThreadRatio in each timing run: the median
    # of its 100 per-round ratios; the figure is the median of the runs).
    two_runs = [r for r in runs if "2thread" in r]
    if two_runs:
        add("bounce_2thread_ratio", median_run(runs, "2thread")["ratio_median"], "%.3f")
    # The allocator's simulated last-level misses per operation (its own code's, the harness's
    # excluded) and its time per operation from 256 MiB to 16 GiB.
    geometry, llc = cachesim(os.path.join(out, "cachesim.txt"))
    l2_geometry, l2 = cachesim(os.path.join(out, "cachesim_l2.txt"))
    add("pfa_mixed_llmiss_16g", llc["pfa_mixed04_50_16g"]["llmiss_subsys"], "%.4f")
    with open(os.path.join(out, "pfa_sizes.json")) as f:
        size_runs = json.load(f)["benchmarks"]
    sizes = [b for b in size_runs if b["name"].startswith("BM_PfaMixedSizes")]
    harness = [b for b in size_runs if b["name"].startswith("BM_PfaMixedHarness")]
    # The allocator's time at 16 GiB over 256 MiB: the median of the timing runs' (each the median
    # of its rounds), as the copy ratios.
    add("pfa_mixed_ns_ratio_16g_256m", median_run(runs, "pfa")["ratio_median"], "%.3f")

    # More detail, same format.
    for occ in OCCUPANCIES:
        if occ not in (10, 95):
            add("pfa_order0_pair_ir_%d" % occ, pfa_pair("pfa_order0_pair_%d" % occ))
    for occ in OCCUPANCIES:
        if occ != 50:
            add("pfa_mixed_op_ir_%d" % occ, pfa_pair("pfa_mixed_op_%d" % occ))
    for size in ("4k", "64k"):
        for occ in OCCUPANCIES:
            if occ not in (1, 95):
                add("bounce_map_unmap_ir_%s_%d" % (size, occ), bounce("bounce_%s_%d" % (size, occ)))
    for size in ("4k", "64k"):
        for occ in (1, 95):
            r = ir["bounce_%s_%d" % (size, occ)]
            add("bounce_map_unmap_with_copy_ir_%s_%d" % (size, occ), r["subsys"] + r["copy"])
            add("bounce_pool_alloc_free_ir_%s_%d" % (size, occ), r["pool_code"])
    for occ in OCCUPANCIES:
        add("bounce_churn_ir_%d" % occ, bounce("bounce_churn_%d" % occ))
        add("bounce_churn_misses_%d" % occ, state["bounce_churn_%d" % occ]["misses"], "%d")
    add("pfa_order9_alloc_ir_masked", masked)
    add("pfa_order9_alloc_ir_unmasked", unmasked)
    add("pfa_masked_order9_pair_ratio",
        pfa_pair("pfa_order9_pair_masked") / pfa_pair("pfa_order9_pair_unmasked"), "%.3f")
    # The bounce rings again with the pool's per-CPU caches off (informative: no target).
    for size in ("4k", "64k"):
        for occ in (1, 95):
            add("bounce_map_unmap_locked_ir_%s_%d" % (size, occ),
                bounce("bounce_locked_%s_%d" % (size, occ)))
    # The IOMMU layer, informative: every occupancy, the simulated IOMMU's share, and the IOVA
    # allocator beside the model of Linux's (bench/linux_iova.h). The Linux model's code is in
    # bench/ and the C++ library (std::set), so the comparison uses the callgrind totals of both
    # loops (the loop itself is a few instructions of each).
    for occ in (1, 50, 95):
        r = ir["iommu_map_unmap_4k_%d" % occ]
        add("iommu_map_unmap_lib_ir_4k_%d" % occ, r["subsys"] - r["model_code"])
        add("iommu_map_unmap_model_ir_4k_%d" % occ, r["model_code"])
        for suffix in ("", "_64p"):
            ours = ir["iova_alloc_free%s_%d" % (suffix, occ)]
            linux = ir["linux_iova_alloc_free%s_%d" % (suffix, occ)]
            add("iova_alloc_free%s_lib_ir_%d" % (suffix, occ), ours["subsys"])
            add("iova_alloc_free%s_total_ir_%d" % (suffix, occ), ours["total"])
            add("linux_iova_alloc_free%s_total_ir_%d" % (suffix, occ), linux["total"])
    # The same loops with the benchmark's own bookkeeping counted too (the callgrind total).
    for s in ("pfa_order0_pair_10", "pfa_order0_pair_95", "pfa_mixed_op_50", "pfa_order9_pair_frag",
              "bounce_4k_1", "bounce_4k_95", "bounce_64k_1", "bounce_64k_95", "direct_map_unmap"):
        add("loop_total_ir_" + s, ir[s]["total"])
    for size, label in ((65536, "64k"), (4096, "4k")):
        r = ratios[size]
        add("bounce_copy_%s_ratio_of_sums" % label, r["ratio_of_sums"], "%.3f")
        add("bounce_copy_%s_ns" % label, r["bounced_ns"], "%.1f")
        add("memcpy_through_pool_%s_ns" % label, r["memcpy_ns"], "%.1f")
        for n, run in enumerate(runs, 1):
            add("bounce_copy_%s_ratio_run%d" % (label, n), run[size]["ratio_median"], "%.3f")
        add("bounce_copy_%s_ratio_median_of_runs" % label, median_of_runs(runs, size), "%.3f")
        add("bounce_copy_%s_ratio_min" % label, min(r[size]["ratio_median"] for r in runs), "%.3f")
        add("bounce_copy_%s_ratio_max" % label, max(r[size]["ratio_median"] for r in runs), "%.3f")
    for n, run in enumerate(two_runs, 1):
        add("bounce_2thread_ratio_run%d" % n, run["2thread"]["ratio_median"], "%.3f")
        add("bounce_2thread_cpu_ratio_run%d" % n, run["2thread"]["cpu_ratio_median"], "%.3f")
        # The control: the same two threads on private platforms (nothing of the library shared).
        add("bounce_2thread_private_ratio_run%d" % n, run["2thread"]["private_ratio_median"],
            "%.3f")
    if two_runs:
        controls = sorted(r["2thread"]["private_ratio_median"] for r in two_runs)
        add("bounce_2thread_private_ratio_median_of_runs", controls[len(controls) // 2], "%.3f")
        values = [r["2thread"]["ratio_median"] for r in two_runs]
        add("bounce_2thread_ratio_min", min(values), "%.3f")
        add("bounce_2thread_ratio_max", max(values), "%.3f")
    add("pfa_metadata_bytes_16g", meta["pfa_metadata_fraction"]["metadata_bytes"], "%d")
    for s in ("pfa_order0_pair_10", "pfa_order0_pair_95", "pfa_mixed_op_50", "bounce_4k_1",
              "bounce_4k_95", "bounce_64k_1", "bounce_64k_95"):
        add("occupancy_reached_" + s, state[s]["occupancy"], "%.4f")
    add("free_above_4g_in_masked", state["pfa_order9_alloc_masked"]["free_above_4g"], "%.4f")
    add("pfa_mixed_op_50_failures", state["pfa_mixed_op_50"]["failures"], "%d")
    for size in PFA_SIZES[:-1]:  # 16g is the figure, above.
        add("pfa_mixed_llmiss_" + size, llc["pfa_mixed04_50_" + size]["llmiss_subsys"], "%.4f")
    for size in PFA_SIZES:
        add("pfa_mixed_l2miss_" + size, l2["pfa_mixed04_50_" + size]["llmiss_subsys"], "%.4f")
    for size in PFA_SIZES:
        add("pfa_mixed_d1miss_" + size, llc["pfa_mixed04_50_" + size]["d1miss_subsys"], "%.4f")
    for size in PFA_SIZES:
        add("pfa_mixed_harness_llmiss_" + size, llc["pfa_mixed04_50_" + size]["llmiss_harness"],
            "%.4f")
    for size in PFA_SIZES:
        add("pfa_mixed04_op_ir_" + size, ir["pfa_mixed04_50_" + size]["subsys"])
    for size in PFA_SIZES:
        add("pfa_mixed_ns_" + size, sizes[0]["ns_" + size], "%.1f")
    # The harness alone at each size (a stand-in allocator, its own rounds), and the ratio of
    # the medians with the harness's median taken off each.
    for size in PFA_SIZES:
        add("pfa_mixed_harness_ns_" + size, harness[0]["harness_ns_" + size], "%.1f")
    lo = sizes[0]["ns_256m"] - harness[0]["harness_ns_256m"]
    if lo > 0:
        add("pfa_mixed_ns_ratio_less_harness_16g_256m",
            (sizes[0]["ns_16g"] - harness[0]["harness_ns_16g"]) / lo, "%.3f")
    add("pfa_mixed_ns_rounds", sizes[0]["rounds"], "%d")
    pfa_runs = [r["pfa"]["ratio_median"] for r in runs if "pfa" in r]
    for n, value in enumerate(pfa_runs, 1):
        add("pfa_mixed_ns_ratio_16g_256m_run%d" % n, value, "%.3f")
    add("pfa_mixed_ns_ratio_16g_256m_min", min(pfa_runs), "%.3f")
    add("pfa_mixed_ns_ratio_16g_256m_max", max(pfa_runs), "%.3f")
    # The dedicated run's own ratio (the one pfa_mixed_ns_<size> above come from).
    add("pfa_mixed_ns_ratio_16g_256m_sizes_run", sizes[0]["ratio_16g_256m"], "%.3f")

    with open(os.path.join(out, "summary.txt"), "w") as f:
        for name, value, fmt in figures:
            f.write(("%s " + fmt + "\n") % (name, value))
        # Not figures: the cache geometries the pfa_mixed_*miss_* figures were simulated with.
        f.write("pfa_mixed_llmiss_geometry %s\n" % geometry.replace(" ", ";"))
        f.write("pfa_mixed_l2miss_geometry %s\n" % l2_geometry.replace(" ", ";"))
    met = 0
    with open(os.path.join(out, "targets.txt"), "w") as f:
        f.write("%-28s %12s %10s  %s\n" % ("# name", "value", "target", "verdict"))
        for name, value, fmt in figures:
            if name not in TARGETS:
                continue
            ok = value <= TARGETS[name]
            met += ok
            f.write(("%-28s %12" + fmt[1:] + " %10s  %s\n") %
                    (name, value, "<= %g" % TARGETS[name], "within" if ok else "MISSED"))
        f.write("# %d of %d figures within target\n" % (met, len(TARGETS)))
    with open(os.path.join(out, "occupancy.dat"), "w") as f:
        f.write("# occupancy pfa_order0_pair pfa_mixed_op bounce_4k bounce_64k bounce_churn"
                " (instructions/op)\n")
        for occ in OCCUPANCIES:
            f.write("%d %.2f %.2f %.2f %.2f %.2f\n" % (
                occ, pfa_pair("pfa_order0_pair_%d" % occ), pfa_pair("pfa_mixed_op_%d" % occ),
                bounce("bounce_4k_%d" % occ), bounce("bounce_64k_%d" % occ),
                bounce("bounce_churn_%d" % occ)))


if __name__ == "__main__":
    main()
