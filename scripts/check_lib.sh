#!/usr/bin/env bash
# Part "lib" of `make test`: builds libdma.a (`make lib`, nothing else) for every arch and ABI
# offered, each in its own directory (build/lib-<arch>-<abi>, so it never disturbs build/<arch>),
# and checks what a kernel linking it relies on:
#   fp        no object uses a floating-point or vector instruction or register (a kernel that
#             never saves FP state may call the library from anywhere), and none calls a
#             soft-float helper (__adddf3 & co., which no kernel provides);
#   abi       riscv64: every object's ELF float-ABI flag is the one RISCV_ABI asked for;
#   debug     the objects have debug sections exactly when DEBUG_INFO=1;
#   link      ld.lld links the whole archive, with a small object of the same ABI defining what
#             the library expects from its kernel, at an address the code model allows; and
#             for riscv64, refuses an object of the other float ABI (the flag is real).
#   tree      make lib's output tree is complete: every public header, config.h saying the
#             configuration, lib/libdma.a; a C++ file compiles with only its include/ on the path,
#             and a -D of a configuration macro that disagrees with config.h is refused;
#   size      the release library (the default of make lib) adds at most 40 KiB of text (llvm-size:
#             code and read-only data) and 16 KiB of static data (data + bss) to a kernel: measured
#             on the whole-archive link (inline functions counted once), less the link stub, without
#             the invariant checkers (mm/*_check.cc: linked only by a kernel that calls them);
#   checker   the debug library's misuse checker keeps at most 20 KiB of static tables;
#   tag       libdma.a defines exactly one configuration tag, its own; and (one ABI per arch) a
#             user object links with the library of its own configuration and fails to link,
#             naming the configuration it expected, with the other (release <-> debug), also
#             with --gc-sections.
# Each check is one test; ends with "lib: N passed, N failed".
#   scripts/check_lib.sh [arch[:abi] ...]   default: every configuration below
set -uo pipefail

LLVM_VER=${LLVM_VER:-19}
OBJDUMP=llvm-objdump-$LLVM_VER
READELF=llvm-readelf-$LLVM_VER
NM=llvm-nm-$LLVM_VER
LD=ld.lld-$LLVM_VER
CC=clang-$LLVM_VER
CXX=clang++-$LLVM_VER
BUILD=${BUILD:-build}
MAKE=${MAKE:-make -j$(nproc)}

# Release limits, bytes. Issue 12 (item 9) set 40 KiB of text for the library as it was then
# (streaming and coherent mappings, bounce pools, the allocator, pools, scatter-gather). Issue 15's
# calls (map_page, map_resource, the attributes, DMA windows, non-coherent memory, mask
# negotiation, pool fallback) added about 8 KiB, all of it reachable from KernelDmaOp's vtable, so
# a kernel links it whether it calls them or not: 50 KiB. Bounce-pool growth and shrink (issue 15
# item 7: the grown-pool table, its lock-free readers, retirement, trim_bounce_pools) added about
# 5 KiB more, reached from the map path's fallback: 56 KiB. Issue 16's bounce fast path (the
# per-CPU caches' lock-free newest block and the cached map path inline in map_out_of_reach) and
# the page-frame allocator's far block and exact summaries added about 4 KiB: 60 KiB. The IOMMU
# layer and drivers are not counted (a kernel links them only when it builds a domain or a
# driver).
TEXT_LIMIT=61440
STATIC_LIMIT=16384
# The debug library's misuse checker (dma/dma_debug.o): its default table, hash buckets and device
# names; the table a kernel needs comes from DmaDebug::init.
CHECKER_STATIC_LIMIT=20480

