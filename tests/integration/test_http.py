"""HTTP behaviour of devexd over HTTP/1.1: routing, params, errors, HEAD,
bodies, request ids, what reaches Lua, the access log and /healthz, /version."""

import os
import re
import socket
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

GENERATED_ID = re.compile(r"^[0-9a-f]{32}$")


def line_of(path, marker):
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if marker in line:
                return i
    raise AssertionError("%s not found in %s" % (marker, path))


class HttpTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = harness.Devexd(app="testapp", threads=1, max_body=4096)
        cls.d.__enter__()

    @classmethod
    def tearDownClass(cls):
        # stops the server: SIGTERM, exit code 0, no sanitizer reports
        cls.d.__exit__(None, None, None)

    def access_lines(self, request_id):
        return [e for e in self.d.logs() if e.get("msg") == "access" and e.get("request_id") == request_id]

    # ---- routing ----

    def test_routing_and_params(self):
        st, body = self.d.get_json("/hello/world")
        self.assertEqual((st, body), (200, {"hello": "world"}))
        st, body = self.d.get_json("/users/42/items/abc-1")
        self.assertEqual((st, body), (200, {"id": "42", "item": "abc-1"}))
        st, body = self.d.get_json("/things")
        self.assertEqual(st, 200)
        r = self.d.request("POST", "/things", body=b"")
        self.assertEqual(r.status, 201)
        self.assertEqual(r.json(), {"created": True})

    def test_string_body_and_custom_header(self):
        r = self.d.get("/text")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, b"plain text body")
        self.assertTrue(r.header("Content-Type").startswith("text/plain"), r.header("Content-Type"))
        self.assertEqual(r.header("X-Custom"), "yes")

    def test_404_json(self):
        r = self.d.get("/no/such/route")
        self.assertEqual(r.status, 404)
        self.assertEqual(r.header("Content-Type"), "application/json")
        self.assertEqual(r.json(), {"error": "not found"})
        # a param route with a missing segment is no match either
        self.assertEqual(self.d.get("/hello/").status, 404)

    def test_405_with_allow(self):
        r = self.d.request("POST", "/hello/x", body=b"")
        self.assertEqual(r.status, 405)
        self.assertEqual(r.header("Content-Type"), "application/json")
        self.assertIn("error", r.json())
        allow = [m.strip() for m in (r.header("Allow") or "").split(",")]
        self.assertIn("GET", allow)
        self.assertIn("HEAD", allow)
        self.assertNotIn("POST", allow)

        r = self.d.request("DELETE", "/things")
        self.assertEqual(r.status, 405)
        allow = [m.strip() for m in (r.header("Allow") or "").split(",")]
        self.assertIn("GET", allow)
        self.assertIn("POST", allow)
        self.assertNotIn("DELETE", allow)

    def test_head_served_by_get(self):
        get = self.d.get("/hello/head")
        head = self.d.request("HEAD", "/hello/head")
        self.assertEqual(head.status, 200)
        self.assertEqual(head.body, b"")
        self.assertEqual(head.header("Content-Length"), str(len(get.body)))
        self.assertEqual(head.header("Content-Type"), "application/json")

        # On one raw connection: HEAD then GET. If the HEAD response carried a
        # body, the bytes after its headers would not be the GET's status line.
        with socket.create_connection(("127.0.0.1", self.d.port), timeout=10) as s:
            s.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
                      b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            data = harness.recv_all(s)
        head_part, sep, rest = data.partition(b"\r\n\r\n")
        self.assertTrue(sep, data)
        self.assertTrue(head_part.startswith(b"HTTP/1.1 200"), data)
        self.assertRegex(head_part.decode().lower(), r"content-length: 15\b")
        self.assertTrue(rest.startswith(b"HTTP/1.1 200"), "HEAD response had a body: %r" % data)
        self.assertTrue(rest.endswith(b'{"status":"ok"}'), rest)

    # ---- bodies ----

    def test_json_body(self):
        r = self.d.request("POST", "/json", body=b'{"a":[1,2,{"b":"c"}]}',
                           headers={"Content-Type": "application/json"})
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json(), {"got": {"a": [1, 2, {"b": "c"}]}})

    def test_invalid_json_400(self):
        for body in (b"{bad", b"", b'{"a":1', b"[1,]"):
            r = self.d.request("POST", "/json", body=body, headers={"Content-Type": "application/json"})
            self.assertEqual(r.status, 400, body)
            self.assertEqual(r.header("Content-Type"), "application/json")
            self.assertIsInstance(r.json().get("error"), str, r.body)
        # the server still serves
        self.assertEqual(self.d.get("/healthz").status, 200)

    def test_body_limit(self):
        r = self.d.request("POST", "/body", body=b"a" * 4096)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json(), {"len": 4096})

    def test_body_over_max_413_http1(self):
        # HTTP/1.1 only: over HTTP/2, H2O 2.2.5 resets the stream instead.
        r = self.d.request("POST", "/json", body=b"x" * 5000, headers={"Content-Type": "application/json"})
        self.assertEqual(r.status, 413)
        self.assertEqual(r.header("Content-Type"), "application/json")
        self.assertIsInstance(r.json().get("error"), str, r.body)
        self.assertEqual(self.d.get("/healthz").status, 200)

    # ---- errors ----

    def test_handler_without_a_valid_status_500(self):
        for path in ("/nostatus", "/badstatus", "/bigstatus"):
            rid = "badstatus-" + path.strip("/")
            r = self.d.get(path, headers={"X-Request-Id": rid})
            self.assertEqual(r.status, 500, path)
            self.assertEqual(r.json(), {"error": "internal error", "request_id": rid})
            self.d.wait_log(lambda e: e.get("level") == "error" and e.get("request_id") == rid and
                            e.get("msg") == "handler returned an invalid status", what="the log line for " + path)
        self.assertEqual(self.d.get_json("/hello/after"), (200, {"hello": "after"}))

    def test_lua_error_500(self):
        r = self.d.get("/boom")
        self.assertEqual(r.status, 500)
        self.assertEqual(r.header("Content-Type"), "application/json")
        body = r.json()
        self.assertEqual(body.get("error"), "internal error")
        rid = body.get("request_id")
        self.assertTrue(rid)
        self.assertEqual(r.header("X-Request-Id"), rid)
        # nothing of the Lua error leaks to the client
        self.assertNotIn(b"kaboom", r.body)
        self.assertNotIn(b"testapp", r.body)

        # the next request works
        self.assertEqual(self.d.get_json("/hello/again"), (200, {"hello": "again"}))

        # the log has the traceback with file:line, tied to the request id
        line = line_of(os.path.join(self.d.app_dir, "testapp.lua"), "BOOM_LINE")
        errs = self.d.wait_log(lambda e: e.get("level") == "error" and e.get("request_id") == rid,
                               what="error line for " + rid)
        text = " ".join(str(v) for e in errs for v in e.values())
        self.assertIn("testapp.lua:%d:" % line, text)
        self.assertIn("kaboom from the test app", text)
        self.assertIn("traceback", text)
        # and one access line with status 500
        acc = self.access_lines(rid)
        self.assertEqual(len(acc), 1, acc)
        self.assertEqual(acc[0]["status"], 500)

    # ---- what reaches Lua ----

    def test_query_headers_cookies(self):
        r = self.d.get("/echo?a=1&b=x%20y&c=p+q&a=2&empty=",
                       headers={"X-Test-Header": "hello there", "Cookie": "sid=abc123; theme=\"dark\""})
        self.assertEqual(r.status, 200)
        body = r.json()
        self.assertEqual(body["method"], "GET")
        self.assertEqual(body["path"], "/echo")
        self.assertEqual(body["query"], {"a": "1", "b": "x y", "c": "p q", "empty": ""})
        self.assertEqual(body["header"], "hello there")
        self.assertEqual(body["header_lower"], "hello there")
        self.assertEqual(body["header_method"], "hello there")
        self.assertEqual(body["cookies"], {"sid": "abc123", "theme": "dark"})

    def test_headers_larger_than_one_read(self):
        # H2O reads at least 4 KB at a time into a buffer it grows: a request
        # over that arrives in several reads, sent whole or in pieces, also
        # pipelined
        value = "v" * 6000
        cookie = "sid=" + "c" * 3000
        r = self.d.get("/echo", headers={"X-Test-Header": value, "Cookie": cookie})
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json()["header"], value)
        self.assertEqual(r.json()["cookies"], {"sid": "c" * 3000})
        req = ("GET /echo?n=%d HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Test-Header: " + value + "\r\n\r\n")
        with socket.create_connection(("127.0.0.1", self.d.port), timeout=10) as s:
            whole = (req % 1 + req % 2).encode()
            s.sendall(whole[:3000])
            s.sendall(whole[3000:7000])
            s.sendall(whole[7000:])
            got = b""
            while got.count(b"HTTP/1.1 200") < 2 or not got.endswith(b"}"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        self.assertEqual(got.count(b"HTTP/1.1 200"), 2, got[:300])
        self.assertEqual(got.count(value.encode()), 6)  # header, header_lower, header_method: twice
        self.assertIn(b'"n":"1"', got)
        self.assertIn(b'"n":"2"', got)

    # ---- request ids ----

    def test_request_id_echoed(self):
        rid = "test-Req_id.0123456789"
        r = self.d.get("/hello/x", headers={"X-Request-Id": rid})
        self.assertEqual(r.header("X-Request-Id"), rid)
        self.assertEqual(len(self.access_lines(rid)), 1)
        # also in a 500 body
        r = self.d.get("/boom", headers={"X-Request-Id": rid + "-2"})
        self.assertEqual(r.json()["request_id"], rid + "-2")

    def test_request_id_malformed_replaced(self):
        for bad in ("has space", "a" * 100, "semi;colon", "quote\"d", "slash/x"):
            r = self.d.get("/hello/x", headers={"X-Request-Id": bad})
            self.assertEqual(r.status, 200)
            got = r.header("X-Request-Id")
            self.assertNotEqual(got, bad)
            self.assertRegex(got, GENERATED_ID, "for %r" % bad)
        # generated ids are unique (an error carries its id without being asked)
        ids = {self.d.get("/no/such/route").header("X-Request-Id") for _ in range(20)}
        self.assertEqual(len(ids), 20)
        for i in ids:
            self.assertRegex(i, GENERATED_ID)

    def test_request_id_only_where_needed_by_default(self):
        # request_id_header = "errors": a success the client did not tag has none ...
        r = self.d.get("/hello/x")
        self.assertEqual(r.status, 200)
        self.assertIsNone(r.header("X-Request-Id"))
        # ... but its access line still has an id
        self.assertTrue(any(e.get("msg") == "access" and e.get("path") == "/hello/x" and
                            GENERATED_ID.match(e.get("request_id") or "") for e in self.d.logs()))
        # errors always carry it: 404, 500, 405
        for path in ("/no/such/route", "/boom"):
            self.assertRegex(self.d.get(path).header("X-Request-Id") or "", GENERATED_ID, path)
        r = self.d.request("PUT", "/hello/x", body=b"")
        self.assertEqual(r.status, 405)
        self.assertRegex(r.header("X-Request-Id") or "", GENERATED_ID)

    # ---- access log ----

    def test_access_log(self):
        rid = "access-log-test-1"
        r = self.d.get("/hello/logged?token=SHOULD_NOT_BE_IN_PATH&x=1", headers={"X-Request-Id": rid})
        self.assertEqual(r.status, 200)
        lines = self.d.wait_log(lambda e: e.get("msg") == "access" and e.get("request_id") == rid)
        self.assertEqual(len(lines), 1, lines)
        e = lines[0]
        self.assertEqual(e["method"], "GET")
        self.assertEqual(e["path"], "/hello/logged")
        self.assertEqual(e["status"], 200)
        self.assertIsInstance(e["duration_ms"], (int, float))
        self.assertGreaterEqual(e["duration_ms"], 0)
        self.assertEqual(e["bytes"], len(r.body))
        self.assertEqual(e.get("level"), "info")
        self.assertIn("time", e)
        self.assertNotIn("SHOULD_NOT_BE_IN_PATH", self.d.raw_log())

        # one line per request, for every status
        for i, (method, path, status) in enumerate([("GET", "/no/such", 404), ("DELETE", "/things", 405),
                                                    ("POST", "/json", 400), ("GET", "/boom", 500)]):
            rid = "access-log-test-status-%d" % i
            r = self.d.request(method, path, body=b"{" if method == "POST" else None,
                               headers={"X-Request-Id": rid})
            self.assertEqual(r.status, status)
            acc = self.d.wait_log(lambda e: e.get("msg") == "access" and e.get("request_id") == rid)
            self.assertEqual(len(acc), 1)
            self.assertEqual((acc[0]["method"], acc[0]["path"], acc[0]["status"], acc[0]["bytes"]),
                             (method, path, status, len(r.body)))

    def test_no_secrets_in_log(self):
        cookie_secret = "cookieSECRETvalue7f3a9"
        auth_secret = "bearerSECRETtoken51c2e"
        headers = {"Cookie": "sid=%s" % cookie_secret, "Authorization": "Bearer %s" % auth_secret,
                   "X-Request-Id": "secrets-test"}
        for path in ("/hello/x", "/boom", "/no/such", "/echo", "/log-secrets"):
            r = self.d.get(path, headers=headers)
            self.assertIn(r.status, (200, 404, 500))
        self.d.request("POST", "/json", body=b"{bad", headers=headers)
        self.d.wait_log(lambda e: e.get("msg") == "secrets seen", what="the /log-secrets line")
        self.d.wait_log(lambda e: e.get("msg") == "access" and e.get("request_id") == "secrets-test",
                        count=6, what="6 access lines")
        log = self.d.raw_log()
        self.assertNotIn(cookie_secret, log)
        self.assertNotIn(auth_secret, log)

    # ---- health and version ----

    def test_healthz_and_version(self):
        self.assertEqual(self.d.get_json("/healthz"), (200, {"status": "ok"}))
        st, body = self.d.get_json("/version")
        self.assertEqual(st, 200)
        self.assertEqual(body.get("name"), "devexd")
        p = harness.run([harness.DEVEXD_BIN, "--version"])
        self.assertEqual(p.returncode, 0)
        self.assertEqual(p.stdout.strip(), "devexd %s" % body.get("version"))

    def test_a_second_server_on_the_port_is_refused(self):
        """The workers share the port with SO_REUSEPORT, which would as well
        let a second devexd on the same address take half of the
        connections: it refuses to start instead."""
        env = dict(os.environ, DEVEXD_TEST_GATES=self.d.gates_dir)
        p = subprocess.run(list(self.d.proc.args), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           env=env, timeout=30)
        self.assertNotEqual(p.returncode, 0, p.stderr[-2000:])
        self.assertIn("cannot listen on 127.0.0.1:%d" % self.d.port, p.stderr)
        self.assertIn("another process serves there", p.stderr)
        self.assertEqual(self.d.get_json("/healthz"), (200, {"status": "ok"}))  # the first one serves on

    def test_builtin_app_healthz_version(self):
        # the shipped lua/app.lua serves both too
        with harness.Devexd(app=None) as d2:
            self.assertEqual(d2.get_json("/healthz"), (200, {"status": "ok"}))
            st, body = d2.get_json("/version")
            self.assertEqual(st, 200)
            self.assertEqual(body.get("name"), "devexd")
            self.assertRegex(body.get("version", ""), r"^\d+\.\d+\.\d+")
            self.assertEqual(d2.get("/hello/x").status, 404)



class RequestIdAlwaysTest(unittest.TestCase):
    def test_every_response_has_an_id(self):
        with harness.Devexd(app="testapp", threads=1, server={"request_id_header": "always"}) as d:
            ids = set()
            for _ in range(5):
                r = d.get("/hello/x")
                self.assertEqual(r.status, 200)
                self.assertRegex(r.header("X-Request-Id") or "", GENERATED_ID)
                ids.add(r.header("X-Request-Id"))
            self.assertEqual(len(ids), 5)

if __name__ == "__main__":
    harness.main()
