#!/usr/bin/env bash
# test.sh: the whole test suite on a fresh Debian 12 machine: installs the
# dependencies, builds devexd twice (Release, what users build, and Debug with
# ASan + UBSan), and runs ctest on both. Every server a test needs
# (redis-server, upstream HTTP servers...) is started by the test itself on
# loopback and stopped after it.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh --test

# The Kubernetes control plane for the k8s tests (kube-apiserver and
# kube-controller-manager built from Debian's source package, cached outside
# the clone in /var/cache/devexd-k8s: minutes the first time, then instant).
# A failed build is not fatal here: the k8s tests then fail and say why.
if ! bash tests/k8s/build.sh >/dev/null; then
  echo "test.sh: tests/k8s/build.sh failed; the Kubernetes tests will fail" >&2
fi

JOBS="${JOBS:-$(nproc)}"
# ctest runs half again as many tests as there are cores: an integration test
# partly waits (on devexd, Redis, the API server, its own polls and sleeps);
# the Release tests other than fuzz_short used about 550 s of CPU for about
# 800 s of wall time, so one test per core left the cores partly idle. More
# would oversubscribe the CPU and slow the Kubernetes tests, which use most of
# a core each (README, "The two commands", has the measurements).
CTEST_JOBS="${CTEST_JOBS:-$((JOBS + (JOBS + 1) / 2))}"
status=0

build_and_test() {
  local dir="$1"; shift
  cmake -S . -B "$dir" "$@" >/dev/null
  cmake --build "$dir" -j "$JOBS" >"$dir.build.log" 2>&1 || { cat "$dir.build.log"; return 1; }
  (cd "$dir" && ctest --output-on-failure -j "$CTEST_JOBS" --timeout 600) || return 1
}

echo "== Release build =="
build_and_test build -DCMAKE_BUILD_TYPE=Release -DDEVEX_FUZZ_TEST=ON || status=1 # + tests/fuzz, once

if [ "${SKIP_SANITIZE:-0}" != "1" ]; then
  echo "== ASan + UBSan build =="
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1"
  export LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp:print_suppressions=0"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
  build_and_test build-asan -DCMAKE_BUILD_TYPE=Debug -DDEVEX_SANITIZE=ON || status=1
fi

exit $status