# arch:abi-variable=value:debug-info:link address:tag test (1: also build the debug library and
# cross-link the two).
CONFIGS=(
  "aarch64::1:0xFFFF000040080000:1"
  "riscv64:RISCV_ABI=lp64:1:0xFFFFFFC080200000:1"
  "riscv64:RISCV_ABI=lp64d:0:0xFFFFFFC080200000:0"
  "x86_64:X86_CMODEL=kernel:1:0xFFFFFFFF80200000:1"
  "x86_64:X86_CMODEL=small:0:0x200000:0"
  "x86_64:X86_CMODEL=large:0:0xFFFF800000200000:0"
)
if [ $# -gt 0 ]; then
  want=("$@")
  sel=()
  for c in "${CONFIGS[@]}"; do
    IFS=: read -r a v _ _ _ <<<"$c"
    for w in "${want[@]}"; do
      [ "$w" = "$a" ] || [ "$w" = "$a:${v#*=}" ] && sel+=("$c") && break
    done
  done
  CONFIGS=("${sel[@]}")
fi

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

# FP and vector use, per arch, as extended regexes over "mnemonic<TAB>operands" lines of the
# disassembly (symbol names and comments removed first, so a function named "fsync" matches
# nothing); fp_exempt: the instructions that match it without being FP (the RISC-V fences).
fp_regex() {
  case $1 in
    # F/D/Q/Zfh instructions all start with f (fld, fsd, fmv.x.d, fcvt..., fadd...) except the
    # fences; f0-f31 under their ABI names; the FP CSRs; V instructions start with v.
    riscv64)
      echo '^(f[a-z]|v[a-z])|[[:space:],(](f[0-9]+|ft[0-9]+|fs[0-9]+|fa[0-9]+|fcsr|frm|fflags|v[0-9]+)([,)[:space:]]|$)'
      ;;
    # fmov/fadd/fcvt..., scvtf/ucvtf; b/h/s/d/q/v/z/p registers (w/x are the integer ones);
    # the FP control and status registers.
    aarch64)
      echo '^(f[a-z]|[su]cvtf)|[[:space:],{[](([bhsdqvz][0-9]+)|p[0-9]+)([.,}\][:space:]]|$)|[Ff][Pp][Cc][Rr]|[Ff][Pp][Ss][Rr]'
      ;;
    # x87 (f...), MMX/SSE/AVX registers, MXCSR.
    x86_64) echo '^f[a-z]|%(x|y|z)mm[0-9]|%mm[0-9]|%st|mxcsr' ;;
  esac
}

fp_exempt() {
  case $1 in
    riscv64) echo '^fence' ;;
    *) echo '^$' ;;
  esac
}

# Soft-float helpers of compiler-rt/libgcc (__adddf3, __floatsidf, __fixdfsi, __extendsfdf2,
# __eqdf2, __unorddf2, __powidf2, ...): what FP code becomes when no FP instruction may be used.
SOFTFLOAT_RE='^__[a-z]+[sdtxh]f[0-9]*$'

mkdir -p "$BUILD"
# The link tag's symbols, as nm prints them.
TAG_RE='^dmakit_config_[a-z]+_v1__'

# A user of the library: compiled against one output tree's include/ alone.
write_user() {
  cat >"$1" <<'CXX'
#include "dmakit/device_dma.h"
#include "dmakit/dma_debug.h"

uint32_t link_check_id;

extern "C" void link_check_entry() { link_check_id = DmaDebug::new_device_id(); }
CXX
}

# size_check NAME LIB ELF STUB: what the library adds to a kernel that links all of it: the text,
# data and bss of ELF (the whole archive linked with the small STUB object defining what it
# expects from its kernel) minus STUB's own. Measured on a link rather than summed over the
# archive's members, because each member carries its own copy of the inline functions it uses
# (COMDAT groups), which a link keeps once.
size_check() {
  local name=$1 lib=$2 elf=$3 stub=$4 text data bss st sd sb
  read -r text data bss < <(llvm-size-"$LLVM_VER" "$elf" | awk 'END { print $1, $2, $3 }')
  read -r st sd sb < <(llvm-size-"$LLVM_VER" "$stub" | awk 'END { print $1, $2, $3 }')
  text=$((text - st))
  data=$((data - sd))
  bss=$((bss - sb))
  echo "       linked size: text $text, data $data, bss $bss"
  if [ "$text" -le "$TEXT_LIMIT" ]; then
    ok "$name: release text $text <= $TEXT_LIMIT bytes"
  else
    bad "$name: release text $text > $TEXT_LIMIT bytes (llvm-size $elf, less $stub)"
  fi
  if [ $((data + bss)) -le "$STATIC_LIMIT" ]; then
    ok "$name: release static data $((data + bss)) <= $STATIC_LIMIT bytes"
  else
    echo "       largest static data:"
    $NM -S --size-sort -C "$lib" 2>/dev/null | awk '$3 ~ /^[bBdD]$/' | tail -n 3 | sed 's/^/         /'
    bad "$name: release static data $((data + bss)) > $STATIC_LIMIT bytes (data $data + bss $bss)"
  fi
}

