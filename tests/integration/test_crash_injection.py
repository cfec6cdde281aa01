"""Crashes in the middle of an operation (issue 17, section 4), with the
shipped app against the real API server harness (kube-apiserver, controller
manager, simulated kubelet), a Redis with an append-only file (a restart keeps
what was acknowledged, as a deployed Redis does) and the test S3 server
(storage driver s3).

One run: bring a REPL to the operation's starting point without faults, then
do the operation (create, start, stop or delete) through the API and, at a
random time in [0, the operation's usual duration], inject one fault:
  kill   SIGKILL devexd, start a new one on the same Redis/S3/cluster
  redis  SIGKILL redis-server and start it again (same port, same AOF)
  s3     stop the S3 server for a moment and start it again
Where the fault landed is recorded (the REPL's state, whether its Deployment
and an uploader existed). Then, once the sweep has run (policy: sweep every
0.5 s, stuck_after 6 s, orphan_grace 3 s; a start has 15 s to get its pod Ready,
so a start cut short is repaired 20 s after it began), these must hold (polled):
  - no REPL in creating/starting/stopping/deleting, none flagged save_failed;
  - every devexd-labelled Deployment belongs to a running REPL, every running
    REPL has its Deployment and session, no other REPL has a session;
  - every stored object under repl/ belongs to an existing REPL, and every
    REPL still has every template file (no lost file);
  - the quota set of the user holds exactly the user's REPLs;
  - no pod carries more than one uploader per stop attempt (at most
    policy.sync.max_attempts).

The suite runs RUNS (default 8: every operation under a kill, two under a
Redis restart, two under an S3 outage; about a minute and a half with the
cluster's start). tests/chaos/run_chaos.sh runs many more (RUNS=200) with
random operations and faults and prints the tally.
"""

import collections
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd, RedisServer  # noqa: E402
import test_s3  # noqa: E402
from test_lifecycle_failures import RestartableS3Server  # noqa: E402
import k8s_harness  # noqa: E402

JSON = {"Content-Type": "application/json"}
USER = "octocat"
OWNER = "dev_" + USER
NS = "chaos"
TEMPLATE = "python"
OPS = ("create", "start", "stop", "delete")
FAULTS = ("kill", "redis", "s3")
TRANSITIONAL = ("creating", "starting", "stopping", "deleting")
MAX_ATTEMPTS = 3  # policy.sync.max_attempts (default)

POLICY = """return {
  cleanup = { sweep_interval = 0.5, stuck_after = 6, orphan_grace = 3 },
  workload = { start_timeout = 15 },
  quota = { repls_per_user = 50, sessions_per_user = 50 },
  sync = { timeout = 8 },
}
"""


def s(v):
    return v.decode() if isinstance(v, bytes) else v


