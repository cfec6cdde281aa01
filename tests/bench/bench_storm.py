#!/usr/bin/env python3
"""Start and stop storms (issue #17 section 5): N users each create a REPL,
then all N start at once, then all N stop at once, against TWO devexd
replicas (2 workers each, one Redis) behind a round-robin client, the real
kube-apiserver and controller manager of tests/integration/k8s_harness.py
and its simulated kubelet, which runs the real agent (`devexd runner`) of
each pod (templates.python.agent = true), storage on the signature-checking
S3 test server.

The start storm, all requests released together:
  - every user's REPL started on replica i % 2;
  - every 5th user's REPL started a second time at once on the other
    replica (no double start: one Deployment, one pod, both answers 200);
  - every 10th user also starts a second REPL at once, with
    quota.sessions_per_user = 1: exactly one of the user's two REPLs runs,
    the other answers the policy's 429 (JSON, code "quota").
Any other status is a failure. Measured: p50/p99 start latency; devexd's own
overhead per start = latency - (the pod's Ready - its Deployment's
creation), both seen by a watch of this process on the API server, so the
overhead is the time before the Deployment exists (devexd's reads, the
apply) plus the time from Ready to the answer (the shared pod watch, Redis);
the pod's own wait (controller manager, the simulated kubelet starting 500
agents and probing them) is left out; API server requests per start and per
stop (the API server's audit log, requests with devexd's User-Agent);
devexd's RSS per replica.

Then a distinct file is written into each running REPL's workspace (the
agent's directory on this host) and all REPLs are stopped at once (every
5th twice, on both replicas: 200 or the 409 of the stop lock). Checked: every
stop answers 200, each file is in S3 byte for byte (0 lost; the agents'
checkpoint interval is an hour, so only the stop's final checkpoint can
have saved it), every REPL "stopped", no session key, no Deployment or pod
left, no agent process left, and the sweep ran on one replica only.

Not in ctest (tests/integration/test_k8s_storm.py runs the same storm at a
small scale with assertions). Results: printed, and written to
tests/bench/results/storm.json.

Usage: DEVEXD_BIN=build/devexd python3 tests/bench/bench_storm.py [--n 500]
Knob (environment): KUBELET_WORKERS (16), pods the simulated kubelet
handles at once (starting agents, probing them).
"""
import argparse
import datetime
import http.client
import json
import os
import secrets
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import harness  # noqa: E402
import k8s_harness  # noqa: E402
from harness import Devexd, RedisServer, rss_kb  # noqa: E402
from fakes.github_fake import GitHubFake  # noqa: E402
from test_auth import FRONTEND, GH_REDIRECT  # noqa: E402
from test_s3 import S3Server, ensure_s3_server  # noqa: E402
import test_repl  # noqa: E402

