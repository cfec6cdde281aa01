"""/ping says what it checked, and each dependency's degraded case: the
single-host runtime (fs storage, local runner) with one worker, so the 5 s
per-worker cache is one cache. Healthy: every entry "ok" and runtime
"local"; a file in place of the storage directory: s3 degraded; the workspace directory
made unusable (a file in its place): k8s (the runtime's entry) degraded;
Redis stopped: redis degraded. The answer never carries the upstream's error
(it goes to the log)."""

import os
import shutil
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd, RedisServer  # noqa: E402

PING_CACHE = 5  # seconds (lua/routes/repl.lua)


class PingTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="devexd-ping-")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        cls.store_dir = os.path.join(cls.tmp, "bucket")
        cls.ws_dir = os.path.join(cls.tmp, "workspaces")
        os.mkdir(cls.store_dir)
        cls.redis = cls.enterClassContext(RedisServer())
        conf = {
            "environment": "test",
            "redis": {"url": cls.redis.url(), "timeout": 1},
            "storage": {"driver": "fs", "dir": cls.store_dir},
            "runtime": {"driver": "local", "dir": cls.ws_dir},
        }
        cls.d = cls.enterClassContext(Devexd(app=None, threads=1, config=conf))

    def ping(self):
        """The next answer computed after the cache (at most PING_CACHE s old) ran out."""
        time.sleep(PING_CACHE + 0.2)
        r = self.d.get("/ping")
        self.assertEqual(r.status, 200, r.body)
        return r.json()

    def test_each_dependency_degraded(self):
        self.assertEqual(self.ping(), {"api": "ok", "redis": "ok", "s3": "ok", "k8s": "ok", "runtime": "local"})
        # storage: a file where its directory was
        os.rename(self.store_dir, self.store_dir + ".away")
        with open(self.store_dir, "w") as f:
            f.write("not a directory")
        try:
            self.assertEqual(self.ping(), {"api": "degraded", "redis": "ok", "s3": "degraded", "k8s": "ok",
                                           "runtime": "local"})
        finally:
            os.remove(self.store_dir)
            os.rename(self.store_dir + ".away", self.store_dir)
        # the runtime: the workspace directory cannot be made
        shutil.rmtree(self.ws_dir, ignore_errors=True)
        with open(self.ws_dir, "w") as f:
            f.write("not a directory")
        try:
            body = self.ping()
            self.assertEqual(body, {"api": "degraded", "redis": "ok", "s3": "ok", "k8s": "degraded",
                                    "runtime": "local"})
            self.d.wait_log(lambda e: e.get("msg") == "ping: dependency degraded" and "workspace" in e.get("k8s", ""),
                            what="the runtime's detail in the log")
        finally:
            os.remove(self.ws_dir)
        self.assertEqual(self.ping()["api"], "ok")
        # Redis down
        self.redis.stop()
        try:
            body = self.ping()
            self.assertEqual((body["api"], body["redis"], body["s3"], body["k8s"]), ("degraded", "degraded", "ok", "ok"))
        finally:
            self.redis.start()


if __name__ == "__main__":
    harness.main()
