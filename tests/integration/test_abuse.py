"""Abuse and unsafe defaults (issue 14, item 5), each with the bad input and
the expected answer, against the shipped app, a real redis-server and the
GitHub-shaped OAuth fake:

- rate limits (policy.limits, middleware.ratelimit): sign-in starts and /ping
  per client address, create/start/stop per user; 429 with Retry-After; the
  client address from X-Forwarded-For only when the peer is a trusted proxy
  (the test connects from 127.0.0.2 as "the proxy"), IPv6 clients per /64;
  what happens when Redis cannot count (fail open for sign-in and /ping,
  closed for create/start/stop);
- /ping: cached a few seconds per worker, only "ok"/"degraded" per
  dependency (the error, which may name internal hosts, goes to the log);
- safe defaults: the shipped config is production (no development CORS
  origin) and refuses to serve without an https PUBLIC_URL unless
  DEVEXD_ALLOW_HTTP=1; no __Host- prefix where a cookie Domain is needed;
  SESSION_SECRET documented nowhere (nothing reads it); no shell commands
  from Lua; a percent-encoded REPL id under /repl/ is a 404.
(The __Host- session cookie, the absolute session lifetime, tokens not
stored and the OIDC azp check are in test_auth.py.)
"""

import glob
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd, RedisServer  # noqa: E402
from fakes.github_fake import GitHubFake  # noqa: E402
import test_repl  # noqa: E402
from test_auth import Browser, http_get, local_path, FRONTEND, GH_REDIRECT  # noqa: E402

JSON = {"Content-Type": "application/json"}
SHIPPED_CONF = os.path.join(harness.SOURCE_DIR, "etc", "devexd.conf.lua")
PROXY = "127.0.0.2"  # a trusted proxy: the test connects from this address
LIMITS = """return { limits = {
  signin = { limit = 3, window = 60 },
  ping = { limit = 4, window = 60 },
  create = { limit = 2, window = 60 },
  start = { limit = 2, window = 60 },
  stop = { limit = 2, window = 60 },
} }
"""


def request_from(d, source, method, path, headers=None, body=None):
    """One request to devexd from a given loopback address (127.0.0.0/8 is all loopback)."""
    c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10, source_address=(source, 0))
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return harness.Response(r.status, r.headers, r.read(), r.reason)
    finally:
        c.close()


class RateLimitTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="devexd-abuse-")
        cls.store_dir = os.path.join(cls.tmp, "bucket")
        os.mkdir(cls.store_dir)
        policy = os.path.join(cls.tmp, "policy.lua")
        with open(policy, "w") as f:
            f.write(LIMITS)
        cls.redis = RedisServer().__enter__()
        cls.gh = GitHubFake().__enter__()
        conf = {
            "environment": "production", "allow_insecure_http": True,
            "frontend_url": FRONTEND,
            "redis": {"url": cls.redis.url(), "timeout": 2},
            "github": cls.gh.config(GH_REDIRECT),
            "session": {"ttl": 3600, "state_ttl": 600},
            "storage": {"driver": "fs", "dir": cls.store_dir},
            "policy": {"file": policy},
        }
        cls.d = Devexd(app=None, threads=2, config=conf, server={"trusted_proxies": [PROXY, "10.0.0.0/8"]}).__enter__()
        cls.d.sync_templates()

    @classmethod
    def tearDownClass(cls):
        harness.stop_class_servers(cls, "d", "gh", "redis")

    def setUp(self):
        self.redis.call("FLUSHALL")  # the counters live in Redis

    def login(self, login, uid):
        return test_repl.ReplTest.login(self, login, uid)

    def assert_limited(self, r, window=60):
        self.assertEqual((r.status, r.json()), (429, {"error": "too many requests"}))
        retry = int(r.header("Retry-After"))
        self.assertTrue(1 <= retry <= window, retry)

    def ttl(self, key):
        return self.redis.call("TTL", "devex:ratelimit:" + key)

    # ---- per client address ----

    def test_signin_starts_per_address(self):
        for _ in range(3):
            r = request_from(self.d, "127.0.0.1", "GET", "/auth/github/login")
            self.assertEqual(r.status, 302, r.body)
        # the 4th writes no login attempt: a flood cannot fill Redis
        r = request_from(self.d, "127.0.0.1", "GET", "/auth/github/login")
        self.assert_limited(r)
        self.assertEqual(r.header("Set-Cookie"), None)
        self.assertEqual(len(self.redis.call("KEYS", "devex:oauth_state:*")), 3)
        self.assertTrue(0 < self.ttl("signin:127.0.0.1") <= 60)  # one key per client, gone with its window
        # X-Forwarded-For from a peer that is not a trusted proxy is not believed
        r = request_from(self.d, "127.0.0.1", "GET", "/auth/github/login", {"X-Forwarded-For": "198.51.100.99"})
        self.assert_limited(r)
        # another address is another client
        self.assertEqual(request_from(self.d, "127.0.0.3", "GET", "/auth/github/login").status, 302)

    def test_client_address_behind_a_trusted_proxy(self):
        def login(xff=None):
            return request_from(self.d, PROXY, "GET", "/auth/github/login",
                                {"X-Forwarded-For": xff} if xff is not None else {})
        for _ in range(3):
            self.assertEqual(login("198.51.100.7").status, 302)
        self.assert_limited(login("198.51.100.7"))
        self.assertEqual(login("198.51.100.8").status, 302)
        # a client prepending addresses to the header does not escape: the
        # rightmost address that is not a trusted proxy is the client
        self.assert_limited(login("198.51.100.8, 198.51.100.7"))
        self.assert_limited(login("garbage, 198.51.100.7"))
        # trusted hops (the proxy, 10.0.0.0/8) are skipped
        self.assertEqual(login("198.51.100.9, 10.1.2.3, 127.0.0.2").status, 302)
        self.assertEqual(self.redis.call("GET", "devex:ratelimit:signin:198.51.100.9"), b"1")
        # without the header, the proxy itself is the client
        self.assertEqual(login().status, 302)
        self.assertEqual(self.redis.call("GET", "devex:ratelimit:signin:127.0.0.2"), b"1")
        # IPv6: per /64, so fresh addresses of one host do not reset its count
        for a in ("2001:db8:1:2::1", "2001:db8:1:2::2", "[2001:db8:1:2::3]:4711"):
            self.assertEqual(login(a).status, 302, a)
        self.assert_limited(login("2001:db8:1:2:ffff:ffff:ffff:ffff"))
        self.assertEqual(login("2001:db8:1:3::1").status, 302)
        self.assertTrue(0 < self.ttl("signin:2001:0db8:0001:0002::/64") <= 60)
        # an IPv4-mapped address is the IPv4 client
        self.assert_limited(login("::ffff:198.51.100.7"))

    def test_ping_per_address(self):
        for _ in range(4):
            self.assertEqual(request_from(self.d, "127.0.0.1", "GET", "/ping").status, 200)
        self.assert_limited(request_from(self.d, "127.0.0.1", "GET", "/ping"))
        self.assertEqual(request_from(self.d, "127.0.0.3", "GET", "/ping").status, 200)

    # ---- per user ----

    def test_create_start_stop_per_user(self):
        alice = self.login("alice", 1001)
        bob = self.login("bob", 1002)
        body = json.dumps({"template": "python", "replName": "x"})
        for _ in range(2):
            r = alice.request("POST", "/api/repl/new", headers=JSON, body=body)
            self.assertEqual(r.status, 201, r.body)
        r = alice.request("POST", "/api/repl/new", headers=JSON, body=body)
        self.assert_limited(r)  # not the quota's answer: the limiter's
        self.assertEqual(len(alice.get("/api/repl").json()), 2)
        self.assertTrue(0 < self.ttl("create:gh_1001") <= 60)  # keyed on the owner key
        self.assertEqual(bob.request("POST", "/api/repl/new", headers=JSON, body=body).status, 201)
        # start and stop count every request (here: REPLs that do not exist)
        missing = "/api/repl/session/repl-00000000-0000-4000-8000-000000000000"
        for method, headers in (("GET", {}), ("DELETE", JSON)):
            for _ in range(2):
                self.assertEqual(alice.request(method, missing, headers=headers).status, 404)
            self.assert_limited(alice.request(method, missing, headers=headers))
            self.assertEqual(bob.request(method, missing, headers=headers).status, 404)
        # signed out: 401 from the auth middleware, nothing counted
        self.assertEqual(self.d.request("POST", "/api/repl/new", headers=JSON, body=body).status, 401)

    # ---- when Redis cannot count ----

    def test_fail_open_and_fail_closed(self):
        # a counter Redis cannot increment: the limiter's script fails
        alice = self.login("alice", 1001)
        mark = self.d.mark()
        for key in ("signin:127.0.0.1", "ping:127.0.0.1", "create:gh_1001", "start:gh_1001"):
            self.redis.call("SET", "devex:ratelimit:" + key, "not a number")
        # sign-in and /ping let the request through
        self.assertEqual(request_from(self.d, "127.0.0.1", "GET", "/auth/github/login").status, 302)
        self.assertEqual(request_from(self.d, "127.0.0.1", "GET", "/ping").status, 200)
        # create and start are refused, to be retried
        r = alice.request("POST", "/api/repl/new", headers=JSON, body=json.dumps({"template": "python", "replName": "x"}))
        self.assertEqual((r.status, r.json()), (503, {"error": "rate limiter unavailable"}))
        self.assertEqual(r.header("Retry-After"), "5")
        r = alice.get("/api/repl/session/repl-00000000-0000-4000-8000-000000000000")
        self.assertEqual(r.status, 503)
        self.assertEqual(alice.get("/api/repl").json(), [])
        actions = {(e.get("rule"), e.get("action")) for e in self.d.logs()[mark:]
                   if e.get("msg") == "rate limiter: Redis unavailable"}
        self.assertIn(("signin", "let through"), actions)
        self.assertIn(("create", "refused (503)"), actions)


