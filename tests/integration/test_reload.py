"""SIGHUP reloads the Lua app (new code for new requests, old code finishes
what it started, broken code is refused) and SIGTERM drains in-flight
requests, refuses new connections and exits 0. The app is apps/reloadapp.lua;
its routes are in reload_routes.lua, rewritten by each test in its tempdir."""

import json
import os
import re
import signal
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

THREADS = 2


def routes(v):
    return """-- reload_routes v%(v)d (written by test_reload.py)
local log = require("devex.log")
local testlib = require("testlib")
local V = %(v)d
return function(app)
  app:get("/v", function() return 200, { v = V } end)
  app:get("/slow/:s", function(req)
    log.info("slow start", { tag = req.query.tag, v = V })
    testlib.hold(tonumber(req.params.s), req.query.gate)
    log.info("slow done", { tag = req.query.tag, v = V })
    return 200, { v = V, tag = req.query.tag }
  end)
end
""" % {"v": v}


# A syntax error on line 4 (the marker line).
BROKEN_SYNTAX = """-- reload_routes: broken (syntax)
local V = 99
return function(app)
  local x = = 1 -- SYNTAX_ERROR_LINE
  app:get("/v", function() return 200, { v = V } end)
end
"""

# Loads fine as Lua, but raises while the module runs (line 3).
BROKEN_AT_LOAD = """-- reload_routes: broken (raises at load)
local V = 98
error("refusing to load, version " .. V) -- LOAD_ERROR_LINE
return function(app) end
"""


def marker_line(text, marker):
    for i, line in enumerate(text.splitlines(), 1):
        if marker in line:
            return i
    raise AssertionError(marker)


