"""Sessions with the single-host runtime (lua/runtime/local.lua): the
runner (the agent, `devexd runner`, by default) runs as a child process of
devexd in a workspace materialised from storage. Start (the runner answers), a file written into
the workspace as the runner would, stop (file saved, process gone, directory
gone), start again (the file is back), a runner killed from outside (session
marked stopped, files saved), concurrent starts (one runner), delete."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd, RedisServer  # noqa: E402
from fakes.github_fake import GitHubFake  # noqa: E402
import test_repl  # noqa: E402
from test_auth import FRONTEND, GH_REDIRECT  # noqa: E402

JSON = {"Content-Type": "application/json"}


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open("/proc/%d/stat" % pid) as f:
        return f.read().split(")")[-1].split()[0] != "Z"


class LocalRuntimeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="devexd-local-")
        cls.store_dir = os.path.join(cls.tmp, "bucket")
        cls.ws_dir = os.path.join(cls.tmp, "workspaces")
        os.mkdir(cls.store_dir)
        cls.redis = RedisServer().__enter__()
        cls.gh = GitHubFake().__enter__()
        conf = {
            "environment": "production", "allow_insecure_http": True, "frontend_url": FRONTEND,
            "redis": {"url": cls.redis.url(), "timeout": 2},
            "github": cls.gh.config(GH_REDIRECT),
            "storage": {"driver": "fs", "dir": cls.store_dir},
            "runtime": {"driver": "local", "dir": cls.ws_dir, "stop_grace": 2},
        }
        cls.d = Devexd(app=None, threads=2, config=conf).__enter__()
        cls.d.sync_templates()

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "redis", None) is not None:
            harness.kill_session_runners(cls.redis)
        harness.stop_class_servers(cls, "d", "gh", "redis")

    def login(self):
        return test_repl.ReplTest.login(self)

    def create(self, b, **kw):
        return test_repl.ReplTest.create(self, b, **kw)

    def session(self, rid):
        flat = self.redis.call("HGETALL", "devex:activeSession:" + rid)
        return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}

    def state(self, rid):
        v = self.redis.call("HGET", "devex:replMeta:" + rid, "state")
        return v.decode() if v else None

    def saved(self, rid, rel):
        # the fs driver stores a segment starting with "." as "%2E..."
        rel = "/".join(("%2E" + seg[1:]) if seg.startswith(".") else seg for seg in rel.split("/"))
        path = os.path.join(self.store_dir, "repl", "gh_583231", rid, rel)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return f.read()

    def test_session_lifecycle(self):
        self.redis.call("FLUSHALL")
        b = self.login()
        st, repl = self.create(b, name="py", template="python")
        self.assertEqual(st, 201, repl)
        rid = repl["id"]
        r = b.get("/api/repl/session/" + rid)
        self.assertEqual(r.status, 200, r.body)
        body = r.json()
        self.assertEqual((body["replId"], body["replName"]), (rid, "py"))
        self.assertTrue(body["url"].endswith("/repl/%s/" % rid), body)
        sess = self.session(rid)
        pid, endpoint = int(sess["pid"]), sess["endpoint"]
        self.assertTrue(endpoint.startswith("127.0.0.1:"))
        with urllib.request.urlopen("http://%s/ping" % endpoint, timeout=5) as resp:
            self.assertEqual(resp.read(), b'"pong"\n')  # the agent
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            self.assertEqual(f.read().split(b"\0")[1:4], [b"runner", b"--dir", os.path.join(self.ws_dir, rid).encode()])
        self.assertEqual(self.state(rid), "running")
        self.assertIs(b.get("/api/repl").json()[0]["isActive"], True)
        # through devexd's proxy: the owner gets the runner's page, nobody else
        r = b.get("/repl/%s/ping" % rid)
        self.assertEqual((r.status, r.body), (200, b'"pong"\n'))
        self.assertEqual(b.get("/repl/%s" % rid).status, 308)
        self.assertEqual(self.d.get("/repl/%s/ping" % rid).status, 404)  # no session cookie
        other = test_repl.ReplTest.login(self, "Mallory", 666)
        r = other.get("/repl/%s/ping" % rid)
        self.assertEqual(r.status, 404, r.body)
        self.assertEqual(r.json(), {"error": "repl not found"})
        # starting again answers at once with the same session
        r2 = b.get("/api/repl/session/" + rid)
        self.assertEqual(r2.json(), body)
        self.assertEqual(int(self.session(rid)["pid"]), pid)
        # the runner writes a file, then the user stops the session
        ws = os.path.join(self.ws_dir, rid)
        with open(os.path.join(ws, "notes.txt"), "w") as f:
            f.write("hello from the workspace\n")
        os.makedirs(os.path.join(ws, "src"))
        with open(os.path.join(ws, "src", ".hidden"), "w") as f:
            f.write("dot\n")
        r = b.request("DELETE", "/api/repl/session/" + rid, headers=JSON)
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(self.saved(rid, "notes.txt"), "hello from the workspace\n")
        self.assertEqual(self.saved(rid, "src/.hidden"), "dot\n")
        self.assertFalse(pid_alive(pid), "the runner still runs after stop")
        self.assertFalse(os.path.exists(ws), "the workspace was not removed")
        self.assertEqual(self.state(rid), "stopped")
        self.assertEqual(self.session(rid), {})
        # start again: the file is back in the new workspace
        r = b.get("/api/repl/session/" + rid)
        self.assertEqual(r.status, 200, r.body)
        with open(os.path.join(ws, "notes.txt")) as f:
            self.assertEqual(f.read(), "hello from the workspace\n")
        # the runner is killed from outside: noticed, files saved, session stopped
        pid2 = int(self.session(rid)["pid"])
        with open(os.path.join(ws, "late.txt"), "w") as f:
            f.write("written before the crash\n")
        os.killpg(pid2, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while self.state(rid) != "stopped":
            self.assertLess(time.monotonic(), deadline, "the dead runner was not noticed")
            time.sleep(0.05)
        self.assertEqual(self.saved(rid, "late.txt"), "written before the crash\n")
        self.assertEqual(self.session(rid), {})
        # the session's event stream says so, as after a stop
        tail = [json.loads(e[1][1]) for e in self.redis.call("XREVRANGE", "devex:replEvents:" + rid, "+", "-",
                                                             "COUNT", 2)][::-1]
        self.assertEqual([(e["phase"], e.get("reason")) for e in tail],
                         [("stopping", "runner_gone"), ("stopped", "runner_gone")], tail)
        # delete removes everything
        r = b.request("DELETE", "/api/repl/" + rid, headers=JSON)
        self.assertEqual(r.status, 200, r.body)
        self.assertFalse(os.path.exists(os.path.join(self.store_dir, "repl", "gh_583231", rid)))

    def test_concurrent_starts_make_one_runner(self):
        self.redis.call("FLUSHALL")
        b = self.login()
        st, repl = self.create(b, name="twice", template="python")
        rid = repl["id"]
        out = []
        lock = threading.Lock()

        def start():
            r = b.get("/api/repl/session/" + rid)
            with lock:
                out.append((r.status, r.json()))

        ts = [threading.Thread(target=start) for _ in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        self.assertEqual([s for s, _ in out], [200, 200], out)
        self.assertEqual(out[0][1], out[1][1])
        ws = os.path.join(self.ws_dir, rid)
        runners = subprocess.run(["pgrep", "-f", "-x", ".* runner --dir %s .*" % ws], stdout=subprocess.PIPE, text=True).stdout.split()
        pid = int(self.session(rid)["pid"])
        self.assertEqual(runners, [str(pid)])
        self.assertTrue(pid_alive(pid))
        self.assertEqual(b.request("DELETE", "/api/repl/" + rid, headers=JSON).status, 200)
        self.assertFalse(pid_alive(pid))


if __name__ == "__main__":
    harness.main()