class PingTest(unittest.TestCase):
    """One worker (one cache); storage in a directory that cannot exist (under
    a regular file, even for root), so the storage check fails with an error
    naming it."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="devexd-abuse-ping-")
        with open(os.path.join(cls.tmp, "file"), "w"):
            pass
        cls.SECRET_PLACE = os.path.join(cls.tmp, "file", "s3.internal.devex.example")
        cls.redis = RedisServer().__enter__()
        cls.gh = GitHubFake().__enter__()
        conf = {
            "environment": "production", "allow_insecure_http": True,
            "frontend_url": FRONTEND,
            "redis": {"url": cls.redis.url(), "timeout": 1},
            "github": cls.gh.config(GH_REDIRECT),
            "storage": {"driver": "fs", "dir": cls.SECRET_PLACE},
            "runtime": {"driver": "local", "dir": os.path.join(cls.tmp, "run")},
        }
        cls.d = Devexd(app=None, threads=1, config=conf).__enter__()

    @classmethod
    def tearDownClass(cls):
        harness.stop_class_servers(cls, "d", "gh", "redis")

    def ping(self, headers=None):
        r = self.d.get("/ping", headers=headers)
        self.assertEqual(r.status, 200, r.body)
        body = r.json()
        self.assertEqual(set(body), {"api", "redis", "s3", "k8s", "runtime"})
        self.assertIn(body["runtime"], ("kubernetes", "local"))
        for k, v in body.items():
            if k != "runtime":
                self.assertIn(v, ("ok", "degraded"), body)
        self.assertNotIn(b"internal", r.body)
        return body

    def test_only_ok_or_degraded_and_the_detail_in_the_log(self):
        body = self.ping()
        self.assertEqual(body, {"api": "degraded", "redis": "ok", "s3": "degraded", "k8s": "ok", "runtime": "local"})
        self.d.wait_log(lambda e: e.get("msg") == "ping: dependency degraded" and self.SECRET_PLACE in e.get("s3", ""),
                        what="the storage error in the log")
        # a signed-in user gets the same answer
        b = test_repl.ReplTest.login(self)
        self.assertEqual(b.get("/auth/me").status, 200)
        r = b.get("/ping")
        self.assertEqual(r.json(), body)
        self.assertNotIn(b"internal", r.body)

    def test_cached_and_redis_down(self):
        time.sleep(5.2)  # whatever an earlier test left in the cache is stale now
        t0 = time.monotonic()
        self.assertEqual(self.ping()["redis"], "ok")  # checked now, cached from now
        self.redis.stop()
        try:
            # answered from the cache (at most 5 s old): Redis is not asked
            first = self.ping()
            if time.monotonic() - t0 < 4:
                self.assertEqual(first["redis"], "ok")
            while True:
                body = self.ping()
                if body["redis"] == "degraded":
                    break
                self.assertLess(time.monotonic() - t0, 8, "the cache outlived a few seconds")
                time.sleep(0.2)
            self.assertEqual(body["api"], "degraded")
            # the rate limiter cannot count: sign-in starts still go on (and
            # fail for the real reason, not with a 429 or a 503)
            r = self.d.get("/auth/github/login")
            self.assertEqual((r.status, r.header("Location")), (302, FRONTEND + "?error=session_error"))
        finally:
            self.redis.start()
        # reconnected, and the cache caught up, on every worker (each
        # reconnects on its own backoff; a request may reach either)
        deadline = time.monotonic() + 15
        while any(self.ping()["redis"] != "ok" for _ in range(6)):
            self.assertLess(time.monotonic(), deadline, "Redis never came back in /ping")
            time.sleep(0.3)


class SafeDefaultsTest(unittest.TestCase):
    def clean_env(self, **extra):
        env = {k: v for k, v in os.environ.items()
               if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR") or k.endswith("SAN_OPTIONS")}
        env.update(extra)
        return env

    def test_shipped_config_refuses_production_over_http(self):
        port = harness.free_port()
        for extra in ({}, {"PUBLIC_URL": "http://devex.example.com"}):
            p = subprocess.run([harness.DEVEXD_BIN, "-c", SHIPPED_CONF, "-L", harness.LUA_DIR, "-t", "1"],
                               env=self.clean_env(HOST="127.0.0.1", PORT=str(port), **extra),
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, timeout=30)
            self.assertNotEqual(p.returncode, 0, extra)
            self.assertIn("environment is production but public_url is", p.stderr)
            self.assertIn("DEVEXD_ALLOW_HTTP=1", p.stderr)

    def test_shipped_config_is_production(self):
        with RedisServer() as redis:
            conf = ('local c = dofile(%s)\n'
                    'c.server.listen = { { host = "127.0.0.1", port = @PORT@ } }\n'
                    'return c\n') % json.dumps(SHIPPED_CONF)
            env = {"ENVIRONMENT": "", "PUBLIC_URL": "https://devex.example.com", "FRONTEND_URL": FRONTEND,
                   "REDIS_URL": redis.url()}
            with Devexd(app=None, threads=1, config_text=conf, env=env) as d:
                # http://localhost:3000 is the development frontend: not a credentialed origin here
                r = d.get("/auth/status", headers={"Origin": "http://localhost:3000"})
                self.assertEqual(r.status, 200)
                self.assertIsNone(r.header("Access-Control-Allow-Origin"))
                r = d.get("/auth/status", headers={"Origin": FRONTEND})
                self.assertEqual(r.header("Access-Control-Allow-Origin"), FRONTEND)
            # told explicitly, plain HTTP is served (and said so in the log)
            env = {"ENVIRONMENT": "", "PUBLIC_URL": "", "DEVEXD_ALLOW_HTTP": "1", "REDIS_URL": redis.url()}
            with Devexd(app=None, threads=1, config_text=conf, env=env) as d:
                self.assertEqual(d.get("/auth/status").status, 200)
                self.assertTrue(any("plain HTTP" in e.get("msg", "") for e in d.logs()))

    def test_no_host_prefix_with_a_cookie_domain(self):
        with RedisServer() as redis, GitHubFake() as gh:
            conf = {"environment": "production", "public_url": "https://api.devex.test", "frontend_url": FRONTEND,
                    "redis": {"url": redis.url()}, "github": gh.config(GH_REDIRECT),
                    "auth": {"cookie_domain": "devex.test"}}
            with Devexd(app=None, threads=1, config=conf) as d:
                b = Browser(d)
                r = b.get("/auth/github/login")
                # the login-attempt cookie is host-only: prefixed
                _, attrs = b.last_cookies["__Host-devex_oauth_state"]
                self.assertEqual((attrs["path"], "secure" in attrs, "domain" in attrs), ("/", True, False))
                status, headers, _ = http_get(r.header("Location"))
                b.get(local_path(headers["Location"]))
                # the session cookie needs Domain (the runner domain): no __Host- prefix
                self.assertNotIn("__Host-devex_session", b.last_cookies)
                _, attrs = b.last_cookies["devex_session"]
                self.assertEqual((attrs["domain"], "secure" in attrs), ("devex.test", True))
                self.assertEqual(b.get("/auth/me").status, 200)

    def test_session_secret_is_documented_nowhere(self):
        # nothing reads session.secret: no setting is documented that does nothing
        for pattern in ("README.md", "etc/*.lua", "docs/*", "lua/**/*.lua"):
            for path in glob.glob(os.path.join(harness.SOURCE_DIR, pattern), recursive=True):
                with open(path, encoding="utf-8") as f:
                    text = f.read()
                self.assertFalse("SESSION_SECRET" in text, path)
                self.assertIsNone(re.search(r"session\.secret|\bsecret = env\.", text), path)

    def test_no_shell_from_lua(self):
        # files are removed by rm run directly (process.spawn, no shell) or os.remove
        for path in glob.glob(os.path.join(harness.LUA_DIR, "**", "*.lua"), recursive=True):
            with open(path, encoding="utf-8") as f:
                text = f.read()
            self.assertIsNone(re.search(r"os\.execute|io\.popen", text), path)


class EncodedReplIdTest(unittest.TestCase):
    """/repl/<id>/ with the id percent-encoded: the router decodes the id, but
    the raw path is not that REPL's prefix, so the gateway answers 404."""

    def test_percent_encoded_id_is_404(self):
        standin = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runner_standin.py")
        dev_conf = os.path.join(harness.SOURCE_DIR, "etc", "devexd.dev.conf.lua")
        with tempfile.TemporaryDirectory(prefix="devexd-abuse-gw-") as tmp, RedisServer() as redis:
            policy = os.path.join(tmp, "policy.lua")
            with open(policy, "w") as f:
                f.write("return { templates = { catalogue = { standin = { image = 'runner-standin', port = 8081,\n"
                        "  agent = false, local_command = { 'sh', '-c', 'exec python3 %s --host 127.0.0.1 --port \"$PORT\"' } } } } }\n"
                        % standin)
            os.makedirs(os.path.join(tmp, "templates", "standin"))
            with open(os.path.join(tmp, "templates", "standin", "README.md"), "w") as f:
                f.write("x\n")
            conf = ('local c = dofile(%s)\n'
                    'c.server.listen = { { host = "127.0.0.1", port = @PORT@ } }\n'
                    'c.public_url = "http://localhost:@PORT@"\n'
                    'c.policy = { file = %s }\n'
                    'return c\n') % (json.dumps(dev_conf), json.dumps(policy))
            env = {"DEVEXD_DATA": os.path.join(tmp, "data"), "REDIS_URL": redis.url(), "ENVIRONMENT": "development"}
            try:
                with Devexd(app=None, threads=1, config_text=conf, env=env) as d:
                    d.sync_templates(os.path.join(tmp, "templates"))
                    b = Browser(d)
                    b.request("POST", "/auth/dev/login", body="user=ada",
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
                    r = b.request("POST", "/api/repl/new", headers=JSON,
                                  body=json.dumps({"template": "standin", "replName": "x"}))
                    rid = r.json()["id"]
                    self.assertEqual(b.get("/api/repl/session/" + rid).status, 200)
                    self.assertEqual(b.get("/repl/%s/ping" % rid).status, 200)
                    encoded = "%72" + rid[1:]
                    statuses = [b.get(p).status for p in
                                ("/repl/%s/ping" % encoded, "/repl/%s/" % encoded, "/repl/%s" % encoded)]
                    b.request("DELETE", "/api/repl/session/" + rid, headers=JSON)
                    self.assertEqual(statuses, [404, 404, 404])
            finally:
                harness.kill_session_runners(redis)


if __name__ == "__main__":
    harness.main()
