"""The same GET over every protocol devexd speaks: HTTP/1.1 keep-alive,
HTTP/2 with prior knowledge (nghttp, curl), HTTP/2 over TLS by ALPN, the
HTTP/1.1 fallback over TLS, and TLS verification against the test CA."""

import os
import socket
import ssl
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

PATH = "/hello/proto"
EXPECTED = '{"hello":"proto"}'


class ProtocolsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = harness.Devexd(app="testapp", threads=2, tls=True)
        cls.d.__enter__()

    @classmethod
    def tearDownClass(cls):
        cls.d.__exit__(None, None, None)

    def access(self, rid):
        lines = self.d.wait_log(lambda e: e.get("msg") == "access" and e.get("request_id") == rid,
                                what="access line " + rid)
        self.assertEqual(len(lines), 1, lines)
        return lines[0]

    def test_http1_keepalive(self):
        conn = self.d.connection()
        try:
            sock = None
            for i in range(5):
                rid = "h1-keepalive-%d" % i
                r = self.d.request("GET", PATH, headers={"X-Request-Id": rid}, conn=conn)
                self.assertEqual(r.status, 200)
                self.assertEqual(r.body.decode(), EXPECTED)
                self.assertNotEqual((r.header("Connection") or "").lower(), "close")
                if sock is None:
                    sock = conn.sock
                # http.client reopens a closed connection: the socket object
                # staying the same proves all requests went over one connection
                self.assertIs(conn.sock, sock, "request %d used a new connection" % i)
                self.assertEqual(self.access(rid)["http"], 1)
            # a HEAD and a POST on the same connection too
            r = self.d.request("HEAD", PATH, conn=conn)
            self.assertEqual(r.status, 200)
            r = self.d.request("POST", "/json", body=b'{"k":1}', conn=conn)
            self.assertEqual((r.status, r.json()), (200, {"got": {"k": 1}}))
            self.assertIs(conn.sock, sock)
        finally:
            conn.close()

    def test_http2_prior_knowledge_nghttp(self):
        rid = "h2c-nghttp"
        p = harness.run(["nghttp", "-v", "-H", "x-request-id: " + rid, self.d.url(PATH)])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("send HEADERS frame", p.stdout)
        self.assertIn("recv SETTINGS frame", p.stdout)
        self.assertRegex(p.stdout, r"recv \(stream_id=\d+\) :status: 200")
        self.assertRegex(p.stdout, r"recv \(stream_id=\d+\) x-request-id: " + rid)
        self.assertIn(EXPECTED, p.stdout)
        self.assertEqual(self.access(rid)["http"], 2)

    def test_http2_multiplexed_nghttp(self):
        # -m 10: ten concurrent streams for the same URI on one connection
        p = harness.run(["nghttp", "-n", "-s", "-m", "10", self.d.url(PATH)])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        rows = [line.split() for line in p.stdout.splitlines() if line.strip().endswith(PATH)]
        self.assertEqual(len(rows), 10, p.stdout)
        for row in rows:
            self.assertEqual(row[4], "200", row)
            self.assertEqual(row[5], str(len(EXPECTED)), row)

    def test_http2_prior_knowledge_curl(self):
        rid = "h2c-curl"
        rc, body, code, version, err = harness.curl("--http2-prior-knowledge", "-H", "X-Request-Id: " + rid,
                                                    self.d.url(PATH))
        self.assertEqual(rc, 0, err)
        self.assertEqual((code, version, body), ("200", "2", EXPECTED))
        self.assertEqual(self.access(rid)["http"], 2)
        # POST with a JSON body over h2c
        rc, body, code, version, err = harness.curl("--http2-prior-knowledge", "-X", "POST", "--data-binary",
                                                    '{"z":[true]}', self.d.url("/json"))
        self.assertEqual((rc, code, version), (0, "200", "2"), err)
        self.assertEqual(body, '{"got":{"z":[true]}}')

    def test_http2_over_tls_alpn(self):
        rid = "h2-tls-curl"
        rc, body, code, version, err = harness.curl(*self.d.resolve_args(), "--http2", "--cacert", self.d.cert,
                                                    "-H", "X-Request-Id: " + rid, self.d.url(PATH, tls=True))
        self.assertEqual(rc, 0, err)
        self.assertEqual((code, version, body), ("200", "2", EXPECTED))
        self.assertEqual(self.access(rid)["http"], 2)

        # ALPN negotiation itself, with Python's TLS client
        # (H2O registers only the h2 ids: a client offering only http/1.1 gets
        # no ALPN answer, and HTTP/1.1 is the default then)
        for offered, expected in ((["h2", "http/1.1"], ("h2",)), (["http/1.1"], ("http/1.1", None))):
            ctx = ssl.create_default_context(cafile=self.d.cert)
            ctx.set_alpn_protocols(offered)
            with socket.create_connection(("127.0.0.1", self.d.tls_port), timeout=10) as raw:
                with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                    self.assertIn(s.selected_alpn_protocol(), expected)

    def test_http1_over_tls_fallback(self):
        rid = "h1-tls-curl"
        rc, body, code, version, err = harness.curl(*self.d.resolve_args(), "--http1.1", "--cacert", self.d.cert,
                                                    "-H", "X-Request-Id: " + rid, self.d.url(PATH, tls=True))
        self.assertEqual(rc, 0, err)
        self.assertEqual((code, version, body), ("200", "1.1", EXPECTED))
        self.assertEqual(self.access(rid)["http"], 1)

        # keep-alive over TLS with http.client (no ALPN offered: HTTP/1.1)
        conn = self.d.tls_connection()
        try:
            sock = None
            for _ in range(3):
                r = self.d.request("GET", PATH, conn=conn)
                self.assertEqual((r.status, r.body.decode()), (200, EXPECTED))
                sock = sock or conn.sock
                self.assertIs(conn.sock, sock)
        finally:
            conn.close()

    def test_tls_without_ca_fails(self):
        rc, body, code, version, err = harness.curl(*self.d.resolve_args(), "--http2",
                                                    self.d.url(PATH, tls=True))
        self.assertEqual(rc, 60, "curl should fail certificate verification: rc=%d %s" % (rc, err))
        self.assertEqual(code, "000")
        with self.assertRaises(ssl.SSLCertVerificationError):
            ctx = ssl.create_default_context()
            with socket.create_connection(("127.0.0.1", self.d.tls_port), timeout=10) as raw:
                with ctx.wrap_socket(raw, server_hostname="localhost"):
                    pass
        # a wrong host name fails too, even with the CA
        rc, _, _, _, err = harness.curl("--cacert", self.d.cert, "--resolve",
                                        "wrong.example:%d:127.0.0.1" % self.d.tls_port,
                                        "https://wrong.example:%d%s" % (self.d.tls_port, PATH))
        self.assertEqual(rc, 60, err)
        # and the server still serves after failed handshakes
        rc, body, code, version, err = harness.curl(*self.d.resolve_args(), "--cacert", self.d.cert,
                                                    self.d.url(PATH, tls=True))
        self.assertEqual((rc, code, body), (0, "200", EXPECTED), err)

    def test_same_answer_everywhere(self):
        bodies = set()
        for args in (["--http1.1", self.d.url(PATH)],
                     ["--http2-prior-knowledge", self.d.url(PATH)],
                     ["--http2", "--cacert", self.d.cert, self.d.url(PATH, tls=True)],
                     ["--http1.1", "--cacert", self.d.cert, self.d.url(PATH, tls=True)]):
            rc, body, code, version, err = harness.curl(*(self.d.resolve_args() + args))
            self.assertEqual((rc, code), (0, "200"), err)
            bodies.add(body)
        self.assertEqual(bodies, {EXPECTED})


if __name__ == "__main__":
    harness.main()
