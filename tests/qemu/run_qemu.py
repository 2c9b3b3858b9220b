#!/usr/bin/env python3
"""Boots a test kernel under QEMU, bounded in time, and judges the run.

    run_qemu.py --arch aarch64 --kernel build/aarch64/kernel.elf --mode test \
                [--mem 1G] [--smp 1] [--timeout 120] [--extra "-device edu"] \
                [--objdump llvm-objdump-19] [--log path] [--append "more=args"]

The run fails on:
  - a line containing "PANIC" (the kernel's panic and trap reports),
  - any output containing "EDU: clamping" (QEMU's edu device truncated a DMA address: a buffer
    above the device's mask reached it unbounced; QEMU logs it as a guest error, so every run
    passes "-d guest_errors"),
  - an exit status that does not mean success for that arch (see ARCHES),
  - in test mode, a missing or non-zero-failure "N passed, M failed" line from the guest,
  - the time limit: QEMU is killed and the run fails with "TIMEOUT after N s",
  - the disk image (see below) not holding exactly what the guest says it wrote.
Every VM gets the devices of testkernel/devices.h: two edu DMA engines (32-bit and 28-bit masks,
announced to the guest as `edu_mask=` on its command line) and a virtio-blk disk whose image is
made fresh next to the kernel before each boot (disk-<mode>.img, a known pattern) and checked from
the host side afterwards; that check counts as one more test ("host_disk_image_check"); and two
NVMe controllers, each with its own image made and checked the same way ("host_nvme<c>_image_check",
see NVME_SLOTS).
With --dma-ranges (aarch64, riscv64), the machine's own device tree is dumped with the run's very
options (-machine ...,dumpdtb=), decompiled with dtc, given a `dma-ranges` property on the PCIe
host bridge (dma_windows_for: identity windows over parts of RAM, so that memory outside them must
bounce) and recompiled; the VM boots with it (-dtb). QEMU's devices ignore dma-ranges (they DMA to
the address they are given), hence identity windows: the kernel's choice of address is what the
in-VM dmawin_ tests check.
With --objdump, the kernel ELF is disassembled first and the arch's DmaOp cache-maintenance
methods must contain the expected instructions; that check counts as one more test.
In test mode the last line printed is the summary "N passed, M failed" (guest tests plus the
disassembly check). QEMU's output is streamed to stdout and to a log file next to the kernel.
Exit status: 0 if the run passed, 1 otherwise.
"""

import argparse
import os
import re
import selectors
import shlex
import signal
import subprocess
import sys
import time

