"""The runner agent in the cluster harness (issue #16, Tests, second bullet):
devexd's Kubernetes runtime with the agent as runner (templates.<t>.agent),
against kube-apiserver with the controller manager and the simulated kubelet
of k8s_harness, which runs the REAL agent (`devexd runner`) for the pod on
the pod's loopback address with only the pod spec's env values, storage on
the signature-checking S3 test server (presigned URLs, so there is a storage
credential to leak), policy.sync.checkpoint_interval = 1 s.

 - start: the agent restores the template's files before it is Ready;
 - files written in the pod's workspace reach storage without any stop;
 - a normal stop is the agent's final checkpoint (POST /api/v1/checkpoint):
   a file written just before it is saved, and no uploader (ephemeral
   container) is added to the pod; the next start restores everything;
 - the pod's deletion (SIGKILL of the agent, as a node loss): the Deployment
   recreates the pod, whose new agent restores the last checkpoint over an
   empty workspace: everything checkpointed before the deletion is there
   (what was written after the last checkpoint may be lost: at most the
   interval). devexd does nothing itself when its pod disappears; the
   session stays running and the stop that follows asks the NEW pod's agent
   for its final checkpoint (the stop looks the pod up, not the address the
   start recorded);
 - no storage credential in the pod spec, nor in the agent's
   /proc/<pid>/environ and cmdline;
 - the harness: an agent whose address was taken between the kubelet's
   check and its bind moves to another address (no crash loop).
Assertions are on what arrives, never on elapsed time; waits are generous.
"""
import contextlib
import glob
import json
import os
import socket
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd, RedisServer, poll, sanitizer_errors  # noqa: E402
from fakes.github_fake import GitHubFake  # noqa: E402
import test_repl  # noqa: E402
from test_auth import FRONTEND, GH_REDIRECT  # noqa: E402
from test_s3 import S3Server, ensure_s3_server  # noqa: E402
import k8s_harness  # noqa: E402

JSON = {"Content-Type": "application/json"}
NS = "repls-agent"
POLICY = ("return {\n"
          "  templates = { catalogue = { python = { image = 'devexd-runner-python:latest', agent = true } } },\n"
          "  sync = { checkpoint_interval = 1 },\n"
          "}\n")


