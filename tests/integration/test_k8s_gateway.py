"""The runner gateway in front of Kubernetes sessions, against the real
kube-apiserver of k8s_harness, whose simulated kubelet runs a runner
stand-in process (runner_standin.py) for every Running pod on the pod's
loopback IP and honours the readiness probe: start (the probe on /ping gets
the pod Ready) -> the gateway reaches the pod over HTTP and WebSocket, owner
only -> stop (files saved by the uploader, objects gone, stand-in gone) ->
the gateway answers 404."""

import json
import os
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd, RedisServer  # noqa: E402
from fakes.github_fake import GitHubFake  # noqa: E402
import test_repl  # noqa: E402
from test_auth import FRONTEND  # noqa: E402
from test_k8s_runtime import cluster_config  # noqa: E402
from test_proxy import ws_frame, ws_open, ws_read_frame  # noqa: E402
import k8s_harness  # noqa: E402

NS = "gw-repls"
RUNNER_DOMAIN = "runners.devex.test"


class K8sGatewayTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="devexd-k8sgw-")
        cls.store_dir = os.path.join(cls.tmp, "bucket")
        os.mkdir(cls.store_dir)
        cls.kc = cls.enterClassContext(k8s_harness.KubeCluster())
        cls.kc.create_namespace(NS)
        kubeconfig = cls.kc.write_kubeconfig(os.path.join(cls.tmp, "kubeconfig"))
        cls.redis = cls.enterClassContext(RedisServer())
        cls.gh = cls.enterClassContext(GitHubFake())
        conf = cluster_config(cls, kubeconfig, NS)
        conf["runner"] = {"domain": RUNNER_DOMAIN, "exposure": "gateway", "scheme": "http"}
        cls.d = cls.enterClassContext(Devexd(app=None, threads=2, config=conf))
        cls.d.sync_templates()

    def login(self, login="OctoCat", uid=583231):
        return test_repl.ReplTest.login(self, login, uid)

    def gw(self, method, path, cookie=None, headers=None):
        h = {"Host": RUNNER_DOMAIN}
        if cookie:
            h["Cookie"] = cookie
        h.update(headers or {})
        return self.d.request(method, path, headers=h)

    def state(self, rid):
        v = self.redis.call("HGET", "devex:replMeta:" + rid, "state")
        return v.decode() if v else None

    def test_start_gateway_stop(self):
        b = self.login()
        r = b.request("POST", "/api/repl/new", headers={"Content-Type": "application/json"},
                      body=json.dumps({"template": "node", "replName": "on a cluster"}))
        self.assertEqual(r.status, 201, r.body)
        rid = r.json()["id"]
        r = b.get("/api/repl/session/" + rid)
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json()["url"], "http://%s/%s/" % (RUNNER_DOMAIN, rid))

        # the session's upstream is the pod the kubelet made Ready
        api = self.kc.client(user="admin")
        pods = api.get(k8s_harness.api_path("v1", "pods", NS), query={"labelSelector": "devex.io/repl=" + rid})["items"]
        self.assertEqual(len(pods), 1)
        pod_ip = pods[0]["status"]["podIP"]
        endpoint = self.redis.call("HGET", "devex:activeSession:" + rid, "endpoint").decode()
        self.assertEqual(endpoint, "%s:8081" % pod_ip)

        cookie = b.cookie_header()
        r = self.gw("GET", "/%s/ping" % rid, cookie)
        self.assertEqual((r.status, r.json()), (200, {"message": "pong"}))
        seen = self.gw("GET", "/%s/_standin/last-request" % rid, cookie).json()
        self.assertEqual(seen["path"], "/ping")
        self.assertNotIn("cookie", seen["headers"])
        r = self.gw("GET", "/%s/user-app/" % rid, cookie)
        self.assertEqual(r.status, 200)
        self.assertIn(b"user app", r.body)

        s, _, head, read = ws_open(self.d.port, "/%s/api/v1/repl/ws" % rid, RUNNER_DOMAIN,
                                   "Origin: %s\r\nCookie: %s\r\n" % (FRONTEND, cookie))
        try:
            self.assertTrue(head.startswith("HTTP/1.1 101"), head)
            s.sendall(ws_frame(1, b"through the gateway to a pod", mask=True))
            self.assertEqual(ws_read_frame(read), (1, b"through the gateway to a pod"))
        finally:
            s.close()

        # another GitHub account, and nobody: 404
        other = self.login("mallory", 999001)
        self.assertEqual(self.gw("GET", "/%s/ping" % rid, other.cookie_header()).status, 404)
        self.assertEqual(self.gw("GET", "/%s/ping" % rid).status, 404)

        # stop: saved, removed; the stand-in process of the pod is gone and the gateway says 404
        r = b.request("DELETE", "/api/repl/session/" + rid, headers={"Content-Type": "application/json"})
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(self.state(rid), "stopped")
        r = self.gw("GET", "/%s/ping" % rid, cookie)
        self.assertEqual(r.status, 404)
        deadline = time.monotonic() + 30
        while True:
            left = api.get(k8s_harness.api_path("v1", "pods", NS), query={"labelSelector": "devex.io/repl=" + rid})["items"]
            if not left:
                break
            self.assertLess(time.monotonic(), deadline, "pods left")
            time.sleep(0.2)


if __name__ == "__main__":
    harness.main()
