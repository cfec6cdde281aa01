#!/usr/bin/env python3
"""Parked session starts (issue #17 section 5): STARTS session starts waiting
at once for pods the simulated kubelet never makes Ready, on one devexd with
2 workers against the real API server of tests/integration/k8s_harness.py.
Measured side by side in the same run, for three modes:

- "shared": one pod watch per worker (policy.workload.shared_watch, the
  default) and at most TURNS (8) starts of a worker making their API calls
  at once (workload.start_concurrency);
- "shared-nocap": the defaults, start_concurrency = 0, every start's API
  calls in flight together (the lever of the turns, before/after);
- "own": one watch per start (shared_watch = false), with the turns;

and in each, with WAVES (2) waves of STARTS parked starts, one after the other:

- devexd's resident memory with the first wave parked, minus before, / STARTS
  (kb_per_parked_start: it includes what the first start of all pays once:
  the start path's Lua modules, code pages touched for the first time, the
  shared watches, the connections to the API server);
- the growth from the later waves, / the starts they parked
  (kb_per_more_parked_start: what one more parked start costs, the figure
  10,000 parked starts scale by), and its anonymous part; with WAVES > 2,
  each later wave's figure too (kb_per_wave), to see whether it holds as
  the count grows;
- resident memory with 10,000 parked starts, extrapolated from these
  (rss_10000_estimate_kb: before + the first wave + 10,000 - STARTS more at
  kb_per_more_parked_start), the issue's goal being under 200 MB; with
  STARTS=1000 WAVES=10 it is measured: rss_last_wave_kb with 10,000 parked
  (about 7 minutes here);
- the pod WATCH requests open on the API server meanwhile (its
  apiserver_longrunning_gauge, namespaced pods);
- devexd's TCP connections to the API server;
- the seconds until every start's Deployment exists (its API calls done;
  null if not within SETTLE);
- how many of the starts are still parked when measured (a start answered
  early, e.g. a 503 from an overloaded Redis, would make the figure look
  better than it is: per parked start divides by the parked ones).

Resident memory is read once both workers have had a quiet second after a
request (quiet_mem_kb): what memtrim gives back then is not counted.

A benchmark, not a test: numbers are printed and written to
tests/bench/results/parked_starts.json, not judged.

Usage: DEVEXD_BIN=build/devexd python3 tests/bench/bench_parked_starts.py
Knobs (environment): STARTS (200), WAVES (2), SETTLE (8 seconds parked before measuring),
MODES (shared,shared-nocap,own), TURNS (8: start_concurrency of shared and own).
The modes run one after another on one cluster: the first one meets a
cluster that has just started, so compare modes over runs in both orders.
"""
import json
import os
import socket
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import k8s_harness  # noqa: E402
from harness import Devexd, RedisServer, rss_kb  # noqa: E402
from fakes.github_fake import GitHubFake  # noqa: E402
from test_k8s_runtime import cluster_config  # noqa: E402
from test_k8s_shared_watch import pod_watches  # noqa: E402
import test_repl  # noqa: E402

STARTS = int(os.environ.get("STARTS", "200"))
WAVES = max(2, int(os.environ.get("WAVES", "2")))
REPLS_PER_USER = 100
SETTLE = float(os.environ.get("SETTLE", "8"))
JSON = {"Content-Type": "application/json"}
NS = "parked"


def conns_to(pid, port):
    """devexd's established TCP connections to port (from /proc/<pid>/net/tcp and its fds)."""
    inodes = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            t = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if t.startswith("socket:["):
            inodes.add(t[8:-1])
    n = 0
    for table in ("tcp", "tcp6"):
        with open("/proc/%d/net/%s" % (pid, table)) as f:
            next(f)
            for line in f:
                parts = line.split()
                if parts[3] == "01" and int(parts[2].rsplit(":", 1)[1], 16) == port and parts[9] in inodes:
                    n += 1
    return n


class Ctx(unittest.TestCase):
    """what test_repl.ReplTest.login needs of a test case"""

    def runTest(self):
        pass


