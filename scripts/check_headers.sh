#!/usr/bin/env bash
# The library's public headers (include/dmakit/, the one include root a kernel adds) compile on
# their own, with only that root on the include path (so no public header reaches an internal
# one), with GCC (12 or newer) and with clang (the
# project's clang-19), freestanding, warnings as errors: a kernel built with either can include
# them. One test per header and compiler; the C headers (dmakit.h, kernel_hooks.h) also as C11
# with gcc and clang. Ends with "headers: N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
CLANG=${CLANG:-clang++-19}
GCC=${GCC:-g++}
FLAGS=(-std=c++20 -Iinclude -fsyntax-only -ffreestanding -fno-exceptions -fno-rtti -Wall -Wextra -Werror)
pass=0
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for h in $(cd include && find dmakit -name '*.h' | sort); do
  printf '#include "%s"\n' "$h" > "$tmp/one.cc"
  for cxx in "$GCC" "$CLANG"; do
    if "$cxx" "${FLAGS[@]}" "$tmp/one.cc" > "$tmp/log" 2>&1; then
      pass=$((pass + 1))
    else
      echo "[FAIL] $h with $cxx:"
      head -n 5 "$tmp/log"
      fail=$((fail + 1))
    fi
  done
done
# The C headers also compile as C11, pedantic, with both compilers: a C kernel includes them.
CC_GCC=${CC_GCC:-gcc}
CC_CLANG=${CC_CLANG:-clang-19}
CFLAGS=(-std=c11 -Iinclude -fsyntax-only -ffreestanding -Wall -Wextra -Werror -pedantic)
for h in dmakit/dmakit.h dmakit/kernel_hooks.h; do
  printf '#include "%s"\n' "$h" > "$tmp/one.c"
  for cc in "$CC_GCC" "$CC_CLANG"; do
    if "$cc" "${CFLAGS[@]}" "$tmp/one.c" > "$tmp/log" 2>&1; then
      pass=$((pass + 1))
    else
      echo "[FAIL] $h as C11 with $cc:"
      head -n 5 "$tmp/log"
      fail=$((fail + 1))
    fi
  done
done
echo "headers: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
