"""Sign-in: sessions, the auth/CORS/CSRF middleware and the OAuth flows of the
shipped app (lua/routes/auth.lua), against a real redis-server, a GitHub-shaped
OAuth fake (fakes/github_fake.py, GitHub itself is out of reach) and a real
OpenID Connect provider, the npm package oauth2-mock-server (tests/oidc/,
installed with `npm ci` when node_modules is missing or stale).

The browser is simulated with a small cookie jar; redirects are followed by
hand with http.client, so every hop is checked.

Run: python3 tests/integration/test_auth.py   (DEVEXD_BIN picks the binary)
"""

import base64
import hashlib
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import time
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd, RedisServer  # noqa: E402
from fakes.github_fake import GitHubFake, pkce_s256  # noqa: E402

OIDC_DIR = os.path.join(harness.SOURCE_DIR, "tests", "oidc")
FRONTEND = "http://frontend.test"
DEVEXD_HOST = "http://devexd.test"  # redirect URLs name this host; the test maps it to devexd
GH_REDIRECT = DEVEXD_HOST + "/auth/github/callback"
OIDC_REDIRECT = DEVEXD_HOST + "/auth/mock/callback"
OIDC_CLIENT = "devexd-test-client"
PREFIX = "devex:"


# ---- the OpenID Connect provider ------------------------------------------------


class OidcServer:
    """oauth2-mock-server run with node (tests/oidc/server.mjs)."""

    def __enter__(self):
        harness.npm_ci(OIDC_DIR, "oauth2-mock-server")  # fails (never skips) without node and npm
        node = shutil.which("node")
        self.proc = subprocess.Popen([node, "server.mjs", "0"], cwd=OIDC_DIR, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     preexec_fn=harness._set_pdeathsig)
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError("oauth2-mock-server did not start: " + self.proc.stderr.read().decode()[-2000:])
        info = json.loads(line)
        self.issuer = info["issuer"]
        self.port = info["port"]
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return False

    def config(self):
        return {"issuer": self.issuer, "client_id": OIDC_CLIENT, "client_secret": "oidc-secret",
                "redirect_url": OIDC_REDIRECT}


# ---- a browser ------------------------------------------------------------------------


def parse_set_cookie(value):
    parts = [p.strip() for p in value.split(";")]
    name, _, val = parts[0].partition("=")
    attrs = {}
    for p in parts[1:]:
        k, _, v = p.partition("=")
        attrs[k.lower()] = v
    return name, val, attrs


class Browser:
    """A cookie jar (one site: devexd) and manual redirects."""

    def __init__(self, d):
        self.d = d
        self.jar = {}
        self.last_cookies = {}  # name -> (value, attrs) from the last response

    def cookie_header(self):
        return "; ".join("%s=%s" % kv for kv in self.jar.items())

    def request(self, method, path, headers=None, body=None):
        h = dict(headers or {})
        if self.jar:
            h["Cookie"] = self.cookie_header()
        r = self.d.request(method, path, headers=h, body=body)
        self.last_cookies = {}
        for v in r.headers.get_all("Set-Cookie") or []:
            name, val, attrs = parse_set_cookie(v)
            self.last_cookies[name] = (val, attrs)
            if attrs.get("max-age") == "0" or val == "":
                self.jar.pop(name, None)
            else:
                self.jar[name] = val
        return r

    def get(self, path, **kw):
        return self.request("GET", path, **kw)


def http_get(url, headers=None):
    """GET on another server (the provider); returns (status, headers, body)."""
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        c.request("GET", u.path + ("?" + u.query if u.query else ""), headers=headers or {})
        r = c.getresponse()
        return r.status, r.headers, r.read()
    finally:
        c.close()


def local_path(url):
    """The path and query of a URL that names devexd."""
    assert url.startswith(DEVEXD_HOST + "/"), url
    u = urllib.parse.urlsplit(url)
    return u.path + ("?" + u.query if u.query else "")


def query_of(url):
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


def replace_query(url, **kw):
    u = urllib.parse.urlsplit(url)
    q = dict(urllib.parse.parse_qsl(u.query))
    q.update(kw)
    return urllib.parse.urlunsplit((u.scheme, u.netloc, u.path, urllib.parse.urlencode(q), u.fragment))


