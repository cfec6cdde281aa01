"""Redis over TLS (rediss://, issue 14 item 4) against a real redis-server
with its own TLS (--tls-port) and certificates made here with openssl: a CA,
a server certificate for localhost and 127.0.0.1, a client certificate, a
second CA nobody signed with, and a certificate for another host.

  * the shipped app end to end over rediss:// as an ACL user (sign in, create
    a REPL, list it): devexd's connections reach Redis on the TLS port only;
  * mutual TLS (tls-auth-clients yes): with REDIS_CERT_FILE/REDIS_KEY_FILE
    it works; without, /ping is degraded and the log says why;
  * a wrong CA, a certificate for another host and a plain (non-TLS) port
    are clear errors in the log at start and at /ping, without the password;
  * settings that cannot work (a missing CA file, TLS files with a plain
    redis:// URL) are logged at start;
  * redis-server restarting is survived (reconnect as for plain TCP);
  * 5 MB values round-trip (the bridge's bounded buffers and backpressure),
    several at once in one pipeline.
"""

import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd, RedisServer, poll  # noqa: E402
from fakes.github_fake import GitHubFake  # noqa: E402
import test_repl  # noqa: E402
from test_auth import FRONTEND, GH_REDIRECT  # noqa: E402
from test_redis_auth import ACL, ACL_PASSWORD, ADMIN_PASSWORD  # noqa: E402

# A test app beside the shipped one: big values through services.redis (the
# client the app uses, with the config's TLS files).
BIGAPP = r'''
local framework = require("devex.app")
local rds = require("services.redis")
local crypto = require("devex.crypto")
local app = framework.new()
require("routes.health")(app)

-- a value of n bytes that is not one repeated byte
local function value(n, seed)
  local chunk = {}
  for i = 1, 251 do chunk[i] = string.char((i * 7 + seed) % 256) end
  local s = table.concat(chunk)
  return string.rep(s, n // #s + 1):sub(1, n)
end

-- POST /big?n=BYTES&copies=K: SET K keys of n bytes, read them back in one
-- pipeline, compare in Lua; answers the sizes and a digest of the first
app:post("/big", function(req)
  local n = tonumber(req.query.n)
  local k = tonumber(req.query.copies) or 1
  local r = assert(rds.client())
  local cmds = {}
  for i = 1, k do cmds[i] = { "SET", rds.key("big", i), value(n, i) } end
  local ok, err = r:pipeline(cmds)
  if not ok then return 503, { error = tostring(err) } end
  local gets = {}
  for i = 1, k do gets[i] = { "GET", rds.key("big", i) } end
  local got, gerr = r:pipeline(gets)
  if not got then return 503, { error = tostring(gerr) } end
  local sizes, same = {}, true
  for i = 1, k do
    sizes[i] = #got[i]
    if got[i] ~= value(n, i) then same = false end
  end
  return 200, { sizes = sizes, same = same, sha256 = crypto.sha256_hex(got[1]) }
end)

return app
'''


def openssl(*args):
    subprocess.run(["openssl"] + list(args), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                   timeout=60)


class Certs:
    """A CA, certificates it signed (server, client, another host) and a second CA."""

    def __init__(self, d):
        self.d = d
        self.ca, self.ca_key = self.make_ca("ca", "devexd test CA")
        self.other_ca, _ = self.make_ca("other-ca", "a CA that signed nothing here")
        self.server, self.server_key = self.sign("server", "localhost", "DNS:localhost,IP:127.0.0.1", "serverAuth")
        self.elsewhere, self.elsewhere_key = self.sign("elsewhere", "redis.elsewhere.example",
                                                       "DNS:redis.elsewhere.example", "serverAuth")
        self.client, self.client_key = self.sign("client", "devexd", None, "clientAuth")

    def path(self, name):
        return os.path.join(self.d, name)

    def make_ca(self, name, cn):
        crt, key = self.path(name + ".crt"), self.path(name + ".key")
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", key, "-out", crt, "-days", "2", "-subj", "/CN=" + cn,
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        return crt, key

    def sign(self, name, cn, san, eku):
        crt, key, csr, ext = (self.path(name + s) for s in (".crt", ".key", ".csr", ".ext"))
        openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", key, "-out", csr, "-subj", "/CN=" + cn)
        with open(ext, "w") as f:
            f.write("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\n" % eku)
            if san:
                f.write("subjectAltName=%s\n" % san)
        openssl("x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.ca_key, "-CAcreateserial",
                "-out", crt, "-days", "2", "-extfile", ext)
        return crt, key