class Chaos:
    """The servers of a crash-injection loop and its runs."""

    def __init__(self, seed=None, log=None):
        self.rng = random.Random(seed)
        self.seed = seed
        self.out = log or (lambda msg: None)
        self.tmp = tempfile.mkdtemp(prefix="devexd-chaos-")
        self.kc = self.redis = self.s3 = self.d = None
        self.tally = collections.Counter()      # (op, fault) -> runs
        self.points = collections.Counter()     # injection points: (op, fault, where)
        self.est = {"create": 1.0, "start": 3.0, "stop": 3.0, "delete": 3.0}
        self.logs = []                          # every devexd's JSON log lines
        self.devexd_starts = 0
        self.history = []                       # one line per run, for a failure's message
        self.unavailable = 0.0                  # longest a fault-free operation met 503s first
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    # ---- servers ----

    def _start(self):
        test_s3.ensure_s3_server()
        # uploaders run 1.5 s so that a kill often lands while a stop waits for one
        self.kc = k8s_harness.KubeCluster(ephemeral_run_seconds=1.5).__enter__()
        self.kc.create_namespace(NS)
        self.kubeconfig = self.kc.write_kubeconfig(os.path.join(self.tmp, "kubeconfig"), namespace=NS)
        self.redis = RedisServer(args=["--appendonly", "yes", "--appendfsync", "always"]).__enter__()
        self.s3 = RestartableS3Server().start()
        self.policy = os.path.join(self.tmp, "policy.lua")
        with open(self.policy, "w") as f:
            f.write(POLICY)
        self.start_devexd()
        self.d.sync_templates()
        self.template_files = set(k[len("templates/%s/" % TEMPLATE):] for k in self.s3.keys("templates/%s/" % TEMPLATE))
        assert self.template_files, "the template sync stored nothing"

    def config(self):
        return {
            "environment": "development", "frontend_url": "http://localhost:3000",
            "redis": {"url": self.redis.url(), "timeout": 2},
            "dev_login": {"enabled": True},
            "policy": {"file": self.policy},
            "storage": {"driver": "s3"},
            "s3": self.s3.conf(max_attempts=2, timeout=3),
            "runtime": {"driver": "kubernetes"},
            "kube": {"config_path": self.kubeconfig, "namespace": NS},
        }

    def start_devexd(self):
        self.d = Devexd(app=None, threads=2, config=self.config(), expect_exit=None).__enter__()
        self.devexd_starts += 1
        self.cookie = None

    def stop_devexd(self, kill=False):
        d, self.d = self.d, None
        if d is None:
            return
        if kill and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
        self.logs.extend(d.logs())
        san = harness.sanitizer_errors(d.raw_log())
        d.__exit__(None, None, None)
        if san:
            raise AssertionError("sanitizer errors in devexd's log: %s" % " | ".join(san[:5]))

    def close(self):
        for step in (lambda: self.stop_devexd(), lambda: self.s3 and self.s3.close(),
                     lambda: self.redis and self.redis.__exit__(None, None, None),
                     lambda: self.kc and self.kc.__exit__(None, None, None)):
            try:
                step()
            except Exception as e:  # keep closing the rest
                sys.stderr.write("chaos close: %r\n" % (e,))
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- the API ----

    def login(self):
        r = self.d.request("POST", "/auth/dev/login", headers=JSON, body=json.dumps({"user": USER}))
        assert r.status == 302, (r.status, r.body)
        cookies = [v.split(";", 1)[0] for v in r.headers.get_all("Set-Cookie") or []]
        self.cookie = "; ".join(c for c in cookies if not c.endswith("="))

    def api(self, method, path, body=None, timeout=40):
        if self.cookie is None:
            self.login()
        h = dict(JSON, Cookie=self.cookie)
        r = self.d.request(method, path, headers=h, body=json.dumps(body) if body is not None else None,
                           timeout=timeout)
        return r.status, (r.json() if r.body and r.body[:1] in (b"{", b"[") else r.body)

    def op(self, name, rid=None):
        if name == "create":
            return self.api("POST", "/api/repl/new", {"template": TEMPLATE, "replName": "chaos"})
        if name == "start":
            return self.api("GET", "/api/repl/session/" + rid)
        if name == "stop":
            return self.api("DELETE", "/api/repl/session/" + rid)
        return self.api("DELETE", "/api/repl/" + rid)

    def timed(self, name, rid=None, want=200):
        t0 = time.monotonic()
        st, body = self.op(name, rid)
        # right after a Redis restart a worker whose connection is still
        # coming back answers 503 (devex.redis never waits for a reconnect):
        # noted, and asked again for up to 15 s
        waited = 0.0
        while st == 503 and time.monotonic() - t0 < 15:
            time.sleep(0.2)
            st, body = self.op(name, rid)
            waited = time.monotonic() - t0
        if st != want:
            tail = self.d.raw_log()[-4000:] if self.d else ""
            raise AssertionError("%s %s without a fault: %s %r\n--- devexd log ---\n%s" % (name, rid, st, body, tail))
        self.unavailable = max(self.unavailable, waited)
        if waited:
            return body  # its duration is not the operation's
        self.est[name] = 0.7 * self.est[name] + 0.3 * (time.monotonic() - t0)
        return body

    # ---- what Redis, the cluster and S3 hold ----

    def metas(self):
        out = {}
        for k in self.redis.call("KEYS", "devex:replMeta:*"):
            h = self.redis.call("HGETALL", k)
            out[s(k).split(":", 2)[2]] = {s(h[i]): s(h[i + 1]) for i in range(0, len(h), 2)}
        return out

    def deployments(self):
        api = self.kc.client(user="admin")
        items = api.get(k8s_harness.api_path("apps/v1", "deployments", NS),
                        query={"labelSelector": "app.kubernetes.io/managed-by=devexd"})["items"]
        return {d["metadata"]["labels"].get("devex.io/repl"): d for d in items}

    def pods(self):
        api = self.kc.client(user="admin")
        return api.get(k8s_harness.api_path("v1", "pods", NS),
                       query={"labelSelector": "app.kubernetes.io/managed-by=devexd"})["items"]

    def where(self, rid):
        """The injection point: the REPL's state and what the cluster held."""
        try:
            st = s(self.redis.call("HGET", "devex:replMeta:" + rid, "state")) if rid else None
        except Exception:
            st = "?"
        try:
            deps = self.deployments()
            dep = "deployment" if rid in deps else "no-deployment"
            ups = [c for p in self.pods() if p["metadata"]["labels"].get("devex.io/repl") == rid
                   for c in (p["spec"].get("ephemeralContainers") or [])]
            up = "+uploader" if ups else ""
        except Exception:
            dep, up = "?", ""
        return "%s/%s%s" % (st or "none", dep, up)

    def violations(self):
        v = []
        metas = self.metas()
        for rid, m in metas.items():
            if m.get("state") in TRANSITIONAL:
                v.append("%s stuck in %s" % (rid, m.get("state")))
            if m.get("save_failed"):
                v.append("%s flagged save_failed: %s" % (rid, m.get("save_error")))
        members = set(s(x) for x in self.redis.call("SMEMBERS", "devex:userRepls:" + OWNER))
        mine = set(rid for rid, m in metas.items() if m.get("user") == OWNER)
        if members != mine:
            v.append("quota set %s != REPLs %s" % (sorted(members), sorted(mine)))
        for k in self.redis.call("KEYS", "devex:userRepls:*"):
            if s(k) != "devex:userRepls:" + OWNER:
                v.append("unexpected quota set %s" % s(k))
        deps = self.deployments()
        for rid, d in deps.items():
            if d["metadata"].get("deletionTimestamp"):
                v.append("deployment of %s still being deleted" % rid)
            elif metas.get(rid, {}).get("state") != "running":
                v.append("orphan deployment of %s (%s)" % (rid, metas.get(rid, {}).get("state")))
        for rid, m in metas.items():
            has_sess = self.redis.call("EXISTS", "devex:activeSession:" + rid) == 1
            if m.get("state") == "running":
                if rid not in deps:
                    v.append("running %s has no deployment" % rid)
                if not has_sess:
                    v.append("running %s has no session" % rid)
            elif has_sess:
                v.append("%s is %s but has a session" % (rid, m.get("state")))
        for p in self.pods():
            ups = [c["name"] for c in (p["spec"].get("ephemeralContainers") or []) if c["name"].startswith("save-")]
            if len(ups) > MAX_ATTEMPTS:
                v.append("pod %s carries %d uploaders" % (p["metadata"]["name"], len(ups)))
        stored = collections.defaultdict(set)
        for k in self.s3.keys("repl/"):
            parts = k.split("/", 3)
            if len(parts) == 4:
                stored[parts[2]].add(parts[3])
        for rid, files in stored.items():
            if rid not in metas:
                v.append("%d stored objects of %s, which is not a REPL" % (len(files), rid))
        for rid in metas:
            lost = self.template_files - stored.get(rid, set())
            if lost:
                v.append("%s lost %d files (%s...)" % (rid, len(lost), sorted(lost)[0]))
        return v

    def settle(self, timeout=90):
        deadline = time.monotonic() + timeout
        while True:
            try:
                v = self.violations()
                if not v:  # and devexd serves again (its Redis connection back after a restart)
                    st, body = self.api("GET", "/api/repl", timeout=10)
                    if st != 200:
                        v = ["GET /api/repl answers %s %r" % (st, body)]
            except Exception as e:  # a server coming back
                v = ["cannot read the state: %r" % (e,)]
            if not v:
                return
            if time.monotonic() > deadline:
                tail = self.d.raw_log()[-6000:] if self.d else ""
                raise AssertionError("after the sweep: " + "; ".join(v) + "\n--- runs (seed %r) ---\n" % self.seed
                                     + "\n".join(self.history) + "\n--- devexd log ---\n" + tail)
            time.sleep(0.3)

    # ---- one run ----

    def prepare(self, op):
        """A REPL at the operation's starting point (no fault), its id."""
        if op == "create":
            # keep the store small: delete what earlier runs left beyond two REPLs
            for rid in sorted(self.metas())[:-2]:
                self.timed("delete", rid)
            return None
        rid = self.timed("create", want=201)["id"]
        if op == "stop" or (op == "delete" and self.rng.random() < 0.5):
            self.timed("start", rid)
        return rid

    def inject(self, fault):
        if fault == "kill":
            self.stop_devexd(kill=True)
            self.start_devexd()
        elif fault == "redis":
            self.redis.stop(kill=True)
            time.sleep(self.rng.uniform(0, 1.0))
            self.redis.start()
        else:
            self.s3.stop()
            time.sleep(self.rng.uniform(0.5, 2.0))
            self.s3.start()

    def run(self, op, fault):
        rid = self.prepare(op)
        delay = self.rng.uniform(0, self.est[op])
        result = {}

        def do():
            try:
                result["answer"] = self.op(op, rid)
            except Exception as e:  # the connection died with devexd
                result["answer"] = ("error", repr(e))

        d_before = self.d
        t = threading.Thread(target=do)
        t.start()
        t.join(delay)
        point = self.where(rid) if rid else ("done" if not t.is_alive() else "in-flight")
        self.inject(fault)
        t.join(60)
        if t.is_alive():
            raise AssertionError("%s did not answer within 60 s of the fault" % op)
        del d_before
        self.tally[(op, fault)] += 1
        self.points[(op, fault, point)] += 1
        self.history.append("run %d: %s %s under %s at %.2fs (%s): %r" % (
            sum(self.tally.values()), op, rid, fault, delay, point, result.get("answer", ("?",))[0]))
        self.out(self.history[-1])
        self.settle()

    def report(self):
        lines = ["runs: %d (seed %r), devexd starts: %d, longest run of 503s before a fault-free operation: %.1f s"
                 % (sum(self.tally.values()), self.seed, self.devexd_starts, self.unavailable)]
        for (op, fault), n in sorted(self.tally.items()):
            lines.append("  %-6s %-5s %d" % (op, fault, n))
        lines.append("injection points (operation, fault, REPL state/cluster at the fault): %d distinct"
                     % len(self.points))
        for (op, fault, where), n in sorted(self.points.items()):
            lines.append("  %-6s %-5s %-36s %d" % (op, fault, where, n))
        logs = self.logs + (self.d.logs() if self.d else [])
        for msg in ("sweep repaired a stuck repl", "sweep removed an orphan workload",
                    "repl stop: waiting for the uploader of an earlier attempt", "sweep recovered a session whose runner is gone"):
            lines.append("  log %r: %d" % (msg, sum(1 for e in logs if e.get("msg") == msg)))
        return "\n".join(lines)


class CrashInjectionTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        seed = int(os.environ.get("CHAOS_SEED", "0")) or int(time.time())
        cls.chaos = Chaos(seed=seed, log=lambda m: sys.stderr.write(m + "\n") if os.environ.get("CHAOS_VERBOSE") else None)

    @classmethod
    def tearDownClass(cls):
        cls.chaos.close()

    def test_every_operation_survives_a_fault_at_a_random_point(self):
        c = self.chaos
        runs = int(os.environ.get("RUNS", "8"))
        plan = [(op, "kill") for op in OPS] + [("stop", "redis"), ("create", "redis"), ("delete", "s3"), ("create", "s3")]
        for i in range(runs):
            if i < len(plan):
                op, fault = plan[i]
            else:
                op, fault = c.rng.choice(OPS), c.rng.choice(FAULTS)
            c.run(op, fault)
        sys.stderr.write(c.report() + "\n")
        self.assertEqual(sum(c.tally.values()), runs)

    # ---- stuck saves (issue 17.4, "Stuck stops") ----

    def cli(self, *args):
        c = self.chaos
        return subprocess.run([harness.DEVEXD_BIN, "-c", c.d.conf_path, "-L", harness.LUA_DIR] + list(args),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)

    def meta(self, rid):
        return self.chaos.metas().get(rid) or {}

    def uploaders(self, rid):
        return [c["name"] for p in self.chaos.pods() if p["metadata"]["labels"].get("devex.io/repl") == rid
                for c in (p["spec"].get("ephemeralContainers") or []) if c["name"].startswith("save-")]

    def metric(self, name):
        r = self.chaos.d.request("GET", "/metrics")
        self.assertEqual(r.status, 200)
        for line in r.body.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def running_repl(self):
        c = self.chaos
        rid = c.timed("create", want=201)["id"]
        c.timed("start", rid)
        return rid

    def test_a_save_that_keeps_failing_is_flagged_then_resolved(self):
        c = self.chaos
        rid, rid2 = self.running_repl(), self.running_repl()
        rule = c.kc.kubelet.ephemeral_exit_code(3, namespace=NS)
        try:
            for r in (rid, rid2):
                st, body = c.op("stop", r)
                self.assertEqual(st, 502, body)
                self.assertIn("exit code 3", body["error"])
            # the user's stop and the sweep's retries: max_attempts failures, then flagged
            for r in (rid, rid2):
                harness.poll(lambda: self.meta(r).get("save_failed") == "1", "the REPL flagged save_failed", timeout=90)
                self.assertEqual(self.meta(r)["save_failures"], str(MAX_ATTEMPTS))
                self.assertIn("exit code 3", self.meta(r)["save_error"])
            # flagged: no more retries, so no more uploaders on the pod
            since = len(c.d.logs())
            c.d.wait_log(lambda e: e.get("msg") == "sweep" and e.get("save_failed") == 2, count=8, since=since,
                         timeout=60, what="eight sweeps counting both flagged REPLs")
            self.assertEqual(len(self.uploaders(rid)), MAX_ATTEMPTS)
            self.assertEqual(self.meta(rid)["state"], "stopping")
            self.assertEqual(self.metric("devex_repl_save_failed"), 2)
            self.assertGreaterEqual(self.metric("devex_repl_save_failures_total"), 2 * MAX_ATTEMPTS)
            # the operator sees them
            p = self.cli("repl", "stuck")
            self.assertEqual(p.returncode, 0, p.stderr)
            listed = {e["id"]: e for e in map(json.loads, p.stdout.splitlines())}
            self.assertTrue(listed[rid]["save_failed"])
            self.assertEqual((listed[rid]["state"], listed[rid]["save_failures"]), ("stopping", MAX_ATTEMPTS))
            # --discard asks for --yes first and changes nothing without it
            p = self.cli("repl", "resolve", rid, "--discard")
            self.assertEqual(p.returncode, 2, p.stderr)
            self.assertIn("WITHOUT saving", p.stderr)
            self.assertEqual(self.meta(rid)["state"], "stopping")
            self.assertEqual(self.cli("repl", "resolve", rid, "--bogus").returncode, 1)
            self.assertEqual(self.cli("repl", "resolve", "not-an-id", "--retry").returncode, 1)
            # --retry while the upload still fails: refused, still stopping
            p = self.cli("repl", "resolve", rid2, "--retry")
            self.assertEqual(p.returncode, 1, p.stdout)
            self.assertIn("exit code 3", p.stderr)
            p = self.cli("repl", "resolve", rid, "--discard", "--yes")
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(json.loads(p.stdout), {"id": rid, "state": "stopped", "saved": False})
            m = self.meta(rid)
            self.assertEqual(m["state"], "stopped")
            self.assertNotIn("save_failed", m)
        finally:
            c.kc.kubelet.remove_rule(rule)
        # the upload works again: --retry saves and stops
        p = self.cli("repl", "resolve", rid2, "--retry")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(json.loads(p.stdout), {"id": rid2, "state": "stopped", "saved": True})
        self.assertNotIn("save_failures", self.meta(rid2))
        c.settle()
        for r in (rid, rid2):
            c.timed("delete", r)

    def test_a_retried_stop_waits_for_the_running_uploader(self):
        c = self.chaos
        rid = self.running_repl()
        rule = c.kc.kubelet.add_rule({k8s_harness.EPHEMERAL_RUN_SECONDS: "10"}, namespace=NS)
        try:
            def stop():
                try:
                    c.op("stop", rid)
                except OSError:  # devexd is killed under it, on purpose
                    pass
            t = threading.Thread(target=stop, daemon=True)
            t.start()
            harness.poll(lambda: self.uploaders(rid), "the stop's uploader", timeout=30)
            c.stop_devexd(kill=True)  # while the stop waits for it
            c.start_devexd()
            seen = set()

            def stopped():
                seen.update(self.uploaders(rid))
                return self.meta(rid).get("state") == "stopped"
            harness.poll(stopped, "the sweep to finish the stop", timeout=90, interval=0.2)
            t.join(30)
        finally:
            c.kc.kubelet.remove_rule(rule)
        self.assertEqual(len(seen), 1, seen)
        c.d.wait_log(lambda e: e.get("msg") == "repl stop: waiting for the uploader of an earlier attempt"
                     and e.get("repl") == rid, what="the retried stop reusing the uploader")
        c.settle()
        c.timed("delete", rid)

    def test_a_stop_longer_than_stuck_after_keeps_its_lock(self):
        """The stop lock is renewed while its stop is at work: a stop longer
        than cleanup.stuck_after (6 s here, the lock's lifetime should its
        holder die) is not joined by a second stop, the user's or the
        sweep's, which would save while the first removes. (Its uploader runs
        10 s, past sync.timeout: the stop answers 504 and the sweep finishes
        it with the same uploader.)"""
        c = self.chaos
        rid = self.running_repl()
        rule = c.kc.kubelet.add_rule({k8s_harness.EPHEMERAL_RUN_SECONDS: "10"}, namespace=NS)
        first, seen = {}, set()
        try:
            t = threading.Thread(target=lambda: first.update(r=c.op("stop", rid)), daemon=True)
            t.start()
            seen.update(harness.poll(lambda: self.uploaders(rid), "the stop's uploader", timeout=30))
            lock = c.redis.call("GET", "devex:stopLock:" + rid)
            self.assertTrue(lock)
            # past stuck_after (the lock was taken before the uploader was
            # added): its first lifetime is over; the stop itself ends at
            # sync.timeout (8 s) after the add
            time.sleep(6.6)
            self.assertNotIn("r", first, "the first stop ended too early for this test")
            # still the first stop's lock (renewed, not expired and taken by the sweep's retry)
            self.assertEqual(c.redis.call("GET", "devex:stopLock:" + rid), lock)
            joined = [e for e in c.d.logs() if e.get("repl") == rid
                      and e.get("msg") == "repl stop: waiting for the uploader of an earlier attempt"]
            self.assertEqual(joined, [])
            st, body = c.op("stop", rid)
            self.assertEqual(st, 409, body)
            t.join(60)
            self.assertIn(first["r"][0], (200, 504), first)

            def stopped():
                seen.update(self.uploaders(rid))
                return self.meta(rid).get("state") == "stopped"
            harness.poll(stopped, "the stop to finish", timeout=90, interval=0.2)
        finally:
            c.kc.kubelet.remove_rule(rule)
        self.assertEqual(len(seen), 1, seen)
        c.settle()
        c.timed("delete", rid)

if __name__ == "__main__":
    harness.main()
