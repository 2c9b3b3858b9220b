#!/usr/bin/env python3
"""Reads the callgrind dumps written by dma_ir and prints instructions per operation.

Each dump (<prefix>.N, written by CALLGRIND_DUMP_STATS_AT) covers exactly one measured loop; its
trigger line names the scenario and the number of operations: "<scenario> ops=<n>". The dumps
must be written with --compress-strings=no --compress-pos=no, from a binary with line tables
(the bench build uses -gdwarf-4).

Every instruction of a dump is attributed to the source file it was compiled from, inlined code
included (callgrind's fl=/fi=/fe= records), so the split does not depend on what the compiler
inlined into the benchmark's own loop:
  subsys  the DMA subsystem and its platform: files under support/, mm/, dma/, arch/
  copy    the C library's memcpy/memmove (the data copies of a bounced mapping)
  harness everything else: the benchmark's loop and bookkeeping (bench/, the C++ library)
and, as parts of subsys, pool_code: the instructions compiled from mm/bounce_pool.{h,cc} (the
bounce pool's share, inlined or not), and model_code: those of the host IOMMU model
(arch/host/iommu_model.{h,cc}: the simulated hardware's share of an IOMMU scenario).
For every dump this prints one line:
  <scenario> ops=<n> total=<x> subsys=<x> copy=<x> harness=<x> pool_code=<x> model_code=<x>
  <entry>=<x> ...
where every <x> is instructions per operation, and each <entry> is the inclusive cost (the
function and everything it calls) of an out-of-line API function, for a finer breakdown; an
entry the compiler inlined into the caller shows 0 there but is still counted in `subsys`.
"""
import glob
import os
import re
import sys
from collections import defaultdict

ENTRIES = {
    "map": "KernelDmaOp::map_single(",
    "unmap": "KernelDmaOp::unmap_single(",
    "pool_alloc": "BouncePool::alloc(",
    "pool_free": "BouncePool::free(",
}
SUBSYSTEM_DIRS = ("include/dmakit/", "support/", "mm/", "dma/", "arch/")
COPY_FN = re.compile(r"^(__)?mem(cpy|move)")
TRIGGER = "desc: Trigger: Client Request: "


POOL_FILES = ("include/dmakit/bounce_pool.h", "mm/bounce_pool.cc")
# The host IOMMU model (the hardware's share of an IOMMU scenario: its IOTLB invalidation).
MODEL_FILES = ("arch/host/iommu_model.h", "arch/host/iommu_model.cc")


def is_pool_file(path, root, files=POOL_FILES):
    p = os.path.normpath(path)
    if os.path.isabs(p):
        if not p.startswith(root + os.sep):
            return False
        p = os.path.relpath(p, root)
    return p in files


def classify(path, fn, root):
    if fn and COPY_FN.match(fn):
        return "copy"
    if "memmove-vec" in path or "memcpy" in path:
        return "copy"
    p = os.path.normpath(path)
    if os.path.isabs(p):
        if not p.startswith(root + os.sep):
            return "harness"
        p = os.path.relpath(p, root)
    return "subsys" if p.startswith(SUBSYSTEM_DIRS) else "harness"


# With --cache-sim=yes, the events whose sum is a last-level miss, and the first-level data misses.
LL_EVENTS = ("ILmr", "DLmr", "DLmw")
D1_EVENTS = ("D1mr", "D1mw")