class TLSStub:
    """A TLS server on loopback presenting cert (for a certificate devexd must
    refuse): it only accepts and handshakes."""

    def __init__(self, cert, key):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.handshakes = 0
        self.t = threading.Thread(target=self.serve, daemon=True)
        self.t.start()

    def serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            c.settimeout(5)
            try:
                with self.ctx.wrap_socket(c, server_side=True):
                    pass
            except (OSError, ssl.SSLError):
                pass
            finally:
                self.handshakes += 1
                c.close()

    def close(self):
        self.sock.close()


class RedisTLSTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="devexd-redis-tls-")
        cls.certs = Certs(cls.tmp)
        cls.store_dir = os.path.join(cls.tmp, "bucket")
        os.mkdir(cls.store_dir)
        # the TLS port stays reserved like the plain one (RedisServer), so a
        # restart gets it back
        cls._tls_res = socket.socket()
        cls._tls_res.bind(("127.0.0.1", 0))
        cls._tls_res.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        cls.tls_port = cls._tls_res.getsockname()[1]
        c = cls.certs
        cls.redis = RedisServer(password=ADMIN_PASSWORD, args=ACL + [
            "--tls-port", str(cls.tls_port), "--tls-cert-file", c.server, "--tls-key-file", c.server_key,
            "--tls-ca-cert-file", c.ca, "--tls-auth-clients", "no"]).__enter__()
        cls.gh = GitHubFake().__enter__()

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "redis", None) is not None:
            harness.kill_session_runners(cls.redis)
        harness.stop_class_servers(cls, "gh", "redis")
        cls._tls_res.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.redis.call("FLUSHALL")
        self.redis.call("CONFIG", "SET", "tls-auth-clients", "no")

    def url(self, host="localhost", port=None, user="devexd", password=ACL_PASSWORD):
        q = urllib.parse.quote
        return "rediss://%s:%s@%s:%d/0" % (q(user, safe=""), q(password, safe=""), host, port or self.tls_port)

    def devexd(self, name, redis_url, ca=True, client_cert=False, app=None, threads=2, **redis_extra):
        redis_conf = {"url": redis_url, "timeout": 10}
        if ca:
            redis_conf["ca_file"] = self.certs.ca if ca is True else ca
        if client_cert:
            redis_conf["cert_file"], redis_conf["key_file"] = self.certs.client, self.certs.client_key
        redis_conf.update(redis_extra)
        conf = {
            "environment": "test", "frontend_url": FRONTEND,
            "redis": redis_conf,
            "github": self.gh.config(GH_REDIRECT),
            "storage": {"driver": "fs", "dir": self.store_dir},
            "runtime": {"driver": "local", "dir": os.path.join(self.tmp, "ws-" + name), "stop_grace": 2},
        }
        kw = {"app": None}  # the shipped app
        if app:
            kw = {"app": "bigapp", "app_files": {"bigapp.lua": BIGAPP}, "max_body": 1 << 20}
        d = Devexd(threads=threads, config=conf, **kw).__enter__()
        self.addCleanup(d.__exit__, None, None, None)  # before the next test changes Redis
        return d

    def ping_redis(self, d, want):
        seen = []

        def check():
            b = d.get("/ping").json()
            seen.append(b)
            return b if want(b.get("redis", "")) else None
        try:
            return poll(check, "/ping's redis field", timeout=30, interval=0.2)
        except AssertionError as e:
            raise AssertionError("%s; the last answer: %r" % (e, seen[-1] if seen else None)) from None

    def assert_no_secret(self, text):
        for secret in (ACL_PASSWORD, ADMIN_PASSWORD, urllib.parse.quote(ACL_PASSWORD, safe="")):
            self.assertNotIn(secret, text)

    def login(self, d):
        self.d = d
        return test_repl.ReplTest.login(self)

    def devexd_clients(self):
        """[(user, local port)] of the clients Redis has, but this test's own admin connection."""
        out = []
        for line in self.redis.call("CLIENT", "LIST").decode().splitlines():
            f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
            if f.get("cmd") == "client|list":
                continue
            out.append((f.get("user"), int(f["laddr"].rsplit(":", 1)[1])))
        return out

    # ---- tests ----

    def test_acl_user_end_to_end_over_tls(self):
        d = self.devexd("e2e", self.url())
        d.sync_templates()
        self.assertEqual(self.ping_redis(d, lambda v: v == "ok")["redis"], "ok")
        b = self.login(d)
        st, repl = test_repl.ReplTest.create(self, b, name="tls", template="python")
        self.assertEqual(st, 201, repl)
        self.assertEqual([r["id"] for r in b.get("/api/repl").json()], [repl["id"]])
        self.assertEqual(b.request("DELETE", "/api/repl/" + repl["id"], headers={"Content-Type": "application/json"})
                         .status, 200)
        self.assertEqual(b.get("/api/repl").json(), [])
        clients = self.devexd_clients()
        self.assertTrue(clients, "devexd has no connection to Redis")
        # every one is the ACL user's, on the TLS port (none on the plain one)
        self.assertEqual({c for c in clients}, {("devexd", self.tls_port)}, clients)
        self.assertEqual(self.redis.call("ACL", "LOG"), [])
        self.assert_no_secret(d.raw_log())

    def test_mutual_tls(self):
        self.redis.call("CONFIG", "SET", "tls-auth-clients", "yes")
        with_cert = self.devexd("mtls", self.url(), client_cert=True)
        self.assertEqual(self.ping_redis(with_cert, lambda v: v == "ok")["redis"], "ok")
        b = self.login(with_cert)
        self.assertEqual(b.get("/api/repl").json(), [])
        without = self.devexd("no-client-cert", self.url())
        self.assertEqual(self.ping_redis(without, lambda v: v != "ok")["api"], "degraded")
        # TLS 1.3: the server's refusal arrives after the handshake, as an alert
        without.wait_log(lambda e: "redis TLS" in e.get("msg", "") and "certificate required" in json.dumps(e),
                         what="the refused client certificate in the log", timeout=30)
        self.assert_no_secret(without.raw_log())

    def test_bad_certificates_are_clear_errors(self):
        stub = TLSStub(self.certs.elsewhere, self.certs.elsewhere_key)
        self.addCleanup(stub.close)
        cases = {
            # the server's certificate is not signed by the CA devexd trusts
            # (OpenSSL: "self-signed certificate in certificate chain", as
            # redis-server sends its CA along)
            "wrong-ca": (self.url(), self.certs.other_ca, "certificate in certificate chain"),
            # signed by the right CA, but for another host
            "wrong-host": (self.url(port=stub.port), True, "hostname mismatch"),
            # the address is not in the certificate either
            "wrong-ip": (self.url(host="127.0.0.1", port=stub.port), True, "IP address mismatch"),
            # the system's CAs do not know the test CA
            "system-cas": (self.url(), False, "certificate in certificate chain"),
            # rediss:// to Redis's plain port: Redis waits for the end of
            # what it takes for a command, the handshake times out
            "plain-port": (self.url(port=self.redis.port), True, "TLS handshake with 127.0.0.1:%d timed out (is it Redis's TLS port?)" % self.redis.port),
        }
        for name, (redis_url, ca, reason) in cases.items():
            if name == "plain-port":
                redis_url = self.url(host="127.0.0.1", port=self.redis.port)
            with self.subTest(case=name):
                d = self.devexd(name, redis_url, ca=ca)
                # at start: the connection is made at once, and fails in the log
                e = d.wait_log(lambda e: e.get("msg", "").startswith("redis TLS connection failed") and
                               reason in e.get("msg", ""), what="the TLS error at start: " + reason, timeout=30)
                # at /ping: degraded, the reason in its log line
                body = self.ping_redis(d, lambda v: v != "ok")
                self.assertEqual(body["api"], "degraded")
                d.wait_log(lambda e: e.get("msg") == "ping: dependency degraded" and reason in json.dumps(e),
                           what="/ping's log line with " + reason, timeout=30)
                self.assert_no_secret(d.raw_log() + json.dumps(body))
                # logged once per reason and worker (2 threads), not at every retry
                n = len([1 for e in d.logs() if e.get("msg", "").startswith("redis TLS connection failed")])
                self.assertLessEqual(n, 4, "the TLS error is logged at every retry")
        self.assertGreater(stub.handshakes, 0)

    def test_unusable_tls_settings_are_logged_at_start(self):
        cases = {
            # a CA file that is not there
            "missing-ca": (self.url(), os.path.join(self.tmp, "no-such-ca.crt"), "cannot load the CA file"),
            # TLS files with a plain URL would look like TLS and not be
            "plain-url": ("redis://127.0.0.1:%d/0" % self.redis.port, True, "need a rediss:// URL"),
        }
        for name, (redis_url, ca, reason) in cases.items():
            with self.subTest(case=name):
                d = self.devexd(name, redis_url, ca=ca)
                d.wait_log(lambda e: e.get("msg") == "redis client not usable" and reason in e.get("error", ""),
                           what="the unusable client at start: " + reason, timeout=30)
                self.assert_no_secret(d.raw_log())

    def test_restart_is_survived(self):
        # one worker: when /ping says ok, the connection every request uses is back
        d = self.devexd("restart", self.url(), threads=1)
        d.sync_templates()
        self.ping_redis(d, lambda v: v == "ok")
        b = self.login(d)
        st, repl = test_repl.ReplTest.create(self, b, name="before", template="python")
        self.assertEqual(st, 201, repl)
        self.redis.stop()
        self.ping_redis(d, lambda v: v != "ok")
        self.redis.start()
        # nothing persisted: the session and the REPL are gone with Redis's
        # data, but devexd talks to the new process over TLS again
        self.ping_redis(d, lambda v: v == "ok")
        b = self.login(d)
        st, repl = test_repl.ReplTest.create(self, b, name="after", template="python")
        self.assertEqual(st, 201, repl)
        self.assertEqual([r["name"] for r in b.get("/api/repl").json()], ["after"])

    def test_large_values_round_trip(self):
        d = self.devexd("big", self.url(), app=True)
        n = 5 * 1024 * 1024
        r = poll(lambda: (lambda r: r if r.status == 200 else None)(
            d.request("POST", "/big?n=%d&copies=1" % n, timeout=60)), "POST /big", timeout=30, interval=0.2)
        one = r.json()
        self.assertEqual(one["sizes"], [n])
        self.assertIs(one["same"], True)
        # three at once: 15 MB each way through the bridge's 256 KB buffers
        r = d.request("POST", "/big?n=%d&copies=3" % n, timeout=120)
        self.assertEqual(r.status, 200, r.body[:500] + b"\n--- redis-server log ---\n" +
                         self.redis.raw_log()[-3000:].encode())
        self.assertEqual(r.json()["sizes"], [n, n, n])
        self.assertIs(r.json()["same"], True)
        # and Redis holds what was sent
        chunk = bytes((i * 7 + 1) % 256 for i in range(1, 252))
        want = (chunk * (n // len(chunk) + 1))[:n]
        self.assertEqual(r.json()["sha256"], hashlib.sha256(want).hexdigest())
        self.assertEqual(hashlib.sha256(self.redis.call("GET", "devex:big:1")).hexdigest(),
                         hashlib.sha256(want).hexdigest())


if __name__ == "__main__":
    harness.main()
