"""Integration tests of devex.k8s (src/k8s.c, src/k8s_config.c) and the Lua
client (lua/k8s/client.lua), through the test app apps/k8sapp.lua.

Three groups:
  * ConfigTests: connection config as devexd loads it (kubeconfig variants,
    in-cluster, explicit settings, exec plugin refused), no server needed.
  * FakeAPITests: the client against a small scripted fake of the API server
    (plain HTTP on loopback) for what a real server cannot be made to do on
    demand: 429 with Retry-After, 503, connection errors, 410 Gone during a
    watch, the >= 1.22 ephemeral-container path, and proof that bad input
    sends no request.
  * ClusterTests: the real kube-apiserver and simulated kubelet of
    tests/integration/k8s_harness.py (KubeCluster): create/get/list/patch/
    apply/delete of Deployment, Service, Ingress and a Traefik Middleware,
    409, 404, apply idempotence, cascading delete, watch/wait for Ready,
    410 Gone from an old resourceVersion, ephemeral containers (exit 0 and
    non-zero), RBAC 403, HTTP/2.

Run: python3 tests/integration/test_k8s.py   (DEVEXD_BIN picks the binary)
"""

import base64
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


def post(d, path, body, timeout=120):
    r = d.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"}, timeout=timeout)
    if r.status != 200:
        raise AssertionError("%s answered %d: %r" % (path, r.status, r.body[:2000]))
    return r.json()


# ---------------------------------------------------------------------------
# a scripted fake API server


CORE_RESOURCES = {
    "kind": "APIResourceList", "groupVersion": "v1",
    "resources": [
        {"name": "pods", "namespaced": True, "kind": "Pod", "verbs": ["get", "list", "create", "delete", "patch", "watch"]},
        {"name": "pods/status", "namespaced": True, "kind": "Pod", "verbs": ["get", "patch"]},
        {"name": "pods/ephemeralcontainers", "namespaced": True, "kind": "Pod", "verbs": ["get", "patch", "update"]},
        {"name": "services", "namespaced": True, "kind": "Service", "verbs": ["get", "list", "create", "delete"]},
        {"name": "namespaces", "namespaced": False, "kind": "Namespace", "verbs": ["get", "list", "create"]},
        {"name": "configmaps", "namespaced": True, "kind": "ConfigMap", "verbs": ["get", "list", "create", "delete", "watch"]},
    ],
}
APPS_RESOURCES = {
    "kind": "APIResourceList", "groupVersion": "apps/v1",
    "resources": [{"name": "deployments", "namespaced": True, "kind": "Deployment", "verbs": ["get", "list", "create"]}],
}


