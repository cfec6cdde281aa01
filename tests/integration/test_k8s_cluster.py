"""Smoke test of the Kubernetes test cluster itself (k8s_harness.KubeCluster):
a real kube-apiserver and kube-controller-manager 1.20.2 on etcd, with the
simulated kubelet. It checks what the devexd Kubernetes tests rely on: the
controller manager turns a Deployment into a ReplicaSet and a Pod, the
kubelet makes the pod Ready, deleting the Deployment cascades to the pod
(garbage collector, kubelet finishing the deletion), the Traefik Middleware
CRD accepts objects, ephemeral containers terminate with the configured exit
code, RBAC denies the limited user, service account tokens authenticate.

The binaries come from tests/k8s/build.sh; without them this test FAILS
(k8s_harness.KubeBinariesMissing) rather than skips.
"""

import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import k8s_harness  # noqa: E402
from k8s_harness import ApiError, api_path  # noqa: E402

NS = "smoke"


def deployment(name, labels, replicas=1, annotations=None):
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": annotations or {}},
                "spec": {
                    "initContainers": [{"name": "fetch", "image": "busybox:1.36", "command": ["true"]}],
                    "containers": [{"name": "runner", "image": "devex/runner:test",
                                    "ports": [{"containerPort": 8080}]}],
                },
            },
        },
    }


def pod(name, annotations=None, labels=None):
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": annotations or {}, "labels": labels or {}},
            "spec": {"containers": [{"name": "main", "image": "devex/runner:test"}]}}