# tree_check NAME KDIR CONFIG: the output tree of make lib.
tree_check() {
  local name=$1 out=$2/dmakit cfg=$3 missing=""
  for h in $(cd include && find dmakit -name '*.h'); do
    cmp -s "include/$h" "$out/include/$h" || missing+=" $h"
  done
  if [ -n "$missing" ] || [ ! -f "$out/lib/libdma.a" ] ||
    ! grep -q "^#define DMAKIT_LIB_CONFIG \"$cfg\"" "$out/include/dmakit/config.h" 2>/dev/null; then
    bad "$name: output tree $out incomplete (headers missing or stale:${missing:- none}; lib/libdma.a and config.h for $cfg expected)"
  else
    ok "$name: output tree $out: every public header, config.h ($cfg), lib/libdma.a"
  fi
}

mkdir -p "$BUILD"
for c in "${CONFIGS[@]}"; do
  IFS=: read -r arch var dbg addr tagtest <<<"$c"
  abi=${var#*=}
  name=$arch${abi:+-$abi}
  kdir=$BUILD/lib-$name
  lib=$kdir/dmakit/lib/libdma.a
  echo "== $name (DEBUG_INFO=$dbg)"
  # No LIB_CONFIG: what make lib builds by default must be the release library.
  if ! $MAKE --no-print-directory lib ARCH="$arch" ${var:+"$var"} DEBUG_INFO="$dbg" \
    KDIR="$kdir" >"$kdir.log" 2>&1; then
    tail -n 20 "$kdir.log"
    bad "$name: make lib (log $kdir.log)"
    continue
  fi
  ok "$name: make lib"
  if [ ! -f "$lib" ]; then
    bad "$name: make lib made no $lib"
    continue
  fi
  grep -E '^ *size:' "$kdir.log" | sed 's/^ */       make lib: /'
  mapfile -t objs < <(find "$kdir/obj" -name '*.o' | sort)
  tree_check "$name" "$kdir" release

  # fp: instructions and registers.
  re=$(fp_regex "$arch")
  exempt=$(fp_exempt "$arch")
  hits=$($OBJDUMP -d --no-show-raw-insn --no-leading-addr "$lib" | awk '
    /file format/ { obj = $1 }
    /^<.*>:$/ { fn = $0 }
    /^[[:space:]]+\t/ {
      line = $0
      sub(/^[[:space:]]+\t/, "", line)
      gsub(/<[^>]*>/, "", line)
      sub(/[[:space:]]*(#|\/\/).*$/, "", line)
      print obj " " fn "\t" line
    }' | awk -F'\t' -v re="$re" -v exempt="$exempt" '{
      insn = $2 "\t" $3
      if (insn ~ re && insn !~ exempt) print
    }')
  soft=$($NM -u "$lib" 2>/dev/null | awk 'NF { print $NF }' | grep -E "$SOFTFLOAT_RE" | sort -u)
  if [ -z "$hits" ] && [ -z "$soft" ]; then
    ok "$name: no floating point"
  else
    [ -n "$hits" ] && echo "$hits" | head -n 10 | sed 's/^/       /'
    [ -n "$soft" ] && echo "       soft-float helpers called: $(echo "$soft" | tr '\n' ' ')"
    n_hits=$(echo -n "$hits" | grep -c '^')
    n_soft=$(echo -n "$soft" | grep -c '^')
    bad "$name: floating point in libdma.a ($n_hits FP instructions, $n_soft soft-float helpers)"
  fi

  # abi: every riscv64 object's float-ABI flag.
  if [ "$arch" = riscv64 ]; then
    # e_flags bits 1-2 (EF_RISCV_FLOAT_ABI): 0 soft, 2 single, 4 double, 6 quad.
    case $abi in
      lp64) want_flag="soft-float ABI" want_bits=0 ;;
      lp64d) want_flag="double-float ABI" want_bits=4 ;;
      *) want_flag="?" want_bits=-1 ;;
    esac
    wrong=""
    for o in "${objs[@]}"; do
      flags=$($READELF -h "$o" | sed -n 's/^ *Flags: *//p')
      hex=${flags%%,*}
      [[ $hex == 0x* ]] && [ $((hex & 6)) -eq "$want_bits" ] || wrong+=" ${o#"$kdir/obj/"}($flags)"
    done
    if [ -z "$wrong" ]; then ok "$name: every object has the $want_flag flag"; else
      bad "$name: objects without the $want_flag flag:$wrong"
    fi
  fi

  # debug: .debug_info in every object exactly when asked for.
  with=0
  without=0
  for o in "${objs[@]}"; do
    # Not `| grep -q`: with pipefail, readelf's SIGPIPE would count as "without".
    if [[ $($READELF -S "$o") == *.debug_info* ]]; then with=$((with + 1)); else
      without=$((without + 1))
    fi
  done
  if { [ "$dbg" = 1 ] && [ "$without" -eq 0 ]; } || { [ "$dbg" = 0 ] && [ "$with" -eq 0 ]; }; then
    ok "$name: debug info $([ "$dbg" = 1 ] && echo in every object || echo in no object)"
  else
    bad "$name: DEBUG_INFO=$dbg but $with objects with .debug_info, $without without"
  fi

  # link: the whole archive, with an object defining every symbol the archive leaves undefined
  # (memcpy, support_panic, operator delete...), compiled for the same ABI.
  stub=$kdir/link-stub
  $NM --defined-only "$lib" 2>/dev/null | awk 'NF == 3 { print $3 }' | sort -u >"$stub.def"
  $NM -u "$lib" 2>/dev/null | awk 'NF { print $NF }' | grep -v ':$' | sort -u |
    comm -23 - "$stub.def" | awk '{ print "void " $1 "(void) {}" }' >"$stub.c"
  echo 'void link_check_entry(void) {}' >>"$stub.c"
  abi_cflags=$(make --no-print-directory -s -f - ARCH="$arch" ${var:+"$var"} print-abi <<'EOF'
include arch/$(ARCH)/arch.mk
print-abi:
	@echo --target=$(TRIPLE) $(ARCH_CXXFLAGS) $(ARCH_ABI_CXXFLAGS)
EOF
  )
  # shellcheck disable=SC2086 # word splitting of the flag list is meant
  if ! $CC -x c -ffreestanding -fno-builtin -fno-pic -O1 $abi_cflags -c "$stub.c" -o "$stub.o" \
    >"$stub.log" 2>&1; then
    cat "$stub.log"
    bad "$name: link stub does not compile"
    continue
  fi
  if $LD -static -nostdlib --no-relax -e link_check_entry --image-base="$addr" \
    -o "$kdir/link-check.elf" "$stub.o" --whole-archive "$lib" >"$stub.log" 2>&1; then
    ok "$name: ld.lld links the whole archive at $addr"
    # The size: the same link without the invariant checkers (mm/*_check.cc), archive members a
    # kernel's link takes only when it calls check_invariants, and without the IOMMU layer
    # (dma/io_page_table.cc, iova_allocator.cc, iommu_domain.cc) and the arch's IOMMU driver
    # (arch/<a>/iommu/), which a kernel's link takes only when it builds an IommuDomain or the
    # driver; their own sizes are printed beside.
    cp "$lib" "$kdir/libdma-nocheck.a"
    iommu_objs="io_page_table.o iova_allocator.o iommu_domain.o"
    driver_objs=""
    for f in arch/"$arch"/iommu/*.cc; do
      [ -e "$f" ] && driver_objs="$driver_objs $(basename "${f%.cc}").o"
    done
    # shellcheck disable=SC2086 # word splitting of the member lists is meant
    llvm-ar-"$LLVM_VER" d "$kdir/libdma-nocheck.a" bounce_pool_check.o page_frame_allocator_check.o \
      $iommu_objs $driver_objs
    mkdir -p "$kdir/iommu-objs"
    libabs=$(realpath "$lib")
    # shellcheck disable=SC2086
    (cd "$kdir/iommu-objs" && llvm-ar-"$LLVM_VER" x "$libabs" $iommu_objs 2>/dev/null &&
      llvm-size-"$LLVM_VER" $iommu_objs |
      awk 'NR > 1 { t += $1; d += $2 + $3 } END { printf "       IOMMU layer (not counted below): text %d, data+bss %d\n", t, d }')
    if [ -n "$driver_objs" ]; then
      # shellcheck disable=SC2086
      (cd "$kdir/iommu-objs" && llvm-ar-"$LLVM_VER" x "$libabs" $driver_objs 2>/dev/null &&
        llvm-size-"$LLVM_VER" $driver_objs |
        awk 'NR > 1 { t += $1; d += $2 + $3 } END { printf "       IOMMU driver (not counted below): text %d, data+bss %d\n", t, d }')
    fi
    if $LD -static -nostdlib --no-relax -e link_check_entry --image-base="$addr" \
      -o "$kdir/link-size.elf" "$stub.o" --whole-archive "$kdir/libdma-nocheck.a" \
      >"$stub.log" 2>&1; then
      size_check "$name" "$lib" "$kdir/link-size.elf" "$stub.o"
    else
      head -n 5 "$stub.log" | sed 's/^/       /'
      bad "$name: the library without its invariant checkers does not link"
    fi
  else
    head -n 5 "$stub.log" | sed 's/^/       /'
    bad "$name: ld.lld cannot link the whole archive at $addr"
  fi
  if [ "$arch" = riscv64 ]; then
    other=$([ "$abi" = lp64 ] && echo lp64d || echo lp64)
    # shellcheck disable=SC2086
    $CC -x c -ffreestanding -fno-builtin -fno-pic -O1 ${abi_cflags/-mabi=$abi/-mabi=$other} -c "$stub.c" \
      -o "$stub-$other.o" >/dev/null 2>&1
    if $LD -static -nostdlib --no-relax -e link_check_entry --image-base="$addr" \
      -o "$kdir/link-check-$other.elf" "$stub-$other.o" --whole-archive "$lib" \
      >"$stub.log" 2>&1; then
      bad "$name: ld.lld linked it with an $other object"
    elif grep -q 'floating-point ABI' "$stub.log"; then
      ok "$name: ld.lld refuses an $other object ($(grep -m1 -o 'cannot link[^/]*' "$stub.log"))"
    else
      head -n 3 "$stub.log" | sed 's/^/       /'
      bad "$name: linking with an $other object failed for another reason"
    fi
  fi

  # tag: exactly one, the release one.
  tags=$($NM --defined-only "$lib" 2>/dev/null | awk 'NF == 3 { print $3 }' | grep -E "$TAG_RE" | sort -u)
  if [ "$(echo -n "$tags" | grep -c '^')" -eq 1 ] && [[ $tags == dmakit_config_release_v1__* ]]; then
    ok "$name: libdma.a defines one configuration tag: $tags"
  else
    bad "$name: libdma.a should define exactly one release tag, defines: ${tags:-none}"
  fi

  # tree: a user compiles with the output tree's include/ alone, and may not redefine the
  # configuration.
  user_flags=(-std=c++20 -ffreestanding -nostdinc++ -fno-exceptions -fno-rtti -fno-pic -O1
    -Wall -Wextra -Werror)
  write_user "$kdir/user.cc"
  # shellcheck disable=SC2086
  if $CXX "${user_flags[@]}" $abi_cflags -I"$kdir/dmakit/include" -c "$kdir/user.cc" \
    -o "$kdir/user-release.o" >"$stub.log" 2>&1; then
    ok "$name: a C++ user compiles with only $kdir/dmakit/include"
  else
    head -n 5 "$stub.log" | sed 's/^/       /'
    bad "$name: a C++ user does not compile with only $kdir/dmakit/include"
    continue
  fi
  # shellcheck disable=SC2086
  if $CXX "${user_flags[@]}" $abi_cflags -I"$kdir/dmakit/include" -DDMA_API_DEBUG=1 \
    -c "$kdir/user.cc" -o "$kdir/user-bad.o" >"$stub.log" 2>&1; then
    bad "$name: -DDMA_API_DEBUG=1 against a release config.h compiled"
  elif grep -q 'libdma.a was built with DMA_API_DEBUG=0' "$stub.log"; then
    ok "$name: -DDMA_API_DEBUG=1 against a release config.h is refused"
  else
    head -n 3 "$stub.log" | sed 's/^/       /'
    bad "$name: -DDMA_API_DEBUG=1 failed for another reason"
  fi

  [ "$tagtest" = 1 ] || continue
  dkdir=$BUILD/lib-$name-debug
  dlib=$dkdir/dmakit/lib/libdma.a
  if ! $MAKE --no-print-directory lib ARCH="$arch" ${var:+"$var"} DEBUG_INFO="$dbg" \
    LIB_CONFIG=debug KDIR="$dkdir" >"$dkdir.log" 2>&1; then
    tail -n 20 "$dkdir.log"
    bad "$name: make lib LIB_CONFIG=debug (log $dkdir.log)"
    continue
  fi
  ok "$name: make lib LIB_CONFIG=debug"
  grep -E '^ *size:' "$dkdir.log" | sed 's/^ */       make lib LIB_CONFIG=debug: /'
  tree_check "$name-debug" "$dkdir" debug
  # The misuse checker's own static tables stay small: the kernel sizes its table (DmaDebug::init).
  read -r ddata dbss < <(llvm-size-"$LLVM_VER" "$dkdir/obj/dma/dma_debug.o" | awk 'END { print $2, $3 }')
  if [ $((ddata + dbss)) -le "$CHECKER_STATIC_LIMIT" ]; then
    ok "$name: debug misuse checker's static data $((ddata + dbss)) <= $CHECKER_STATIC_LIMIT bytes"
  else
    bad "$name: debug misuse checker's static data $((ddata + dbss)) > $CHECKER_STATIC_LIMIT bytes (dma/dma_debug.o)"
  fi
  # shellcheck disable=SC2086
  $CXX "${user_flags[@]}" $abi_cflags -I"$dkdir/dmakit/include" -c "$kdir/user.cc" \
    -o "$kdir/user-debug.o" >"$stub.log" 2>&1 || {
    head -n 5 "$stub.log" | sed 's/^/       /'
    bad "$name: a C++ user does not compile with only $dkdir/dmakit/include"
    continue
  }
  # What the debug library leaves undefined (the release stub may not cover it).
  $NM --defined-only "$dlib" 2>/dev/null | awk 'NF == 3 { print $3 }' | sort -u >"$stub-debug.def"
  $NM -u "$lib" "$dlib" 2>/dev/null | awk 'NF { print $NF }' | grep -v ':$' | sort -u |
    comm -23 - "$stub.def" | comm -23 - "$stub-debug.def" |
    awk '{ print "void " $1 "(void) {}" }' >"$stub-both.c"
  # shellcheck disable=SC2086
  $CC -x c -ffreestanding -fno-builtin -fno-pic -O1 $abi_cflags -c "$stub-both.c" \
    -o "$stub-both.o" >/dev/null 2>&1
  for pair in release:release:"$lib" debug:debug:"$dlib" debug:release:"$lib" release:debug:"$dlib"; do
    IFS=: read -r ucfg lcfg plib <<<"$pair"
    for gc in "" --gc-sections; do
      what="$name: a $ucfg user with the $lcfg library${gc:+ ($gc)}"
      if $LD -static -nostdlib --no-relax $gc -e link_check_entry --image-base="$addr" \
        -o "$kdir/user-link.elf" "$kdir/user-$ucfg.o" "$stub-both.o" "$plib" >"$stub.log" 2>&1; then
        if [ "$ucfg" = "$lcfg" ]; then ok "$what links"; else bad "$what links"; fi
      elif [ "$ucfg" = "$lcfg" ]; then
        head -n 5 "$stub.log" | sed 's/^/       /'
        bad "$what does not link"
      elif grep -q "undefined symbol: dmakit_config_${ucfg}_v1__" "$stub.log"; then
        ok "$what fails: $(grep -m1 -o 'undefined symbol: [A-Za-z0-9_]*' "$stub.log")"
      else
        head -n 5 "$stub.log" | sed 's/^/       /'
        bad "$what fails, but not on the configuration tag"
      fi
    done
  done
done

echo "lib: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
