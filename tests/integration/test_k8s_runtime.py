"""REPL sessions on a real Kubernetes API server (lua/runtime/kubernetes.lua,
policy.workload, policy.sync): the whole flow as the frontend does it against
kube-apiserver 1.20 with the controller manager and the simulated kubelet of
k8s_harness: sign in, list (empty), create, start (the pod becomes Ready:
the default readiness probe GET /ping on 8081 passes against the runner
stand-in), stop (the uploader exits 0; every object gone), start again,
delete. The default exposure is the gateway: a Deployment and a Service, no
Ingress or Middleware (ingress mode: test_workload_render.py). Also:
the uploader failing (workload kept, REPL stopping, a retry succeeds), an
image that cannot be pulled (502 with the reason, nothing left), two
concurrent starts (one Deployment)."""

import json
import os
import re
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd, RedisServer  # noqa: E402
from fakes.github_fake import GitHubFake  # noqa: E402
import test_repl  # noqa: E402
from test_auth import FRONTEND, GH_REDIRECT  # noqa: E402
import k8s_harness  # noqa: E402

JSON = {"Content-Type": "application/json"}
NS = "repls"
KINDS = [("apps/v1", "deployments"), ("v1", "services"), ("networking.k8s.io/v1", "ingresses"),
         ("traefik.io/v1alpha1", "middlewares")]



def cluster_config(cls, kubeconfig, namespace):
    """The shipped app's config for a test class that started cls.redis and
    cls.gh: production, fs storage in cls.store_dir, runtime kubernetes on the
    cluster of kubeconfig, REPLs in namespace."""
    return {
        "environment": "production", "allow_insecure_http": True, "frontend_url": FRONTEND,
        "redis": {"url": cls.redis.url(), "timeout": 2},
        "github": cls.gh.config(GH_REDIRECT),
        "storage": {"driver": "fs", "dir": cls.store_dir},
        "runtime": {"driver": "kubernetes"},
        "kube": {"config_path": kubeconfig, "namespace": namespace},
        "runner": {"cluster_ip": "runners.example.test", "domain": "runners.example.test"},
    }

