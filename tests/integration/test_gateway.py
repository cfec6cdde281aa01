"""The runner gateway (lua/routes/gateway.lua) with real runners: the
single-host runtime runs the runner stand-in (runner_standin.py, what the
simulated kubelet runs for pods) as each session's runner, and devexd answers
the runner domain itself.

- The owner reaches the runner over HTTP and WebSocket at
  <runner domain>/<replId>/... with the prefix stripped; the runner never
  sees the Cookie or Authorization header.
- Another signed-in user, no cookie, a made-up cookie, a wrong Host, a REPL
  that does not exist: the same 404. A WebSocket handshake with a foreign
  Origin (or none): 403; a POST with a foreign Origin: 403.
- Activity: with idle_limit 4 s, a WebSocket that exchanges a message every
  second for 3x idle_limit keeps its session running, and Redis sees at most
  one activity write per activity_interval for it however many frames move;
  a session with a silent WebSocket open is stopped by the sweep, its files
  saved first.
"""

import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd, RedisServer  # noqa: E402
from test_auth import Browser  # noqa: E402
from test_proxy import ws_frame, ws_open, ws_read_frame  # noqa: E402

DEV_CONF = os.path.join(harness.SOURCE_DIR, "etc", "devexd.dev.conf.lua")
STANDIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runner_standin.py")
RUNNER_DOMAIN = "runner.devex.test"
JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
ORIGIN = "http://app.devex.test"
IDLE_LIMIT = 4
ACTIVITY_INTERVAL = 1


