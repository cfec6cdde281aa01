"""HTTP/2 abuse against a real devexd (issue 17, section 3; src/h2_guard.c),
with Python's h2 library as the client (python3-h2 from Debian):

- Rapid Reset (CVE-2023-44487): a connection that opens and at once resets
  streams is closed past server.http2_max_resets, /metrics counts it
  (devex_http2_guard_total), over cleartext and TLS, and a second client is
  answered meanwhile and after;
- reset streams do not free Lua concurrency: with server.http2_max_inflight
  handlers of one connection still running (their streams reset), the next
  request of that connection gets a 503 without running Lua, and once they end
  the connection is served again;
- a CONTINUATION flood (one header block never ended, 16 KB at a time) is
  refused and the connection closed, devexd's RSS stays bounded; a trickle of
  empty CONTINUATION frames is closed after server.header_timeout;
- slowloris: an HTTP/1.1 request whose header never ends is disconnected after
  header_timeout; an HTTP/2 connection idle after its request is closed after
  idle_timeout, and so is one kept "busy" with PINGs but no request (libh2o's
  own idle timer restarts on every read);
- the limits are config knobs checked at load.
Bounds on time are generous (the machine is shared); nothing is timed finely.
"""

import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd, rss_kb  # noqa: E402

try:
    import h2.config
    import h2.connection
    import h2.events
except ImportError:
    # Debian's python3-h2 is pure Python under dist-packages, which a Python
    # built apart (pyenv...) does not search; without it the test fails below.
    sys.path.append("/usr/lib/python3/dist-packages")
    import h2.config  # noqa: E402  (apt-get install python3-h2: scripts/deps.sh TEST_PKGS)
    import h2.connection  # noqa: E402
    import h2.events  # noqa: E402

# the test app: testapp plus /metrics (devex.metrics.render)
APP = """
local app = require("testapp")
local metrics = require("devex.metrics")
app:get("/metrics", function() return 200, metrics.render(), { ["content-type"] = "text/plain" } end)
return app
"""


def guard_metrics(d):
    """{event: count} of devex_http2_guard_total."""
    r = d.get("/metrics")
    out = {}
    for line in r.body.decode().splitlines():
        if line.startswith('devex_http2_guard_total{event="'):
            event = line.split('"')[1]
            out[event] = int(float(line.rsplit(" ", 1)[1]))
    return out


