#!/usr/bin/env python3
"""start_latency.py: the time from GET /api/repl/session/<id> to its answer
when the pod becomes Ready at once, over many starts made N at a time
(bench_repl.sh, part 2). A benchmark helper, not a test.

It starts, on loopback, a KubeCluster (tests/integration/k8s_harness.py:
etcd, kube-apiserver 1.20, kube-controller-manager and the simulated
kubelet, which makes every pod Ready as soon as it sees it), a fresh
redis-server and devexd (the shipped app, runtime "kubernetes", fs storage
with the shipped templates synced, dev sign-in, a policy file raising the
quotas to STARTS). It creates STARTS REPLs first, then starts them from
CONCURRENCY client threads (each its own keep-alive connection), timing each
request with time.monotonic(), checks every answer is 200 with the REPL's id,
stops every session (DELETE /api/repl/session/<id>, CONCURRENCY at a time)
and checks that no Deployment is left. Prints a JSON object on stdout.

Usage: start_latency.py [--starts 100] [--concurrency 20] [--threads 2]
                        [--kubelet-poll 0.2] [--warmup 5]
Environment: DEVEXD_BIN (as the integration tests), DEVEXD_K8S_BIN_DIR...
"""

import argparse
import http.client
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import harness  # noqa: E402
from harness import Devexd, RedisServer  # noqa: E402
import k8s_harness  # noqa: E402

NS = "bench"


def log(msg):
    sys.stderr.write("start_latency: %s\n" % msg)
    sys.stderr.flush()