class Monitor(threading.Thread):
    """Redis MONITOR: every command the server runs (script commands included)."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(b"MONITOR\r\n")
        self.lines = []
        self.lock = threading.Lock()
        self.start()

    def run(self):
        buf = b""
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return
                buf += data
                *done, buf = buf.split(b"\r\n")
                with self.lock:
                    self.lines.extend(done)
        except OSError:
            return

    def count(self, *needles):
        with self.lock:
            return sum(1 for line in self.lines if all(n in line for n in needles))

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def standin_devexd(cls, prefix, policy_text, templates=("standin",), extra_conf=""):
    """For a test class: a development devexd (cls.d, 2 workers, frontend
    ORIGIN) on the local runtime with its own Redis (cls.redis), the policy
    file policy_text and the templates (a README each) synced, all under
    cls.tmp (named from prefix); extra_conf: Lua lines that change the config
    `c`. At the class's cleanup the sessions' runners are killed and cls.tmp
    removed."""
    cls.tmp = tempfile.mkdtemp(prefix=prefix)
    cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
    policy = os.path.join(cls.tmp, "policy.lua")
    with open(policy, "w") as f:
        f.write(policy_text)
    for t in templates:
        os.makedirs(os.path.join(cls.tmp, "templates", t))
        with open(os.path.join(cls.tmp, "templates", t, "README.md"), "w") as f:
            f.write("workspace\n")
    cls.redis = cls.enterClassContext(RedisServer())
    conf = ('local c = dofile(%s)\n'
            'c.server.listen = { { host = "127.0.0.1", port = @PORT@ } }\n'
            'c.public_url = "http://localhost:@PORT@"\n'
            'c.frontend_url = "%s"\n'
            '%s'
            'c.policy = { file = %s }\n'
            'return c\n') % (json.dumps(DEV_CONF), ORIGIN, extra_conf, json.dumps(policy))
    env = {"DEVEXD_DATA": os.path.join(cls.tmp, "data"), "REDIS_URL": cls.redis.url(),
           "ENVIRONMENT": "development"}
    cls.d = cls.enterClassContext(Devexd(app=None, threads=2, config_text=conf, env=env))
    cls.addClassCleanup(harness.kill_session_runners, cls.redis)
    cls.d.sync_templates(os.path.join(cls.tmp, "templates"))


class GatewayTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        standin_devexd(
            cls, "devexd-gateway-",
            "return {\n"
            "  templates = { catalogue = { standin = { image = 'runner-standin', port = 8081,\n"
            "    agent = false, local_command = { 'sh', '-c', 'exec python3 %s --host 127.0.0.1 --port \"$PORT\"' } } } },\n"
            "  cleanup = { idle_limit = %d, activity_interval = %d, sweep_interval = 1 },\n"
            "}\n" % (STANDIN, IDLE_LIMIT, ACTIVITY_INTERVAL),
            extra_conf='c.runner = { domain = "%s", exposure = "gateway", scheme = "http" }\n' % RUNNER_DOMAIN)
        cls.origin = ORIGIN

    # ---- helpers ----

    def sign_in(self, user):
        b = Browser(self.d)
        r = b.request("POST", "/auth/dev/login", body="user=" + user, headers=FORM)
        self.assertEqual(r.status, 302, r.body)
        return b

    def start_repl(self, b, name):
        r = b.request("POST", "/api/repl/new", headers=JSON,
                      body=json.dumps({"template": "standin", "replName": name}))
        self.assertEqual(r.status, 201, r.body)
        rid = r.json()["id"]
        self.addCleanup(lambda: b.request("DELETE", "/api/repl/session/" + rid))
        r = b.request("GET", "/api/repl/session/" + rid)
        self.assertEqual(r.status, 200, r.body)
        return rid, r.json()

    def gw(self, method, path, cookie=None, host=RUNNER_DOMAIN, headers=None, body=None):
        h = {"Host": host}
        if cookie:
            h["Cookie"] = cookie
        h.update(headers or {})
        return self.d.request(method, path, headers=h, body=body)

    def ws(self, path, cookie=None, origin="default", host=RUNNER_DOMAIN):
        extra = ""
        if origin == "default":
            origin = self.origin
        if origin:
            extra += "Origin: %s\r\n" % origin
        if cookie:
            extra += "Cookie: %s\r\n" % cookie
        return ws_open(self.d.port, path, host, extra)

    def last_request(self, cookie, rid):
        r = self.gw("GET", "/%s/_standin/last-request" % rid, cookie)
        self.assertEqual(r.status, 200, r.body)
        return r.json()

    def state(self, rid):
        v = self.redis.call("HGET", "devex:replMeta:" + rid, "state")
        return v.decode() if v else None

    # ---- tests ----

    def test_owner_reaches_the_runner_and_nobody_else_does(self):
        alice = self.sign_in("alice")
        rid, started = self.start_repl(alice, "gw-http")
        self.assertEqual(started["url"], "http://%s/%s/" % (RUNNER_DOMAIN, rid))
        cookie = alice.cookie_header()
        r = self.gw("GET", "/%s/ping" % rid, cookie, headers={"Authorization": "Bearer secret-of-alice"})
        self.assertEqual((r.status, r.json()), (200, {"message": "pong"}))
        seen = self.last_request(cookie, rid)
        self.assertEqual(seen["path"], "/ping")  # prefix stripped
        self.assertNotIn("cookie", seen["headers"])
        self.assertNotIn("authorization", seen["headers"])
        self.assertEqual(seen["headers"].get("x-devex-repl"), rid)
        r = self.gw("GET", "/%s/user-app/index.html?x=1" % rid, cookie)
        self.assertEqual(r.status, 200)
        self.assertIn(b"user app", r.body)
        self.assertEqual(self.last_request(cookie, rid)["path"], "/user-app/index.html?x=1")
        # the runner's own 404 passes through
        self.assertEqual(self.gw("GET", "/%s/" % rid, cookie).status, 404)
        # /<id> without the slash: a redirect to the prefix
        r = self.gw("GET", "/" + rid, cookie)
        self.assertEqual((r.status, r.header("Location")), (308, "/%s/" % rid))
        # devexd's own host keeps /repl/<id>/
        r = self.d.request("GET", "/repl/%s/ping" % rid, headers={"Cookie": cookie})
        self.assertEqual(r.status, 200)

        def refused(r):
            self.assertEqual((r.status, r.json()), (404, {"error": "repl not found"}))

        mallory = self.sign_in("mallory")
        refused(self.gw("GET", "/%s/ping" % rid, mallory.cookie_header()))
        refused(self.gw("GET", "/%s/ping" % rid))
        refused(self.gw("GET", "/%s/ping" % rid, "devex_session=" + "A" * 43))
        refused(self.gw("GET", "/repl-00000000-0000-4000-8000-000000000000/ping", cookie))
        refused(self.gw("GET", "/../etc/passwd", cookie))
        # the same path on the API host is not the gateway
        r = self.gw("GET", "/%s/ping" % rid, cookie, host="localhost:%d" % self.d.port)
        self.assertEqual(r.status, 404)
        self.assertEqual(r.json(), {"error": "not found"})
        # the API is not on the runner domain
        self.assertEqual(self.gw("GET", "/api/repl", cookie).status, 404)
        # a write from a foreign page
        r = self.gw("POST", "/%s/ping" % rid, cookie, headers={"Origin": "https://evil.example"}, body=b"x")
        self.assertEqual(r.status, 403)

    def test_mcp_path_reaches_the_sessions_mcp_sidecar(self):
        """/mcp/<replId>/... goes to the session's mcp_endpoint (what the
        Kubernetes driver records for a pod with the MCP sidecar; here a second
        stand-in, recorded by hand), owner only; a session without one: 404."""
        import subprocess
        carol = self.sign_in("carol")
        rid, _ = self.start_repl(carol, "gw-mcp")
        cookie = carol.cookie_header()
        self.assertEqual(self.gw("GET", "/mcp/%s/ping" % rid, cookie).json(), {"error": "this repl has no MCP server"})
        port = harness.free_port()
        mcp = subprocess.Popen([sys.executable, STANDIN, "--host", "127.0.0.1", "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(mcp.wait)
        self.addCleanup(mcp.terminate)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                self.assertLess(time.monotonic(), deadline, "the MCP stand-in did not start")
                time.sleep(0.05)
        self.redis.call("HSET", "devex:activeSession:" + rid, "mcp_endpoint", "127.0.0.1:%d" % port)
        r = self.gw("GET", "/mcp/%s/ping?from=mcp" % rid, cookie)
        self.assertEqual((r.status, r.json()), (200, {"message": "pong"}))
        seen = self.gw("GET", "/mcp/%s/_standin/last-request" % rid, cookie).json()
        self.assertEqual(seen["path"], "/ping?from=mcp")
        self.assertNotIn("cookie", seen["headers"])
        self.assertEqual(self.gw("GET", "/mcp/%s/ping" % rid, self.sign_in("dave").cookie_header()).status, 404)
        # the runner itself did not get it
        self.assertNotEqual(self.last_request(cookie, rid)["path"], "/ping?from=mcp")

    def test_websocket_owner_only_and_origin_checked(self):
        alice = self.sign_in("alice2")
        rid, _ = self.start_repl(alice, "gw-ws")
        cookie = alice.cookie_header()
        path = "/%s/api/v1/repl/ws" % rid
        s, _, head, read = self.ws(path, cookie)
        try:
            self.assertTrue(head.startswith("HTTP/1.1 101"), head)
            for msg in (b"hello runner", b"y" * 100000):
                s.sendall(ws_frame(1, msg, mask=True))
                self.assertEqual(ws_read_frame(read), (1, msg))
        finally:
            s.close()
        hs = self.last_request(cookie, rid)
        self.assertEqual(hs["path"], "/api/v1/repl/ws")
        self.assertNotIn("cookie", hs["headers"])

        def status_of(*args, **kw):
            s, _, head, _ = self.ws(*args, **kw)
            s.close()
            return head.split("\r\n")[0]

        self.assertTrue(status_of(path, cookie, origin="https://evil.example").startswith("HTTP/1.1 403"))
        self.assertTrue(status_of(path, cookie, origin=None).startswith("HTTP/1.1 403"))
        self.assertTrue(status_of(path, self.sign_in("eve").cookie_header()).startswith("HTTP/1.1 404"))
        self.assertTrue(status_of(path).startswith("HTTP/1.1 404"))

    def test_traffic_keeps_a_session_and_silence_ends_one(self):
        bob = self.sign_in("bob")
        busy, _ = self.start_repl(bob, "busy")
        quiet, _ = self.start_repl(bob, "quiet")
        cookie = bob.cookie_header()
        mon = Monitor(self.redis.port)
        self.addCleanup(mon.close)
        s1, _, head1, read1 = self.ws("/%s/api/v1/repl/ws" % busy, cookie)
        s2, _, head2, _ = self.ws("/%s/api/v1/repl/ws" % quiet, cookie)
        self.addCleanup(s1.close)
        self.addCleanup(s2.close)
        self.assertTrue(head1.startswith("HTTP/1.1 101"), head1)
        self.assertTrue(head2.startswith("HTTP/1.1 101"), head2)
        t0 = time.monotonic()
        frames = 0
        quiet_stopped_at = None
        while time.monotonic() - t0 < 3 * IDLE_LIMIT:
            for _ in range(10):  # a burst of keystrokes each time
                s1.sendall(ws_frame(1, b"k", mask=True))
                self.assertEqual(ws_read_frame(read1), (1, b"k"))
                frames += 1
            if quiet_stopped_at is None and self.state(quiet) == "stopped":
                quiet_stopped_at = time.monotonic() - t0
            self.assertEqual(self.state(busy), "running", "the busy session was stopped after %.1fs" % (time.monotonic() - t0))
            time.sleep(0.5)
        window = time.monotonic() - t0
        self.assertIsNotNone(quiet_stopped_at, "the silent session was not stopped")
        # the silent session's files were saved before its runner went away
        saved = os.path.join(self.tmp, "data", "storage", "repl", "dev_bob", quiet, "README.md")
        self.assertTrue(os.path.exists(saved), saved)
        writes = mon.count(b'"ZADD"', b'"XX"', busy.encode())
        self.assertGreaterEqual(writes, 2, "gateway traffic was not recorded")
        # at most one write per activity interval (the flush skips a session
        # recorded less than 0.9 interval ago), never one per frame
        self.assertLessEqual(writes, window / (0.9 * ACTIVITY_INTERVAL) + 2, (writes, frames))
        self.assertGreater(frames, 10 * writes)


if __name__ == "__main__":
    harness.main()
