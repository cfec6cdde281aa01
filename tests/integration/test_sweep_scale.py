"""The sweep's cost grows with what is due, not with every REPL (issue 17.5):
2,000 REPLs written straight into Redis in the store's format (200 users with
10 each), 100 of them running, of which 3 are past max_lifetime, 1 start
stuck in "starting" and 2 index entries whose REPL is gone. One sweep run
reads a handful of REPL records (report.examined), stops exactly the 3, repairs
the stuck start and drops the stale entries; the 97 others keep running. The
same data without the indexes (a deployment from before them) is indexed once
by the sweep, with the same result.

seed() is also what tests/bench/bench_sweep.py fills Redis with."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd, RedisServer, poll  # noqa: E402
from fakes.github_fake import GitHubFake  # noqa: E402
from test_auth import FRONTEND, GH_REDIRECT  # noqa: E402

P = "devex:"
LIFETIME = 3600


def rid(i):
    # the id format devexd makes (a UUID), which the local runtime checks
    return "repl-5ca1e000-0000-4000-8000-%012x" % i


def seed(redis, total, running, due, live_pid, due_pids=(), stuck=0, indexes=True, now=None, per_user=10,
         user_fmt="gh_scale%04d"):
    """Writes `total` REPLs in the format lua/repl/store.lua keeps (replMeta,
    userRepls, activeSession, sessions:activity and, with indexes, replIdx:*
    and sessions:started) in one MULTI/EXEC, so a sweep never sees half of it.
    REPLs 0..running-1 run (their session's pid: live_pid, or due_pids[i] for
    the first `due`, which are past LIFETIME); the next `stuck` are "starting"
    since long ago. Returns (due ids, stuck ids, running ids)."""
    now = int(now or time.time())
    cmds = [("MULTI",)]
    due_ids, stuck_ids, run_ids = [], [], []
    for i in range(total):
        r = rid(i)
        user = user_fmt % (i // per_user)
        state, since = "stopped", now - 86400
        if i < running:
            state, since = "running", now - 60
        elif i < running + stuck:
            state, since = "starting", now - 1000
            stuck_ids.append(r)
        cmds.append(("HSET", P + "replMeta:" + r, "id", r, "name", "n%d" % i, "user", user, "login", user,
                     "template", "scale", "state", state, "state_since", str(since),
                     "created_at", str(now - 86400 - i), "last_active", str(since),
                     "prefix", "repl/%s/%s/" % (user, r)))
        cmds.append(("SADD", P + "userRepls:" + user, r))
        if state == "running":
            started = now - LIFETIME - 100 if i < due else now - 60
            pid = due_pids[i] if i < due and i < len(due_pids) else live_pid
            cmds.append(("HSET", P + "activeSession:" + r, "started_at", str(started), "pid", str(pid),
                         "endpoint", "", "url", ""))
            cmds.append(("ZADD", P + "sessions:activity", str(now), r))
            (due_ids if i < due else run_ids).append(r)
            if indexes:
                cmds.append(("ZADD", P + "replIdx:running", str(since), r))
                cmds.append(("ZADD", P + "sessions:started", str(started), r))
        elif state == "starting" and indexes:
            cmds.append(("ZADD", P + "replIdx:transit", str(since), r))
    if indexes:
        cmds.append(("SET", P + "replIdx:version", "1"))
    else:
        cmds.append(("DEL", P + "replIdx:version", P + "replIdx:running", P + "replIdx:transit",
                     P + "replIdx:saveFailed", P + "sessions:started"))
    cmds.append(("EXEC",))
    with redis.client() as c:
        for cmd in cmds:  # pipelined: every command sent, then every reply read
            c.send(*cmd)
        replies = [c.read() for _ in cmds]
    failed = [x for x in replies[-1] or [] if isinstance(x, harness.RedisError)]
    if replies[-1] is None or failed:
        raise RuntimeError("seeding Redis failed: %r" % (failed or replies[-1]))
    return due_ids, stuck_ids, run_ids


class SweepScaleTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="devexd-sweep-scale-")
        self.redis = RedisServer().__enter__()
        self.gh = GitHubFake().__enter__()
        # the sessions' "runners": a process each for the due ones (a stop ends
        # its process group), one for all the others (it must stay alive)
        self.procs = [subprocess.Popen(["sleep", "300"], start_new_session=True) for _ in range(4)]

    def tearDown(self):
        for p in self.procs:
            p.kill()
            p.wait()
        self.gh.__exit__(None, None, None)
        self.redis.__exit__(None, None, None)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def devexd(self, sweep_interval=0.5):
        policy = os.path.join(self.tmp, "policy.lua")
        with open(policy, "w") as f:
            f.write("return { cleanup = { idle_limit = 7200, sweep_interval = %s, stuck_after = 60,"
                    " max_lifetime = %d } }\n" % (sweep_interval, LIFETIME))
        store_dir = os.path.join(self.tmp, "bucket")
        os.makedirs(store_dir, exist_ok=True)
        conf = {"environment": "production", "allow_insecure_http": True, "frontend_url": FRONTEND,
                "redis": {"url": self.redis.url(), "timeout": 5}, "github": self.gh.config(GH_REDIRECT),
                "storage": {"driver": "fs", "dir": store_dir},
                "runtime": {"driver": "local", "dir": os.path.join(self.tmp, "ws"), "stop_grace": 2},
                "policy": {"file": policy}}
        return Devexd(app=None, threads=2, config=conf)

    @staticmethod
    def sweeps(d, since):
        return [e for e in d.logs()[since:] if e.get("msg") == "sweep"]

    def state(self, r):
        v = self.redis.call("HGET", P + "replMeta:" + r, "state")
        return v.decode() if v else None

    def check_one_cycle(self, d, mark, due, stuck, running):
        try:
            poll(lambda: all(self.state(r) == "stopped" for r in due), "the sweep to stop the due sessions",
                 timeout=60)
            poll(lambda: all(self.state(r) == "created" for r in stuck), "the sweep to repair the stuck start",
                 timeout=60)
        except AssertionError as e:
            lines = [x for x in d.logs()[mark:] if "sweep" in str(x.get("msg")) or x.get("level") == "error"]
            raise AssertionError("%s; states %r; log %r" % (e, [self.state(r) for r in due + stuck], lines[-8:]))
        # two more runs: nothing else happens
        n = len(self.sweeps(d, mark))
        poll(lambda: len(self.sweeps(d, mark)) >= n + 2, "two more sweeps", timeout=30)
        runs = self.sweeps(d, mark)
        self.assertEqual(sum(e.get("expired", 0) for e in runs), len(due), runs)
        self.assertEqual(sum(e.get("retried", 0) for e in runs), len(stuck), runs)
        self.assertEqual(sum(e.get("errors", 0) for e in runs), 0, runs)
        self.assertEqual(sum(e.get("recovered", 0) for e in runs), 0, runs)
        # the cost shape: a run reads the REPLs that are due (here 3 stops and
        # a repair, each read once), never the 2,000; the others' sessions
        # only for the local runtime's liveness check, one pipelined read
        worst = max(e.get("examined", 0) for e in runs)
        self.assertGreaterEqual(worst, 1, runs)
        self.assertLessEqual(worst, 12, runs)
        self.assertLessEqual(max(e.get("sessions_read", 0) for e in runs), 101, runs)
        self.assertEqual(min(e.get("examined", 0) for e in runs[-2:]), 0, runs[-2:])
        for r in running:
            self.assertEqual(self.state(r), "running", r)
        for r in due:
            self.assertEqual(self.redis.call("EXISTS", P + "activeSession:" + r), 0)
        # the indexes hold exactly what is left
        members = lambda k: sorted(m.decode() for m in self.redis.call("ZRANGE", P + k, 0, -1))
        self.assertEqual(members("replIdx:running"), sorted(running))
        self.assertEqual(members("sessions:started"), sorted(running))
        self.assertEqual(members("replIdx:transit"), [])
        for p in self.procs[:len(due)]:
            self.assertIsNotNone(p.poll(), "a stop ended the due session's process")
        self.assertIsNone(self.procs[-1].poll())
        return runs

    def test_a_run_reads_what_is_due(self):
        with self.devexd() as d:
            d.wait_log(lambda e: e.get("msg") == "sweep", what="a first sweep", timeout=30)
            mark = d.mark()
            due, stuck, running = seed(self.redis, 2000, 100, 3, self.procs[-1].pid,
                                       [p.pid for p in self.procs[:3]], stuck=1)
            # index entries whose REPL is gone: the sweep drops them when it meets them
            self.redis.call("ZADD", P + "replIdx:transit", str(int(time.time()) - 1000), rid(99999))
            self.redis.call("ZADD", P + "replIdx:running", str(int(time.time()) - 1000), rid(99998))
            runs = self.check_one_cycle(d, mark, due, stuck, running)
            self.assertGreaterEqual(sum(e.get("healed", 0) for e in runs), 2, runs)
            self.assertFalse(any(e.get("indexed") for e in runs), runs)

    def test_upgrade_builds_the_indexes_once(self):
        with self.devexd() as d:
            d.wait_log(lambda e: e.get("msg") == "sweep", what="a first sweep", timeout=30)
            mark = d.mark()
            # a deployment from before the indexes: the same REPLs, no index, no marker
            due, stuck, running = seed(self.redis, 2000, 100, 3, self.procs[-1].pid,
                                       [p.pid for p in self.procs[:3]], stuck=1, indexes=False)
            d.wait_log(lambda e: e.get("msg") == "sweep: built the REPL indexes", since=mark, timeout=30,
                       what="the index build")
            runs = self.check_one_cycle(d, mark, due, stuck, running)
            built = [e for e in runs if e.get("indexed")]
            self.assertEqual([e["indexed"] for e in built], [2000], runs)
            self.assertEqual(self.redis.call("GET", P + "replIdx:version"), b"1")

    def test_repl_stuck_reads_the_indexes(self):
        """`devexd repl stuck` lists the REPLs in a transition from the
        indexes (no SCAN of the 2,000), flagged stops included; before the
        indexes exist it finds the same by a SCAN."""
        with self.devexd(sweep_interval=3600) as d:  # no sweep repairs them meanwhile
            for indexes in (True, False):
                with self.subTest(indexes=indexes):
                    self.redis.call("FLUSHALL")
                    _, stuck, _ = seed(self.redis, 2000, 100, 0, self.procs[-1].pid, stuck=2, indexes=indexes)
                    flagged = rid(1999)  # a stop whose saves failed: in replIdx:saveFailed, not in transit
                    self.redis.call("HSET", P + "replMeta:" + flagged, "state", "stopping", "save_failed", "1",
                                    "save_failures", "3", "state_since", str(int(time.time()) - 500))
                    if indexes:
                        self.redis.call("SADD", P + "replIdx:saveFailed", flagged)
                    scans = self.redis.command_calls("scan")
                    p = subprocess.run([harness.DEVEXD_BIN, "-c", d.conf_path, "-L", harness.LUA_DIR, "repl", "stuck"],
                                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
                    self.assertEqual(p.returncode, 0, p.stderr)
                    listed = [json.loads(line) for line in p.stdout.splitlines()]
                    self.assertEqual([(e["id"], e["state"], e["save_failed"]) for e in listed],
                                     sorted([(r, "starting", False) for r in stuck] + [(flagged, "stopping", True)]))
                    self.assertGreater(listed[0]["seconds"], 900)
                    if indexes:
                        self.assertEqual(self.redis.command_calls("scan"), scans)
                    else:
                        self.assertGreater(self.redis.command_calls("scan"), scans)


if __name__ == "__main__":
    harness.main()
