"""Integration tests of devex.http (src/http.c): devexd runs the test app
apps/httpclient against upstream servers started here on loopback: Python's
ThreadingHTTPServer (cleartext and TLS with a self-signed CA made by the
openssl CLI), a raw socket that answers garbage, and Debian's h2o as an
HTTP/2 upstream. Ordering is asserted with events the upstream records (and
gate files), never with wall-clock thresholds.

Run: python3 tests/integration/test_http_client.py   (DEVEXD_BIN picks the binary)
"""

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

H2O_BIN = shutil.which("h2o") or "/usr/bin/h2o"


# ---- upstream: a Python HTTP/1.1 server ---------------------------------------


class UpstreamState:
    def __init__(self):
        self.lock = threading.Lock()
        self.events = []          # what the streaming endpoints did, in order
        self.ack = threading.Event()
        self.release = threading.Event()
        self.stop = threading.Event()
        self.arrivals = 0         # requests that reached /hold
        self.arrived = threading.Condition(self.lock)
        self.client_ports = []    # the client port of every /echo request

    def event(self, what):
        with self.lock:
            self.events.append(what)

    def reset(self):
        with self.lock:
            self.events = []
            self.arrivals = 0
            self.client_ports = []
        self.ack = threading.Event()
        self.release = threading.Event()

    def wait_arrivals(self, n, timeout=30):
        deadline = time.monotonic() + timeout
        with self.arrived:
            while self.arrivals < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("only %d of %d requests reached the upstream" % (self.arrivals, n))
                self.arrived.wait(left)

    def wait_event(self, what, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if what in self.events:
                    return
            time.sleep(0.01)
        raise AssertionError("upstream never recorded %r (events: %r)" % (what, self.events))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state = None  # set per server class

    def log_message(self, fmt, *args):
        pass

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status, body, ctype="application/json", extra=()):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _chunk(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _start_chunked(self, status=200):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def _end_chunked(self):
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def do_HEAD(self):
        self.route()

    def do_GET(self):
        self.route()

    def do_POST(self):
        self.route()

    def do_PUT(self):
        self.route()

    def do_PATCH(self):
        self.route()

    def do_DELETE(self):
        self.route()

    def route(self):
        st = self.state
        u = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(u.query))
        p = u.path
        if p == "/echo":
            body = self._body()
            with st.lock:
                st.client_ports.append(self.client_address[1])
            self._send(200, json.dumps({
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "content_length": self.headers.get("Content-Length"),
                "body": body.decode("utf-8", "replace"),
            }))
        elif p == "/headers":
            self._send(200, "ok", "text/plain",
                       [("X-Multi", "a"), ("X-Multi", "b"), ("X-Upper-Case", "  spaced value  ")])
        elif p.startswith("/status/"):
            self._send(int(p.rsplit("/", 1)[1]), "status body\n", "text/plain")
        elif p == "/slow":
            st.stop.wait(float(q.get("s", "5")))
            self._send(200, "slow")
        elif p == "/big":
            self._send(200, b"x" * int(q["n"]), "application/octet-stream")
        elif p == "/big-chunked":
            self._start_chunked()
            n = int(q["n"])
            while n > 0:
                k = min(n, 4000)
                self._chunk(b"y" * k)
                n -= k
            self._end_chunked()
        elif p == "/hold":
            with st.arrived:
                st.arrivals += 1
                st.arrived.notify_all()
            release = st.release
            release.wait(60)
            self._send(200, "held")
        elif p == "/ack":
            st.event("ack")
            st.ack.set()
            self._send(200, "ack")
        elif p == "/lines":
            # line 1, then line 2 only once /ack arrived, then a last line
            # without a newline
            self._start_chunked()
            st.event("sending first")  # before the write: the ack may beat a later record
            self._chunk("first\n")
            acked = st.ack.wait(15)
            if not acked:
                st.event("no ack")
                self._chunk("noack\n")
            else:
                self._chunk("sec")  # a line split over two chunks
                self._chunk("ond\n")
                st.event("sent second")
            self._chunk("tail")
            self._end_chunked()
        elif p == "/lines-many":
            self._start_chunked()
            data = "".join("line %d\n" % i for i in range(int(q["n"])))
            self._chunk(data)
            self._end_chunked()
        elif p == "/lines-broken":
            self._start_chunked()
            self._chunk("one\n")
            self._chunk("two-partial")
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        elif p == "/lines-hold":
            self._start_chunked()
            self._chunk("one\n")
            st.event("lines-hold sent")
            st.release.wait(60)
            self._chunk("two\n")
            self._end_chunked()
        elif p == "/bigline":
            self._start_chunked()
            self._chunk("short\n")
            self._chunk("z" * int(q["n"]))
            self._end_chunked()
        elif p == "/infinite":
            self._start_chunked()
            i = 0
            try:
                while not st.stop.is_set() and i < 2000:
                    self._chunk("tick %d\n" % i)
                    i += 1
                    time.sleep(0.01)
                st.event("infinite ended")
            except OSError:
                st.event("infinite client gone")
            self.close_connection = True
        else:
            self._send(404, json.dumps({"error": "no route " + p}))


