#!/usr/bin/env bash
# Part "contract" of `make test`: what a kernel linking libdma.a must provide, and what it need
# not run. For every arch, in the release and the debug configuration of `make lib`:
#   exact     the symbols the archive leaves undefined are exactly the list in
#             include/dmakit/kernel_contract.h ("dmakit-kernel-symbols:"): nothing missing from
#             the list, nothing on it the library does not need;
#   link      ld.lld links the whole archive (--whole-archive) with an object that defines those
#             symbols and nothing else;
#   example   each minimal bring-up (examples/minimal_*.cc: constinit statics of every owning type)
#             compiled freestanding with the library's own flags and only the public include root,
#             linked with the archive and that object: the link succeeds (no C++ runtime needed),
#             the output has no .init_array/.ctors/.fini_array/.dtors section (nothing to run at
#             start-up), and neither it nor the example's object refers to __cxa_atexit,
#             __dso_handle or atexit (no destructor registered);
#   control   the same compile and checks on a static with a destructor are seen to fail (so the
#             example checks can fail).
# Each check is one test; ends with "contract: N passed, N failed".
#   scripts/check_contract.sh                       build each arch and configuration, check all
#   scripts/check_contract.sh ARCH:CONFIG:LIBDMA.A  check given archives (CONFIG release|debug;
#                                                   the compile flags come from the .build-flags
#                                                   file beside the archive when there is one)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

LLVM_VER=${LLVM_VER:-19}
NM=llvm-nm-$LLVM_VER
READELF=llvm-readelf-$LLVM_VER
LD=ld.lld-$LLVM_VER
CC=clang-$LLVM_VER
CXX=clang++-$LLVM_VER
BUILD=${BUILD:-build}
MAKE=${MAKE:-make -j$(nproc)}
ARCHES=${ARCHES:-"aarch64 riscv64 x86_64"}
CONTRACT_H=include/dmakit/kernel_contract.h

pass=0
fail=0
ok() {
  pass=$((pass + 1))
  echo "  ok   $1"
}
bad() {
  fail=$((fail + 1))
  echo "  FAIL $1"
}

# The line "/* dmakit-kernel-symbols: a b c */" of the header.
read -r -a contract < <(sed -n 's|^/\* dmakit-kernel-symbols: *\([^*]*\)\*/$|\1|p' "$CONTRACT_H")
if [ ${#contract[@]} -eq 0 ]; then
  bad "no dmakit-kernel-symbols line in $CONTRACT_H"
  echo "contract: $pass passed, $fail failed"
  exit 1
fi
echo "contract: ${contract[*]}"

# Link addresses each arch's default code model allows (as scripts/check_lib.sh).
link_address() {
  case $1 in
    aarch64) echo 0xFFFF000040080000 ;;
    riscv64) echo 0xFFFFFFC080200000 ;;
    x86_64) echo 0xFFFFFFFF80200000 ;;
  esac
}

# The flags of arch/<arch>/arch.mk (target, ABI), for archives given without a .build-flags file.
arch_flags() {
  make --no-print-directory -s -f - ARCH="$1" print-flags <<'EOF'
include arch/$(ARCH)/arch.mk
print-flags:
	@echo --target=$(TRIPLE) $(ARCH_CXXFLAGS) $(ARCH_ABI_CXXFLAGS)
EOF
}

config_defines() {
  if [ "$1" = release ]; then echo "-DDMA_DEBUG=0 -DDMA_API_DEBUG=0"; else
    echo "-DDMA_DEBUG=1 -DDMA_API_DEBUG=1"
  fi
}

# Builds libdma.a for arch and config into $BUILD/contract-<arch>-<config>; prints its path.
build_lib() {
  local arch=$1 config=$2
  local kdir=$BUILD/contract-$arch-$config
  mkdir -p "$kdir"
  if ! $MAKE --no-print-directory lib ARCH="$arch" DEBUG_INFO=0 KDIR="$kdir" LIB_CONFIG="$config" \
    >"$kdir.log" 2>&1; then
    tail -n 20 "$kdir.log" >&2
    return 1
  fi
  echo "$kdir/dmakit/lib/libdma.a"
}

# Compile flags for code linked with the archive: the archive's own (its .build-flags file: the
# compile flags before " / "), without the repository root on the include path (a kernel has
# only include/) and without -fno-use-cxa-atexit (a static's destructor must show as a
# __cxa_atexit reference, as in a kernel built with the compiler's defaults).
user_flags() {
  local arch=$1 config=$2 lib=$3
  local stamp
  stamp=$(dirname "$lib")/../../.build-flags  # $KDIR/.build-flags; the archive is $KDIR/dmakit/lib/
  local flags
  if [ -f "$stamp" ]; then
    flags=$(sed 's| / .*||' "$stamp")
  else
    flags="-std=c++20 -Iinclude -ffreestanding -nostdlib -nostdinc++ -fno-exceptions -fno-rtti \
-fno-pic -O2 $(config_defines "$config") $(arch_flags "$arch")"
  fi
  local out=()
  for f in $flags; do
    case $f in
      -I. | -Iinclude | -fno-use-cxa-atexit | -Werror) ;;  # Only the output tree's include/.
      *) out+=("$f") ;;
    esac
  done
  echo "${out[*]}"
}

