"""Integration test harness for devexd (Python 3 standard library only).

Devexd is a context manager that writes a config into a temporary directory,
copies the test apps (tests/integration/apps) next to it, starts the binary
and waits until GET /healthz answers. On exit it sends SIGTERM, waits for the
process (killing it after 10 s) and checks the exit code and the log: a log
with an AddressSanitizer report or a UBSan "runtime error:" fails the test.

Environment:
  DEVEXD_BIN         the binary (default: $DEVEXD_BUILD_DIR/devexd, else build/devexd)
  DEVEXD_SOURCE_DIR  the source tree (default: two directories above this file)
  DEVEXD_KEEP_TMP    if set, tempdirs (config, app copy, stderr.log) are not removed

Test apps can hold a request until the test creates a "gate" file: the harness
sets DEVEXD_TEST_GATES to a directory of the tempdir and open_gate(name)
creates the file there (see apps/testapp.lua, route /hold/:s).
"""

import contextlib
import ctypes
import http.client
import json
import os
import re
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

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("DEVEXD_SOURCE_DIR") or os.path.dirname(os.path.dirname(HERE))
BUILD_DIR = os.environ.get("DEVEXD_BUILD_DIR") or os.path.join(SOURCE_DIR, "build")
DEVEXD_BIN = os.environ.get("DEVEXD_BIN") or os.path.join(BUILD_DIR, "devexd")
LUA_DIR = os.path.join(SOURCE_DIR, "lua")
APPS_DIR = os.path.join(HERE, "apps")

# Sanitizer reports, looked for in lines that are not JSON log lines (so a Lua
# error message containing these words does not count). Leaks are not listed:
# LeakSanitizer makes the exit code non-zero, and the exit code is checked.
SANITIZER_PATTERNS = [
    re.compile(r"ERROR: AddressSanitizer"),
    re.compile(r"WARNING: ThreadSanitizer"),
    re.compile(r"runtime error:"),
]


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reserve_port():
    """(port, socket): a free port held by a bound, non-listening socket.

    devexd binds with SO_REUSEPORT, so two servers given the same port would
    both start and share its connections. While the reservation is held no
    bind(0) (another test's free_port) can return the port, yet devexd can
    still bind it (same user, SO_REUSEPORT on both); close the socket once
    devexd listens."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))  # no SO_REUSE* before bind: the kernel picks an unused port
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return s.getsockname()[1], s


def to_lua(v, indent=""):
    """Serializes a Python value (dict, list, str, int, float, bool) as Lua."""
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a valid Lua string literal too
    if isinstance(v, (list, tuple)):
        return "{ " + ", ".join(to_lua(x, indent) for x in v) + " }"
    if isinstance(v, dict):
        parts = []
        for k, x in v.items():
            key = k if re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k) else "[" + json.dumps(k) + "]"
            parts.append("%s  %s = %s" % (indent, key, to_lua(x, indent + "  ")))
        return "{\n" + ",\n".join(parts) + "\n" + indent + "}"
    raise TypeError("cannot serialize %r to Lua" % (v,))


def make_tls_cert(directory):
    """Creates a self-signed certificate for CN=localhost (SAN DNS:localhost,
    IP:127.0.0.1) with the openssl command line; returns (cert, key) paths.
    The certificate is its own CA, so pass the cert path as the CA file."""
    cert = os.path.join(directory, "tls.crt")
    key = os.path.join(directory, "tls.key")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-addext", "basicConstraints=critical,CA:TRUE"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30)
    return cert, key


def sanitizer_errors(text):
    """The lines of text that look like sanitizer reports."""
    out = []
    for line in text.splitlines():
        for p in SANITIZER_PATTERNS:
            if p.search(line) and not _is_json_object(line):
                out.append(line)
                break
    return out


def _is_json_object(line):
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _set_pdeathsig():
    """In the child: die with the test process (a killed ctest leaves no server)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Response:
    def __init__(self, status, headers, body, reason=""):
        self.status = status
        self.headers = headers  # http.client.HTTPMessage: case-insensitive get()
        self.body = body
        self.reason = reason

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def header(self, name):
        return self.headers.get(name)

    def __repr__(self):
        return "<Response %d %r>" % (self.status, self.body[:200])