def parse(path, root, cache=None):
    """`cache`, when given, receives per class the simulated misses of a dump made with
    --cache-sim=yes: cache["ll"][cls] (last level: ILmr + DLmr + DLmw) and cache["d1"][cls]."""
    events = ["Ir"]
    ll_cols = []
    d1_cols = []
    trigger = None
    summary = None
    by_class = defaultdict(int)
    pool_code = [0]
    model_code = [0]
    self_cost = defaultdict(int)
    call_cost = defaultdict(int)  # (caller, callee) -> inclusive cost of those calls
    fn = None
    cfn = None
    cur_file = ""
    pending_call = False
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                parts = line.split()
                cost = int(parts[1]) if len(parts) > 1 else 0
                if cache is not None and ll_cols and not pending_call:
                    cls = classify(cur_file, fn, root)
                    for col in ll_cols:
                        if col < len(parts):
                            cache["ll"][cls] += int(parts[col])
                    for col in d1_cols:
                        if col < len(parts):
                            cache["d1"][cls] += int(parts[col])
                if pending_call:
                    call_cost[(fn, cfn)] += cost
                    pending_call = False
                else:
                    self_cost[fn] += cost
                    by_class[classify(cur_file, fn, root)] += cost
                    if is_pool_file(cur_file, root):
                        pool_code[0] += cost
                    if is_pool_file(cur_file, root, MODEL_FILES):
                        model_code[0] += cost
            elif line.startswith(("fl=", "fi=", "fe=")):
                cur_file = line[3:]
            elif line.startswith("events:"):
                events = line.split()[1:]
                ll_cols = [1 + events.index(e) for e in LL_EVENTS if e in events]
                d1_cols = [1 + events.index(e) for e in D1_EVENTS if e in events]
            elif line.startswith("fn="):
                fn = line[3:]
            elif line.startswith("cfn="):
                cfn = line[4:]
            elif line.startswith("calls="):
                pending_call = True
            elif line.startswith(TRIGGER):
                trigger = line[len(TRIGGER):]
            elif line.startswith("summary:") and summary is None:
                summary = int(line.split()[1])
            elif line.startswith("totals:"):
                # With --cache-sim=yes the summary line can exceed the sum of the cost lines by
                # the few instructions of the client request that dumped it; the totals line is
                # that sum.
                summary = int(line.split()[1])
    return trigger, summary, by_class, pool_code[0], model_code[0], self_cost, call_cost


def inclusive(name_prefix, self_cost, call_cost):
    total = 0
    for fn, cost in self_cost.items():
        if fn is not None and fn.startswith(name_prefix):
            total += cost
    for (caller, callee), cost in call_cost.items():
        if caller is not None and caller.startswith(name_prefix) and caller != callee:
            total += cost
    return total


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: callgrind_ir.py <callgrind.out prefix>")
    prefix = sys.argv[1]
    root = os.path.normpath(os.getcwd())
    paths = [p for p in glob.glob(prefix + ".*") if p.rsplit(".", 1)[1].isdigit()]
    paths.sort(key=lambda p: int(p.rsplit(".", 1)[1]))
    if not paths:
        sys.exit("callgrind_ir.py: no dumps at %s.*" % prefix)
    for path in paths:
        cache = {"ll": defaultdict(int), "d1": defaultdict(int)}
        trigger, summary, by_class, pool_code, model_code, self_cost, call_cost = parse(
            path, root, cache)
        if trigger is None:
            continue
        m = re.match(r"^(\S+) ops=(\d+)$", trigger)
        if not m:
            sys.exit("callgrind_ir.py: unexpected trigger %r in %s" % (trigger, path))
        name, ops = m.group(1), int(m.group(2))
        counted = sum(by_class.values())
        if counted != summary:
            sys.exit("callgrind_ir.py: %s: attributed %d of %d instructions" %
                     (path, counted, summary))
        fields = ["%s ops=%d" % (name, ops), "total=%.2f" % (summary / ops)]
        for cls in ("subsys", "copy", "harness"):
            fields.append("%s=%.2f" % (cls, by_class[cls] / ops))
        fields.append("pool_code=%.2f" % (pool_code / ops))
        fields.append("model_code=%.2f" % (model_code / ops))
        for key, pfx in ENTRIES.items():
            fields.append("%s=%.2f" % (key, inclusive(pfx, self_cost, call_cost) / ops))
        if cache["ll"] or cache["d1"]:
            # Simulated misses per operation (a dump with --cache-sim=yes), four decimals.
            for kind in ("ll", "d1"):
                for cls in ("subsys", "harness"):
                    fields.append("%smiss_%s=%.4f" % (kind, cls, cache[kind][cls] / ops))
        print(" ".join(fields))


if __name__ == "__main__":
    main()
