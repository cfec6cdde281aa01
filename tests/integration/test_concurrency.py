"""Concurrency on ONE worker thread (-t 1): a sleeping handler parks its
coroutine and never blocks the loop. Held requests (/hold/:s) sleep, then wait
for a gate file the test creates, so every assertion is about ordering and
completion state, never about wall-clock time: if a sleep blocked the thread,
the other requests could not complete before the gate opens and the test
would fail on its join timeout."""

import json
import os
import socket
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

JOIN_TIMEOUT = 40


def hold_started(d, tag_prefix, count):
    return d.wait_log(lambda e: e.get("msg") == "hold start" and str(e.get("tag", "")).startswith(tag_prefix),
                      count=count, timeout=30, what="'hold start' %s*" % tag_prefix)


class ConcurrencyTest(unittest.TestCase):
    def setUp(self):
        self.d = harness.Devexd(app="testapp", threads=1, shutdown_timeout=10)
        self.d.__enter__()

    def tearDown(self):
        self.d.__exit__(None, None, None)

    def join(self, threads):
        for t in threads:
            t.join(JOIN_TIMEOUT)
            self.assertFalse(t.is_alive(), "a request did not complete")

    def test_sleeper_does_not_delay_others(self):
        d = self.d
        sleeper, sres = harness.in_thread(d.get_json, "/hold/2?gate=sleeper&tag=sleeper", timeout=60)
        hold_started(d, "sleeper", 1)

        quick = [harness.in_thread(d.get_json, "/healthz", timeout=60) for _ in range(50)]
        self.join([t for t, _ in quick])
        for _, res in quick:
            self.assertNotIn("error", res, res.get("error"))
            self.assertEqual(res["value"], (200, {"status": "ok"}))
        # all 50 finished while the sleeper is still pending
        self.assertTrue(sleeper.is_alive(), "the sleeping request finished early")
        self.assertNotIn("done_at", sres)

        d.open_gate("sleeper")
        self.join([sleeper])
        self.assertNotIn("error", sres, sres.get("error"))
        self.assertEqual(sres["value"], (200, {"ok": True, "tag": "sleeper"}))
        self.assertGreater(sres["done_at"], max(res["done_at"] for _, res in quick))

    def test_200_sleeping_requests_and_healthz(self):
        d = self.d
        n = 200
        many = [harness.in_thread(d.get_json, "/hold/1?gate=many&tag=many-%d" % i, timeout=60) for i in range(n)]
        # every one of them is inside its handler, sleeping, on the one worker
        hold_started(d, "many-", n)

        st, body = d.get_json("/healthz", timeout=30)
        self.assertEqual((st, body), (200, {"status": "ok"}))
        self.assertTrue(all("done_at" not in res for _, res in many), "a held request finished before /healthz")

        d.open_gate("many")
        self.join([t for t, _ in many])
        for i, (_, res) in enumerate(many):
            self.assertNotIn("error", res, res.get("error"))
            self.assertEqual(res["value"], (200, {"ok": True, "tag": "many-%d" % i}))
        done = d.wait_log(lambda e: e.get("msg") == "hold done" and str(e.get("tag", "")).startswith("many-"),
                          count=n)
        self.assertEqual(len(done), n)

    def test_http2_streams_sleep_concurrently(self):
        # 100 streams on one HTTP/2 connection, each sleeping 1 s, all complete
        p = harness.run(["nghttp", "-n", "-s", "-m", "100", self.d.url("/sleep/1")], timeout=60)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        rows = [line.split() for line in p.stdout.splitlines() if line.strip().endswith("/sleep/1")]
        self.assertEqual(len(rows), 100, p.stdout)
        self.assertTrue(all(r[4] == "200" for r in rows), p.stdout)

    def test_client_disconnect_during_sleep(self):
        d = self.d
        # HTTP/1.1: several clients leave while their handlers sleep
        socks = []
        for i in range(10):
            s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
            s.sendall(b"GET /hold/0.3?tag=gone-h1-%d HTTP/1.1\r\nHost: t\r\n\r\n" % i)
            socks.append(s)
        hold_started(d, "gone-h1-", 10)
        for s in socks:
            s.close()
        # the handlers resume after their clients left; their results are dropped
        d.wait_log(lambda e: e.get("msg") == "hold done" and str(e.get("tag", "")).startswith("gone-h1-"),
                   count=10, what="10 x 'hold done' gone-h1-*")
        self.assertEqual(d.get_json("/healthz"), (200, {"status": "ok"}))

        # a client that resets the connection (SO_LINGER 0) instead of closing it
        s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        s.sendall(b"GET /hold/0.3?tag=gone-rst HTTP/1.1\r\nHost: t\r\n\r\n")
        hold_started(d, "gone-rst", 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
        d.wait_log(lambda e: e.get("msg") == "hold done" and e.get("tag") == "gone-rst")
        self.assertEqual(d.get_json("/healthz"), (200, {"status": "ok"}))

        # HTTP/2: curl gives up (--max-time) while the handler waits for its gate
        rc, _, code, _, err = harness.curl("--http2-prior-knowledge", "--max-time", "1",
                                           d.url("/hold/0?gate=gone-h2&tag=gone-h2"), timeout=20)
        self.assertEqual(rc, 28, err)  # operation timed out
        hold_started(d, "gone-h2", 1)
        d.open_gate("gone-h2")
        d.wait_log(lambda e: e.get("msg") == "hold done" and e.get("tag") == "gone-h2")

        # the server still works, over both protocols, and nothing was reported
        self.assertEqual(d.get_json("/hello/after"), (200, {"hello": "after"}))
        rc, body, code, version, err = harness.curl("--http2-prior-knowledge", d.url("/hello/after"))
        self.assertEqual((rc, code, version, body), (0, "200", "2", '{"hello":"after"}'), err)
        d.check_sanitizers()

    def test_http2_stream_reset_during_sleep(self):
        # RST_STREAM on one stream while its handler waits; the connection and
        # its other streams go on
        d = self.d
        c = harness.H2Client("127.0.0.1", d.port)
        try:
            gone = c.request("GET", "/hold/0?gate=h2rst&tag=h2rst-gone")
            kept = c.request("GET", "/hold/0?gate=h2rst&tag=h2rst-kept")
            hold_started(d, "h2rst-", 2)
            c.reset(gone)
            st = c.wait(c.request("GET", "/healthz"))
            self.assertEqual((st["status"], st["data"]), (200, b'{"status":"ok"}'))
            self.assertFalse(c.streams[kept]["ended"])
            d.open_gate("h2rst")
            st = c.wait(kept)
            self.assertEqual(st["status"], 200)
            self.assertEqual(json.loads(st["data"]), {"ok": True, "tag": "h2rst-kept"})
            # the reset stream's handler ran to its end (its result dropped)
            d.wait_log(lambda e: e.get("msg") == "hold done" and e.get("tag") == "h2rst-gone")
            st = c.wait(c.request("GET", "/hello/h2"))
            self.assertEqual((st["status"], st["data"]), (200, b'{"hello":"h2"}'))
        finally:
            c.close()
        d.check_sanitizers()


if __name__ == "__main__":
    harness.main()
