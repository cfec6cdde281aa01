"""Mail servers for tests (Python 3 stdlib only).

SmtpServer: a small SMTP submission server (RFC 5321) on loopback: EHLO/HELO,
STARTTLS (when given a certificate; implicit TLS with implicit_tls=True, as
smtps:// on port 465), AUTH PLAIN and AUTH LOGIN (RFC 4954) against one
user/password, MAIL FROM, RCPT TO, DATA (dot-unstuffed), RSET, NOOP, QUIT.
Knobs (attributes, changeable while it runs): hang (accept, never answer),
refuse_auth (535 to every AUTH),
refuse_rcpt (550 to RCPT), require_auth (530 to MAIL before AUTH).
Every accepted message is appended to .messages as a dict
{mail_from, rcpts, data (bytes, CRLF), tls, auth_user}; .wait_message() waits
for the next one.

ResendFake: POST /emails as Resend's API documents it
(https://resend.com/docs/api-reference/emails/send-email): Authorization:
Bearer <key> (401 {"statusCode":401,"name":"missing_api_key"...} without one,
403 "invalid_api_key" for another), a JSON body with from, to (string or
list), subject and html or text (422 "validation_error" otherwise); 200
{"id": "<uuid>"}. Knob status: answer every request with that status instead.
Requests are recorded in .requests as (headers, decoded body).
"""

import base64
import json
import socket
import socketserver
import ssl
import threading
import uuid
from http.server import BaseHTTPRequestHandler

from .loopback import LoopbackHTTPServer


class _SmtpHandler(socketserver.StreamRequestHandler):
    def setup(self):
        super().setup()
        self.srv = self.server.owner
        self.tls = False
        self.user = None

    def reply(self, line):
        self.wfile.write((line + "\r\n").encode())
        self.wfile.flush()

    def readline(self):
        line = self.rfile.readline(4096)
        if not line:
            raise ConnectionError("closed")
        return line.rstrip(b"\r\n").decode("utf-8", "replace")

    def start_tls(self):
        conn = self.srv.ssl_context.wrap_socket(self.connection, server_side=True)
        self.connection = self.request = conn
        self.rfile = conn.makefile("rb")
        self.wfile = conn.makefile("wb")
        self.tls = True

    def handle(self):
        try:
            with self.srv.cond:
                self.srv.connections += 1
                self.srv.cond.notify_all()
            if self.srv.hang:
                self.srv.release.wait(30)
                return
            if self.srv.implicit_tls:
                self.start_tls()
            self.session()
        except (ConnectionError, ssl.SSLError, OSError):
            pass

    def session(self):
        srv = self.srv
        self.reply("220 smtp.test ESMTP ready")
        mail_from, rcpts = None, []
        while True:
            line = self.readline()
            cmd = line[:4].upper()
            arg = line[5:] if len(line) > 5 else ""
            srv.commands.append(line if not line.upper().startswith("AUTH") else "AUTH ...")
            if cmd in ("EHLO", "HELO"):
                exts = ["250-smtp.test hello", "250-8BITMIME", "250-SIZE 10485760"]
                if srv.ssl_context and not self.tls:
                    exts.append("250-STARTTLS")
                exts.append("250 AUTH PLAIN LOGIN")
                for e in exts:
                    self.reply(e)
            elif line.upper() == "STARTTLS":
                if not srv.ssl_context or self.tls:
                    self.reply("502 not available")
                    continue
                self.reply("220 go ahead")
                self.start_tls()
            elif cmd == "AUTH":
                self.auth(arg)
            elif cmd == "MAIL":
                if srv.require_auth and self.user is None:
                    self.reply("530 5.7.0 Authentication required")
                    continue
                mail_from, rcpts = arg, []
                self.reply("250 OK")
            elif cmd == "RCPT":
                if mail_from is None:
                    self.reply("503 MAIL first")
                elif srv.refuse_rcpt:
                    self.reply("550 5.1.1 no such user")
                else:
                    rcpts.append(arg)
                    self.reply("250 OK")
            elif cmd == "DATA":
                if not rcpts:
                    self.reply("503 RCPT first")
                    continue
                self.reply("354 end with .")
                data = []
                while True:
                    raw = self.rfile.readline(1 << 20)
                    if not raw:
                        raise ConnectionError("closed in DATA")
                    if raw == b".\r\n":
                        break
                    if raw.startswith(b".."):
                        raw = raw[1:]
                    data.append(raw)
                msg = {"mail_from": mail_from, "rcpts": rcpts, "data": b"".join(data), "tls": self.tls,
                       "auth_user": self.user}
                with srv.cond:
                    srv.messages.append(msg)
                    srv.cond.notify_all()
                mail_from, rcpts = None, []
                self.reply("250 OK queued")
            elif cmd == "RSET":
                mail_from, rcpts = None, []
                self.reply("250 OK")
            elif cmd == "NOOP":
                self.reply("250 OK")
            elif cmd == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("500 unknown command")

    def auth(self, arg):
        srv = self.srv
        parts = arg.split()
        mech = parts[0].upper() if parts else ""
        if mech == "PLAIN":
            resp = parts[1] if len(parts) > 1 else None
            if resp is None:
                self.reply("334 ")
                resp = self.readline()
            try:
                _, user, password = base64.b64decode(resp).decode().split("\0")
            except Exception:
                self.reply("501 bad PLAIN response")
                return
        elif mech == "LOGIN":
            if len(parts) > 1:
                user = base64.b64decode(parts[1]).decode()
            else:
                self.reply("334 " + base64.b64encode(b"Username:").decode())
                user = base64.b64decode(self.readline()).decode()
            self.reply("334 " + base64.b64encode(b"Password:").decode())
            password = base64.b64decode(self.readline()).decode()
        else:
            self.reply("504 unrecognised mechanism")
            return
        if srv.refuse_auth or (user, password) != (srv.user, srv.password):
            self.reply("535 5.7.8 Authentication credentials invalid")
            return
        self.user = user
        self.reply("235 2.7.0 Authentication successful")


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class SmtpServer:
    def __init__(self, user="mailer", password="s3cret", cert=None, key=None, implicit_tls=False, host="127.0.0.1"):
        self.user, self.password = user, password
        self.host = host
        self.ssl_context = None
        if cert:
            self.ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ssl_context.load_cert_chain(cert, key)
        self.implicit_tls = implicit_tls
        self.refuse_auth = False
        self.refuse_rcpt = False
        self.require_auth = True
        self.hang = False  # accept connections and never answer
        self.release = threading.Event()
        self.connections = 0
        self.messages = []
        self.commands = []
        self.cond = threading.Condition()

    def __enter__(self):
        self.server = _TCPServer((self.host, 0), _SmtpHandler)
        self.server.owner = self
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        return False

    def url(self, scheme="smtp"):
        return "%s://127.0.0.1:%d" % (scheme, self.port)

    def reset(self):
        with self.cond:
            self.messages.clear()
            self.commands.clear()
        self.refuse_auth = self.refuse_rcpt = False
        self.require_auth = True

    def wait_message(self, count=1, timeout=10):
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.messages) >= count, timeout):
                raise AssertionError("no mail arrived (have %d, want %d)" % (len(self.messages), count))
            return self.messages[count - 1]


