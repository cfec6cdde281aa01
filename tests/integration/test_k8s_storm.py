"""Start and stop storms at a small scale (issue #17 section 5): the storm of
tests/bench/bench_storm.py with N = 30 users (STORM_N), every check of it
an assertion. Two devexd replicas (2 workers each, one Redis) behind a
round-robin client, the real kube-apiserver and controller manager, the
simulated kubelet running each pod's real agent (`devexd runner`), storage
on the signature-checking S3 test server.

- all N start at once, every 5th twice (once per replica) and every 10th
  user with a second REPL at once under quota.sessions_per_user = 1: every
  answer is 200 or the policy's JSON 429 (code "quota"), exactly one
  running REPL per user, exactly one Deployment per running REPL;
- a distinct file is written into each workspace (the agents checkpoint
  only once an hour: only the stop's final checkpoint can save it);
- all stop at once, every 5th twice: every REPL gets a 200 (the other of
  a pair 200 or the stop lock's 409), every file is in S3 byte for byte,
  every REPL "stopped", no session key, no Deployment, ReplicaSet or pod
  left, no agent process left;
- the sweep ran on one replica only.
Assertions are on outcomes, never on elapsed time.
"""
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "bench"))
from harness import sanitizer_errors  # noqa: E402
import bench_storm  # noqa: E402

N = int(os.environ.get("STORM_N", "30"))


class K8sStormTest(unittest.TestCase):
    def test_start_and_stop_storms(self):
        lines = []
        with bench_storm.Storm(N, log=lines.append, start_timeout=300) as s:
            res = s.run()
            for d in s.replicas:
                self.assertEqual(sanitizer_errors(d.raw_log()), [], "devexd replica log")
            for path in s.agent_logs():
                with open(path, "rb") as f:
                    self.assertEqual(sanitizer_errors(f.read().decode("utf-8", "replace")), [], path)
        sys.stderr.write("\n".join(lines) + "\n")
        self.assertEqual(res["problems"], [])
        st, sp = res["start"], res["stop"]
        # the storm happened as designed, not vacuously
        self.assertEqual(st["running"], N)
        self.assertGreaterEqual(st["statuses"].get("429", 0), (N + 9) // 10)
        self.assertEqual(sp["files_written"], N)
        self.assertEqual(sp["files_lost"], 0)
        self.assertEqual(sp["files_differing"], 0)
        self.assertEqual(sp["repls_not_stopped"], 0)
        self.assertEqual(sp["objects_left"], {"deployments": 0, "replicasets": 0, "pods": 0})
        self.assertEqual(sorted(res["sweep_runs_per_replica"])[0], 0)


if __name__ == "__main__":
    unittest.main()