class KubeClusterSmoke(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.kc = k8s_harness.KubeCluster(lease_interval=1.0)
        cls.kc.__enter__()
        sys.stderr.write("k8s cluster started in %.1f s (%s)\n" % (
            cls.kc.start_seconds, ", ".join("%s %.1f" % kv for kv in cls.kc.timings.items())))
        cls.api = cls.kc.api
        cls.kc.create_namespace(NS)

    @classmethod
    def tearDownClass(cls):
        result = getattr(cls, "_result", None)
        failed = result is not None and not result.wasSuccessful()
        cls.kc.__exit__(AssertionError if failed else None, None, None)  # failed: log tails to stderr

    def run(self, result=None):
        type(self)._result = result
        return super().run(result)

    def wait(self, fn, what, timeout=60):
        return self.kc.wait_for(fn, what, timeout=timeout)

    # ---- controller manager + kubelet + garbage collector ----

    def test_deployment_replicaset_pod_ready_and_cascading_delete(self):
        labels = {"app": "smoke-web"}
        d = self.api.post(api_path("apps/v1", "deployments", NS), deployment("web", labels))

        def rs_owned():
            items = self.api.get(api_path("apps/v1", "replicasets", NS), query={"labelSelector": "app=smoke-web"})["items"]
            return [r for r in items if any(o["uid"] == d["metadata"]["uid"] for o in r["metadata"].get("ownerReferences", []))]
        rs = self.wait(rs_owned, "a ReplicaSet owned by the Deployment")[0]

        pods = self.kc.wait_pod_ready(NS, label_selector="app=smoke-web")
        p = pods[0]
        self.assertEqual(p["metadata"]["ownerReferences"][0]["uid"], rs["metadata"]["uid"])
        self.assertEqual(p["spec"]["nodeName"], k8s_harness.NODE_NAME)
        self.assertEqual(p["status"]["phase"], "Running")
        # the pod's own loopback address, where the kubelet runs its runner stand-in
        self.assertTrue(p["status"]["podIP"].startswith("127.") and p["status"]["podIP"] != "127.0.0.1", p["status"])
        self.assertEqual(p["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"], 0)
        self.assertTrue(p["status"]["containerStatuses"][0]["ready"])

        self.wait(lambda: self.api.get(api_path("apps/v1", "deployments", NS, "web"))
                  .get("status", {}).get("availableReplicas") == 1, "deployment available")

        self.api.delete(api_path("apps/v1", "deployments", NS, "web"), propagation="Background")
        self.wait(lambda: not rs_owned(), "the ReplicaSet collected")
        self.wait(lambda: not self.api.get(api_path("v1", "pods", NS), query={"labelSelector": "app=smoke-web"})["items"],
                  "the pod deleted (garbage collector, then the kubelet's grace-0 delete)")

    def test_failing_image_never_ready(self):
        self.api.post(api_path("v1", "pods", NS), pod("badimage", {"devex.test/fail-image": "true"}))

        def pulling():
            p = self.api.get(api_path("v1", "pods", NS, "badimage"))
            cs = p.get("status", {}).get("containerStatuses") or []
            return cs and cs[0]["state"].get("waiting", {}).get("reason") == "ImagePullBackOff" and p
        p = self.wait(pulling, "ImagePullBackOff")
        self.assertEqual(p["status"]["phase"], "Pending")
        self.assertFalse(k8s_harness.pod_is_ready(p))
        self.api.delete(api_path("v1", "pods", NS, "badimage"))
        self.wait(lambda: self.api.get_or_none(api_path("v1", "pods", NS, "badimage")) is None, "pod gone")

    # ---- CRD ----

    def test_traefik_middleware_crd(self):
        mw = {"apiVersion": "traefik.io/v1alpha1", "kind": "Middleware",
              "metadata": {"name": "strip", "labels": {"app.kubernetes.io/managed-by": "devexd"}},
              "spec": {"stripPrefix": {"prefixes": ["/repl/abc"]}}}
        path = "/apis/traefik.io/v1alpha1/namespaces/%s/middlewares" % NS
        self.api.post(path, mw)
        got = self.api.get(path + "/strip")
        self.assertEqual(got["spec"]["stripPrefix"]["prefixes"], ["/repl/abc"])
        self.assertEqual(len(self.api.get(path, query={"labelSelector": "app.kubernetes.io/managed-by=devexd"})["items"]), 1)
        self.api.delete(path + "/strip")

    # ---- ephemeral containers ----

    def add_ephemeral(self, pod_name, cname):
        # Kubernetes 1.20: the subresource takes an EphemeralContainers object
        # (1.22+ takes a Pod); a strategic merge patch appends by name.
        return self.api.patch(api_path("v1", "pods", NS, pod_name, "ephemeralcontainers"),
                              {"ephemeralContainers": [{"name": cname, "image": "amazon/aws-cli:2",
                                                        "command": ["sh", "-c", "exit 0"],
                                                        "targetContainerName": "main",
                                                        "terminationMessagePolicy": "File"}]},
                              patch_type="strategic")

    def eph_terminated(self, pod_name, cname):
        def get():
            p = self.api.get(api_path("v1", "pods", NS, pod_name))
            for s in p.get("status", {}).get("ephemeralContainerStatuses") or []:
                if s["name"] == cname and "terminated" in s["state"]:
                    return s["state"]["terminated"]
        return self.wait(get, "ephemeral container %s terminated" % cname)

    def test_ephemeral_container_exit_codes(self):
        self.api.post(api_path("v1", "pods", NS), pod("eph", labels={"app": "eph"}))
        self.kc.wait_pod_ready(NS, name="eph")
        self.add_ephemeral("eph", "sync")
        self.assertEqual(self.eph_terminated("eph", "sync")["exitCode"], 0)
        # a non-zero exit code for one container name, set from the test
        rid = self.kc.kubelet.ephemeral_exit_code(3, container="sync2", namespace=NS, labels={"app": "eph"})
        try:
            self.add_ephemeral("eph", "sync2")
            t = self.eph_terminated("eph", "sync2")
            self.assertEqual((t["exitCode"], t["reason"]), (3, "Error"))
        finally:
            self.kc.kubelet.remove_rule(rid)
        p = self.api.get(api_path("v1", "pods", NS, "eph"))
        self.assertTrue(k8s_harness.pod_is_ready(p), "the pod stays ready")
        self.api.delete(api_path("v1", "pods", NS, "eph"))

    # ---- authentication and authorization ----

    def test_limited_user_is_forbidden(self):
        limited = self.kc.client(user="limited")
        with self.assertRaises(ApiError) as cm:
            limited.get(api_path("v1", "pods", NS))
        self.assertEqual((cm.exception.status, cm.exception.reason), (403, "Forbidden"))
        self.assertEqual(self.kc.client(token="not-a-token").request("GET", "/api/v1/namespaces").status, 401)
        # granted a role, the same user may list pods there, and only there
        self.kc.grant("user:limited", [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}], namespace=NS)
        self.wait(lambda: limited.request("GET", api_path("v1", "pods", NS)).status == 200, "RBAC grant effective", 10)
        self.assertEqual(limited.request("GET", api_path("v1", "pods", "default")).status, 403)

    def test_service_account_token(self):
        token = self.kc.service_account_token(NS, "devexd")
        review = self.api.post("/apis/authentication.k8s.io/v1/tokenreviews",
                               {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                                "spec": {"token": token}})
        self.assertTrue(review["status"]["authenticated"], review)
        self.assertEqual(review["status"]["user"]["username"], "system:serviceaccount:%s:devexd" % NS)
        r = self.kc.client(token=token).request("GET", api_path("v1", "pods", NS))
        self.assertEqual(r.status, 403)  # authenticated, no RBAC yet
        self.assertIn(b"system:serviceaccount:smoke:devexd", r.body)

    def test_kubeconfig_and_node(self):
        with open(self.kc.kubeconfig) as f:
            text = f.read()
        self.assertIn("server: " + self.kc.server, text)
        self.assertIn("certificate-authority: " + self.kc.ca_file, text)
        node = self.api.get("/api/v1/nodes/" + k8s_harness.NODE_NAME)
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"][0]
        self.assertEqual(ready["status"], "True")
        lease_path = api_path("coordination.k8s.io/v1", "leases", "kube-node-lease", k8s_harness.NODE_NAME)
        first = self.api.get(lease_path)["spec"]["renewTime"]
        self.wait(lambda: self.api.get(lease_path)["spec"]["renewTime"] != first, "lease renewed", 15)
        self.assertEqual(self.kc.kubelet.errors, [])


if __name__ == "__main__":
    unittest.main(verbosity=2)
