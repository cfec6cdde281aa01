"""repl.events' failure reasons from a start's last pod, inside devexd: the
driver hands each version of the pod it sees to events.pod, which keeps only
what events.failure reads (not the pod: a parked start keeps it for as long
as it waits); a failed start's code and sentence come from that and from the
driver's error. Each case feeds pods as the Kubernetes driver would, then
asks for the failure. The image-pull case end to end (API server, simulated
kubelet) is in test_session_events.py."""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import RedisServer  # noqa: E402

APP = r"""
local app = require("devex.app").new()
require("routes.health")(app)
local events = require("repl.events")
local derror = require("devex.error")

local function pod(status, init_image)
  return { metadata = { name = "p" }, spec = { nodeName = status.phase ~= "Pending" and "n1" or nil,
           initContainers = init_image and { { name = "restore", image = init_image } } or nil,
           containers = { { name = "runner", image = "runner-node:1" } } }, status = status }
end

local PODS = {
  unschedulable = { pod({ phase = "Pending", conditions = { { type = "PodScheduled", status = "False",
    reason = "Unschedulable", message = "0/3 nodes are available: 3 Insufficient cpu." } } }) },
  restore = { pod({ phase = "Pending", conditions = { { type = "PodScheduled", status = "True" } },
    initContainerStatuses = { { name = "restore", image = "aws-cli:2", state = { waiting = { reason = "CrashLoopBackOff" } },
      lastState = { terminated = { exitCode = 1 } } } } }, "aws-cli:2") },
  pull = { pod({ phase = "Pending", conditions = { { type = "PodScheduled", status = "True" } },
    containerStatuses = { { name = "runner", image = "runner-node:1", state = { waiting = { reason = "ErrImagePull" } } } } }) },
  -- the last pod seen is what counts: scheduled at last, then the deadline
  scheduled_later = {
    pod({ phase = "Pending", conditions = { { type = "PodScheduled", status = "False", reason = "Unschedulable",
      message = "no room" } } }),
    pod({ phase = "Pending", conditions = { { type = "PodScheduled", status = "True" } } }),
  },
  -- the pod alone says so (the error is the deadline's), and names the
  -- image that cannot be pulled, not the first one (the restore's)
  pull_seen = { pod({ phase = "Pending", conditions = { { type = "PodScheduled", status = "True" } },
    initContainerStatuses = { { name = "restore", image = "aws-cli:2", state = { terminated = { exitCode = 0 } } } },
    containerStatuses = { { name = "runner", image = "runner-node:1", state = { waiting = { reason = "ImagePullBackOff" } } } } },
    "aws-cli:2") },
  none = {},
}

app:get("/failure/:case/:status", function(req)
  local id = "repl-" .. req.params.case
  for _, p in ipairs(PODS[req.params.case] or {}) do events.pod(id, p) end
  local status = math.tointeger(tonumber(req.params.status))
  local msg = req.headers["x-error"] or "the pod was not Ready within 5s"
  local f = events.failure(id, derror.http(status, msg), status)
  -- a second failure of the same REPL knows no pod any more
  local again = events.failure(id, derror.http(status, msg), status)
  return 200, { code = f.code, image = f.image, reason = f.reason, message = f.message, again = again.code }
end)
return app
"""


class FailureReasonsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.redis = cls.enterClassContext(RedisServer())
        cls.d = cls.enterClassContext(harness.Devexd(app="failapp", app_files={"failapp.lua": APP}, threads=1,
                                                     config={"redis": {"url": cls.redis.url()}}))

    def failure(self, case, status, error=None):
        st, out = self.d.get_json("/failure/%s/%d" % (case, status), headers={"X-Error": error} if error else {})
        self.assertEqual(st, 200, out)
        return out

    def test_unschedulable_is_capacity(self):
        out = self.failure("unschedulable", 504)
        self.assertEqual((out["code"], out["reason"]), ("capacity", "0/3 nodes are available: 3 Insufficient cpu."), out)
        self.assertIn("Insufficient cpu", out["message"])
        self.assertEqual(out["again"], "start_timeout", out)

    def test_failed_restore(self):
        out = self.failure("restore", 502, "container restore: CrashLoopBackOff: back-off")
        self.assertEqual(out["code"], "restore_failed", out)

    def test_image_pull_names_the_image(self):
        out = self.failure("pull", 502, "container runner: ErrImagePull")
        self.assertEqual((out["code"], out["image"]), ("image_pull", "runner-node:1"), out)
        self.assertIn("runner-node:1", out["message"])

    def test_pull_problem_seen_on_the_pod_only(self):
        out = self.failure("pull_seen", 504)
        self.assertEqual((out["code"], out["image"]), ("image_pull", "runner-node:1"), out)

    def test_pull_error_without_a_pod(self):
        out = self.failure("none", 502, "container runner: ImagePullBackOff")
        self.assertEqual((out["code"], out["image"]), ("image_pull", "?"), out)

    def test_the_last_pod_counts(self):
        self.assertEqual(self.failure("scheduled_later", 504)["code"], "start_timeout")


if __name__ == "__main__":
    unittest.main()