JSON_CT = "application/json"
NS = "storm"
# pods the simulated kubelet handles at once with agents (KUBELET_WORKERS)
KUBELET_WORKERS = int(os.environ.get("KUBELET_WORKERS", "16"))
POLICY = """return {
  templates = { catalogue = { python = %(template)s } },
  -- only the stop's final checkpoint saves the file each REPL gets
  sync = { checkpoint_interval = 3600 },
  quota = { repls_per_user = 2, sessions_per_user = 1 },
  -- N users sign in from one address here: the per-address sign-in limit
  -- (tested in test_abuse) and the per-user rates stay out of the way
  limits = { signin = false, create = false, start = false, stop = false },
  workload = { start_timeout = %(start_timeout)d },
  cleanup = { sweep_interval = 5, stuck_after = %(stuck_after)d, idle_limit = 7200 },
}
"""
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived", "ResponseStarted"]
rules:
- level: Metadata
"""


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


class Ctx(unittest.TestCase):
    """what test_repl.ReplTest.login needs of a test case"""

    def runTest(self):
        pass


class Watcher(threading.Thread):
    """Watches the namespace's Deployments and pods and records, per REPL
    (label devex.io/repl), when its newest Deployment was first seen and
    when its pod was first seen Ready (time.monotonic() of this process)."""

    def __init__(self, kc, ns):
        super().__init__(daemon=True)
        self.kc, self.ns = kc, ns
        self.lock = threading.Lock()
        self.deployed = {}  # repl -> (uid, t, name)
        self.ready = {}     # repl -> t (pod of the current Deployment's generation)
        self.stop_ev = threading.Event()
        self.errors = []

    def reset(self):
        with self.lock:
            self.deployed.clear()
            self.ready.clear()

    def _watch(self, plural, version, on):
        api = self.kc.client(user="admin")
        path = k8s_harness.api_path(version, plural, self.ns)
        while not self.stop_ev.is_set():
            try:
                lst = api.get(path)
                now = time.monotonic()
                for o in lst["items"]:
                    on("ADDED", o, now)
                rv = lst["metadata"]["resourceVersion"]
                for ev in api.watch(path, timeout_seconds=60, resource_version=rv):
                    now = time.monotonic()
                    if ev.get("type") == "ERROR":
                        break
                    on(ev["type"], ev["object"], now)
                    if self.stop_ev.is_set():
                        return
            except Exception as e:  # noqa: BLE001 - recorded, the watch starts again
                self.errors.append(repr(e))
                time.sleep(0.5)

    def on_deployment(self, typ, o, now):
        repl = (o["metadata"].get("labels") or {}).get("devex.io/repl")
        if not repl or typ == "DELETED":
            return
        with self.lock:
            uid = o["metadata"]["uid"]
            if repl not in self.deployed or self.deployed[repl][0] != uid:
                self.deployed[repl] = (uid, now, o["metadata"]["name"])

    def on_pod(self, typ, o, now):
        repl = (o["metadata"].get("labels") or {}).get("devex.io/repl")
        if not repl or typ == "DELETED" or o["metadata"].get("deletionTimestamp"):
            return
        if k8s_harness.pod_is_ready(o):
            with self.lock:
                self.ready.setdefault(repl, now)

    def run(self):
        ts = [threading.Thread(target=self._watch, args=("deployments", "apps/v1", self.on_deployment), daemon=True),
              threading.Thread(target=self._watch, args=("pods", "v1", self.on_pod), daemon=True)]
        for t in ts:
            t.start()
        self.stop_ev.wait()


def audit_count(path, since, agent="devexd"):
    """Requests (ResponseComplete events) in the audit log after byte since
    whose User-Agent is agent: (total, {"verb resource[/sub]": n}), offset."""
    total, by = 0, {}
    with open(path, "rb") as f:
        f.seek(since)
        data = f.read()
    end = since + len(data)
    cut = data.rfind(b"\n")
    if cut < 0:
        return 0, {}, since
    data, end = data[:cut + 1], since + cut + 1
    for line in data.splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if ev.get("stage") != "ResponseComplete" or not str(ev.get("userAgent", "")).startswith(agent):
            continue
        ref = ev.get("objectRef") or {}
        key = "%s %s%s" % (ev.get("verb"), ref.get("resource", ev.get("requestURI", "?")),
                           "/" + ref["subresource"] if ref.get("subresource") else "")
        total += 1
        by[key] = by.get(key, 0) + 1
    return total, by, end


def audit_seconds(path, since, resource, verbs, agent="devexd"):
    """{object name: seconds the API server spent on agent's requests of
    those verbs on that resource} after byte since (the audit event's
    stageTimestamp - requestReceivedTimestamp)."""
    def ts(s):
        return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
    out = {}
    with open(path, "rb") as f:
        f.seek(since)
        for line in f:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            ref = ev.get("objectRef") or {}
            if ev.get("stage") != "ResponseComplete" or not str(ev.get("userAgent", "")).startswith(agent) \
                    or ref.get("resource") != resource or ev.get("verb") not in verbs or not ref.get("name"):
                continue
            out[ref["name"]] = out.get(ref["name"], 0.0) + ts(ev["stageTimestamp"]) - ts(ev["requestReceivedTimestamp"])
    return out


def audit_size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def at_once(calls, timeout):
    """Runs the callables in threads released together; [(result, t_sent, t_done)] in order."""
    out = [None] * len(calls)
    gate = threading.Barrier(len(calls) + 1)

    def run(i, fn):
        gate.wait()
        t0 = time.monotonic()
        try:
            r = fn()
        except Exception as e:  # noqa: BLE001 - reported as the result
            r = ("exception", repr(e))
        out[i] = (r, t0, time.monotonic())

    threads = [threading.Thread(target=run, args=(i, fn), daemon=True) for i, fn in enumerate(calls)]
    for t in threads:
        t.start()
    gate.wait()
    for t in threads:
        t.join(timeout)
    return out


def call(d, method, path, cookie, timeout):
    c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=timeout)
    try:
        c.request(method, path, headers={"Content-Type": JSON_CT, "Cookie": cookie})
        r = c.getresponse()
        body = r.read()
        return r.status, body, r.getheader("Content-Type") or ""
    finally:
        c.close()


class Storm:
    def __init__(self, n, log=print, start_timeout=600, agents=True):
        self.n = n
        self.agents = agents
        self.log = log
        self.start_timeout = start_timeout
        self.problems = []
        self.res = {"n": n, "mode": "agents" if agents else "ready-now"}

    def problem(self, fmt, *a):
        msg = fmt % a if a else fmt
        self.problems.append(msg)
        self.log("PROBLEM: " + msg)

    def answer(self, op, rid, kind, o, statuses):
        """One call's outcome from at_once(): (status, body, content type,
        sent, answered) counted in statuses, or None (a problem noted) when
        it did not finish or raised."""
        if o is None:
            self.problem("%s of %s (%s) did not finish", op, rid, kind)
            return None
        (r, ts, te) = o
        if r[0] == "exception":
            self.problem("%s of %s (%s): %s", op, rid, kind, r[1])
            return None
        st, body, ctype = r
        statuses[st] = statuses.get(st, 0) + 1
        return st, body, ctype, ts, te

    # ---- setup ----

    def __enter__(self):
        self.tmp = tempfile.mkdtemp(prefix="devexd-storm-")
        ensure_s3_server()
        self.s3 = S3Server().start()
        audit_pol = os.path.join(self.tmp, "audit-policy.yaml")
        with open(audit_pol, "w") as f:
            f.write(AUDIT_POLICY)
        self.audit = os.path.join(self.tmp, "audit.log")
        self.kc = k8s_harness.KubeCluster(apiserver_args=[
            "--audit-policy-file=" + audit_pol, "--audit-log-path=" + self.audit,
            "--audit-log-maxsize=0",
            # the harness' /24 holds 254 Services: "failed to allocate a
            # serviceIP: range is full" from the 255th start on (a cluster's
            # range is usually a /12); a later flag overrides the harness' one
            "--service-cluster-ip-range=10.0.0.0/16"],
            # without agents: pods Ready as soon as the kubelet sees them, status only
            standins=self.agents,
            # with agents: pods handled side by side (started, probed), as
            # on a node; one after the other they became Ready about one a
            # second, too slow for 500
            kubelet_workers=KUBELET_WORKERS if self.agents else 1).__enter__()
        self.kc.create_namespace(NS)
        kubeconfig = self.kc.write_kubeconfig(os.path.join(self.tmp, "kubeconfig"))
        self.redis = RedisServer().__enter__()
        self.gh = GitHubFake().__enter__()
        pol = os.path.join(self.tmp, "policy.lua")
        with open(pol, "w") as f:
            f.write(POLICY % {"start_timeout": self.start_timeout, "stuck_after": self.start_timeout + 300,
                              # ready-now: the original runner image; its stop's uploader
                              # (an ephemeral container) exits 0 in the simulated kubelet
                              "template": "{ image = 'devexd-runner-python:latest', agent = true }" if self.agents
                              else "{ image = 'runner-python:latest', agent = false }"})
        conf = {
            "server": {"listen": [{"host": "127.0.0.1", "port": "@PORTNUM@"}], "max_body": 16 << 20},
            "environment": "production", "allow_insecure_http": True, "frontend_url": FRONTEND,
            "public_url": "http://127.0.0.1:@PORT@",
            "redis": {"url": self.redis.url()},  # the default command timeout (5 s)
            "github": self.gh.config(GH_REDIRECT),
            "s3": self.s3.conf(),
            "runtime": {"driver": "kubernetes"},
            "kube": {"config_path": kubeconfig, "namespace": NS},
            "runner": {"cluster_ip": "runners.example.test", "domain": "runners.example.test"},
            "policy": {"file": pol},
        }
        text = ("return " + harness.to_lua(conf) + "\n").replace('"@PORTNUM@"', "@PORT@")
        self.replicas = [Devexd(app=None, threads=2, config_text=text).__enter__() for _ in range(2)]
        self.replicas[0].sync_templates()
        self.watcher = Watcher(self.kc, NS)
        self.watcher.start()
        return self

    def __exit__(self, *exc):
        self.watcher.stop_ev.set()
        for d in getattr(self, "replicas", []):
            d.__exit__(None, None, None)
        for name in ("gh", "redis", "kc"):
            o = getattr(self, name, None)
            if o is not None:
                o.__exit__(None, None, None)
        self.s3.close()
        return False

    # ---- steps ----

    def sign_in_and_create(self):
        t0 = time.monotonic()
        c = Ctx()
        c.gh, c.d = self.gh, self.replicas[0]
        self.users = []  # [{"login", "cookie", "repls": [id, ...]}]
        for i in range(self.n):
            b = test_repl.ReplTest.login(c, "storm%04d" % i, 700000 + i)
            self.users.append({"login": "storm%04d" % i, "cookie": b.cookie_header(), "repls": []})
        nrepl = 0
        for i, u in enumerate(self.users):
            for k in range(2 if i % 10 == 0 else 1):
                d = self.replicas[nrepl % 2]
                nrepl += 1
                cn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=120)
                cn.request("POST", "/api/repl/new", body=json.dumps({"template": "python", "replName": "s%d" % k}),
                           headers={"Content-Type": JSON_CT, "Cookie": u["cookie"]})
                r = cn.getresponse()
                body = r.read()
                cn.close()
                if r.status not in (200, 201):
                    raise AssertionError("create: %d %r" % (r.status, body))
                u["repls"].append(json.loads(body)["id"])
        self.res["setup_seconds"] = round(time.monotonic() - t0, 1)
        self.log("%d users, %d REPLs created in %.1f s" % (self.n, nrepl, time.monotonic() - t0))

    def start_storm(self):
        calls, what = [], []  # what[i] = (user index, repl id, kind)
        for i, u in enumerate(self.users):
            rid = u["repls"][0]
            d = self.replicas[i % 2]
            calls.append(lambda d=d, rid=rid, u=u: call(d, "GET", "/api/repl/session/" + rid, u["cookie"], 1200))
            what.append((i, rid, "first"))
            if i % 5 == 0:
                d2 = self.replicas[(i + 1) % 2]
                calls.append(lambda d=d2, rid=rid, u=u: call(d, "GET", "/api/repl/session/" + rid, u["cookie"], 1200))
                what.append((i, rid, "again"))
            if len(u["repls"]) > 1:
                d2 = self.replicas[(i + 1) % 2]
                r2 = u["repls"][1]
                calls.append(lambda d=d2, rid=r2, u=u: call(d, "GET", "/api/repl/session/" + rid, u["cookie"], 1200))
                what.append((i, r2, "second"))
        self.watcher.reset()
        a0 = audit_size(self.audit)
        rss0 = [rss_kb(d.proc.pid) for d in self.replicas]
        self.log("start storm: %d requests at once (%d distinct REPLs)" % (len(calls), len({w[1] for w in what})))
        t0 = time.monotonic()
        out = at_once(calls, 1500)
        wall = time.monotonic() - t0
        rss1 = [rss_kb(d.proc.pid) for d in self.replicas]
        statuses, per_repl = {}, {}
        lat, overhead, before, after = [], [], [], []
        time.sleep(2)  # the watch's last events
        api_secs = audit_seconds(self.audit, a0, "deployments", ("get", "patch"))
        own = []
        for (i, rid, kind), o in zip(what, out):
            a = self.answer("start", rid, kind, o, statuses)
            if a is None:
                continue
            st, body, ctype, ts, te = a
            per_repl.setdefault(rid, set()).add(st)
            if st == 429:
                try:
                    j = json.loads(body)
                except ValueError:
                    j = None
                if not (ctype.startswith("application/json") and isinstance(j, dict) and j.get("code") == "quota"
                        and j.get("error") == "session limit reached" and j.get("limit") == 1):
                    self.problem("a 429 that is not the policy's quota answer: %r %r", ctype, body[:300])
            elif st != 200:
                self.problem("start of %s (%s): %d %r", rid, kind, st, body[:300])
            if st == 200 and kind in ("first", "second"):
                lat.append(te - ts)
                with self.watcher.lock:
                    dep = self.watcher.deployed.get(rid)
                    rdy = self.watcher.ready.get(rid)
                if dep and rdy:
                    before.append(dep[1] - ts)
                    after.append(te - rdy)
                    overhead.append((te - ts) - (rdy - dep[1]))
                    if dep[2] in api_secs:
                        own.append(overhead[-1] - api_secs[dep[2]])
        # quotas: exactly one running REPL per user with two; one per REPL otherwise
        running = set()
        for u in self.users:
            states = [self.redis.call("HGET", "devex:replMeta:" + r, "state") for r in u["repls"]]
            run = [r for r, s in zip(u["repls"], states) if s == b"running"]
            if len(run) != 1:
                self.problem("user %s: %d REPLs running (%r), want exactly 1", u["login"], len(run), states)
            running.update(run)
            for r in u["repls"]:
                sts = per_repl.get(r, set())
                if (r in run) != (sts == {200}):
                    self.problem("REPL %s: answers %r, running=%r", r, sts, r in run)
        deps = self.kc.client(user="admin").get(k8s_harness.api_path("apps/v1", "deployments", NS))["items"]
        by_repl = {}
        for dpl in deps:
            r = dpl["metadata"]["labels"].get("devex.io/repl")
            by_repl[r] = by_repl.get(r, 0) + 1
        if set(by_repl) != running or any(v != 1 for v in by_repl.values()):
            self.problem("Deployments %d for %d running REPLs (double: %r, extra: %r)", len(deps), len(running),
                         [r for r, v in by_repl.items() if v > 1][:5], list(set(by_repl) - running)[:5])
        self.running = running
        api_n, api_by, _ = audit_count(self.audit, a0)
        nstarts = len(lat)
        self.res["start"] = {
            "requests": len(calls), "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "running": len(running), "wall_seconds": round(wall, 1),
            "latency_p50_s": round(pct(lat, 50), 3) if lat else None,
            "latency_p99_s": round(pct(lat, 99), 3) if lat else None,
            "overhead_p50_s": round(pct(overhead, 50), 3) if overhead else None,
            "overhead_p99_s": round(pct(overhead, 99), 3) if overhead else None,
            "before_deployment_p50_s": round(pct(before, 50), 3) if before else None,
            "before_deployment_p99_s": round(pct(before, 99), 3) if before else None,
            "ready_to_answer_p50_s": round(pct(after, 50), 3) if after else None,
            "ready_to_answer_p99_s": round(pct(after, 99), 3) if after else None,
            "overhead_samples": len(overhead),
            "overhead_less_api_p50_s": round(pct(own, 50), 3) if own else None,
            "overhead_less_api_p99_s": round(pct(own, 99), 3) if own else None,
            "api_requests": api_n, "api_requests_per_start": round(api_n / max(1, nstarts), 2),
            "api_requests_by_kind": api_by,
            "rss_kb_before": rss0, "rss_kb_after": rss1,
        }
        self.log("start: " + json.dumps(self.res["start"]))

    def write_files(self):
        api = self.kc.client(user="admin")
        self.files = {}
        if not self.agents:
            return  # no workspace: nothing runs in the pods
        pods = api.get(k8s_harness.api_path("v1", "pods", NS))["items"]
        for p in pods:
            rid = p["metadata"]["labels"].get("devex.io/repl")
            if rid not in self.running or p["metadata"].get("deletionTimestamp"):
                continue
            a = self.kc.kubelet.standin(NS, p["metadata"]["name"])
            if not a or not a.get("agent") or not a.get("dir"):
                self.problem("REPL %s: pod %s runs no agent", rid, p["metadata"]["name"])
                continue
            data = ("%s\n" % rid).encode() + secrets.token_bytes(512 + len(self.files) % 1500)
            rel = "storm/%s.bin" % rid
            path = os.path.join(a["dir"], rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
            self.files[rid] = (rel, data)
        missing = self.running - set(self.files)
        if missing:
            self.problem("%d running REPLs without a pod to write into: %r", len(missing), sorted(missing)[:5])

    def stored(self, rid, rel):
        root = os.path.join(self.s3.tmp, "data", self.s3.bucket, "repl")
        for owner in os.listdir(root) if os.path.isdir(root) else []:
            p = os.path.join(root, owner, rid, rel + "._S3rver_object")
            if os.path.exists(p):
                with open(p, "rb") as f:
                    return f.read()
        return None

    def stop_storm(self):
        calls, what = [], []
        owner = {}
        for u in self.users:
            for r in u["repls"]:
                owner[r] = u
        for k, rid in enumerate(sorted(self.running)):
            u = owner[rid]
            calls.append(lambda d=self.replicas[k % 2], rid=rid, u=u:
                         call(d, "DELETE", "/api/repl/session/" + rid, u["cookie"], 1200))
            what.append((rid, "first" if k % 5 else "paired"))
            if k % 5 == 0:
                calls.append(lambda d=self.replicas[(k + 1) % 2], rid=rid, u=u:
                             call(d, "DELETE", "/api/repl/session/" + rid, u["cookie"], 1200))
                what.append((rid, "again"))
        a0 = audit_size(self.audit)
        self.log("stop storm: %d requests at once (%d REPLs)" % (len(calls), len(self.running)))
        t0 = time.monotonic()
        out = at_once(calls, 1500)
        wall = time.monotonic() - t0
        statuses, lat, ok = {}, [], {}
        for (rid, kind), o in zip(what, out):
            a = self.answer("stop", rid, kind, o, statuses)
            if a is None:
                continue
            st, body, _, ts, te = a
            if st == 200:
                ok[rid] = True
                if kind != "again":
                    lat.append(te - ts)
            elif not (kind in ("again", "paired") and st == 409):
                self.problem("stop of %s (%s): %d %r", rid, kind, st, body[:300])
        # of a pair of stops at once one may get 409 (the other holds the
        # stop lock), or 200 when it came after the first had finished
        for rid in self.running:
            if not ok.get(rid):
                self.problem("REPL %s: no stop answered 200", rid)
        api_n, api_by, _ = audit_count(self.audit, a0)
        lost, differ = [], []
        for rid, (rel, data) in self.files.items():
            got = self.stored(rid, rel)
            if got is None:
                lost.append(rid)
            elif got != data:
                differ.append(rid)
        if lost or differ:
            self.problem("files lost: %d, differing: %d (%r)", len(lost), len(differ), (lost + differ)[:5])
        not_stopped = []
        for u in self.users:
            for r in u["repls"]:
                s = self.redis.call("HGET", "devex:replMeta:" + r, "state")
                if s not in (b"stopped", b"created"):
                    not_stopped.append((r, s))
        if not_stopped:
            self.problem("%d REPLs not stopped: %r", len(not_stopped), not_stopped[:5])
        sessions = self.redis.call("KEYS", "devex:activeSession:*") or []
        if sessions:
            self.problem("%d session keys left", len(sessions))
        # the Deployments go with foreground propagation: the garbage
        # collector and the kubelet take a while; wait for nothing left
        api = self.kc.client(user="admin")
        t1 = time.monotonic()
        left = None
        while time.monotonic() - t1 < 300:
            left = {pl: len(api.get(k8s_harness.api_path(v, pl, NS))["items"])
                    for v, pl in (("apps/v1", "deployments"), ("apps/v1", "replicasets"), ("v1", "pods"))}
            if not any(left.values()):
                break
            time.sleep(1)
        if any(left.values()):
            self.problem("objects left 300 s after the stops: %r", left)
        agents = [st for st in list(self.kc.kubelet._pods.values())
                  if st.get("sa") and st["sa"].get("proc") is not None and st["sa"]["proc"].poll() is None]
        if agents:
            self.problem("%d agent processes still running", len(agents))
        self.res["stop"] = {
            "requests": len(calls), "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "wall_seconds": round(wall, 1),
            "latency_p50_s": round(pct(lat, 50), 3) if lat else None,
            "latency_p99_s": round(pct(lat, 99), 3) if lat else None,
            "files_written": len(self.files), "files_lost": len(lost), "files_differing": len(differ),
            "repls_not_stopped": len(not_stopped), "session_keys_left": len(sessions),
            "objects_left": left, "objects_gone_after_s": round(time.monotonic() - t1, 1),
            "api_requests": api_n, "api_requests_per_stop": round(api_n / max(1, len(self.running)), 2),
            "api_requests_by_kind": api_by,
            "rss_kb_after": [rss_kb(d.proc.pid) for d in self.replicas],
        }
        self.log("stop: " + json.dumps(self.res["stop"]))

    def sweepers(self):
        runs = [len([e for e in d.logs() if e.get("msg") == "sweep"]) for d in self.replicas]
        self.res["sweep_runs_per_replica"] = runs
        if not (min(runs) == 0 and max(runs) > 0):
            self.problem("sweep runs per replica: %r (want exactly one sweeper)", runs)
        # a stop whose agent's final checkpoint failed fell back to the
        # uploader, which the simulated kubelet only pretends to run: say why
        fcp = [e for d in self.replicas for e in d.logs() if "final checkpoint failed" in str(e.get("msg"))]
        self.res["final_checkpoint_failures"] = len(fcp)
        if fcp:
            self.log("final checkpoint failures: %d, e.g. %s" % (len(fcp), json.dumps(fcp[:3])))
            for e in fcp[:3]:
                for path in self.agent_logs():
                    if str(e.get("repl")) in path:
                        with open(path, "rb") as f:
                            self.log("--- %s (tail)\n%s" % (path, f.read()[-3000:].decode("utf-8", "replace")))
        errs = [e for d in self.replicas for e in d.logs() if e.get("level") in ("error", "fatal")]
        self.res["error_log_lines"] = len(errs)
        if errs:
            self.log("error log lines: %d, first: %s" % (len(errs), json.dumps(errs[:3])))
        if self.watcher.errors:
            self.log("watch restarts: %d (%s)" % (len(self.watcher.errors), self.watcher.errors[-1]))

    def agent_logs(self):
        """The logs of every agent the simulated kubelet ran."""
        d = self.kc.kubelet.log_dir
        return sorted(os.path.join(d, f) for f in os.listdir(d) if f.startswith("agent-") and f.endswith(".log"))

    def run(self):
        self.sign_in_and_create()
        self.start_storm()
        self.write_files()
        self.stop_storm()
        self.sweepers()
        self.res["problems"] = self.problems
        return self.res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=int(os.environ.get("STORM_N", "500")))
    ap.add_argument("--start-timeout", type=int, default=600)
    ap.add_argument("--ready-now", action="store_true",
                    help="no agents: the simulated kubelet makes each pod Ready as soon as it sees it (status only); "
                         "the stop runs the uploader, whose ephemeral container exits 0 (no files to check)")
    args = ap.parse_args()
    t0 = time.monotonic()
    with Storm(args.n, start_timeout=args.start_timeout, agents=not args.ready_now) as s:
        res = s.run()
    res["total_seconds"] = round(time.monotonic() - t0, 1)
    print(json.dumps(res, indent=1))
    res_dir = os.environ.get("RESULTS_DIR") or os.path.join(HERE, "results")
    os.makedirs(res_dir, exist_ok=True)
    with open(os.path.join(res_dir, "storm-%d%s.json" % (args.n, "-ready-now" if args.ready_now else "")), "w") as f:
        json.dump(res, f, indent=1)
    sys.exit(1 if res["problems"] else 0)


if __name__ == "__main__":
    main()