# ---- the tests ----------------------------------------------------------------------


class AuthTestBase(unittest.TestCase):
    session_conf = {"ttl": 3600, "state_ttl": 600}
    extra = {}

    @classmethod
    def setUpClass(cls):
        cls.redis = RedisServer().__enter__()
        cls.gh = GitHubFake().__enter__()
        cls.oidc = OidcServer().__enter__()
        conf = {
            "environment": "production", "allow_insecure_http": True,  # the test servers are plain HTTP
            "frontend_url": FRONTEND,
            "redis": {"url": cls.redis.url(), "timeout": 2},
            "github": cls.gh.config(GH_REDIRECT),
            "session": dict(cls.session_conf),
            "oauth": {"timeout": 5, "providers": {"mock": cls.oidc.config()}},
        }
        for k, v in cls.extra.items():
            if isinstance(v, dict) and isinstance(conf.get(k), dict):
                conf[k] = dict(conf[k], **v)
            else:
                conf[k] = v
        cls.conf = conf
        cls.d = Devexd(app=None, threads=2, config=conf).__enter__()

    @classmethod
    def tearDownClass(cls):
        harness.stop_class_servers(cls, "d", "oidc", "gh", "redis")

    def setUp(self):
        self.redis.call("FLUSHALL")
        self.gh.deny = False
        self.gh.token_status = None
        self.gh.user_status = None
        with self.gh.lock:
            self.gh.requests.clear()

    # ---- helpers ----

    def keys(self, pattern):
        return sorted(k.decode() for k in self.redis.call("KEYS", PREFIX + pattern))

    def session_keys(self):
        return self.keys("session:*")

    def start_login(self, b, provider="github"):
        r = b.get("/auth/%s/login" % provider)
        self.assertEqual(r.status, 302, r.body)
        return r.header("Location")

    def provider_redirect(self, authorize_url):
        """The provider's answer to the browser: the redirect back to devexd."""
        status, headers, body = http_get(authorize_url)
        self.assertIn(status, (302, 303), body[:300])
        return headers["Location"]

    def finish(self, b, callback_url):
        r = b.get(local_path(callback_url))
        self.assertEqual(r.status, 302, r.body)
        return r.header("Location")

    def login(self, b, provider="github"):
        loc = self.finish(b, self.provider_redirect(self.start_login(b, provider)))
        self.assertEqual(loc, FRONTEND + "/dashboard")
        return b

    def assert_failed(self, location, reason):
        self.assertEqual(location, FRONTEND + "?error=" + reason)
        self.assertEqual(self.session_keys(), [])