def label_value(s):
    """policy.workload.label_value: what a REPL's owner looks like as a label value."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", s)[:63].strip("._-")


class K8sRuntimeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="devexd-k8srt-")
        cls.store_dir = os.path.join(cls.tmp, "bucket")
        os.mkdir(cls.store_dir)
        cls.kc = k8s_harness.KubeCluster().__enter__()
        cls.kc.create_namespace(NS)
        kubeconfig = cls.kc.write_kubeconfig(os.path.join(cls.tmp, "kubeconfig"))
        cls.redis = RedisServer().__enter__()
        cls.gh = GitHubFake().__enter__()
        cls.d = Devexd(app=None, threads=2, config=cluster_config(cls, kubeconfig, NS)).__enter__()
        cls.d.sync_templates()

    @classmethod
    def tearDownClass(cls):
        harness.stop_class_servers(cls, "d", "gh", "redis", "kc")

    def setUp(self):
        self.redis.call("FLUSHALL")
        self.kc.kubelet.clear_rules()

    def login(self):
        return test_repl.ReplTest.login(self)

    def create(self, b, **kw):
        return test_repl.ReplTest.create(self, b, **kw)

    def objects(self, rid):
        api = self.kc.client(user="admin")
        out = {}
        for version, plural in KINDS:
            items = api.get(k8s_harness.api_path(version, plural, NS),
                            query={"labelSelector": "devex.io/repl=" + rid})["items"]
            out[plural] = items
        return out

    def wait_gone(self, rid, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            objs = self.objects(rid)
            left = {k: [o["metadata"]["name"] for o in v] for k, v in objs.items() if v}
            if not left:
                return
            self.assertLess(time.monotonic(), deadline, "objects left: %r" % left)
            time.sleep(0.2)

    def state(self, rid):
        v = self.redis.call("HGET", "devex:replMeta:" + rid, "state")
        return v.decode() if v else None

    def test_whole_flow(self):
        b = self.login()
        self.assertEqual(b.get("/api/repl").body, b"[]")
        st, repl = self.create(b, name="k8s", template="node")
        self.assertEqual(st, 201, repl)
        rid = repl["id"]
        r = b.get("/api/repl/session/" + rid)
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json(), {"replId": rid, "replName": "k8s",
                                    "url": "https://runners.example.test/%s/" % rid})
        objs = self.objects(rid)
        owner = self.redis.call("HGET", "devex:replMeta:" + rid, "user").decode()
        for plural in ("deployments", "services"):
            self.assertEqual(len(objs[plural]), 1, plural)
            labels = objs[plural][0]["metadata"]["labels"]
            self.assertEqual(labels["app.kubernetes.io/managed-by"], "devexd")
            self.assertEqual(labels["devex.io/user"], label_value(owner))
        for plural in ("ingresses", "middlewares"):  # gateway mode: devexd serves the runner domain
            self.assertEqual(objs[plural], [], plural)
        dep = objs["deployments"][0]
        refs = objs["services"][0]["metadata"].get("ownerReferences") or []
        self.assertEqual([(o["kind"], o["uid"]) for o in refs], [("Deployment", dep["metadata"]["uid"])])
        self.assertEqual([(p["name"], p["port"]) for p in objs["services"][0]["spec"]["ports"]],
                         [("http", 8081), ("grpc", 50051)])
        pod_spec = dep["spec"]["template"]["spec"]
        self.assertFalse(pod_spec["automountServiceAccountToken"])
        runner = pod_spec["containers"][0]
        self.assertEqual(runner["image"], "ghcr.io/parthkapoor-dev/devex/runner-node:latest")
        self.assertEqual(runner["imagePullPolicy"], "Always")
        self.assertEqual([p["containerPort"] for p in runner["ports"]], [8081, 50051])
        probe = runner["readinessProbe"]["httpGet"]
        self.assertEqual((probe["path"], probe["port"]), ("/ping", 8081))
        env = {e["name"]: e for e in runner["env"]}
        self.assertEqual(env["REPL_ID"]["value"], rid)
        self.assertIn("RUNNER_TOKEN", env)
        # the session records where the runner is (the gateway's upstream) and what stop needs
        sess = self.redis.call("HGETALL", "devex:activeSession:" + rid)
        sess = {sess[i].decode(): sess[i + 1].decode() for i in range(0, len(sess), 2)}
        self.assertTrue(sess["endpoint"].endswith(":8081"), sess)
        self.assertEqual(sess["k8s_selector"], "devex.io/repl=" + rid)
        self.assertEqual(sess["k8s_deployment"], rid)
        init_env = {e["name"]: e for e in pod_spec["initContainers"][0]["env"]}
        # no storage credential in the pod: the init container has the runner token and the callback only
        self.assertEqual(sorted(init_env), ["CALLBACK_URL", "RUNNER_TOKEN"])
        self.assertEqual(init_env["RUNNER_TOKEN"]["value"], env["RUNNER_TOKEN"]["value"])
        self.assertNotIn("secretKeyRef", json.dumps(pod_spec))
        self.assertNotIn("AWS_", json.dumps(pod_spec))
        self.assertEqual(self.state(rid), "running")
        self.assertIs(b.get("/api/repl").json()[0]["isActive"], True)
        # stop: the uploader runs, exits 0, everything is deleted
        r = b.request("DELETE", "/api/repl/session/" + rid, headers=JSON)
        self.assertEqual(r.status, 200, r.body)
        self.wait_gone(rid)
        self.assertEqual(self.state(rid), "stopped")
        # start again, then delete the REPL
        r = b.get("/api/repl/session/" + rid)
        self.assertEqual(r.status, 200, r.body)
        r = b.request("DELETE", "/api/repl/" + rid, headers=JSON)
        self.assertEqual(r.status, 200, r.body)
        self.wait_gone(rid)
        self.assertEqual(self.redis.call("EXISTS", "devex:replMeta:" + rid), 0)
        self.assertEqual(b.get("/api/repl").body, b"[]")

    def test_uploader_failure_keeps_the_workload(self):
        b = self.login()
        st, repl = self.create(b, name="fails", template="python")
        rid = repl["id"]
        self.assertEqual(b.get("/api/repl/session/" + rid).status, 200)
        rule = self.kc.kubelet.ephemeral_exit_code(3, namespace=NS)
        r = b.request("DELETE", "/api/repl/session/" + rid, headers=JSON)
        self.assertEqual(r.status, 502, r.body)
        self.assertIn("exit code 3", r.json()["error"])
        self.assertEqual(self.state(rid), "stopping")
        self.assertEqual(len(self.objects(rid)["deployments"]), 1, "the workload was deleted before the files were saved")
        # every credential in the pod, read back from the API server: the init
        # container's runner token and the uploader's save token open this
        # REPL's storage broker only (with the fs driver devexd serves the bytes)
        api = self.kc.client(user="admin")
        pods = api.get(k8s_harness.api_path("v1", "pods", NS), query={"labelSelector": "devex.io/repl=" + rid})["items"]
        spec = pods[0]["spec"]
        self.assertNotIn("secretKeyRef", json.dumps(spec))
        self.assertNotIn("AWS_", json.dumps(spec))
        up_env = {e["name"]: e["value"] for e in spec["ephemeralContainers"][0]["env"]}
        init_env = {e["name"]: e["value"] for e in spec["initContainers"][0]["env"]}
        self.assertEqual(sorted(up_env), ["CALLBACK_URL", "RUNNER_TOKEN"])
        self.assertTrue(up_env["CALLBACK_URL"].endswith("/api/runner/" + rid))
        st2, other = self.create(b, name="other", template="python")
        for tok in (up_env["RUNNER_TOKEN"], init_env["RUNNER_TOKEN"]):
            hdr = {"Authorization": "Bearer " + tok}
            r = self.d.request("GET", "/api/runner/%s/files" % rid, headers=hdr)
            self.assertEqual(r.status, 200, r.body)
            # the fs driver's broker serves the bytes itself, under this REPL's routes only
            for f in json.loads(r.body)["files"]:
                self.assertIn("/api/runner/%s/blob/" % rid, f["url"])
            self.assertEqual(self.d.request("GET", "/api/runner/%s/files" % other["id"], headers=hdr).status, 401)
        self.kc.kubelet.remove_rule(rule)
        r = b.request("DELETE", "/api/repl/session/" + rid, headers=JSON)
        self.assertEqual(r.status, 200, r.body)
        self.wait_gone(rid)
        self.assertEqual(self.state(rid), "stopped")

    def test_image_pull_failure(self):
        b = self.login()
        st, repl = self.create(b, name="badimage", template="go")
        rid = repl["id"]
        self.kc.kubelet.fail_image(namespace=NS)
        r = b.get("/api/repl/session/" + rid)
        self.assertEqual(r.status, 502, r.body)
        self.assertRegex(r.json()["error"], "ErrImagePull|ImagePullBackOff")
        self.wait_gone(rid)
        self.assertEqual(self.state(rid), "created")
        self.assertEqual(self.redis.call("EXISTS", "devex:activeSession:" + rid), 0)

    def test_concurrent_starts_make_one_deployment(self):
        b = self.login()
        st, repl = self.create(b, name="twice", template="node")
        rid = repl["id"]
        out = []
        lock = threading.Lock()

        def start():
            r = b.get("/api/repl/session/" + rid)
            with lock:
                out.append(r.status)

        ts = [threading.Thread(target=start) for _ in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        self.assertEqual(out, [200, 200])
        self.assertEqual(len(self.objects(rid)["deployments"]), 1)
        self.assertEqual(b.request("DELETE", "/api/repl/" + rid, headers=JSON).status, 200)
        self.wait_gone(rid)


if __name__ == "__main__":
    harness.main()
