"""/healthz and /readyz of the shipped app: devexd starts and /healthz
answers while Redis is down; /readyz says 503 until Redis answers, then 200,
and 503 again when Redis goes away."""

import time
import unittest

from harness import Devexd, RedisServer


def poll_status(d, path, want, timeout=10):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = d.get(path)
        if last.status == want:
            return last
        time.sleep(0.05)
    raise AssertionError("%s never answered %d (last %r)" % (path, want, last))


class ReadyzTest(unittest.TestCase):
    def test_readiness_follows_redis(self):
        with RedisServer() as redis:
            redis.stop()
            conf = {"redis": {"url": "redis://127.0.0.1:%d/0" % redis.port, "timeout": 1}}
            with Devexd(app=None, threads=2, config=conf) as d:
                self.assertEqual(d.get("/healthz").status, 200)
                r = d.get("/readyz")
                self.assertEqual(r.status, 503)
                self.assertEqual(r.json()["status"], "not ready")
                self.assertIn("unavailable", r.json()["redis"])
                redis.start()
                poll_status(d, "/readyz", 200)
                redis.stop()
                poll_status(d, "/readyz", 503)
                self.assertEqual(d.get("/healthz").status, 200)
                redis.start()
                poll_status(d, "/readyz", 200)


if __name__ == "__main__":
    unittest.main()
