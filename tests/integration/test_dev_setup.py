"""Single-host mode with the shipped development configuration
(etc/devexd.dev.conf.lua): development sign-in by name, the built-in
dashboard, create, start (the runner is a child process), the runner's page
through /repl/<id>/, stop with the files saved, and the development sign-in
refused in a production configuration. scripts/run-dev.sh itself (with
DEVEXD_BIN: no install, no build) stops devexd on Ctrl-C and SIGTERM, then
the redis-server it started, and only that one."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import shutil
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd, RedisServer  # noqa: E402
from test_auth import Browser  # noqa: E402

DEV_CONF = os.path.join(harness.SOURCE_DIR, "etc", "devexd.dev.conf.lua")
RUN_DEV = os.path.join(harness.SOURCE_DIR, "scripts", "run-dev.sh")
JSON = {"Content-Type": "application/json"}


class DevSetupTest(unittest.TestCase):
    def test_single_host_flow(self):
        tmp = tempfile.mkdtemp(prefix="devexd-dev-")
        try:
            with RedisServer() as redis:
                conf = ('local c = dofile(%s)\n'
                        'c.server.listen = { { host = "127.0.0.1", port = @PORT@ } }\n'
                        'c.public_url = "http://localhost:@PORT@"\n'
                        'c.frontend_url = c.public_url\n'
                        'return c\n') % json.dumps(DEV_CONF)
                env = {"DEVEXD_DATA": tmp, "REDIS_URL": redis.url(), "ENVIRONMENT": "development"}
                with Devexd(app=None, threads=2, config_text=conf, env=env) as d:
                    d.sync_templates()
                    b = Browser(d)
                    self.assertEqual(b.get("/").header("Location"), "/dashboard")
                    r = b.get("/dashboard")
                    self.assertEqual(r.status, 200)
                    self.assertIn(b"/api/repl", r.body)
                    self.assertEqual(b.get("/auth/dev/login").status, 200)
                    r = b.request("POST", "/auth/dev/login", body="user=Ada",
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})
                    self.assertEqual(r.status, 302, r.body)
                    self.assertEqual(r.header("Location"), "http://localhost:%d/dashboard" % d.port)
                    self.assertEqual(b.get("/auth/me").json()["login"], "Ada")
                    form = {"Content-Type": "application/x-www-form-urlencoded"}
                    # signed in now: a form post without Origin is refused (CSRF), with ours it is checked
                    self.assertEqual(b.request("POST", "/auth/dev/login", body="user=x", headers=form).status, 403)
                    r = b.request("POST", "/auth/dev/login", body="user=../x",
                                  headers=dict(form, Origin="http://localhost:%d" % d.port))
                    self.assertEqual(r.status, 400)
                    r = b.request("POST", "/api/repl/new", headers=JSON,
                                  body=json.dumps({"template": "python", "replName": "first"}))
                    self.assertEqual(r.status, 201, r.body)
                    rid = r.json()["id"]
                    r = b.get("/api/repl/session/" + rid)
                    self.assertEqual(r.status, 200, r.body)
                    self.assertEqual(r.json()["url"], "http://localhost:%d/repl/%s/" % (d.port, rid))
                    r = b.get("/repl/%s/ping" % rid)  # the session's runner agent, through the gateway
                    self.assertEqual((r.status, r.body), (200, b'"pong"\n'))
                    with open(os.path.join(tmp, "workspaces", rid, "main.py")) as f:
                        self.assertIn("Hello from your Python REPL", f.read())
                    with open(os.path.join(tmp, "workspaces", rid, "saved.txt"), "w") as f:
                        f.write("kept\n")
                    r = b.request("DELETE", "/api/repl/session/" + rid, headers=JSON)
                    self.assertEqual(r.status, 200, r.body)
                    with open(os.path.join(tmp, "storage", "repl", "dev_ada", rid, "saved.txt")) as f:
                        self.assertEqual(f.read(), "kept\n")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def test_dev_login_refused_in_production(self):
        for env in ({"ENVIRONMENT": "production"}, {"PUBLIC_URL": "https://devex.example.com"}):
            p = subprocess.run([harness.DEVEXD_BIN, "--check", "-c", DEV_CONF, "-L", harness.LUA_DIR],
                               env=dict(os.environ, **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, timeout=30)
            self.assertNotEqual(p.returncode, 0, env)
            self.assertIn("dev_login is enabled", p.stderr)
            self.assertIn("refusing to start", p.stderr)


def _children(pid):
    """{pid: comm} of the processes whose parent is pid."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
            out[int(d)] = comm
    return out


def _gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


