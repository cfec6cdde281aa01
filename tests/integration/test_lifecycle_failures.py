"""The REPL lifecycle when a dependency fails in the middle (issue 7), with
the shipped app against real servers:

  a. S3 down during create (s3 storage driver, the test S3 server of
     test_s3.py stopped after the template sync): 502, and nothing is left
     (no Redis keys, the quota slot free, no objects under repl/).
  b. the Kubernetes API down during start (a kubeconfig pointing at a closed
     port): 502/503 with a clear error, the REPL back to "created", no
     activeSession key.
  c. Redis restarted (its data lost: the harness runs it with --save '' and
     --appendonly no) while a start waits for a pod that never becomes
     Ready: the Deployment, which no REPL owns any more, is removed by the
     sweep after orphan_grace, and the start answers an error.
  d. the sweep removes an orphan Deployment (labelled by devexd, no REPL in
     Redis) and leaves a live session's Deployment alone.
  e. a REPL stuck in "stopping" (the uploader exits non-zero; DELETE answers
     502) is stopped by the sweep once the upload works: Deployment gone,
     state "stopped".

Every wait is a poll of the observable state with a generous timeout; no
test asserts how long something took.
"""

import json
import os
import shutil
import sys
import tempfile
import threading
import unittest
import urllib.parse
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd, RedisServer, poll  # noqa: E402
from test_auth import Browser  # noqa: E402
import test_s3  # noqa: E402
import k8s_harness  # noqa: E402

JSON = {"Content-Type": "application/json"}
USER = "octocat"



def write_policy(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def dev_login(test, d, user=USER):
    """Signs in with the development sign-in; returns a Browser holding the cookie."""
    b = Browser(d)
    r = b.request("POST", "/auth/dev/login", headers=JSON, body=json.dumps({"user": user}))
    test.assertEqual(r.status, 302, r.body)
    test.assertTrue(b.jar, "no session cookie after the dev sign-in")
    return b


def create(b, name="repl", template="python"):
    r = b.request("POST", "/api/repl/new", headers=JSON, body=json.dumps({"template": template, "replName": name}))
    return r.status, (r.json() if r.body else None)


def base_config(redis, policy=None):
    conf = {
        "environment": "development",  # the dev sign-in refuses production
        "frontend_url": "http://localhost:3000",
        "redis": {"url": redis.url(), "timeout": 2},
        "dev_login": {"enabled": True},
    }
    if policy:
        conf["policy"] = {"file": policy}
    return conf


class RestartableS3Server(test_s3.S3Server):
    """test_s3.S3Server (which can be stopped and started again on the same
    port with the same data directory) that also lists the stored keys."""

    def keys(self, prefix):
        """The object keys under prefix, read from s3rver's directory (it keeps
        object KEY as the file KEY._S3rver_object; the front refuses
        unsigned requests)."""
        root = os.path.join(self.tmp, "data", self.bucket)
        out = []
        for dirpath, _, files in os.walk(root):
            for f in files:
                if f.endswith("._S3rver_object"):
                    rel = os.path.relpath(os.path.join(dirpath, f), root)
                    out.append(rel[:-len("._S3rver_object")])
        return sorted(k for k in out if k.startswith(prefix))


# ---------------------------------------------------------------------------
# a. S3 down during create
# ---------------------------------------------------------------------------

class S3DownDuringCreateTest(unittest.TestCase):
    def setUp(self):
        test_s3.ensure_s3_server()
        self.tmp = tempfile.mkdtemp(prefix="devexd-lcf-s3-")
        self.redis = RedisServer().__enter__()
        self.s3 = RestartableS3Server().start()

    def tearDown(self):
        self.s3.close()
        self.redis.__exit__(None, None, None)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_create_with_s3_down_leaves_nothing(self):
        policy = write_policy(os.path.join(self.tmp, "policy.lua"),
                              "return { cleanup = { sweep_interval = 3600 } }\n")
        conf = base_config(self.redis, policy)
        conf["storage"] = {"driver": "s3"}
        conf["s3"] = self.s3.conf(max_attempts=2, timeout=5)
        with Devexd(app=None, threads=2, config=conf) as d:
            d.sync_templates()
            self.assertTrue(self.s3.keys("templates/python/"), "the template sync uploaded nothing")
            b = dev_login(self, d)
            self.s3.stop()
            st, body = create(b, name="while s3 is down")
            self.assertEqual(st, 502, body)
            self.assertIn("storage", body["error"])
            # nothing left in Redis: no REPL, no quota slot used
            self.assertEqual(self.redis.call("KEYS", "devex:replMeta:*"), [])
            self.assertEqual(self.redis.call("KEYS", "devex:activeSession:*"), [])
            self.assertEqual(self.redis.call("SCARD", "devex:userRepls:dev_" + USER), 0)
            self.assertEqual(b.get("/api/repl").body, b"[]")
            # S3 back: the default quota (2) is all there, and the refused
            # create left no object under repl/
            self.s3.start()
            self.assertEqual(self.s3.keys("repl/"), [])
            made = []
            for name in ("one", "two"):
                st, body = create(b, name=name)
                self.assertEqual(st, 201, body)
                made.append(body["id"])
            self.assertEqual(create(b, name="three")[0], 429)
            self.assertEqual(sorted({k.split("/")[2] for k in self.s3.keys("repl/")}), sorted(made))
            self.assertTrue(d.logs(), "no log")
            self.assertTrue(any(e.get("msg") == "repl create failed, rolling back" for e in d.logs()))


# ---------------------------------------------------------------------------
# b. Kubernetes API down during start
# ---------------------------------------------------------------------------

class KubeDownDuringStartTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="devexd-lcf-kdown-")
        self.redis = RedisServer().__enter__()

    def tearDown(self):
        self.redis.__exit__(None, None, None)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_start_with_the_api_server_unreachable(self):
        cert, _ = harness.make_tls_cert(self.tmp)
        closed = harness.free_port()  # nothing listens there
        kubeconfig = os.path.join(self.tmp, "kubeconfig")
        with open(kubeconfig, "w") as f:
            f.write(k8s_harness.kubeconfig_text("https://127.0.0.1:%d" % closed, "t" * 32, ca_file=cert,
                                                namespace="repls"))
        store_dir = os.path.join(self.tmp, "bucket")
        os.mkdir(store_dir)
        policy = write_policy(os.path.join(self.tmp, "policy.lua"),
                              "return { cleanup = { sweep_interval = 3600 } }\n")
        conf = base_config(self.redis, policy)
        conf.update({"storage": {"driver": "fs", "dir": store_dir}, "runtime": {"driver": "kubernetes"},
                     "kube": {"config_path": kubeconfig, "namespace": "repls"}})
        with Devexd(app=None, threads=2, config=conf) as d:
            d.sync_templates()
            b = dev_login(self, d)
            st, repl = create(b, name="k8s down", template="node")
            self.assertEqual(st, 201, repl)
            rid = repl["id"]
            for attempt in range(2):  # and again: the failure left nothing that blocks a retry
                r = b.get("/api/repl/session/" + rid)
                self.assertIn(r.status, (502, 503), r.body)
                err = r.json()["error"]
                self.assertIn("start failed", err)
                self.assertIn("kubernetes", err)
                self.assertEqual(self.redis.call("HGET", "devex:replMeta:" + rid, "state"), b"created")
                self.assertEqual(self.redis.call("EXISTS", "devex:activeSession:" + rid), 0)
                self.assertEqual(self.redis.call("ZSCORE", "devex:sessions:activity", rid), None)
            self.assertIs(b.get("/api/repl").json()[0]["isActive"], False)


