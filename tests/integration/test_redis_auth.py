"""Redis with authentication (issue 14, item 4), against a real redis-server:

  * an ACL user (redis-server --user devexd on >PASSWORD ~devex:*
    &__redis__:invalidate +@all -@dangerous +role, the line deploy/kubernetes/secrets.yaml recommends) in
    REDIS_URL redis://devexd:PASSWORD@host:port/0: the shipped app works end
    to end as that user (/ping, sign-in, create, list, start and stop a
    session with the single-host runtime, delete), Redis refused nothing
    (ACL LOG is empty) and devexd's connections are that user's;
  * requirepass with the password alone (redis://:PASSWORD@host);
  * a wrong password: /ping answers {"redis": "...WRONGPASS..."} (degraded;
    or "degraded" with the reason in the log) without the password, starting a session is 503 {"error": "session store
    unavailable"} and the log says why (Redis's reason, never the password);
    the same with no password at all (NOAUTH), and for an ACL user without
    the right to devexd's keys (NOPERM: start and log only, /ping's PING
    touches no key);
  * REDIS_URL errors at config load: a malformed URL is reported without its
    password; rediss:// (test_redis_tls.py) and unix:///path are accepted.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd, RedisServer, poll  # noqa: E402
from fakes.github_fake import GitHubFake  # noqa: E402
import test_repl  # noqa: E402
from test_auth import FRONTEND, GH_REDIRECT  # noqa: E402
from test_config import SHIPPED_CONF, clean_env  # noqa: E402

JSON = {"Content-Type": "application/json"}
ADMIN_PASSWORD = "adm1n-Pw:for/the@default%user"  # needs percent-encoding in a URL
ACL_PASSWORD = "devexd-S3cret@acl:user/42"
WRONG_PASSWORD = "Not-The-Right-One-9731"
# the ACL line of deploy/kubernetes/secrets.yaml
ACL = ["--user", "devexd", "on", ">" + ACL_PASSWORD, "~devex:*", "&__redis__:invalidate", "+@all", "-@dangerous", "+role",
       "--user", "narrow", "on", ">" + ACL_PASSWORD, "~other:*", "+@all", "-@dangerous"]


def url(rs, user, password):
    q = urllib.parse.quote
    auth = "%s:%s@" % (q(user, safe=""), q(password, safe="")) if user is not None else ":%s@" % q(password, safe="")
    return "redis://%s127.0.0.1:%d/0" % (auth, rs.port)


class RedisAuthTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="devexd-redis-auth-")
        cls.store_dir = os.path.join(cls.tmp, "bucket")
        os.mkdir(cls.store_dir)
        cls.redis = RedisServer(password=ADMIN_PASSWORD, args=ACL).__enter__()
        cls.gh = GitHubFake().__enter__()
        cls.ds = []

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "redis", None) is not None:
            harness.kill_session_runners(cls.redis)
        for d in cls.ds:
            d.__exit__(None, None, None)
        harness.stop_class_servers(cls, "gh", "redis")

    def setUp(self):
        self.redis.call("FLUSHALL")
        self.redis.call("ACL", "LOG", "RESET")

    def devexd(self, redis_url, name):
        conf = {
            # "test": production's https-only rules are not what this file is about
            "environment": "test", "frontend_url": FRONTEND,
            "redis": {"url": redis_url, "timeout": 2},
            "github": self.gh.config(GH_REDIRECT),
            "storage": {"driver": "fs", "dir": self.store_dir},
            "runtime": {"driver": "local", "dir": os.path.join(self.tmp, "ws-" + name), "stop_grace": 2},
        }
        d = Devexd(app=None, threads=2, config=conf).__enter__()
        self.ds.append(d)
        return d

    def login(self, d):
        self.d = d
        return test_repl.ReplTest.login(self)

    def create(self, b, **kw):
        st, repl = test_repl.ReplTest.create(self, b, **kw)
        self.assertEqual(st, 201, repl)
        return repl["id"]

    def ping_redis(self, d, want=None):
        """/ping's redis field (polling until it is `want`, the connection is made in the background)."""
        seen = []

        def check():
            b = d.get("/ping").json()
            seen.append(b)
            return b if want is None or want(b.get("redis", "")) else None
        try:
            return poll(check, "/ping's redis field", timeout=15, interval=0.1)
        except AssertionError as e:
            raise AssertionError("%s; the last answer: %r" % (e, seen[-1] if seen else None)) from None

    def assert_no_secret(self, text):
        for secret in (ACL_PASSWORD, WRONG_PASSWORD, ADMIN_PASSWORD,
                       urllib.parse.quote(ACL_PASSWORD, safe=""), urllib.parse.quote(WRONG_PASSWORD, safe="")):
            self.assertNotIn(secret, text)

    # ---- tests ----

    def test_acl_user_end_to_end(self):
        d = self.devexd(url(self.redis, "devexd", ACL_PASSWORD), "acl")
        d.sync_templates()
        body = self.ping_redis(d, lambda v: v == "ok")
        self.assertEqual(body["redis"], "ok")
        b = self.login(d)
        rid = self.create(b, name="acl", template="python")
        self.assertEqual([r["id"] for r in b.get("/api/repl").json()], [rid])
        r = b.get("/api/repl/session/" + rid)
        self.assertEqual(r.status, 200, r.body)
        self.assertIs(b.get("/api/repl").json()[0]["isActive"], True)
        r = b.request("DELETE", "/api/repl/session/" + rid, headers=JSON)
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(b.request("DELETE", "/api/repl/" + rid, headers=JSON).status, 200)
        self.assertEqual(b.get("/api/repl").json(), [])
        # devexd's connections are the ACL user's, and Redis refused it nothing
        clients = self.redis.call("CLIENT", "LIST").decode()
        users = {f.split("=", 1)[1] for line in clients.splitlines() for f in line.split() if f.startswith("user=")}
        self.assertIn("devexd", users, clients)
        self.assertEqual(self.redis.call("ACL", "LOG"), [])
        keys = self.redis.call("KEYS", "*")
        self.assertTrue(keys and all(k.startswith(b"devex:") for k in keys), keys)
        self.assert_no_secret(d.raw_log())

    def test_requirepass_password_only(self):
        d = self.devexd(url(self.redis, None, ADMIN_PASSWORD), "pass")
        self.assertEqual(self.ping_redis(d, lambda v: v == "ok")["redis"], "ok")
        b = self.login(d)
        self.create(b, name="pw", template="node")
        self.assertEqual(len(b.get("/api/repl").json()), 1)

    def test_wrong_password(self):
        good = self.devexd(url(self.redis, "devexd", ACL_PASSWORD), "good")
        good.sync_templates()
        b = self.login(good)
        rid = self.create(b, name="wrongpass", template="python")
        cases = {
            # wrong password of the ACL user, of the default user (requirepass)
            "acl": (url(self.redis, "devexd", WRONG_PASSWORD), "WRONGPASS"),
            "requirepass": (url(self.redis, None, WRONG_PASSWORD), "WRONGPASS"),
            # no password at all: every command answers NOAUTH
            "none": ("redis://127.0.0.1:%d/0" % self.redis.port, "NOAUTH"),
            # the right password, but the user may not touch devexd's keys
            "noperm": (url(self.redis, "narrow", ACL_PASSWORD), "NOPERM"),
        }
        for name, (redis_url, reason) in cases.items():
            with self.subTest(case=name):
                bad = self.devexd(redis_url, name)
                if name != "noperm":  # /ping sends PING, which needs no key: it cannot see NOPERM
                    # Redis's reason in the body, or (when /ping tells callers
                    # only ok/degraded) "degraded" and the reason in the log
                    body = self.ping_redis(bad, lambda v: v == "degraded" or reason in v)
                    self.assertEqual(body["api"], "degraded")
                    if body["redis"] != "degraded":
                        self.assertIn(reason, body["redis"])
                    else:
                        bad.wait_log(lambda e: reason in json.dumps(e), what="a log line with " + reason)
                    self.assert_no_secret(json.dumps(body))
                # the same signed-in browser, on the devexd with the bad URL:
                # 503, and the reason in the log for the operator
                b.d = bad
                r = b.get("/api/repl/session/" + rid)
                self.assertEqual(r.status, 503, r.body)
                self.assertEqual(r.json(), {"error": "session store unavailable"})
                bad.wait_log(lambda e: e.get("msg") == "session store unavailable" and reason in e.get("error", ""),
                             what="the 503's log line with " + reason)
                if reason == "WRONGPASS":
                    bad.wait_log(lambda e: e.get("msg", "").startswith("redis handshake failed"),
                                 what="the handshake error log line")
                self.assert_no_secret(bad.raw_log())
        # the REPL was never started by any of them
        b.d = good
        self.assertIs(b.get("/api/repl").json()[0]["isActive"], False)


