#!/usr/bin/env bash
# Runs each libFuzzer target for a fixed time: `make fuzz` and `make fuzz-smoke`.
#   run_fuzz.sh [--fresh] <fuzz build dir> <seconds per target> <target>...
# Each target starts from its seeds in tests/fuzz/corpus/<target> (never written) plus what earlier
# runs learnt in <dir>/corpus/<target>; with --fresh (the smoke) from the seeds alone, so that its
# run time does not grow with that corpus. Crash artifacts go to <dir>/artifacts/<target>/, the log
# to <dir>/logs/<target>.log. Ends with "N passed, N failed", counting targets; exits non-zero if
# any target failed.
set -uo pipefail

fresh=0
if [ "${1:-}" = "--fresh" ]; then
  fresh=1
  shift
fi
dir=$1
secs=$2
shift 2

pass=0
fail=0
for t in "$@"; do
  bin="$dir/bin/$t"
  corpus="$dir/corpus/$t"
  if [ "$fresh" -eq 1 ]; then
    corpus="$dir/smoke-corpus/$t"
    rm -rf "$corpus"
  fi
  artifacts="$dir/artifacts/$t"
  seeds="tests/fuzz/corpus/$t"
  log="$dir/logs/$t.log"
  mkdir -p "$corpus" "$artifacts" "$dir/logs"
  dirs=("$corpus")
  [ -d "$seeds" ] && dirs+=("$seeds")
  # One process, no forking: the machine is shared. -timeout: a single input running longer than
  # that is a hang and counts as a failure.
  "$bin" -max_total_time="$secs" -timeout=20 -rss_limit_mb=4096 -max_len=4096 \
    -print_final_stats=1 -artifact_prefix="$artifacts/" "${dirs[@]}" >"$log" 2>&1
  rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1)
  if [ "$rc" -eq 0 ]; then
    echo "$t: ok, ${runs:-?} inputs in ${secs}s (${cov:-cov: ?})"
    pass=$((pass + 1))
  else
    echo "$t: FAILED (exit $rc); log $log, artifacts $artifacts/"
    grep -E 'FUZZ FAILURE|PANIC|ERROR: |SUMMARY: |runtime error|Test unit written' "$log" | head -n 8
    fail=$((fail + 1))
  fi
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