class RunDevScriptTest(unittest.TestCase):
    """scripts/run-dev.sh as a user runs it, with DEVEXD_BIN instead of the
    install and build steps, on ports of its own."""

    def run_dev(self, redis_port):
        """Starts run-dev.sh in a session of its own (a terminal's process
        group) and waits until devexd answers. Returns (proc, data dir)."""
        tmp = tempfile.mkdtemp(prefix="devexd-run-dev-")
        self.addCleanup(shutil.rmtree, tmp, True)
        data = os.path.join(tmp, "data")
        port, reservation = harness.reserve_port()
        env = dict(os.environ, DEVEXD_BIN=harness.DEVEXD_BIN, DEVEXD_DATA=data, PORT=str(port),
                   REDIS_URL="redis://127.0.0.1:%d/0" % redis_port, DEVEXD_THREADS="2",
                   ENVIRONMENT="development")
        env.pop("PUBLIC_URL", None)
        env.pop("DEVEXD_CONFIG", None)
        self.log_path = os.path.join(tmp, "run-dev.log")
        with open(self.log_path, "wb") as log:
            p = subprocess.Popen(["bash", RUN_DEV], env=env, stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)

        def kill_all():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        self.addCleanup(kill_all)
        deadline = time.monotonic() + 60
        try:
            while True:
                self.assertIsNone(p.poll(), "run-dev.sh exited with %s:\n%s" % (p.returncode, self.log()))
                self.assertLess(time.monotonic(), deadline, "devexd did not answer:\n" + self.log())
                try:
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                    c.request("GET", "/healthz")
                    status = c.getresponse().status
                    c.close()
                    if status == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.1)
        finally:
            reservation.close()
        return p, data

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def started_redis(self, p):
        """The pid of the redis-server run-dev.sh started (its child process)."""
        kids = _children(p.pid)
        redis = [pid for pid, comm in kids.items() if comm.startswith("redis-server")]
        self.assertEqual(len(redis), 1, kids)
        self.assertIn("starting redis-server", self.log())
        return redis[0]

    def assert_stopped_in_order(self, p, redis_pid, status=0):
        self.assertEqual(p.wait(30), status, self.log())
        deadline = time.monotonic() + 5
        while not _gone(redis_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertTrue(_gone(redis_pid), "the redis-server run-dev.sh started is still running")
        log = self.log()
        self.assertIn("stopping the redis-server it started (pid %d)" % redis_pid, log)
        if status == 0:
            self.assertLess(log.index('"devexd stopped"'), log.index("stopping the redis-server"), log)

    def test_ctrl_c_stops_devexd_then_the_redis_it_started(self):
        redis_port, reservation = harness.reserve_port()
        p, data = self.run_dev(redis_port)
        reservation.close()
        redis_pid = self.started_redis(p)
        # the runners' callback socket of the development configuration: /api/runner/ only
        c = http.client.HTTPConnection("localhost", timeout=10)
        c.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.sock.connect(os.path.join(data, "devexd.sock"))
        for path, status in (("/healthz", 404), ("/api/runner/repl-0/heartbeat", 401)):
            c.request("POST", path, body=b"")
            r = c.getresponse()
            r.read()
            self.assertEqual(r.status, status, path)
        c.close()
        os.killpg(p.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
        self.assert_stopped_in_order(p, redis_pid)
        self.assertIn("SIGINT: finishing in-flight requests", self.log())
        # stopped with SIGTERM, redis-server saved its data for the next run
        self.assertTrue(os.path.exists(os.path.join(data, "dump.rdb")))

    def test_signals_are_passed_on_to_devexd(self):
        redis_port, reservation = harness.reserve_port()
        p, _ = self.run_dev(redis_port)
        reservation.close()
        redis_pid = self.started_redis(p)
        os.kill(p.pid, signal.SIGHUP)  # the script only: devexd reloads and keeps serving
        deadline = time.monotonic() + 10
        while "SIGHUP: reloading the Lua app" not in self.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertIn("SIGHUP: reloading the Lua app", self.log())
        self.assertIsNone(p.poll())
        os.kill(p.pid, signal.SIGTERM)  # the script only, as a process manager would
        self.assert_stopped_in_order(p, redis_pid)
        self.assertIn("SIGTERM: finishing in-flight requests", self.log())

    def test_a_redis_that_cannot_save_is_killed(self):
        """redis-server does not exit on SIGTERM when it cannot save its data:
        run-dev.sh gives it 10 s, then kills it, rather than hang."""
        redis_port, reservation = harness.reserve_port()
        p, data = self.run_dev(redis_port)
        reservation.close()
        redis_pid = self.started_redis(p)
        shutil.rmtree(data)
        os.kill(p.pid, signal.SIGTERM)
        self.assert_stopped_in_order(p, redis_pid)
        self.assertIn("redis-server did not exit within 10 s", self.log())

    def test_devexd_dying_stops_the_redis_too(self):
        redis_port, reservation = harness.reserve_port()
        p, _ = self.run_dev(redis_port)
        reservation.close()
        redis_pid = self.started_redis(p)
        devexd = [pid for pid, comm in _children(p.pid).items() if comm == "devexd"]
        self.assertEqual(len(devexd), 1)
        os.kill(devexd[0], signal.SIGKILL)
        self.assert_stopped_in_order(p, redis_pid, status=128 + signal.SIGKILL)

    def test_a_running_redis_is_left_alone(self):
        with RedisServer() as redis:
            p, tmp = self.run_dev(redis.port)
            self.assertEqual([c for c in _children(p.pid).values() if c.startswith("redis")], [])
            self.assertNotIn("starting redis-server", self.log())
            os.kill(p.pid, signal.SIGTERM)
            self.assertEqual(p.wait(30), 0, self.log())
            self.assertNotIn("stopping the redis-server", self.log())
            self.assertEqual(redis.call("PING"), "PONG")


if __name__ == "__main__":
    harness.main()
