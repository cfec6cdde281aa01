"""A start that waits for a concurrent start of the same REPL outlives a
Redis stall (issue #17 section 5, found by tests/bench/bench_storm.py: 650
starts at once on two replicas answered 7 such waits 503 "store unavailable:
timeout" while their REPL started).

Two devexd replicas on one Redis, the real API server and the simulated
kubelet (status only, the pod Ready 14 s after the kubelet first sees it).
Replica 0 starts the REPL and waits for its pod; replica 1 is asked to start
it too and waits for the first start (repl.sessions wait_running polls the
REPL's state). Redis is then stalled for 7 s (DEBUG SLEEP): longer than
devexd's Redis command timeout (5 s), so the waiting start's poll fails at
least once. Both answers must be 200, the REPL running with exactly one
Deployment. (Before the fix the waiting start answered 503 "store
unavailable: timeout: redis command timed out" here.)
"""
import os
import sys
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "bench"))
from harness import poll, sanitizer_errors  # noqa: E402
import k8s_harness  # noqa: E402
import bench_storm  # noqa: E402


class StartWaitTest(unittest.TestCase):
    def test_waiting_start_outlives_a_redis_stall(self):
        with bench_storm.Storm(1, log=lambda *_: None, start_timeout=120, agents=False) as s:
            s.kc.kubelet.add_rule({k8s_harness.READY_AFTER: "14"}, namespace=bench_storm.NS)
            s.sign_in_and_create()
            u = s.users[0]
            rid = u["repls"][0]
            out = {}

            def start(key, d):
                out[key] = bench_storm.call(d, "GET", "/api/repl/session/" + rid, u["cookie"], 300)

            first = threading.Thread(target=start, args=("first", s.replicas[0]))
            first.start()
            poll(lambda: s.redis.call("HGET", "devex:replMeta:" + rid, "state") == b"starting",
                 "the first start's reservation", timeout=60, interval=0.05)
            waiter = threading.Thread(target=start, args=("waiting", s.replicas[1]))
            waiter.start()
            time.sleep(1)  # the second start is polling by now
            self.assertEqual(s.redis.call("HGET", "devex:replMeta:" + rid, "state"), b"starting")
            with s.redis.client(timeout=30) as rc:
                rc.call("DEBUG", "SLEEP", "7")
            first.join(300)
            waiter.join(300)
            for key in ("first", "waiting"):
                status, body, _ = out[key]
                self.assertEqual(status, 200, "%s: %r" % (key, body))
            self.assertEqual(s.redis.call("HGET", "devex:replMeta:" + rid, "state"), b"running")
            deps = s.kc.client(user="admin").get(k8s_harness.api_path("apps/v1", "deployments", bench_storm.NS),
                                                  query={"labelSelector": "devex.io/repl=" + rid})["items"]
            self.assertEqual(len(deps), 1)
            for d in s.replicas:
                self.assertEqual(sanitizer_errors(d.raw_log()), [])


if __name__ == "__main__":
    unittest.main()
