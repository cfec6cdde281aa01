"""E-mail magic-link sign-in (issue #15, section 1): POST /auth/magiclink/login
and GET /auth/magiclink/verify (lua/routes/magiclink.lua, lua/auth/magiclink.lua,
lua/auth/mail.lua, src/smtp.c), against a real redis-server, a small SMTP
server on loopback (fakes/mail_fakes.py: STARTTLS, implicit TLS, AUTH PLAIN
and LOGIN) and a Resend-shaped HTTP stand-in.

Run: python3 tests/integration/test_magiclink.py   (DEVEXD_BIN picks the binary)
"""

import email
import email.header
import email.policy
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd, RedisServer  # noqa: E402
from fakes.mail_fakes import ResendFake, SmtpServer, closed_port  # noqa: E402
from test_auth import Browser  # noqa: E402

FRONTEND = "http://frontend.test"
PUBLIC = "http://devexd.test"
PREFIX = "devex:"
SENT = {"message": "Magic link sent! Check your email and click the link to sign in.", "success": True}
SUBJECT = "Connexion à DevEx ✓ — votre lien"
FROM_NAME = "Équipe DevEx"
POLICY = 'return { magiclink = { allow = function(a) return not a:match("@blocked%.test$") end } }\n'
JSON = {"Content-Type": "application/json"}


def post_login(d, body, headers=None):
    h = dict(JSON)
    h.update(headers or {})
    if not isinstance(body, (str, bytes)):
        body = json.dumps(body)
    return d.request("POST", "/auth/magiclink/login", body=body, headers=h)


def link_of(msg_bytes):
    m = email.message_from_bytes(msg_bytes, policy=email.policy.default)
    text = m.get_body(("plain",)).get_content()
    found = re.findall(r"https?://\S+", text)
    assert len(found) == 1, text
    return found[0]


def local_path(url):
    u = urllib.parse.urlsplit(url)
    assert url.startswith(PUBLIC + "/"), url
    return u.path + "?" + u.query


class MagicLinkBase(unittest.TestCase):
    scheme = "smtp"
    tls = False
    implicit = False

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="devexd-magic-")
        cert = key = None
        if cls.tls:
            cert, key = harness.make_tls_cert(cls.tmp)
        cls.redis = RedisServer().__enter__()
        cls.smtp = SmtpServer(cert=cert, key=key, implicit_tls=cls.implicit).__enter__()
        policy = os.path.join(cls.tmp, "policy.lua")
        with open(policy, "w") as f:
            f.write(POLICY)
        ml = {"smtp_url": cls.smtp.url(cls.scheme), "username": "mailer", "password": "s3cret",
              "from": "noreply@devex.test", "from_name": FROM_NAME, "subject": SUBJECT, "timeout": 5}
        if cert:
            ml["ca_file"] = cert
        cls.conf = {
            "environment": "production", "allow_insecure_http": True,
            "public_url": PUBLIC, "frontend_url": FRONTEND,
            "redis": {"url": cls.redis.url(), "timeout": 2},
            "session": {"ttl": 3600},
            "auth": {"magiclink": ml},
            "policy": {"file": policy},
        }
        cls.d = Devexd(app=None, threads=2, config=cls.conf).__enter__()

    @classmethod
    def tearDownClass(cls):
        harness.stop_class_servers(cls, "d", "smtp", "redis")

    def setUp(self):
        self.redis.call("FLUSHALL")
        self.smtp.reset()

    def keys(self, pattern):
        return sorted(k.decode() for k in self.redis.call("KEYS", PREFIX + pattern))

    def request_link(self, address, count=1):
        r = post_login(self.d, {"email": address})
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json(), SENT)
        return self.smtp.wait_message(count)


