"""The built-in reverse proxy ("single-host mode"): /repl/<id>/... is handed by
Lua (apps/proxyapp.lua, devex.proxy.pass) to H2O's proxy, which talks to an
upstream on a loopback port. The upstream here is a Python ThreadingHTTPServer
that echoes requests and speaks WebSocket (stdlib only)."""

import base64
import hashlib
import http.server
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# ---- WebSocket frames (RFC 6455) ----

def ws_accept(key):
    """The Sec-WebSocket-Accept value for a Sec-WebSocket-Key (RFC 6455)."""
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def ws_open(port, path, host, extra=""):
    """Sends a WebSocket handshake for path on a new connection to port
    (extra: more header lines, each ending in CRLF). Returns (socket, key,
    the response head as text, read) where read(n) returns the next n bytes
    after the head, or b"" when the connection ends first."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n" % (path, host, key, extra)).encode())
    buf = bytearray()
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            s.close()
            raise AssertionError("connection closed during the handshake: %r" % bytes(buf))
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    pending = bytearray(rest)

    def read(n):
        while len(pending) < n:
            chunk = s.recv(65536)
            if not chunk:
                return b""
            pending.extend(chunk)
        data = bytes(pending[:n])
        del pending[:n]
        return data

    return s, key, head.decode("latin-1"), read


def ws_frame(opcode, payload, mask):
    head = bytes([0x80 | opcode])
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mbit | n])
    elif n < 65536:
        head += bytes([mbit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mbit | 127]) + struct.pack("!Q", n)
    if mask:
        key = os.urandom(4)
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        head += key
    return head + payload


def ws_read_frame(read):
    """read(n) returns exactly n bytes or b"" at EOF. Returns (opcode, payload) or None."""
    h = read(2)
    if len(h) < 2:
        return None
    opcode, n, masked = h[0] & 0x0F, h[1] & 0x7F, h[1] & 0x80
    if n == 126:
        n = struct.unpack("!H", read(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", read(8))[0]
    key = read(4) if masked else None
    payload = read(n)
    if key:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return opcode, payload


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _read_exact(self, n):
        data = b""
        while len(data) < n:
            chunk = self.rfile.read(n - len(data))
            if not chunk:
                return b""
            data += chunk
        return data

    def _websocket(self):
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = ws_accept(key)
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.send_header("X-Upstream-Path", self.path)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        while True:
            f = ws_read_frame(self._read_exact)
            if f is None:
                return
            opcode, payload = f
            if opcode == 8:  # close: answer and stop
                self.wfile.write(ws_frame(8, payload[:2], mask=False))
                self.wfile.flush()
                return
            if opcode == 9:  # ping
                self.wfile.write(ws_frame(10, payload, mask=False))
            elif opcode in (1, 2):
                self.wfile.write(ws_frame(opcode, payload, mask=False))
            self.wfile.flush()

    def _handle(self):
        if self.headers.get("Upgrade", "").lower() == "websocket":
            return self._websocket()
        n = int(self.headers.get("Content-Length") or 0)
        body = self._read_exact(n) if n else b""
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", "http://%s/target?x=1" % self.headers.get("Host"))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path.startswith("/slow/"):
            self.server.slow_started.set()
            time.sleep(int(self.path.split("/")[2]) / 1000.0)
        if self.path.startswith("/status/"):
            code = int(self.path.split("/")[2].split("?")[0])
            payload = ("upstream says %d" % code).encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("X-Upstream", "yes")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
            return
        headers = {}
        for k, v in self.headers.items():
            headers.setdefault(k.lower(), []).append(v)
        payload = json.dumps({
            "method": self.command,
            "path": self.path,
            "headers": headers,
            "body_len": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "body_head": body[:64].decode("latin-1"),
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("X-Upstream", "yes")
        self.send_header("Set-Cookie", "runner=1; Path=/")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle


class ProxyTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.up = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
        cls.up.daemon_threads = True
        cls.up.slow_started = threading.Event()
        cls.up_port = cls.up.server_address[1]
        cls.up_thread = threading.Thread(target=cls.up.serve_forever, daemon=True)
        cls.up_thread.start()
        cls.down_port = harness.free_port()  # nobody listens there
        cls.d = harness.Devexd(app="proxyapp", threads=2, max_body=1 << 20,
                               env={"PROXY_TEST_UPSTREAM": "127.0.0.1:%d" % cls.up_port,
                                    "PROXY_TEST_DOWN": "localhost:%d" % cls.down_port})
        cls.d.__enter__()
        cls.open_ws = []

    @classmethod
    def tearDownClass(cls):
        try:
            # a WebSocket tunnel still open at shutdown must not stop a clean exit
            cls.d.__exit__(None, None, None)
        finally:
            for s in cls.open_ws:
                s.close()
            cls.up.shutdown()
            cls.up.server_close()

    def access(self, rid):
        return self.d.wait_log(lambda e: e.get("msg") == "access" and e.get("request_id") == rid,
                               what="access line " + rid)[-1]

    # ---- HTTP ----

    def test_get_passes_through(self):
        r = self.d.get("/repl/ok/echo/some/where?a=1&b=two%20x&a=3",
                       headers={"X-Custom": "hello", "X-Strip-Me": "secret", "Cookie": "c=1",
                                "X-Request-Id": "proxy-get-1"})
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.header("X-Upstream"), "yes")
        self.assertEqual(r.header("Set-Cookie"), "runner=1; Path=/")
        self.assertEqual(r.header("X-Request-Id"), "proxy-get-1")
        self.assertEqual(r.header("Content-Type"), "application/json")
        j = r.json()
        self.assertEqual(j["method"], "GET")
        self.assertEqual(j["path"], "/echo/some/where?a=1&b=two%20x&a=3")
        h = j["headers"]
        self.assertEqual(h["x-custom"], ["hello"])
        self.assertEqual(h["cookie"], ["c=1"])
        self.assertEqual(h["x-devex-repl"], ["ok"])  # added by Lua
        self.assertNotIn("x-strip-me", h)  # deleted by Lua (headers = {x = false})
        self.assertEqual(h["x-request-id"], ["proxy-get-1"])  # the upstream sees our id
        self.assertEqual(h["host"], ["127.0.0.1:%d" % self.up_port])
        self.assertEqual(h["x-forwarded-for"], ["127.0.0.1"])
        a = self.access("proxy-get-1")
        self.assertEqual(a["status"], 200)
        self.assertEqual(a["method"], "GET")
        self.assertEqual(a["path"], "/repl/ok/echo/some/where")
        self.assertEqual(a["upstream"], "127.0.0.1:%d" % self.up_port)
        self.assertGreater(a["bytes"], 0)

    def test_generated_request_id(self):
        r = self.d.get("/repl/ok/echo")
        self.assertEqual(r.status, 200)
        rid = r.header("X-Request-Id")
        self.assertRegex(rid or "", r"^[0-9a-f]{32}$")
        self.assertEqual(r.json()["headers"]["x-request-id"], [rid])

    def test_post_body_passes_through(self):
        body = bytes(range(256)) * 800  # 200 KiB, every byte value
        r = self.d.request("POST", "/repl/ok/upload?x=1", body=body,
                           headers={"Content-Type": "application/octet-stream"})
        self.assertEqual(r.status, 200, r.body)
        j = r.json()
        self.assertEqual(j["method"], "POST")
        self.assertEqual(j["path"], "/upload?x=1")
        self.assertEqual(j["body_len"], len(body))
        self.assertEqual(j["body_sha256"], hashlib.sha256(body).hexdigest())
        self.assertEqual(j["headers"]["content-type"], ["application/octet-stream"])

        for method in ("PUT", "DELETE", "PATCH"):
            r = self.d.request(method, "/repl/ok/m", body=b"abc")
            self.assertEqual(r.status, 200, method)
            self.assertEqual((r.json()["method"], r.json()["body_len"]), (method, 3))

    def test_head(self):
        r = self.d.request("HEAD", "/repl/ok/echo")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, b"")
        self.assertEqual(r.header("X-Upstream"), "yes")

    def test_upstream_status_codes_and_bodies_pass_through(self):
        for code in (404, 500, 201, 418, 503):
            r = self.d.get("/repl/ok/status/%d" % code)
            self.assertEqual(r.status, code)
            # the upstream's own body, not rewritten into devexd's JSON errors
            self.assertEqual(r.body, ("upstream says %d" % code).encode())
            self.assertEqual(r.header("Content-Type"), "text/plain")
            self.assertEqual(r.header("X-Upstream"), "yes")
            self.assertTrue(r.header("X-Request-Id"))

    def test_keepalive_connection_mixes_proxied_and_local(self):
        conn = self.d.connection()
        try:
            for path, want in (("/repl/ok/echo", 200), ("/healthz", 200), ("/repl/ok/status/404", 404),
                               ("/repl/nope/x", 404), ("/repl/ok/echo?z", 200)):
                r = self.d.request("GET", path, conn=conn)
                self.assertEqual(r.status, want, path)
        finally:
            conn.close()

    def test_location_not_rewritten_by_default(self):
        r = self.d.get("/repl/ok/redirect")
        self.assertEqual(r.status, 302)
        self.assertEqual(r.header("Location"), "http://127.0.0.1:%d/target?x=1" % self.up_port)

    def test_preserve_host_and_location_prefix(self):
        host = "127.0.0.1:%d" % self.d.port
        r = self.d.get("/repl/ph/echo")
        self.assertEqual(r.json()["headers"]["host"], [host])
        r = self.d.get("/repl/ph/redirect")
        self.assertEqual(r.status, 302)
        self.assertEqual(r.header("Location"), "http://%s/repl/ph/target?x=1" % host)

    def test_pass_after_yield(self):
        r = self.d.get("/later/echo/y?q=1")
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json()["path"], "/echo/y")

    # ---- errors ----

    def test_upstream_down_502_json(self):
        r = self.d.get("/repl/down/anything", headers={"X-Request-Id": "proxy-down-1"})
        self.assertEqual(r.status, 502)
        self.assertEqual(r.header("Content-Type"), "application/json")
        self.assertEqual(r.header("X-Request-Id"), "proxy-down-1")
        self.assertEqual(r.json(), {"error": "bad gateway", "request_id": "proxy-down-1"})
        a = self.access("proxy-down-1")
        self.assertEqual(a["status"], 502)
        self.assertEqual(a["upstream"], "localhost:%d" % self.down_port)
        self.assertIn("proxy_error", a)
        # H2O's plain-text error line is off: every log line is JSON
        self.assertNotIn("[lib/core/proxy.c]", self.d.raw_log())

    def test_unknown_repl_404_from_lua(self):
        r = self.d.get("/repl/nope/echo")
        self.assertEqual(r.status, 404)
        self.assertEqual(r.json(), {"error": "no such repl"})
        self.assertEqual(self.d.get("/repl/ok").status, 404)  # no match: "*rest" needs the slash

    def test_no_internal_path_reachable(self):
        """The proxy has no path of its own: only a pass() from Lua reaches it.
        A client naming the upstream (absolute-form, Host header) gets devexd's
        own routing, so a 404 from the app."""
        up = "127.0.0.1:%d" % self.up_port
        raw = ("GET http://%s/echo HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (up, up)).encode()
        with socket.create_connection(("127.0.0.1", self.d.port), timeout=10) as s:
            s.sendall(raw)
            data = harness.recv_all(s)
        self.assertTrue(data.startswith(b"HTTP/1.1 404"), data)
        self.assertNotIn(b"x-upstream", data.lower())
        for path in ("/echo", "/status/200", "/"):
            r = self.d.get(path, headers={"Host": up})
            self.assertEqual(r.status, 404, path)
            self.assertIsNone(r.header("X-Upstream"))

    def test_invalid_instructions_500(self):
        for path, err in (("/bad/upstream", "upstream must be"), ("/bad/unix", "upstream must be"),
                          ("/bad/path", "path must start"),
                          ("/bad/header", "cannot be set"), ("/bad/shape", None)):
            mark = self.d.mark()
            r = self.d.get(path)
            self.assertEqual(r.status, 500, path)
            self.assertEqual(r.json()["error"], "internal error")
            if err:
                self.d.wait_log(lambda e: err in str(e.get("error", "")), since=mark, what=err)

    # ---- HTTP/2 ----

    def test_http2_prior_knowledge(self):
        rc, body, code, version, err = harness.curl("--http2-prior-knowledge", "-H", "X-Request-Id: proxy-h2-1",
                                                    self.d.url("/repl/ok/echo/h2?k=v"))
        self.assertEqual(rc, 0, err)
        self.assertEqual((code, version), ("200", "2"))
        j = json.loads(body)
        self.assertEqual(j["path"], "/echo/h2?k=v")
        self.assertEqual(j["headers"]["x-request-id"], ["proxy-h2-1"])
        self.assertEqual(self.access("proxy-h2-1")["http"], 2)

        rc, body, code, version, err = harness.curl("--http2-prior-knowledge", "-X", "POST", "--data-binary",
                                                    "h2 body", self.d.url("/repl/ok/post"))
        self.assertEqual(rc, 0, err)
        self.assertEqual((code, version), ("200", "2"))
        self.assertEqual(json.loads(body)["body_head"], "h2 body")

        rc, body, code, version, err = harness.curl("--http2-prior-knowledge", self.d.url("/repl/ok/status/404"))
        self.assertEqual((rc, code, body), (0, "404", "upstream says 404"))

        rc, body, code, version, err = harness.curl("--http2-prior-knowledge", self.d.url("/repl/down/x"))
        self.assertEqual((rc, code), (0, "502"))
        self.assertEqual(json.loads(body)["error"], "bad gateway")

    # ---- WebSocket ----

    def ws_connect(self, path="/repl/ok/ws?room=1"):
        return ws_open(self.d.port, path, "127.0.0.1:%d" % self.d.port, "X-Request-Id: proxy-ws-1\r\n")

    def test_websocket_echo(self):
        s, key, head, read = self.ws_connect()
        try:
            lines = head.split("\r\n")
            self.assertTrue(lines[0].startswith("HTTP/1.1 101"), head)
            hdrs = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                hdrs[k.strip().lower()] = v.strip()
            want = ws_accept(key)
            self.assertEqual(hdrs.get("sec-websocket-accept"), want)
            self.assertEqual(hdrs.get("upgrade", "").lower(), "websocket")
            self.assertEqual(hdrs.get("x-upstream-path"), "/ws?room=1")
            for msg in (b"hello through devexd", "\u00e9t\u00e9 \u2603".encode(), b"x" * 70000):
                s.sendall(ws_frame(1, msg, mask=True))
                self.assertEqual(ws_read_frame(read), (1, msg))
            s.sendall(ws_frame(2, b"\x00\x01\x02", mask=True))
            self.assertEqual(ws_read_frame(read), (2, b"\x00\x01\x02"))
            s.sendall(ws_frame(8, struct.pack("!H", 1000), mask=True))
            self.assertEqual(ws_read_frame(read), (8, struct.pack("!H", 1000)))
        finally:
            s.close()
        a = self.access("proxy-ws-1")
        self.assertEqual(a["status"], 101)
        self.assertEqual(a["path"], "/repl/ok/ws")

    def test_websocket_many_and_left_open(self):
        socks = []
        for i in range(5):
            s, _, head, read = self.ws_connect()
            self.assertTrue(head.startswith("HTTP/1.1 101"), head)
            socks.append((s, read))
        for i, (s, read) in enumerate(socks):
            s.sendall(ws_frame(1, b"msg %d" % i, mask=True))
        for i, (s, read) in enumerate(socks):
            self.assertEqual(ws_read_frame(read), (1, b"msg %d" % i))
        # still serving plain requests meanwhile
        self.assertEqual(self.d.get("/repl/ok/echo").status, 200)
        # leave them open: tearDownClass stops devexd with live tunnels
        self.open_ws.extend(s for s, _ in socks)

    def test_websocket_upstream_down(self):
        s, _, head, read = self.ws_connect("/repl/down/ws")
        s.close()
        self.assertTrue(head.startswith("HTTP/1.1 502"), head)


class TunnelActivityTest(unittest.TestCase):
    """Bytes inside a proxied WebSocket are seen (tunnel_watch.c): one
    worker, so /tunnels reads the same worker's tunnels."""

    @classmethod
    def setUpClass(cls):
        cls.up = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
        cls.up.daemon_threads = True
        threading.Thread(target=cls.up.serve_forever, daemon=True).start()
        cls.d = harness.Devexd(app="proxyapp", threads=1, env={
            "PROXY_TEST_UPSTREAM": "127.0.0.1:%d" % cls.up.server_address[1],
            "PROXY_TEST_DOWN": "127.0.0.1:%d" % harness.free_port()}).__enter__()

    @classmethod
    def tearDownClass(cls):
        cls.d.__exit__(None, None, None)
        cls.up.shutdown()
        cls.up.server_close()

    def tunnels(self):
        return self.d.get("/tunnels").json()

    def test_traffic_inside_a_tunnel_is_seen_and_silence_is_not(self):
        self.tunnels()  # drains what earlier tests left
        s, _, head, read = ws_open(self.d.port, "/repl/ok/ws", "127.0.0.1:%d" % self.d.port)
        try:
            self.assertTrue(head.startswith("HTTP/1.1 101"), head)
            t = self.tunnels()
            self.assertEqual(t["count"], 1)
            self.assertEqual(self.tunnels()["active"], "")  # nothing moved since
            s.sendall(ws_frame(1, b"typing", mask=True))
            self.assertEqual(ws_read_frame(read), (1, b"typing"))
            self.assertEqual(self.tunnels()["active"], "ok")
            self.assertEqual(self.tunnels()["active"], "")
            for i in range(50):  # many frames, still one key per drain
                s.sendall(ws_frame(1, b"k%d" % i, mask=True))
                ws_read_frame(read)
            self.assertEqual(self.tunnels()["active"], "ok")
        finally:
            s.close()
        deadline = time.monotonic() + 10
        while self.tunnels()["count"] != 0:
            self.assertLess(time.monotonic(), deadline, "the tunnel's watch did not end")
            time.sleep(0.05)

    def test_refused_upgrade_leaves_no_watch(self):
        s, _, head, read = ws_open(self.d.port, "/repl/down/ws", "127.0.0.1:%d" % self.d.port)
        s.close()
        self.assertTrue(head.startswith("HTTP/1.1 502"), head)
        self.assertEqual(self.tunnels()["count"], 0)

    def test_invalid_activity_key_is_refused(self):
        self.assertEqual(self.d.get("/bad/activity").status, 500)


class ProxyShutdownTest(unittest.TestCase):
    def test_sigterm_lets_a_proxied_response_finish(self):
        up = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
        up.daemon_threads = True
        up.slow_started = threading.Event()
        threading.Thread(target=up.serve_forever, daemon=True).start()
        try:
            with harness.Devexd(app="proxyapp", threads=1,
                                env={"PROXY_TEST_UPSTREAM": "127.0.0.1:%d" % up.server_address[1]}) as d:
                t, res = harness.in_thread(d.get, "/repl/ok/slow/700")
                self.assertTrue(up.slow_started.wait(10))
                d.signal(signal.SIGTERM)
                t.join(15)
                self.assertNotIn("error", res, res.get("error"))
                self.assertEqual(res["value"].status, 200)
                self.assertEqual(res["value"].json()["path"], "/slow/700")
                self.assertEqual(d.wait_exit(), 0)
        finally:
            up.shutdown()
            up.server_close()


if __name__ == "__main__":
    harness.main()
