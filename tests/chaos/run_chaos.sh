#!/bin/sh
# tests/chaos/run_chaos.sh: the crash-injection loop of
# tests/integration/test_crash_injection.py with many runs (issue 17.4):
# random operations (create, start, stop, delete) under random faults
# (SIGKILL of devexd, SIGKILL + restart of Redis, an S3 outage) at random
# points, each followed by the sweep's repair and the invariant checks.
# Prints one line per run and the tally (runs per operation and fault, the
# injection points: where the REPL and its workload were when the fault hit).
#
#   RUNS=200 CHAOS_SEED=1 tests/chaos/run_chaos.sh [build dir]
#
# Needs what test_k8s_runtime.py needs (kube-apiserver, etcd, the
# controller manager) and the test S3 server (tests/s3/server).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-${DEVEXD_BUILD_DIR:-$root/build}}
export DEVEXD_BUILD_DIR="$build" DEVEXD_BIN="${DEVEXD_BIN:-$build/devexd}"
export RUNS="${RUNS:-200}" CHAOS_SEED="${CHAOS_SEED:-0}" CHAOS_VERBOSE=1
exec python3 "$root/tests/integration/test_crash_injection.py"
