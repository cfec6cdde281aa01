"""The runner stand-ins of the simulated kubelet (k8s_harness.SimKubelet and
runner_standin.py): every Running pod of the test cluster has a real HTTP
server on its own loopback podIP and the runner container's port, so what
devexd proxies to a pod reaches something. Checked here against the real API
server and controller manager: a Deployment whose runner has a readiness
probe on /ping becomes Ready because the kubelet's probe really got 200;
the stand-in answers /ping, 404 on /, /user-app/..., a WebSocket echo (text,
binary, fragmented, ping, close) and /_standin/last-request; a probe on "/"
never passes (the stand-in answers 404 there); deleting the Deployment ends
the process; a stand-in that dies is restarted; an explicit devex.test/pod-ip
gets no stand-in; no stand-in outlives the cluster.

The binaries come from tests/k8s/build.sh; without them this test FAILS
(k8s_harness.KubeBinariesMissing) rather than skips.
"""

import base64
import hashlib
import http.client
import json
import os
import signal
import socket
import struct
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import k8s_harness  # noqa: E402
from k8s_harness import api_path  # noqa: E402

NS = "standin"
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
XOR = [bytes(b ^ x for b in range(256)) for x in range(256)]


def deployment(name, probe_path=None, port=8081, replicas=1, annotations=None):
    runner = {"name": "runner", "image": "ghcr.io/parthkapoor-dev/devex/runner-node:test",
              "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}]}
    if probe_path is not None:
        runner["readinessProbe"] = {"httpGet": {"path": probe_path, "port": port}, "periodSeconds": 2,
                                    "failureThreshold": 3}
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels, "annotations": annotations or {}},
                                  "spec": {"initContainers": [{"name": "download", "image": "amazon/aws-cli:2",
                                                               "command": ["true"]}],
                                           "containers": [runner]}}}}


def pod(name, containers, annotations=None):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "annotations": annotations or {}},
            "spec": {"containers": containers}}


def http_get(ip, port, path, headers=None, timeout=10):
    """(status, headers, body) of GET http://ip:port/path."""
    c = http.client.HTTPConnection(ip, port, timeout=timeout)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, r.headers, r.read()
    finally:
        c.close()


def get_json(ip, port, path):
    st, _, body = http_get(ip, port, path)
    assert st == 200, (st, body)
    return json.loads(body)