def answered(sock):
    """whether devexd already answered on sock (without waiting)"""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""  # b"" (closed) counts as answered too
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


def run_mode(kc, kubeconfig, mode):
    shared = mode != "own"
    cap = 0 if mode == "shared-nocap" else int(os.environ.get("TURNS", "8"))
    c = Ctx()
    c.tmp = tempfile.mkdtemp(prefix="devexd-parked-")
    c.store_dir = os.path.join(c.tmp, "bucket")
    os.mkdir(c.store_dir)
    ns = "%s-%s" % (NS, mode)
    kc.create_namespace(ns)
    policy = os.path.join(c.tmp, "policy.lua")
    with open(policy, "w") as f:
        f.write("return { quota = { repls_per_user = %d, sessions_per_user = %d },\n"
                # (signin off: 100 users sign in from one address)
                "  limits = { create = false, start = false, stop = false, signin = false },\n"
                "  workload = { shared_watch = %s, start_timeout = 600, start_concurrency = %d },\n"
                # no sweep during the waves: its passes over the 400 REPLs (the
                # first builds its indexes: about 11 MB of Lua garbage) land in
                # whichever wave they fall in, and the pages their garbage
                # shared with parked starts' objects stay (second wave: 37-98 KB
                # with it, over 5 runs)
                "  cleanup = { sweep_interval = 3600 } }\n"
                % (WAVES * STARTS + 10, WAVES * STARTS + 10, "true" if shared else "false", cap))
    with RedisServer() as redis, GitHubFake() as gh:
        c.redis, c.gh = redis, gh
        conf = cluster_config(c, kubeconfig, ns)
        conf["policy"] = {"file": policy}
        with Devexd(app=None, threads=2, config=conf) as d:
            c.d = d
            d.sync_templates()
            # REPLS_PER_USER to a user: a start's session reservation reads
            # every REPL of its user in one Redis script, and 500 starts of
            # one user with 2,000 REPLs kept Redis busy past devexd's 2 s
            # command timeout (hundreds of 503s)
            ids, b = [], None
            for i in range(WAVES * STARTS):
                if i % REPLS_PER_USER == 0:
                    b = test_repl.ReplTest.login(c, "parker%d" % (i // REPLS_PER_USER),
                                                 440000 + 1000 * ["own", "shared", "shared-nocap"].index(mode)
                                                 + i // REPLS_PER_USER)
                r = b.request("POST", "/api/repl/new", headers=JSON,
                              body=json.dumps({"template": "node", "replName": "p%d" % i}))
                assert r.status == 201, r.body
                ids.append((b, r.json()["id"]))
            kc.kubelet.add_rule({"devex.test/never-ready": "true"}, namespace=ns)
            api_port = int(kc.server.rsplit(":", 1)[1]) if hasattr(kc, "server") else None
            before = quiet_mem_kb(d)
            dpath = k8s_harness.api_path("apps/v1", "deployments", ns)
            socks = []
            # the first wave pays once for what any start needs (the start
            # path's Lua modules, code pages first touched, the shared
            # watches, the connections to the API server); the second wave's
            # growth is what one more parked start costs
            first = park(d, ids[:STARTS], socks, kc, dpath, STARTS)
            mid = quiet_mem_kb(d)
            waves, last = [], mid
            for w in range(1, WAVES):
                r = park(d, ids[w * STARTS:(w + 1) * STARTS], socks, kc, dpath, (w + 1) * STARTS)
                r["mem"] = quiet_mem_kb(d)
                r["kb"] = round((r["mem"]["rss"] - last["rss"]) / max(1, r["parked"]), 1)
                waves.append(r)
                last = r["mem"]
            after = last
            more = sum(r["parked"] for r in waves)
            watches = pod_watches(kc)
            conns = conns_to(d.proc.pid, api_port) if api_port else None
            parked = sum(1 for s in socks if not answered(s))
            for s in socks:
                s.close()
            kc.kubelet.clear_rules()
            per_more = round((after["rss"] - mid["rss"]) / max(1, more), 1)
            return {"mode": mode, "starts": STARTS, "waves": WAVES, "parked": parked, "rss_before_kb": before["rss"],
                    "rss_first_wave_kb": mid["rss"], "rss_last_wave_kb": after["rss"],
                    "kb_per_parked_start": round((mid["rss"] - before["rss"]) / max(1, first["parked"]), 1),
                    "kb_per_more_parked_start": per_more,
                    "anon_kb_per_more_parked_start": round((after["anon"] - mid["anon"]) / max(1, more), 1),
                    "kb_per_wave": [r["kb"] for r in waves],
                    "rss_10000_estimate_kb": round(mid["rss"] + (10000 - STARTS) * per_more),
                    "file_kb_first_wave": mid["file"] - before["file"],
                    "pod_watches_open": watches, "api_connections": conns,
                    "all_applied_s": first["applied_s"], "later_waves_applied_s": [r["applied_s"] for r in waves]}


def quiet_mem_kb(d):
    """mem_kb once both workers have had a quiet second after a request:
    memtrim's full collection and allocator trim (what an idle devexd gets)
    have run. Without it the figure held whatever garbage the starts' late
    work (pod and event notes) had left since the last collection: one
    wave's figure moved between 23 and 42 KB per start from run to run."""
    for _ in range(32):  # the kernel spreads connections over the workers: 32 all on one is 2^-31
        with socket.create_connection(("127.0.0.1", d.port)) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            while s.recv(65536):
                pass
    time.sleep(2.5)
    return mem_kb(d.proc.pid)


def mem_kb(pid):
    """VmRSS and its anonymous and file-backed parts, in KB."""
    out = {"rss": rss_kb(pid), "anon": 0, "file": 0}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("RssAnon:"):
                out["anon"] = int(line.split()[1])
            elif line.startswith("RssFile:"):
                out["file"] = int(line.split()[1])
    return out


def park(d, rids, socks, kc, dpath, total):
    """Starts the sessions of rids, each on its own HTTP/1.1 connection
    (appended to socks), and waits SETTLE seconds; meanwhile notes when
    `total` Deployments exist (the starts' API calls done: what the turns
    could slow down). -> {"parked": starts of rids not answered yet, "applied_s"}"""
    req = ("GET /api/repl/session/%s HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: %s\r\n\r\n")
    mine = []
    for b, rid in rids:
        s = socket.create_connection(("127.0.0.1", d.port))
        s.sendall((req % (rid, b.cookie_header())).encode())
        mine.append(s)
    socks.extend(mine)
    t0, applied_s = time.time(), None
    while time.time() - t0 < SETTLE:
        if applied_s is None and len(kc.api.get(dpath)["items"]) >= total:
            applied_s = round(time.time() - t0, 1)
        time.sleep(0.5)
    return {"parked": sum(1 for s in mine if not answered(s)), "applied_s": applied_s}


def main():
    out = []
    # the harness' /24 holds 254 Services and each mode's 200 stay (their
    # starts never end): a wider range, or the third mode's starts fail with
    # "failed to allocate a serviceIP: range is full" (a later flag wins)
    with k8s_harness.KubeCluster(standins=False, apiserver_args=["--service-cluster-ip-range=10.0.0.0/16"]) as kc:
        tmp = tempfile.mkdtemp(prefix="devexd-parked-kc-")
        kubeconfig = kc.write_kubeconfig(os.path.join(tmp, "kubeconfig"))
        for mode in os.environ.get("MODES", "shared,shared-nocap,own").split(","):
            r = run_mode(kc, kubeconfig, mode)
            print(json.dumps(r))
            out.append(r)
    res_dir = os.environ.get("RESULTS_DIR") or os.path.join(HERE, "results")
    os.makedirs(res_dir, exist_ok=True)
    with open(os.path.join(res_dir, "parked_starts.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