class ResendFake(LoopbackHTTPServer):
    def __init__(self, api_key="re_test_key"):
        self.api_key = api_key
        self.status = None
        self.requests = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def answer(self, status, doc):
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def error(self, status, name, message):
                self.answer(status, {"statusCode": status, "name": name, "message": message})

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n)
                try:
                    doc = json.loads(raw)
                except ValueError:
                    doc = None
                with fake.lock:
                    fake.requests.append((dict(self.headers), doc))
                if self.path != "/emails":
                    return self.error(404, "not_found", "The requested endpoint does not exist.")
                auth = self.headers.get("Authorization") or ""
                if not auth.startswith("Bearer "):
                    return self.error(401, "missing_api_key", "Missing API key in the authorization header.")
                if auth[7:] != fake.api_key:
                    return self.error(403, "invalid_api_key", "API key is invalid")
                if fake.status:
                    return self.error(fake.status, "application_error", "Something went wrong.")
                if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json" \
                        or not isinstance(doc, dict):
                    return self.error(422, "validation_error", "Invalid JSON body")
                for field in ("from", "to", "subject"):
                    if not doc.get(field):
                        return self.error(422, "missing_required_field", "Missing `%s` field." % field)
                if not (doc.get("html") or doc.get("text")):
                    return self.error(422, "validation_error", "Missing `html` or `text` field.")
                to = doc["to"] if isinstance(doc["to"], list) else [doc["to"]]
                if len(to) > 50:
                    return self.error(422, "validation_error", "Too many recipients.")
                self.answer(200, {"id": str(uuid.uuid4())})

        super().__init__(Handler)

    @property
    def base(self):
        return "http://127.0.0.1:%d" % self.port


def closed_port():
    """A loopback port nothing listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
