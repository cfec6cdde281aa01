"""The background sweep (lua/repl/sweep.lua) with the single-host runtime: an
idle session is stopped (files saved); with two replicas on one Redis exactly
one sweeps, and when it dies the other takes over within the lock's expiry; a
devexd restarted after its runner died repairs the state (files saved,
session stopped)."""

import os
import signal
import sys
import tempfile
import shutil
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd, RedisServer, poll  # noqa: E402
from fakes.github_fake import GitHubFake  # noqa: E402
import test_repl  # noqa: E402
from test_auth import FRONTEND, GH_REDIRECT  # noqa: E402

JSON = {"Content-Type": "application/json"}



class SweepTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="devexd-sweep-")
        self.store_dir = os.path.join(self.tmp, "bucket")
        os.mkdir(self.store_dir)
        self.policy = os.path.join(self.tmp, "policy.lua")
        self.redis = RedisServer().__enter__()
        self.gh = GitHubFake().__enter__()

    def tearDown(self):
        harness.kill_session_runners(self.redis)
        self.gh.__exit__(None, None, None)
        self.redis.__exit__(None, None, None)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def devexd(self, idle=3600, interval=0.3, lifetime=28800, **kw):
        with open(self.policy, "w") as f:
            f.write("return { cleanup = { idle_limit = %s, sweep_interval = %s, stuck_after = 1, max_lifetime = %s } }\n"
                    % (idle, interval, lifetime))
        conf = {"environment": "production", "allow_insecure_http": True, "frontend_url": FRONTEND,
                "redis": {"url": self.redis.url(), "timeout": 2}, "github": self.gh.config(GH_REDIRECT),
                "storage": {"driver": "fs", "dir": self.store_dir},
                "runtime": {"driver": "local", "dir": os.path.join(self.tmp, "ws"), "stop_grace": 2},
                "policy": {"file": self.policy}}
        return Devexd(app=None, threads=2, config=conf, **kw)

    def state(self, rid):
        v = self.redis.call("HGET", "devex:replMeta:" + rid, "state")
        return v.decode() if v else None

    def start_session(self, d):
        self.d = d
        b = test_repl.ReplTest.login(self)
        st, repl = test_repl.ReplTest.create(self, b, name="s", template="python")
        self.assertEqual(st, 201, repl)
        r = b.get("/api/repl/session/" + repl["id"])
        self.assertEqual(r.status, 200, r.body)
        return b, repl["id"]

    def test_idle_session_is_stopped(self):
        with self.devexd(idle=1) as d:
            d.sync_templates()
            b, rid = self.start_session(d)
            ws = os.path.join(self.tmp, "ws", rid)
            with open(os.path.join(ws, "work.txt"), "w") as f:
                f.write("unsaved work\n")
            poll(lambda: self.state(rid) == "stopped", "the idle session to be stopped")
            with open(os.path.join(self.store_dir, "repl", "gh_583231", rid, "work.txt")) as f:
                self.assertEqual(f.read(), "unsaved work\n")
            self.assertFalse(os.path.exists(ws))
            d.wait_log(lambda e: e.get("msg") == "sweep stopped a session" and e.get("reason") == "idle",
                       what="the sweep's log line")

    def heartbeat(self, rid):
        """POST /api/runner/<id>/heartbeat with the token the runner was given."""
        pid = int(self.redis.call("HGET", "devex:activeSession:" + rid, "pid"))
        with open("/proc/%d/environ" % pid, "rb") as f:
            env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        token = env[b"RUNNER_TOKEN"].decode()
        r = self.d.request("POST", "/api/runner/%s/heartbeat" % rid, headers={"Authorization": "Bearer " + token})
        self.assertEqual(r.status, 200, r.body)

    def test_heartbeats_prevent_the_idle_stop(self):
        with self.devexd(idle=2) as d:
            d.sync_templates()
            b, rid = self.start_session(d)
            # three idle limits with a heartbeat every half second: still running
            until = time.time() + 6
            while time.time() < until:
                self.heartbeat(rid)
                time.sleep(0.5)
            self.assertEqual(self.state(rid), "running")
            self.assertFalse([e for e in d.logs() if e.get("msg") == "sweep stopped a session"])
            # without them it ends as idle
            poll(lambda: self.state(rid) == "stopped", "the idle session to be stopped", timeout=15)
            d.wait_log(lambda e: e.get("msg") == "sweep stopped a session" and e.get("reason") == "idle",
                       what="the sweep's log line")

    def test_max_lifetime_stops_a_busy_session(self):
        with self.devexd(idle=3600, lifetime=3) as d:
            d.sync_templates()
            b, rid = self.start_session(d)
            ws = os.path.join(self.tmp, "ws", rid)
            with open(os.path.join(ws, "late.txt"), "w") as f:
                f.write("saved at the lifetime stop\n")
            # busy all along (heartbeats, and the owner's keepalives), yet stopped at its lifetime
            deadline = time.time() + 20
            keepalives = 0
            while self.state(rid) == "running" and time.time() < deadline:
                try:
                    self.heartbeat(rid)
                except (OSError, ValueError, TypeError):
                    pass  # the runner is going away
                r = b.request("POST", "/api/repl/%s/keepalive" % rid, headers=JSON, body="{}")
                keepalives += r.status == 200
                time.sleep(0.3)
            self.assertGreater(keepalives, 0)
            poll(lambda: self.state(rid) == "stopped", "the session to end at its lifetime")
            d.wait_log(lambda e: e.get("msg") == "sweep stopped a session" and e.get("reason") == "lifetime",
                       what="the sweep's log line")
            with open(os.path.join(self.store_dir, "repl", "gh_583231", rid, "late.txt")) as f:
                self.assertEqual(f.read(), "saved at the lifetime stop\n")

    def test_one_sweeper_and_takeover(self):
        with self.devexd() as a, self.devexd() as b:
            time.sleep(1.5)  # several sweep intervals
            runs = lambda d: [e for e in d.logs() if e.get("msg") == "sweep"]
            ra, rb = runs(a), runs(b)
            self.assertTrue(ra or rb, "nobody swept")
            self.assertTrue(not ra or not rb, "both replicas swept (%d and %d runs)" % (len(ra), len(rb)))
            leader, other = (a, b) if ra else (b, a)
            leader.proc.send_signal(signal.SIGKILL)
            leader.wait_exit(10)
            leader.expect_exit = None
            mark = len(runs(other))
            poll(lambda: len(runs(other)) > mark + 1, "the other replica to take over", timeout=10)

    def test_restart_repairs_a_dead_runner(self):
        d = self.devexd(expect_exit=None).__enter__()
        try:
            d.sync_templates()
            b, rid = self.start_session(d)
            pid = int(self.redis.call("HGET", "devex:activeSession:" + rid, "pid"))
            with open(os.path.join(self.tmp, "ws", rid, "late.txt"), "w") as f:
                f.write("before the crash\n")
            d.proc.send_signal(signal.SIGKILL)
            d.wait_exit(10)
        finally:
            d.__exit__(None, None, None)
        os.killpg(pid, signal.SIGKILL)
        self.assertEqual(self.state(rid), "running")
        with self.devexd() as d2:
            poll(lambda: self.state(rid) == "stopped", "the restarted devexd to repair the session")
            with open(os.path.join(self.store_dir, "repl", "gh_583231", rid, "late.txt")) as f:
                self.assertEqual(f.read(), "before the crash\n")
            self.assertEqual(self.redis.call("EXISTS", "devex:activeSession:" + rid), 0)


if __name__ == "__main__":
    harness.main()