def gone(pid):
    """Whether process pid has exited (no longer exists, or a zombie)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


class K8sAgentTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="devexd-k8sagent-")
        ensure_s3_server()
        cls.s3 = S3Server().start()
        cls.kc = k8s_harness.KubeCluster().__enter__()
        cls.kc.create_namespace(NS)
        kubeconfig = cls.kc.write_kubeconfig(os.path.join(cls.tmp, "kubeconfig"))
        cls.redis = RedisServer().__enter__()
        cls.gh = GitHubFake().__enter__()
        pol = os.path.join(cls.tmp, "policy.lua")
        with open(pol, "w") as f:
            f.write(POLICY)
        conf = {
            "server": {"listen": [{"host": "127.0.0.1", "port": "@PORTNUM@"}], "max_body": 16 << 20},
            "environment": "production", "allow_insecure_http": True, "frontend_url": FRONTEND,
            # the agent (on 127.0.0.N) calls back to this very devexd: CALLBACK_URL = public_url/api/runner/<id>
            "public_url": "http://127.0.0.1:@PORT@",
            "redis": {"url": cls.redis.url(), "timeout": 2},
            "github": cls.gh.config(GH_REDIRECT),
            "s3": cls.s3.conf(),
            "runtime": {"driver": "kubernetes"},
            "kube": {"config_path": kubeconfig, "namespace": NS},
            "runner": {"cluster_ip": "runners.example.test", "domain": "runners.example.test"},
            "policy": {"file": pol},
        }
        text = "return " + harness.to_lua(conf) + "\n"
        text = text.replace('"@PORTNUM@"', "@PORT@")
        cls.d = Devexd(app=None, threads=2, config_text=text).__enter__()
        cls.d.sync_templates()

    @classmethod
    def tearDownClass(cls):
        harness.stop_class_servers(cls, "d", "gh", "redis", "kc", "s3")

    def login(self):
        return test_repl.ReplTest.login(self)

    def secrets(self):
        return [self.s3.access_key.encode(), self.s3.secret_key.encode()]

    def start(self, b, rid):
        """GET /api/repl/session/<rid>, asserted 200; on a failure the message
        carries what the simulated kubelet and the REPL's agents logged."""
        r = b.get("/api/repl/session/" + rid)
        if r.status != 200:
            kdir = self.kc.kubelet.log_dir
            lines = []
            with contextlib.suppress(OSError):
                with open(os.path.join(kdir, "kubelet.log"), errors="replace") as f:
                    lines = [x for x in f if rid in x][-15:]
            agents = ""
            for path in sorted(glob.glob(os.path.join(kdir, "agent-%s-%s*.log" % (NS, rid)))):
                with open(path, errors="replace") as f:
                    agents += "\n--- %s:\n%s" % (os.path.basename(path), f.read()[-3000:])
            self.fail("start: %d %s\nkubelet:\n%s%s" % (r.status, r.body[:500], "".join(lines), agents))
        return r

    def pods(self, rid):
        api = self.kc.client(user="admin")
        return api.get(k8s_harness.api_path("v1", "pods", NS), query={"labelSelector": "devex.io/repl=" + rid})["items"]

    def live_pod(self, rid, not_uid=None):
        """The REPL's one pod not being deleted whose agent runs, answers and is Ready."""
        out = []

        def ready():
            out[:] = []
            for p in self.pods(rid):
                if p["metadata"].get("deletionTimestamp") or p["metadata"]["uid"] == not_uid:
                    continue
                a = self.kc.kubelet.standin(NS, p["metadata"]["name"])
                if a and a["agent"] and a["pid"] and a["ready"]:
                    out.append((p, a))
            return len(out) == 1
        poll(ready, "a Ready pod running the agent", timeout=90, interval=0.2)
        return out[0]

    def stored(self, rid, token):
        """{path: etag} of what the storage broker lists for the REPL (the runner's token)."""
        r = self.d.request("GET", "/api/runner/%s/files" % rid, headers={"Authorization": "Bearer " + token},
                           timeout=60)
        self.assertEqual(r.status, 200, r.body)
        return {f["path"]: f["etag"] for f in json.loads(r.body)["files"]}

    def write(self, agent, rel, data):
        p = os.path.join(agent["dir"], rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)

    def tree(self, agent):
        return harness.tree(agent["dir"])

    def check_no_credential(self, pod, agent):
        spec = json.dumps(pod["spec"]).encode()
        with open("/proc/%d/environ" % agent["pid"], "rb") as f:
            environ = f.read()
        with open("/proc/%d/cmdline" % agent["pid"], "rb") as f:
            cmdline = f.read()
        for secret in self.secrets():
            self.assertNotIn(secret, spec)
            self.assertNotIn(secret, environ)
            self.assertNotIn(secret, cmdline)
        names = [kv.split(b"=", 1)[0] for kv in environ.split(b"\0") if kv]
        self.assertIn(b"RUNNER_TOKEN", names)  # the agent's only credential: its session's token
        self.assertFalse([n for n in names if n.startswith(b"AWS_") or n.startswith(b"S3_")], names)
        self.assertEqual(cmdline.split(b"\0")[1:3], [b"-L", harness.LUA_DIR.encode()])

    def test_checkpoints_stop_and_pod_loss(self):
        b = self.login()
        r = b.request("POST", "/api/repl/new", headers=JSON,
                      body=json.dumps({"template": "python", "replName": "agent", "userName": "ignored"}))
        self.assertEqual(r.status, 201, r.body)
        rid = r.json()["id"]
        r = self.start(b, rid)
        pod, agent = self.live_pod(rid)
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        self.assertEqual(env["CHECKPOINT_INTERVAL"], "1")
        self.assertEqual(env["CALLBACK_URL"], self.d.url("/api/runner/" + rid))
        self.assertFalse(pod["spec"].get("initContainers"))  # the agent restores itself
        template = self.tree(agent)
        self.assertIn("main.py", template)  # restored before Ready
        self.check_no_credential(pod, agent)

        # periodic checkpoints, no stop
        token = env["RUNNER_TOKEN"]
        self.write(agent, "a.txt", b"first\n")
        self.write(agent, "src/deep/b.py", b"x = 2\n" * 50)
        poll(lambda: {"a.txt", "src/deep/b.py"} <= set(self.stored(rid, token)), "a periodic checkpoint",
             timeout=60, interval=0.3)

        # a normal stop: the agent's final checkpoint saves the last write
        self.write(agent, "last.txt", b"just before the stop\n")
        log_at = len(self.d.raw_log())
        r = b.request("DELETE", "/api/repl/session/" + rid, headers=JSON)
        self.assertEqual(r.status, 200, r.body)
        log = self.d.raw_log()[log_at:]
        self.assertNotIn("final checkpoint failed", log)
        for p in self.pods(rid):  # still terminating, maybe: it got no uploader
            self.assertFalse(p["spec"].get("ephemeralContainers"), p["metadata"]["name"])

        # the next start restores everything, the last write included
        r = self.start(b, rid)
        pod2, agent2 = self.live_pod(rid, not_uid=pod["metadata"]["uid"])
        self.assertNotEqual(agent2["dir"], agent["dir"])
        got = self.tree(agent2)
        self.assertEqual(got.get("a.txt"), b"first\n")
        self.assertEqual(got.get("src/deep/b.py"), b"x = 2\n" * 50)
        self.assertEqual(got.get("last.txt"), b"just before the stop\n")
        self.assertEqual(got.get("main.py"), template["main.py"])

        # the pod's deletion: a checkpointed write survives in the recreated pod
        token2 = {e["name"]: e.get("value") for e in pod2["spec"]["containers"][0]["env"]}["RUNNER_TOKEN"]
        self.write(agent2, "after-restart.txt", b"checkpointed before the loss\n")
        os.remove(os.path.join(agent2["dir"], "a.txt"))
        poll(lambda: (lambda s: "after-restart.txt" in s and "a.txt" not in s)(self.stored(rid, token2)),
             "the checkpoint of a write and a deletion", timeout=60, interval=0.3)
        api = self.kc.client(user="admin")
        api.delete(k8s_harness.api_path("v1", "pods", NS, pod2["metadata"]["name"]))
        poll(lambda: gone(agent2["pid"]), "the old agent killed", timeout=30)
        pod3, agent3 = self.live_pod(rid, not_uid=pod2["metadata"]["uid"])
        self.assertNotEqual(agent3["dir"], agent2["dir"])
        got = self.tree(agent3)
        self.assertEqual(got.get("after-restart.txt"), b"checkpointed before the loss\n")
        self.assertNotIn("a.txt", got)
        self.assertEqual(got.get("last.txt"), b"just before the stop\n")
        self.check_no_credential(pod3, agent3)
        state = self.redis.call("HGET", "devex:replMeta:" + rid, "state")
        self.assertEqual(state, b"running")  # the Deployment did the recovery, the session went on
        # and the gateway follows the session to the new pod (devexd looked it up
        # when the new agent's restore finished)
        ep = self.redis.call("HGET", "devex:activeSession:" + rid, "endpoint").decode()
        self.assertEqual(ep, "%s:%s" % (pod3["status"]["podIP"], ep.rsplit(":", 1)[1]))
        r = self.d.request("GET", "/%s/ping" % rid, headers={"Host": "runners.example.test", "Cookie": b.cookie_header()})
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json(), "pong")

        # the stop after the loss: the new pod's agent does the final checkpoint
        self.write(agent3, "after-loss.txt", b"written in the new pod\n")
        log_at = len(self.d.raw_log())
        r = b.request("DELETE", "/api/repl/session/" + rid, headers=JSON)
        self.assertEqual(r.status, 200, r.body)
        self.assertNotIn("final checkpoint failed", self.d.raw_log()[log_at:])
        r = self.start(b, rid)
        pod4, agent4 = self.live_pod(rid, not_uid=pod3["metadata"]["uid"])
        self.assertEqual(self.tree(agent4).get("after-loss.txt"), b"written in the new pod\n")
        r = b.request("DELETE", "/api/repl/session/" + rid, headers=JSON)
        self.assertEqual(r.status, 200, r.body)

        for a in (agent, agent2, agent3, agent4):
            with open(a["log"], "rb") as f:
                text = f.read().decode("utf-8", "replace")
            self.assertEqual(sanitizer_errors(text), [], a["log"])

    def test_agent_moves_off_an_address_in_use(self):
        """The harness itself: an agent that cannot bind its pod's address (held by
        someone else between the kubelet's check and the bind: another test
        cluster) is moved to another address, as a stand-in is, instead of
        crash-looping the pod."""
        kl = self.kc.kubelet
        with kl._standin_lock:  # the address the kubelet hands out next
            n = min(kl._loop_free) if kl._loop_free else kl._loop_next
        ip = k8s_harness._loopback(n)
        port = harness.free_port()  # a port of its own: no other test's stand-in comes and goes on it
        held = socket.socket()
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.bind((ip, port))
        held.listen()
        real = k8s_harness._port_bindable
        k8s_harness._port_bindable = lambda host, port: True  # the kubelet's check passes: the race
        api = self.kc.client(user="admin")
        name = "agent-move"
        try:
            api.post(k8s_harness.api_path("v1", "pods", NS), {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": NS, "annotations": {k8s_harness.AGENT: "true"}},
                "spec": {"containers": [{"name": "runner", "image": "x", "ports": [{"containerPort": port}],
                                         "env": [{"name": "RESTORE", "value": "0"}],
                                         "readinessProbe": {"httpGet": {"path": "/ping", "port": port}}}]}})
            poll(lambda: (kl.standin(NS, name) or {}).get("ready"), "the moved agent Ready", timeout=60)
        finally:
            k8s_harness._port_bindable = real
            held.close()
        a = kl.standin(NS, name)
        self.assertNotEqual(a["ip"], ip)
        self.assertTrue(a["agent"])
        self.assertEqual(a["restarts"], 0)  # a move, not a container restart
        with open(a["log"], "rb") as f:
            self.assertIn(b"Address already in use", f.read())
        api.delete(k8s_harness.api_path("v1", "pods", NS, name))
        poll(lambda: kl.standin(NS, name) is None or kl.standin(NS, name)["pid"] is None, "the agent gone",
             timeout=30)


if __name__ == "__main__":
    unittest.main()
