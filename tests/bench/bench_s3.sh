#!/usr/bin/env bash
# bench_s3.sh: a benchmark (not a test) of store:copy_prefix (lua/storage),
# the REPL-create path: copying a template of $OBJECTS objects to a fresh
# repl/<user>/<id>/ prefix, at concurrency $CONCURRENCY and at concurrency 1,
# in the same run, against the same S3 server (s3rver behind the
# SigV4-checking front of tests/s3/server, on loopback) and the same devexd.
#
# Each round copies the template once at each concurrency (the order
# alternates between rounds), checks that every object arrived (copied ==
# $OBJECTS, no failures), and deletes the copy. The time is measured inside
# devexd (devex.timer.now around copy_prefix: one listing plus $OBJECTS
# CopyObject requests). Prints the per-round times, the medians and the
# speed-up; writes tests/bench/results/s3.json.
#
# It builds nothing; it runs `npm ci` in tests/s3/server when node_modules is
# missing. Exit status: 0 when every measurement ran; numbers are not judged.
#
# Environment (defaults in brackets):
#   DEVEXD_BIN    devexd binary [build/devexd]
#   OBJECTS       objects in the template [200]
#   OBJECT_SIZE   bytes per object [2048]
#   CONCURRENCY   the concurrent run's concurrency [16]
#   ROUNDS        rounds [3]
#   RESULTS_DIR   where s3.json goes [tests/bench/results]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

export DEVEXD_BIN=${DEVEXD_BIN:-build/devexd}
export OBJECTS=${OBJECTS:-200} OBJECT_SIZE=${OBJECT_SIZE:-2048} CONCURRENCY=${CONCURRENCY:-16} ROUNDS=${ROUNDS:-3}
export RESULTS_DIR=${RESULTS_DIR:-tests/bench/results}
case "$DEVEXD_BIN" in /*) ;; *) DEVEXD_BIN="$root/$DEVEXD_BIN" ;; esac
[ -x "$DEVEXD_BIN" ] || { echo "bench_s3: $DEVEXD_BIN not found (build first)" >&2; exit 2; }
command -v node >/dev/null || { echo "bench_s3: node not found" >&2; exit 2; }
if [ ! -d tests/s3/server/node_modules/s3rver ]; then
  (cd tests/s3/server && npm ci --no-audit --no-fund)
fi
mkdir -p "$RESULTS_DIR"

python3 - <<'PY'
import json, os, statistics, sys
sys.path.insert(0, "tests/integration")
import harness, test_s3

n, size, conc, rounds = (int(os.environ[k]) for k in ("OBJECTS", "OBJECT_SIZE", "CONCURRENCY", "ROUNDS"))

def post(d, path, body):
    r = d.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"}, timeout=600)
    if r.status != 200:
        raise SystemExit("bench_s3: %s answered %d: %r" % (path, r.status, r.body[:300]))
    return r.json()

times = {conc: [], 1: []}
with test_s3.S3Server() as s3:
    with harness.Devexd(app="s3app", config={"s3": s3.conf(), "storage": {"driver": "s3"}},
                        server={"access_log": False}, max_body=1 << 20) as d:
        r = post(d, "/bulk_put", {"prefix": "templates/bench/file-", "n": n, "concurrency": 16, "body": "x" * size})
        if not r["ok"]:
            raise SystemExit("bench_s3: template upload failed: %r" % r["failures"][:3])
        for rnd in range(rounds):
            order = [conc, 1] if rnd % 2 == 0 else [1, conc]
            for c in order:
                dst = "repl/bench/r%d-c%d/" % (rnd, c)
                r = post(d, "/op", {"op": "copy_prefix", "args": ["templates/bench/", dst, {"concurrency": c}]})
                if not r["ok"] or r["result"]["copied"] != n or r["result"]["failures"]:
                    raise SystemExit("bench_s3: copy_prefix failed: %r" % (r,))
                times[c].append(r["elapsed"])
                print("round %d  concurrency %-3d %7.3f s  (%d objects)" % (rnd + 1, c, r["elapsed"], n), flush=True)
                r = post(d, "/op", {"op": "delete_prefix", "args": [dst]})
                if not r["ok"] or r["result"]["deleted"] != n:
                    raise SystemExit("bench_s3: delete_prefix failed: %r" % (r,))
        stats = s3.stats()
med = {c: statistics.median(v) for c, v in times.items()}
print("median: concurrency %d: %.3f s, concurrency 1: %.3f s, speed-up %.1fx"
      % (conc, med[conc], med[1], med[1] / med[conc]))
out = {"objects": n, "object_size": size, "rounds": rounds,
       "concurrency": {str(c): {"seconds": v, "median": med[c], "objects_per_s": n / med[c]} for c, v in times.items()},
       "speedup": med[1] / med[conc], "server_requests": stats["requests"], "rejected": stats["rejected"]}
with open(os.path.join(os.environ["RESULTS_DIR"], "s3.json"), "w") as f:
    json.dump(out, f, indent=2)
PY