# ---------------------------------------------------------------------------------------------
# One entry per architecture. Each arch's owner edits only its own entry.
#   qemu      -- the QEMU binary.
#   args      -- machine arguments (-m, -smp, -kernel, -append and --extra are added by run()).
#   exit      -- how the guest reports pass/fail through QEMU's exit status:
#                "semihosting": SYS_EXIT with ADP_Stopped_ApplicationExit, status = subcode,
#                               the kernel passes 0 for success, 1 for failure.
#                "sifive_test": the SiFive test finisher; 0x5555 (pass) makes QEMU exit 0,
#                               0x3333 | code << 16 exits with `code` (the kernel uses 1).
#                "isa_debug_exit": a write of v to the isa-debug-exit port makes QEMU exit with
#                               (v << 1) | 1; the kernel writes 0 for success (status 1) and 1
#                               for failure (status 3). Status 0 (a reset or shutdown without
#                               the port, e.g. a triple fault with -no-reboot) is a failure.
#   cache_ops -- disassembly check: {method symbol (demangled, without arguments): [required
#                instructions]}. An entry "a|b" is satisfied by either mnemonic. The
#                instructions must appear inside that method's own body.
ARCHES = {
    "aarch64": {
        "qemu": "qemu-system-aarch64",
        # gic-version=3: a GICv3 with its ITS, for MSIs (the test kernel also drives virt's
        # default GICv2 + GICv2m).
        "args": ["-M", "virt,gic-version=3", "-cpu", "cortex-a72", "-nographic", "-semihosting"],
        "exit": "semihosting",
        # --iommu: an SMMUv3 in front of the PCI host bridge (the device tree's iommu-map).
        "iommu_machine": "iommu=smmuv3",
        "iommu_args": [],
        "cache_ops": {
            "AArch64DmaOp::flush": ["dc cvac"],
            "AArch64DmaOp::invalidate": ["dc ivac", "dc civac"],
            "AArch64DmaOp::flush_invalidate": ["dc civac"],
        },
    },
    "riscv64": {
        "qemu": "qemu-system-riscv64",
        # aia=aplic-imsic: MSIs through the harts' IMSICs.
        "args": ["-M", "virt,aia=aplic-imsic", "-cpu", "rv64,zicbom=true,cbom_blocksize=64,svpbmt=true",
                 "-bios", "default", "-nographic"],
        "exit": "sifive_test",
        # --iommu: the RISC-V IOMMU as a PCI device (class 08:06) on the root bus.
        "iommu_machine": "",
        "iommu_args": ["-device", "riscv-iommu-pci"],
        "cache_ops": {
            "Riscv64DmaOp::flush": ["cbo.clean"],
            "Riscv64DmaOp::invalidate": ["cbo.inval", "cbo.flush"],
            "Riscv64DmaOp::flush_invalidate": ["cbo.flush"],
        },
    },
    "x86_64": {
        "qemu": "qemu-system-x86_64",
        # -cpu max: TCG's model with CLFLUSHOPT and CLWB (and 1 GiB pages, NX). -nic none: no
        # default e1000e, so SeaBIOS runs no iPXE ROM before the kernel.
        "args": ["-M", "q35", "-cpu", "max", "-nographic", "-no-reboot", "-nic", "none",
                 "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"],
        "exit": "isa_debug_exit",
        # --iommu: Intel VT-d (DMA remapping only; interrupt remapping needs a split irqchip),
        # described by the ACPI DMAR table. QEMU wants it before the other PCI devices.
        "iommu_machine": "",
        "iommu_args": ["-device", "intel-iommu,intremap=off"],
        "cache_ops": {
            "X86DmaOp::flush": ["clwb|clflushopt", "clflush"],
            "X86DmaOp::invalidate": ["clflushopt", "clflush"],
            "X86DmaOp::flush_invalidate": ["clflushopt", "clflush"],
        },
    },
}
# ---------------------------------------------------------------------------------------------

SUMMARY_RE = re.compile(r"^(\d+) passed, (\d+) failed\s*$")
PANIC_RE = re.compile(r"\bPANIC\b")
CLAMP_TEXT = "EDU: clamping"

# ---------------------------------------------------------------------------------------------
# Devices every VM gets (testkernel/devices.h, drivers/): two QEMU edu DMA engines, one with a 32-bit
# DMA mask and one with the device's 28-bit default (the guest cannot read a mask from the device,
# so `edu_mask=` on the kernel command line says which slot has which), and a virtio-blk disk.
EDU_DEVICES = [("10.0", 0xFFFFFFFF), ("11.0", 0x0FFFFFFF)]
DISK_SLOT = "12.0"
# The disk image, as testkernel/devices.h (namespace disk_pattern) describes it: SECTORS sectors of
# 512 bytes, sector s holding host_byte(s, j); the guest writes guest_byte(s, j) into the sectors
# it announces with "virtio-blk: guest pattern in sectors A..B". Each run gets a fresh image.
DISK_SECTORS = 1024
SECTOR = 512
GUEST_RANGE_RE = re.compile(r"virtio-blk: guest pattern in sectors (\d+)\.\.(\d+)")
# Ranges an unfiltered run of each mode must have written (first, last).
EXPECTED_GUEST_RANGES = {"test": [(64, 81), (128, 143)], "demo": [(256, 263)]}


def host_sector(s):
    return bytes((s * 131 + j * 7 + 0x3C) & 0xFF for j in range(SECTOR))


def guest_sector(s):
    return bytes(((s * 17) ^ (j * 29) ^ 0xA5) & 0xFF for j in range(SECTOR))


def make_disk_image(path):
    with open(path, "wb") as f:
        for s in range(DISK_SECTORS):
            f.write(host_sector(s))


