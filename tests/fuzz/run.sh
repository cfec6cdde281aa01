#!/usr/bin/env bash
# run.sh: builds devexd's libFuzzer targets (tests/fuzz/fuzz_*.c, clang with
# ASan + UBSan) and runs them.
#
#   tests/fuzz/run.sh [fuzz] [NAME...]   fuzz each target FUZZ_SECONDS (default 30)
#   tests/fuzz/run.sh replay [NAME...]   run the seed corpora and the regression
#                                        inputs once each (seconds in all)
#
# NAME is a target without "fuzz_" (json, router, ...); default: all of them.
# Environment: FUZZ_SECONDS; FUZZ_JOBS (targets fuzzed at once, default 1);
# FUZZ_BUILD_DIR (default build-fuzz); FUZZ_OUT (default $FUZZ_BUILD_DIR/out:
# out/<name>/corpus holds what a run found, out/<name>/crashes the crashing
# inputs, out/<name>.log the fuzzer's output); CC (default clang, else clang-14).
# Exits non-zero when the build fails, when clang or its libFuzzer runtime is
# missing, or when any target crashes, leaks, times out or trips a sanitizer.
# A crashing input goes to tests/fuzz/regressions/<name>/ once its bug is fixed.
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
SRC="$(cd "$HERE/../.." && pwd)"
mode=fuzz
case "${1:-}" in fuzz|replay) mode="$1"; shift ;; esac
SECONDS_EACH="${FUZZ_SECONDS:-30}"
BUILD="${FUZZ_BUILD_DIR:-$SRC/build-fuzz}"
OUT="${FUZZ_OUT:-$BUILD/out}"
JOBS="${FUZZ_JOBS:-1}"

die() { echo "fuzz: $*" >&2; exit 1; }

# clang and its libFuzzer runtime: missing means FAIL, not skip
CC="${CC:-}"
if [ -z "$CC" ] || ! "$CC" --version 2>/dev/null | grep -qi clang; then
  CC=""
  for c in clang clang-14; do command -v "$c" >/dev/null && { CC="$c"; break; }; done
fi
[ -n "$CC" ] || die "clang is not installed (Debian: apt-get install clang-14 libclang-rt-14-dev; scripts/deps.sh --test does it)"
echo 'int LLVMFuzzerTestOneInput(const char *d, long n) { return 0; }' >"/tmp/fuzz-probe-$$.c"
if ! "$CC" -fsanitize=fuzzer,address,undefined "/tmp/fuzz-probe-$$.c" -o "/tmp/fuzz-probe-$$" 2>"/tmp/fuzz-probe-$$.err"; then
  cat "/tmp/fuzz-probe-$$.err" >&2; rm -f /tmp/fuzz-probe-$$*
  die "$CC cannot link a libFuzzer target with ASan + UBSan (Debian: apt-get install libclang-rt-14-dev)"
fi
rm -f /tmp/fuzz-probe-$$*

# the targets
all=()
for f in "$HERE"/fuzz_*.c; do n="$(basename "$f" .c)"; all+=("${n#fuzz_}"); done
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=("${all[@]}")
for t in "${targets[@]}"; do [ -f "$HERE/fuzz_$t.c" ] || die "no target $t (targets: ${all[*]})"; done

echo "== building the fuzz targets with $CC in $BUILD =="
mkdir -p "$BUILD"
CC="$CC" cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDEVEX_FUZZ=ON >"$BUILD/configure.log" 2>&1 ||
  { cat "$BUILD/configure.log" >&2; die "cmake configure failed"; }
cmake --build "$BUILD" -j "${BUILD_JOBS:-$(nproc)}" --target $(printf 'fuzz_%s ' "${targets[@]}") >"$BUILD/build.log" 2>&1 ||
  { tail -50 "$BUILD/build.log" >&2; die "build failed"; }

# leaks count (LeakSanitizer); UBSan findings stop the run (-fno-sanitize-recover)
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:halt_on_error=1:allocator_may_return_null=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$SRC/tests/lsan.supp:print_suppressions=0}"
export DEVEXD_SOURCE_DIR="$SRC"

# the longest input per target (bytes)
max_len() {
  case "$1" in
    router|headers|env) echo 4096 ;;
    sigv4) echo 8192 ;;
    *) echo 65536 ;;
  esac
}

