#!/usr/bin/env bash
# bench_s3.sh: a benchmark (not a test) of store:copy_prefix (lua/storage),
# the REPL-create path: copying a template of $OBJECTS objects to a fresh
# repl/<user>/<id>/ prefix, at concurrency $CONCURRENCY and at concurrency 1,
# in the same run, against the same S3 server (s3rver behind the
# SigV4-checking front of tests/s3/server, on loopback) and the same devexd.
#
# It measures twice, in this order, with the same server and devexd:
#   (a) latency 0: the front answers as fast as it can (loopback, no delay);
#   (b) latency $LATENCY_MS ms, EMULATED: the front holds each S3 request
#       $LATENCY_MS ms on a timer before answering (POST /__front/latency),
#       standing in for the network round trip and S3's own queueing, which
#       loopback does not have. That waiting, which costs no CPU, is what
#       concurrency overlaps against real S3/R2 (tens of ms per CopyObject).
# (b) is skipped when LATENCY_MS=0.
#
# Each round copies the template once at each concurrency (the order
# alternates between rounds), checks that every object arrived (copied ==
# $OBJECTS, no failures), and deletes the copy. The time is measured inside
# devexd (devex.timer.now around copy_prefix: one listing plus $OBJECTS
# CopyObject requests). Around each copy it also reads, from /proc, the CPU
# time of the S3 server (node) process, of devexd and of the whole machine,
# and for node's main thread (the event loop that verifies the signatures
# and runs s3rver) both its time on a CPU and its time waiting in the run
# queue for one (/proc/PID/task/PID/schedstat); all are printed as a share of
# the copy's wall time (100% = one CPU all along). Event loop "run + queue"
# near 100% means the loop never waited for work: the server is CPU-bound,
# and the queue share is what other processes on the machine took from it.
# Prints the per-round figures, the medians and the speed-ups of both
# settings; writes tests/bench/results/s3.json.
#
# It builds nothing; it runs `npm ci` in tests/s3/server when node_modules is
# missing. Exit status: 0 when every measurement ran; numbers are not judged.
#
# Environment (defaults in brackets):
#   DEVEXD_BIN    devexd binary [build/devexd]
#   OBJECTS       objects in the template [200]
#   OBJECT_SIZE   bytes per object [2048]
#   CONCURRENCY   the concurrent run's concurrency [16]
#   ROUNDS        rounds per latency setting [3]
#   LATENCY_MS    the emulated per-request latency of (b), in ms; 0 skips (b) [20]
#   RESULTS_DIR   where s3.json goes [tests/bench/results]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

