#!/usr/bin/env bash
# Idempotent setup: installs the Debian packages this project needs, and only those missing.
# QEMU >= 8 and a recent clang come from bookworm-backports, enabled by reusing the Debian
# mirror URI already configured in the machine's apt sources (no host name is written here).
#   bash scripts/setup.sh        everything: tests, QEMU, benchmarks, format and lint tools
#   bash scripts/setup.sh lib    only what `make lib` needs: the compiler (clang), the linker
#                                (lld) and the binary tools (llvm: ar, nm, size, objdump)
set -euo pipefail

mode=${1:-full}
case $mode in
  full | lib) ;;
  *)
    echo "usage: setup.sh [full|lib]" >&2
    exit 2
    ;;
esac

need_root() { if [ "$(id -u)" -ne 0 ]; then echo "sudo"; fi; }
SUDO=$(need_root)

codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")

# Packages: name=minimum-check command (checked with dpkg).
if [ "$mode" = lib ]; then
  PKGS_MAIN=()
  PKGS_BP=(clang-19 lld-19 llvm-19)
else
  PKGS_MAIN=(make python3 valgrind gnuplot-nox libgtest-dev libbenchmark-dev clang-format-19 clang-tidy-19
    util-linux xxd g++ device-tree-compiler)
  PKGS_BP=(clang-19 lld-19 llvm-19 libclang-rt-19-dev qemu-system-arm qemu-system-misc qemu-system-x86
    qemu-system-riscv opensbi qemu-system-data)
fi

missing=()
for p in ${PKGS_MAIN[@]+"${PKGS_MAIN[@]}"} "${PKGS_BP[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

qemu_ok() {
  [ "$mode" = lib ] && return 0 # make lib runs no emulator
  command -v qemu-system-aarch64 >/dev/null 2>&1 || return 1
  local v
  v=$(qemu-system-aarch64 --version | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -n1)
  [ -n "$v" ] && [ "$v" -ge 8 ]
}

if [ ${#missing[@]} -eq 0 ] && qemu_ok; then
  exit 0
fi

echo "setup: installing: ${missing[*]:-(qemu upgrade)}"

bp_list=/etc/apt/sources.list.d/project-backports.list
if [ "$codename" = "bookworm" ] && ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  # Reuse the first Debian (non-security) mirror URI configured on this machine.
  uri=""
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    uri=$(awk '/^URIs:/ {for (i = 2; i <= NF; i++) if ($i !~ /security/) {print $i; exit}}' "$f")
    [ -n "$uri" ] && break
  done
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file|ftp):/) {print $i; exit}}' /etc/apt/sources.list)
  fi
  if [ -z "$uri" ]; then
    echo "setup: no Debian mirror found in the apt sources; cannot enable bookworm-backports" >&2
    exit 1
  fi
  echo "deb $uri bookworm-backports main" | $SUDO tee "$bp_list" >/dev/null
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
main_missing=()
for p in ${PKGS_MAIN[@]+"${PKGS_MAIN[@]}"}; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || main_missing+=("$p")
done
if [ ${#main_missing[@]} -gt 0 ]; then
  $SUDO apt-get install -y -qq --no-install-recommends "${main_missing[@]}"
fi
if [ "$codename" = "bookworm" ]; then
  $SUDO apt-get install -y -qq --no-install-recommends -t bookworm-backports "${PKGS_BP[@]}"
else
  $SUDO apt-get install -y -qq --no-install-recommends "${PKGS_BP[@]}"
fi
qemu_ok || { echo "setup: QEMU 8 or newer is required" >&2; exit 1; }
