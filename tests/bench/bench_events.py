#!/usr/bin/env python3
"""Session event streams at scale (issue #18): STREAMS open SSE streams
(GET /api/repl/session/<id>/events) spread over REPLS REPLs on one devexd
with 2 workers, then:

- memory per stream: devexd's RSS with the streams open minus before, / STREAMS;
- CPU at idle: devexd's user+system CPU over IDLE seconds with every stream
  open and nothing happening (the workers' 0.25 s reads, the 15 s keepalives);
- latency: an event appended to a REPL's Redis stream (as another replica's
  start would) until each of that REPL's watchers has it, p50/p99 over ROUNDS
  events. This is the cross-worker path (the reader's 0.25 s poll); an event
  emitted by the worker a watcher is on is handed over at once.

Usage: DEVEXD_BIN=build/devexd python3 tests/bench/bench_events.py
Knobs (environment): STREAMS (1000), REPLS (50), IDLE (10), ROUNDS (40).
"""

import json
import os
import random
import select
import socket
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import harness  # noqa: E402
from harness import Devexd, RedisServer, rss_kb  # noqa: E402
from test_auth import Browser  # noqa: E402

STREAMS = int(os.environ.get("STREAMS", "1000"))
REPLS = int(os.environ.get("REPLS", "50"))
IDLE = float(os.environ.get("IDLE", "10"))
ROUNDS = int(os.environ.get("ROUNDS", "40"))
DEV_CONF = os.path.join(harness.SOURCE_DIR, "etc", "devexd.dev.conf.lua")
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
JSON = {"Content-Type": "application/json"}


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q * len(xs) + 0.5)) - 1))]


def main():
    tmp = tempfile.mkdtemp(prefix="devexd-bench-events-")
    policy = os.path.join(tmp, "policy.lua")
    users = (REPLS + 9) // 10
    with open(policy, "w") as f:
        f.write("return { quota = { repls_per_user = 20 } }\n")
    with RedisServer() as redis:
        conf = ('local c = dofile(%s)\n'
                'c.server.listen = { { host = "127.0.0.1", port = @PORT@ } }\n'
                'c.public_url = "http://localhost:@PORT@"\n'
                'c.policy = { file = %s }\n'
                'c.server.access_log = false\n'
                'return c\n') % (json.dumps(DEV_CONF), json.dumps(policy))
        env = {"DEVEXD_DATA": os.path.join(tmp, "data"), "REDIS_URL": redis.url(), "ENVIRONMENT": "development"}
        with Devexd(app=None, threads=2, config_text=conf, env=env) as d:
            d.sync_templates()
            repls = []  # (rid, cookie)
            for u in range(users):
                b = Browser(d)
                r = b.request("POST", "/auth/dev/login", body="user=bench%d" % u, headers=FORM)
                assert r.status == 302, r.body
                for k in range(10):
                    if len(repls) == REPLS:
                        break
                    r = b.request("POST", "/api/repl/new", headers=JSON,
                                  body=json.dumps({"template": "python", "replName": "b%d-%d" % (u, k)}))
                    assert r.status == 201, r.body
                    repls.append((r.json()["id"], b.cookie_header()))
            pid = d.proc.pid
            time.sleep(1)
            rss0 = rss_kb(pid)
            socks = []
            by_repl = {rid: [] for rid, _ in repls}
            for i in range(STREAMS):
                rid, cookie = repls[i % len(repls)]
                s = socket.create_connection(("127.0.0.1", d.port))
                s.sendall(("GET /api/repl/session/%s/events HTTP/1.1\r\nHost: localhost\r\nCookie: %s\r\n"
                           "Accept: text/event-stream\r\n\r\n" % (rid, cookie)).encode())
                socks.append(s)
                by_repl[rid].append(s)
            # every stream answered (headers and the retry line)
            for s in socks:
                s.settimeout(30)
                buf = b""
                while b"retry:" not in buf:
                    chunk = s.recv(4096)
                    assert chunk, "stream closed"
                    buf += chunk
                assert buf.startswith(b"HTTP/1.1 200"), buf[:100]
                s.setblocking(False)
            time.sleep(1)
            rss1 = rss_kb(pid)
            c0 = cpu_s(pid)
            time.sleep(IDLE)
            c1 = cpu_s(pid)
            lat = []
            for k in range(ROUNDS):
                rid = repls[k % len(repls)][0]
                marker = "bench-%d" % k
                ev = json.dumps({"phase": "warning", "replId": rid, "reason": marker})
                t0 = time.monotonic()
                redis.call("XADD", "devex:replEvents:" + rid, "*", "e", ev)
                waiting = {s: b"" for s in by_repl[rid]}
                deadline = t0 + 10
                while waiting and time.monotonic() < deadline:
                    ready, _, _ = select.select(list(waiting), [], [], 0.5)
                    for s in ready:
                        try:
                            data = s.recv(65536)
                        except BlockingIOError:
                            continue
                        waiting[s] += data
                        if marker.encode() in waiting[s]:
                            lat.append(time.monotonic() - t0)
                            del waiting[s]
                assert not waiting, "%d watchers did not get event %d" % (len(waiting), k)
                time.sleep(random.uniform(0.0, 0.3))  # not in step with the readers' polls
            for s in socks:
                s.close()
            res = {
                "streams": STREAMS, "repls": len(repls), "workers": 2,
                "rss_before_kb": rss0, "rss_with_streams_kb": rss1,
                "memory_per_stream_kb": round((rss1 - rss0) / STREAMS, 2),
                "idle_cpu_percent": round(100 * (c1 - c0) / IDLE, 2),
                "latency_p50_ms": round(1000 * pct(lat, 0.5), 1),
                "latency_p99_ms": round(1000 * pct(lat, 0.99), 1),
                "latency_samples": len(lat),
            }
            print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