class Upstream:
    """A ThreadingHTTPServer on 127.0.0.1 (TLS with tls=(cert, key))."""

    def __init__(self, tls=None):
        self.state = UpstreamState()
        handler = type("BoundHandler", (Handler,), {"state": self.state})

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 1024  # 200 concurrent connects must not overflow the backlog

            def handle_error(self, request, client_address):
                if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                    super().handle_error(request, client_address)  # a client that left is not news

        self.server = Server(("127.0.0.1", 0), handler)
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls[0], tls[1])
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.scheme = "https" if tls else "http"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return "%s://127.0.0.1:%d%s" % (self.scheme, self.port, path)

    def close(self):
        self.state.stop.set()
        self.state.release.set()
        self.state.ack.set()
        self.server.shutdown()
        self.server.server_close()


class GarbageServer:
    """Answers every connection with bytes that are not HTTP."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            try:
                c.recv(4096)
                c.sendall(b"THIS IS NOT HTTP\r\n\r\n")
            except OSError:
                pass
            c.close()

    def close(self):
        self.sock.close()


# ---- the tests -------------------------------------------------------------------


class HttpClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="devexd-http-")
        cls.cert, cls.key = harness.make_tls_cert(cls.tmp)
        cls.up = Upstream()
        cls.tls_up = Upstream(tls=(cls.cert, cls.key))
        cls.d = harness.Devexd(app="httpclient", threads=1)
        cls.d.__enter__()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.d.__exit__(None, None, None)
        finally:
            cls.up.close()
            cls.tls_up.close()
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.up.state.reset()

    # helpers

    def fetch(self, **opts):
        r = self.d.request("POST", "/fetch", body=json.dumps(opts), headers={"Content-Type": "application/json"},
                           timeout=60)
        self.assertEqual(r.status, 200, r.body)
        return r.json()

    def stream(self, **opts):
        r = self.d.request("POST", "/stream", body=json.dumps(opts), headers={"Content-Type": "application/json"},
                           timeout=60)
        self.assertEqual(r.status, 200, r.body)
        return r.json()

    def misuse(self, **opts):
        r = self.d.request("POST", "/misuse", body=json.dumps(opts), headers={"Content-Type": "application/json"})
        self.assertEqual(r.status, 200, r.body)
        return r.json()

    # plain requests

    def test_get(self):
        st, res = self.d.get_json("/fetch?url=" + urllib.parse.quote(self.up.url("/echo?x=1"), safe=""))
        self.assertTrue(res["ok"], res)
        self.assertEqual(res["status"], 200)
        self.assertEqual(res["http_version"], 1.1)
        self.assertEqual(res["headers"]["content-type"], "application/json")
        echo = json.loads(res["body"])
        self.assertEqual(echo["method"], "GET")
        self.assertEqual(echo["path"], "/echo?x=1")
        self.assertTrue(echo["headers"]["user-agent"].startswith("devexd/"))

    def test_post_with_headers_and_body(self):
        res = self.fetch(method="POST", url=self.up.url("/echo"), body='{"a":1}',
                         headers={"Content-Type": "application/json", "X-Test": "yes", "X-Num": 42})
        self.assertTrue(res["ok"], res)
        echo = json.loads(res["body"])
        self.assertEqual(echo["method"], "POST")
        self.assertEqual(echo["body"], '{"a":1}')
        self.assertEqual(echo["headers"]["content-type"], "application/json")
        self.assertEqual(echo["headers"]["x-test"], "yes")
        self.assertEqual(echo["headers"]["x-num"], "42")
        self.assertNotIn("expect", echo["headers"])

    def test_methods(self):
        echo = json.loads(self.fetch(method="PUT", url=self.up.url("/echo"))["body"])
        self.assertEqual((echo["method"], echo["content_length"]), ("PUT", "0"))
        echo = json.loads(self.fetch(method="PATCH", url=self.up.url("/echo"), body="p")["body"])
        self.assertEqual((echo["method"], echo["body"]), ("PATCH", "p"))
        self.assertNotIn("content-type", echo["headers"])  # no form content type invented
        echo = json.loads(self.fetch(method="DELETE", url=self.up.url("/echo"))["body"])
        self.assertEqual(echo["method"], "DELETE")
        res = self.fetch(method="HEAD", url=self.up.url("/echo"))
        self.assertEqual((res["status"], res["body"]), (200, ""))

    def test_response_headers(self):
        res = self.fetch(url=self.up.url("/headers"))
        self.assertEqual(res["headers"]["x-multi"], "a, b")
        self.assertEqual(res["headers"]["x-upper-case"], "spaced value")
        self.assertNotIn("X-Multi", res["headers"])

    def test_http_error_status_is_a_response(self):
        res = self.fetch(url=self.up.url("/status/404"))
        self.assertTrue(res["ok"])
        self.assertEqual((res["status"], res["body"]), (404, "status body\n"))

    def test_keep_alive_reuses_the_connection(self):
        for _ in range(3):
            self.assertTrue(self.fetch(url=self.up.url("/echo"))["ok"])
        ports = self.up.state.client_ports
        self.assertEqual(len(ports), 3)
        self.assertEqual(len(set(ports)), 1, "requests did not share one keep-alive connection: %r" % ports)

    # failures of the world

    def test_timeout(self):
        res = self.fetch(url=self.up.url("/slow?s=5"), timeout=0.5)
        self.assertFalse(res["ok"])
        self.assertEqual(res["code"], "timeout")
        self.assertEqual(res["curl_code"], 28)
        self.assertTrue(res["str"].startswith("timeout: "), res["str"])

    def test_connection_refused(self):
        res = self.fetch(url="http://127.0.0.1:%d/" % harness.free_port())
        self.assertEqual(res["code"], "connect", res)

    def test_resolve_failure(self):
        res = self.fetch(url="http://no-such-host.invalid/", timeout=10)
        if res.get("code") == "timeout":
            self.skipTest("the resolver did not answer (no DNS here?)")
        self.assertEqual(res["code"], "resolve", res)

    def test_protocol_error(self):
        g = GarbageServer()
        try:
            res = self.fetch(url="http://127.0.0.1:%d/" % g.port)
        finally:
            g.close()
        self.assertEqual(res["code"], "protocol", res)

    def test_too_large(self):
        res = self.fetch(url=self.up.url("/big?n=100000"), max_size=1000)  # Content-Length known
        self.assertEqual(res["code"], "too_large", res)
        res = self.fetch(url=self.up.url("/big-chunked?n=100000"), max_size=1000)  # found while reading
        self.assertEqual(res["code"], "too_large", res)
        res = self.fetch(url=self.up.url("/big?n=1000"), max_size=1000)  # exactly the limit is fine
        self.assertTrue(res["ok"], res)
        self.assertEqual(len(res["body"]), 1000)

    # TLS

    def test_tls_needs_the_ca(self):
        url = self.tls_up.url("/echo")
        res = self.fetch(url=url)
        self.assertEqual(res["code"], "tls", res)
        res = self.fetch(url=url, ca_file=self.cert)
        self.assertTrue(res["ok"], res)
        self.assertEqual(res["status"], 200)
        with open(self.cert) as f:
            pem = f.read()
        res = self.fetch(url=url, ca_pem=pem)
        self.assertTrue(res["ok"], res)

    def test_tls_insecure_warns_once(self):
        url = self.tls_up.url("/echo")
        for _ in range(2):
            res = self.fetch(url=url, insecure=True)
            self.assertTrue(res["ok"], res)
        warnings = [e for e in self.d.logs() if "insecure" in e.get("msg", "")]
        self.assertEqual(len(warnings), 1, warnings)
        self.assertEqual(warnings[0]["level"], "warn")

    # argument misuse raises

    def test_misuse_raises(self):
        cases = [
            ({}, "'url' is required"),
            ({"url": "ftp://127.0.0.1/"}, "http:// or https://"),
            ({"url": "file:///etc/passwd"}, "http:// or https://"),
            ({"url": self.up.url("/echo"), "headers": {"X-Bad": "a\r\nInjected: yes"}}, "CR, LF"),
            ({"url": self.up.url("/echo"), "headers": {"X-Bad": "a\nb"}}, "CR, LF"),
            ({"url": self.up.url("/echo"), "headers": {"Bad Name": "x"}}, "invalid header name"),
            ({"url": self.up.url("/echo"), "timout": 3}, "unknown option 'timout'"),
            ({"url": self.up.url("/echo"), "timeout": -1}, "timeout"),
            ({"url": self.up.url("/echo"), "max_size": 0}, "max_size"),
            ({"url": self.up.url("/echo"), "method": "GE T"}, "invalid method"),
            ({"url": self.up.url("/echo"), "headers": {"Content-Length": "5"}}, "set by devex.http"),
            ({"url": self.up.url("/echo"), "unix_socket": "relative.sock"}, "'unix_socket' must be an absolute path"),
        ]
        for opts, msg in cases:
            res = self.misuse(**opts)
            self.assertTrue(res["raised"], (opts, res))
            self.assertIn(msg, res["error"], (opts, res))
        for which, msg in [("headers-not-table", "'headers' must be a table"), ("no-opts", "table expected"),
                           ("numeric-timeout-string", "must be a number")]:
            r = self.d.request("POST", "/misuse-raw?which=" + which)
            res = r.json()
            self.assertTrue(res["raised"], (which, res))
            self.assertIn(msg, res["error"], (which, res))
        st, res = self.d.get_json("/in-coroutine?url=" + urllib.parse.quote(self.up.url("/echo"), safe=""))
        self.assertTrue(res["raised"], res)
        self.assertIn("plain coroutine", res["error"])

    # streams

    def test_stream_lines_arrive_before_the_response_ends(self):
        url = urllib.parse.quote(self.up.url("/lines"), safe="")
        ack = urllib.parse.quote(self.up.url("/ack"), safe="")
        st, res = self.d.get_json("/stream-ack?url=%s&ack=%s" % (url, ack), timeout=60)
        self.assertTrue(res["ok"], res)
        self.assertEqual(res["status"], 200)
        self.assertEqual(res["events"], [
            {"line": "first"}, {"ack": 200}, {"line": "second"}, {"line": "tail"}, {},
        ])
        self.assertEqual(self.up.state.events, ["sending first", "ack", "sent second"])

    def test_stream_many_lines_and_status(self):
        res = self.stream(url=self.up.url("/lines-many?n=5000"))
        self.assertTrue(res["ok"], res)
        self.assertEqual(res["lines"], ["line %d" % i for i in range(5000)])
        self.assertNotIn("err", res)
        res = self.stream(url=self.up.url("/status/404"))
        self.assertEqual((res["status"], res["lines"]), (404, ["status body"]))
        self.assertEqual(res["headers"]["content-type"], "text/plain")

    def test_stream_errors(self):
        res = self.stream(url="http://127.0.0.1:%d/" % harness.free_port())
        self.assertEqual((res["ok"], res["code"]), (False, "connect"), res)
        res = self.stream(url=self.up.url("/lines-broken"))
        self.assertEqual(res["lines"], ["one"], res)
        self.assertEqual(res["err"]["code"], "protocol", res)
        res = self.stream(url=self.up.url("/bigline?n=5000"), max_size=1000)
        self.assertEqual(res["lines"], ["short"], res)
        self.assertEqual(res["err"]["code"], "too_large", res)
        res = self.stream(url=self.up.url("/lines-hold"), timeout=0.5)
        self.assertEqual(res["lines"], ["one"], res)
        self.assertEqual(res["err"]["code"], "timeout", res)

    def test_stream_close_gc_and_tbc_stop_the_transfer(self):
        for how in ("close", "gc", "tbc"):
            self.up.state.reset()
            st, res = self.d.get_json("/stream-close?how=%s&url=%s"
                                      % (how, urllib.parse.quote(self.up.url("/infinite"), safe="")))
            self.assertEqual(st, 200, res)
            self.assertEqual(res["first"], "tick 0")
            self.up.state.wait_event("infinite client gone", timeout=15)
        self.assertEqual(self.d.get("/healthz").status, 200)

    def test_stream_two_readers(self):
        st, res = self.d.get_json("/stream-two-readers?url=" + urllib.parse.quote(self.up.url("/lines-hold"), safe=""))
        self.assertEqual(st, 200, res)
        if "skip" in res:
            self.skipTest(res["skip"])
        self.assertEqual(res["first"], "one")
        self.assertTrue(res["second_raised"], res)
        self.assertIn("another task is already reading", res["second_error"])
        self.assertTrue(res["reader_ok"], res)
        self.assertNotIn("reader_line", res)
        self.assertEqual(res["reader_err"], "cancelled", res)
        self.assertEqual(res["reader_str"], "cancelled: the stream was closed")

    # concurrency

    def test_one_thread_200_pending_requests_and_healthz(self):
        n = 200
        url = "/fetch?timeout=60&url=" + urllib.parse.quote(self.up.url("/hold"), safe="")
        results = [harness.in_thread(self.d.get_json, url, timeout=90) for _ in range(n)]
        self.up.state.wait_arrivals(n, timeout=60)
        # all 200 are parked in devexd on the upstream: the one worker still answers
        health = self.d.get("/healthz", timeout=10)
        self.assertEqual(health.status, 200)
        self.assertFalse(any(r.get("done_at") for _, r in results), "a held request completed before release")
        self.up.state.release.set()
        for t, _ in results:
            t.join(90)
        for _, r in results:
            self.assertNotIn("error", r)
            st, res = r["value"]
            self.assertEqual(st, 200)
            self.assertTrue(res["ok"], res)
            self.assertEqual(res["body"], "held")


class Http2Test(unittest.TestCase):
    """100 concurrent requests from 100 handlers of one worker share a few
    HTTP/2 connections to h2o."""

    def setUp(self):
        if not os.path.exists(H2O_BIN):
            raise AssertionError("h2o is not installed (Debian package h2o; scripts/deps.sh --test installs it)")
        self.tmp = tempfile.mkdtemp(prefix="devexd-h2-")
        os.chmod(self.tmp, 0o755)  # h2o started as root serves files as user nobody
        self.cert, self.key = harness.make_tls_cert(self.tmp)
        # /slow: h2o proxies to it, so that its streams stay open (Upstream's /slow?s=N)
        self.up = Upstream()
        www = os.path.join(self.tmp, "www")
        os.mkdir(www)
        with open(os.path.join(www, "file.txt"), "w") as f:
            f.write("hello over h2\n")
        self.port = harness.free_port()
        self.access_log = os.path.join(self.tmp, "access.log")
        conf = os.path.join(self.tmp, "h2o.conf")
        with open(conf, "w") as f:
            f.write("""listen:
  host: 127.0.0.1
  port: %d
  ssl:
    certificate-file: %s
    key-file: %s
    ocsp-update-interval: 0
