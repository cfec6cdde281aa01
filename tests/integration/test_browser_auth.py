"""Sign-in in a real browser: headless Chromium (Debian's chromium, driven by
playwright-core from tests/browser/) loads a frontend page from
http://localhost:<port> that calls devexd on another port with
fetch(..., {credentials: "include"}), as the real frontend does; it signs in
through the GitHub-shaped fake (fakes/github_fake.py), reads /auth/me, signs
out with POST /auth/logout and reads /auth/me again (401).

Both servers are named localhost: a browser treats localhost:<port> and
127.0.0.1:<port> as different sites and would not send devexd's SameSite=Lax
session cookie on the frontend's fetch. The frontend port is a free one (3000
may be taken), and devexd's frontend_url names it (environment "production",
so the development allowance for http://localhost:3000 plays no part).

What is missing is installed: Debian's chromium with apt-get (as root, or with
passwordless sudo) when /usr/bin/chromium (CHROMIUM_BIN) is absent, and
playwright-core with `npm ci` in tests/browser when its node_modules is
missing. The test fails (it never skips) when that is not possible.

Run: python3 tests/integration/test_browser_auth.py   (DEVEXD_BIN picks the binary)
"""

import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd, RedisServer  # noqa: E402
from fakes.github_fake import GitHubFake, pkce_s256  # noqa: E402
from fakes.loopback import LoopbackHTTPServer  # noqa: E402

BROWSER_DIR = os.path.join(harness.SOURCE_DIR, "tests", "browser")
CHROMIUM = os.environ.get("CHROMIUM_BIN") or "/usr/bin/chromium"
PREFIX = "devex:"
DRIVE_TIMEOUT = 60  # seconds for one run of drive.mjs (about 3 s here; each step waits at most 15 s)

USER = {
    "id": 583231, "login": "OctoCat", "name": "The Octocat",
    "email": "octocat@github.com",  # the fake's /user has none: the primary verified one of /user/emails
    "avatar_url": "https://avatars.githubusercontent.com/u/583231?v=4",
    "created_at": "2011-01-25T18:44:36Z",
}


# ---- what the test needs ------------------------------------------------------------


def _run_or_fail(cmd, what, timeout, **kw):
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout, **kw)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AssertionError("%s: %s failed: %s" % (what, " ".join(cmd), e))
    if p.returncode != 0:
        raise AssertionError("%s: %s exited with %d:\n%s" % (what, " ".join(cmd), p.returncode,
                                                            p.stdout.decode("utf-8", "replace")[-3000:]))


