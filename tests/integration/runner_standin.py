#!/usr/bin/env python3
"""A stand-in for the runner image (Python 3 stdlib only).

The simulated kubelet (k8s_harness.SimKubelet) runs one per Running pod, on
the pod's loopback address and the runner container's port, so that what
devexd proxies to a pod reaches a real HTTP server:

    python3 runner_standin.py --host 127.0.0.2 --port 8081

It answers what the original runner image answers on its port 8081, and a
few things for the tests:

  GET /ping                  200 {"message":"pong"}
  GET /api/v1/repl/ws        WebSocket (RFC 6455): an echo server. Text and
                             binary messages come back unchanged (fragmented
                             messages come back as one frame), ping gets pong,
                             close gets close. Messages up to 64 MB.
  GET /user-app/...          200 text/html: "<h1>user app</h1>" and the path
  GET /_standin/last-request JSON {method, path, http_version, headers,
                             header_list, body_length, body, client,
                             websocket} of the last request before this one
                             (any method and path, WebSocket handshakes
                             included; /_standin/* requests and the simulated
                             kubelet's probes, User-Agent kube-probe/..., are
                             not recorded).
                             headers: lower-cased name -> value (repeated
                             headers joined with ", "); header_list: the
                             [name, value] pairs as received; path includes
                             the query. {} before the first request.
  GET /_standin/info         JSON {pid, host, port, requests, websockets, probes}
                             (counts since the start; requests: recorded ones)
  anything else              404 (so a readiness probe on "/" never passes)

HTTP/1.1 with keep-alive, one thread per connection. SIGTERM or SIGINT ends
it at once (exit status 0). It logs its start, its end and errors only; exit
status 98 when the address is taken.
"""

import argparse
import base64
import errno
import hashlib
import html
import http.server
import json
import os
import signal
import socket
import struct
import sys
import threading
import time

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WS_PATH = "/api/v1/repl/ws"
MAX_MESSAGE = 64 << 20     # bytes of one (reassembled) WebSocket message
RECV_SIZE = 1 << 20        # bytes asked of one recv on a WebSocket
MAX_RECORDED_BODY = 1 << 20

_last = {}                 # the last recorded request (see record())
_last_lock = threading.Lock()
_counts = {"requests": 0, "websockets": 0, "probes": 0}


def log(fmt, *args):
    sys.stderr.write("%s runner-standin[%d] %s\n" % (time.strftime("%H:%M:%S"), os.getpid(),
                                                     fmt % args if args else fmt))
    sys.stderr.flush()


def record(handler, body=b"", websocket=False):
    if (handler.headers.get("User-Agent") or "").startswith("kube-probe/"):
        with _last_lock:
            _counts["probes"] += 1
        return
    headers, pairs = {}, []
    for name, value in handler.headers.items():
        n = name.lower()
        pairs.append([n, value])
        headers[n] = headers[n] + ", " + value if n in headers else value
    entry = {"method": handler.command, "path": handler.path, "http_version": handler.request_version,
             "headers": headers, "header_list": pairs, "body_length": len(body),
             "body": body[:MAX_RECORDED_BODY].decode("utf-8", "replace"),
             "client": "%s:%d" % handler.client_address[:2], "websocket": websocket}
    with _last_lock:
        _last.clear()
        _last.update(entry)
        _counts["requests"] += 1
        if websocket:
            _counts["websockets"] += 1


_XOR_TABLES = [bytes(b ^ x for b in range(256)) for x in range(256)]


def _unmask(payload, key):
    """XOR with the 4-byte masking key: every 4th byte through one
    translation table (C loops only, some hundreds of MB/s)."""
    out = bytearray(len(payload))
    for j in range(4):
        out[j::4] = payload[j::4].translate(_XOR_TABLES[key[j]])
    return bytes(out)