hosts:
  default:
    paths:
      /slow:
        proxy.reverse.url: %s
      /:
        file.dir: %s
access-log:
  path: %s
  format: "%%{connection-id}x %%H %%s %%U"
error-log: %s
""" % (self.port, self.cert, self.key, self.up.url("/slow"), www, self.access_log, os.path.join(self.tmp, "error.log")))
        self.h2o = subprocess.Popen([H2O_BIN, "-c", conf], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, preexec_fn=harness._set_pdeathsig)
        self.error_log = os.path.join(self.tmp, "error.log")
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.h2o.poll() is not None:
                    log = open(self.error_log).read() if os.path.exists(self.error_log) else ""
                    raise AssertionError("h2o did not start:\n" + log)
                time.sleep(0.05)

    def tearDown(self):
        if getattr(self, "up", None) is not None:
            self.up.close()
        if getattr(self, "h2o", None) is not None:
            self.h2o.terminate()
            try:
                self.h2o.wait(10)
            except subprocess.TimeoutExpired:
                self.h2o.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_100_concurrent_requests_multiplex(self):
        conns = self.connections_for(100, {})
        self.assertLessEqual(conns, 3, "100 requests used %d connections" % conns)

    def connections_for(self, n, extra, path="/file.txt", want=b"hello over h2\n"):
        """The connections h2o saw for n requests sent at once by handlers of
        one worker, with extra request options; every answer is want, over
        HTTP/2 on both sides."""
        opts = dict({"url": "https://127.0.0.1:%d%s" % (self.port, path), "ca_file": self.cert, "timeout": 60}, **extra)
        with harness.Devexd(app="httpclient", threads=1) as d:
            body = json.dumps({"gate": "go", "options": opts})
            results = [harness.in_thread(d.request, "POST", "/fetch-after-gate", body=body,
                                         headers={"Content-Type": "application/json"}, timeout=90)
                       for _ in range(n)]
            d.wait_log(lambda e: e.get("msg") == "fetch waiting", count=n, timeout=60, what="parked handlers")
            d.open_gate("go")
            for t, _ in results:
                t.join(90)
            for _, r in results:
                self.assertNotIn("error", r)
                resp = r["value"]
                self.assertEqual(resp.status, 200, resp)
                res = resp.json()
                self.assertTrue(res["ok"], res)
                self.assertEqual(res["body"], want.decode())
                self.assertEqual(res["http_version"], 2)
        with open(self.access_log) as f:
            lines = [l.split() for l in f if l.strip()]
        os.truncate(self.access_log, 0)
        self.assertEqual(len(lines), n)
        self.assertTrue(all(l[1] == "HTTP/2" for l in lines), lines[:3])
        return len({l[0] for l in lines})

    def test_max_host_connections_caps_the_connections_past_the_stream_limit(self):
        # h2o allows 100 streams at once on a connection: past that libcurl
        # opens more connections, unless the request caps them (the k8s
        # client's requests in a burst of session starts). Each answer takes
        # 2 s (a slow sanitizer build still has all 400 open at once)
        n = 400
        slow = ("/slow?s=2", b"slow")
        uncapped = self.connections_for(n, {}, *slow)
        capped = self.connections_for(n, {"max_host_connections": 2}, *slow)
        self.assertLessEqual(capped, 2, "%d requests with max_host_connections 2 used %d connections" % (n, capped))
        self.assertGreater(uncapped, 2, "the stream limit was never reached: the cap is not tested (%d)" % uncapped)


class ShutdownTest(unittest.TestCase):
    """Tasks parked in http.request, http.stream and a stream's read_line when
    the VM is closed at shutdown: their transfers are cancelled and freed, and devexd
    exits 0 without sanitizer reports."""

    def test_shutdown_cancels_pending_transfers(self):
        up = Upstream()
        try:
            with harness.Devexd(app="httpclient", threads=1, shutdown_timeout=0.5) as d:
                hold = urllib.parse.quote(up.url("/hold"), safe="")
                lines = urllib.parse.quote(up.url("/lines-hold"), safe="")
                # parked in http.request, in http.stream before the headers,
                # and in read_line
                clients = [harness.in_thread(d.get, "/hold-fetch?url=" + hold, timeout=30),
                           harness.in_thread(d.get, "/hold-fetch?stream=1&url=" + hold, timeout=30),
                           harness.in_thread(d.get, "/hold-fetch?stream=1&url=" + lines, timeout=30)]
                up.state.wait_arrivals(2)
                up.state.wait_event("lines-hold sent")
                d.signal(signal.SIGTERM)
                self.assertEqual(d.wait_exit(15), 0)
                for t, _ in clients:
                    t.join(30)
                d.check_sanitizers()
        finally:
            up.close()


if __name__ == "__main__":
    harness.main()