def ensure_chromium():
    """Installs Debian's chromium when it is missing, or fails saying why not."""
    if os.access(CHROMIUM, os.X_OK):
        return
    what = "chromium is needed (%s is missing)" % CHROMIUM
    if "CHROMIUM_BIN" in os.environ:
        raise AssertionError(what + "; CHROMIUM_BIN names no executable")
    apt = shutil.which("apt-get")
    if not apt:
        raise AssertionError(what + " and apt-get is not available: install Debian's chromium package")
    prefix = []
    if os.geteuid() != 0:
        sudo = shutil.which("sudo")
        if not sudo:
            raise AssertionError(what + ", and installing it needs root (no sudo): "
                                 "apt-get install chromium, or scripts/deps.sh --test")
        prefix = [sudo, "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    what += "; installing it with apt-get"
    _run_or_fail(prefix + [apt, "update", "-qq"], what, 600, env=env)
    _run_or_fail(prefix + [apt, "install", "-y", "-qq", "--no-install-recommends", "chromium"], what, 1200, env=env)
    if not os.access(CHROMIUM, os.X_OK):
        raise AssertionError("apt-get installed chromium, yet %s is not there" % CHROMIUM)


def ensure_playwright():
    """node, and playwright-core in tests/browser/node_modules (npm ci when missing)."""
    node = shutil.which("node")
    if not node:
        raise AssertionError("node is needed to drive the browser (Debian's nodejs; scripts/deps.sh --test)")
    harness.npm_ci(BROWSER_DIR, "playwright-core")
    return node


def drive_script(test, script, origin, args, tmp, timeout):
    """Runs tests/browser/<script> with Debian's Chromium against origin (the
    script's last stdout line is its JSON answer) and returns that answer;
    fails the test when the script times out, exits non-zero, or answers with
    an "error" (its output and stderr in the message)."""
    ensure_chromium()
    node = ensure_playwright()
    profile = os.path.join(tmp, "chromium")
    os.makedirs(profile, exist_ok=True)
    env = dict(os.environ, CHROMIUM_BIN=CHROMIUM, TMPDIR=profile)
    proc = subprocess.Popen([node, script, origin] + list(args), cwd=BROWSER_DIR,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, preexec_fn=harness._set_pdeathsig)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        test.fail("%s did not finish within %d s\nstdout: %s\nstderr: %s"
                  % (script, timeout, out.decode("utf-8", "replace")[-4000:], err.decode("utf-8", "replace")[-4000:]))
    lines = out.decode("utf-8", "replace").strip().splitlines()
    try:
        r = json.loads(lines[-1])
    except (IndexError, ValueError):
        r = None
    if proc.returncode != 0 or not isinstance(r, dict) or "error" in r:
        seen = json.dumps(r, indent=1) if r else out.decode("utf-8", "replace")[-4000:]
        test.fail("the browser run failed (exit %d)\n%s\nstderr: %s"
                  % (proc.returncode, seen, err.decode("utf-8", "replace")[-4000:]))
    return r


# ---- the servers ---------------------------------------------------------------------


class Frontend(LoopbackHTTPServer):
    """The browser frontend: tests/browser/app.html at / and /dashboard, and
    /config.js (window.DEVEXD_URL), from http://localhost:<a free port>."""

    def __init__(self):
        self.devexd_origin = None  # set once devexd runs
        self.requests = []
        with open(os.path.join(BROWSER_DIR, "app.html"), "rb") as f:
            page = f.read()
        fe = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):
                pass

            def do_GET(self):
                fe.requests.append(self.path)
                path = urllib.parse.urlsplit(self.path).path
                if path in ("/", "/dashboard"):
                    self.send(200, "text/html; charset=utf-8", page)
                elif path == "/config.js":
                    js = "window.DEVEXD_URL = %s;\n" % json.dumps(fe.devexd_origin)
                    self.send(200, "text/javascript; charset=utf-8", js.encode())
                else:
                    self.send(404, "text/plain", b"not found\n")

            def send(self, status, ctype, body):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler)
        self.origin = "http://localhost:%d" % self.port


class PortConfiguredDevexd(Devexd):
    """A Devexd whose config is made from its own port (the OAuth redirect URL
    names it): config_for(port) is called when start() writes the config,
    once the harness has reserved the port."""

    def __init__(self, config_for, **kw):
        self._config_for = config_for
        super().__init__(**kw)

    @property
    def extra_config(self):
        return self._config_for(self.port)

    @extra_config.setter
    def extra_config(self, value):
        pass  # Devexd.__init__ sets it; the config comes from config_for


# ---- the test ------------------------------------------------------------------------


class BrowserSignInTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        ensure_chromium()
        cls.node = ensure_playwright()
        # each server is stopped by a class cleanup (last started, first
        # stopped), also when setUpClass fails halfway
        cls.redis = cls.enterClassContext(RedisServer())
        cls.gh = cls.enterClassContext(GitHubFake())
        cls.fe = cls.enterClassContext(Frontend())

        def config_for(port):
            return {
                "environment": "production", "allow_insecure_http": True,
                "frontend_url": cls.fe.origin,
                "redis": {"url": cls.redis.url(), "timeout": 2},
                "github": cls.gh.config("http://localhost:%d/auth/github/callback" % port),
                "session": {"ttl": 3600, "state_ttl": 600},
                "oauth": {"timeout": 5},
            }

        cls.d = cls.enterClassContext(PortConfiguredDevexd(config_for, app=None, threads=2))
        cls.api = "http://localhost:%d" % cls.d.port
        cls.fe.devexd_origin = cls.api
        cls.gh.redirect_uri = cls.api + "/auth/github/callback"  # the registered callback

    def drive(self):
        """Runs tests/browser/drive.mjs; returns what it saw (a dict)."""
        tmp = tempfile.mkdtemp(prefix="devexd-browser-")  # Chromium's profile goes here (TMPDIR)
        env = dict(os.environ, CHROMIUM_BIN=CHROMIUM, TMPDIR=tmp)
        proc = subprocess.Popen([self.node, "drive.mjs", self.fe.origin, self.api], cwd=BROWSER_DIR,
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
            self.fail("drive.mjs did not finish within %d s\nstdout: %s\nstderr: %s"
                      % (DRIVE_TIMEOUT, out.decode("utf-8", "replace")[-4000:], err.decode("utf-8", "replace")[-4000:]))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        lines = out.decode("utf-8", "replace").strip().splitlines()
        try:
            result = json.loads(lines[-1])
        except (IndexError, ValueError):
            result = None
        if proc.returncode != 0 or not isinstance(result, dict) or "error" in result:
            seen = json.dumps(result, indent=1) if result else out.decode("utf-8", "replace")[-4000:]
            self.fail("the browser run failed (exit %d)\n%s\nstderr: %s"
                      % (proc.returncode, seen, err.decode("utf-8", "replace")[-4000:]))
        return result

    def test_sign_in_me_and_sign_out(self):
        r = self.drive()
        api, fe = self.api, self.fe.origin
        info = "\n" + json.dumps(r, indent=1)
        self.assertEqual(r["signin_href"], api + "/auth/github/login")

        # the main frame went frontend -> devexd -> provider -> devexd's callback -> dashboard
        nav = r["navigations"]
        self.assertEqual(len(nav), 5, info)
        self.assertEqual(nav[0], fe + "/")
        self.assertEqual(nav[1], api + "/auth/github/login")
        self.assertTrue(nav[2].startswith(self.gh.base + "/login/oauth/authorize?"), info)
        self.assertTrue(nav[3].startswith(api + "/auth/github/callback?"), info)
        self.assertEqual(nav[4], fe + "/dashboard")
        authorize, callback = urllib.parse.urlsplit(nav[2]), urllib.parse.urlsplit(nav[3])
        aq = dict(urllib.parse.parse_qsl(authorize.query))
        cq = dict(urllib.parse.parse_qsl(callback.query))
        self.assertEqual(aq["redirect_uri"], api + "/auth/github/callback")
        self.assertEqual(cq["state"], aq["state"])
        (_, _, _, body), = self.gh.requests_to("/login/oauth/access_token")
        form = dict(urllib.parse.parse_qsl(body.decode()))
        self.assertEqual(form["code"], cq["code"])
        self.assertEqual(pkce_s256(form["code_verifier"]), aq["code_challenge"])

        # the dashboard's fetch of /auth/me, cross-origin with credentials
        self.assertEqual(r["me"], {"status": 200, "body": USER}, info)
        # the session cookie: on host localhost (any port), HttpOnly, Lax, not Secure (http);
        # the login-attempt cookie is gone
        cookies = {c["name"]: c for c in r["cookies_signed_in"]}
        self.assertEqual(sorted(cookies), ["devex_session"], info)
        c = cookies["devex_session"]
        self.assertRegex(c["value"], r"^[A-Za-z0-9_-]{43}$")
        self.assertEqual((c["domain"], c["path"], c["httpOnly"], c["sameSite"], c["secure"]),
                         ("localhost", "/", True, "Lax", False), info)
        self.assertEqual(r["document_cookie"], "", "the frontend's script must not see the session cookie")

        # what Chromium sent to devexd
        reqs = [(q["method"], q["url"][len(api):].split("?")[0], q.get("status"), q.get("origin"),
                 sorted(q.get("cookies_sent") or [])) for q in r["devexd_requests"]]
        self.assertEqual(reqs, [
            ("GET", "/auth/github/login", 302, None, []),
            # a top-level GET from the provider's site: the Lax state cookie goes with it
            ("GET", "/auth/github/callback", 302, None, ["devex_oauth_state"]),
            # same site (localhost), another origin: the Lax session cookie goes with the fetches
            ("GET", "/auth/me", 200, fe, ["devex_session"]),
            ("POST", "/auth/logout", 200, fe, ["devex_session"]),
            ("GET", "/auth/me", 401, fe, []),
        ], info)

        # sign-out: the session ends in Redis and the cookie is expired
        self.assertEqual(r["signout"], {"status": 200, "body": {"message": "Logged out successfully"}}, info)
        self.assertEqual(r["me_after"], {"status": 401, "body": {"error": "unauthorized"}}, info)
        self.assertEqual(r["cookies_signed_out"], [], info)
        # nothing of the session is left (the sign-in start's rate-limit counter expires with its window)
        self.assertEqual(self.redis.call("KEYS", PREFIX + "*"), [PREFIX.encode() + b"ratelimit:signin:127.0.0.1"])

        # no script error and no CORS refusal; the only console error is the 401 of the last /auth/me
        problems = [m for m in r["console"] if m.startswith(("error:", "pageerror:"))
                    and "status of 401" not in m]
        self.assertEqual(problems, [], info)
        self.assertEqual([p for p in self.fe.requests if "error=" in p], [])
        signed_in = [e for e in self.d.logs() if e.get("msg") == "signed in"]
        self.assertEqual(len(signed_in), 1, self.d.raw_log()[-3000:])


if __name__ == "__main__":
    harness.main()