def _frame_head(opcode, n):
    if n < 126:
        return struct.pack("!BB", 0x80 | opcode, n)
    if n < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, n)
    return struct.pack("!BBQ", 0x80 | opcode, 127, n)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def version_string(self):
        return "runner-standin/1"

    def log_message(self, fmt, *args):  # no access log
        pass

    def log_error(self, fmt, *args):
        log("error from %s: %s", self.client_address[0], fmt % args)

    # ---- plumbing ----

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            return self.rfile.read(n)
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return b""

    def _send(self, status, body, ctype="application/json", extra=()):
        if isinstance(body, (dict, list)):
            body = json.dumps(body, separators=(",", ":")).encode()
        elif isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    # ---- routes ----

    def _handle(self):
        path = self.path.split("?", 1)[0]
        if path.startswith("/_standin/"):
            self._body()
            if path == "/_standin/last-request":
                with _last_lock:
                    return self._send(200, dict(_last))
            if path == "/_standin/info":
                with _last_lock:
                    counts = dict(_counts)
                return self._send(200, dict(pid=os.getpid(), host=self.server.server_address[0],
                                            port=self.server.server_address[1], **counts))
            return self._send(404, {"error": "not found"})
        if path == WS_PATH and self.command == "GET" and \
                "websocket" in (self.headers.get("Upgrade") or "").lower():
            record(self, websocket=True)
            return self._websocket()
        body = self._body()
        record(self, body)
        if path == "/ping" and self.command in ("GET", "HEAD"):
            return self._send(200, {"message": "pong"})
        if (path == "/user-app" or path.startswith("/user-app/")) and self.command in ("GET", "HEAD"):
            return self._send(200, "<!doctype html>\n<h1>user app</h1>\n<p>%s</p>\n" % html.escape(self.path),
                              "text/html; charset=utf-8")
        if path == WS_PATH:
            return self._send(400, {"error": "expected a WebSocket upgrade"})
        return self._send(404, {"error": "not found", "path": self.path})

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _handle

    # ---- WebSocket echo ----

    def _websocket(self):
        key = self.headers.get("Sec-WebSocket-Key")
        if not key or self.headers.get("Sec-WebSocket-Version") != "13":
            return self._send(400, {"error": "bad WebSocket handshake"},
                              extra=[("Sec-WebSocket-Version", "13")])
        accept = base64.b64encode(hashlib.sha1(key.strip().encode() + WS_GUID).digest()).decode()
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.close_connection = True
        sock = self.connection
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)
        try:
            self._echo(sock)
        except (ConnectionError, OSError):
            pass

    def _echo(self, sock):
        buf = bytearray()
        message, message_op = [], None   # fragments of the message being received
        message_len = 0
        rfile = self.rfile  # may hold bytes the client sent right after the handshake

        def send(opcode, payload):
            head = _frame_head(opcode, len(payload))
            if len(payload) < 65536:
                sock.sendall(head + payload)
            else:
                sock.sendall(head)
                sock.sendall(payload)

        def close(code, reason=b""):
            with_code = struct.pack("!H", code) + reason if code else b""
            send(0x8, with_code)

        while True:
            # parse every complete frame in buf
            while True:
                if len(buf) < 2:
                    break
                b0, b1 = buf[0], buf[1]
                fin, opcode, masked, n = b0 & 0x80, b0 & 0x0F, b1 & 0x80, b1 & 0x7F
                pos = 2
                if n == 126:
                    if len(buf) < 4:
                        break
                    n = struct.unpack_from("!H", buf, 2)[0]
                    pos = 4
                elif n == 127:
                    if len(buf) < 10:
                        break
                    n = struct.unpack_from("!Q", buf, 2)[0]
                    pos = 10
                if n > MAX_MESSAGE:
                    close(1009)
                    return
                if len(buf) < pos + (4 if masked else 0) + n:
                    break
                if masked:
                    key = bytes(buf[pos:pos + 4])
                    pos += 4
                    payload = _unmask(bytes(buf[pos:pos + n]), key)
                else:
                    payload = bytes(buf[pos:pos + n])
                del buf[:pos + n]
                if b0 & 0x70:
                    close(1002)
                    return
                if opcode == 0x8:          # close: answer with the same code
                    close(struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 0)
                    return
                if opcode == 0x9:          # ping
                    send(0xA, payload)
                    continue
                if opcode == 0xA:          # pong
                    continue
                if opcode in (0x1, 0x2):
                    if message_op is not None:
                        close(1002)
                        return
                    message_op, message, message_len = opcode, [payload], len(payload)
                elif opcode == 0x0:
                    if message_op is None:
                        close(1002)
                        return
                    message.append(payload)
                    message_len += len(payload)
                else:
                    close(1002)
                    return
                if message_len > MAX_MESSAGE:
                    close(1009)
                    return
                if fin:
                    send(message_op, message[0] if len(message) == 1 else b"".join(message))
                    message, message_op, message_len = [], None, 0
            chunk = rfile.read1(RECV_SIZE)
            if not chunk:
                return
            buf += chunk


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def main():
    ap = argparse.ArgumentParser(description="runner stand-in for the simulated kubelet")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8081)
    args = ap.parse_args()

    def on_signal(signum, frame):
        raise SystemExit(0)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        srv = Server((args.host, args.port), Handler)
    except OSError as e:
        log("cannot listen on %s:%d: %s", args.host, args.port, e)
        sys.exit(98 if e.errno == errno.EADDRINUSE else 1)
    log("listening on %s:%d", args.host, args.port)
    try:
        srv.serve_forever(poll_interval=0.5)
    finally:
        srv.server_close()
        log("stopped")


if __name__ == "__main__":
    main()