# Sections and symbol references (in the given objects or executables) that mean start-up or
# exit code: prints what it finds.
startup_findings() {
  local found=""
  local sections
  sections=$($READELF -S -W "$@" 2>/dev/null |
    awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\.(init_array|ctors|fini_array|dtors|preinit_array)/) print $i }' |
    sort -u | tr '\n' ' ')
  [ -n "$sections" ] && found+="sections: $sections"
  local syms
  syms=$($NM "$@" 2>/dev/null | awk '{ print $NF }' |
    grep -E '^(__cxa_atexit|__dso_handle|atexit|__cxa_guard_acquire)$' | sort -u | tr '\n' ' ')
  [ -n "$syms" ] && found+="symbols: $syms"
  echo "$found"
}

check_lib() {
  local arch=$1 config=$2 lib=$3
  local name=$arch-$config
  local work
  work=$(dirname "$lib")/contract
  mkdir -p "$work"
  echo "== $name ($lib)"

  # exact: undefined minus defined, against the list.
  local needed
  needed=$(comm -23 <($NM -u "$lib" 2>/dev/null | awk 'NF { print $NF }' | grep -v ':$' | sort -u) \
    <($NM --defined-only "$lib" 2>/dev/null | awk 'NF == 3 { print $3 }' | sort -u))
  local listed
  listed=$(printf '%s\n' "${contract[@]}" | sort -u)
  local missing extra
  missing=$(comm -23 <(echo "$needed") <(echo "$listed") | tr '\n' ' ')
  extra=$(comm -13 <(echo "$needed") <(echo "$listed") | tr '\n' ' ')
  if [ -z "${missing// /}" ] && [ -z "${extra// /}" ]; then
    ok "$name: needs exactly the contract's symbols"
  else
    bad "$name: needs symbols not in the contract: [${missing}]; listed but not needed: [${extra}]"
  fi

  # link: the whole archive with an object defining exactly the list.
  local flags
  flags=$(user_flags "$arch" "$config" "$lib")
  local target_flags=()
  for f in $flags; do
    case $f in
      --target=* | -m* | -DSUPPORT_*) target_flags+=("$f") ;;
    esac
  done
  local stub=$work/contract-provider
  {
    for s in "${contract[@]}"; do echo "void $s(void) {}"; done
    echo 'void contract_entry(void) {}'
  } >"$stub.c"
  if ! $CC -x c -ffreestanding -fno-builtin -fno-pic -O1 "${target_flags[@]}" -c "$stub.c" \
    -o "$stub.o" >"$stub.log" 2>&1; then
    head -n 5 "$stub.log" | sed 's/^/       /'
    bad "$name: the provider object does not compile"
    return
  fi
  local addr
  addr=$(link_address "$arch")
  local ldflags=(-static -nostdlib --no-relax --image-base="$addr" -z max-page-size=4096)
  if $LD "${ldflags[@]}" -e contract_entry -o "$work/whole.elf" "$stub.o" --whole-archive "$lib" \
    >"$work/whole.log" 2>&1; then
    ok "$name: the whole archive links with only the contract"
  else
    head -n 5 "$work/whole.log" | sed 's/^/       /'
    bad "$name: the whole archive does not link with only the contract"
  fi

  # example: each minimal bring-up, and the control.
  local src
  for src in examples/minimal_identity.cc examples/minimal_higher_half.cc control; do
    local base obj elf
    if [ "$src" = control ]; then
      base=control
      printf 'struct WithDestructor {\n  ~WithDestructor() { x = 1; }\n  int x = 0;\n};\nWithDestructor g_object;\n' >"$work/control.cc"
      src=$work/control.cc
    else
      base=$(basename "$src" .cc)
    fi
    obj=$work/$base.o
    elf=$work/$base.elf
    # shellcheck disable=SC2086 # word splitting of the flag list is meant
    if ! $CXX $flags -c "$src" -o "$obj" >"$work/$base.log" 2>&1; then
      head -n 10 "$work/$base.log" | sed 's/^/       /'
      bad "$name: $base does not compile freestanding with only include/"
      continue
    fi
    if [ "$base" = control ]; then
      # Not linked (its destructor registration needs the C++ runtime the contract leaves out):
      # the object itself must show what the examples' checks look for.
      local findings
      findings=$(startup_findings "$obj")
      if [ -n "$findings" ]; then
        ok "$name: control (a static with a destructor) is caught: $findings"
      else
        bad "$name: control (a static with a destructor) is not caught"
      fi
      continue
    fi
    local entry
    entry=$($NM --defined-only "$obj" | awk '$3 ~ /dma_bring_up/ { print $3; exit }')
    if ! $LD "${ldflags[@]}" -e "$entry" -o "$elf" "$obj" "$stub.o" "$lib" \
      >"$work/$base.ld.log" 2>&1; then
      head -n 5 "$work/$base.ld.log" | sed 's/^/       /'
      bad "$name: $base does not link with the archive and only the contract"
      continue
    fi
    local findings
    findings=$(startup_findings "$elf" "$obj")
    if [ -n "$findings" ]; then
      bad "$name: $base needs start-up or exit code: $findings"
    else
      ok "$name: $base links with only the contract, no start-up or exit code"
    fi
  done
}

if [ $# -gt 0 ]; then
  for spec in "$@"; do
    IFS=: read -r arch config lib <<<"$spec"
    check_lib "$arch" "$config" "$lib"
  done
else
  for arch in $ARCHES; do
    for config in release debug; do
      if lib=$(build_lib "$arch" "$config"); then
        ok "$arch-$config: make lib"
        check_lib "$arch" "$config" "$lib"
      else
        bad "$arch-$config: make lib (log $BUILD/contract-$arch-$config.log)"
      fi
    done
  done
fi

echo "contract: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