class ReloadTest(unittest.TestCase):
    def start(self, **kw):
        kw.setdefault("threads", THREADS)
        d = harness.Devexd(app="reloadapp", app_files={"reload_routes.lua": routes(1)}, **kw)
        d.__enter__()
        self.addCleanup(d.__exit__, None, None, None)
        return d

    def v(self, d):
        st, body = d.get_json("/v")
        self.assertEqual(st, 200, body)
        return body["v"]

    def poll_v(self, d, want, timeout=10):
        deadline = time.monotonic() + timeout
        got = None
        while time.monotonic() < deadline:
            got = self.v(d)
            if got == want:
                return
            time.sleep(0.05)
        self.fail("still answering v=%r, not %r, %gs after SIGHUP\n%s" % (got, want, timeout, d.raw_log()[-4000:]))

    def test_sighup_picks_up_changed_handler(self):
        d = self.start()
        self.assertEqual(self.v(d), 1)
        mark = d.mark()
        d.write_app_file("reload_routes.lua", routes(2))
        d.signal(signal.SIGHUP)
        self.poll_v(d, 2)
        # once every worker has reloaded, every request gets the new code
        d.wait_log(lambda e: e.get("msg") == "reloaded", count=THREADS, since=mark, what="reloaded x %d" % THREADS)
        self.assertEqual({self.v(d) for _ in range(20)}, {2})

        # and again: reloads are repeatable
        d.write_app_file("reload_routes.lua", routes(3))
        d.signal(signal.SIGHUP)
        self.poll_v(d, 3)

    def check_refused(self, d, text, marker, fixed_version):
        line = marker_line(text, marker)
        mark = d.mark()
        d.write_app_file("reload_routes.lua", text)
        d.signal(signal.SIGHUP)
        where = re.compile(r"reload_routes\.lua:%d:" % line)
        errs = d.wait_log(lambda e: e.get("level") == "error" and where.search(" ".join(str(v) for v in e.values())),
                          since=mark, what="an error line with reload_routes.lua:%d:" % line)
        self.assertTrue(errs)
        # the old code keeps serving, on every worker
        self.assertEqual({self.v(d) for _ in range(20)}, {1})
        self.assertEqual(d.get_json("/healthz"), (200, {"status": "ok"}))
        self.assertFalse([e for e in d.logs()[mark:] if e.get("msg") == "reloaded"],
                         "a worker reports a successful reload of broken code")
        # fixing the file and reloading again works
        d.write_app_file("reload_routes.lua", routes(fixed_version))
        d.signal(signal.SIGHUP)
        self.poll_v(d, fixed_version)

    def test_syntax_error_refused(self):
        d = self.start()
        self.assertEqual(self.v(d), 1)
        self.check_refused(d, BROKEN_SYNTAX, "SYNTAX_ERROR_LINE", 3)

    def test_load_error_refused(self):
        d = self.start()
        self.assertEqual(self.v(d), 1)
        self.check_refused(d, BROKEN_AT_LOAD, "LOAD_ERROR_LINE", 4)

    def test_inflight_request_finishes_on_old_code(self):
        d = self.start()
        slow, res = harness.in_thread(d.get_json, "/slow/1?gate=inflight&tag=inflight", timeout=60)
        d.wait_log(lambda e: e.get("msg") == "slow start" and e.get("tag") == "inflight", what="slow start")

        d.write_app_file("reload_routes.lua", routes(2))
        d.signal(signal.SIGHUP)
        self.poll_v(d, 2)
        d.wait_log(lambda e: e.get("msg") == "reloaded", count=THREADS, what="reloaded x %d" % THREADS)
        self.assertTrue(slow.is_alive(), "the in-flight request ended before the gate opened")

        d.open_gate("inflight")
        slow.join(30)
        self.assertFalse(slow.is_alive())
        self.assertNotIn("error", res, res.get("error"))
        self.assertEqual(res["value"], (200, {"v": 1, "tag": "inflight"}))
        # the new code answers after the old VM is gone
        self.assertEqual(self.v(d), 2)

    def reload_to(self, d, version):
        mark = d.mark()
        d.write_app_file("reload_routes.lua", routes(version))
        d.signal(signal.SIGHUP)
        d.wait_log(lambda e: e.get("msg") == "reloaded", count=THREADS, since=mark, what="reloaded x %d" % THREADS)
        self.assertEqual({self.v(d) for _ in range(10)}, {version})

    def test_inflight_requests_across_two_reloads(self):
        # each request finishes on the code it started on, while two
        # generations of retired code wait for their last request
        d = self.start()
        t1, r1 = harness.in_thread(d.get_json, "/slow/0?gate=g1&tag=one", timeout=60)
        d.wait_log(lambda e: e.get("msg") == "slow start" and e.get("tag") == "one", what="slow start one")
        self.reload_to(d, 2)
        t2, r2 = harness.in_thread(d.get_json, "/slow/0?gate=g2&tag=two", timeout=60)
        d.wait_log(lambda e: e.get("msg") == "slow start" and e.get("tag") == "two", what="slow start two")
        self.reload_to(d, 3)
        self.assertTrue(t1.is_alive() and t2.is_alive())

        d.open_gate("g2")
        t2.join(30)
        self.assertEqual(r2.get("value"), (200, {"v": 2, "tag": "two"}), r2)
        self.assertTrue(t1.is_alive())
        d.open_gate("g1")
        t1.join(30)
        self.assertEqual(r1.get("value"), (200, {"v": 1, "tag": "one"}), r1)
        self.assertEqual(self.v(d), 3)
        d.check_sanitizers()

    def test_abandoned_request_across_reload(self):
        # the client of a request on the old code leaves; the request's task
        # ends later on the retired code without touching the freed request
        d = self.start()
        s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        s.sendall(b"GET /slow/0?gate=abandoned&tag=abandoned HTTP/1.1\r\nHost: t\r\n\r\n")
        d.wait_log(lambda e: e.get("msg") == "slow start" and e.get("tag") == "abandoned", what="slow start")
        s.close()
        self.reload_to(d, 2)
        d.open_gate("abandoned")
        d.wait_log(lambda e: e.get("msg") == "slow done" and e.get("tag") == "abandoned", what="slow done")
        self.assertEqual({self.v(d) for _ in range(10)}, {2})
        self.reload_to(d, 3)
        d.check_sanitizers()

    def wait_refused(self, d, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            try:
                s = socket.create_connection(("127.0.0.1", d.port), timeout=2)
            except ConnectionRefusedError:
                return
            s.close()
            if time.monotonic() > deadline:
                self.fail("new connections still accepted %gs after SIGTERM" % timeout)
            time.sleep(0.05)

    def test_sigterm_drains_inflight_requests(self):
        d = self.start()
        h1, r1 = harness.in_thread(d.get_json, "/slow/1.5?gate=term&tag=term-h1", timeout=60)
        h2, r2 = harness.in_thread(harness.curl, "--http2-prior-knowledge",
                                   d.url("/slow/1.5?gate=term&tag=term-h2"), timeout=60)
        raw = harness.H2Client("127.0.0.1", d.port)
        self.addCleanup(raw.close)
        raw_sid = raw.request("GET", "/slow/1.5?gate=term&tag=term-raw")
        d.wait_log(lambda e: e.get("msg") == "slow start" and str(e.get("tag")).startswith("term-"),
                   count=3, what="3 x slow start")

        d.signal(signal.SIGTERM)
        d.wait_log(lambda e: "SIGTERM" in str(e.get("msg")), what="the SIGTERM line")
        self.wait_refused(d)
        # a second new connection is refused as well
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", d.port), timeout=2).close()
        self.assertTrue(d.running(), "devexd exited with requests in flight")
        self.assertTrue(h1.is_alive() and h2.is_alive(), "an in-flight request ended before its gate opened")

        d.open_gate("term")
        for t in (h1, h2):
            t.join(30)
            self.assertFalse(t.is_alive())
        self.assertNotIn("error", r1, r1.get("error"))
        self.assertEqual(r1["value"], (200, {"v": 1, "tag": "term-h1"}))
        self.assertNotIn("error", r2, r2.get("error"))
        rc, body, code, version, err = r2["value"]
        self.assertEqual((rc, code, version), (0, "200", "2"), err)
        self.assertEqual(json.loads(body), {"v": 1, "tag": "term-h2"})
        # an HTTP/2 connection is told to go away, and its open stream completes
        st = raw.wait(raw_sid)
        self.assertEqual((st["status"], json.loads(st["data"])), (200, {"v": 1, "tag": "term-raw"}))
        self.assertTrue(raw.goaway, "no GOAWAY on the HTTP/2 connection")

        self.assertEqual(d.wait_exit(15), 0)
        self.assertTrue([e for e in d.logs() if e.get("msg") == "devexd stopped"])

    def test_sigint_with_idle_connections_exits_0(self):
        # idle keep-alive connections (HTTP/1.1 and HTTP/2) do not hold up the
        # exit, and SIGINT behaves as SIGTERM
        d = self.start()
        h1 = d.connection()
        self.addCleanup(h1.close)
        self.assertEqual(d.request("GET", "/v", conn=h1).status, 200)
        h2 = harness.H2Client("127.0.0.1", d.port)
        self.addCleanup(h2.close)
        self.assertEqual(h2.wait(h2.request("GET", "/v"))["status"], 200)
        d.signal(signal.SIGINT)
        self.assertEqual(d.wait_exit(15), 0)
        h1.sock.settimeout(5)
        try:
            self.assertEqual(h1.sock.recv(100), b"", "data on an idle HTTP/1.1 connection")
        except ConnectionResetError:
            pass
        h2.sock.settimeout(5)
        try:
            while not h2.goaway:
                h2._handle(*h2._read_frame())
        except (ConnectionError, OSError):
            pass  # closed: the server is gone, which is all that matters here

    def test_sigterm_deadline_exits_0(self):
        # a request that outlives server.shutdown_timeout does not keep devexd up
        d = self.start(shutdown_timeout=1)
        t, res = harness.in_thread(d.get_json, "/slow/0?gate=never&tag=stuck", timeout=60)
        d.wait_log(lambda e: e.get("msg") == "slow start" and e.get("tag") == "stuck", what="slow start")
        d.signal(signal.SIGTERM)
        self.assertEqual(d.wait_exit(20), 0)
        t.join(30)
        self.assertFalse(t.is_alive(), "the client of the abandoned request hangs")
        self.assertNotEqual(res.get("value", (None,))[0], 200)
        self.assertTrue([e for e in d.logs() if e.get("level") == "warn" and "deadline" in str(e.get("msg"))],
                        d.raw_log())


if __name__ == "__main__":
    harness.main()
