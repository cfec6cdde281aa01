"""Route differences from the Go service the frontend was written against
(issue #15, section 3): GET /api/repl/ (with the trailing slash; the Go
service redirected /api/repl to it) answers as GET /api/repl.

Run: python3 tests/integration/test_go_parity.py   (DEVEXD_BIN picks the binary)
"""

import json
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd, RedisServer  # noqa: E402
from test_auth import Browser  # noqa: E402

JSON = {"Content-Type": "application/json"}


class TrailingSlashTest(unittest.TestCase):
    def test_repl_list_with_trailing_slash(self):
        with tempfile.TemporaryDirectory(prefix="devexd-parity-") as tmp, RedisServer() as redis:
            conf = {"environment": "development", "redis": {"url": redis.url(), "timeout": 2},
                    "storage": {"driver": "fs", "dir": tmp}, "dev_login": {"enabled": True}}
            with Devexd(app=None, threads=2, config=conf) as d:
                d.sync_templates()
                self.assertEqual(d.get("/api/repl/").status, 401)
                b = Browser(d)
                r = b.request("POST", "/auth/dev/login", headers=JSON, body=json.dumps({"user": "alice"}))
                self.assertEqual(r.status, 302, r.body)
                self.assertEqual((b.get("/api/repl/").status, b.get("/api/repl/").body), (200, b"[]"))
                r = b.request("POST", "/api/repl/new", headers=JSON,
                              body=json.dumps({"template": "python", "replName": "one"}))
                self.assertEqual(r.status, 201, r.body)
                a, s = b.get("/api/repl"), b.get("/api/repl/")
                self.assertEqual((s.status, s.json()), (a.status, a.json()))
                self.assertEqual(len(s.json()), 1)
                self.assertEqual(s.header("Content-Type"), a.header("Content-Type"))


if __name__ == "__main__":
    harness.main()
