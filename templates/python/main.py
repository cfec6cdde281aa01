"""A minimal HTTP server: edit me! It listens on $HOST:$PORT (default 0.0.0.0:3000).

GET / says hello; a WebSocket on /ws echoes every message back (RFC 6455,
just enough of it: text and binary frames, ping and close).
"""

import base64
import hashlib
import os
import struct
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def read_frame(rfile):
    """One frame from the client: (opcode, payload), or None when the connection ends."""
    head = rfile.read(2)
    if len(head) < 2:
        return None
    opcode, length = head[0] & 0x0F, head[1] & 0x7F
    if length == 126:
        length = struct.unpack("!H", rfile.read(2))[0]
    elif length == 127:
        length = struct.unpack("!Q", rfile.read(8))[0]
    mask = rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"  # clients always mask
    data = rfile.read(length)
    if len(data) < length:
        return None
    return opcode, bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def frame(opcode, payload):
    """A server frame: final, unmasked."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path.split("?")[0] == "/ws" and self.headers.get("Upgrade", "").lower() == "websocket":
            return self.websocket_echo()
        body = b"Hello from your Python REPL!\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def websocket_echo(self):
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.close_connection = True  # no more HTTP on this connection
        while True:
            f = read_frame(self.rfile)
            if f is None:
                return
            opcode, payload = f
            if opcode == 0x8:  # close: answer with the same status code, then stop
                self.wfile.write(frame(0x8, payload[:2]))
                self.wfile.flush()
                return
            if opcode == 0x9:  # ping -> pong
                self.wfile.write(frame(0xA, payload))
            elif opcode in (0x1, 0x2):  # text or binary: echo
                self.wfile.write(frame(opcode, payload))
            self.wfile.flush()


def main():
    port = int(os.environ.get("PORT", "3000"))
    server = ThreadingHTTPServer((os.environ.get("HOST", "0.0.0.0"), port), Handler)
    server.daemon_threads = True
    print("listening on port %d" % port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