def check_disk_image(path, ranges):
    """Returns (passed, message): `ranges` hold the guest pattern, every other sector the host's."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return False, "cannot read %s: %s" % (path, e)
    if len(data) != DISK_SECTORS * SECTOR:
        return False, "%s has %d bytes, expected %d" % (path, len(data), DISK_SECTORS * SECTOR)
    guest = set()
    for first, last in ranges:
        guest.update(range(first, last + 1))
    bad = []
    for s in range(DISK_SECTORS):
        want = guest_sector(s) if s in guest else host_sector(s)
        if data[s * SECTOR:(s + 1) * SECTOR] != want:
            bad.append(s)
    if bad:
        return False, "%d sector(s) differ from what the guest wrote/left, first %d (%s)" % (
            len(bad), bad[0], "guest pattern expected" if bad[0] in guest else "host pattern")
    return True, "%d guest sector(s) in %s as written, the other %d untouched" % (
        len(guest), ", ".join("%d..%d" % r for r in ranges) or "none", DISK_SECTORS - len(guest))


# ---------------------------------------------------------------------------------------------
# Two NVMe controllers (drivers/nvme/, tests/qemu/nvme_test.cc), each with its own image of
# NVME_BLOCKS blocks of 512 bytes, made fresh before each boot: byte `pos` of controller c's image
# holds nvme_byte(c, pos, guest=False). The guest writes nvme_byte(c, pos, guest=True) to the
# blocks it announces with "nvme<c>: guest pattern in blocks A..B"; afterwards each image must hold
# exactly that (one more test per image, "host_nvme<c>_image_check"). The formulas are the
# guest's (tests/qemu/nvme_test.cc, nvme_pattern).
NVME_SLOTS = ["16.0", "17.0"]
NVME_BLOCKS = 2048
NVME_BLOCK = 512
NVME_RANGE_RE = re.compile(r"nvme(\d+): guest pattern in blocks (\d+)\.\.(\d+)")
# Ranges an unfiltered test run must have written, per controller (first, last).
EXPECTED_NVME_RANGES = {"test": {0: [(1024, 2047)], 1: [(1024, 2047)]}, "demo": {}}


def nvme_bytes(ctrl, start, end, guest):
    """Bytes [start, end) of controller `ctrl`'s image: the host's pattern or the guest's."""
    m = 0xFFFFFFFF
    if guest:
        k1, k2, seed = 0x85EBCA6B, 0xC2B2AE35, (ctrl + 1) * 0x27D4EB2F
    else:
        k1, k2, seed = 0x9E3779B1, 0x7FEB352D, (ctrl + 1) * 0x165667B1
    out = bytearray(end - start)
    for i, pos in enumerate(range(start, end)):
        x = (pos * k1 + seed) & m
        x ^= x >> 15
        x = (x * k2) & m
        out[i] = x >> 24
    return bytes(out)


def nvme_image_paths(kernel, mode):
    base = os.path.dirname(os.path.abspath(kernel))
    return [os.path.join(base, "nvme%d-%s.img" % (i, mode)) for i in range(len(NVME_SLOTS))]


def make_nvme_images(paths):
    for c, path in enumerate(paths):
        with open(path, "wb") as f:
            f.write(nvme_bytes(c, 0, NVME_BLOCKS * NVME_BLOCK, guest=False))


