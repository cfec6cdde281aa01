#!/usr/bin/env python3
"""From a Kubernetes pod update to the event at the client (issue #18,
performance): the latency between this script writing a pod's status on the
real API server (tests/integration/k8s_harness.py, run without the simulated
kubelet so that nothing else writes it) and the matching phase arriving on a
client's session event stream (GET /api/repl/session/<id>/events, SSE over
HTTP/1.1), through devexd's shared pod watch, the REPL's Redis stream and the
worker's hub. Per round a REPL is started and its pod is moved by hand:
scheduled with its container waiting (`pulling`), the container running
(`starting`), then Ready (`ready`: this one also includes devexd recording
the session). p50/p99 per phase over ROUNDS rounds.

A benchmark, not a test: numbers are printed and written to
tests/bench/results/events_k8s.json, not judged.

Usage: DEVEXD_BIN=build/devexd python3 tests/bench/bench_events_k8s.py
Knobs (environment): ROUNDS (20).
"""
import json
import os
import socket
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import harness  # noqa: E402
import k8s_harness  # noqa: E402
from harness import Devexd, RedisServer  # noqa: E402
from fakes.github_fake import GitHubFake  # noqa: E402
from test_k8s_runtime import cluster_config  # noqa: E402
import test_repl  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", "20"))
NS = "events-latency"
JSON = {"Content-Type": "application/json"}


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q * len(xs) + 0.5)) - 1))]


class Ctx(unittest.TestCase):
    """what test_repl.ReplTest.login needs of a test case"""

    def runTest(self):
        pass


class Stream:
    """An SSE client that stamps each event with the time it arrived."""

    def __init__(self, port, path, cookie):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(("GET %s HTTP/1.1\r\nHost: localhost\r\nCookie: %s\r\nAccept: text/event-stream\r\n\r\n"
                           % (path, cookie)).encode())
        self.got = []  # (event, monotonic time)
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        buf = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            now = time.monotonic()
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.startswith(b"event: "):
                    with self.cond:
                        self.got.append((line[7:].strip().decode(), now))
                        self.cond.notify_all()

    def wait(self, event, timeout=30):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for ev, t in self.got:
                    if ev == event:
                        return t
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("no %s event (got %r)" % (event, [e for e, _ in self.got]))
                self.cond.wait(left)

    def close(self):
        self.sock.close()


def main():
    c = Ctx()
    c.tmp = tempfile.mkdtemp(prefix="devexd-bench-evk8s-")
    c.store_dir = os.path.join(c.tmp, "bucket")
    os.mkdir(c.store_dir)
    policy = os.path.join(c.tmp, "policy.lua")
    with open(policy, "w") as f:
        f.write("return { quota = { repls_per_user = %d, sessions_per_user = %d },\n"
                "  limits = { create = false, start = false } }\n" % (ROUNDS + 5, ROUNDS + 5))
    lat = {"pulling": [], "starting": [], "ready": []}
    with k8s_harness.KubeCluster(kubelet=False) as kc:
        kc.create_namespace(NS)
        kubeconfig = kc.write_kubeconfig(os.path.join(c.tmp, "kubeconfig"))
        with RedisServer() as redis, GitHubFake() as gh:
            c.redis, c.gh = redis, gh
            conf = cluster_config(c, kubeconfig, NS)
            conf["policy"] = {"file": policy}
            with Devexd(app=None, threads=int(os.environ.get("THREADS", "2")), config=conf) as d:
                c.d = d
                d.sync_templates()
                b = test_repl.ReplTest.login(c, "latency", 9090)
                api = kc.api
                for i in range(ROUNDS):
                    r = b.request("POST", "/api/repl/new", headers=JSON,
                                  body=json.dumps({"template": "node", "replName": "l%d" % i}))
                    assert r.status == 201, r.body
                    rid = r.json()["id"]
                    s = Stream(d.port, "/api/repl/session/%s/events" % rid, b.cookie_header())
                    res = {}
                    t = threading.Thread(target=lambda: res.update(r=d.request(
                        "GET", "/api/repl/session/" + rid, headers={"Cookie": b.cookie_header()}, timeout=120)))
                    t.start()
                    sel = {"labelSelector": "devex.io/repl=" + rid}
                    pods = harness.poll(lambda: api.get(k8s_harness.api_path("v1", "pods", NS), sel)["items"],
                                        "the pod", timeout=60)
                    pod = pods[0]
                    name = pod["metadata"]["name"]
                    cont = pod["spec"]["containers"][0]
                    status_path = k8s_harness.api_path("v1", "pods", NS, name, "status")
                    s.wait("scheduling")
                    base = {"name": cont["name"], "image": cont["image"], "imageID": "", "restartCount": 0}
                    steps = [
                        ("pulling", {"phase": "Pending",
                                     "conditions": [{"type": "PodScheduled", "status": "True"}],
                                     "containerStatuses": [dict(base, ready=False,
                                                                state={"waiting": {"reason": "ContainerCreating"}})]}),
                        ("starting", {"phase": "Running", "podIP": "10.244.0.%d" % (10 + i),
                                      "conditions": [{"type": "PodScheduled", "status": "True"},
                                                     {"type": "Ready", "status": "False"}],
                                      "containerStatuses": [dict(base, ready=False, started=True,
                                                                 state={"running": {"startedAt": "2026-01-01T00:00:00Z"}})]}),
                        ("ready", {"phase": "Running", "podIP": "10.244.0.%d" % (10 + i),
                                   "conditions": [{"type": "PodScheduled", "status": "True"},
                                                  {"type": "Ready", "status": "True"}],
                                   "containerStatuses": [dict(base, ready=True, started=True,
                                                              state={"running": {"startedAt": "2026-01-01T00:00:00Z"}})]}),
                    ]
                    for phase, status in steps:
                        t0 = time.monotonic()
                        api.patch(status_path, {"status": status}, patch_type="merge")
                        t1 = s.wait(phase)
                        lat[phase].append(t1 - t0)
                    t.join(60)
                    assert res["r"].status == 200, res["r"].body
                    s.close()
    out = {"rounds": ROUNDS}
    for phase, xs in lat.items():
        out[phase] = {"p50_ms": round(pct(xs, 0.5) * 1000, 1), "p99_ms": round(pct(xs, 0.99) * 1000, 1)}
    print(json.dumps(out))
    res_dir = os.environ.get("RESULTS_DIR") or os.path.join(HERE, "results")
    os.makedirs(res_dir, exist_ok=True)
    with open(os.path.join(res_dir, "events_k8s.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
