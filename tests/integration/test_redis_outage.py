"""A Redis outage while devexd runs (issue 17.7): every route that reads a
REPL answers 503 with a JSON {"error": ...}, never 404 "repl not found", 401
"unauthorized" or 500: the runner's routes with a valid session token (the
storage broker's files/uploads/sync/blob/progress, heartbeat, the runner's
own stop) and the signed-in user's routes (list, start, stop, activity,
keepalive, delete, the event stream, the gateway). A failed Redis read is
never taken for "absent" (repl.store: nil, err vs false). Once Redis is back
(restarted empty, so the REPL and the sign-in are written again) the same
routes answer 200."""

import hashlib
import json
import os
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd, RedisServer  # noqa: E402

JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
ORIGIN = "http://localhost:3000"
TOKEN = "r" * 43


class RedisOutageTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="devexd-outage-")
        cls.store_dir = os.path.join(cls.tmp, "bucket")
        os.mkdir(cls.store_dir)
        policy = os.path.join(cls.tmp, "policy.lua")
        with open(policy, "w") as f:  # no sweep during the test: it would read Redis too
            f.write("return { cleanup = { sweep_interval = 3600 } }\n")
        cls.redis = RedisServer().__enter__()
        conf = {
            "environment": "development",
            "frontend_url": ORIGIN,
            "dev_login": {"enabled": True},
            "redis": {"url": cls.redis.url(), "timeout": 2},
            "storage": {"driver": "fs", "dir": cls.store_dir},
            "runtime": {"driver": "local", "dir": os.path.join(cls.tmp, "ws")},
            "policy": {"file": policy},
        }
        cls.d = Devexd(app=None, threads=2, config=conf).__enter__()
        cls.d.sync_templates()

    @classmethod
    def tearDownClass(cls):
        harness.stop_class_servers(cls, "d", "redis")

    # ---- helpers ----

    def sign_in(self, user="alice"):
        r = self.d.request("POST", "/auth/dev/login", body="user=" + user, headers=FORM)
        self.assertEqual(r.status, 302, r.body)
        for v in r.headers.get_all("Set-Cookie") or []:
            if v.startswith("devex_session="):
                return v.split(";", 1)[0]
        self.fail("no session cookie")

    def user(self, method, path, body=None):
        h = {"Cookie": self.cookie, "Origin": ORIGIN}
        if body is not None:
            h.update(JSON)
            body = json.dumps(body)
        return self.d.request(method, path, headers=h, body=body, timeout=60)

    def runner(self, method, path, body=None):
        h = {"Authorization": "Bearer " + TOKEN}
        if body is not None:
            h.update(JSON)
            body = json.dumps(body)
        return self.d.request(method, path, headers=h, body=body, timeout=60)

    def seed_session(self):
        """The REPL "running" with a session whose runner token is TOKEN (no
        workload: only what the routes read)."""
        key = "devex:replMeta:" + self.rid
        self.redis.call("HSET", key, "state", "running")
        self.redis.call("HSET", "devex:activeSession:" + self.rid, "started_at", str(int(time.time())),
                        "token_hash", hashlib.sha256(TOKEN.encode()).hexdigest(), "driver", "local",
                        "endpoint", "127.0.0.1:1", "url", "http://127.0.0.1:1/")
        self.redis.call("ZADD", "devex:sessions:activity", str(int(time.time())), self.rid)

    def routes(self):
        rid = self.rid
        progress = {"files": 1, "filesTotal": 1, "bytes": 3, "bytesTotal": 3}
        return [
            ("runner", "GET", "/api/runner/%s/files" % rid, None),
            ("runner", "POST", "/api/runner/%s/uploads" % rid, {"paths": ["main.py"]}),
            ("runner", "GET", "/api/runner/%s/blob/main.py" % rid, None),
            ("runner", "POST", "/api/runner/%s/progress" % rid, progress),
            ("runner", "POST", "/api/runner/%s/heartbeat" % rid, None),
            ("runner", "POST", "/api/runner/%s/sync" % rid, {"paths": ["main.py"]}),
            ("user", "GET", "/api/repl", None),
            ("user", "GET", "/api/repl/", None),
            ("user", "GET", "/api/repl/%s/activity" % rid, None),
            ("user", "POST", "/api/repl/%s/keepalive" % rid, None),
            ("user", "GET", "/repl/%s/" % rid, None),
        ]

    # ---- the test ----

    def test_outage_answers_503_then_recovers(self):
        self.cookie = self.sign_in()
        r = self.user("POST", "/api/repl/new", {"template": "python", "replName": "outage"})
        self.assertEqual(r.status, 201, r.body)
        self.rid = r.json()["id"]
        meta = self.redis.call("HGETALL", "devex:replMeta:" + self.rid)
        self.seed_session()
        # before: the runner's token opens its routes
        for who, method, path, body in self.routes():
            if who == "runner" and not path.endswith("/progress"):
                r = self.runner(method, path, body)
                self.assertEqual(r.status, 200, (path, r.body))

        self.redis.stop()
        calls = self.routes() + [
            # (destructive ones only while Redis is down: they must change nothing)
            ("runner", "DELETE", "/api/runner/%s" % self.rid, None),
            ("user", "GET", "/api/repl/session/%s" % self.rid, None),
            ("user", "DELETE", "/api/repl/session/%s" % self.rid, None),
            ("user", "DELETE", "/api/repl/%s" % self.rid, None),
            ("user", "GET", "/api/repl/session/%s/events" % self.rid, None),
        ]
        for who, method, path, body in calls:
            r = (self.runner if who == "runner" else self.user)(method, path, body)
            self.assertEqual(r.status, 503, (method, path, r.status, r.body))
            self.assertTrue(r.header("Content-Type").startswith("application/json"), (path, r.headers))
            b = r.json()
            self.assertIsInstance(b.get("error"), str, (path, b))
            self.assertNotIn("not found", b["error"], (path, b))
        # nothing was deleted meanwhile: the REPL's files are all there
        kept = [d for d, _, fs in os.walk(os.path.join(self.store_dir, "repl"))
                if os.path.basename(d) == self.rid and "main.py" in fs]
        self.assertEqual(len(kept), 1, "the REPL's files")

        # Redis back, empty (no persistence): the REPL and the sign-in are written again
        self.redis.start()

        # each worker reconnects on its own (with backoff) and a request may
        # reach either: ten sign-ins in a row mean both are back
        def redis_reachable():
            return all(self.d.request("POST", "/auth/dev/login", body="user=alice", headers=FORM).status == 302
                       for _ in range(10))

        harness.poll(redis_reachable, "devexd (both workers) to reach Redis again", timeout=60, interval=0.5)
        self.cookie = self.sign_in()
        it = iter(meta)
        fields = []
        for k in it:
            fields += [k, next(it)]
        self.redis.call("HSET", "devex:replMeta:" + self.rid, *fields)
        owner = dict(zip(meta[::2], meta[1::2]))[b"user"].decode()
        self.redis.call("SADD", "devex:userRepls:" + owner, self.rid)
        self.seed_session()
        for who, method, path, body in self.routes():
            if path.startswith("/repl/") or path.endswith("/progress"):
                continue  # (no runner listens at the seeded endpoint; progress answers 204)
            r = (self.runner if who == "runner" else self.user)(method, path, body)
            self.assertEqual(r.status, 200, (method, path, r.body))
        r = self.runner("POST", "/api/runner/%s/progress" % self.rid,
                        {"files": 0, "filesTotal": 1, "bytes": 0, "bytesTotal": 3})
        self.assertEqual(r.status, 204, r.body)
        listing = self.user("GET", "/api/repl").json()
        self.assertEqual([v["id"] for v in listing], [self.rid])


if __name__ == "__main__":
    unittest.main()
