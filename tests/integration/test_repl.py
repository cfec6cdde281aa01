"""The REPL routes of the frontend contract (lua/routes/repl.lua) with the
shipped app: sign-in through the GitHub-shaped fake, a real redis-server, the
fs storage driver with the shipped templates synced by `devexd templates
sync`. Create, list, delete, the atomic quota under a race, rollback when
storage fails, other users' REPLs (404 everywhere), runner-token checks and
/ping. Starting sessions needs a runtime driver and is tested with it."""

import json
import os
import subprocess
import sys
import tempfile
import shutil
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd, RedisServer  # noqa: E402
from fakes.github_fake import GitHubFake  # noqa: E402
from test_auth import Browser, http_get, local_path, FRONTEND, GH_REDIRECT  # noqa: E402

JSON = {"Content-Type": "application/json"}


class ReplTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="devexd-repl-")
        cls.store_dir = os.path.join(cls.tmp, "bucket")
        os.mkdir(cls.store_dir)
        cls.redis = RedisServer().__enter__()
        cls.gh = GitHubFake().__enter__()
        conf = {
            "environment": "production", "allow_insecure_http": True,
            "frontend_url": FRONTEND,
            "redis": {"url": cls.redis.url(), "timeout": 2},
            "github": cls.gh.config(GH_REDIRECT),
            "session": {"ttl": 3600, "state_ttl": 600},
            "storage": {"driver": "fs", "dir": cls.store_dir},
        }
        cls.d = Devexd(app=None, threads=2, config=conf).__enter__()
        cls.d.sync_templates()

    @classmethod
    def tearDownClass(cls):
        harness.stop_class_servers(cls, "d", "gh", "redis")

    def setUp(self):
        self.redis.call("FLUSHALL")
        shutil.rmtree(os.path.join(self.store_dir, "repl"), ignore_errors=True)

    # ---- helpers ----

    def login(self, login="OctoCat", uid=583231):
        self.gh.user["login"] = login
        self.gh.user["id"] = uid
        b = Browser(self.d)
        r = b.get("/auth/github/login")
        self.assertEqual(r.status, 302, r.body)
        status, headers, body = http_get(r.header("Location"))
        self.assertIn(status, (302, 303), body)
        r = b.get(local_path(headers["Location"]))
        self.assertEqual(r.header("Location"), FRONTEND + "/dashboard")
        return b

    def create(self, b, name="my repl", template="python"):
        r = b.request("POST", "/api/repl/new", headers=JSON,
                      body=json.dumps({"template": template, "replName": name, "userName": "ignored"}))
        return r.status, r.json()

    def files_of(self, user, rid):
        root = os.path.join(self.store_dir, "repl", user, rid)
        out = []
        for dirpath, _, files in os.walk(root):
            for f in files:
                out.append(os.path.relpath(os.path.join(dirpath, f), root))
        return sorted(out)

    def repl_dirs(self, user):
        root = os.path.join(self.store_dir, "repl", user)
        return sorted(os.listdir(root)) if os.path.isdir(root) else []

    # ---- tests ----

    def test_list_create_delete(self):
        b = self.login()
        r = b.get("/api/repl")
        self.assertEqual((r.status, r.body), (200, b"[]"))
        st, repl = self.create(b)
        self.assertEqual(st, 201, repl)
        self.assertEqual(repl["user"], "OctoCat")  # the login, shown as the owner
        self.assertEqual(repl["name"], "my repl")
        self.assertEqual(repl["template"], "python")
        self.assertIs(repl["isActive"], False)
        self.assertRegex(repl["id"], r"^repl-[0-9a-f-]{36}$")
        self.assertEqual(self.files_of("gh_583231", repl["id"]), ["main.py"])
        r = b.get("/api/repl")
        self.assertEqual(r.json(), [repl])
        meta = self.redis.call("HGETALL", "devex:replMeta:" + repl["id"])
        self.assertIn(b"created", meta)
        self.assertEqual(self.redis.call("SMEMBERS", "devex:userRepls:gh_583231"), [repl["id"].encode()])
        r = b.request("DELETE", "/api/repl/" + repl["id"], headers=JSON)
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(self.repl_dirs("gh_583231"), [])
        self.assertEqual(self.redis.call("EXISTS", "devex:replMeta:" + repl["id"]), 0)
        self.assertEqual(self.redis.call("SCARD", "devex:userRepls:gh_583231"), 0)
        self.assertEqual(b.get("/api/repl").body, b"[]")

    def test_save_failed_in_the_view(self):
        """A REPL the sweep flagged save_failed shows saveFailed and saveError
        in GET /api/repl and /api/repl/ (extra fields the frontend ignores);
        an unflagged one has neither, and clearing the flag removes them."""
        b = self.login()
        st, repl = self.create(b)
        self.assertEqual(st, 201, repl)
        rid = repl["id"]
        for path in ("/api/repl", "/api/repl/"):
            r = b.get(path)
            self.assertEqual(r.status, 200, r.body)
            self.assertNotIn("saveFailed", r.json()[0])
            self.assertNotIn("saveError", r.json()[0])
        # what repl.sweep.save_failed writes at policy.sync.max_attempts
        self.redis.call("HSET", "devex:replMeta:" + rid, "save_failures", "3", "save_error",
                        "storage: 503 SlowDown", "save_failed", "1")
        for path in ("/api/repl", "/api/repl/"):
            # the cached list is dropped when Redis reports the write (services.tracked)
            harness.poll(lambda: b.get(path).json()[0].get("saveFailed") is True, "saveFailed in " + path)
            v = b.get(path).json()[0]
            self.assertEqual((v["id"], v["saveFailed"], v["saveError"]), (rid, True, "storage: 503 SlowDown"))
        self.redis.call("HDEL", "devex:replMeta:" + rid, "save_failures", "save_error", "save_failed")
        harness.poll(lambda: "saveFailed" not in b.get("/api/repl").json()[0], "saveFailed gone")
        self.assertNotIn("saveError", b.get("/api/repl").json()[0])

    def test_input_validation(self):
        b = self.login()
        self.assertEqual(self.create(b, template="cobol")[0], 400)
        self.assertEqual(self.create(b, name="")[0], 400)
        self.assertEqual(self.create(b, name="x" * 65)[0], 400)
        self.assertEqual(self.create(b, name="../../etc")[0], 400)
        r = b.request("POST", "/api/repl/new", headers=JSON, body="{not json")
        self.assertEqual(r.status, 400)
        self.assertEqual(b.request("DELETE", "/api/repl/..%2F..%2Fetc", headers=JSON).status, 404)
        self.assertEqual(self.repl_dirs("gh_583231"), [])

    def test_signed_out(self):
        self.assertEqual(self.d.get("/api/repl").status, 401)
        r = self.d.request("POST", "/api/repl/new", headers=JSON, body=json.dumps({"template": "node", "replName": "a"}))
        self.assertEqual(r.status, 401)

    def test_quota_race(self):
        b = self.login()
        results = []
        lock = threading.Lock()

        def one(i):
            st, body = self.create(b, name="r%d" % i, template="node")
            with lock:
                results.append((st, body))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        codes = sorted(st for st, _ in results)
        self.assertEqual(codes.count(201), 2, codes)
        self.assertEqual(codes.count(429), 48, codes)
        # past policy.limits.create (20 a minute) the rate limit answers first
        quota = [body for st, body in results if body == {"error": "repl limit reached", "limit": 2}]
        limited = [body for st, body in results if body == {"error": "too many requests"}]
        self.assertEqual((len(quota), len(limited)), (18, 30), results)
        made = sorted(body["id"] for st, body in results if st == 201)
        self.assertEqual(self.repl_dirs("gh_583231"), made, "objects of refused creates were left in storage")
        self.assertEqual(len(b.get("/api/repl").json()), 2)

    def test_other_users_repl_is_404(self):
        alice = self.login("Alice", 1001)
        st, repl = self.create(alice)
        self.assertEqual(st, 201)
        bob = self.login("Bob", 1002)
        self.assertEqual(bob.get("/api/repl").json(), [])
        for method, path in (("DELETE", "/api/repl/"), ("GET", "/api/repl/session/"), ("DELETE", "/api/repl/session/")):
            r = bob.request(method, path + repl["id"], headers=JSON)
            self.assertEqual(r.status, 404, (method, path, r.body))
            self.assertEqual(r.json(), {"error": "repl not found"})
        # the same answer as for an id that does not exist
        r = bob.request("DELETE", "/api/repl/repl-00000000-0000-4000-8000-000000000000", headers=JSON)
        self.assertEqual((r.status, r.json()), (404, {"error": "repl not found"}))
        self.assertEqual(self.files_of("gh_1001", repl["id"]), ["main.py"])

    def test_rollback_when_template_is_missing(self):
        b = self.login()
        shutil.move(os.path.join(self.store_dir, "templates", "go"), os.path.join(self.tmp, "go-aside"))
        try:
            st, body = self.create(b, template="go")
        finally:
            shutil.move(os.path.join(self.tmp, "go-aside"), os.path.join(self.store_dir, "templates", "go"))
        self.assertEqual(st, 500, body)
        self.assertEqual(self.repl_dirs("gh_583231"), [])
        self.assertEqual(self.redis.call("SCARD", "devex:userRepls:gh_583231"), 0)
        self.assertEqual(self.redis.call("KEYS", "devex:replMeta:*"), [])
        # the quota slot was given back
        self.assertEqual(self.create(b, name="a")[0], 201)
        self.assertEqual(self.create(b, name="b")[0], 201)

    def test_runner_callbacks_need_the_token(self):
        b = self.login()
        st, repl = self.create(b)
        rid = repl["id"]
        self.assertEqual(self.d.request("DELETE", "/api/runner/" + rid).status, 401)
        self.assertEqual(self.d.request("POST", "/api/runner/%s/heartbeat" % rid).status, 401)
        # a session whose token hash is known (as the start would store it)
        import hashlib
        token = "t" * 43
        self.redis.call("HSET", "devex:activeSession:" + rid, "started_at", "1",
                        "token_hash", hashlib.sha256(token.encode()).hexdigest())
        other = "o" * 43
        r = self.d.request("POST", "/api/runner/%s/heartbeat" % rid, headers={"Authorization": "Bearer " + other})
        self.assertEqual(r.status, 401)
        r = self.d.request("POST", "/api/runner/%s/heartbeat" % rid, headers={"Authorization": "Bearer " + token})
        self.assertEqual(r.status, 200, r.body)

    def test_ping(self):
        r = self.d.get("/ping")
        self.assertEqual(r.status, 200)
        body = r.json()
        self.assertEqual(body["redis"], "ok")
        self.assertEqual(body["s3"], "ok")
        self.assertIn("k8s", body)



