#!/usr/bin/env bash
# Style checks as tests: clang-format (every tracked C++ file), clang-tidy (the subsystem and
# the host backend), and the library's independence from the test kernel (no file of the library
# includes a test-kernel header). Prints "N passed, N failed" like every other part of `make test`.
set -uo pipefail
MAKE=${MAKE:-make}
pass=0
fail=0
if $MAKE --no-print-directory format-check; then
  echo "[PASS] clang-format"
  pass=$((pass + 1))
else
  echo "[FAIL] clang-format: run 'make format'"
  fail=$((fail + 1))
fi
if $MAKE --no-print-directory lint; then
  echo "[PASS] clang-tidy"
  pass=$((pass + 1))
else
  echo "[FAIL] clang-tidy"
  fail=$((fail + 1))
fi
# The library (dma/ mm/ support/ arch/*/dma/ arch/*/iommu/ include/) is linked into kernels that have no test
# kernel: it may not include testkernel/ or arch/<arch>/testkernel/ headers.
cd "$(dirname "$0")/.." || exit 1
lib_files=$(find dma mm support include arch/*/dma arch/*/iommu -type f \( -name '*.h' -o -name '*.cc' -o -name '*.c' -o -name '*.S' \) 2>/dev/null | sort)
# shellcheck disable=SC2086
bad=$(grep -nE '^[[:space:]]*#[[:space:]]*include[[:space:]]*[<"]([.][.]/)*(testkernel/|arch/[^/"]+/testkernel/)' $lib_files)
if [ -z "$bad" ]; then
  echo "[PASS] library includes no test-kernel header"
  pass=$((pass + 1))
else
  echo "[FAIL] library files include test-kernel headers:"
  echo "$bad"
  fail=$((fail + 1))
fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
