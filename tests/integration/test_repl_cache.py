"""The per-worker caches of sessions and REPL lists (lua/services/tracked.lua,
src/redis_track.c) across two devexd replicas on one real redis-server: what
one replica changes (logout, an expiring session key, a REPL created, deleted,
renamed or started, by the API or by any other Redis client) is seen by the
other at once, a FLUSHALL or a Redis restart leaves no stale session
accepted, and the caches work (the cached GET /api/repl runs no script in
Redis: counted with INFO commandstats) and stay bounded (redis.cache.entries)."""

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


class ReplCacheTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="devexd-repl-cache-")
        cls.store_dir = os.path.join(cls.tmp, "bucket")
        os.mkdir(cls.store_dir)
        policy = os.path.join(cls.tmp, "policy.lua")
        with open(policy, "w") as f:
            f.write("return { quota = { repls_per_user = 20 }, cleanup = { sweep_interval = 3600 } }\n")
        cls.redis = RedisServer().__enter__()
        conf = {
            "environment": "development",
            "frontend_url": ORIGIN,
            "dev_login": {"enabled": True},
            "redis": {"url": cls.redis.url(), "timeout": 2, "cache": {"entries": 8}},
            "storage": {"driver": "fs", "dir": cls.store_dir},
            "runtime": {"driver": "local", "dir": os.path.join(cls.tmp, "ws")},
            "policy": {"file": policy},
        }
        # two replicas, two workers each: a request may land on either worker
        cls.a = Devexd(app=None, threads=2, config=conf).__enter__()
        cls.b = Devexd(app=None, threads=2, config=conf).__enter__()
        cls.a.sync_templates()

    @classmethod
    def tearDownClass(cls):
        harness.stop_class_servers(cls, "a", "b", "redis")

    def setUp(self):
        if not self.redis.running():
            self.redis.start()
        self.redis.call("FLUSHALL")

    # ---- helpers ----

    def sign_in(self, user="alice", d=None):
        r = (d or self.a).request("POST", "/auth/dev/login", body="user=" + user, headers=FORM)
        self.assertEqual(r.status, 302, r.body)
        for v in r.headers.get_all("Set-Cookie") or []:
            if v.startswith("devex_session="):
                return v.split(";", 1)[0]
        self.fail("no session cookie")

    def try_sign_in(self, user, d):
        r = d.request("POST", "/auth/dev/login", body="user=" + user, headers=FORM)
        if r.status != 302:
            return None
        return next((v.split(";", 1)[0] for v in r.headers.get_all("Set-Cookie") or []
                     if v.startswith("devex_session=")), None)

    def req(self, d, method, path, cookie, body=None):
        h = {"Cookie": cookie, "Origin": ORIGIN}
        if body is not None:
            h.update(JSON)
            body = json.dumps(body)
        return d.request(method, path, headers=h, body=body)

    def listing(self, d, cookie):
        r = self.req(d, "GET", "/api/repl", cookie)
        return r.status, (r.json() if r.status == 200 else r.body)

    def scripts_run(self):
        """Scripts Redis has run so far (EVAL and EVALSHA, any client)."""
        stats = self.redis.call("INFO", "commandstats")
        if isinstance(stats, bytes):
            stats = stats.decode()
        n = 0
        for line in stats.splitlines():
            if line.startswith(("cmdstat_evalsha:", "cmdstat_eval:")):
                n += int(line.split("calls=", 1)[1].split(",", 1)[0])
        return n

    def warm(self, d, cookie, rounds=8):
        """Lists enough times that both workers of d have the session and the
        list cached; returns the last answer."""
        for _ in range(rounds):
            status, body = self.listing(d, cookie)
            self.assertEqual(status, 200, body)
        return body

    def create(self, d, cookie, name):
        r = self.req(d, "POST", "/api/repl/new", cookie, {"template": "node", "replName": name})
        self.assertEqual(r.status, 201, r.body)
        return r.json()["id"]

    # ---- tests ----

    def test_cached_list_runs_no_script_and_matches_redis(self):
        cookie = self.sign_in()
        ids = {self.create(self.a, cookie, "r%d" % i) for i in range(3)}
        first = self.warm(self.b, cookie)
        self.assertEqual({r["id"] for r in first}, ids)
        before = self.scripts_run()
        for _ in range(40):
            status, body = self.listing(self.b, cookie)
            self.assertEqual((status, body), (200, first))
        self.assertEqual(self.scripts_run() - before, 0,
                         "40 cached GET /api/repl ran scripts in Redis: the caches are not used")

    def test_logout_on_one_replica_is_refused_at_once_on_the_other(self):
        for i in range(15):
            cookie = self.sign_in("user%d" % i)
            self.warm(self.b, cookie, rounds=4)
            r = self.req(self.a, "POST", "/auth/logout", cookie)
            self.assertIn(r.status, (200, 204, 302), r.body)
            self.assertEqual(self.redis.call("KEYS", "devex:session:*"), [])
            # at once, on every worker of the other replica
            for _ in range(4):
                status, body = self.listing(self.b, cookie)
                self.assertEqual(status, 401, "a logged-out session was accepted (round %d): %r" % (i, body))

    def test_an_expiring_session_key_is_refused_at_once(self):
        cookie = self.sign_in()
        self.warm(self.b, cookie)
        key = self.redis.call("KEYS", "devex:session:*")[0]
        # 4 s of lifetime left and the key expiring in 3: the read does not
        # renew it (auth.session TOUCH), the cache may keep the session up to
        # its end of life (4 s), only the expiry's invalidation drops it at 3
        self.redis.call("HSET", key, "created_at", str(int(time.time()) - 30 * 24 * 3600 + 4))
        self.redis.call("PEXPIRE", key, 3000)
        self.warm(self.b, cookie)  # cached again after those writes' own invalidations
        harness.poll(lambda: self.redis.call("EXISTS", key) == 0, "the key to expire", timeout=10)
        for _ in range(4):
            self.assertEqual(self.listing(self.b, cookie)[0], 401, "an expired session was accepted")

    def test_list_changes_on_one_replica_show_at_once_on_the_other(self):
        cookie = self.sign_in()
        self.assertEqual(self.warm(self.b, cookie), [])
        rid = self.create(self.a, cookie, "first")
        for _ in range(4):
            self.assertEqual([r["id"] for r in self.listing(self.b, cookie)[1]], [rid])
        self.warm(self.b, cookie)
        # any other Redis client: a rename, then a session appearing
        self.redis.call("HSET", "devex:replMeta:" + rid, "name", "renamed")
        for _ in range(4):
            self.assertEqual(self.listing(self.b, cookie)[1][0]["name"], "renamed")
        self.warm(self.b, cookie)
        self.redis.call("HSET", "devex:activeSession:" + rid, "endpoint", "http://127.0.0.1:1")
        for _ in range(4):
            self.assertTrue(self.listing(self.b, cookie)[1][0]["isActive"])
        self.redis.call("DEL", "devex:activeSession:" + rid)
        self.warm(self.b, cookie)
        r = self.req(self.a, "DELETE", "/api/repl/" + rid, cookie)
        self.assertEqual(r.status, 200, r.body)
        for _ in range(4):
            self.assertEqual(self.listing(self.b, cookie), (200, []))

    def test_flushall_drops_every_cached_session(self):
        cookie = self.sign_in()
        self.create(self.a, cookie, "one")
        self.warm(self.b, cookie)
        self.warm(self.a, cookie)
        self.redis.call("FLUSHALL")
        # Redis writes the flush's invalidation to the workers' tracking
        # connections after FLUSHALL's own reply: on a starved machine a
        # request can land in between (CI saw one 200), so the first answers
        # get a moment; from then on every worker of both refuses
        harness.poll(lambda: all(self.listing(d, cookie)[0] == 401 for d in (self.a, self.b)),
                     "both replicas to refuse the session after FLUSHALL", timeout=2, interval=0.05)
        for d in (self.a, self.b, self.a, self.b, self.a, self.b):
            self.assertEqual(self.listing(d, cookie)[0], 401, "a session was accepted after FLUSHALL")

    def test_redis_restart_drops_the_caches_and_they_come_back(self):
        cookie = self.sign_in()
        self.warm(self.b, cookie)
        self.redis.stop()
        for _ in range(4):  # down: never an answer from a cache
            self.assertEqual(self.listing(self.b, cookie)[0], 503)
        self.redis.start()
        # an empty Redis (nothing persisted): the old session is gone everywhere
        harness.poll(lambda: self.listing(self.b, cookie)[0] == 401, "the old session refused after the restart",
                     timeout=20)
        # the invalidation stream reconnects (backoff up to 2 s) and caching
        # resumes; each worker's command connection reconnects on its own
        # backoff too, so the sign-in may need a few tries
        bob = harness.poll(lambda: self.try_sign_in("bob", self.b), "a sign-in after the restart", timeout=20)

        def cached():
            # each worker's command connection reconnects on its own backoff
            # too: a 503 from one still reconnecting is "not yet"
            if any(self.listing(self.b, bob)[0] != 200 for _ in range(8)):
                return False
            before = self.scripts_run()
            for _ in range(10):
                self.assertEqual(self.listing(self.b, bob)[0], 200)
            return self.scripts_run() == before
        harness.poll(cached, "GET /api/repl served from the caches again", timeout=20, interval=0.5)
        # with the caches on again, nothing from before the restart came back
        for _ in range(6):
            self.assertEqual(self.listing(self.b, cookie)[0], 401, "a session from before the restart was accepted")
        # both replicas serve again before the next test
        harness.poll(lambda: all(self.listing(self.a, bob)[0] == 200 for _ in range(8)), "replica A serving again",
                     timeout=20)

    def test_caches_stay_bounded_and_right_with_many_users(self):
        # redis.cache.entries = 8 per cache and worker: 30 users overflow it
        # many times; every answer must still be the user's own
        users = {}
        for i in range(30):
            cookie = self.sign_in("u%d" % i)
            users[cookie] = self.create(self.a, cookie, "of u%d" % i)
        for _ in range(2):
            for cookie, rid in users.items():
                status, body = self.listing(self.b, cookie)
                self.assertEqual(status, 200, body)
                self.assertEqual([r["id"] for r in body], [rid])


if __name__ == "__main__":
    harness.main()
