#!/usr/bin/env python3
"""Many session starts share one pod watch per devexd worker (issue #17
section 5, issue #18): 50 starts parked together until their pods are Ready,
with 200 clients watching their event streams, cost the real API server at
most one pod WATCH request per worker (counted from the API server's own
apiserver_request_total metric), every start still gets its own pod, and a
pod that fails reaches only its own start. Starts take turns for their API
calls (policy workload.start_concurrency): with one turn per worker, a start
whose calls fail hands its turn on, and starts queued behind each other all
get their pods. A start parked waiting for its pod keeps none of its callers'
frames (repl.sessions and the driver's start end in tail calls), and gets its
pod all the same."""
import json
import os
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import k8s_harness  # noqa: E402
from harness import Devexd, RedisServer  # noqa: E402
from fakes.github_fake import GitHubFake  # noqa: E402
from test_k8s_runtime import cluster_config  # noqa: E402
from test_session_events import Watcher  # noqa: E402

NS = "shared-watch"
JSON = {"Content-Type": "application/json"}
STARTS = 50
WATCHERS_PER_START = 4
WORKERS = 2

POLICY = """return {
  quota = { repls_per_user = 200, sessions_per_user = 200 },
  limits = { create = false, start = false, stop = false },
}
"""


# the built-in app, and the coroutines waiting for pods (in a pod informer
# waiter's next(), not the informer's own watch task), each as the functions
# on its stack (what a parked start keeps)
FRAMES_APP = r"""
local app = require("app")
-- the requests parked (devex.stream.park), and the coroutines waiting for a
-- pod: in a waiter's next() or anywhere in the driver's wait
app:get("/test/parked", function()
  local waiting = {}
  for _, co in pairs(debug.getregistry()) do
    if type(co) == "thread" and co ~= coroutine.running() then
      local frames, wait = {}, false
      for lvl = 0, 200 do
        local info = debug.getinfo(co, lvl, "Sn")
        if not info then break end
        wait = wait or (info.short_src:find("pod_informer.lua", 1, true) ~= nil and info.name == "next")
          or info.short_src:find("runtime/kubernetes.lua", 1, true) ~= nil
        frames[#frames + 1] = { src = info.short_src:match("[^/]*/[^/]*$") or info.short_src, line = info.linedefined }
      end
      if wait then waiting[#waiting + 1] = frames end
    end
  end
  return 200, { parked = require("devex.stream").parked(), nwaiting = #waiting, waiting = waiting,
                informer_waiters = require("runtime.pod_informer").waiting() }
end)
-- the wait's step raises for the REPLs named here (a bug in the wait, as
-- a stand-in: the pod's phase noted for the event stream raises)
local broken = {}
local events = require("repl.events")
local pod = events.pod
events.pod = function(id, p)
  if broken[id] then error("the wait went wrong for " .. id) end
  return pod(id, p)
end
app:post("/test/break/:id", function(req) broken[req.params.id] = true; return 200, { ok = true } end)
return app
"""


def pod_watches(kc):
    """Namespaced pod WATCH requests open on the API server now (its own
    apiserver_longrunning_gauge; the simulated kubelet's watches are
    cluster-scoped and not counted)."""
    r = kc.api.request("GET", "/metrics")
    total = 0
    for line in r.body.decode().splitlines():
        if line.startswith("apiserver_longrunning_gauge{") and 'verb="WATCH"' in line and \
                'resource="pods"' in line and 'scope="namespace"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


class SharedWatchTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="devexd-sharedwatch-")
        cls.store_dir = os.path.join(cls.tmp, "bucket")
        os.mkdir(cls.store_dir)
        # pods get Ready from the simulated kubelet alone: no runner stand-in
        # processes (50 of them would only load the machine)
        cls.kc = cls.enterClassContext(k8s_harness.KubeCluster(standins=False))
        cls.kc.create_namespace(NS)
        kubeconfig = cls.kc.write_kubeconfig(os.path.join(cls.tmp, "kubeconfig"))
        cls.redis = cls.enterClassContext(RedisServer())
        cls.gh = cls.enterClassContext(GitHubFake())
        policy = os.path.join(cls.tmp, "policy.lua")
        with open(policy, "w") as f:
            f.write(POLICY)
        conf = cluster_config(cls, kubeconfig, NS)
        conf["policy"] = {"file": policy}
        cls.d = cls.enterClassContext(Devexd(app=None, threads=WORKERS, config=conf))
        cls.d.sync_templates()

    def login(self, login, uid):
        import test_repl
        return test_repl.ReplTest.login(self, login, uid)

    def test_fifty_starts_one_watch_per_worker(self):
        b = self.login("many", 777001)
        ids = []
        for i in range(STARTS):
            r = b.request("POST", "/api/repl/new", headers=JSON,
                          body=json.dumps({"template": "node", "replName": "w%d" % i}))
            self.assertEqual(r.status, 201, r.body)
            ids.append(r.json()["id"])
        # every pod Ready 3 s after it is created, so the starts overlap;
        # one of them fails its image pull instead
        failing = ids[7]
        for rid in ids:
            keys = {"devex.test/fail-image": "true"} if rid == failing else {"devex.test/ready-after": "3"}
            self.kc.kubelet.add_rule(keys, namespace=NS, labels={"devex.io/repl": rid})
        watchers = {rid: [Watcher(self.d, "/api/repl/session/%s/events" % rid, b.cookie_header(), None)
                          for _ in range(WATCHERS_PER_START)] for rid in ids}
        for ws in watchers.values():
            for w in ws:
                self.addCleanup(w.close)
        self.assertEqual(pod_watches(self.kc), 0)
        results = {}
        cookie = {"Cookie": b.cookie_header()}

        def start(rid):
            results[rid] = self.d.request("GET", "/api/repl/session/" + rid, headers=cookie, timeout=240)
        threads = [threading.Thread(target=start, args=(rid,)) for rid in ids]
        for t in threads:
            t.start()
        # the open pod watches, sampled while the starts are parked
        peak = 0
        while any(t.is_alive() for t in threads):
            peak = max(peak, pod_watches(self.kc))
            threads[0].join(0.3)
        for t in threads:
            t.join(300)
        for rid in ids:
            self.addCleanup(lambda rid=rid: b.request("DELETE", "/api/repl/session/" + rid, headers=JSON))
        # at most one pod watch per worker for all 50 (before: one per start)
        self.assertGreaterEqual(peak, 1)
        self.assertLessEqual(peak, WORKERS)
        # each start got its own pod; the failing one failed alone
        pods = self.kc.api.get("/api/v1/namespaces/%s/pods" % NS)["items"]
        pod_repl = {p["metadata"]["name"]: p["metadata"]["labels"].get("devex.io/repl") for p in pods}
        for rid in ids:
            r = results[rid]
            if rid == failing:
                self.assertEqual(r.status, 502, r.body)
                self.assertEqual(r.json()["code"], "image_pull", r.body)
                continue
            self.assertEqual(r.status, 200, r.body)
        sess = {}
        for rid in ids:
            if rid != failing:
                m = self.redis.call("HGET", "devex:activeSession:" + rid, "pod")
                sess[rid] = m.decode() if isinstance(m, bytes) else m
        for rid, pod in sess.items():
            self.assertEqual(pod_repl.get(pod), rid, (rid, pod))
        self.assertEqual(len(set(sess.values())), STARTS - 1)
        # the 200 watchers each saw their own session's end of the start
        for rid, ws in watchers.items():
            last = "failed" if rid == failing else "ready"
            for w in ws:
                got = w.until(last, timeout=30)
                self.assertTrue(all(e["data"]["replId"] == rid for e in got), got)

    def framesapp_repl(self, ns, rule, login, user_id):
        """A devexd with FRAMES_APP on namespace ns (the kubelet's rule for
        it), a signed-in user and one REPL of theirs. -> (devexd, browser,
        REPL id, its Redis)"""
        self.kc.create_namespace(ns)
        self.kc.kubelet.add_rule(rule, namespace=ns)
        ctx = unittest.TestCase()
        ctx.store_dir, ctx.gh = self.store_dir, self.gh
        ctx.redis = self.enterContext(RedisServer())
        conf = cluster_config(ctx, self.kc.write_kubeconfig(os.path.join(self.tmp, "kubeconfig-" + ns)), ns)
        conf["policy"] = {"file": os.path.join(self.tmp, "policy.lua")}
        d = self.enterContext(Devexd(app="framesapp", app_files={"framesapp.lua": FRAMES_APP}, threads=1,
                                     config=conf))
        d.sync_templates()
        ctx.d = d
        import test_repl
        b = test_repl.ReplTest.login(ctx, login, user_id)
        r = b.request("POST", "/api/repl/new", headers=JSON, body=json.dumps({"template": "node", "replName": "f"}))
        self.assertEqual(r.status, 201, r.body)
        rid = r.json()["id"]
        self.addCleanup(lambda: b.request("DELETE", "/api/repl/session/" + rid, headers=JSON))
        return d, b, rid, ctx.redis

    def test_a_parked_start_keeps_no_coroutine(self):
        d, b, rid, redis = self.framesapp_repl("parked-frames", {"devex.test/ready-after": "8"}, "parker", 777003)
        out = {}

        def start():
            out["r"] = d.request("GET", "/api/repl/session/" + rid, headers={"Cookie": b.cookie_header()},
                                 timeout=120)
        t = threading.Thread(target=start)
        t.start()
        # parked: the request waits in a park (devex.stream.park), and no
        # coroutine is left waiting for the pod (none in a waiter's next(),
        # none with a frame of the driver)
        harness.poll(lambda: d.get_json("/test/parked")[1]["parked"] == 1, "the start parked", timeout=30)
        for _ in range(5):  # while it stays parked (the pod is Ready 8 s after it is made)
            st = d.get_json("/test/parked")[1]
            self.assertEqual((st["parked"], st["nwaiting"]), (1, 0), st)
            self.assertTrue(t.is_alive(), out)
            time.sleep(0.3)
        t.join(120)
        self.assertEqual(out["r"].status, 200, out["r"].body)
        self.assertEqual(out["r"].json()["replId"], rid)
        self.assertEqual(self.redis_state(redis, rid), "running")

    def test_a_wait_that_raises_leaves_no_waiter(self):
        d, b, rid, _ = self.framesapp_repl("wait-raises", {"devex.test/never-ready": "true"}, "raiser", 777004)
        self.assertEqual(d.request("POST", "/test/break/" + rid).status, 200)
        # the pod comes (never Ready): the step that looks at it raises
        r = d.request("GET", "/api/repl/session/" + rid, headers={"Cookie": b.cookie_header()}, timeout=120)
        self.assertEqual(r.status, 500, r.body)
        self.assertEqual(r.json()["error"], "internal error")
        lines = d.wait_log(lambda e: e.get("level") == "error" and "the wait went wrong" in e.get("error", ""),
                           what="the wait's error, logged")
        self.assertIn("framesapp.lua", lines[0]["error"])  # where it was raised, not only where it was rethrown
        st = d.get_json("/test/parked")[1]
        self.assertEqual((st["parked"], st["informer_waiters"]), (0, 0), st)

    @staticmethod
    def redis_state(redis, rid):
        v = redis.call("HGET", "devex:replMeta:" + rid, "state")
        return v.decode() if isinstance(v, bytes) else v

    def test_starts_take_turns_for_their_api_calls(self):
        ns = "start-turns"  # not created yet: the first starts' apply fails
        policy = os.path.join(self.tmp, "policy-turns.lua")
        with open(policy, "w") as f:
            f.write("return { quota = { repls_per_user = 20, sessions_per_user = 20 },\n"
                    "  limits = { create = false, start = false, stop = false },\n"
                    "  workload = { start_concurrency = 1, start_timeout = 60 } }\n")
        ctx = unittest.TestCase()
        ctx.store_dir, ctx.gh = self.store_dir, self.gh
        ctx.redis = self.enterContext(RedisServer())
        conf = cluster_config(ctx, self.kc.write_kubeconfig(os.path.join(self.tmp, "kubeconfig-turns")), ns)
        conf["policy"] = {"file": policy}
        d = self.enterContext(Devexd(app=None, threads=1, config=conf))
        d.sync_templates()
        ctx.d, ctx.redis = d, ctx.redis
        import test_repl
        b = test_repl.ReplTest.login(ctx, "turns", 777002)
        ids = []
        for i in range(6):
            r = b.request("POST", "/api/repl/new", headers=JSON,
                          body=json.dumps({"template": "node", "replName": "t%d" % i}))
            self.assertEqual(r.status, 201, r.body)
            ids.append(r.json()["id"])
        cookie = {"Cookie": b.cookie_header()}
        # the one turn of the worker: each failed start must give it back, or
        # the next one would wait for it until its start_timeout (504)
        for rid in ids[:2]:
            r = d.request("GET", "/api/repl/session/" + rid, headers=cookie, timeout=120)
            self.assertEqual(r.status, 502, r.body)
            self.assertIn("kubernetes", r.json()["error"], r.body)
        self.kc.create_namespace(ns)
        self.kc.kubelet.add_rule({"devex.test/ready-after": "1"}, namespace=ns)
        results = {}

        def start(rid):
            results[rid] = d.request("GET", "/api/repl/session/" + rid, headers=cookie, timeout=120)
        threads = [threading.Thread(target=start, args=(rid,)) for rid in ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join(150)
        for rid in ids:
            self.addCleanup(lambda rid=rid: b.request("DELETE", "/api/repl/session/" + rid, headers=JSON))
            self.assertEqual(results[rid].status, 200, results[rid].body)


if __name__ == "__main__":
    unittest.main(verbosity=2)