class H2Conn:
    """One HTTP/2 connection driven by h2 (client side), prior knowledge over
    cleartext or ALPN over TLS."""

    def __init__(self, port, tls=False, timeout=30):
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["h2"])
            s = ctx.wrap_socket(s)
            assert s.selected_alpn_protocol() == "h2", s.selected_alpn_protocol()
        self.sock = s
        self.authority = "127.0.0.1:%d" % port
        self.scheme = "https" if tls else "http"
        self.conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True,
                                                                                header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.flush()
        self.closed = False
        self.goaway = None
        self.responses = {}  # stream id -> {"status", "body", "ended", "reset"}

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def headers(self, path):
        return [(":method", "GET"), (":scheme", self.scheme), (":authority", self.authority), (":path", path)]

    def request(self, path):
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, self.headers(path), end_stream=True)
        self.responses[sid] = {"status": None, "body": b"", "ended": False, "reset": False}
        return sid

    def reset(self, sid):
        self.conn.reset_stream(sid, error_code=8)  # CANCEL

    def pump(self, timeout=None):
        """Reads once; returns False when the server closed the connection."""
        if self.closed:
            return False
        if timeout is not None:
            self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
            data = b""
        if not data:
            self.closed = True
            return False
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            events = []
        for ev in events:
            r = self.responses.get(getattr(ev, "stream_id", None))
            if isinstance(ev, h2.events.ResponseReceived) and r is not None:
                r["status"] = int(dict(ev.headers)[":status"])
            elif isinstance(ev, h2.events.DataReceived) and r is not None:
                r["body"] += ev.data
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded) and r is not None:
                r["ended"] = True
            elif isinstance(ev, h2.events.StreamReset) and r is not None:
                r["reset"] = True
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.goaway = ev.error_code
        try:
            self.flush()
        except OSError:
            pass
        return True

    def wait(self, sid, timeout=30):
        deadline = time.monotonic() + timeout
        r = self.responses[sid]
        while not (r["ended"] or r["reset"]) and time.monotonic() < deadline:
            if not self.pump(timeout=max(0.1, deadline - time.monotonic())):
                break
        return r

    def wait_closed(self, timeout):
        """Reads (discarding) until the server closes; True if it did in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not self.pump(timeout=max(0.1, deadline - time.monotonic())):
                    return True
            except socket.timeout:
                pass
        return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def get_h2(port, path, tls=False):
    c = H2Conn(port, tls=tls)
    try:
        return c.wait(c.request(path))
    finally:
        c.close()


class RapidResetTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = Devexd(app="h2app", app_files={"h2app.lua": APP}, threads=2, tls=True,
                       server={"http2_max_resets": 50, "http2_max_inflight": 8, "access_log": False})
        cls.d.__enter__()

    @classmethod
    def tearDownClass(cls):
        cls.d.__exit__(None, None, None)

    def rapid_reset(self, tls):
        before = guard_metrics(self.d)
        port = self.d.tls_port if tls else self.d.port
        c = H2Conn(port, tls=tls)
        sent = 0
        try:
            # open and reset 2,000 streams in batches, as fast as the socket
            # takes them; the server must close the connection long before
            while sent < 2000:
                try:
                    for _ in range(50):
                        self.reset_one(c)
                        sent += 1
                    c.flush()
                except (OSError, h2.exceptions.ProtocolError):
                    break
            closed = c.wait_closed(timeout=60)
        finally:
            c.close()
        self.assertTrue(closed, "devexd kept a connection open after %d rapid resets" % sent)
        after = guard_metrics(self.d)
        self.assertGreaterEqual(after.get("closed_for_resets", 0) - before.get("closed_for_resets", 0), 1, after)
        self.assertGreater(after.get("reset", 0) - before.get("reset", 0), 50, after)
        # a second client is answered after it
        r = get_h2(port, "/healthz", tls=tls)
        self.assertEqual(r["status"], 200)

    @staticmethod
    def reset_one(c):
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(sid, c.headers("/healthz"), end_stream=True)
        c.reset(sid)

    def test_rapid_reset_closes_the_connection_h2c(self):
        # a well-behaved client on its own connection while the attack runs
        results = []
        stop = threading.Event()

        def good():
            while not stop.is_set():
                results.append(get_h2(self.d.port, "/healthz")["status"])

        t = threading.Thread(target=good, daemon=True)
        t.start()
        try:
            self.rapid_reset(tls=False)
        finally:
            stop.set()
            t.join(60)
        self.assertTrue(results, "the well-behaved client got no answer during the attack")
        self.assertEqual(set(results), {200})

    def test_rapid_reset_closes_the_connection_tls(self):
        self.rapid_reset(tls=True)

    def test_resets_do_not_free_lua_concurrency(self):
        before = guard_metrics(self.d)
        c = H2Conn(self.d.port)
        try:
            # 8 (http2_max_inflight) handlers of this connection sleeping 3 s, each stream reset
            for _ in range(8):
                sid = c.request("/sleep/3")
                c.reset(sid)
            c.flush()
            # the 9th request is refused without running Lua, though no stream is open
            sid = c.request("/hello/x")
            c.flush()
            r = c.wait(sid)
            self.assertEqual(r["status"], 503, r)
            self.assertIn(b"in flight", r["body"])
            # once the sleepers ended, the same connection is served again
            deadline = time.monotonic() + 60
            while True:
                sid = c.request("/hello/x")
                c.flush()
                r = c.wait(sid)
                if r["status"] == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            self.assertEqual(r["status"], 200, r)
        finally:
            c.close()
        after = guard_metrics(self.d)
        self.assertGreaterEqual(after.get("refused", 0) - before.get("refused", 0), 1)
        self.assertGreaterEqual(after.get("reset", 0) - before.get("reset", 0), 8)

    def test_a_client_that_cancels_some_requests_is_not_closed(self):
        # 60 resets (over the limit of 50) but among 300 requests: not abuse
        c = H2Conn(self.d.port)
        try:
            for i in range(300):
                sid = c.request("/healthz")
                c.flush()
                if i % 5 == 0:
                    c.reset(sid)
                    c.flush()
                else:
                    self.assertEqual(c.wait(sid)["status"], 200)
            sid = c.request("/healthz")
            c.flush()
            self.assertEqual(c.wait(sid)["status"], 200)
            self.assertFalse(c.closed)
        finally:
            c.close()


class FloodAndSlowlorisTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = Devexd(app="h2app", app_files={"h2app.lua": APP}, threads=1,
                       server={"header_timeout": 2, "idle_timeout": 3, "access_log": False})
        cls.d.__enter__()

    @classmethod
    def tearDownClass(cls):
        cls.d.__exit__(None, None, None)

    @staticmethod
    def raw_h2(port):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + harness.H2Client._frame(4, 0, 0, b""))
        return s

    @staticmethod
    def read_until_closed(s, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                if not s.recv(65536):
                    return True
            except socket.timeout:
                return False
            except OSError:
                return True
        return False

    def test_continuation_flood_is_refused_with_bounded_memory(self):
        rss0 = rss_kb(self.d.proc.pid)
        frame = harness.H2Client._frame
        block = b"\x00\x01a\x01b"  # literal header a: b, without indexing
        socks = []
        try:
            # 20 connections, each a header block that never ends: HEADERS
            # without END_HEADERS, then CONTINUATION frames of 16 KB (2 MB each)
            for _ in range(20):
                s = self.raw_h2(self.d.port)
                socks.append(s)
                s.sendall(frame(1, 0x1, 1, block))
            chunk = frame(9, 0, 1, b"\x00" * 16384)
            alive = list(socks)
            for _ in range(128):
                for s in list(alive):
                    try:
                        s.sendall(chunk)
                    except OSError:
                        alive.remove(s)
                if not alive:
                    break
            peak = rss_kb(self.d.proc.pid)
            for s in socks:
                self.assertTrue(self.read_until_closed(s, 30), "a CONTINUATION flood kept its connection")
        finally:
            for s in socks:
                s.close()
        # libh2o refuses a header block past H2O_MAX_REQLEN (about 400 KB): 20
        # connections stay far below the 40 MB they sent
        self.assertLess(peak - rss0, 30 * 1024, "RSS grew from %d KB to %d KB" % (rss0, peak))
        self.assertEqual(self.d.get("/healthz").status, 200)

    def test_headers_flood_is_bounded(self):
        # 20,000 tiny HEADERS frames (each a request for a slow route) on one
        # connection whose answers are never read: libh2o runs 100 and
        # refuses the streams past its SETTINGS_MAX_CONCURRENT_STREAMS
        rss0 = rss_kb(self.d.proc.pid)
        frame = harness.H2Client._frame
        block = b"".join(b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v for n, v in (
            (b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/sleep/2"), (b":authority", b"x")))
        s = self.raw_h2(self.d.port)
        try:
            sid = 1
            for _ in range(40):
                s.sendall(b"".join(frame(1, 0x5, sid + 2 * k, block) for k in range(500)))
                sid += 1000
            peak = rss_kb(self.d.proc.pid)
            self.assertEqual(self.d.get("/healthz").status, 200)
        finally:
            s.close()
        self.assertLess(peak - rss0, 30 * 1024, "RSS grew from %d KB to %d KB" % (rss0, peak))

    def test_empty_continuation_trickle_is_closed_after_header_timeout(self):
        before = guard_metrics(self.d)
        s = self.raw_h2(self.d.port)
        frame = harness.H2Client._frame
        closed = False
        try:
            s.sendall(frame(1, 0x1, 1, b"\x00\x01a\x01b"))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    s.sendall(frame(9, 0, 1, b""))  # an empty CONTINUATION every 0.2 s
                except OSError:
                    closed = True
                    break
                s.settimeout(0.2)
                try:
                    if not s.recv(65536):
                        closed = True
                        break
                except socket.timeout:
                    pass
                except OSError:
                    closed = True
                    break
        finally:
            s.close()
        self.assertTrue(closed, "an unfinished header block kept its connection for 30 s (header_timeout 2)")
        after = guard_metrics(self.d)
        self.assertGreaterEqual(after.get("header_timeout", 0) - before.get("header_timeout", 0), 1, after)

    def test_http1_slowloris_is_disconnected_after_header_timeout(self):
        s = socket.create_connection(("127.0.0.1", self.d.port), timeout=30)
        closed = False
        try:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    s.sendall(b"X-a: b\r\n")  # one more header line every 0.3 s, never the end
                except OSError:
                    closed = True
                    break
                s.settimeout(0.3)
                try:
                    data = s.recv(65536)
                    if not data:
                        closed = True
                        break
                except socket.timeout:
                    pass
                except OSError:
                    closed = True
                    break
        finally:
            s.close()
        self.assertTrue(closed, "a request header trickled for 30 s was not cut (header_timeout 2)")

    def test_idle_http2_connection_is_closed_after_idle_timeout(self):
        c = H2Conn(self.d.port)
        try:
            self.assertEqual(c.wait(c.request("/healthz"))["status"], 200)
            self.assertTrue(c.wait_closed(timeout=30), "an idle HTTP/2 connection stayed open (idle_timeout 3)")
        finally:
            c.close()

    def test_http2_pings_without_requests_do_not_keep_a_connection(self):
        before = guard_metrics(self.d)
        c = H2Conn(self.d.port)
        closed = False
        try:
            self.assertEqual(c.wait(c.request("/healthz"))["status"], 200)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not closed:
                try:
                    c.conn.ping(b"12345678")
                    c.flush()
                    closed = not c.pump(timeout=0.5)
                except socket.timeout:
                    pass
                except OSError:
                    closed = True
        finally:
            c.close()
        self.assertTrue(closed, "PINGs kept an HTTP/2 connection without requests for 30 s (idle_timeout 3)")
        after = guard_metrics(self.d)
        self.assertGreaterEqual(after.get("idle_timeout", 0) - before.get("idle_timeout", 0), 1, after)

    def test_a_slow_request_is_not_an_idle_connection(self):
        # a handler running longer than idle_timeout keeps its connection
        c = H2Conn(self.d.port)
        try:
            r = c.wait(c.request("/sleep/5"), timeout=60)
            self.assertEqual(r["status"], 200, r)
        finally:
            c.close()


class KnobsTest(unittest.TestCase):
    def test_limits_are_checked_at_load(self):
        with tempfile.TemporaryDirectory() as tmp:
            for key, value, ok in (("http2_max_resets", 0, True), ("http2_max_inflight", 1, True),
                                   ("http2_max_resets", -1, False), ("http2_max_inflight", 0, False),
                                   ("http2_max_inflight", "many", False)):
                with self.subTest(key=key, value=value):
                    conf = os.path.join(tmp, "devexd.conf.lua")
                    server = {"listen": [{"host": "127.0.0.1", "port": harness.free_port()}], key: value}
                    with open(conf, "w") as f:
                        f.write("return " + harness.to_lua({"server": server}) + "\n")
                    p = subprocess.run([harness.DEVEXD_BIN, "--check", "-c", conf, "-L", harness.LUA_DIR],
                                       capture_output=True, text=True, timeout=30)
                    if ok:
                        self.assertEqual(p.returncode, 0, p.stderr)
                    else:
                        self.assertNotEqual(p.returncode, 0)
                        self.assertIn(key, p.stderr)


if __name__ == "__main__":
    harness.main()
