"""Single-host mode end to end, with the shipped development configuration
(etc/devexd.dev.conf.lua) and the shipped templates (synced with
`devexd templates sync`): the python runner is templates/python/main.py, run
as a child process of devexd.

- In a browser: headless Chromium (Debian's chromium, driven by
  playwright-core: tests/browser/drive_dev.mjs) opens the dev setup, signs in
  by name, creates and starts a python REPL on the built-in dashboard, follows
  the "open" link to the runner's page through /repl/<id>/, echoes a message
  over a WebSocket from that page, goes back and stops the REPL. A screenshot
  of the end is taken into the test's temp dir (kept, with the path in the
  failure message, when the test fails; kept always with DEVEXD_KEEP_TMP=1).
- Without a browser: a WebSocket echo round trip through devexd at
  /repl/<id>/ws to the runner's /ws (raw socket client), with the session
  cookie; without it, with another user's, and after the stop: 404.

Chromium and playwright-core are installed when missing, as in
test_browser_auth.py; the test fails (it never skips) when that is not possible.

Run: python3 tests/integration/test_single_host_browser.py   (DEVEXD_BIN picks the binary)
"""

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd, RedisServer  # noqa: E402
from test_auth import Browser  # noqa: E402
from test_browser_auth import BROWSER_DIR, CHROMIUM, ensure_chromium, ensure_playwright  # noqa: E402
from test_proxy import ws_accept, ws_frame, ws_open, ws_read_frame  # noqa: E402

DEV_CONF = os.path.join(harness.SOURCE_DIR, "etc", "devexd.dev.conf.lua")
JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
HELLO = "Hello from your Python REPL"
DRIVE_TIMEOUT = 120  # seconds for one run of drive_dev.mjs (a few seconds here)
PNG = b"\x89PNG\r\n\x1a\n"


def keep_tmp():
    return bool(os.environ.get("DEVEXD_KEEP_TMP"))