class SmtpFlowTest(MagicLinkBase):
    def test_sign_in_once(self):
        msg = self.request_link("Alice.Smith@Example.COM")
        self.assertEqual(msg["mail_from"].split(" ")[0], "FROM:<noreply@devex.test>")
        self.assertEqual(msg["rcpts"], ["TO:<alice.smith@example.com>"])  # trimmed, lower-cased
        self.assertEqual(msg["auth_user"], "mailer")
        # the token is stored hashed, bound to the address, with a 15-minute TTL
        link = link_of(msg["data"])
        token = urllib.parse.parse_qs(urllib.parse.urlsplit(link).query)["token"][0]
        self.assertRegex(token, r"^[A-Za-z0-9_-]{43}$")
        self.assertTrue(link.startswith(PUBLIC + "/auth/magiclink/verify?token="), link)
        k = PREFIX + "magiclink:" + hashlib.sha256(token.encode()).hexdigest()
        self.assertEqual(self.keys("magiclink:*"), [k])
        self.assertEqual(self.redis.call("GET", k), b"alice.smith@example.com")
        self.assertTrue(890 <= self.redis.call("TTL", k) <= 900)
        self.assertNotIn(token.encode(), b"".join(self.redis.call("KEYS", "*")))

        b = Browser(self.d)
        r = b.get(local_path(link))
        self.assertEqual(r.status, 307, r.body)
        self.assertEqual(r.header("Location"), FRONTEND + "/dashboard")
        self.assertIn("devex_session", b.jar)
        self.assertEqual(self.keys("magiclink:*"), [])  # consumed
        me = b.get("/auth/me")
        self.assertEqual(me.status, 200, me.body)
        u = me.json()
        self.assertEqual(set(u), {"id", "login", "name", "email", "avatar_url", "created_at"})
        self.assertEqual(u["login"], "alice.smith")
        self.assertEqual(u["name"], "alice.smith")
        self.assertEqual(u["email"], "alice.smith@example.com")
        self.assertRegex(u["created_at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        sess = self.keys("session:*")
        self.assertEqual(len(sess), 1)
        user = json.loads(self.redis.call("HGET", sess[0], "user"))
        self.assertEqual(user["subject"], "email:alice.smith@example.com")
        self.assertRegex(user["owner"], r"^em_[a-z2-7]{52}$")
        self.assertEqual(self.redis.call("HGET", sess[0], "provider"), b"magiclink")
        # a REPL listing works for the new owner
        self.assertEqual(b.get("/auth/status").json()["authenticated"], True)

        # the link works once
        b2 = Browser(self.d)
        r = b2.get(local_path(link))
        self.assertEqual(r.status, 307)
        self.assertEqual(r.header("Location"), FRONTEND + "?error=invalid_token")
        self.assertNotIn("devex_session", b2.jar)
        self.assertEqual(len(self.keys("session:*")), 1)

    def test_same_owner_on_every_sign_in(self):
        owners = []
        for i, addr in enumerate(["bob@example.com", "  BOB@example.com "]):
            link = link_of(self.request_link(addr, i + 1)["data"])
            b = Browser(self.d)
            self.assertEqual(b.get(local_path(link)).header("Location"), FRONTEND + "/dashboard")
            sid = b.jar["devex_session"]
            k = PREFIX + "session:" + hashlib.sha256(sid.encode()).hexdigest()
            owners.append(json.loads(self.redis.call("HGET", k, "user"))["owner"])
        self.assertEqual(owners[0], owners[1])

    def test_message_format(self):
        msg = self.request_link("carol@example.com")
        raw = msg["data"]
        head = raw.split(b"\r\n\r\n", 1)[0]
        self.assertTrue(all(ord(" ") <= c < 127 or c in (9, 10, 13) for c in raw), "8-bit data in the message")
        self.assertNotIn(b"\n", raw.replace(b"\r\n", b""))  # CRLF line ends only
        self.assertIn(b"=?UTF-8?B?", head)  # RFC 2047 words for the non-ASCII subject and name
        m = email.message_from_bytes(raw, policy=email.policy.default)
        self.assertEqual(str(m["Subject"]), SUBJECT)
        self.assertEqual(m["From"].addresses[0].display_name, FROM_NAME)
        self.assertEqual(m["From"].addresses[0].addr_spec, "noreply@devex.test")
        self.assertEqual(m["To"].addresses[0].addr_spec, "carol@example.com")
        self.assertIsNotNone(m["Date"])
        self.assertIsNotNone(m["Message-ID"])
        self.assertEqual(m["MIME-Version"], "1.0")
        self.assertEqual(m.get_content_type(), "multipart/alternative")
        parts = [p.get_content_type() for p in m.iter_parts()]
        self.assertEqual(parts, ["text/plain", "text/html"])
        text = m.get_body(("plain",)).get_content()
        html = m.get_body(("html",)).get_content()
        link = link_of(raw)
        self.assertIn(link, text)
        self.assertIn('href="%s"' % link.replace("&", "&amp;"), html)
        self.assertIn("15 minutes", text)
        for line in raw.split(b"\r\n"):
            self.assertLessEqual(len(line), 998)

    def test_invalid_addresses(self):
        bad = [None, 5, "", "plain", "a@b", "@example.com", "a@", "a@@example.com", "a@b@example.com",
               "a b@example.com", "a,b@example.com", "<a@example.com>", "a@example.com>",
               "a@example.com\r\nBcc: evil@example.org", "a@example.com\nSubject: x", "a\r\n@example.com",
               "a@exa mple.com", "a@-example.com", "a..b@example.com", ".a@example.com",
               "\"a\"@example.com", "a@example.com;b@example.org", "a(b)@example.com",
               "x" * 65 + "@example.com", "a@" + "b" * 250 + ".com", "é@example.com"]
        for addr in bad:
            r = post_login(self.d, {"email": addr})
            self.assertEqual((r.status, r.json()), (400, {"error": "Invalid email address"}), addr)
        for body in ["not json", "", "{", "[1]", '"a@example.com"', '{"mail": "a@example.com"}']:
            r = post_login(self.d, body)
            self.assertEqual((r.status, r.json()), (400, {"error": "Invalid email address"}), body)
        r = self.d.request("POST", "/auth/magiclink/login", body="email=a@example.com",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(r.status, 400)
        time.sleep(0.2)
        self.assertEqual(self.smtp.messages, [])
        self.assertEqual(self.keys("magiclink:*"), [])
        self.assertFalse(any("evil" in c for c in self.smtp.commands))

    def test_rate_limit_per_address(self):
        for i in range(3):
            self.request_link("dave@example.com", i + 1)
        r = post_login(self.d, {"email": " DAVE@example.com"})
        self.assertEqual(r.status, 429)
        self.assertEqual(r.json(), {"error": "Too many requests. Please try again later."})
        self.assertTrue(1 <= int(r.header("Retry-After")) <= 60)
        self.assertEqual(len(self.smtp.messages), 3)
        self.request_link("erin@example.com", 4)  # another address is not limited
        # the address is not in Redis in clear
        self.assertFalse(any(b"dave" in k for k in self.redis.call("KEYS", "*")))

    def test_rate_limit_per_client(self):
        for i in range(10):
            r = post_login(self.d, {"email": "user%d@example.com" % i})
            self.assertEqual(r.status, 200, r.body)
        r = post_login(self.d, {"email": "user10@example.com"})
        self.assertEqual(r.status, 429)
        self.assertEqual(r.json(), {"error": "Too many requests. Please try again later."})

    def test_same_answer_known_unknown_refused(self):
        link = link_of(self.request_link("known@example.com")["data"])
        self.assertEqual(Browser(self.d).get(local_path(link)).status, 307)  # now a known user
        answers = []
        for addr in ["known@example.com", "never-seen@example.com", "someone@blocked.test"]:
            r = post_login(self.d, {"email": addr})
            answers.append((r.status, r.body, r.header("Content-Type"), r.header("Cache-Control")))
        self.assertEqual(answers[0], answers[1])
        self.assertEqual(answers[0], answers[2])
        self.assertEqual(json.loads(answers[0][1]), SENT)
        time.sleep(0.2)
        # the policy refused blocked.test: no mail, no token
        self.assertEqual([m["rcpts"] for m in self.smtp.messages],
                         [["TO:<known@example.com>"], ["TO:<known@example.com>"], ["TO:<never-seen@example.com>"]])
        self.assertEqual(len(self.keys("magiclink:*")), 2)

    def test_bad_tokens(self):
        link = link_of(self.request_link("frank@example.com")["data"])
        token = urllib.parse.parse_qs(urllib.parse.urlsplit(link).query)["token"][0]
        b = Browser(self.d)
        tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
        cases = [
            ("/auth/magiclink/verify", "missing_token"),
            ("/auth/magiclink/verify?token=", "missing_token"),
            ("/auth/magiclink/verify?token=" + tampered, "invalid_token"),
            ("/auth/magiclink/verify?token=short", "invalid_token"),
            ("/auth/magiclink/verify?token=" + urllib.parse.quote(token + "\r\nX: y"), "invalid_token"),
            ("/auth/magiclink/verify?token=" + "A" * 5000, "invalid_token"),
        ]
        for path, reason in cases:
            r = b.get(path)
            self.assertEqual(r.status, 307, path)
            self.assertEqual(r.header("Location"), FRONTEND + "?error=" + reason, path)
        self.assertEqual(self.keys("session:*"), [])
        # the real one still works after the failed attempts
        self.assertEqual(b.get(local_path(link)).header("Location"), FRONTEND + "/dashboard")

    def test_expired(self):
        link = link_of(self.request_link("grace@example.com")["data"])
        (k,) = self.keys("magiclink:*")
        self.redis.call("PEXPIRE", k, 50)  # the TTL, shortened
        time.sleep(0.3)
        r = Browser(self.d).get(local_path(link))
        self.assertEqual(r.header("Location"), FRONTEND + "?error=invalid_token")
        self.assertEqual(self.keys("session:*"), [])

    def test_concurrent_use_signs_in_once(self):
        link = link_of(self.request_link("heidi@example.com")["data"])
        results = []

        def use():
            results.append(Browser(self.d).get(local_path(link)).header("Location"))
        threads = [harness.in_thread(use) for _ in range(6)]
        for t, res in threads:
            t.join(10)
            self.assertNotIn("error", res)
        self.assertEqual(sorted(results),
                         [FRONTEND + "/dashboard"] + [FRONTEND + "?error=invalid_token"] * 5)
        self.assertEqual(len(self.keys("session:*")), 1)

    def test_smtp_refuses_auth(self):
        self.smtp.refuse_auth = True
        r = post_login(self.d, {"email": "ivan@example.com"})
        self.assertEqual((r.status, r.json()), (500, {"error": "Failed to send magic link"}))
        self.assertEqual(self.keys("magiclink:*"), [])  # the unsent link is revoked
        self.assertEqual(self.smtp.messages, [])
        log = self.d.raw_log()
        self.assertNotIn("s3cret", log)

    def test_smtp_refuses_recipient(self):
        self.smtp.refuse_rcpt = True
        r = post_login(self.d, {"email": "judy@example.com"})
        self.assertEqual((r.status, r.json()), (500, {"error": "Failed to send magic link"}))
        self.assertEqual(self.keys("magiclink:*"), [])

    def test_cors_from_frontend(self):
        pre = self.d.request("OPTIONS", "/auth/magiclink/login", headers={
            "Origin": FRONTEND, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        self.assertIn(pre.status, (200, 204))
        self.assertEqual(pre.header("Access-Control-Allow-Origin"), FRONTEND)
        self.assertEqual(pre.header("Access-Control-Allow-Credentials"), "true")
        self.assertIn("POST", pre.header("Access-Control-Allow-Methods"))
        # with a (stale) session cookie, as a browser that signed in before sends it
        r = post_login(self.d, {"email": "kim@example.com"},
                       headers={"Origin": FRONTEND, "Cookie": "devex_session=" + "x" * 43})
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.header("Access-Control-Allow-Origin"), FRONTEND)
        self.assertEqual(r.header("Access-Control-Allow-Credentials"), "true")
        # another origin with the cookie: refused (CSRF)
        r = post_login(self.d, {"email": "kim@example.com"},
                       headers={"Origin": "http://evil.test", "Cookie": "devex_session=" + "x" * 43})
        self.assertEqual(r.status, 403)
        self.assertIsNone(r.header("Access-Control-Allow-Origin"))

    def test_provider_routes_still_work(self):
        # /auth/:provider/login is still there for other names (none configured here)
        self.assertEqual(self.d.request("GET", "/auth/nosuch/login").status, 404)
        # GET on the magic-link login is not the provider route's "magiclink" provider either
        self.assertIn(self.d.request("GET", "/auth/magiclink/login").status, (404, 405))


class StartTlsTest(MagicLinkBase):
    """smtp:// to a server that offers STARTTLS: the mail goes over TLS (ca_file)."""
    tls = True

    def test_starttls_used(self):
        msg = self.request_link("leo@example.com")
        self.assertTrue(msg["tls"])
        self.assertIn("STARTTLS", self.smtp.commands)


class ImplicitTlsTest(MagicLinkBase):
    """smtps:// (port 465 style): TLS from the first byte."""
    tls = True
    implicit = True
    scheme = "smtps"

    def test_smtps(self):
        msg = self.request_link("mia@example.com")
        self.assertTrue(msg["tls"])
        link = link_of(msg["data"])
        self.assertEqual(Browser(self.d).get(local_path(link)).header("Location"), FRONTEND + "/dashboard")


class SmtpDownTest(unittest.TestCase):
    def test_server_down_and_not_configured(self):
        with RedisServer() as redis:
            conf = {"environment": "development", "public_url": PUBLIC, "frontend_url": FRONTEND,
                    "redis": {"url": redis.url(), "timeout": 2},
                    "auth": {"magiclink": {"smtp_url": "smtp://127.0.0.1:%d" % closed_port(),
                                           "from": "noreply@devex.test", "timeout": 3}}}
            with Devexd(app=None, config=conf) as d:
                r = post_login(d, {"email": "nina@example.com"})
                self.assertEqual((r.status, r.json()), (500, {"error": "Failed to send magic link"}))
            # off unless configured
            conf = dict(conf)
            del conf["auth"]
            with Devexd(app=None, config=conf) as d:
                r = post_login(d, {"email": "nina@example.com"})
                self.assertEqual(r.status, 404)
                self.assertIn("error", r.json())
                self.assertEqual(d.request("GET", "/auth/magiclink/verify?token=x").status, 404)


def non_loopback_address():
    """An IPv4 address of this machine that is not loopback, or None."""
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("10.255.255.255", 9))  # UDP: no packet is sent
        addr = s.getsockname()[0]
    except OSError:
        return None
    finally:
        s.close()
    return None if addr.startswith("127.") else addr


class StartTlsRequiredTest(unittest.TestCase):
    def test_plain_smtp_refused_beyond_loopback(self):
        addr = non_loopback_address()
        if addr is None:
            self.skipTest("no non-loopback address")
        with RedisServer() as redis, SmtpServer(host=addr) as smtp:  # offers no STARTTLS
            conf = {"environment": "development", "public_url": PUBLIC, "frontend_url": FRONTEND,
                    "redis": {"url": redis.url(), "timeout": 2},
                    "auth": {"magiclink": {"smtp_url": "smtp://%s:%d" % (addr, smtp.port), "username": "mailer",
                                           "password": "s3cret", "from": "noreply@devex.test", "timeout": 5}}}
            with Devexd(app=None, config=conf) as d:
                r = post_login(d, {"email": "quinn@example.com"})
                self.assertEqual((r.status, r.json()), (500, {"error": "Failed to send magic link"}))
                # the password never went over the cleartext connection, nor the mail
                self.assertTrue(smtp.commands, "devexd did not connect")
                self.assertFalse([c for c in smtp.commands if c.split(" ")[0].upper() in ("AUTH", "MAIL")],
                                 smtp.commands)
                self.assertEqual(smtp.messages, [])


class HangingServerTest(unittest.TestCase):
    def test_timeout_and_shutdown_while_sending(self):
        with RedisServer() as redis, SmtpServer() as smtp:
            smtp.hang = True
            conf = {"environment": "development", "public_url": PUBLIC, "frontend_url": FRONTEND,
                    "redis": {"url": redis.url(), "timeout": 2},
                    "auth": {"magiclink": {"smtp_url": smtp.url(), "from": "noreply@devex.test", "timeout": 1}}}
            with Devexd(app=None, config=conf) as d:
                t0 = time.monotonic()
                r = post_login(d, {"email": "olive@example.com"})
                self.assertEqual((r.status, r.json()), (500, {"error": "Failed to send magic link"}))
                self.assertLess(time.monotonic() - t0, 5)
            # a send in flight when devexd stops: the parked task is abandoned cleanly
            # (the sanitizer build checks that nothing leaks)
            conf["auth"]["magiclink"]["timeout"] = 30
            with Devexd(app=None, config=conf, shutdown_timeout=1) as d:
                n = smtp.connections
                t, _ = harness.in_thread(post_login, d, {"email": "olive@example.com"})
                with smtp.cond:
                    self.assertTrue(smtp.cond.wait_for(lambda: smtp.connections > n, 10))


SHIPPED_CONF = os.path.join(harness.SOURCE_DIR, "etc", "devexd.conf.lua")


class ShippedConfigTest(unittest.TestCase):
    """etc/devexd.conf.lua: the original's variables."""

    def env(self, **extra):
        env = {k: v for k, v in os.environ.items()
               if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR") or k.endswith("SAN_OPTIONS")}
        env.update(extra)
        return env

    def check(self, lua_asserts, **env):
        with tempfile.TemporaryDirectory(prefix="devexd-magic-conf-") as tmp:
            conf = os.path.join(tmp, "c.lua")
            with open(conf, "w") as f:
                f.write("local c = dofile(%s)\nlocal m = c.auth.magiclink\n%s\nreturn c\n"
                        % (json.dumps(SHIPPED_CONF), lua_asserts))
            return harness.run([harness.DEVEXD_BIN, "--check", "-c", conf, "-L", harness.LUA_DIR],
                               env=self.env(PUBLIC_URL="https://devex.example.com", **env))

    def test_gmail_variables(self):
        p = self.check('assert(m.smtp_url == "smtps://smtp.gmail.com:465", m.smtp_url)\n'
                       'assert(m.username == "me@gmail.com" and m.from == "me@gmail.com")\n'
                       'assert(m.password == "app-password" and m.token_ttl == 900)',
                       GMAIL_USER="me@gmail.com", GMAIL_PASSWORD="app-password")
        self.assertEqual(p.returncode, 0, p.stderr)

    def test_smtp_and_resend_variables(self):
        p = self.check('assert(m.smtp_url == "smtp://mail.example.com:587")\n'
                       'assert(m.username == "u" and m.password == "p" and m.from == "no@example.com")\n'
                       'assert(m.resend_api_key == "re_x" and m.redirect_url == "https://app.example.com/verify")',
                       SMTP_URL="smtp://mail.example.com:587", SMTP_USERNAME="u", SMTP_PASSWORD="p",
                       MAIL_FROM="no@example.com", RESEND_API_KEY="re_x",
                       MAGICLINK_REDIRECT_URL="https://app.example.com/verify")
        self.assertEqual(p.returncode, 0, p.stderr)
        p = self.check("", SMTP_URL="http://mail.example.com")
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("SMTP_URL", p.stderr)
        p = self.check("", SMTP_URL="smtps://mail.example.com")  # no MAIL_FROM
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("MAIL_FROM", p.stderr)
        p = self.check("assert(m.smtp_url == nil and m.resend_api_key == nil)")  # off by default
        self.assertEqual(p.returncode, 0, p.stderr)


class ResendTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.redis = RedisServer().__enter__()
        cls.resend = ResendFake().__enter__()
        cls.d = Devexd(app=None, config={
            "environment": "development", "frontend_url": FRONTEND,
            "redis": {"url": cls.redis.url(), "timeout": 2},
            "auth": {"magiclink": {"resend_api_key": "re_test_key", "resend_url": cls.resend.base,
                                   "from": "noreply@devex.test", "from_name": FROM_NAME, "subject": SUBJECT,
                                   "redirect_url": PUBLIC + "/auth/magiclink/verify"}},
        }).__enter__()

    @classmethod
    def tearDownClass(cls):
        harness.stop_class_servers(cls, "d", "resend", "redis")

    def setUp(self):
        self.redis.call("FLUSHALL")
        self.resend.status = None
        self.resend.requests.clear()

    def test_sent_through_resend(self):
        r = post_login(self.d, {"email": "Olga@Example.com"})
        self.assertEqual((r.status, r.json()), (200, SENT))
        ((headers, doc),) = self.resend.requests
        self.assertEqual(headers["Authorization"], "Bearer re_test_key")
        self.assertEqual(doc["to"], ["olga@example.com"])
        self.assertEqual(doc["subject"], SUBJECT)
        self.assertIn("noreply@devex.test", doc["from"])
        found = re.findall(r"https?://\S+", doc["text"])
        self.assertEqual(len(found), 1)
        self.assertIn(found[0].replace("&", "&amp;"), doc["html"])
        b = Browser(self.d)
        r = b.get(local_path(found[0]))
        self.assertEqual(r.header("Location"), FRONTEND + "/dashboard")
        self.assertEqual(b.get("/auth/me").json()["email"], "olga@example.com")

    def test_resend_failure(self):
        self.resend.status = 500
        r = post_login(self.d, {"email": "pat@example.com"})
        self.assertEqual((r.status, r.json()), (500, {"error": "Failed to send magic link"}))
        self.assertEqual(self.redis.call("KEYS", PREFIX + "magiclink:*"), [])


if __name__ == "__main__":
    harness.main()
