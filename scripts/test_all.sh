#!/usr/bin/env bash
# `make test`: the host suite (debug, release, and its threaded tests under ThreadSanitizer), the
# C API from a C program (make test-capi), the library builds of every arch and ABI
# (scripts/check_lib.sh: no floating point, the ABI flags, debug info, a test link), the kernel
# contract (scripts/check_contract.sh: exactly the symbols of include/dmakit/kernel_contract.h,
# the minimal bring-ups linked with no start-up code), then every architecture under QEMU, then
# with its IOMMU on (QEMU_IOMMU=1), last aarch64 and riscv64 with dma-ranges (QEMU_DMA_RANGES=1).
# Each part prints its own "N passed, N failed" line; this adds them up and ends with one line for
# the whole run.
# A part that crashes or prints no summary counts as one failure.
set -uo pipefail

ARCHES=${ARCHES:-"aarch64 riscv64 x86_64"}
# CPUs of each QEMU run: every CPU is started (testkernel/percpu.h) and the smp_ tests use them.
QEMU_SMP=${QEMU_SMP:-4}
QEMU_SMP_RELEASE=${QEMU_SMP_RELEASE:-2}
# Builds use every core (the parts themselves run one after another).
MAKE=${MAKE:-make -j$(nproc)}
log_dir=${BUILD:-build}/test-logs
mkdir -p "$log_dir"

total_pass=0
total_fail=0
status=0

run_part() {
  local name=$1
  shift
  local log="$log_dir/$name.log"
  echo "==> $name"
  "$@" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  local line
  line=$(grep -E '^([A-Za-z]+: )?[0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1)
  if [ -z "$line" ]; then
    echo "==> $name: no summary line (exit $rc)"
    total_fail=$((total_fail + 1))
    status=1
    return
  fi
  local p f
  p=$(echo "$line" | sed -E 's/^([A-Za-z]+: )?([0-9]+) passed.*/\2/')
  f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed.*/\1/')
  total_pass=$((total_pass + p))
  total_fail=$((total_fail + f))
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    echo "==> $name: exit status $rc"
    total_fail=$((total_fail + 1))
  fi
  [ "$rc" -ne 0 ] && status=1
  echo "==> $name: $p passed, $f failed"
}

run_part style bash scripts/check_style.sh
run_part headers bash scripts/check_headers.sh
run_part lib bash scripts/check_lib.sh
run_part contract bash scripts/check_contract.sh
run_part host $MAKE --no-print-directory test-host
run_part capi $MAKE --no-print-directory test-capi
run_part host-release $MAKE --no-print-directory test-host-release
run_part host-tsan $MAKE --no-print-directory test-host-tsan
run_part fuzz $MAKE --no-print-directory fuzz-smoke
for a in $ARCHES; do
  run_part "qemu-$a" $MAKE --no-print-directory test-qemu ARCH="$a" QEMU_SMP="$QEMU_SMP"
done
# A CPU that fails to come up (smp_fail=2: the third CPU gives up on purpose) is reported and
# the kernel goes on with the others (tests/qemu/smp_fail_test.cc; only those tests, since the
# other smp_ tests need every CPU).
for a in $ARCHES; do
  run_part "qemu-$a-smpfail" $MAKE --no-print-directory test-qemu ARCH="$a" QEMU_SMP=4 \
    QEMU_APPEND="smp_fail=2 ktest=smp_fail"
done
# The configuration kernels ship: the test kernel over the release library (its tests of debug
# aids compile out), on another CPU count than above.
for a in $ARCHES; do
  run_part "qemu-$a-release" $MAKE --no-print-directory test-qemu ARCH="$a" LIB_CONFIG=release \
    QEMU_SMP="$QEMU_SMP_RELEASE"
done
# Every arch with its IOMMU (QEMU_IOMMU=1: an SMMUv3 on aarch64, the RISC-V IOMMU on riscv64,
# VT-d on x86_64, and iommu=on for the kernel): the whole suite with every PCI device in a
# translation domain of its own, the iommu_ isolation tests and the SMP stress included.
for a in $ARCHES; do
  run_part "qemu-$a-iommu" $MAKE --no-print-directory test-qemu ARCH="$a" QEMU_SMP="$QEMU_SMP" \
    QEMU_IOMMU=1
done
# The device-tree machines with dma-ranges on their PCIe host bridge (QEMU_DMA_RANGES=1: identity
# windows over parts of RAM, tests/qemu/run_qemu.py --dma-ranges): only the dmawin_ tests, which
# need the windows (buffers outside them bounce, coherent memory comes from inside them).
for a in $ARCHES; do
  case $a in aarch64 | riscv64) ;; *) continue ;; esac
  run_part "qemu-$a-dmawin" $MAKE --no-print-directory test-qemu ARCH="$a" QEMU_SMP=2 \
    QEMU_DMA_RANGES=1 QEMU_APPEND=ktest=dmawin
done

[ "$total_fail" -ne 0 ] && status=1
echo "$total_pass passed, $total_fail failed"
exit $status
