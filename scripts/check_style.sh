#!/usr/bin/env bash
# Style checks as tests: clang-format (every tracked C++ file) and clang-tidy (the subsystem and
# the host backend). Prints "N passed, N failed" like every other part of `make test`.
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
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
