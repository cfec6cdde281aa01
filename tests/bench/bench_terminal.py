#!/usr/bin/env python3
"""Terminal echo round trip (issue #16, performance): a single-host session of
the python template (the agent, `devexd runner`, by default), a terminal
opened over the IDE protocol, and ROUNDS keystrokes each sent as
terminalInput and timed until the PTY's echo comes back as
terminalResponse. Measured through devexd's gateway (/repl/<id>/api/v1/repl/ws
on devexd's own host, with the owner's cookie) and straight to the agent's
port, alternating, in the same run; p50/p99 of each and their ratio.

A benchmark, not a test: numbers are printed and written to
tests/bench/results/terminal.json, not judged.

Usage: DEVEXD_BIN=build/devexd python3 tests/bench/bench_terminal.py
Knobs (environment): ROUNDS (1000).
"""
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import harness  # noqa: E402
from harness import Devexd, RedisServer  # noqa: E402
from test_auth import Browser  # noqa: E402
from test_proxy import ws_frame, ws_open, ws_read_frame  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", "1000"))
DEV_CONF = os.path.join(harness.SOURCE_DIR, "etc", "devexd.dev.conf.lua")
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
JSON = {"Content-Type": "application/json"}


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q * len(xs) + 0.5)) - 1))]


class Term:
    def __init__(self, port, path, host, extra=""):
        self.sock, _, head, self.read = ws_open(port, path, host, extra)
        assert head.startswith("HTTP/1.1 101"), head
        self.sock.settimeout(20)
        self.send("Connection", None)
        self.until("Loaded")
        self.send("requestTerminal", {"cols": 80, "rows": 24})
        self.sid = self.until("terminalConnected")["sessionId"]
        # a shell with no prompt and no line editing: what is typed comes back as the tty echoes it
        self.input("stty -icanon; PS1=''; export PS1\n")
        time.sleep(0.5)
        self.drain()

    def send(self, event, data):
        self.sock.sendall(ws_frame(1, json.dumps({"event": event, "data": data}).encode(), True))

    def recv(self):
        op, payload = ws_read_frame(self.read)
        msg = json.loads(payload.decode())
        return msg["event"], msg.get("data")

    def until(self, event):
        while True:
            ev, data = self.recv()
            if ev == event:
                return data

    def input(self, text):
        self.send("terminalInput", {"sessionId": self.sid, "data": text})

    def drain(self):
        self.sock.settimeout(0.3)
        try:
            while True:
                self.recv()
        except OSError:
            pass
        self.sock.settimeout(20)

    def echo(self, ch):
        t0 = time.perf_counter()
        self.input(ch)
        got = ""
        while ch not in got:
            ev, data = self.recv()
            if ev == "terminalResponse":
                got += data
        return time.perf_counter() - t0


def main():
    tmp = tempfile.mkdtemp(prefix="devexd-bench-term-")
    with RedisServer() as redis:
        conf = ('local c = dofile(%s)\n'
                'c.server.listen = { { host = "127.0.0.1", port = @PORT@ } }\n'
                'c.public_url = "http://localhost:@PORT@"\n'
                'c.server.access_log = false\n'
                'return c\n') % json.dumps(DEV_CONF)
        env = {"DEVEXD_DATA": os.path.join(tmp, "data"), "REDIS_URL": redis.url(), "ENVIRONMENT": "development"}
        with Devexd(app=None, threads=2, config_text=conf, env=env) as d:
            d.sync_templates()
            b = Browser(d)
            r = b.request("POST", "/auth/dev/login", body="user=bencher", headers=FORM)
            assert r.status == 302, r.body
            r = b.request("POST", "/api/repl/new", headers=JSON, body=json.dumps({"template": "python", "replName": "t"}))
            assert r.status == 201, r.body
            rid = r.json()["id"]
            r = b.request("GET", "/api/repl/session/" + rid)
            assert r.status == 200, r.body
            endpoint = redis.call("HGET", "devex:activeSession:" + rid, "endpoint")
            endpoint = endpoint.decode() if isinstance(endpoint, bytes) else endpoint
            origin = "http://localhost:3000"  # the development frontend, an allowed origin
            gw = Term(d.port, "/repl/%s/api/v1/repl/ws" % rid, "localhost:%d" % d.port,
                      "Cookie: %s\r\nOrigin: %s\r\n" % (b.cookie_header(), origin))
            direct = None
            if endpoint and not endpoint.startswith("unix:"):
                host, port = endpoint.rsplit(":", 1)
                direct = Term(int(port), "/api/v1/repl/ws", endpoint)
            lat = {"gateway": [], "direct": []}
            for k in range(ROUNDS):
                ch = "abcdefghijklmnopqrstuvwxyz"[k % 26]
                lat["gateway"].append(gw.echo(ch))
                if direct:
                    lat["direct"].append(direct.echo(ch))
            out = {"rounds": ROUNDS}
            for name, xs in lat.items():
                if xs:
                    out[name] = {"p50_ms": round(pct(xs, 0.5) * 1000, 3), "p99_ms": round(pct(xs, 0.99) * 1000, 3)}
            if direct:
                out["p99_ratio_gateway_to_direct"] = round(out["gateway"]["p99_ms"] / out["direct"]["p99_ms"], 2)
            print(json.dumps(out))
            res_dir = os.environ.get("RESULTS_DIR") or os.path.join(HERE, "results")
            os.makedirs(res_dir, exist_ok=True)
            with open(os.path.join(res_dir, "terminal.json"), "w") as f:
                json.dump(out, f, indent=1)
            b.request("DELETE", "/api/repl/session/" + rid, headers=JSON)


if __name__ == "__main__":
    main()
