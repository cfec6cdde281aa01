#!/usr/bin/env bash
# bench_k8s.sh: a benchmark (not a test) of the Kubernetes client (lua/k8s)
# on the REPL-start path: the four objects of a REPL session (Deployment,
# Service, Ingress, Traefik Middleware) created concurrently (tasks.map, so
# the four requests are multiplexed over the worker's one HTTP/2 connection
# to the API server) and one after the other, in the same run, against the
# same kube-apiserver (tests/integration/k8s_harness.py) and the same devexd.
#
# A warm-up round fills the discovery cache and opens the connection first.
# Each round creates the four objects with unique names in each mode (the
# order alternates between rounds), checks that all four were created, and
# deletes them. The time is measured inside devexd (devex.timer.now around
# the creates). Prints the per-round times, the medians and the speed-up;
# writes tests/bench/results/k8s.json.
#
# It builds nothing. Exit status: 0 when every measurement ran; numbers are
# not judged.
#
# Environment (defaults in brackets):
#   DEVEXD_BIN    devexd binary [build/devexd]
#   ROUNDS        rounds [10]
#   RESULTS_DIR   where k8s.json goes [tests/bench/results]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

export DEVEXD_BIN=${DEVEXD_BIN:-build/devexd}
export ROUNDS=${ROUNDS:-10}
export RESULTS_DIR=${RESULTS_DIR:-tests/bench/results}
case "$DEVEXD_BIN" in /*) ;; *) DEVEXD_BIN="$root/$DEVEXD_BIN" ;; esac
[ -x "$DEVEXD_BIN" ] || { echo "bench_k8s: $DEVEXD_BIN not found (build first)" >&2; exit 2; }
[ -f tests/integration/k8s_harness.py ] || { echo "bench_k8s: tests/integration/k8s_harness.py not found" >&2; exit 2; }
mkdir -p "$RESULTS_DIR"

python3 - <<'PY'
import json, os, statistics, sys
sys.path.insert(0, "tests/integration")
import harness, k8s_harness, test_k8s

rounds = int(os.environ["ROUNDS"])
NS = "devex-bench"

def post(d, path, body):
    r = d.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"}, timeout=600)
    if r.status != 200:
        raise SystemExit("bench_k8s: %s answered %d: %r" % (path, r.status, r.body[:300]))
    return r.json()

times = {"concurrent": [], "serial": []}
with k8s_harness.KubeCluster() as cluster:
    conf = {"server": cluster.server, "ca_file": cluster.ca_file, "token": cluster.admin_token, "namespace": NS}
    with harness.Devexd(app="k8sapp", server={"access_log": False}, max_body=1 << 20, threads=1) as d:
        r = post(d, "/op", {"conf": conf, "op": "create", "args": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}]})
        if not r["ok"] and r["err"]["code"] != "AlreadyExists":
            raise SystemExit("bench_k8s: cannot create the namespace: %r" % r)
        v = post(d, "/conns", {"conf": conf, "n": 4})["versions"]
        print("HTTP versions of 4 concurrent requests: %s" % v)
        n = 0

        def run(mode):
            global n
            n += 1
            objs = test_k8s.session_objects(NS, "bench-%s-%d" % (mode[0], n))
            r = post(d, "/batch", {"conf": conf, "objects": objs, "mode": mode, "verb": "create"})
            if not r["ok"]:
                raise SystemExit("bench_k8s: %s create failed: %r" % (mode, r["failures"]))
            dr = post(d, "/batch", {"conf": conf, "objects": objs, "mode": "concurrent", "verb": "delete"})
            if not dr["ok"]:
                raise SystemExit("bench_k8s: delete failed: %r" % dr["failures"])
            return r["elapsed"]

        run("concurrent")  # warm-up: discovery cache, connection
        run("serial")
        for i in range(rounds):
            order = ("concurrent", "serial") if i % 2 == 0 else ("serial", "concurrent")
            for mode in order:
                times[mode].append(run(mode))
            print("round %d: concurrent %.1f ms, one after the other %.1f ms"
                  % (i + 1, times["concurrent"][-1] * 1000, times["serial"][-1] * 1000))

mc, ms = statistics.median(times["concurrent"]), statistics.median(times["serial"])
print("median over %d rounds: 4 objects concurrently over one HTTP/2 connection %.1f ms, "
      "one after the other %.1f ms, speed-up x%.2f" % (rounds, mc * 1000, ms * 1000, ms / mc))
out = os.path.join(os.environ["RESULTS_DIR"], "k8s.json")
with open(out, "w") as f:
    json.dump({"rounds": rounds, "objects": 4, "concurrent_s": times["concurrent"], "serial_s": times["serial"],
               "median_concurrent_s": mc, "median_serial_s": ms, "http_versions": v}, f, indent=2)
print("wrote " + out)
PY