def check_nvme_image(ctrl, path, ranges):
    """Returns (passed, message): `ranges` hold the guest pattern, every other block the host's."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return False, "cannot read %s: %s" % (path, e)
    size = NVME_BLOCKS * NVME_BLOCK
    if len(data) != size:
        return False, "%s has %d bytes, expected %d" % (path, len(data), size)
    guest = set()
    for first, last in ranges:
        guest.update(range(first, last + 1))
    host_img = nvme_bytes(ctrl, 0, size, guest=False)
    guest_img = nvme_bytes(ctrl, 0, size, guest=True) if guest else b""
    bad = [b for b in range(NVME_BLOCKS)
           if data[b * NVME_BLOCK:(b + 1) * NVME_BLOCK] !=
           (guest_img if b in guest else host_img)[b * NVME_BLOCK:(b + 1) * NVME_BLOCK]]
    if bad:
        return False, "%d block(s) differ from what the guest wrote/left, first %d (%s)" % (
            len(bad), bad[0], "guest pattern expected" if bad[0] in guest else "host pattern")
    return True, "%d guest block(s) in %s as written, the other %d untouched" % (
        len(guest), ", ".join("%d..%d" % r for r in ranges) or "none", NVME_BLOCKS - len(guest))


def nvme_args(paths):
    args = []
    for i, (slot, path) in enumerate(zip(NVME_SLOTS, paths)):
        args += ["-drive", "file=%s,if=none,id=nvme%d,format=raw" % (path, i),
                 "-device", "nvme,serial=dmakit%d,drive=nvme%d,addr=%s" % (i, i, slot)]
    return args


def device_args(disk, nvme_images=(), iommu=False):
    args = []
    for slot, mask in EDU_DEVICES:
        args += ["-device", "edu,addr=%s,dma_mask=0x%x" % (slot, mask)]
    # Behind an IOMMU a virtio device translates its DMA only when it offers
    # VIRTIO_F_ACCESS_PLATFORM (QEMU's iommu_platform, modern devices only); otherwise QEMU lets
    # it reach physical memory directly, past the IOMMU.
    blk = "virtio-blk-pci,drive=d0,addr=%s" % DISK_SLOT
    if iommu:
        blk += ",disable-legacy=on,iommu_platform=on"
    args += ["-drive", "file=%s,if=none,id=d0,format=raw" % disk, "-device", blk]
    args += nvme_args(nvme_images)
    masks = ",".join("%s:0x%x" % (slot.split(".")[0], mask) for slot, mask in EDU_DEVICES)
    return args, "edu_mask=" + masks


# ---------------------------------------------------------------------------------------------
# --dma-ranges: the windows added to the PCIe host bridge, identity (bus address = CPU address).
# The first covers the start of RAM: the kernel image and the bounce pool
# testkernel/kernel_main.cc places lowest in RAM (at or above 256 MiB physical: on these machines
# RAM starts at 1 GiB / 2 GiB, so right above the kernel), with room left for coherent memory.
# The second, disjoint from it, lies in the middle of RAM when RAM is large enough, so that a
# buffer there maps direct through it while one between the windows bounces into the first.
def dma_windows_for(ram_size):
    """[(offset from the start of RAM, size)] for a RAM of `ram_size` bytes."""
    mib = 1 << 20
    first = min(256 * mib, (ram_size // 4) & ~(2 * mib - 1))
    windows = [(0, first)]
    half = (ram_size // 2) & ~(2 * mib - 1)
    if half >= first + 64 * mib and half + 64 * mib <= ram_size:
        windows.append((half, 64 * mib))
    return windows


DMA_RANGES_ARCHES = ("aarch64", "riscv64")


def dts_nodes(lines):
    """Parses dtc's output: yields (path, first line index, props {name: value text}, parent
    path) for every node. dtc prints one node opening ("name {") or property per line."""
    stack = []  # [path, first line, props]
    nodes = []
    for i, raw in enumerate(lines):
        line = raw.strip()
        if line.endswith("{"):
            name = line[:-1].strip()
            if ":" in name:  # A label ("intc: interrupt-controller@...").
                name = name.split(":", 1)[1].strip()
            parent = stack[-1][0] if stack else None
            path = "/" if name == "/" else (parent.rstrip("/") + "/" + name)
            stack.append([path, i, {}, parent])
        elif line == "};":
            if stack:
                nodes.append(tuple(stack.pop()))
        elif stack and line.endswith(";"):
            body = line[:-1]
            if "=" in body:
                k, v = body.split("=", 1)
                stack[-1][2][k.strip()] = v.strip()
            else:
                stack[-1][2][body.strip()] = ""
    return nodes


def dts_cells(value):
    """'<0x02 0x40000000>' -> [2, 0x40000000]."""
    return [int(x, 0) for x in value.strip("<>").split()]


def add_dma_ranges(dts_text):
    """Returns (new text, description): `dts_text` with a dma-ranges property on the first
    pci-host-ecam-generic node, identity windows (dma_windows_for) over the lowest RAM range."""
    lines = dts_text.split("\n")
    nodes = dts_nodes(lines)
    by_path = {n[0]: n for n in nodes}

    def cells(path, prop, default):
        n = by_path.get(path)
        if n is None or prop not in n[2]:
            return default
        return dts_cells(n[2][prop])[0]

    ram = []
    for path, _, props, parent in nodes:
        if props.get("device_type") == '"memory"' and "reg" in props and parent == "/":
            ac, sc = cells("/", "#address-cells", 2), cells("/", "#size-cells", 1)
            reg = dts_cells(props["reg"])
            for j in range(0, len(reg) - ac - sc + 1, ac + sc):
                base = sum(c << (32 * (ac - 1 - k)) for k, c in enumerate(reg[j:j + ac]))
                size = sum(c << (32 * (sc - 1 - k)) for k, c in enumerate(reg[j + ac:j + ac + sc]))
                ram.append((base, size))
    if not ram:
        raise RuntimeError("no memory node in the machine's device tree")
    ram.sort()
    ram_base, ram_size = ram[0]
    bridge = [n for n in nodes if '"pci-host-ecam-generic"' in n[2].get("compatible", "")]
    if not bridge:
        raise RuntimeError("no pci-host-ecam-generic node in the machine's device tree")
    path, first, props, parent = bridge[0]
    if "dma-ranges" in props:
        raise RuntimeError("%s already has dma-ranges" % path)
    child_ac = cells(path, "#address-cells", 2)
    parent_ac = cells(parent, "#address-cells", 2)
    sc = cells(path, "#size-cells", 1)
    if child_ac != 3 or parent_ac not in (1, 2) or sc not in (1, 2):
        raise RuntimeError("%s: unexpected cell counts %d/%d/%d" % (path, child_ac, parent_ac, sc))

    def split(v, n):
        return ["0x%x" % ((v >> (32 * (n - 1 - k))) & 0xFFFFFFFF) for k in range(n)]

    entries = []
    windows = []
    for off, size in dma_windows_for(ram_size):
        base = ram_base + off
        # phys.hi: 32-bit or 64-bit memory space, by where the bus address lies.
        space = 0x02000000 if base + size <= (1 << 32) else 0x03000000
        entries.append(" ".join(["0x%x" % space] + split(base, 2) + split(base, parent_ac) +
                                split(size, sc)))
        windows.append((base, size))
    indent = lines[first][:len(lines[first]) - len(lines[first].lstrip())] + "\t"
    lines.insert(first + 1, "%sdma-ranges = <%s>;" % (indent, " ".join(entries)))
    desc = "%s: %s" % (path, ", ".join("[0x%x, 0x%x)" % (b, b + s) for b, s in windows))
    return "\n".join(lines), desc


def make_dma_ranges_dtb(cmd, work_dir):
    """Dumps the device tree of the machine `cmd` starts, adds the dma-ranges and compiles it.
    Returns (path of the .dtb, description). Raises RuntimeError on any failure."""
    raw = os.path.join(work_dir, "machine.dtb")
    edited_dts = os.path.join(work_dir, "machine-dma-ranges.dts")
    out = os.path.join(work_dir, "machine-dma-ranges.dtb")
    dump = list(cmd)
    i = dump.index("-M") + 1
    dump[i] += ",dumpdtb=" + raw
    for path in (raw, out):
        if os.path.exists(path):
            os.remove(path)
    try:
        r = subprocess.run(dump, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=60, check=False)
        if not os.path.isfile(raw):
            raise RuntimeError("QEMU did not dump its device tree (exit %d): %s" % (
                r.returncode, r.stdout.decode("utf-8", "replace").strip()[-300:]))
        dts = subprocess.run(["dtc", "-q", "-I", "dtb", "-O", "dts", raw], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, timeout=60, check=False, text=True)
        if dts.returncode != 0:
            raise RuntimeError("dtc could not decompile %s: %s" % (raw, dts.stderr.strip()[:300]))
        text, desc = add_dma_ranges(dts.stdout)
        with open(edited_dts, "w", encoding="utf-8") as f:
            f.write(text)
        dtb = subprocess.run(["dtc", "-q", "-I", "dts", "-O", "dtb", "-o", out, edited_dts],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60,
                             check=False, text=True)
        if dtb.returncode != 0:
            raise RuntimeError("dtc could not compile %s: %s" % (edited_dts,
                                                                 dtb.stderr.strip()[:300]))
    except OSError as e:
        raise RuntimeError("cannot run %s: %s (install device-tree-compiler: scripts/setup.sh)" % (
            e.filename or "dtc", e))
    except subprocess.TimeoutExpired as e:
        raise RuntimeError("%s timed out" % e.cmd[0])
    return out, desc


def decode_exit(kind, status):
    """Returns (passed, description) for QEMU's exit status under the arch's convention."""
    if kind == "semihosting":
        if status == 0:
            return True, "semihosting exit 0 (pass)"
        return False, "semihosting exit %d (failure)" % status
    if kind == "sifive_test":
        if status == 0:
            return True, "test finisher: pass"
        return False, "test finisher / QEMU exit status %d (failure)" % status
    if kind == "isa_debug_exit":
        if status == 1:
            return True, "isa-debug-exit code 0 (pass)"
        if status == 0:
            return False, "QEMU exited with 0: the guest reset or shut down without isa-debug-exit"
        if status & 1:
            return False, "isa-debug-exit code %d (failure)" % (status >> 1)
        return False, "QEMU exit status %d (failure)" % status
    return False, "unknown exit convention %r" % kind


def objdump_check(objdump, kernel, cache_ops):
    """Disassembles `kernel`; returns (passed, message)."""
    try:
        out = subprocess.run([objdump, "-d", "--no-show-raw-insn", "-C", kernel],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             check=False, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, "cannot run %s: %s" % (objdump, e)
    if out.returncode != 0:
        return False, "%s failed: %s" % (objdump, out.stderr.strip()[:200])
    # Split into functions: "<addr> <Demangled::name(args)>:" headers.
    bodies = {}
    current = None
    header = re.compile(r"^[0-9a-fA-F]+ <(.*)>:\s*$")
    for line in out.stdout.splitlines():
        m = header.match(line)
        if m:
            current = m.group(1)
            bodies[current] = []
        elif current is not None:
            # "dc\tcvac, x9" -> "dc cvac, x9": compare with single spaces.
            bodies[current].append(" ".join(line.lower().split()))
    problems = []
    for method, required in cache_ops.items():
        names = [n for n in bodies if n == method or n.startswith(method + "(")]
        if not names:
            problems.append("%s: not found in the disassembly" % method)
            continue
        text = "\n".join(l for n in names for l in bodies[n])
        for want in required:
            alternatives = want.split("|")
            if not any(re.search(r"\b" + re.escape(a) + r"\b", text) for a in alternatives):
                problems.append("%s: no %s" % (method, " or ".join(alternatives)))
    if problems:
        return False, "; ".join(problems)
    return True, ", ".join("%s: %s" % (m.split("::")[-1], "/".join(r))
                           for m, r in cache_ops.items())


def machine_args(spec, iommu):
    """The arch's machine arguments, with its IOMMU added when `iommu` is set."""
    args = list(spec["args"])
    if iommu:
        if spec["iommu_machine"]:
            i = args.index("-M") + 1
            args[i] += "," + spec["iommu_machine"]
        args += spec["iommu_args"]
    return args