class Devexd:
    """A devexd process for one test (or one test class).

    app:          the Lua module to serve (looked up in a copy of tests/integration/apps
                  placed in the tempdir, then the built-in lua dir); None: the built-in "app"
    app_files:    {relative path: text} written into that copy before start
    threads:      -t N
    tls:          add a TLS listener with a fresh self-signed certificate
    server:       extra keys of the config's server table (merged over the defaults)
    config_text:  a complete config file instead of the generated one
    env:          extra environment variables
    expect_exit:  exit code asserted on exit (None: not checked)
    """

    def __init__(self, app="testapp", app_files=None, threads=1, tls=False, server=None,
                 config_text=None, env=None, expect_exit=0, max_body=4096, shutdown_timeout=5, config=None):
        self.app = app
        self.app_files = app_files or {}
        self.threads = threads
        self.tls = tls
        self.server_extra = server or {}
        self.config_text = config_text
        self.extra_config = config or {}  # more top-level config keys (redis = {...}, ...)
        self.extra_env = env or {}
        self.expect_exit = expect_exit
        self.max_body = max_body
        self.shutdown_timeout = shutdown_timeout
        self.proc = None
        self.returncode = None
        self.tmp = None
        self.port = None
        self.tls_port = None
        self.cert = self.key = None
        self._reservations = []

    # ---- lifecycle ----

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self._cleanup(check=False)
            self._remove_tmp()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            problems = self._cleanup(check=True)
            if problems:
                msg = "devexd: " + "; ".join(problems) + "\n--- log ---\n" + self.raw_log()[-20000:]
                if exc_type is None:
                    raise AssertionError(msg)
                sys.stderr.write(msg + "\n")
            elif exc_type is not None and self.tmp is not None:
                sys.stderr.write("--- devexd log (test failed) ---\n" + self.raw_log()[-8000:] + "\n")
        finally:
            self._remove_tmp()
        return False

    def _remove_tmp(self):
        """Removes the tempdir (kept when DEVEXD_KEEP_TMP is set, for debugging)."""
        if self.tmp is not None and not os.environ.get("DEVEXD_KEEP_TMP"):
            shutil.rmtree(self.tmp, ignore_errors=True)

    def start(self):
        self.tmp = tempfile.mkdtemp(prefix="devexd-it-")
        self.app_dir = os.path.join(self.tmp, "apps")
        shutil.copytree(APPS_DIR, self.app_dir)
        for rel, text in self.app_files.items():
            self.write_app_file(rel, text)
        self.gates_dir = os.path.join(self.tmp, "gates")
        os.mkdir(self.gates_dir)
        self.port, r1 = reserve_port()
        self._reservations.append(r1)
        listen = [{"host": "127.0.0.1", "port": self.port}]
        if self.tls:
            self.cert, self.key = make_tls_cert(self.tmp)
            self.tls_port, r2 = reserve_port()
            self._reservations.append(r2)
            listen.append({"host": "127.0.0.1", "port": self.tls_port, "tls": {"cert": self.cert, "key": self.key}})
        self.conf_path = os.path.join(self.tmp, "devexd.conf.lua")
        if self.config_text is not None:
            text = self.config_text.replace("@PORT@", str(self.port))  # the port is chosen here
        else:
            server = {"listen": listen, "max_body": self.max_body, "shutdown_timeout": self.shutdown_timeout}
            server.update(self.server_extra)
            conf = {"server": server}
            conf.update(self.extra_config)
            # The local runtime with a real sign-in refuses to start without
            # runtime.isolation (issue 14.3); tests that are not about isolation
            # say so (runtime.unsafe_no_isolation). test_sandbox sets either itself.
            rt = conf.get("runtime")
            if isinstance(rt, dict) and rt.get("driver") == "local" and "isolation" not in rt \
                    and "unsafe_no_isolation" not in rt:
                conf["runtime"] = dict(rt, unsafe_no_isolation=True)
            if self.app is not None:
                conf["lua"] = {"path": [self.app_dir], "app": self.app}
            text = "return " + to_lua(conf) + "\n"
        with open(self.conf_path, "w") as f:
            f.write(text)
        self.log_path = os.path.join(self.tmp, "stderr.log")
        self.stdout_path = os.path.join(self.tmp, "stdout.log")
        env = dict(os.environ)
        env["DEVEXD_TEST_GATES"] = self.gates_dir
        env.update(self.extra_env)
        cmd = [DEVEXD_BIN, "-c", self.conf_path, "-L", LUA_DIR]
        if self.threads is not None:
            cmd += ["-t", str(self.threads)]
        self._log_file = open(self.log_path, "wb")
        self._stdout_file = open(self.stdout_path, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._stdout_file,
                                     stderr=self._log_file, env=env, preexec_fn=_set_pdeathsig)
        try:
            self._wait_ready(10)
        finally:
            self._release_ports()

    def _release_ports(self):
        for r in self._reservations:
            r.close()
        self._reservations = []

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.returncode = self.proc.returncode
                raise AssertionError("devexd exited with %d before answering /healthz\n--- log ---\n%s"
                                     % (self.returncode, self.raw_log()))
            try:
                r = self.request("GET", "/healthz", timeout=1)
                if r.status == 200:
                    return
                last = "status %d" % r.status
            except OSError as e:
                last = repr(e)
            time.sleep(0.05)
        raise AssertionError("devexd did not answer GET /healthz within %gs (last: %s)\n--- log ---\n%s"
                             % (timeout, last, self.raw_log()))

    def _cleanup(self, check):
        """Stops the process if it runs; returns a list of problems."""
        problems = []
        self._release_ports()
        if self.proc is not None and self.returncode is None:
            if self.proc.poll() is None:
                try:
                    self.proc.send_signal(signal.SIGTERM)
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    problems.append("did not exit within 10 s of SIGTERM (killed)")
                    self.proc.kill()
                    self.proc.wait()
            self.returncode = self.proc.returncode
        for f in ("_log_file", "_stdout_file"):
            if getattr(self, f, None) is not None:
                getattr(self, f).close()
                setattr(self, f, None)
        if not check or self.proc is None:
            return problems
        if self.expect_exit is not None and self.returncode != self.expect_exit:
            problems.append("exit code %r, expected %r" % (self.returncode, self.expect_exit))
        san = sanitizer_errors(self.raw_log())
        if san:
            problems.append("sanitizer errors in the log: %s" % " | ".join(san[:5]))
        return problems

    def sync_templates(self, directory=None, timeout=120):
        """Runs `devexd templates sync` with this instance's config and
        environment (the shipped templates by default); fails with its output."""
        directory = directory or os.path.join(SOURCE_DIR, "templates")
        p = subprocess.run([DEVEXD_BIN, "-c", self.conf_path, "-L", LUA_DIR, "templates", "sync", directory],
                           env=dict(os.environ, **self.extra_env), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
        if p.returncode != 0:
            raise AssertionError("devexd templates sync exited with %d:\n%s%s" % (p.returncode, p.stderr, p.stdout))
        return p.stdout

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait_exit(self, timeout=10):
        """Waits for the process to exit; returns its exit code."""
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("devexd did not exit within %gs\n--- log ---\n%s" % (timeout, self.raw_log()))
        return self.returncode

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    # ---- files ----

    def write_app_file(self, rel, text):
        """Writes (atomically: rename over) a file in the tempdir's app copy."""
        path = os.path.join(self.app_dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
        return path

    def app_path(self, rel):
        return os.path.join(self.app_dir, rel)

    def open_gate(self, name):
        with open(os.path.join(self.gates_dir, name), "w"):
            pass

    # ---- logs ----

    def raw_log(self):
        if self.tmp is None or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def logs(self):
        """The log's JSON lines as dicts; other lines (sanitizer output...) are skipped."""
        out = []
        for line in self.raw_log().splitlines():
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                v = json.loads(line)
            except ValueError:
                continue
            if isinstance(v, dict):
                out.append(v)
        return out

    def mark(self):
        """The number of JSON log lines so far: pass as since= to look only at later lines."""
        return len(self.logs())

    def wait_log(self, pred, count=1, timeout=10, what="a log line", since=0):
        """Waits until at least `count` JSON log lines (after the first `since`)
        satisfy pred; returns them."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.logs()[since:] if pred(e)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for %d x %s (have %d)\n--- log ---\n%s"
                                     % (count, what, len(found), self.raw_log()[-20000:]))
            time.sleep(0.02)

    def check_sanitizers(self):
        san = sanitizer_errors(self.raw_log())
        if san:
            raise AssertionError("sanitizer errors in the log:\n" + "\n".join(san))

    # ---- clients ----

    def url(self, path, tls=False):
        if tls:
            return "https://localhost:%d%s" % (self.tls_port, path)
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def resolve_args(self):
        """curl arguments pinning localhost to 127.0.0.1 for the TLS URL (no ::1 attempt)."""
        return ["--resolve", "localhost:%d:127.0.0.1" % self.tls_port]

    def connection(self, timeout=10):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def tls_connection(self, timeout=10):
        ctx = ssl.create_default_context(cafile=self.cert)
        return http.client.HTTPSConnection("localhost", self.tls_port, timeout=timeout, context=ctx)

    def request(self, method, path, body=None, headers=None, timeout=10, conn=None):
        """One HTTP/1.1 request on a new connection (or conn); returns a Response."""
        own = conn is None
        if own:
            conn = self.connection(timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            data = r.read()
            return Response(r.status, r.headers, data, r.reason)
        finally:
            if own:
                conn.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def get_json(self, path, **kw):
        r = self.get(path, **kw)
        return r.status, r.json()


class H2Client:
    """A minimal HTTP/2 client over cleartext (prior knowledge) for what curl
    and nghttp cannot do: resetting one stream (RST_STREAM) and going on using
    the same connection. Requests are sent with HPACK literals (no Huffman, no
    dynamic table); of the response headers only an indexed :status is decoded."""

    PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
    END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
    STATIC_STATUS = {0x88: 200, 0x89: 204, 0x8a: 206, 0x8b: 304, 0x8c: 400, 0x8d: 404, 0x8e: 500}

    def __init__(self, host, port, timeout=10):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.authority = "%s:%d" % (host, port)
        self.buf = b""
        self.streams = {}  # id -> {"status", "data", "ended", "reset"}
        self.goaway = False
        self.next_id = 1
        self.sock.sendall(self.PREFACE + self._frame(self.SETTINGS, 0, 0, b""))

    def close(self):
        self.sock.close()

    @staticmethod
    def _frame(ftype, flags, stream, payload):
        return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + stream.to_bytes(4, "big") + payload

    @staticmethod
    def _int(value, prefix_bits, first=0):
        limit = (1 << prefix_bits) - 1
        if value < limit:
            return bytes([first | value])
        out = [first | limit]
        value -= limit
        while value >= 128:
            out.append((value & 0x7F) | 0x80)
            value >>= 7
        out.append(value)
        return bytes(out)

    def _literal(self, name, value):
        n, v = name.encode(), value.encode()
        return b"\x00" + self._int(len(n), 7) + n + self._int(len(v), 7) + v

    def request(self, method, path, headers=None):
        """Sends a request without a body; returns its stream id."""
        sid = self.next_id
        self.next_id += 2
        block = b"".join(self._literal(k, v) for k, v in
                         [(":method", method), (":scheme", "http"), (":path", path), (":authority", self.authority)]
                         + list((headers or {}).items()))
        self.streams[sid] = {"status": None, "data": b"", "ended": False, "reset": False}
        self.sock.sendall(self._frame(self.HEADERS, self.END_HEADERS | self.END_STREAM, sid, block))
        return sid

    def reset(self, sid, code=8):  # CANCEL
        self.sock.sendall(self._frame(self.RST_STREAM, 0, sid, code.to_bytes(4, "big")))
        self.streams[sid]["reset"] = True

    def _read_frame(self):
        while len(self.buf) < 9:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("HTTP/2 connection closed by the server")
            self.buf += chunk
        length = int.from_bytes(self.buf[:3], "big")
        while len(self.buf) < 9 + length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("HTTP/2 connection closed by the server")
            self.buf += chunk
        ftype, flags = self.buf[3], self.buf[4]
        sid = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
        payload = self.buf[9:9 + length]
        self.buf = self.buf[9 + length:]
        return ftype, flags, sid, payload

    def _send_control(self, data):
        """Sends a frame the protocol asks for (ACK, WINDOW_UPDATE); the server
        may have closed its side already (after a GOAWAY), which is fine."""
        try:
            self.sock.sendall(data)
        except OSError:
            pass

    def _handle(self, ftype, flags, sid, payload):
        st = self.streams.get(sid)
        if ftype == self.SETTINGS and not flags & self.ACK:
            self._send_control(self._frame(self.SETTINGS, self.ACK, 0, b""))
        elif ftype == self.PING and not flags & self.ACK:
            self._send_control(self._frame(self.PING, self.ACK, 0, payload))
        elif ftype == self.GOAWAY:
            self.goaway = True
        elif ftype == self.HEADERS and st is not None:
            if payload:
                st["status"] = self.STATIC_STATUS.get(payload[0])
            if flags & self.END_STREAM:
                st["ended"] = True
        elif ftype == self.DATA and st is not None:
            st["data"] += payload
            if payload:  # give the flow-control credit back
                inc = len(payload).to_bytes(4, "big")
                self._send_control(self._frame(self.WINDOW_UPDATE, 0, 0, inc) +
                                   self._frame(self.WINDOW_UPDATE, 0, sid, inc))
            if flags & self.END_STREAM:
                st["ended"] = True
        elif ftype == self.RST_STREAM and st is not None:
            st["ended"] = True
            st["reset"] = True

    def wait(self, sid):
        """Reads frames until stream sid ends; returns {"status", "data", ...}."""
        while not self.streams[sid]["ended"]:
            self._handle(*self._read_frame())
        return self.streams[sid]


def run(cmd, timeout=30, env=None, check=False):
    """Runs a command; returns CompletedProcess with text stdout/stderr."""
    return subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=timeout, env=env, check=check)


def curl(*args, timeout=30):
    """curl -sS with a response-code/http-version trailer. Returns
    (returncode, body, http_code, http_version, stderr)."""
    marker = "\n@@DEVEXD@@"
    p = subprocess.run(["curl", "-sS", "--max-time", str(timeout - 5 if timeout > 10 else timeout),
                        "-w", marker + "%{http_code} %{http_version}"] + list(args),
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    out = p.stdout.decode("utf-8", "replace")
    body, _, trailer = out.rpartition(marker)
    code, _, version = trailer.partition(" ")
    return p.returncode, body, code, version, p.stderr.decode("utf-8", "replace")



def recv_all(sock):
    """Everything sock receives until the peer closes it."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def rss_kb(pid):
    """Resident memory of a process in KB (/proc/<pid>/status VmRSS; 0 when
    absent): what the benches and test_h2_abuse measure devexd by."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0

def poll(fn, what="condition", timeout=30, interval=0.05):
    """Calls fn() until it returns a true value, and returns that; fails
    (AssertionError naming `what` and fn's last value) after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %gs waiting for %s (last: %r)" % (timeout, what, v))
        time.sleep(interval)


def tree(root):
    """{path relative to root: bytes} of every file under root."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


def in_thread(fn, *args, **kw):
    """Runs fn in a daemon thread; returns (thread, result) where result is a
    dict filled with 'value' or 'error' and 'done_at' (a sequence number)."""
    result = {}

    def body():
        try:
            result["value"] = fn(*args, **kw)
        except BaseException as e:  # reported by the test
            result["error"] = e
        result["done_at"] = _next_seq()

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t, result


_seq_lock = threading.Lock()
_seq = [0]


def _next_seq():
    """A process-wide completion counter: compares completion order across threads."""
    with _seq_lock:
        _seq[0] += 1
        return _seq[0]


def npm_ci(directory, package, timeout=600):
    """Installs directory's node_modules from its package-lock.json (npm ci)
    when `package` is missing there or the lockfile changed since the last
    install (npm writes node_modules/.package-lock.json), under a lock so that
    tests running at once (ctest -j) never install into the same directory
    together or use a half-made node_modules. Fails, never skips."""
    import fcntl
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            raise AssertionError("%s is not installed: the tests need Node.js and npm (scripts/deps.sh --test)" % tool)
    marker = os.path.join(directory, "node_modules", package, "package.json")
    installed = os.path.join(directory, "node_modules", ".package-lock.json")
    lockfile = os.path.join(directory, "package-lock.json")

    def current():
        return (os.path.exists(marker) and os.path.exists(installed)
                and os.path.getmtime(installed) >= os.path.getmtime(lockfile))

    if current():
        return
    name = re.sub(r"[^A-Za-z0-9]+", "-", os.path.relpath(directory, SOURCE_DIR))
    with open(os.path.join(tempfile.gettempdir(), "devexd-npm-%s.lock" % name), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if current():
            return
        r = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=directory,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0 or not os.path.exists(marker):
            raise AssertionError("npm ci in %s failed:\n%s%s" % (directory, r.stdout, r.stderr))


def main():
    """unittest.main() that exits non-zero on any failure or error."""
    unittest.main(verbosity=2)


# ---- Redis (added for test_redis.py) ------------------------------------------

import urllib.parse  # noqa: E402

class RedisError(Exception):
    """An error reply ("-ERR ...") read by RedisServer's own small client."""


def _resp_encode(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode("utf-8")
        elif isinstance(a, (int, float)):
            a = str(a).encode("ascii")
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def _resp_read(f):
    """Reads one RESP2 reply from a binary file object. Bulk strings come back
    as bytes, status replies as str, errors as RedisError instances (not raised)."""
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("redis: connection closed")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode("utf-8", "replace")
    if kind == b"-":
        return RedisError(rest.decode("utf-8", "replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        if len(data) != n + 2:
            raise ConnectionError("redis: connection closed")
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        if n < 0:
            return None
        return [_resp_read(f) for _ in range(n)]
    raise ConnectionError("redis: unexpected reply %r" % line)


class RedisClient:
    """A blocking RESP2 client for tests (TCP or unix socket). call() raises
    RedisError on an error reply."""

    def __init__(self, port=None, unix_path=None, password=None, db=0, timeout=5):
        if unix_path:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(unix_path)
        else:
            self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.f = self.sock.makefile("rb")
        try:
            if password:
                self.call("AUTH", password)
            if db:
                self.call("SELECT", db)
        except BaseException:
            self.close()
            raise

    def send(self, *args):
        self.sock.sendall(_resp_encode(args))

    def read(self):
        return _resp_read(self.f)

    def call(self, *args):
        self.send(*args)
        r = self.read()
        if isinstance(r, RedisError):
            raise r
        return r

    def close(self):
        with contextlib.suppress(OSError):
            self.f.close()
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class RedisServer:
    """A private redis-server (Debian's) on a free loopback port, for one test
    or one test class. Nothing is persisted: --save '' --appendonly no, with
    --dir in a temporary directory that is removed on exit.

    unix_socket:  also listen on a unix socket (self.unix_path)
    password:     --requirepass; the helpers here authenticate with it
    args:         extra redis-server arguments, e.g. ["--maxmemory", "10mb"]

    stop() (SHUTDOWN NOSAVE, or SIGKILL with kill=True) and start() again reuse
    the SAME port and socket path, so clients can test reconnection. The port
    stays reserved (a bound, non-listening SO_REUSEADDR socket) from __init__
    to close(), so while Redis is stopped no other test's free_port() or
    reserve_port() can take it. The process is always killed and the directory
    removed on __exit__.
    """

    def __init__(self, unix_socket=False, password=None, args=None, bin=None):
        self.bin = bin or os.environ.get("REDIS_SERVER_BIN") or shutil.which("redis-server") or "/usr/bin/redis-server"
        self.password = password
        self.extra_args = list(args or [])
        self.tmp = tempfile.mkdtemp(prefix="devexd-redis-")
        # bind(0) with no options first: the kernel picks a port nothing is bound to
        self._reservation = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._reservation.bind(("127.0.0.1", 0))
        self._reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # redis-server can still bind it
        self.port = self._reservation.getsockname()[1]
        self.unix_path = os.path.join(self.tmp, "redis.sock") if unix_socket else None
        self.log_path = os.path.join(self.tmp, "redis.log")
        self.proc = None
        self.starts = 0

    # ---- lifecycle ----

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            sys.stderr.write("--- redis-server log (test failed) ---\n" + self.raw_log()[-4000:] + "\n")
        self.close()
        return False

    def command_line(self):
        cmd = [self.bin, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", self.tmp, "--daemonize", "no", "--logfile", "", "--enable-debug-command", "local",
               "--databases", "16"]
        if self.unix_path:
            cmd += ["--unixsocket", self.unix_path, "--unixsocketperm", "700"]
        if self.password:
            cmd += ["--requirepass", self.password]
        return cmd + self.extra_args

    def start(self, timeout=10):
        """Starts redis-server (again) on self.port and waits until it answers PING."""
        if self.running():
            raise AssertionError("redis-server is already running")
        self.proc = None
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.command_line(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, preexec_fn=_set_pdeathsig)
        finally:
            log.close()
        self.starts += 1
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("redis-server exited with %d at start\n--- log ---\n%s"
                                     % (self.proc.returncode, self.raw_log()[-4000:]))
            try:
                with self.client(timeout=1) as c:
                    if c.call("PING") == "PONG":
                        return self
            except (OSError, RedisError) as e:
                last = e
            time.sleep(0.02)
        raise AssertionError("redis-server did not answer PING on port %d within %gs (last: %r)\n--- log ---\n%s"
                             % (self.port, timeout, last, self.raw_log()[-4000:]))

    def stop(self, kill=False, timeout=10):
        """Stops redis-server: SHUTDOWN NOSAVE, or SIGKILL with kill=True (or
        when SHUTDOWN fails). Returns once the process has exited."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if not kill:
            try:
                with self.client(timeout=2) as c:
                    c.send("SHUTDOWN", "NOSAVE")
                    with contextlib.suppress(OSError, ConnectionError):
                        c.read()  # the server closes the connection
            except (OSError, RedisError, ConnectionError):
                kill = True
            if not kill:
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    kill = True
        if kill:
            with contextlib.suppress(OSError):
                self.proc.kill()
            self.proc.wait()
        if self.unix_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.unix_path)

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.kill()
            with contextlib.suppress(Exception):
                self.proc.wait(10)
        if self._reservation is not None:
            self._reservation.close()
            self._reservation = None
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    # ---- addresses ----

    def url(self, db=None, password=True, host="127.0.0.1"):
        """redis://[:password@]127.0.0.1:PORT[/db] (password=False leaves it out)."""
        auth = ""
        if password and self.password:
            auth = ":%s@" % urllib.parse.quote(self.password, safe="")
        return "redis://%s%s:%d%s" % (auth, host, self.port, "" if db is None else "/%d" % db)

    def unix_url(self, db=None):
        if not self.unix_path:
            raise AssertionError("RedisServer(unix_socket=True) needed for unix_url()")
        return "unix://%s%s" % (self.unix_path, "" if db is None else "?db=%d" % db)

    # ---- clients ----

    def client(self, db=0, timeout=5, unix=False):
        """A RedisClient, authenticated and on database db."""
        return RedisClient(port=None if unix else self.port, unix_path=self.unix_path if unix else None,
                           password=self.password, db=db, timeout=timeout)

    def call(self, *args, db=0):
        """One command on a new connection; returns the reply (raises RedisError)."""
        with self.client(db=db) as c:
            return c.call(*args)

    def cli(self, *args, db=None, timeout=30):
        """redis-cli against this server; returns CompletedProcess (text)."""
        cmd = ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port)]
        if db is not None:
            cmd += ["-n", str(db)]
        env = dict(os.environ)
        if self.password:
            env["REDISCLI_AUTH"] = self.password  # not on the command line: no warning
        return run(cmd + [str(a) for a in args], timeout=timeout, env=env)

    def command_calls(self, name):
        """calls=N of INFO commandstats for a command name (0 if never called)."""
        info = self.call("INFO", "commandstats").decode()
        m = re.search(r"^cmdstat_%s:calls=(\d+)" % re.escape(name.lower()), info, re.M)
        return int(m.group(1)) if m else 0

    def raw_log(self):
        if self.tmp is None or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")


def stop_class_servers(cls, *names):
    """Stops what a test class started in setUpClass: the servers in the class
    attributes names (in that order; one never set is skipped), then removes
    cls.tmp when the class has one."""
    for name in names:
        obj = getattr(cls, name, None)
        if obj is not None:
            obj.__exit__(None, None, None)
    tmp = getattr(cls, "tmp", None)
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


def kill_session_runners(redis, prefix="devex:"):
    """Kills the process groups of the local runners that sessions in this
    Redis still record (runners are detached from devexd by design, so a
    test that ends with a session running would leave them behind)."""
    import signal as _signal
    try:
        keys = redis.call("KEYS", prefix + "activeSession:*")
    except Exception:
        return
    for k in keys or []:
        try:
            pid = redis.call("HGET", k, "pid")
            if pid:
                os.killpg(int(pid), _signal.SIGKILL)
        except (OSError, ValueError, Exception):
            pass