class SingleHostTest(unittest.TestCase):
    """One devexd with the development configuration (and one redis-server)
    for the class; each test signs in as its own users."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="devexd-single-host-")
        cls.data = os.path.join(cls.tmp, "data")
        # class cleanups run last first, also when setUpClass fails halfway
        cls.addClassCleanup(cls.remove_tmp)
        cls.redis = cls.enterClassContext(RedisServer())
        # the python starter program itself is the session's runner here (its
        # page and its WebSocket echo are what this test opens through the
        # proxy); the default, the runner agent, is test_local_agent's
        policy = os.path.join(cls.tmp, "policy.lua")
        with open(policy, "w") as f:
            f.write("return { templates = { catalogue = { python = { agent = false } } } }\n")
        conf = ('local c = dofile(%s)\n'
                'c.server.listen = { { host = "127.0.0.1", port = @PORT@ } }\n'
                'c.public_url = "http://localhost:@PORT@"\n'
                'c.frontend_url = c.public_url\n'
                'c.policy = { file = %s }\n'
                'return c\n') % (json.dumps(DEV_CONF), json.dumps(policy))
        env = {"DEVEXD_DATA": cls.data, "REDIS_URL": cls.redis.url(), "ENVIRONMENT": "development"}
        cls.d = cls.enterClassContext(Devexd(app=None, threads=2, config_text=conf, env=env))
        cls.addClassCleanup(harness.kill_session_runners, cls.redis)  # before devexd and redis stop
        cls.origin = "http://localhost:%d" % cls.d.port
        cls.d.sync_templates()

    @classmethod
    def remove_tmp(cls):
        if not keep_tmp() and not getattr(cls, "keep", False):
            shutil.rmtree(cls.tmp, ignore_errors=True)

    # ---- helpers ----

    def sign_in(self, user):
        b = Browser(self.d)
        r = b.request("POST", "/auth/dev/login", body="user=" + user, headers=FORM)
        self.assertEqual(r.status, 302, r.body)
        self.assertEqual(r.header("Location"), self.origin + "/dashboard")
        self.assertIn("devex_session", b.jar)
        self.assertEqual(b.get("/auth/me").json()["login"], user)
        return b

    def create_and_start(self, b, name):
        r = b.request("POST", "/api/repl/new", headers=JSON, body=json.dumps({"template": "python", "replName": name}))
        self.assertEqual(r.status, 201, r.body)
        rid = r.json()["id"]
        self.addCleanup(self.stop_quietly, b, rid)
        r = b.request("GET", "/api/repl/session/" + rid)
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json()["url"], "%s/repl/%s/" % (self.origin, rid))
        return rid

    def stop_quietly(self, b, rid):
        """Cleanup: a REPL a failed test left running is stopped (its runner ends)."""
        try:
            b.request("DELETE", "/api/repl/session/" + rid, headers=JSON)
        except OSError:
            pass

    def repl_of(self, b, rid):
        r = b.get("/api/repl")
        self.assertEqual(r.status, 200, r.body)
        mine = [x for x in r.json() if x["id"] == rid]
        self.assertEqual(len(mine), 1, r.body)
        return mine[0]

    def ws_connect(self, path, cookie=None, request_id=None):
        """Opens a WebSocket handshake to devexd; returns (socket, key, status line, headers, read)."""
        extra = "Origin: %s\r\n" % self.origin
        if cookie:
            extra += "Cookie: %s\r\n" % cookie
        if request_id:
            extra += "X-Request-Id: %s\r\n" % request_id
        s, key, head, read = ws_open(self.d.port, path, "localhost:%d" % self.d.port, extra)
        lines = head.split("\r\n")
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        return s, key, lines[0], headers, read

    def assert_ws_refused(self, path, cookie=None, error="repl not found"):
        s, _, status, headers, read = self.ws_connect(path, cookie=cookie)
        try:
            self.assertTrue(status.startswith("HTTP/1.1 404 "), status)
            self.assertNotIn("sec-websocket-accept", headers)
            n = int(headers.get("content-length", "0"))
            self.assertEqual(json.loads(read(n)), {"error": error})
        finally:
            s.close()

    # ---- the tests ----

    def test_browser_sign_in_create_start_open_stop(self):
        ensure_chromium()
        node = ensure_playwright()
        shot = os.path.join(self.tmp, "single-host.png")
        profile = os.path.join(self.tmp, "chromium")  # Chromium's profile goes here (TMPDIR)
        os.mkdir(profile)
        env = dict(os.environ, CHROMIUM_BIN=CHROMIUM, TMPDIR=profile)
        proc = subprocess.Popen([node, "drive_dev.mjs", self.origin, "Ada", "first", shot], cwd=BROWSER_DIR,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, preexec_fn=harness._set_pdeathsig)
        try:
            out, err = proc.communicate(timeout=DRIVE_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # playwright closes the browser on SIGTERM
            try:
                out, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            type(self).keep = True
            self.fail("drive_dev.mjs did not finish within %d s (kept: %s)\nstdout: %s\nstderr: %s"
                      % (DRIVE_TIMEOUT, self.tmp, out.decode("utf-8", "replace")[-4000:],
                         err.decode("utf-8", "replace")[-4000:]))
        lines = out.decode("utf-8", "replace").strip().splitlines()
        try:
            r = json.loads(lines[-1])
        except (IndexError, ValueError):
            r = None
        if proc.returncode != 0 or not isinstance(r, dict) or "error" in r:
            type(self).keep = True  # the screenshot of the failure stays
            seen = json.dumps(r, indent=1) if r else out.decode("utf-8", "replace")[-4000:]
            self.fail("the browser run failed (exit %d; screenshot and files kept in %s)\n%s\nstderr: %s"
                      % (proc.returncode, self.tmp, seen, err.decode("utf-8", "replace")[-4000:]))
        info = "\n" + json.dumps(r, indent=1) + "\n(screenshot and files kept in %s)" % self.tmp
        o = self.origin
        type(self).keep = True  # until every check passed: the screenshot of a failure stays

        # / -> /dashboard, "Sign in" -> the form, its POST -> /dashboard, "open" -> the runner's page
        self.assertEqual(r["dashboard_signed_out"], "Sign in", info)
        self.assertEqual(r["who"], "Signed in as Ada", info)
        self.assertEqual(r["cookies"], [{"name": "devex_session", "httpOnly": True, "sameSite": "Lax"}], info)
        self.assertEqual(r["created"], {"text": "first (python) stopped", "stop": None, "buttons": ["Start", "Delete"]},
                         info)
        # running: the countdown to the idle stop (the development policy's 30 minutes) and "Keep working"
        self.assertRegex(r["started"].pop("stop"), r"^stops in (30:00|29:[0-5]\d) \(if idle\)$", info)
        self.assertEqual(r["started"], {"text": "first (python) running",
                                        "buttons": ["Keep working", "Open", "Stop", "Delete"]}, info)
        rid = r["open_href"][len(o + "/repl/"):-1]
        self.assertRegex(rid, r"^repl-[0-9a-f-]+$", info)
        self.addCleanup(self.stop_quietly, self.sign_in("Ada"), rid)
        self.assertEqual(r["open_href"], "%s/repl/%s/" % (o, rid), info)
        # (the redirect of / is a navigation of its own; the form's POST goes to the form's URL)
        self.assertEqual(r["navigations"], [o + "/", o + "/dashboard", o + "/auth/dev/login", o + "/auth/dev/login",
                                            o + "/dashboard", o + "/repl/%s/" % rid, o + "/dashboard"], info)
        self.assertEqual(r["runner_url"], "%s/repl/%s/" % (o, rid), info)
        self.assertIn(HELLO, r["runner_text"], info)
        # the dashboard's requests, as devexd answered them
        seen = [(x["method"], x["path"], x["status"]) for x in r["responses"]]
        for want in [("GET", "/", 302), ("GET", "/dashboard", 200), ("GET", "/auth/me", 401),
                     ("GET", "/auth/dev/login", 200), ("POST", "/auth/dev/login", 302), ("GET", "/auth/me", 200),
                     ("POST", "/api/repl/new", 201), ("GET", "/api/repl/session/" + rid, 200),
                     ("GET", "/repl/%s/" % rid, 200), ("DELETE", "/api/repl/session/" + rid, 200)]:
            self.assertIn(want, seen, info)

        # the WebSocket from the runner's page (same origin, the cookie goes with it)
        self.assertEqual(r["ws"]["url"], "ws://localhost:%d/repl/%s/ws" % (self.d.port, rid), info)
        self.assertEqual(r["ws"]["messages"], ["hello from chromium"], info)
        self.assertEqual(r["ws"]["close"]["code"], 1000, info)
        self.assertNotIn("error", r["ws"], info)

        # stopped: the dashboard shows it, the API agrees, the proxy no longer reaches it
        self.assertEqual(r["stopped"], {"text": "first (python) stopped", "stop": None, "buttons": ["Start", "Delete"]},
                         info)
        self.assertEqual(r["msg"], "", info)
        mine = [x for x in r["after"]["repls"] if x["id"] == rid]
        self.assertEqual(len(mine), 1, info)
        self.assertFalse(mine[0]["isActive"], info)
        self.assertEqual(r["after"]["proxy_status"], 404, info)
        self.assertFalse(os.path.exists(os.path.join(self.data, "workspaces", rid)), "workspace left behind")
        self.assertIn("main.py", os.listdir(os.path.join(self.data, "storage", "repl", "dev_ada", rid)))

        # no script error; the only console errors are the signed-out dashboard's 401 of /auth/me,
        # the 404 of the last fetch through the proxy, and Chromium's complaint about the sign-in
        # form's pattern attribute (compiled with the regexp v flag, where a bare "-" at the end
        # of a class is invalid: Chromium then ignores the pattern; devexd checks the name anyway)
        problems = [m for m in r["console"] if m.startswith(("error:", "pageerror:"))
                    and "status of 401" not in m and "status of 404" not in m
                    and not m.startswith("error: Pattern attribute value ")]
        self.assertEqual(problems, [], info)
        with open(shot, "rb") as f:
            self.assertEqual(f.read(8), PNG, "the screenshot is not a PNG")
        self.assertGreater(os.path.getsize(shot), 1000)
        type(self).keep = False

    def test_websocket_echo_through_the_proxy(self):
        b = self.sign_in("Grace")
        rid = self.create_and_start(b, "ws")
        path = "/repl/%s/ws" % rid
        r = b.get("/repl/%s/" % rid)
        self.assertEqual((r.status, r.body), (200, (HELLO + "!\n").encode()))

        s, key, status, headers, read = self.ws_connect(path, cookie=b.cookie_header(), request_id="single-host-ws-1")
        try:
            self.assertTrue(status.startswith("HTTP/1.1 101"), status)
            want = ws_accept(key)
            self.assertEqual(headers.get("sec-websocket-accept"), want)
            self.assertEqual(headers.get("upgrade", "").lower(), "websocket")
            for msg in (b"hello through devexd", "\u00e9t\u00e9 \u2603".encode(), b"x" * 300, b"y" * 70000):
                s.sendall(ws_frame(1, msg, mask=True))
                self.assertEqual(ws_read_frame(read), (1, msg))
            s.sendall(ws_frame(2, bytes(range(256)), mask=True))
            self.assertEqual(ws_read_frame(read), (2, bytes(range(256))))
            s.sendall(ws_frame(9, b"are you there", mask=True))
            self.assertEqual(ws_read_frame(read), (10, b"are you there"))
            s.sendall(ws_frame(8, struct.pack("!H", 1000) + b"bye", mask=True))
            self.assertEqual(ws_read_frame(read), (8, struct.pack("!H", 1000)))
            self.assertEqual(read(1), b"", "the connection stays open after the close")
        finally:
            s.close()
        a = self.d.wait_log(lambda e: e.get("msg") == "access" and e.get("request_id") == "single-host-ws-1",
                            what="the WebSocket's access line")[-1]
        self.assertEqual((a["status"], a["path"]), (101, path))

        # no cookie, a made-up one, another user's: the same 404 as for a REPL that does not exist
        self.assert_ws_refused(path)
        self.assert_ws_refused(path, cookie="devex_session=" + "A" * 43)
        self.assert_ws_refused(path, cookie=self.sign_in("mallory").cookie_header())
        self.assert_ws_refused("/repl/repl-00000000-0000-4000-8000-000000000000/ws", cookie=b.cookie_header())

        # stopped: the owner's upgrade gets 404 too, saying why
        r = b.request("DELETE", "/api/repl/session/" + rid, headers=JSON)
        self.assertEqual(r.status, 200, r.body)
        self.assertFalse(self.repl_of(b, rid)["isActive"])
        self.assert_ws_refused(path, cookie=b.cookie_header(), error="this repl is not running: start its session first")


if __name__ == "__main__":
    harness.main()