def build_command(arch, kernel, mode, mem, smp, extra, append, disk, iommu=False,
                  nvme_images=()):
    spec = ARCHES[arch]
    cmd = [spec["qemu"]] + machine_args(spec, iommu)
    cmd += ["-m", mem, "-smp", str(smp), "-d", "guest_errors", "-kernel", kernel]
    dev_args, dev_cmdline = device_args(disk, nvme_images, iommu)
    cmd += dev_args
    cmdline = "mode=%s %s" % (mode, dev_cmdline)
    if iommu:
        # The kernel must find and enable the IOMMU; without this word it must find none.
        cmdline += " iommu=on"
    if append:
        cmdline += " " + append
    cmd += ["-append", cmdline]
    cmd += shlex.split(extra or "")
    return cmd


def run(args):
    spec = ARCHES[args.arch]
    log_path = args.log or os.path.join(os.path.dirname(os.path.abspath(args.kernel)),
                                        "qemu-%s.log" % args.mode)
    extra_results = []  # (passed, name, message) of runner-side checks, counted as tests.

    if args.objdump:
        ok, msg = objdump_check(args.objdump, args.kernel, spec["cache_ops"])
        line = ("[PASS] objdump_cache_instructions: " + msg if ok
                else "[FAIL] objdump_cache_instructions: " + msg)
        print(line, flush=True)
        extra_results.append(ok)

    disk = os.path.join(os.path.dirname(os.path.abspath(args.kernel)), "disk-%s.img" % args.mode)
    make_disk_image(disk)
    nvme_images = nvme_image_paths(args.kernel, args.mode)
    make_nvme_images(nvme_images)
    nvme_ranges = {c: [] for c in range(len(nvme_images))}
    guest_ranges = []
    cmd = build_command(args.arch, args.kernel, args.mode, args.mem, args.smp, args.extra,
                        args.append, disk, args.iommu, nvme_images)
    if args.dma_ranges:
        try:
            dtb, desc = make_dma_ranges_dtb(cmd, os.path.dirname(os.path.abspath(args.kernel)))
        except RuntimeError as e:
            print("run_qemu: --dma-ranges: %s" % e, flush=True)
            if args.mode == "test":
                print("0 passed, 1 failed", flush=True)
            return 1
        print("run_qemu: dma-ranges on %s" % desc, flush=True)
        cmd += ["-dtb", dtb]
    print("run_qemu: " + " ".join(shlex.quote(c) for c in cmd), flush=True)

    failures = []
    summary = None
    saw_panic = False
    saw_clamp = False
    start = time.monotonic()
    timed_out = False
    with open(log_path, "w", encoding="utf-8", errors="replace") as log:
        log.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as e:
            print("run_qemu: cannot start %s: %s" % (cmd[0], e), flush=True)
            return 1
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        pending = b""
        tail = ""  # Unterminated text, for matches that span reads.

        def handle_line(raw):
            nonlocal summary, saw_panic, saw_clamp
            text = raw.decode("utf-8", errors="replace").replace("\r", "")
            sys.stdout.write(text + "\n")
            log.write(text + "\n")
            if PANIC_RE.search(text):
                saw_panic = True
            m = SUMMARY_RE.match(text.strip())
            if m:
                summary = (int(m.group(1)), int(m.group(2)))
            m = GUEST_RANGE_RE.search(text)
            if m:
                guest_ranges.append((int(m.group(1)), int(m.group(2))))
            m = NVME_RANGE_RE.search(text)
            if m and int(m.group(1)) in nvme_ranges:
                nvme_ranges[int(m.group(1))].append((int(m.group(2)), int(m.group(3))))

        while True:
            remaining = args.timeout - (time.monotonic() - start)
            if remaining <= 0:
                timed_out = True
                break
            events = sel.select(timeout=min(remaining, 1.0))
            if not events:
                if proc.poll() is not None:
                    # Drain whatever is left.
                    rest = proc.stdout.read() or b""
                    pending += rest
                    if not rest:
                        break
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            pending += chunk
            # The clamping message has no newline of its own: look at the raw stream too.
            window = tail + chunk.decode("utf-8", errors="replace")
            if CLAMP_TEXT in window:
                saw_clamp = True
            tail = window[-len(CLAMP_TEXT):]
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                handle_line(line)
        if pending:
            if CLAMP_TEXT in pending.decode("utf-8", errors="replace"):
                saw_clamp = True
            handle_line(pending)
        if timed_out:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        status = proc.wait()
        sys.stdout.flush()

        if timed_out:
            failures.append("TIMEOUT after %d s (QEMU killed)" % args.timeout)
        else:
            ok, desc = decode_exit(spec["exit"], status)
            if not ok:
                failures.append(desc)
        if saw_panic:
            failures.append("the guest panicked")
        if saw_clamp:
            failures.append("QEMU printed '%s': a DMA address exceeded a device's mask" %
                            CLAMP_TEXT)
        if args.mode == "test":
            if summary is None:
                failures.append("the guest printed no 'N passed, M failed' line")
            elif summary[1] != 0:
                failures.append("%d in-VM test(s) failed" % summary[1])
            elif summary[0] == 0:
                failures.append("the guest ran no tests")
        for ok in extra_results:
            if not ok:
                failures.append("the disassembly check failed")
        # The disk, from the host side: what the guest said it wrote is there, nothing else moved,
        # and an unfiltered run wrote everything it should have.
        missing = [] if "ktest=" in (args.append or "") else [
            r for r in EXPECTED_GUEST_RANGES[args.mode] if r not in guest_ranges]
        disk_ok, disk_msg = check_disk_image(disk, guest_ranges)
        if missing:
            disk_ok = False
            disk_msg = "the guest never reported writing sectors %s; %s" % (
                ", ".join("%d..%d" % r for r in missing), disk_msg)
        print("[%s] host_disk_image_check: %s" % ("PASS" if disk_ok else "FAIL", disk_msg),
              flush=True)
        log.write("disk image check: %s\n" % disk_msg)
        extra_disk = [disk_ok]
        if not disk_ok:
            failures.append("the disk image does not hold what the guest wrote")
        for c, path in enumerate(nvme_images):
            want = [] if "ktest=" in (args.append or "") else [
                r for r in EXPECTED_NVME_RANGES[args.mode].get(c, []) if r not in nvme_ranges[c]]
            ok, msg = check_nvme_image(c, path, nvme_ranges[c])
            if want:
                ok = False
                msg = "the guest never reported writing blocks %s; %s" % (
                    ", ".join("%d..%d" % r for r in want), msg)
            print("[%s] host_nvme%d_image_check: %s" % ("PASS" if ok else "FAIL", c, msg),
                  flush=True)
            log.write("nvme%d image check: %s\n" % (c, msg))
            extra_disk.append(ok)
            if not ok:
                failures.append("NVMe image %d does not hold what the guest wrote" % c)
        log.write("run_qemu: %s\n" % ("; ".join(failures) if failures else "pass"))

    for f in failures:
        print("run_qemu: FAIL: " + f, flush=True)
    print("run_qemu: log in %s" % log_path, flush=True)
    if args.mode == "test":
        passed = (summary[0] if summary else 0) + sum(1 for ok in extra_results + extra_disk if ok)
        failed = (summary[1] if summary else 0) + sum(
            1 for ok in extra_results + extra_disk if not ok)
        # A run that failed outside the guest's own tests (panic, timeout, exit status) counts
        # as one more failure, so the summary never says "0 failed" for a failed run.
        if failures and failed == 0:
            failed = 1
        print("%d passed, %d failed" % (passed, failed), flush=True)
    elif not failures:
        print("run_qemu: pass", flush=True)
    return 1 if failures else 0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", required=True, choices=sorted(ARCHES))
    p.add_argument("--kernel", required=True)
    p.add_argument("--mode", default="test", choices=["test", "demo"])
    p.add_argument("--mem", default="1G")
    p.add_argument("--smp", default="1")
    p.add_argument("--timeout", type=int, default=120)
    p.add_argument("--extra", default="", help="more QEMU arguments (split with shlex)")
    p.add_argument("--append", default="", help="more kernel command-line words")
    p.add_argument("--iommu", action="store_true",
                   help="give the machine its IOMMU (SMMUv3, RISC-V IOMMU, VT-d) and pass "
                        "iommu=on to the kernel")
    p.add_argument("--dma-ranges", action="store_true",
                   help="(aarch64, riscv64) boot with the machine's device tree plus a "
                        "dma-ranges on the PCIe host bridge (dma_windows_for; needs dtc)")
    p.add_argument("--objdump", default="", help="objdump binary: check the cache instructions")
    p.add_argument("--log", default="", help="log file (default: next to the kernel)")
    p.add_argument("--debug", action="store_true",
                   help="start halted with QEMU's gdb stub on --gdb-port, print the gdb command "
                        "that attaches with symbols, and run QEMU on this terminal (no timeout)")
    p.add_argument("--gdb-port", type=int, default=1234)
    args = p.parse_args()
    if not os.path.isfile(args.kernel):
        print("run_qemu: no kernel at %s" % args.kernel, flush=True)
        if args.mode == "test":
            print("0 passed, 1 failed", flush=True)
        return 1
    if args.dma_ranges and args.arch not in DMA_RANGES_ARCHES:
        print("run_qemu: --dma-ranges needs a device-tree machine (%s), not %s" % (
            ", ".join(DMA_RANGES_ARCHES), args.arch), flush=True)
        if args.mode == "test":
            print("0 passed, 1 failed", flush=True)
        return 1
    if args.debug:
        return debug(args)
    return run(args)