# seed corpus and regression inputs of a target, one path per line
inputs() {
  local d
  for d in "$HERE/corpus/$1" "$HERE/regressions/$1"; do
    [ -d "$d" ] && find "$d" -type f ! -name 'README*' | sort
  done
}

replay_one() {
  local t="$1" bin="$BUILD/fuzz_$1" files
  mapfile -t files < <(inputs "$t")
  if [ "${#files[@]}" -eq 0 ]; then echo "fuzz: $t: no seed or regression input" >&2; return 1; fi
  if "$bin" -runs=1 -timeout=10 -rss_limit_mb=2048 "${files[@]}" </dev/null >"$OUT/$t.replay.log" 2>&1; then
    printf '%-18s ok   %d inputs\n' "$t" "${#files[@]}"
  else
    printf '%-18s FAIL (%s)\n' "$t" "$OUT/$t.replay.log"
    tail -40 "$OUT/$t.replay.log" >&2
    return 1
  fi
}

fuzz_one() {
  local t="$1" bin="$BUILD/fuzz_$1" dict=() seeds=() d
  mkdir -p "$OUT/$t/corpus" "$OUT/$t/crashes"
  [ -f "$HERE/$t.dict" ] && dict=(-dict="$HERE/$t.dict")
  for d in "$HERE/corpus/$t" "$HERE/regressions/$t"; do [ -d "$d" ] && seeds+=("$d"); done
  # new inputs go to the first directory (out/), never into the tree
  "$bin" -max_total_time="$SECONDS_EACH" -max_len="$(max_len "$t")" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$OUT/$t/crashes/" "${dict[@]}" \
    "$OUT/$t/corpus" "${seeds[@]}" </dev/null >"$OUT/$t.log" 2>&1
  local rc=$? done execs cov ft crashes
  done_line="$(grep -E '^#[0-9]+[[:space:]]+DONE' "$OUT/$t.log" | tail -1)"
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$OUT/$t.log" | tail -1)"
  local eps="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$OUT/$t.log" | tail -1)"
  cov="$(echo "$done_line" | sed -n 's/.*cov: \([0-9]*\).*/\1/p')"
  ft="$(echo "$done_line" | sed -n 's/.*ft: \([0-9]*\).*/\1/p')"
  crashes="$(find "$OUT/$t/crashes" -type f | wc -l)"
  if [ "$rc" -eq 0 ] && [ "$crashes" -eq 0 ]; then
    printf '%-18s ok   %6ss  execs %10s  exec/s %7s  cov %6s  ft %6s  corpus %5s\n' "$t" "$SECONDS_EACH" \
      "${execs:-?}" "${eps:-?}" "${cov:-?}" "${ft:-?}" "$(ls "$OUT/$t/corpus" | wc -l)"
  else
    printf '%-18s FAIL rc %s, %s crashing input(s) in %s (log %s)\n' "$t" "$rc" "$crashes" "$OUT/$t/crashes" "$OUT/$t.log"
    grep -E 'ERROR: |SUMMARY: |runtime error|fuzz check failed' "$OUT/$t.log" | head -5 >&2
    return 1
  fi
}

mkdir -p "$OUT"
status=0
if [ "$mode" = replay ]; then
  echo "== replaying the seed corpora and regression inputs =="
  for t in "${targets[@]}"; do replay_one "$t" || status=1; done
else
  echo "== fuzzing ${#targets[@]} target(s), ${SECONDS_EACH}s each, $JOBS at a time (output in $OUT) =="
  # the regression inputs first: a fixed bug that is back fails fast
  for t in "${targets[@]}"; do replay_one "$t" || status=1; done
  running=0
  pids=()
  for t in "${targets[@]}"; do
    fuzz_one "$t" &
    pids+=($!)
    running=$((running + 1))
    if [ "$running" -ge "$JOBS" ]; then wait -n || status=1; running=$((running - 1)); fi
  done
  while [ "$running" -gt 0 ]; do wait -n || status=1; running=$((running - 1)); done
fi
[ "$status" -eq 0 ] && echo "fuzz: all passed" || echo "fuzz: FAILED" >&2
exit $status