# ---------------------------------------------------------------------------
# c, d, e: on a real control plane
# ---------------------------------------------------------------------------

class SweepOnKubernetesTest(k8s_harness.NamespacePerTest, unittest.TestCase):
    ns_prefix = "lcf"

    def devexd(self, cleanup, workload=None):
        policy_lua = "return { cleanup = { %s }%s }\n" % (
            ", ".join("%s = %s" % kv for kv in cleanup.items()),
            (", workload = { %s }" % ", ".join("%s = %s" % kv for kv in workload.items())) if workload else "")
        policy = write_policy(os.path.join(self.tmp, "policy-%s.lua" % self.ns), policy_lua)
        kubeconfig = self.kc.write_kubeconfig(os.path.join(self.tmp, "kubeconfig-" + self.ns), namespace=self.ns)
        conf = base_config(self.redis, policy)
        conf.update({"storage": {"driver": "fs", "dir": self.store_dir}, "runtime": {"driver": "kubernetes"},
                     "kube": {"config_path": kubeconfig, "namespace": self.ns},
                     "runner": {"cluster_ip": "runners.example.test"}})
        self.d = Devexd(app=None, threads=2, config=conf).__enter__()
        self.d.sync_templates()
        return self.d

    def deployments(self, selector="app.kubernetes.io/managed-by=devexd"):
        items = self.api.get(k8s_harness.api_path("apps/v1", "deployments", self.ns),
                             query={"labelSelector": selector})["items"]
        return sorted(o["metadata"]["name"] for o in items)

    def state(self, rid):
        v = self.redis.call("HGET", "devex:replMeta:" + rid, "state")
        return v.decode() if v else None

    def sweep_runs(self, since=0):
        return [e for e in self.d.logs()[since:] if e.get("msg") == "sweep"]

    # c ----------------------------------------------------------------------
    def test_redis_restarted_during_a_start(self):
        d = self.devexd({"orphan_grace": 1, "sweep_interval": 0.3}, workload={"start_timeout": 15})
        b = dev_login(self, d)
        st, repl = create(b, name="redis restart", template="node")
        self.assertEqual(st, 201, repl)
        rid = repl["id"]
        self.kc.kubelet.never_ready(namespace=self.ns)
        t, res = harness.in_thread(d.request, "GET", "/api/repl/session/" + rid,
                                   headers={"Cookie": b.cookie_header()}, timeout=120)
        poll(lambda: self.deployments() == [rid], "the start to apply the Deployment")
        poll(lambda: self.state(rid) == "starting", "the REPL to be starting")
        self.redis.stop()
        self.redis.start()  # same port, empty: the REPL, its session cookie and the sweep lock are gone
        # devexd reconnects at once and may already have written its own keys (the sweep lock, the
        # replica registry); what matters is that nothing of this REPL survived the restart
        keys = sorted(k.decode() for k in self.redis.call("KEYS", "*"))
        self.assertEqual([k for k in keys if rid in k], [], keys)
        self.assertEqual(self.redis.call("EXISTS", "devex:replMeta:" + rid), 0, keys)
        # the Deployment is now owned by nothing in Redis: the sweep removes it
        poll(lambda: self.deployments() == [], "the sweep to remove the orphan Deployment", timeout=30)
        d.wait_log(lambda e: e.get("msg") == "sweep removed an orphan workload" and e.get("repl") == rid,
                   what="the sweep's orphan log line", timeout=10)
        t.join(60)
        self.assertFalse(t.is_alive(), "the start never answered")
        self.assertNotIn("error", res, res.get("error"))
        r = res["value"]
        self.assertGreaterEqual(r.status, 500, r.body)
        self.assertIn("error", r.json())
        # nothing came back to life: no REPL, no Deployment
        self.assertEqual(self.redis.call("EXISTS", "devex:replMeta:" + rid), 0)
        self.assertEqual(self.deployments(), [])

    # d ----------------------------------------------------------------------
    def test_sweep_removes_an_orphan_and_keeps_a_live_session(self):
        d = self.devexd({"orphan_grace": 1, "sweep_interval": 0.3})
        b = dev_login(self, d)
        st, repl = create(b, name="live", template="python")
        self.assertEqual(st, 201, repl)
        live = repl["id"]
        r = b.get("/api/repl/session/" + live)
        self.assertEqual(r.status, 200, r.body)
        orphan = "repl-" + str(uuid.uuid4())
        labels = {"app.kubernetes.io/managed-by": "devexd", "devex.io/repl": orphan, "devex.io/user": "nobody"}
        self.api.post(k8s_harness.api_path("apps/v1", "deployments", self.ns), {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": orphan, "namespace": self.ns, "labels": labels},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"devex.io/repl": orphan}},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "runner", "image": "devex/runner-node"}]}}},
        })
        self.assertEqual(self.deployments(), sorted([live, orphan]))
        self.assertEqual(self.redis.call("EXISTS", "devex:replMeta:" + orphan), 0)
        poll(lambda: self.deployments() == [live], "the sweep to remove the orphan Deployment")
        d.wait_log(lambda e: e.get("msg") == "sweep removed an orphan workload" and e.get("repl") == orphan,
                   what="the sweep's orphan log line")
        # a few more sweeps: the live session's Deployment stays, the session runs
        mark = d.mark()
        poll(lambda: len(self.sweep_runs(mark)) >= 3, "three more sweeps")
        self.assertEqual(self.deployments(), [live])
        self.assertEqual(self.state(live), "running")
        self.assertEqual(self.redis.call("EXISTS", "devex:activeSession:" + live), 1)
        self.assertFalse([e for e in d.logs() if e.get("msg") == "sweep removed an orphan workload"
                          and e.get("repl") == live])
        r = b.request("DELETE", "/api/repl/session/" + live, headers=JSON)
        self.assertEqual(r.status, 200, r.body)
        poll(lambda: self.deployments() == [], "the stopped session's Deployment to go")

    # e ----------------------------------------------------------------------
    def test_sweep_retries_a_repl_stuck_in_stopping(self):
        d = self.devexd({"stuck_after": 1, "sweep_interval": 0.3})
        b = dev_login(self, d)
        st, repl = create(b, name="stuck", template="node")
        self.assertEqual(st, 201, repl)
        rid = repl["id"]
        r = b.get("/api/repl/session/" + rid)
        self.assertEqual(r.status, 200, r.body)
        rule = self.kc.kubelet.ephemeral_exit_code(3, namespace=self.ns)
        r = b.request("DELETE", "/api/repl/session/" + rid, headers=JSON)
        self.assertEqual(r.status, 502, r.body)
        self.assertIn("exit code 3", r.json()["error"])
        self.assertEqual(self.state(rid), "stopping")
        self.assertEqual(self.deployments(), [rid], "the workload was deleted before the files were saved")
        self.kc.kubelet.remove_rule(rule)
        poll(lambda: self.state(rid) == "stopped", "the sweep to stop the stuck REPL", timeout=60)
        poll(lambda: self.deployments() == [], "the Deployment to go")
        self.assertEqual(self.redis.call("EXISTS", "devex:activeSession:" + rid), 0)
        d.wait_log(lambda e: e.get("msg") == "sweep repaired a stuck repl" and e.get("repl") == rid,
                   what="the sweep's repair log line")


if __name__ == "__main__":
    harness.main()