def percentile(sorted_values, p):
    """Nearest-rank percentile (p in 0..100) of a sorted list."""
    if not sorted_values:
        return None
    k = max(1, int(-(-p * len(sorted_values) // 100)))  # ceil(p*n/100)
    return sorted_values[min(k, len(sorted_values)) - 1]


class Conn:
    """One keep-alive HTTP/1.1 connection to devexd with the session cookie."""

    def __init__(self, port, cookie):
        self.port, self.cookie = port, cookie
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)

    def request(self, method, path, body=None):
        h = {"Cookie": self.cookie}
        if method != "GET":  # the CSRF check wants a JSON Content-Type (or an allowed Origin)
            h["Content-Type"] = "application/json"
        for attempt in (0, 1):
            try:
                self.c.request(method, path, body=body, headers=h)
                r = self.c.getresponse()
                return r.status, r.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.c.close()
                self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
                if attempt:
                    raise

    def close(self):
        self.c.close()


def run_pool(ids, concurrency, fn):
    """Runs fn(conn, id) for every id from `concurrency` threads; returns the results in id order."""
    q = queue.Queue()
    for i, rid in enumerate(ids):
        q.put((i, rid))
    out = [None] * len(ids)
    errors = []

    def worker():
        conn = fn.conn_factory()
        try:
            while True:
                try:
                    i, rid = q.get_nowait()
                except queue.Empty:
                    return
                out[i] = fn(conn, rid)
        except BaseException as e:  # reported after the join
            errors.append(e)
        finally:
            conn.close()

    ts = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise SystemExit("start_latency: %s failed: %r" % (fn.__name__, errors[0]))
    return out, time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--starts", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kubelet-poll", type=float, default=0.2)
    ap.add_argument("--warmup", type=int, default=5)
    a = ap.parse_args()
    total = a.starts + a.warmup
    tmp = tempfile.mkdtemp(prefix="bench-repl-start-")
    store_dir = os.path.join(tmp, "bucket")
    os.mkdir(store_dir)
    policy = os.path.join(tmp, "policy.lua")
    with open(policy, "w") as f:
        f.write("return { quota = { repls_per_user = %d, sessions_per_user = %d },"
                " cleanup = { sweep_interval = 3600 } }\n" % (total, total))
    t_setup = time.monotonic()
    with k8s_harness.KubeCluster(poll_interval=a.kubelet_poll) as kc, RedisServer() as redis:
        kc.create_namespace(NS)
        kubeconfig = kc.write_kubeconfig(os.path.join(tmp, "kubeconfig"), namespace=NS)
        conf = {
            "environment": "development", "frontend_url": "http://localhost:3000",
            "redis": {"url": redis.url(), "timeout": 5}, "dev_login": {"enabled": True},
            "storage": {"driver": "fs", "dir": store_dir}, "runtime": {"driver": "kubernetes"},
            "kube": {"config_path": kubeconfig, "namespace": NS},
            "runner": {"cluster_ip": "runners.example.test"}, "policy": {"file": policy},
        }
        with Devexd(app=None, threads=a.threads, config=conf, server={"access_log": False}) as d:
            p = subprocess.run([harness.DEVEXD_BIN, "-c", d.conf_path, "-L", harness.LUA_DIR, "templates", "sync",
                                os.path.join(harness.SOURCE_DIR, "templates")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
            if p.returncode != 0:
                raise SystemExit("templates sync failed: " + p.stderr)
            r = d.request("POST", "/auth/dev/login", headers={"Content-Type": "application/json"},
                          body=json.dumps({"user": "bench"}))
            assert r.status == 302, r
            cookie = r.header("Set-Cookie").split(";")[0]
            conn_factory = lambda: Conn(d.port, cookie)  # noqa: E731

            def create(conn, i):
                st, body = conn.request("POST", "/api/repl/new",
                                        json.dumps({"template": "node", "replName": "bench %d" % i}))
                assert st == 201, (st, body)
                return json.loads(body)["id"]
            create.conn_factory = conn_factory
            ids, _ = run_pool(list(range(total)), a.concurrency, create)
            log("created %d REPLs (setup %.1f s)" % (len(ids), time.monotonic() - t_setup))

            def start(conn, rid):
                t0 = time.monotonic()
                st, body = conn.request("GET", "/api/repl/session/" + rid)
                dt = time.monotonic() - t0
                assert st == 200 and json.loads(body)["replId"] == rid, (st, body)
                return dt
            start.conn_factory = conn_factory

            def stop(conn, rid):
                st, body = conn.request("DELETE", "/api/repl/session/" + rid)
                assert st == 200, (st, body)
            stop.conn_factory = conn_factory

            warm, starts = ids[:a.warmup], ids[a.warmup:]
            if warm:
                run_pool(warm, min(a.concurrency, len(warm)), start)
                run_pool(warm, min(a.concurrency, len(warm)), stop)
            log("starting %d sessions, %d at a time" % (len(starts), a.concurrency))
            times, wall = run_pool(starts, a.concurrency, start)
            running = int(redis.call("ZCARD", "devex:sessions:activity"))
            _, stop_wall = run_pool(starts, a.concurrency, stop)
            def deployments():
                return [(o["metadata"]["name"], o["metadata"].get("deletionTimestamp"),
                         o["metadata"].get("finalizers"))
                        for o in kc.api.get(k8s_harness.api_path("apps/v1", "deployments", NS))["items"]]
            deadline = time.monotonic() + 120
            while deployments() and time.monotonic() < deadline:
                time.sleep(0.2)
            left = deployments()
            if left:
                log("Deployments left after the stops: %r" % left[:5])
            states = {}
            for rid in ids:
                s = redis.call("HGET", "devex:replMeta:" + rid, "state").decode()
                states[s] = states.get(s, 0) + 1
            ms = sorted(t * 1000 for t in times)
            result = {
                "starts": len(ms), "concurrency": a.concurrency, "warmup_starts": len(warm),
                "devexd_threads": a.threads, "kubelet_poll_s": a.kubelet_poll,
                "median_ms": round(statistics.median(ms), 1), "p90_ms": round(percentile(ms, 90), 1),
                "p99_ms": round(percentile(ms, 99), 1), "min_ms": round(ms[0], 1), "max_ms": round(ms[-1], 1),
                "mean_ms": round(statistics.mean(ms), 1), "wall_s": round(wall, 2),
                "starts_per_s": round(len(ms) / wall, 1), "sessions_running_after_starts": running,
                "stop_wall_s": round(stop_wall, 2), "states_after_stop": states,
                "deployments_left": len(left),
            }
            print(json.dumps(result))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