GDB_ARCH = {"aarch64": "aarch64", "riscv64": "riscv:rv64", "x86_64": "i386:x86-64"}


def debug(args):
    """The VM halted at its first instruction with a gdb stub; QEMU owns the terminal."""
    disk = os.path.join(os.path.dirname(os.path.abspath(args.kernel)), "disk-%s.img" % args.mode)
    make_disk_image(disk)
    nvme_images = nvme_image_paths(args.kernel, args.mode)
    make_nvme_images(nvme_images)
    cmd = build_command(args.arch, args.kernel, args.mode, args.mem, args.smp, args.extra,
                        args.append, disk, args.iommu, nvme_images)
    if args.dma_ranges:
        try:
            dtb, desc = make_dma_ranges_dtb(cmd, os.path.dirname(os.path.abspath(args.kernel)))
        except RuntimeError as e:
            print("run_qemu: --dma-ranges: %s" % e, flush=True)
            return 1
        print("run_qemu: dma-ranges on %s" % desc, flush=True)
        cmd += ["-dtb", dtb]
    cmd += ["-S", "-gdb", "tcp::%d" % args.gdb_port]
    gdb = ["gdb-multiarch", "-q", "-ex", "set architecture %s" % GDB_ARCH[args.arch],
           "-ex", "target remote :%d" % args.gdb_port, os.path.abspath(args.kernel)]
    print("run_qemu: the VM is halted; attach from another terminal with:", flush=True)
    print("  " + " ".join(shlex.quote(c) for c in gdb), flush=True)
    print("run_qemu: " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    sys.exit(main())