def status(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": message}


class Watch:
    """A watch answer: these events as JSON lines, sent after `hold` seconds."""

    def __init__(self, *events, hold=0):
        self.events = events
        self.hold = hold


class FakeAPI:
    """A scripted Kubernetes API: discovery and /version answer by default;
    a test queues answers per (method, path) with script(); every request is
    recorded (method, path, query, headers, body)."""

    def __init__(self, version=("1", "25")):
        self.version = version
        self.requests = []
        self.scripts = {}
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                path, _, query = self.path.partition("?")
                rec = {"method": self.command, "path": path, "query": query,
                       "headers": {k.lower(): v for k, v in self.headers.items()},
                       "body": body.decode("utf-8", "replace")}
                with fake.lock:
                    fake.requests.append(rec)
                    q = fake.scripts.get((self.command, path))
                    answer = q.pop(0) if q else None
                if isinstance(answer, tuple) and answer and answer[0] == "slow":
                    time.sleep(answer[1])  # ("slow", seconds): the default answer, late
                    answer = None
                if answer is None:
                    answer = fake.default(self.command, path)
                if answer == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                code, obj, headers = answer if len(answer) == 3 else (answer[0], answer[1], {})
                if isinstance(obj, Watch):
                    data = "".join(json.dumps(e) + "\n" for e in obj.events).encode()  # a watch stream
                    time.sleep(obj.hold)
                else:
                    data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]

    def default(self, method, path):
        if path == "/api/v1":
            return 200, CORE_RESOURCES
        if path == "/apis/apps/v1":
            return 200, APPS_RESOURCES
        if path == "/version":
            return 200, {"major": self.version[0], "minor": self.version[1], "gitVersion": "v%s.%s.0" % self.version}
        return 404, status(404, "NotFound", "%s not found" % path)

    def script(self, method, path, *answers):
        with self.lock:
            self.scripts.setdefault((method, path), []).extend(answers)

    def reset(self):
        with self.lock:
            self.requests = []
            self.scripts = {}

    def count(self, method, path):
        return len([r for r in self.requests if r["method"] == method and r["path"] == path])

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def pod(name, ns="default", rv="1", ready=False, eph=None):
    p = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "resourceVersion": rv},
         "spec": {"containers": [{"name": "main", "image": "x"}]}, "status": {"conditions": []}}
    if ready:
        p["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    if eph:
        p["status"]["ephemeralContainerStatuses"] = eph
    return p


def pod_list(items, rv="10"):
    return {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": rv}, "items": items}


class FakeAPITests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.api = FakeAPI()
        cls.d = harness.Devexd(app="k8sapp", max_body=1 << 20)
        cls.d.__enter__()
        cls.conf = {"server": cls.api.url, "token": "sekret", "backoff": 0.01, "max_attempts": 4}

    @classmethod
    def tearDownClass(cls):
        cls.d.__exit__(None, None, None)
        cls.api.close()

    def setUp(self):
        self.api.reset()

    def op(self, op, *args, conf=None):
        return post(self.d, "/op", {"conf": conf or self.conf, "op": op, "args": list(args)})

    def test_get_sends_token_and_accept(self):
        self.api.script("GET", "/api/v1/namespaces/default/pods/p1", (200, pod("p1")))
        r = self.op("get", {"apiVersion": "v1", "kind": "Pod", "name": "p1"})
        self.assertTrue(r["ok"], r)
        self.assertEqual(r["result"]["metadata"]["name"], "p1")
        req = [x for x in self.api.requests if x["path"].endswith("/pods/p1")][0]
        self.assertEqual(req["headers"]["authorization"], "Bearer sekret")
        self.assertEqual(req["headers"]["accept"], "application/json")

    def test_retry_429_honours_retry_after(self):
        path = "/api/v1/namespaces/default/pods/p1"
        self.api.script("GET", path, (429, status(429, "TooManyRequests", "slow down"), {"Retry-After": "1"}),
                        (200, pod("p1")))
        r = self.op("get", {"apiVersion": "v1", "kind": "Pod", "name": "p1"})
        self.assertTrue(r["ok"], r)
        self.assertEqual(self.api.count("GET", path), 2)
        self.assertGreaterEqual(r["elapsed"], 0.95)  # waited the Retry-After second

    def test_retry_5xx_and_connection_drop_for_idempotent(self):
        path = "/api/v1/namespaces/default/pods"
        self.api.script("GET", path, (503, status(503, "ServiceUnavailable", "busy")), "drop",
                        (200, pod_list([pod("a")])))
        r = self.op("list", {"apiVersion": "v1", "kind": "Pod"})
        self.assertTrue(r["ok"], r)
        self.assertEqual([i["metadata"]["name"] for i in r["result"]["items"]], ["a"])
        self.assertEqual(self.api.count("GET", path), 3)

    def test_no_retry_for_create_and_json_patch(self):
        path = "/api/v1/namespaces/default/pods"
        self.api.script("POST", path, (503, status(503, "ServiceUnavailable", "busy")), (201, pod("p")))
        r = self.op("create", pod("p"))
        self.assertFalse(r["ok"])
        self.assertEqual((r["err"]["code"], r["err"]["status"]), ("ServiceUnavailable", 503))
        self.assertEqual(self.api.count("POST", path), 1)
        ppath = path + "/p"
        self.api.script("PATCH", ppath, (500, status(500, "InternalError", "x")), (200, pod("p")))
        r = self.op("patch", {"apiVersion": "v1", "kind": "Pod", "name": "p"},
                    [{"op": "add", "path": "/metadata/labels", "value": {"a": "b"}}], {"type": "json"})
        self.assertFalse(r["ok"])
        self.assertEqual(self.api.count("PATCH", ppath), 1)
        req = [x for x in self.api.requests if x["method"] == "PATCH"][0]
        self.assertEqual(req["headers"]["content-type"], "application/json-patch+json")

    def test_retries_give_up(self):
        path = "/api/v1/namespaces/default/pods/p1"
        self.api.script("GET", path, *[(500, status(500, "InternalError", "boom"))] * 5)
        r = self.op("get", {"apiVersion": "v1", "kind": "Pod", "name": "p1"})
        self.assertEqual((r["err"]["code"], r["err"]["status"], r["err"]["message"]), ("InternalError", 500, "boom"))
        self.assertEqual(self.api.count("GET", path), 4)

    def test_list_follows_continue(self):
        path = "/api/v1/namespaces/team/pods"
        p1 = pod_list([pod("a"), pod("b")])
        p1["metadata"]["continue"] = "tok 1"
        self.api.script("GET", path, (200, p1), (200, pod_list([pod("c")], rv="11")))
        r = self.op("list", {"apiVersion": "v1", "kind": "Pod", "namespace": "team"},
                    {"label_selector": "app=x,tier in (a,b)", "field_selector": "status.phase=Running", "limit": 2})
        self.assertTrue(r["ok"], r)
        self.assertEqual([i["metadata"]["name"] for i in r["result"]["items"]], ["a", "b", "c"])
        self.assertEqual(r["result"]["items"][0]["kind"], "Pod")
        self.assertEqual(r["result"]["resourceVersion"], "11")
        qs = [x["query"] for x in self.api.requests if x["path"] == path]
        self.assertEqual(qs[0], "fieldSelector=status.phase%3DRunning&labelSelector=app%3Dx%2Ctier%20in%20%28a%2Cb%29&limit=2")
        self.assertIn("continue=tok%201", qs[1])

    def test_delete_options_and_gone(self):
        path = "/apis/apps/v1/namespaces/default/deployments/web"
        self.api.script("DELETE", path, (200, {"kind": "Status", "status": "Success"}),
                        (404, status(404, "NotFound", "deployments.apps \"web\" not found")))
        ref = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}
        r = self.op("delete", ref, {"propagation": "Foreground", "grace_period": 0})
        self.assertEqual(r["result"], "deleted")
        body = json.loads([x for x in self.api.requests if x["method"] == "DELETE"][0]["body"])
        self.assertEqual((body["propagationPolicy"], body["gracePeriodSeconds"]), ("Foreground", 0))
        r = self.op("delete", ref)
        self.assertEqual(r["result"], "gone")

    def test_bad_input_sends_nothing(self):
        cases = [
            ({"apiVersion": "v1", "metadata": {"name": "x"}}, "no kind"),
            ({"kind": "Pod", "metadata": {"name": "x"}}, "no apiVersion"),
            ({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "Bad_Name"}}, "invalid"),
            ({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a/b"}}, "invalid"),
            ({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "1svc"}}, "RFC 1035"),
            ({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x", "namespace": "Bad NS"}}, "namespace"),
            ({"apiVersion": "v1", "kind": "Pod", "metadata": {}}, "no metadata.name"),
            ({"apiVersion": "not a version", "kind": "Pod", "metadata": {"name": "x"}}, "apiVersion"),
        ]
        for obj, words in cases:
            r = self.op("create", obj)
            self.assertFalse(r["ok"], obj)
            self.assertEqual(r["err"]["code"], "invalid_input", r)
            self.assertIn(words, r["err"]["message"], r)
        self.assertEqual([x for x in self.api.requests if x["path"] != "/api/v1"], [])
        # an unknown kind: discovery only (asked twice: the cache is refreshed once), then a clear error
        r = self.op("create", {"apiVersion": "v1", "kind": "Gadget", "metadata": {"name": "x"}})
        self.assertEqual(r["err"]["code"], "invalid_input")
        self.assertIn("unknown kind", r["err"]["message"])
        r = self.op("get", {"apiVersion": "nope.example/v1", "kind": "Gadget", "name": "x"})
        self.assertIn("unknown group or version", r["err"]["message"])
        self.assertEqual({x["path"] for x in self.api.requests}, {"/api/v1", "/apis/nope.example/v1"})

    def test_discovery_is_fetched_once_for_concurrent_callers(self):
        """Six calls at once on a cold discovery cache: one GET of the group's
        resource list per worker, the others wait for its answer."""
        api = FakeAPI()
        self.addCleanup(api.close)
        api.script("GET", "/api/v1", *[("slow", 0.5)] * 6)
        for i in range(6):
            api.script("GET", "/api/v1/namespaces/default/pods/p%d" % i, (200, pod("p%d" % i)))
        conf = dict(self.conf, server=api.url)
        out = [None] * 6

        def get(i):
            out[i] = self.op("get", {"apiVersion": "v1", "kind": "Pod", "name": "p%d" % i}, conf=conf)
        threads = [threading.Thread(target=get, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertTrue(all(r and r["ok"] for r in out), out)
        self.assertEqual(api.count("GET", "/api/v1"), 1)

    def test_status_passthrough_422(self):
        path = "/api/v1/namespaces/default/pods"
        st = status(422, "Invalid", 'Pod "p" is invalid: spec.containers: Required value')
        st["details"] = {"name": "p", "kind": "Pod", "causes": [{"field": "spec.containers"}]}
        self.api.script("POST", path, (422, st))
        r = self.op("create", pod("p"))
        e = r["err"]
        self.assertEqual((e["code"], e["reason"], e["status"]), ("Invalid", "Invalid", 422))
        self.assertEqual(e["message"], st["message"])
        self.assertEqual(e["details"]["causes"][0]["field"], "spec.containers")
        self.assertTrue(e["str"].startswith("Invalid: Pod"), e["str"])

    def test_apply_content_type_and_query(self):
        path = "/api/v1/namespaces/default/configmaps/cm"
        self.api.script("PATCH", path, (503, status(503, "ServiceUnavailable", "x")), (200, {"kind": "ConfigMap"}))
        obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {"a": "1"}}
        r = self.op("apply", obj, {"force": True, "field_manager": "devexd-test"})
        self.assertTrue(r["ok"], r)
        reqs = [x for x in self.api.requests if x["method"] == "PATCH"]
        self.assertEqual(len(reqs), 2)  # apply is idempotent: retried
        self.assertEqual(reqs[1]["headers"]["content-type"], "application/apply-patch+yaml")
        self.assertEqual(reqs[1]["query"], "fieldManager=devexd-test&force=true")
        self.assertEqual(json.loads(reqs[1]["body"])["data"], {"a": "1"})

    def test_watch_410_relists(self):
        path = "/api/v1/namespaces/default/configmaps"
        ev = lambda t, n, rv: {"type": t, "object": {"metadata": {"name": n, "resourceVersion": rv}}}
        self.api.script("GET", path,
                        # watch from rv 1: one event, then ERROR 410
                        (200, Watch(ev("ADDED", "a", "5"),
                                    {"type": "ERROR", "object": status(410, "Expired", "too old resource version: 1")})),
                        # the fresh list
                        (200, {"kind": "ConfigMapList", "metadata": {"resourceVersion": "20"},
                               "items": [{"metadata": {"name": "a"}}, {"metadata": {"name": "b"}}]}),
                        # the new watch from 20
                        (200, Watch(ev("MODIFIED", "b", "21"))),
                        # the watch answers 410 at once: relist again
                        (410, status(410, "Gone", "gone")),
                        (200, {"kind": "ConfigMapList", "metadata": {"resourceVersion": "30"}, "items": []}),
                        (200, Watch(ev("DELETED", "a", "31"))))
        r = post(self.d, "/watch", {"conf": self.conf, "ref": {"apiVersion": "v1", "kind": "ConfigMap"},
                                    "opts": {"resource_version": "1", "timeout": 5}, "max_events": 5})
        self.assertTrue(r["ok"], r)
        types = [(e["type"], e.get("name"), e.get("names")) for e in r["events"]]
        self.assertEqual(types, [("ADDED", "a", None), ("RESYNC", None, ["a", "b"]), ("MODIFIED", "b", None),
                                 ("RESYNC", None, []), ("DELETED", "a", None)])
        self.assertEqual(r["relists"], 2)
        qs = [x["query"] for x in self.api.requests if x["path"] == path]
        self.assertIn("resourceVersion=1", qs[0])
        self.assertIn("watch=true", qs[0])
        self.assertNotIn("watch=true", qs[1])
        self.assertIn("resourceVersion=20", qs[2])

    def test_ephemeral_container_new_api(self):
        # 1.25: a strategic merge patch of the Pod on the ephemeralcontainers subresource
        path = "/api/v1/namespaces/default/pods/runner"
        self.api.script("PATCH", path + "/ephemeralcontainers", (200, pod("runner")))
        self.api.script("GET", "/api/v1/namespaces/default/pods",
                        (200, pod_list([pod("runner", eph=[{"name": "sync", "state": {"running": {}}}])])),
                        (200, Watch({"type": "MODIFIED", "object": pod("runner", rv="12", eph=[
                            {"name": "sync", "state": {"terminated": {"exitCode": 3, "reason": "Error"}}}])})))
        r = post(self.d, "/ephemeral", {"conf": self.conf, "pod": {"namespace": "default", "name": "runner"},
                                        "container": {"name": "sync", "image": "busybox", "command": ["false"]},
                                        "timeout": 5})
        self.assertTrue(r["ok"], r)
        self.assertEqual(r["exit_code"], 3)
        req = [x for x in self.api.requests if x["method"] == "PATCH"][0]
        self.assertEqual(req["headers"]["content-type"], "application/strategic-merge-patch+json")
        self.assertEqual(json.loads(req["body"]), {"spec": {"ephemeralContainers": [
            {"name": "sync", "image": "busybox", "command": ["false"]}]}})

    def test_ephemeral_container_legacy_api(self):
        # before 1.22: GET the EphemeralContainers object, append, PUT it back
        self.api.version = ("1", "20+")
        try:
            path = "/api/v1/namespaces/default/pods/runner/ephemeralcontainers"
            ec = {"kind": "EphemeralContainers", "apiVersion": "v1", "metadata": {"name": "runner", "resourceVersion": "7"},
                  "ephemeralContainers": [{"name": "old", "image": "x"}]}
            self.api.script("GET", path, (200, ec))
            self.api.script("PUT", path, (200, ec))
            self.api.script("GET", "/api/v1/namespaces/default/pods", (200, pod_list([pod("runner", eph=[
                {"name": "sync", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}])])))
            r = post(self.d, "/ephemeral", {"conf": self.conf, "pod": {"namespace": "default", "name": "runner"},
                                            "container": {"name": "sync", "image": "busybox"}, "timeout": 5})
            self.assertTrue(r["ok"], r)
            self.assertEqual(r["exit_code"], 0)
            put = [x for x in self.api.requests if x["method"] == "PUT"][0]
            body = json.loads(put["body"])
            self.assertEqual(body["kind"], "EphemeralContainers")
            self.assertEqual([c["name"] for c in body["ephemeralContainers"]], ["old", "sync"])
            self.assertEqual(body["metadata"]["resourceVersion"], "7")
            self.assertEqual(self.api.count("PATCH", path), 0)
        finally:
            self.api.version = ("1", "25")

    def test_token_file_reread(self):
        tmp = tempfile.mkdtemp(prefix="devexd-k8s-tok-")
        try:
            tf = os.path.join(tmp, "token")
            with open(tf, "w") as f:
                f.write("first\n")
            path = "/api/v1/namespaces/default/pods/p1"
            self.api.script("GET", path, (200, pod("p1")), (200, pod("p1")))
            conf = {"server": self.api.url, "token_file": tf, "token_max_age": 0.2}
            r = post(self.d, "/rotate", {"conf": conf, "ref": {"apiVersion": "v1", "kind": "Pod", "name": "p1"},
                                         "token_file": tf, "new_token": "second", "wait": 0.3})
            self.assertTrue(r["ok"], r)
            auths = [x["headers"]["authorization"] for x in self.api.requests if x["path"] == path]
            self.assertEqual(auths, ["Bearer first", "Bearer second"])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def test_wait_timeout(self):
        self.api.script("GET", "/api/v1/namespaces/default/pods",
                        (200, pod_list([pod("p")])), (200, Watch({"type": "MODIFIED", "object": pod("p", rv="11")})),
                        *[(200, Watch(hold=0.2))] * 20)
        r = post(self.d, "/wait", {"conf": self.conf, "ref": {"apiVersion": "v1", "kind": "Pod", "name": "p"},
                                   "timeout": 1.5})
        self.assertFalse(r["ok"])
        self.assertEqual(r["err"]["code"], "timeout")
        self.assertLess(r["elapsed"], 5)

    def test_unreachable(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        conf = dict(self.conf, server="http://127.0.0.1:%d" % port, max_attempts=2)
        r = self.op("get", {"apiVersion": "v1", "kind": "Pod", "name": "p"}, conf=conf)
        self.assertEqual(r["err"]["code"], "unavailable")
        self.assertEqual(r["err"]["cause"], "connect")


# ---------------------------------------------------------------------------
# config loading


KUBECONFIG = """apiVersion: v1
kind: Config
current-context: main
clusters:
- name: local
  cluster:
    server: {server}
    certificate-authority: {ca}
contexts:
- name: main
  context: {{cluster: local, user: {user}, namespace: team-a}}
users:
- name: tok
  user: {{token: {token}}}
- name: tokfile
  user: {{tokenFile: token.txt}}
- name: data
  user:
    client-certificate-data: {cert_b64}
    client-key-data: {key_b64}
- name: plugin
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1beta1
      command: aws-iam-authenticator
"""


class ConfigTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="devexd-k8s-conf-")
        sa = os.path.join(cls.tmp, "sa")
        os.mkdir(sa)
        for name, text in (("token", "sa-token\n"), ("ca.crt", "CA\n"), ("namespace", "devex-system")):
            with open(os.path.join(sa, name), "w") as f:
                f.write(text)
        cls.d = harness.Devexd(app="k8sapp", env={"KUBERNETES_SERVICE_HOST": "10.0.0.1",
                                                  "KUBERNETES_SERVICE_PORT": "6443"})
        cls.d.__enter__()

    @classmethod
    def tearDownClass(cls):
        cls.d.__exit__(None, None, None)
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def write_kubeconfig(self, user, name="config"):
        d = os.path.join(self.tmp, "kube")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, name)
        with open(path, "w") as f:
            f.write(KUBECONFIG.format(server="https://127.0.0.1:6443", ca="pki/ca.crt", user=user, token="t0k",
                                      cert_b64=base64.b64encode(b"CERT PEM\n").decode(),
                                      key_b64=base64.b64encode(b"KEY PEM\n").decode()))
        return path

    def config(self, settings):
        return post(self.d, "/config", {"settings": settings})

    def test_kubeconfig_variants(self):
        path = self.write_kubeconfig("tok")
        r = self.config({"kubeconfig": path})
        self.assertTrue(r["ok"], r)
        c = r["result"]
        self.assertEqual((c["source"], c["server"], c["token"], c["namespace"]),
                         ("kubeconfig", "https://127.0.0.1:6443", "t0k", "team-a"))
        self.assertEqual(c["ca_file"], os.path.join(self.tmp, "kube", "pki", "ca.crt"))
        path = self.write_kubeconfig("tokfile")
        c = self.config({"kubeconfig": path})["result"]
        self.assertEqual(c["token_file"], os.path.join(self.tmp, "kube", "token.txt"))
        path = self.write_kubeconfig("data")
        c = self.config({"kubeconfig": path})["result"]
        self.assertEqual((c["client_cert_pem"], c["client_key_pem"]), ("CERT PEM\n", "KEY PEM\n"))
        path = self.write_kubeconfig("plugin")
        r = self.config({"kubeconfig": path})
        self.assertEqual(r["err"]["code"], "unsupported")
        self.assertIn("exec plugin", r["err"]["message"])
        r = self.config({"kubeconfig": path, "context": "other"})
        self.assertEqual(r["err"]["code"], "invalid")
        self.assertIn('context "other" is not defined', r["err"]["message"])
        r = self.config({"kubeconfig": os.path.join(self.tmp, "missing")})
        self.assertEqual(r["err"]["code"], "not_found")

    def test_in_cluster_then_explicit(self):
        r = self.config({"in_cluster_root": os.path.join(self.tmp, "sa")})
        c = r["result"]
        self.assertEqual((c["source"], c["server"], c["namespace"]), ("in-cluster", "https://10.0.0.1:6443", "devex-system"))
        self.assertEqual(c["token_file"], os.path.join(self.tmp, "sa", "token"))
        r = self.config({"server": "https://h:1", "token": "x", "in_cluster_root": os.path.join(self.tmp, "sa")})
        self.assertEqual(r["result"]["source"], "explicit")
        r = self.config({"servr": "x"})
        self.assertIn("unknown setting 'servr'", r["raised"])
        conf = {"server": "https://h:1", "token": "x"}
        self.assertEqual(post(self.d, "/new", {"conf": conf}), {"ok": True, "max_connections": 4})
        self.assertEqual(post(self.d, "/new", {"conf": dict(conf, max_connections=16)})["max_connections"], 16)
        for bad in (0, 1.5, 2000, "8"):
            r = post(self.d, "/new", {"conf": dict(conf, max_connections=bad)})
            self.assertFalse(r["ok"], r)
            self.assertRegex(r.get("raised", ""), "max_connections must be (an integer from 1 to 1024|a number)", r)

    def test_client_reports_config_errors(self):
        path = self.write_kubeconfig("plugin", name="plugin")
        r = post(self.d, "/op", {"conf": {"kubeconfig": path}, "op": "version", "args": []})
        self.assertEqual(r["err"]["code"], "unsupported")


# ---------------------------------------------------------------------------
# the real cluster (tests/integration/k8s_harness.py)

try:
    import k8s_harness  # noqa: E402
except ImportError:  # not there yet: ClusterTests reports it as a failure
    k8s_harness = None

NS = "devex-it"
LABELS = {"app.kubernetes.io/managed-by": "devexd", "devex.io/repl": "r1"}


def session_objects(ns, name, owner_uid=None):
    """The four objects of a REPL session, as the workload policy builds them."""
    labels = dict(LABELS, **{"devex.io/session": name})
    owner = [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": owner_uid,
              "controller": True, "blockOwnerDeletion": True}] if owner_uid else None

    def md(n):
        m = {"name": n, "namespace": ns, "labels": labels}
        if owner:
            m["ownerReferences"] = owner
        return m

    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns, "labels": labels},
         "spec": {"replicas": 1, "selector": {"matchLabels": {"devex.io/session": name}},
                  "template": {"metadata": {"labels": labels},
                               "spec": {"containers": [{"name": "runner", "image": "devex/runner:1",
                                                        "ports": [{"containerPort": 3000}]}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": md(name),
         "spec": {"selector": {"devex.io/session": name},
                  # protocol given: 1.20's server-side apply rejects a port without it (a 500)
                  "ports": [{"port": 80, "targetPort": 3000, "protocol": "TCP"}]}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": md(name),
         "spec": {"rules": [{"http": {"paths": [{"path": "/repl/" + name, "pathType": "Prefix", "backend": {
             "service": {"name": name, "port": {"number": 80}}}}]}}]}},
        {"apiVersion": "traefik.io/v1alpha1", "kind": "Middleware", "metadata": md(name + "-strip"),
         "spec": {"stripPrefix": {"prefixes": ["/repl/" + name]}}},
    ]


class ClusterTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if k8s_harness is None:
            raise AssertionError("tests/integration/k8s_harness.py is missing")
        cls.cluster = k8s_harness.KubeCluster()
        cls.cluster.__enter__()
        try:
            cls.conf = cls.cluster_conf()
            cls.cluster.create_namespace(NS)  # waits for its default service account (pods need it)
            cls.d = harness.Devexd(app="k8sapp", max_body=1 << 20, threads=1)
            cls.d.__enter__()
            r = cls.op_(cls.conf, "create", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
            if r["ok"] or r["err"]["code"] != "AlreadyExists":
                raise AssertionError("creating an existing namespace: %r" % r)
        except BaseException:
            cls.cluster.__exit__(None, None, None)
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            cls.d.__exit__(None, None, None)
        finally:
            cls.cluster.__exit__(None, None, None)

    @classmethod
    def cluster_conf(cls, **over):
        c = cls.cluster
        conf = {"server": c.server, "ca_file": c.ca_file, "token": c.admin_token, "namespace": NS, "backoff": 0.05}
        conf.update(over)
        return conf

    @classmethod
    def op_(cls, conf, op, *args):
        return post(cls.d, "/op", {"conf": conf, "op": op, "args": list(args)})

    def op(self, op, *args, conf=None):
        return self.op_(conf or self.conf, op, *args)

    def ok(self, op, *args, conf=None):
        r = self.op(op, *args, conf=conf)
        self.assertTrue(r["ok"], "%s%r: %r" % (op, args, r))
        return r["result"]

    def test_crud_session_objects(self):
        objs = session_objects(NS, "crud1")
        for o in objs:
            created = self.ok("create", o)
            self.assertEqual(created["metadata"]["name"], o["metadata"]["name"])
            again = self.op("create", o)
            self.assertEqual((again["err"]["code"], again["err"]["status"]), ("AlreadyExists", 409), again)
            got = self.ok("get", {"apiVersion": o["apiVersion"], "kind": o["kind"], "namespace": NS,
                                  "name": o["metadata"]["name"]})
            self.assertEqual(got["metadata"]["uid"], created["metadata"]["uid"])
            lst = self.ok("list", {"apiVersion": o["apiVersion"], "kind": o["kind"], "namespace": NS},
                          {"label_selector": "devex.io/session=crud1"})
            self.assertEqual([i["metadata"]["name"] for i in lst["items"]], [o["metadata"]["name"]])
            p = self.ok("patch", o, {"metadata": {"labels": {"patched": "merge"}}})
            self.assertEqual(p["metadata"]["labels"]["patched"], "merge")
            p = self.ok("patch", o, {"metadata": {"labels": {"patched2": "strategic"}}},
                        {"type": "strategic"} if o["kind"] != "Middleware" else {"type": "merge"})
            self.assertEqual(p["metadata"]["labels"]["patched2"], "strategic")
            p = self.ok("patch", o, [{"op": "replace", "path": "/metadata/labels/patched", "value": "json"}],
                        {"type": "json"})
            self.assertEqual(p["metadata"]["labels"]["patched"], "json")
        for o in objs:
            self.assertEqual(self.ok("delete", o), "deleted")
        for o in objs[1:]:
            r = self.op("get", o)
            self.assertEqual((r["err"]["code"], r["err"]["status"]), ("NotFound", 404))
            self.assertEqual(self.ok("delete", o), "gone")

    def test_apply_twice_is_noop(self):
        for o in session_objects(NS, "apply1"):
            a = self.ok("apply", o, {"force": True})
            if o["kind"] == "Deployment":
                # the deployment controller writes .status meanwhile: the spec's generation is what must not move
                b = self.ok("apply", o, {"force": True})
                self.assertEqual(a["metadata"]["generation"], b["metadata"]["generation"])
                mine = lambda o: [m for m in o["metadata"]["managedFields"] if m["manager"] == "devexd"]
                self.assertEqual(mine(a), mine(b))
            else:
                b = self.ok("apply", o, {"force": True})
                self.assertEqual(a["metadata"]["resourceVersion"], b["metadata"]["resourceVersion"], o["kind"])
            self.ok("delete", o)

    def test_keep_decodes_only_what_is_named(self):
        dep = session_objects(NS, "keep1")[0]
        full = self.ok("apply", dep, {"force": True})
        self.assertIn("managedFields", full["metadata"])
        kept = self.ok("apply", dep, {"force": True, "keep": {"metadata": {"uid": True, "labels": True}}})
        # what was named, and what the client reads of every object (kind, name, resourceVersion)
        self.assertEqual(kept["metadata"]["uid"], full["metadata"]["uid"])
        self.assertEqual(kept["metadata"]["labels"], full["metadata"]["labels"])
        self.assertEqual((kept["kind"], kept["apiVersion"], kept["metadata"]["name"], kept["metadata"]["namespace"]),
                         ("Deployment", "apps/v1", dep["metadata"]["name"], NS))
        self.assertIn("resourceVersion", kept["metadata"])
        self.assertEqual(set(kept), {"kind", "apiVersion", "metadata"})
        self.assertEqual(set(kept["metadata"]), {"uid", "labels", "name", "namespace", "resourceVersion"})
        got = self.ok("get", {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": NS,
                              "name": dep["metadata"]["name"]}, {"keep": {"metadata": {"deletionTimestamp": True}}})
        self.assertEqual(set(got), {"kind", "apiVersion", "metadata"})
        self.assertEqual(set(got["metadata"]), {"name", "namespace", "resourceVersion"})  # not being deleted
        lst = self.ok("list", {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": NS},
                      {"label_selector": "devex.io/session=keep1", "keep": {"spec": {"replicas": True}}})
        self.assertEqual(len(lst["items"]), 1)
        item = lst["items"][0]
        self.assertEqual(set(item), {"kind", "apiVersion", "metadata", "spec"})
        self.assertEqual(item["spec"], {"replicas": full["spec"]["replicas"]})
        self.assertEqual(item["metadata"]["name"], dep["metadata"]["name"])
        self.assertTrue(lst["resourceVersion"])
        self.ok("delete", dep)

    def test_cascading_delete(self):
        dep = session_objects(NS, "owner1")[0]
        created = self.ok("create", dep)
        owned = session_objects(NS, "owner1", owner_uid=created["metadata"]["uid"])[1:]
        for o in owned:
            self.ok("create", o)
        self.assertEqual(self.ok("delete", dep, {"propagation": "Foreground"}), "deleted")
        for o in owned:
            r = post(self.d, "/wait", {"conf": self.conf, "pred": "absent", "timeout": 60,
                                       "ref": {"apiVersion": o["apiVersion"], "kind": o["kind"], "namespace": NS,
                                               "name": o["metadata"]["name"]}})
            self.assertTrue(r["ok"], (o["kind"], r))

    def test_wait_pod_ready(self):
        name = "ready1"
        p = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
             "spec": {"containers": [{"name": "main", "image": "busybox"}]}}
        self.ok("create", p)
        r = post(self.d, "/wait", {"conf": self.conf, "ref": {"apiVersion": "v1", "kind": "Pod", "namespace": NS,
                                                              "name": name}, "pred": "ready", "timeout": 60})
        self.assertTrue(r["ok"], r)
        self.ok("delete", p, {"grace_period": 0})

    def test_watch_gone_relists(self):
        # The API server's watch cache of a kind starts from a list at the resourceVersion
        # of that moment; for the Middleware CRD, installed after the cluster's own
        # writes, "1" is older than that: the watch gets 410 Expired and the client lists.
        ref = {"apiVersion": "traefik.io/v1alpha1", "kind": "Middleware", "namespace": NS}
        for i in range(3):
            self.ok("apply", {"apiVersion": "traefik.io/v1alpha1", "kind": "Middleware",
                              "metadata": {"name": "w%d" % i, "namespace": NS},
                              "spec": {"stripPrefix": {"prefixes": ["/w%d" % i]}}})
        r = post(self.d, "/watch", {"conf": self.conf, "ref": ref, "opts": {"resource_version": "1", "timeout": 10},
                                    "max_events": 1})
        self.assertTrue(r["ok"], r)
        ev = r["events"][0]
        self.assertEqual(ev["type"], "RESYNC", r)
        self.assertEqual(r["relists"], 1)
        self.assertTrue({"w0", "w1", "w2"} <= set(ev["names"]), r)
        for i in range(3):
            self.ok("delete", dict(ref, name="w%d" % i))

    def test_ephemeral_containers(self):
        name = "eph1"
        # the simulated kubelet ends ephemeral container "fail" with exit code 7
        self.ok("create", {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": name, "namespace": NS, "annotations": {k8s_harness.EPHEMERAL_EXIT_CODE + ".fail": "7"}},
            "spec": {"containers": [{"name": "main", "image": "busybox"}]}})
        for cname, cmd, code in (("ok", ["true"], 0), ("fail", ["sh", "-c", "exit 7"], 7)):
            r = post(self.d, "/ephemeral", {"conf": self.conf, "pod": {"namespace": NS, "name": name},
                                            "container": {"name": cname, "image": "busybox", "command": cmd},
                                            "timeout": 60})
            self.assertTrue(r["ok"], r)
            self.assertEqual(r["exit_code"], code)
        self.ok("delete", {"apiVersion": "v1", "kind": "Pod", "namespace": NS, "name": name}, {"grace_period": 0})

    def test_rbac_forbidden(self):
        self.cluster.grant("user:limited", [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
                           namespace=NS)
        conf = self.cluster_conf(token=self.cluster.limited_token)
        self.assertTrue(self.op("list", {"apiVersion": "v1", "kind": "ConfigMap", "namespace": NS}, conf=conf)["ok"])
        r = self.op("create", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "nope", "namespace": NS}},
                    conf=conf)
        self.assertEqual((r["err"]["code"], r["err"]["status"]), ("Forbidden", 403), r)
        self.assertIn("cannot create resource", r["err"]["message"])

    def test_kubeconfig_connects(self):
        r = self.op("version", conf={"kubeconfig": self.cluster.kubeconfig})
        self.assertTrue(r["ok"], r)
        self.assertEqual(r["result"]["major"], "1")

    def test_http2_multiplexed(self):
        port = self.cluster.server.rsplit(":", 1)[1]

        def conns():
            out = harness.run(["ss", "-Htnp", "state", "established", "dst", "127.0.0.1:" + port]).stdout
            return {l.split()[2] for l in out.splitlines() if "pid=%d," % self.d.proc.pid in l}, out
        before, _ = conns()
        r = post(self.d, "/conns", {"conf": self.conf, "n": 8})
        self.assertEqual(r["versions"], [2] * 8, r)
        # and they shared one connection: at most one new, and devexd holds at
        # most two to the API server (the requests', and the watches' that
        # earlier tests opened: watches are kept apart from the capped requests)
        after, out = conns()
        self.assertLessEqual(len(after - before), 1, out)
        self.assertLessEqual(len(after), 2, out)

    def test_bad_input_and_422(self):
        r = self.op("create", {"apiVersion": "v1", "kind": "Gizmo", "metadata": {"name": "x"}})
        self.assertEqual(r["err"]["code"], "invalid_input")
        r = self.op("create", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x", "namespace": NS},
                               "spec": {"containers": []}})
        self.assertEqual((r["err"]["code"], r["err"]["status"]), ("Invalid", 422), r)


if __name__ == "__main__":
    harness.main()