export DEVEXD_BIN=${DEVEXD_BIN:-build/devexd}
export OBJECTS=${OBJECTS:-200} OBJECT_SIZE=${OBJECT_SIZE:-2048} CONCURRENCY=${CONCURRENCY:-16} ROUNDS=${ROUNDS:-3}
export LATENCY_MS=${LATENCY_MS:-20}
export RESULTS_DIR=${RESULTS_DIR:-tests/bench/results}
case "$DEVEXD_BIN" in /*) ;; *) DEVEXD_BIN="$root/$DEVEXD_BIN" ;; esac
[ -x "$DEVEXD_BIN" ] || { echo "bench_s3: $DEVEXD_BIN not found (build first)" >&2; exit 2; }
command -v node >/dev/null || { echo "bench_s3: node not found" >&2; exit 2; }
[ -r /proc/self/stat ] || { echo "bench_s3: /proc is needed for the CPU figures" >&2; exit 2; }
if [ ! -d tests/s3/server/node_modules/s3rver ]; then
  (cd tests/s3/server && npm ci --no-audit --no-fund)
fi
mkdir -p "$RESULTS_DIR"

python3 - <<'PY'
import json, os, statistics, sys, time, urllib.request
sys.path.insert(0, "tests/integration")
import harness, test_s3

n, size, conc, rounds = (int(os.environ[k]) for k in ("OBJECTS", "OBJECT_SIZE", "CONCURRENCY", "ROUNDS"))
latency = float(os.environ["LATENCY_MS"])
if latency < 0:
    raise SystemExit("bench_s3: LATENCY_MS must be >= 0")
latencies = [0.0] + ([latency] if latency > 0 else [])
TICK = float(os.sysconf("SC_CLK_TCK"))
NCPU = os.cpu_count()

def cpu_s(path):
    """utime + stime in seconds from a /proc/.../stat file (fields 14, 15)."""
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK

def sched_s(path):
    """(seconds on a CPU, seconds waiting in the run queue) from a schedstat file."""
    with open(path) as f:
        run, wait = f.read().split()[:2]
    return int(run) / 1e9, int(wait) / 1e9

def machine_busy_s():
    """CPU seconds all CPUs spent not idle (not idle, not iowait), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / TICK

def post(d, path, body):
    r = d.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"}, timeout=600)
    if r.status != 200:
        raise SystemExit("bench_s3: %s answered %d: %r" % (path, r.status, r.body[:300]))
    return r.json()

def front(s3, path, method="GET"):
    with urllib.request.urlopen(urllib.request.Request(s3.endpoint + path, method=method), timeout=10) as r:
        b = r.read()
        return json.loads(b) if b else None

print("bench_s3: %d objects of %d bytes, concurrency %d vs 1, %d rounds per setting; (a) no added latency%s"
      % (n, size, conc, rounds, ", (b) %g ms EMULATED per request (loopback has none; real S3 does)" % latency
         if latency > 0 else ""), flush=True)
res = {}
with test_s3.S3Server() as s3:
    node_pid = s3.proc.pid
    probes = {"node": "/proc/%d/stat" % node_pid}
    loop_sched = "/proc/%d/task/%d/schedstat" % (node_pid, node_pid)
    with harness.Devexd(app="s3app", config={"s3": s3.conf(), "storage": {"driver": "s3"}},
                        server={"access_log": False}, max_body=1 << 20) as d:
        probes["devexd"] = "/proc/%d/stat" % d.proc.pid
        front(s3, "/__front/latency?ms=0", "POST")
        r = post(d, "/bulk_put", {"prefix": "templates/bench/file-", "n": n, "concurrency": 16, "body": "x" * size})
        if not r["ok"]:
            raise SystemExit("bench_s3: template upload failed: %r" % r["failures"][:3])
        for lat in latencies:
            front(s3, "/__front/latency?ms=%g" % lat, "POST")
            label = "latency %g ms%s" % (lat, " (emulated)" if lat > 0 else "")
            print("-- %s" % label, flush=True)
            runs = {conc: [], 1: []}
            for rnd in range(rounds):
                order = [conc, 1] if rnd % 2 == 0 else [1, conc]
                for c in order:
                    dst = "repl/bench/l%g-r%d-c%d/" % (lat, rnd, c)
                    before = {k: cpu_s(p) for k, p in probes.items()}
                    (run0, wait0), busy0, w0 = sched_s(loop_sched), machine_busy_s(), time.monotonic()
                    r = post(d, "/op", {"op": "copy_prefix", "args": ["templates/bench/", dst, {"concurrency": c}]})
                    wall = time.monotonic() - w0
                    node_cpu_s = cpu_s(probes["node"]) - before["node"]
                    cpu = {k: 100.0 * (cpu_s(p) - before[k]) / wall for k, p in probes.items()}
                    cpu["machine"] = 100.0 * (machine_busy_s() - busy0) / wall
                    run1, wait1 = sched_s(loop_sched)
                    cpu["node_loop_run"] = 100.0 * (run1 - run0) / wall
                    cpu["node_loop_queue"] = 100.0 * (wait1 - wait0) / wall
                    if not r["ok"] or r["result"]["copied"] != n or r["result"]["failures"]:
                        raise SystemExit("bench_s3: copy_prefix failed: %r" % (r,))
                    runs[c].append({"seconds": r["elapsed"], "cpu_percent": cpu,
                                    "node_cpu_ms_per_object": 1000.0 * node_cpu_s / n})
                    print("round %d  concurrency %-3d %7.3f s  (%d objects)  %%: node loop run %3.0f + queue %3.0f,"
                          " node CPU %3.0f (%.1f ms/object), devexd CPU %3.0f, machine CPU %3.0f of %d"
                          % (rnd + 1, c, r["elapsed"], n, cpu["node_loop_run"], cpu["node_loop_queue"], cpu["node"],
                             1000.0 * node_cpu_s / n, cpu["devexd"], cpu["machine"], 100 * NCPU), flush=True)
                    r = post(d, "/op", {"op": "delete_prefix", "args": [dst]})
                    if not r["ok"] or r["result"]["deleted"] != n:
                        raise SystemExit("bench_s3: delete_prefix failed: %r" % (r,))
            entry = {"latency_ms": lat, "emulated": lat > 0, "concurrency": {}}
            for c, v in runs.items():
                med = statistics.median(x["seconds"] for x in v)
                entry["concurrency"][str(c)] = {
                    "seconds": [x["seconds"] for x in v], "median": med, "objects_per_s": n / med,
                    "cpu_percent_median": {k: statistics.median(x["cpu_percent"][k] for x in v)
                                           for k in v[0]["cpu_percent"]},
                    "node_cpu_ms_per_object_median": statistics.median(x["node_cpu_ms_per_object"] for x in v),
                    "rounds": v}
            entry["speedup"] = entry["concurrency"]["1"]["median"] / entry["concurrency"][str(conc)]["median"]
            res["%g" % lat] = entry
        front(s3, "/__front/latency?ms=0", "POST")
        stats = s3.stats()

print()
print("| added latency per request | concurrency | median s (rounds) | objects/s | speed-up | node loop run + queue %% | node CPU %% | node CPU ms/object | devexd CPU %% | machine CPU %% (of %d) |" % (100 * NCPU))
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for key, e in res.items():
    lat = "none" if e["latency_ms"] == 0 else "%g ms (emulated)" % e["latency_ms"]
    for c in (conc, 1):
        x = e["concurrency"][str(c)]
        p = x["cpu_percent_median"]
        print("| %s | %d | %.3f (%s) | %.0f | %s | %.0f + %.0f | %.0f | %.1f | %.0f | %.0f |"
              % (lat, c, x["median"], ", ".join("%.3f" % s for s in x["seconds"]), x["objects_per_s"],
                 "%.1fx" % e["speedup"] if c == conc else "", p["node_loop_run"], p["node_loop_queue"],
                 p["node"], x["node_cpu_ms_per_object_median"], p["devexd"], p["machine"]))
for key, e in res.items():
    print("median, %s: concurrency %d: %.3f s, concurrency 1: %.3f s, speed-up %.1fx"
          % ("no added latency" if e["latency_ms"] == 0 else "%g ms emulated latency" % e["latency_ms"],
             conc, e["concurrency"][str(conc)]["median"], e["concurrency"]["1"]["median"], e["speedup"]))
out = {"objects": n, "object_size": size, "rounds": rounds, "cpus": NCPU, "concurrent": conc,
       "cpu_percent_note": "time during each copy_prefix call / its wall time, 100 = one CPU: node and devexd"
                           " CPU (utime+stime), machine busy CPU, node main thread (event loop) time on a CPU"
                           " (node_loop_run) and waiting in the run queue (node_loop_queue)",
       "latency": res, "server_requests": stats["requests"], "rejected": stats["rejected"]}
with open(os.path.join(os.environ["RESULTS_DIR"], "s3.json"), "w") as f:
    json.dump(out, f, indent=2)
PY