class RedisUrlErrorsTest(unittest.TestCase):
    def check(self, redis_url):
        return subprocess.run([harness.DEVEXD_BIN, "-c", SHIPPED_CONF, "-L", harness.LUA_DIR, "--check"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              timeout=30, env=clean_env(REDIS_URL=redis_url, ENVIRONMENT="test"))

    def test_malformed_url_without_its_password(self):
        for redis_url, shown in (
                ("redis://devexd:%s@redis host:6379/0" % WRONG_PASSWORD, '"redis://devexd:***@redis host:6379/0"'),
                ("redis://%s@ x" % WRONG_PASSWORD, '"redis://***@ x"'),
                ("redis:/devexd:%s@redis" % WRONG_PASSWORD, '"redis:***@redis"'),
                ("http://:%s@redis:6379" % WRONG_PASSWORD, '"http://***@redis:6379"')):
            with self.subTest(url=redis_url):
                p = self.check(redis_url)
                self.assertEqual(p.returncode, 1, p.stdout)
                self.assertIn("REDIS_URL: expected a redis or rediss or unix or redis+sentinel URL, got " + shown, p.stderr)
                self.assertNotIn(WRONG_PASSWORD, p.stderr + p.stdout)

    def test_rediss_is_accepted(self):
        # TLS to Redis: src/redis_tls.c, tested end to end in test_redis_tls.py
        p = self.check("rediss://devexd:%s@redis.example:6380/0" % WRONG_PASSWORD)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertNotIn(WRONG_PASSWORD, p.stderr + p.stdout)

    def test_unix_socket_url_is_accepted(self):
        for ok in ("unix:///run/redis/redis.sock", "unix:///run/redis/redis.sock?db=3",
                   "redis://devexd:%s@redis:6379/0" % WRONG_PASSWORD):
            p = self.check(ok)
            self.assertEqual(p.returncode, 0, p.stderr)
        p = self.check("unix://")
        self.assertEqual(p.returncode, 1)



if __name__ == "__main__":
    harness.main()
