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
# Each check is one test; ends with "lib: N passed, N failed".
#   scripts/check_lib.sh [arch[:abi] ...]   default: every configuration below
set -uo pipefail

LLVM_VER=${LLVM_VER:-19}
OBJDUMP=llvm-objdump-$LLVM_VER
READELF=llvm-readelf-$LLVM_VER
NM=llvm-nm-$LLVM_VER
LD=ld.lld-$LLVM_VER
CC=clang-$LLVM_VER
BUILD=${BUILD:-build}
MAKE=${MAKE:-make -j$(nproc)}

# arch:abi-variable=value:debug-info:link address.
CONFIGS=(
  "aarch64::1:0xFFFF000040080000"
  "riscv64:RISCV_ABI=lp64:1:0xFFFFFFC080200000"
  "riscv64:RISCV_ABI=lp64d:0:0xFFFFFFC080200000"
  "x86_64:X86_CMODEL=kernel:1:0xFFFFFFFF80200000"
  "x86_64:X86_CMODEL=small:0:0x200000"
  "x86_64:X86_CMODEL=large:0:0xFFFF800000200000"
)
if [ $# -gt 0 ]; then
  want=("$@")
  sel=()
  for c in "${CONFIGS[@]}"; do
    IFS=: read -r a v _ _ <<<"$c"
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
for c in "${CONFIGS[@]}"; do
  IFS=: read -r arch var dbg addr <<<"$c"
  abi=${var#*=}
  name=$arch${abi:+-$abi}
  kdir=$BUILD/lib-$name
  lib=$kdir/libdma.a
  echo "== $name (DEBUG_INFO=$dbg)"
  if ! $MAKE --no-print-directory lib ARCH="$arch" ${var:+"$var"} DEBUG_INFO="$dbg" \
    KDIR="$kdir" >"$kdir.log" 2>&1; then
    tail -n 20 "$kdir.log"
    bad "$name: make lib (log $kdir.log)"
    continue
  fi
  ok "$name: make lib"
  mapfile -t objs < <(find "$kdir/obj" -name '*.o' | sort)

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
done

echo "lib: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