def refused(ip, port):
    try:
        socket.create_connection((ip, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# ---- a minimal WebSocket client (RFC 6455) ----

def mask(payload, key):
    out = bytearray(len(payload))
    for j in range(4):
        out[j::4] = payload[j::4].translate(XOR[key[j]])
    return bytes(out)


def frame(opcode, payload, fin=True):
    """A masked client frame."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        head = struct.pack("!BB", b0, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", b0, 0x80 | 127, n)
    key = os.urandom(4)
    return head + key + mask(payload, key)


class WS:
    def __init__(self, ip, port, path, extra_headers=()):
        self.s = socket.create_connection((ip, port), timeout=20)
        self.key = base64.b64encode(os.urandom(16)).decode()
        lines = ["GET %s HTTP/1.1" % path, "Host: %s:%d" % (ip, port), "Upgrade: websocket",
                 "Connection: Upgrade", "Sec-WebSocket-Key: " + self.key, "Sec-WebSocket-Version: 13"]
        lines += ["%s: %s" % kv for kv in extra_headers]
        self.s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buf = bytearray()
        while b"\r\n\r\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise AssertionError("connection closed during the handshake: %r" % bytes(self.buf))
            self.buf += chunk
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        self.buf = bytearray(rest)
        status_line, *hdr = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in hdr)}

    def read(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(1 << 20)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def recv_frame(self):
        """(fin, opcode, payload) of the next server frame (unmasked)."""
        b0, b1 = self.read(2)
        assert not b1 & 0x80, "a server frame must not be masked"
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self.read(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self.read(8))[0]
        return bool(b0 & 0x80), b0 & 0x0F, self.read(n)

    def send(self, data):
        self.s.sendall(data)

    def close(self):
        self.s.close()


class RunnerStandinTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.kc = k8s_harness.KubeCluster().__enter__()
        try:
            cls.api = cls.kc.api
            cls.kc.create_namespace(NS)
        except BaseException:
            cls.kc.__exit__(None, None, None)
            raise

    @classmethod
    def tearDownClass(cls):
        result = getattr(cls, "_result", None)
        failed = result is not None and not result.wasSuccessful()
        pids = [st["sa"]["proc"].pid for st in list(cls.kc.kubelet._pods.values())
                if st.get("sa") and st["sa"]["proc"] is not None]
        cls.kc.__exit__(AssertionError if failed else None, None, None)  # failed: log tails to stderr
        left = [p for p in pids if pid_alive(p)]
        if left:
            for p in left:
                os.kill(p, signal.SIGKILL)
            raise AssertionError("stand-ins outlived the cluster: pids %r" % left)

    def run(self, result=None):
        type(self)._result = result
        return super().run(result)

    def wait(self, fn, what, timeout=60):
        return self.kc.wait_for(fn, what, timeout=timeout)

    def pods_of(self, app):
        return self.api.get(api_path("v1", "pods", NS), query={"labelSelector": "app=" + app})["items"]

    def delete_deployment(self, name):
        self.api.delete(api_path("apps/v1", "deployments", NS, name), propagation="Background", missing_ok=True)
        self.wait(lambda: not self.pods_of(name), "the pods of %s deleted" % name)

    # ---- a Ready runner, for real ----

    def test_ping_probe_ready_and_real_traffic(self):
        self.api.post(api_path("apps/v1", "deployments", NS), deployment("web", probe_path="/ping"))
        self.addCleanup(self.delete_deployment, "web")
        p = self.kc.wait_pod_ready(NS, label_selector="app=web")[0]
        ip, name = p["status"]["podIP"], p["metadata"]["name"]
        self.assertTrue(ip.startswith("127.") and ip != "127.0.0.1", ip)
        self.assertEqual(p["status"]["podIPs"], [{"ip": ip}])
        runner = p["status"]["containerStatuses"][0]
        self.assertEqual((runner["name"], runner["ready"], runner["restartCount"]), ("runner", True, 0))
        self.assertIn("running", runner["state"])
        info = self.kc.kubelet.standin(NS, name)
        self.assertEqual((info["ip"], info["port"]), (ip, 8081))
        self.assertTrue(pid_alive(info["pid"]))
        self.assertTrue(os.path.exists(info["log"]), info)
        self.wait(lambda: self.api.get(api_path("apps/v1", "deployments", NS, "web"))
                  .get("status", {}).get("availableReplicas") == 1, "deployment available")

        # plain HTTP
        st, hdrs, body = http_get(ip, 8081, "/ping")
        self.assertEqual((st, json.loads(body)), (200, {"message": "pong"}))
        self.assertEqual(hdrs["Content-Type"], "application/json")
        self.assertEqual(http_get(ip, 8081, "/")[0], 404)
        st, hdrs, body = http_get(ip, 8081, "/user-app/some/page?q=1",
                                  headers={"Cookie": "devex_session=secret", "X-Forwarded-For": "203.0.113.9"})
        self.assertEqual(st, 200)
        self.assertTrue(hdrs["Content-Type"].startswith("text/html"), hdrs)
        self.assertIn(b"<h1>user app</h1>", body)
        self.assertIn(b"/user-app/some/page?q=1", body)
        last = get_json(ip, 8081, "/_standin/last-request")
        self.assertEqual((last["method"], last["path"], last["websocket"]), ("GET", "/user-app/some/page?q=1", False))
        self.assertEqual(last["headers"]["cookie"], "devex_session=secret")
        self.assertEqual(last["headers"]["x-forwarded-for"], "203.0.113.9")
        self.assertEqual(last["headers"]["host"], "%s:8081" % ip)

        # WebSocket echo
        ws = WS(ip, 8081, "/api/v1/repl/ws?replId=abc", [("Origin", "https://app.example.test")])
        try:
            self.assertEqual(ws.status, 101)
            accept = base64.b64encode(hashlib.sha1((ws.key + WS_GUID).encode()).digest()).decode()
            self.assertEqual(ws.headers["sec-websocket-accept"], accept)
            self.assertEqual(ws.headers["upgrade"].lower(), "websocket")
            ws.send(frame(0x1, "héllo".encode()))
            self.assertEqual(ws.recv_frame(), (True, 0x1, "héllo".encode()))
            big = os.urandom(3 << 20)
            ws.send(frame(0x2, big))
            self.assertEqual(ws.recv_frame(), (True, 0x2, big))
            ws.send(frame(0x1, b"frag", fin=False) + frame(0x9, b"mid") + frame(0x0, b"men", fin=False) +
                    frame(0x0, b"ted"))
            self.assertEqual(ws.recv_frame(), (True, 0xA, b"mid"))  # the ping between the fragments
            self.assertEqual(ws.recv_frame(), (True, 0x1, b"fragmented"))
            ws.send(frame(0x2, b""))
            self.assertEqual(ws.recv_frame(), (True, 0x2, b""))
            ws.send(frame(0x8, struct.pack("!H", 1000) + b"bye"))
            fin, op, payload = ws.recv_frame()
            self.assertEqual((op, payload[:2]), (0x8, struct.pack("!H", 1000)))
            with self.assertRaises(EOFError):
                ws.recv_frame()
        finally:
            ws.close()
        last = get_json(ip, 8081, "/_standin/last-request")
        self.assertEqual((last["method"], last["path"], last["websocket"]),
                         ("GET", "/api/v1/repl/ws?replId=abc", True))
        self.assertEqual(last["headers"]["sec-websocket-key"], ws.key)
        self.assertEqual(last["headers"]["origin"], "https://app.example.test")

        # the kubelet keeps probing (periodSeconds 2), and its probes are not recorded
        before = get_json(ip, 8081, "/_standin/info")["probes"]
        self.wait(lambda: get_json(ip, 8081, "/_standin/info")["probes"] > before, "another readiness probe", 15)
        self.assertEqual(get_json(ip, 8081, "/_standin/last-request")["path"], "/api/v1/repl/ws?replId=abc")

        # deleting the Deployment ends the process
        pid = info["pid"]
        self.delete_deployment("web")
        self.wait(lambda: refused(ip, 8081), "connection refused at %s:8081" % ip, 10)
        self.assertFalse(pid_alive(pid))
        self.wait(lambda: self.kc.kubelet.standin(NS, name) is None, "the kubelet forgetting the pod", 10)

    # ---- readiness follows the probe ----

    def test_probe_on_root_never_ready(self):
        self.api.post(api_path("apps/v1", "deployments", NS), deployment("root", probe_path="/"))
        self.addCleanup(self.delete_deployment, "root")

        def running():
            ps = self.pods_of("root")
            return ps and ps[0].get("status", {}).get("phase") == "Running" and ps[0]["status"].get("podIP") and ps[0]
        p = self.wait(running, "the pod Running")
        ip = p["status"]["podIP"]
        self.wait(lambda: http_get(ip, 8081, "/ping")[0] == 200, "the stand-in answering")
        self.assertEqual(http_get(ip, 8081, "/")[0], 404)
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            p = self.pods_of("root")[0]
            self.assertFalse(k8s_harness.pod_is_ready(p), p["status"])
            self.assertFalse(p["status"]["containerStatuses"][0]["ready"])
            time.sleep(0.5)
        self.assertIn("GET http://%s:8081/: 404 (failure)" % ip, self.kc.log_tail("kubelet", 20000))

    def test_without_probe_ready_once_listening_on_the_runner_port(self):
        # no probe, no port: 8081; the runner container is found by name, not position
        self.api.post(api_path("v1", "pods", NS), pod("plain", [{"name": "main", "image": "busybox"}]))
        self.api.post(api_path("v1", "pods", NS), pod("sidecar", [
            {"name": "proxy", "image": "envoy", "ports": [{"containerPort": 9901}]},
            {"name": "runner", "image": "runner", "ports": [{"containerPort": 3000}]}]))
        # never-ready: the stand-in runs, the pod is not Ready
        self.api.post(api_path("v1", "pods", NS), pod("nready", [{"name": "runner", "image": "runner"}],
                                                      {k8s_harness.NEVER_READY: "true"}))
        for n in ("plain", "sidecar", "nready"):
            self.addCleanup(self.api.delete, api_path("v1", "pods", NS, n), missing_ok=True)
        plain = self.kc.wait_pod_ready(NS, name="plain")[0]
        side = self.kc.wait_pod_ready(NS, name="sidecar")[0]
        self.assertEqual(get_json(plain["status"]["podIP"], 8081, "/ping"), {"message": "pong"})
        self.assertEqual(get_json(side["status"]["podIP"], 3000, "/ping"), {"message": "pong"})
        self.assertTrue(refused(side["status"]["podIP"], 9901))
        nready = self.wait(lambda: self.kc.kubelet.standin(NS, "nready"), "stand-in of nready")
        self.wait(lambda: http_get(nready["ip"], 8081, "/ping")[0] == 200, "nready's stand-in answering")
        self.assertFalse(k8s_harness.pod_is_ready(self.api.get(api_path("v1", "pods", NS, "nready"))))
        ips = {plain["status"]["podIP"], side["status"]["podIP"], nready["ip"]}
        self.assertEqual(len(ips), 3, ips)

    def test_explicit_pod_ip_gets_no_standin(self):
        self.api.post(api_path("v1", "pods", NS), pod("fixed", [{"name": "runner", "image": "runner"}],
                                                      {k8s_harness.POD_IP: "10.9.8.7"}))
        self.addCleanup(self.api.delete, api_path("v1", "pods", NS, "fixed"), missing_ok=True)
        p = self.kc.wait_pod_ready(NS, name="fixed")[0]
        self.assertEqual(p["status"]["podIP"], "10.9.8.7")
        self.assertIsNone(self.kc.kubelet.standin(NS, "fixed"))

    def test_dead_standin_restarts(self):
        self.api.post(api_path("v1", "pods", NS), pod("crashy", [{
            "name": "runner", "image": "runner", "ports": [{"name": "http", "containerPort": 8081}],
            "readinessProbe": {"httpGet": {"path": "/ping", "port": "http"}, "periodSeconds": 1,
                               "failureThreshold": 1}}]))
        self.addCleanup(self.api.delete, api_path("v1", "pods", NS, "crashy"), missing_ok=True)
        p = self.kc.wait_pod_ready(NS, name="crashy")[0]
        first = self.kc.kubelet.standin(NS, "crashy")
        os.kill(first["pid"], signal.SIGKILL)

        def restarted():
            q = self.api.get(api_path("v1", "pods", NS, "crashy"))
            s = q["status"]["containerStatuses"][0]
            return s["restartCount"] == 1 and s["ready"] and k8s_harness.pod_is_ready(q) and q
        q = self.wait(restarted, "the stand-in restarted and Ready again")
        s = q["status"]["containerStatuses"][0]
        self.assertEqual(s["lastState"]["terminated"]["exitCode"], 128 + signal.SIGKILL)
        self.assertEqual(q["status"]["podIP"], p["status"]["podIP"])
        second = self.kc.kubelet.standin(NS, "crashy")
        self.assertNotEqual(second["pid"], first["pid"])
        self.assertEqual(get_json(p["status"]["podIP"], 8081, "/_standin/info")["pid"], second["pid"])

    def test_ephemeral_container_beside_the_standin(self):
        self.api.post(api_path("v1", "pods", NS), pod("eph", [{"name": "runner", "image": "runner"}]))
        self.addCleanup(self.api.delete, api_path("v1", "pods", NS, "eph"), missing_ok=True)
        p = self.kc.wait_pod_ready(NS, name="eph")[0]
        self.api.patch(api_path("v1", "pods", NS, "eph", "ephemeralcontainers"),
                       {"ephemeralContainers": [{"name": "uploader", "image": "amazon/aws-cli:2",
                                                 "command": ["true"], "targetContainerName": "runner",
                                                 "terminationMessagePolicy": "File"}]}, patch_type="strategic")

        def terminated():
            q = self.api.get(api_path("v1", "pods", NS, "eph"))
            for s in q.get("status", {}).get("ephemeralContainerStatuses") or []:
                if "terminated" in s["state"]:
                    return s["state"]["terminated"]
        self.assertEqual(self.wait(terminated, "uploader terminated")["exitCode"], 0)
        self.assertEqual(get_json(p["status"]["podIP"], 8081, "/ping"), {"message": "pong"})


if __name__ == "__main__":
    unittest.main(verbosity=2)