class PolicyOverrideTest(unittest.TestCase):
    """An operator's policy file changes the quota; SIGHUP applies a new one;
    a broken one is refused and the running policy stays."""

    def test_override_reload_and_refusal(self):
        import signal
        import time
        tmp = tempfile.mkdtemp(prefix="devexd-policy-")
        store_dir = os.path.join(tmp, "bucket")
        os.mkdir(store_dir)
        policy = os.path.join(tmp, "policy.lua")
        with open(policy, "w") as f:
            f.write("return { quota = { repls_per_user = 1 } }\n")
        try:
            with RedisServer() as redis, GitHubFake() as gh:
                conf = {"environment": "production", "allow_insecure_http": True, "frontend_url": FRONTEND,
                        "redis": {"url": redis.url(), "timeout": 2}, "github": gh.config(GH_REDIRECT),
                        "storage": {"driver": "fs", "dir": store_dir}, "policy": {"file": policy}}
                with Devexd(app=None, threads=2, config=conf) as d:
                    d.sync_templates()
                    t = ReplTest()
                    t.d, t.gh = d, gh
                    b = ReplTest.login(t)
                    self.assertEqual(ReplTest.create(t, b, name="one")[0], 201)
                    st, body = ReplTest.create(t, b, name="two")
                    self.assertEqual((st, body), (429, {"error": "repl limit reached", "limit": 1}))
                    # a new policy, applied by SIGHUP
                    with open(policy + ".tmp", "w") as f:
                        f.write("return { quota = { repls_per_user = 3 } }\n")
                    os.replace(policy + ".tmp", policy)
                    d.signal(signal.SIGHUP)
                    deadline = time.monotonic() + 10
                    while True:
                        st, body = ReplTest.create(t, b, name="two")
                        if st == 201:
                            break
                        self.assertLess(time.monotonic(), deadline, "the new quota never applied")
                        time.sleep(0.1)
                    # a broken policy: refused with file:line, the quota of 3 stays
                    mark = d.mark()
                    with open(policy + ".tmp", "w") as f:
                        f.write("return { quota = { repls_per_user = 1 }\n")  # syntax error
                    os.replace(policy + ".tmp", policy)
                    d.signal(signal.SIGHUP)
                    d.wait_log(lambda e: e.get("msg") == "reload failed, keeping the running code"
                               and "policy.lua:" in e.get("error", ""), count=2, since=mark,
                               what="both workers refusing the policy")
                    self.assertEqual(ReplTest.create(t, b, name="three")[0], 201)
                    self.assertEqual(ReplTest.create(t, b, name="four")[0], 429)
                    # --check reports it too
                    p = subprocess.run([harness.DEVEXD_BIN, "--check", "-c", d.conf_path, "-L", harness.LUA_DIR],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
                    self.assertNotEqual(p.returncode, 0)
                    self.assertIn("policy.lua:", p.stderr)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    harness.main()
