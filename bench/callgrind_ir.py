#!/usr/bin/env python3
"""Reads the callgrind dumps written by dma_ir and prints instructions per operation.

Each dump (callgrind.out.N, written by CALLGRIND_DUMP_STATS_AT) covers exactly one measured loop;
its trigger line names the scenario and the number of operations: "<scenario> ops=<n>". The dumps
must be written with --compress-strings=no --compress-pos=no.

For every dump this prints one line:
  <scenario> ops=<n> total=<x> <entry>=<x> ...
where every <x> is instructions per operation: `total` is everything executed in the loop (the
benchmark's own bookkeeping included), each <entry> the inclusive cost of one API entry point
(the function and everything it calls), and `memcpy` the instructions spent inside memcpy/memmove
(the data copies), wherever called from.
"""
import glob
import re
import sys
from collections import defaultdict

ENTRIES = {
    "pfa_alloc": "PageFrameAllocator::alloc(",
    "pfa_free": "PageFrameAllocator::free(",
    "map": "KernelDmaOp::map_single(",
    "unmap": "KernelDmaOp::unmap_single(",
    "pool_alloc": "BouncePool::alloc(",
    "pool_free": "BouncePool::free(",
}
COPY_RE = re.compile(r"^(__)?mem(cpy|move)")


def parse(path):
    trigger = None
    summary = None
    self_cost = defaultdict(int)
    call_cost = defaultdict(int)  # (caller, callee) -> inclusive cost of those calls
    fn = None
    cfn = None
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
                if pending_call:
                    call_cost[(fn, cfn)] += cost
                    pending_call = False
                else:
                    self_cost[fn] += cost
            elif line.startswith("fn="):
                fn = line[3:]
            elif line.startswith("cfn="):
                cfn = line[4:]
            elif line.startswith("calls="):
                pending_call = True
            elif line.startswith("desc: Trigger: Client Request: "):
                trigger = line[len("desc: Trigger: Client Request: "):]
            elif line.startswith("summary:"):
                summary = int(line.split()[1])
    return trigger, summary, self_cost, call_cost


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
    paths = sorted(glob.glob(prefix + ".*"), key=lambda p: int(p.rsplit(".", 1)[1]))
    if not paths:
        sys.exit("callgrind_ir.py: no dumps at %s.*" % prefix)
    for path in paths:
        trigger, summary, self_cost, call_cost = parse(path)
        if trigger is None:
            continue
        m = re.match(r"^(\S+) ops=(\d+)$", trigger)
        if not m:
            sys.exit("callgrind_ir.py: unexpected trigger %r in %s" % (trigger, path))
        name, ops = m.group(1), int(m.group(2))
        fields = ["%s ops=%d" % (name, ops), "total=%.2f" % (summary / ops)]
        for key, pfx in ENTRIES.items():
            fields.append("%s=%.2f" % (key, inclusive(pfx, self_cost, call_cost) / ops))
        copy = sum(cost for (caller, callee), cost in call_cost.items()
                   if callee and COPY_RE.match(callee) and not (caller and COPY_RE.match(caller)))
        fields.append("memcpy=%.2f" % (copy / ops))
        print(" ".join(fields))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