class GitHubFlowTest(AuthTestBase):
    def test_login_flow(self):
        b = Browser(self.d)
        url = self.start_login(b)
        self.assertTrue(url.startswith(self.gh.base + "/login/oauth/authorize?"), url)
        q = query_of(url)
        self.assertEqual(q["client_id"], self.gh.client_id)
        self.assertEqual(q["redirect_uri"], GH_REDIRECT)
        self.assertEqual(q["scope"], "read:user user:email")
        self.assertEqual(q["code_challenge_method"], "S256")
        self.assertRegex(q["code_challenge"], r"^[A-Za-z0-9_-]{43}$")
        self.assertRegex(q["state"], r"^[A-Za-z0-9_-]{43}$")
        # the state is bound to the browser by an HttpOnly cookie and kept in Redis
        val, attrs = b.last_cookies["devex_oauth_state"]
        self.assertEqual(val, q["state"])
        self.assertIn("httponly", attrs)
        self.assertEqual(attrs["samesite"], "Lax")
        self.assertEqual(attrs["max-age"], "600")
        self.assertNotIn("secure", attrs)  # public_url is not https
        self.assertEqual(len(self.keys("oauth_state:*")), 1)
        ttl = self.redis.call("TTL", self.keys("oauth_state:*")[0])
        self.assertTrue(0 < ttl <= 600, ttl)

        loc = self.finish(b, self.provider_redirect(url))
        self.assertEqual(loc, FRONTEND + "/dashboard")
        self.assertEqual(self.keys("oauth_state:*"), [])  # consumed
        self.assertNotIn("devex_oauth_state", b.jar)       # and its cookie expired

        # the session cookie: opaque 256-bit id, HttpOnly, SameSite=Lax, Path=/, Max-Age
        sid, attrs = b.last_cookies["devex_session"]
        self.assertRegex(sid, r"^[A-Za-z0-9_-]{43}$")
        self.assertEqual(len(base64.urlsafe_b64decode(sid + "=")), 32)
        self.assertIn("httponly", attrs)
        self.assertEqual(attrs["samesite"], "Lax")
        self.assertEqual(attrs["path"], "/")
        self.assertEqual(attrs["max-age"], "3600")
        # Redis keeps it under the hash of the id, with a TTL
        key = PREFIX + "session:" + hashlib.sha256(sid.encode()).hexdigest()
        self.assertEqual(self.session_keys(), [key])
        ttl = self.redis.call("TTL", key)
        self.assertTrue(3500 < ttl <= 3600, ttl)
        stored = dict(zip(*[iter(self.redis.call("HGETALL", key))] * 2))
        self.assertEqual(json.loads(stored[b"user"])["owner"], "gh_583231")  # the numeric id, not the login
        # the provider's token read the user and was dropped: nothing uses it after the sign-in
        self.assertEqual(sorted(stored), [b"created_at", b"expires_at", b"provider", b"user"])

        # the token exchange: form POST, Accept: application/json, PKCE verifier
        (_, _, h, body), = self.gh.requests_to("/login/oauth/access_token")
        self.assertEqual(h["accept"], "application/json")
        self.assertEqual(h["content-type"], "application/x-www-form-urlencoded")
        form = dict(urllib.parse.parse_qsl(body.decode()))
        self.assertEqual(form["grant_type"], "authorization_code")
        self.assertEqual(form["redirect_uri"], GH_REDIRECT)
        self.assertEqual(pkce_s256(form["code_verifier"]), q["code_challenge"])
        (_, _, h, _), = self.gh.requests_to("/user")
        token = h["authorization"][len("Bearer "):]
        self.assertTrue(token.startswith("gho_"), h["authorization"])
        self.assertFalse([v for v in stored.values() if token.encode() in v])

        r = b.get("/auth/me")
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json(), {
            "id": 583231, "login": "OctoCat", "name": "The Octocat",
            "email": "octocat@github.com",  # /user had none: the primary verified one of /user/emails
            "avatar_url": "https://avatars.githubusercontent.com/u/583231?v=4",
            "created_at": "2011-01-25T18:44:36Z"})
        r = b.get("/auth/status")
        st = r.json()
        self.assertTrue(st["authenticated"])
        self.assertEqual(st["user"]["login"], "OctoCat")
        exp = time.mktime(time.strptime(st["token_expires_at"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
        self.assertLess(abs(exp - (time.time() + 3600)), 10)
        # provider tokens never reach the browser
        for resp in (r, b.get("/auth/me")):
            self.assertNotIn(token.encode(), resp.body)
            self.assertNotIn(token, str(resp.headers))

    def test_unauthenticated(self):
        b = Browser(self.d)
        r = b.get("/auth/me")
        self.assertEqual((r.status, r.json()), (401, {"error": "unauthorized"}))
        self.assertEqual(b.get("/auth/status").json(), {"authenticated": False})
        self.assertEqual(b.get("/auth/nope/login").status, 404)

    def test_state_mismatch(self):
        b = Browser(self.d)
        cb = self.provider_redirect(self.start_login(b))
        other = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
        self.assert_failed(self.finish(b, replace_query(cb, state=other)), "invalid_state")
        # without the browser's state cookie (another browser) the state is refused too
        b2 = Browser(self.d)
        b.jar.clear()
        cb = self.provider_redirect(self.start_login(b2))
        self.assert_failed(self.finish(b, cb), "invalid_state")
        # no state at all
        self.assert_failed(self.finish(b2, DEVEXD_HOST + "/auth/github/callback?code=abc"), "invalid_state")

    def test_replayed_state(self):
        b = Browser(self.d)
        url = self.start_login(b)
        state_cookie = b.jar["devex_oauth_state"]
        cb = self.provider_redirect(url)
        self.assertEqual(self.finish(b, cb), FRONTEND + "/dashboard")
        sessions = self.session_keys()
        self.assertEqual(len(sessions), 1)
        b.jar["devex_oauth_state"] = state_cookie  # a replay with the same cookie and URL
        self.assertEqual(self.finish(b, cb), FRONTEND + "?error=invalid_state")
        self.assertEqual(self.session_keys(), sessions)

    def test_denied(self):
        self.gh.deny = True
        b = Browser(self.d)
        cb = self.provider_redirect(self.start_login(b))
        self.assertEqual(query_of(cb)["error"], "access_denied")
        self.assert_failed(self.finish(b, cb), "access_denied")
        self.assertEqual(self.gh.requests_to("/login/oauth/access_token"), [])
        self.assertEqual(self.keys("oauth_state:*"), [])  # the state is used up

    def test_token_endpoint_fails(self):
        b = Browser(self.d)
        self.gh.token_status = 500
        self.assert_failed(self.finish(b, self.provider_redirect(self.start_login(b))), "exchange_failed")
        self.gh.token_status = None
        # GitHub's HTTP 200 {"error":"bad_verification_code"} for an unknown code
        cb = self.provider_redirect(self.start_login(b))
        self.assert_failed(self.finish(b, replace_query(cb, code="0123456789abcdef0123")), "exchange_failed")
        # and for a PKCE verifier that does not match: another browser's login
        # attempt's code, used with this browser's state
        b2 = Browser(self.d)
        cb2 = self.provider_redirect(self.start_login(b2))
        cb = self.provider_redirect(self.start_login(b))
        self.assert_failed(self.finish(b, replace_query(cb, code=query_of(cb2)["code"])), "exchange_failed")
        d = self.d
        self.assertTrue(any(e.get("msg") == "sign-in failed" and "bad_verification_code" in e.get("detail", "")
                            for e in d.logs()))
        # nothing secret in the log
        log = d.raw_log()
        self.assertNotIn(self.gh.client_secret, log)
        self.assertNotIn(query_of(cb2)["code"], log)

    def test_user_fetch_fails(self):
        self.gh.user_status = 502
        b = Browser(self.d)
        self.assert_failed(self.finish(b, self.provider_redirect(self.start_login(b))), "user_fetch_failed")

    def test_logout(self):
        b = self.login(Browser(self.d))
        sid = b.jar["devex_session"]
        self.assertEqual(b.get("/auth/me").status, 200)
        r = b.request("POST", "/auth/logout", headers={"Origin": FRONTEND})
        self.assertEqual((r.status, r.json()), (200, {"message": "Logged out successfully"}))
        val, attrs = b.last_cookies["devex_session"]
        self.assertEqual(attrs["max-age"], "0")
        self.assertEqual(self.session_keys(), [])
        # the old cookie is useless
        r = self.d.get("/auth/me", headers={"Cookie": "devex_session=" + sid})
        self.assertEqual(r.status, 401)
        r = self.d.get("/auth/status", headers={"Cookie": "devex_session=" + sid})
        self.assertEqual(r.json(), {"authenticated": False})

    def test_logout_on_every_replica(self):
        with Devexd(app=None, threads=1, config=self.conf) as other:
            b = self.login(Browser(self.d))
            sid = b.jar["devex_session"]
            self.assertEqual(other.get("/auth/me", headers={"Cookie": "devex_session=" + sid}).status, 200)
            r = b.request("POST", "/auth/logout", headers={"Origin": FRONTEND})
            self.assertEqual(r.status, 200)
            self.assertEqual(other.get("/auth/me", headers={"Cookie": "devex_session=" + sid}).status, 401)

    def test_tampered_or_unknown_cookie(self):
        b = self.login(Browser(self.d))
        sid = b.jar["devex_session"]
        flipped = ("A" if sid[0] != "A" else "B") + sid[1:]
        unknown = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
        for bad in (flipped, unknown, sid + "x", sid[:-1], "", "../../etc", "%00" * 10):
            r = self.d.get("/auth/me", headers={"Cookie": "devex_session=" + bad})
            self.assertEqual((r.status, r.json()), (401, {"error": "unauthorized"}), bad)
        self.assertEqual(self.d.get("/auth/me", headers={"Cookie": "devex_session=" + sid}).status, 200)

    def test_new_login_replaces_old_session(self):
        b = self.login(Browser(self.d))
        first = b.jar["devex_session"]
        self.login(b)
        self.assertNotEqual(b.jar["devex_session"], first)
        self.assertEqual(len(self.session_keys()), 1)
        self.assertEqual(self.d.get("/auth/me", headers={"Cookie": "devex_session=" + first}).status, 401)

    def test_cors(self):
        r = self.d.get("/auth/status", headers={"Origin": FRONTEND})
        self.assertEqual(r.header("Access-Control-Allow-Origin"), FRONTEND)
        self.assertEqual(r.header("Access-Control-Allow-Credentials"), "true")
        self.assertIn("Origin", r.header("Vary"))
        r = self.d.get("/auth/me", headers={"Origin": FRONTEND})  # a 401 is readable too
        self.assertEqual((r.status, r.header("Access-Control-Allow-Origin")), (401, FRONTEND))
        for evil in ("http://evil.test", "http://localhost:3000", FRONTEND + ".evil.test", "null"):
            r = self.d.get("/auth/status", headers={"Origin": evil})
            self.assertEqual(r.status, 200)
            self.assertFalse([k for k in r.headers.keys() if k.lower().startswith("access-control-")], evil)
        # preflight
        r = self.d.request("OPTIONS", "/auth/logout", headers={
            "Origin": FRONTEND, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Content-Type, X-Request-Id"})
        self.assertEqual(r.status, 204, r.body)
        self.assertEqual(r.header("Access-Control-Allow-Origin"), FRONTEND)
        self.assertEqual(r.header("Access-Control-Allow-Credentials"), "true")
        self.assertEqual(r.header("Access-Control-Allow-Methods"), "GET, POST, DELETE, OPTIONS")
        self.assertEqual(r.header("Access-Control-Allow-Headers"), "content-type, x-request-id")
        self.assertIn("Origin", r.header("Vary"))
        r = self.d.request("OPTIONS", "/api/repl/x", headers={  # any path
            "Origin": FRONTEND, "Access-Control-Request-Method": "DELETE"})
        self.assertEqual(r.status, 204)
        self.assertIsNone(r.header("Access-Control-Allow-Headers"))
        r = self.d.request("OPTIONS", "/auth/logout", headers={
            "Origin": "http://evil.test", "Access-Control-Request-Method": "POST"})
        self.assertEqual(r.status, 403)
        self.assertIsNone(r.header("Access-Control-Allow-Origin"))
        r = self.d.request("OPTIONS", "/auth/logout", headers={
            "Origin": FRONTEND, "Access-Control-Request-Method": "PUT"})
        self.assertEqual(r.status, 403)
        self.assertIsNone(r.header("Access-Control-Allow-Origin"))
        r = self.d.request("OPTIONS", "/auth/logout", headers={
            "Origin": FRONTEND, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, bad header"})
        self.assertEqual(r.status, 400)
        self.assertIsNone(r.header("Access-Control-Allow-Origin"))

    def test_csrf(self):
        b = self.login(Browser(self.d))
        r = b.request("POST", "/auth/logout", headers={"Origin": "http://evil.test"})
        self.assertEqual((r.status, r.json()), (403, {"error": "forbidden"}))
        r = b.request("POST", "/auth/logout", headers={"Content-Type": "application/x-www-form-urlencoded"},
                      body="a=b")
        self.assertEqual(r.status, 403)
        r = b.request("DELETE", "/api/repl/x", headers={"Origin": "http://evil.test"})
        self.assertEqual(r.status, 403)
        self.assertEqual(len(self.session_keys()), 1)
        self.assertEqual(b.get("/auth/me").status, 200)
        # no Origin but JSON (not sendable cross-site without a preflight): allowed
        r = b.request("POST", "/auth/logout", headers={"Content-Type": "application/json"}, body="{}")
        self.assertEqual(r.status, 200)
        # without a session cookie there is nothing to forge
        r = self.d.request("POST", "/auth/logout", headers={"Origin": "http://evil.test"})
        self.assertEqual(r.status, 200)


class OidcFlowTest(AuthTestBase):
    def test_login_flow(self):
        b = Browser(self.d)
        url = self.start_login(b, "mock")
        self.assertTrue(url.startswith(self.oidc.issuer + "/authorize?"), url)
        q = query_of(url)
        self.assertEqual(q["response_type"], "code")
        self.assertEqual(q["client_id"], OIDC_CLIENT)
        self.assertEqual(q["redirect_uri"], OIDC_REDIRECT)
        self.assertEqual(q["scope"], "openid profile email")
        self.assertEqual(q["code_challenge_method"], "S256")
        self.assertRegex(q["nonce"], r"^[A-Za-z0-9_-]{43}$")
        cb = self.provider_redirect(url)
        self.assertEqual(self.finish(b, cb), FRONTEND + "/dashboard")
        r = b.get("/auth/me")
        self.assertEqual(r.status, 200, r.body)
        me = r.json()
        self.assertEqual(me["id"], "johndoe")
        self.assertEqual(me["login"], "JohnDoe")
        self.assertEqual(me["email"], "john.doe@example.com")
        self.assertEqual(me["name"], "John Doe")
        key, = self.session_keys()
        stored = dict(zip(*[iter(self.redis.call("HGETALL", key))] * 2))
        self.assertEqual(stored[b"provider"], b"mock")
        self.assertEqual(sorted(stored), [b"created_at", b"expires_at", b"provider", b"user"])  # no tokens
        self.assertEqual(json.loads(stored[b"user"])["subject"], "mock:johndoe")

    def test_azp(self):
        # an ID token whose azp (authorized party) is another client of the
        # provider is refused; our own client id there is fine
        # (tests/oidc/server.mjs puts the authorization request's azp in the token)
        b = Browser(self.d)
        cb = self.provider_redirect(replace_query(self.start_login(b, "mock"), azp="another-client"))
        self.assert_failed(self.finish(b, cb), "exchange_failed")
        self.assertTrue(any("azp" in e.get("detail", "") for e in self.d.logs() if e.get("msg") == "sign-in failed"))
        b = Browser(self.d)
        cb = self.provider_redirect(replace_query(self.start_login(b, "mock"), azp=OIDC_CLIENT))
        self.assertEqual(self.finish(b, cb), FRONTEND + "/dashboard")
        self.assertEqual(b.get("/auth/me").status, 200)

    def test_nonce_mismatch(self):
        # the provider signs an ID token for another nonce: verify_jwt refuses it
        b = Browser(self.d)
        url = self.start_login(b, "mock")
        cb = self.provider_redirect(replace_query(url, nonce="x" * 43))
        self.assert_failed(self.finish(b, cb), "exchange_failed")
        self.assertTrue(any("nonce" in e.get("detail", "") for e in self.d.logs() if e.get("msg") == "sign-in failed"))

    def test_wrong_pkce(self):
        b = Browser(self.d)
        url = self.start_login(b, "mock")
        other = base64.urlsafe_b64encode(hashlib.sha256(b"other").digest()).rstrip(b"=").decode()
        cb = self.provider_redirect(replace_query(url, code_challenge=other))
        self.assert_failed(self.finish(b, cb), "exchange_failed")


class StoredTokensTest(AuthTestBase):
    def test_tokens_of_older_sessions_are_deleted(self):
        # sessions written before tokens were dropped still hold them (and the
        # OIDC provider's refresh token): the next use deletes them, the
        # session stays
        b = self.login(Browser(self.d), "mock")
        key, = self.session_keys()
        self.redis.call("HSET", key, "access_token", "old-access", "refresh_token", "old-refresh",
                        "token_expires_at", str(int(time.time()) + 60))
        r = b.get("/auth/me")
        self.assertEqual(r.status, 200, r.body)
        stored = dict(zip(*[iter(self.redis.call("HGETALL", key))] * 2))
        self.assertEqual(sorted(stored), [b"created_at", b"expires_at", b"provider", b"user"])


class ExpiryTest(AuthTestBase):
    session_conf = {"ttl": 4, "state_ttl": 1}
    extra = {"public_url": "https://devex.example.com", "environment": "development"}

    def test_state_expires(self):
        b = Browser(self.d)
        url = self.start_login(b)
        # Secure and host-only: the __Host- prefix, which needs Path=/
        val, attrs = b.last_cookies["__Host-devex_oauth_state"]
        self.assertIn("secure", attrs)
        self.assertEqual(attrs["path"], "/")
        self.assertNotIn("domain", attrs)
        cb = self.provider_redirect(url)
        time.sleep(1.6)
        self.assert_failed(self.finish(b, cb), "invalid_state")

    def test_session_expires_and_slides(self):
        b = self.login(Browser(self.d))
        val, attrs = b.last_cookies["__Host-devex_session"]
        self.assertIn("secure", attrs)
        self.assertEqual(attrs["path"], "/")
        self.assertNotIn("domain", attrs)
        self.assertNotIn("devex_session", b.jar)
        # the session is read from the prefixed name only: a cookie named
        # devex_session (which a sibling subdomain could plant) is not a session
        r = self.d.get("/auth/me", headers={"Cookie": "devex_session=" + val})
        self.assertEqual(r.status, 401)
        key, = self.session_keys()
        self.assertEqual(b.get("/auth/me").status, 200)
        self.assertNotIn("__Host-devex_session", b.last_cookies)  # more than half left: no renewal
        time.sleep(2.3)
        r = b.get("/auth/me")
        self.assertEqual(r.status, 200)
        # renewed: a fresh TTL in Redis and a new Max-Age on the cookie
        self.assertEqual(b.last_cookies["__Host-devex_session"][1]["max-age"], "4")
        self.assertGreater(self.redis.call("PTTL", key), 3000)
        time.sleep(2.3)  # 4.6 s after sign-in: alive thanks to the renewal
        self.assertEqual(b.get("/auth/me").status, 200)
        time.sleep(4.5)
        r = b.get("/auth/me")
        self.assertEqual((r.status, r.json()), (401, {"error": "unauthorized"}))
        self.assertEqual(self.session_keys(), [])

    def test_development_origin(self):
        r = self.d.get("/auth/status", headers={"Origin": "http://localhost:3000"})
        self.assertEqual(r.header("Access-Control-Allow-Origin"), "http://localhost:3000")


class MaxLifetimeTest(AuthTestBase):
    # sliding 4 s, at most 6 s: a session used all the time still ends
    session_conf = {"ttl": 4, "max_lifetime": 6, "state_ttl": 600}

    def test_busy_session_ends_at_max_lifetime(self):
        b = self.login(Browser(self.d))
        t0 = time.monotonic()
        key, = self.session_keys()
        created = int(self.redis.call("HGET", key, "created_at"))
        renewed = []
        while time.monotonic() - t0 < 4.2:  # every 0.4 s: the sliding TTL alone would never end it
            r = b.get("/auth/me")
            self.assertEqual(r.status, 200, "%.1f s after sign-in" % (time.monotonic() - t0))
            if "devex_session" in b.last_cookies:
                renewed.append(int(b.last_cookies["devex_session"][1]["max-age"]))
            # neither Redis's TTL nor the cookie outlives created_at + max_lifetime
            self.assertLessEqual(self.redis.call("PTTL", key) / 1000.0, created + 6 - time.time() + 1)
            time.sleep(0.4)
        self.assertTrue(renewed, "the session was never renewed")
        self.assertTrue(all(age <= 6 for age in renewed), renewed)
        while time.monotonic() - t0 < 7.2:
            time.sleep(0.4)
            r = b.get("/auth/me")
            if r.status == 401:
                break
        self.assertEqual((r.status, r.json()), (401, {"error": "unauthorized"}))
        self.assertEqual(self.session_keys(), [])


class RedisDownTest(AuthTestBase):
    def test_redis_down(self):
        b = self.login(Browser(self.d))
        self.redis.stop()
        try:
            r = b.get("/auth/me")
            self.assertEqual((r.status, r.json()), (503, {"error": "session store unavailable"}))
            r = b.get("/auth/github/login")
            self.assertEqual((r.status, r.header("Location")), (302, FRONTEND + "?error=session_error"))
        finally:
            self.redis.start()
        # each worker reconnects on its own (with backoff), and a request may
        # reach either: ten 401s in a row mean both are back. The restarted
        # Redis has no sessions, hence 401
        harness.poll(lambda: [b.get("/auth/me").status for _ in range(10)] == [401] * 10,
                     "ten 401s in a row from /auth/me after the restart", timeout=20, interval=0.1)


if __name__ == "__main__":
    harness.main()
