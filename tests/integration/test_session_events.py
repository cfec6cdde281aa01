"""GET /api/repl/session/<id>/events (issue #18): a session's lifecycle as
Server-Sent Events (lua/repl/events.lua, src/stream.c).

Single-host runtime with the runner stand-in as the template's runner:
- two watchers opened before the start both get restoring, starting, ready
  (with the URL) with the same ids, in increasing order; then stopping,
  saving, stopped after DELETE;
- a reconnect with Last-Event-ID gets exactly the events after that id;
- a watcher that connects to a running REPL gets `ready` at once;
- HTTP/2 (h2c prior knowledge, curl) streams too; CORS with credentials;
- another user gets 404, no session 401;
- a runner that exits at once gives `failed` with code `crashed` on the
  stream and code + message beside `error` in the start's answer.
Kubernetes (real kube-apiserver, simulated kubelet): scheduling, then ready;
an image that cannot be pulled gives `failed` with code `image_pull` naming
the image, and the start answers 502 with the same code.
"""

import http.client
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd, RedisServer  # noqa: E402
import test_gateway  # noqa: E402  (the module only: its TestCase is not re-run here)

STANDIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runner_standin.py")
JSON = {"Content-Type": "application/json"}
ORIGIN = test_gateway.ORIGIN


class Watcher(threading.Thread):
    """An SSE client over HTTP/1.1: events go to a queue as dicts
    {"id", "event", "data"} (data decoded from JSON); comments are counted."""

    def __init__(self, d, path, cookie, last_id=None, origin=None):
        super().__init__(daemon=True)
        self.conn = http.client.HTTPConnection("127.0.0.1", d.port)
        h = {"Cookie": cookie, "Accept": "text/event-stream"}
        if last_id:
            h["Last-Event-ID"] = last_id
        if origin:
            h["Origin"] = origin
        self.conn.request("GET", path, headers=h)
        self.resp = self.conn.getresponse()
        self.events = queue.Queue()
        self.comments = 0
        self.closed = False
        if self.resp.status == 200:
            self.start()

    def run(self):
        cur = {}
        try:
            while True:
                line = self.resp.readline()
                if not line:
                    break
                line = line.decode().rstrip("\n")
                if line == "":
                    if "event" in cur or "data" in cur:
                        if "data" in cur:
                            cur["data"] = json.loads(cur["data"])
                        self.events.put(cur)
                    cur = {}
                elif line.startswith(":"):
                    self.comments += 1
                else:
                    k, _, v = line.partition(":")
                    cur[k] = v[1:] if v.startswith(" ") else v
        except (OSError, ValueError, AttributeError, http.client.HTTPException):
            pass
        self.closed = True
        self.events.put(None)

    def next(self, timeout=20):
        ev = self.events.get(timeout=timeout)
        if ev is None:
            raise AssertionError("stream ended")
        return ev

    def until(self, phase, timeout=30):
        got = []
        deadline = time.time() + timeout
        while True:
            ev = self.next(timeout=max(0.1, deadline - time.time()))
            got.append(ev)
            if ev["event"] == phase:
                return got

    def quiet(self, seconds):
        """Events that arrive within `seconds` (none expected)."""
        out = []
        deadline = time.time() + seconds
        while time.time() < deadline:
            try:
                ev = self.events.get(timeout=max(0.05, deadline - time.time()))
            except queue.Empty:
                break
            if ev is None:
                break
            out.append(ev)
        return out

    def close(self):
        try:
            self.conn.sock.shutdown(2)
        except (OSError, AttributeError):
            pass
        self.conn.close()


def idnum(i):
    a, b = i.split("-")
    return (int(a), int(b))


class LocalEventsTest(unittest.TestCase):
    CLEANUP = ""

    @classmethod
    def setUpClass(cls):
        test_gateway.standin_devexd(
            cls, "devexd-events-",
            "return {\n"
            "  templates = { catalogue = {\n"
            "    standin = { image = 'runner-standin', port = 8081,\n"
            "      agent = false, local_command = { 'sh', '-c', 'exec python3 %s --host 127.0.0.1 --port \"$PORT\"' } },\n"
            "    broken = { image = 'runner-broken', port = 8081, agent = false, local_command = { 'sh', '-c', 'exit 3' } },\n"
            "  } },\n"
            "  messages = { crashed = 'Your workspace crashed while starting (reworded by the operator).' },\n"
            "%s"
            "}\n" % (STANDIN, cls.CLEANUP),
            templates=("standin", "broken"))

    def sign_in(self, user):
        return test_gateway.GatewayTest.sign_in(self, user)

    def create(self, b, name, template="standin"):
        r = b.request("POST", "/api/repl/new", headers=JSON,
                      body=json.dumps({"template": template, "replName": name}))
        self.assertEqual(r.status, 201, r.body)
        rid = r.json()["id"]
        self.addCleanup(lambda: b.request("DELETE", "/api/repl/" + rid, headers=JSON))
        return rid

    def start(self, b, name):
        """A new REPL with its session started (and stopped after the test): its id, the start's answer."""
        rid = self.create(b, name)
        r = b.request("GET", "/api/repl/session/" + rid)
        self.assertEqual(r.status, 200, r.body)
        self.addCleanup(lambda: b.request("DELETE", "/api/repl/session/" + rid, headers=JSON))
        return rid, r.json()

    def watch(self, b, rid, last_id=None, origin=None):
        w = Watcher(self.d, "/api/repl/session/%s/events" % rid, b.cookie_header(), last_id, origin)
        self.addCleanup(w.close)
        return w

    def test_phases_two_watchers_resume_and_stop(self):
        b = self.sign_in("alice")
        rid = self.create(b, "ev1")
        w1, w2 = self.watch(b, rid), self.watch(b, rid, origin=ORIGIN)
        self.assertEqual(w1.resp.status, 200)
        self.assertTrue(w1.resp.getheader("Content-Type").startswith("text/event-stream"))
        self.assertEqual(w2.resp.getheader("Access-Control-Allow-Origin"), ORIGIN)
        self.assertEqual(w2.resp.getheader("Access-Control-Allow-Credentials"), "true")
        self.assertEqual(w1.quiet(0.5), [])  # nothing before the start
        r = b.request("GET", "/api/repl/session/" + rid)
        self.assertEqual(r.status, 200, r.body)
        url = r.json()["url"]
        got1, got2 = w1.until("ready"), w2.until("ready")
        self.assertEqual([e["event"] for e in got1], ["restoring", "starting", "ready"])
        self.assertEqual([(e["id"], e["event"]) for e in got1], [(e["id"], e["event"]) for e in got2])
        ids = [idnum(e["id"]) for e in got1]
        self.assertEqual(ids, sorted(set(ids)))
        for e in got1:
            self.assertEqual(e["data"]["phase"], e["event"])
            self.assertEqual(e["data"]["replId"], rid)
        self.assertEqual(got1[-1]["data"]["url"], url)

        # a reconnect after `restoring` gets starting and ready, nothing twice
        w3 = self.watch(b, rid, last_id=got1[0]["id"])
        again = w3.until("ready", timeout=5)
        self.assertEqual([(e["id"], e["event"]) for e in again], [(e["id"], e["event"]) for e in got1[1:]])
        self.assertEqual(w3.quiet(0.5), [])

        # the stop, seen by a watcher that stayed
        r = b.request("DELETE", "/api/repl/session/" + rid, headers=JSON)
        self.assertEqual(r.status, 200, r.body)
        stop = w1.until("stopped")
        self.assertEqual([e["event"] for e in stop], ["stopping", "saving", "stopped"])
        self.assertEqual([e["event"] for e in w2.until("stopped")], ["stopping", "saving", "stopped"])
        self.assertEqual([e["event"] for e in w3.until("stopped")], ["stopping", "saving", "stopped"])
        # resume after ready: exactly the stop phases
        w4 = self.watch(b, rid, last_id=got1[-1]["id"])
        self.assertEqual([(e["id"], e["event"]) for e in w4.until("stopped", timeout=5)],
                         [(e["id"], e["event"]) for e in stop])
        self.assertEqual(w4.quiet(0.5), [])
        # a second start on the same stream, with an ETA from the first
        r = b.request("GET", "/api/repl/session/" + rid)
        self.assertEqual(r.status, 200, r.body)
        second = w1.until("ready")
        self.assertEqual([e["event"] for e in second], ["restoring", "starting", "ready"])
        self.assertIn("eta", second[0]["data"])
        self.assertIn("eta_p90", second[0]["data"])
        self.assertLessEqual(second[0]["data"]["eta"], second[0]["data"]["eta_p90"])
        self.assertGreater(idnum(second[0]["id"]), idnum(stop[-1]["id"]))
        b.request("DELETE", "/api/repl/session/" + rid, headers=JSON)

    def test_ready_at_once_for_a_running_repl(self):
        b = self.sign_in("carol")
        rid, started = self.start(b, "ev2")
        t0 = time.time()
        w = self.watch(b, rid)
        got = w.until("ready", timeout=3)
        self.assertLess(time.time() - t0, 2)
        self.assertEqual(got[-1]["data"]["url"], started["url"])
        # events gone (expired, or a REPL started before them): still
        # `ready` at once, synthesized
        rid2, _ = self.start(b, "ev2b")
        self.redis.call("DEL", "devex:replEvents:" + rid2)
        w2 = self.watch(b, rid2)
        self.assertEqual([e["event"] for e in w2.until("ready", timeout=3)], ["ready"])

    def test_owner_only(self):
        a = self.sign_in("dave")
        rid = self.create(a, "ev3")
        other = self.sign_in("erin")
        r = other.request("GET", "/api/repl/session/%s/events" % rid)
        self.assertEqual(r.status, 404, r.body)
        self.assertEqual(r.json()["error"], "repl not found")
        r = other.request("GET", "/api/repl/session/nosuchrepl/events")
        self.assertEqual(r.status, 404, r.body)
        r = self.d.request("GET", "/api/repl/session/%s/events" % rid)
        self.assertEqual(r.status, 401, r.body)

    def test_http2(self):
        b = self.sign_in("frank")
        rid, _ = self.start(b, "ev4")
        p = subprocess.run(["curl", "-sS", "-N", "--http2-prior-knowledge", "--max-time", "3", "-D", "-",
                            "-H", "Cookie: " + b.cookie_header(), "-H", "Origin: " + ORIGIN,
                            self.d.url("/api/repl/session/%s/events" % rid)],
                           capture_output=True, text=True, timeout=20)
        out = p.stdout
        self.assertIn("HTTP/2 200", out, p.stderr)
        self.assertIn("content-type: text/event-stream", out.lower())
        self.assertIn("access-control-allow-origin: " + ORIGIN, out.lower())
        self.assertIn("event: ready", out)
        self.assertEqual(p.returncode, 28, p.stderr)  # the stream stays open until curl's --max-time

    def test_failure_code(self):
        b = self.sign_in("grace")
        rid = self.create(b, "ev5", template="broken")
        w = self.watch(b, rid)
        r = b.request("GET", "/api/repl/session/" + rid)
        self.assertEqual(r.status, 502, r.body)
        body = r.json()
        self.assertTrue(body["error"].startswith("start failed:"), body)
        self.assertEqual(body["code"], "crashed")
        self.assertEqual(body["message"], "Your workspace crashed while starting (reworded by the operator).")
        got = w.until("failed")
        self.assertEqual(got[-1]["data"]["code"], "crashed")
        self.assertEqual(got[-1]["data"]["message"], body["message"])

    def test_watchers_share_one_read_per_worker(self):
        from test_gateway import Monitor
        b = self.sign_in("ivan")
        rid, _ = self.start(b, "ev7")
        ws = [self.watch(b, rid) for _ in range(12)]
        for w in ws:
            w.until("ready", timeout=5)
        mon = Monitor(self.redis.port)
        self.addCleanup(mon.close)
        time.sleep(2)
        n = mon.count(b'"XRANGE"', ("devex:replEvents:" + rid).encode())
        # 2 workers polling every 0.25 s: about 16 reads, not 12 watchers' worth
        self.assertLessEqual(n, 24, n)
        self.assertGreater(n, 0)
        # a client that leaves over HTTP/2 is seen at once (RST_STREAM), and
        # the worker's read ends with its last watcher
        for w in ws:
            w.close()

    def test_http2_client_gone_ends_the_read(self):
        from test_gateway import Monitor
        b = self.sign_in("judy")
        rid, _ = self.start(b, "ev8")
        mon = Monitor(self.redis.port)
        self.addCleanup(mon.close)
        procs = [subprocess.Popen(["curl", "-sS", "-N", "--http2-prior-knowledge", "--max-time", "1.5",
                                   "-H", "Cookie: " + b.cookie_header(),
                                   self.d.url("/api/repl/session/%s/events" % rid)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
        for p in procs:
            out, _ = p.communicate(timeout=20)
            self.assertIn(b"event: ready", out)
        key = ("devex:replEvents:" + rid).encode()
        self.assertGreater(mon.count(b'"XRANGE"', key), 0)
        time.sleep(0.6)
        before = mon.count(b'"XRANGE"', key)
        time.sleep(1)
        self.assertEqual(mon.count(b'"XRANGE"', key), before)

    def test_stream_survives_sighup(self):
        import signal
        b = self.sign_in("kate")
        rid = self.create(b, "ev9")
        w = self.watch(b, rid)
        self.assertEqual(w.quiet(0.3), [])
        mark = self.d.mark()
        self.d.signal(signal.SIGHUP)
        self.d.wait_log(lambda e: e.get("msg") == "reloaded", since=mark, what="the reload")
        r = b.request("GET", "/api/repl/session/" + rid)
        self.assertEqual(r.status, 200, r.body)
        self.addCleanup(lambda: b.request("DELETE", "/api/repl/session/" + rid, headers=JSON))
        self.assertEqual([e["event"] for e in w.until("ready")], ["restoring", "starting", "ready"])

    def test_client_gone_and_metrics(self):
        b = self.sign_in("heidi")
        rid = self.create(b, "ev6")
        ws = [self.watch(b, rid) for _ in range(5)]
        for w in ws:
            w.close()
        r = b.request("GET", "/api/repl/session/" + rid)
        self.assertEqual(r.status, 200, r.body)
        self.addCleanup(lambda: b.request("DELETE", "/api/repl/session/" + rid, headers=JSON))
        r = self.d.request("GET", "/healthz")
        self.assertEqual(r.status, 200)
        m = self.d.request("GET", "/metrics").body.decode()
        self.assertIn('devex_repl_start_phase_duration_seconds_count{template="standin",phase="restoring"}', m)


class CullingTest(LocalEventsTest):
    """GET /api/repl/<id>/activity, POST /api/repl/<id>/keepalive and the
    `warning` event before an idle stop (repl.culling), with idle_limit 6 s,
    warning_lead 4 s, keepalive_max 2 and a sweep every second."""

    CLEANUP = ("  cleanup = { idle_limit = 6, warning_lead = 4, keepalive_max = 2, sweep_interval = 1,\n"
               "              activity_interval = 1 },\n")

    def test_warning_keepalive_and_idle_stop(self):
        b = self.sign_in("lena")
        rid = self.create(b, "cull")
        w = self.watch(b, rid)
        r = b.request("GET", "/api/repl/session/" + rid)
        self.assertEqual(r.status, 200, r.body)
        self.addCleanup(lambda: b.request("DELETE", "/api/repl/session/" + rid, headers=JSON))
        w.until("ready")
        r = b.get("/api/repl/%s/activity" % rid)
        self.assertEqual(r.status, 200, r.body)
        a = r.json()
        self.assertEqual((a["running"], a["idleLimit"], a["warningLead"], a["keepaliveMax"]), (True, 6, 4, 2))
        self.assertEqual(a["stopReason"], "idle")
        self.assertEqual(a["idleStopAt"], a["lastActivityAt"] + 6)
        self.assertEqual(a["stopAt"], a["idleStopAt"])
        self.assertEqual(a["lastSignal"], "start")
        # the warning comes within the lead time of the idle stop
        warn = w.until("warning", timeout=10)[-1]["data"]
        self.assertEqual(warn["reason"], "idle")
        self.assertEqual(warn["stopAt"], a["stopAt"])
        self.assertLessEqual(warn["in"], 4)
        self.assertIn("idle", warn["message"])
        # a keepalive postpones the idle stop
        time.sleep(1.1)
        r = b.request("POST", "/api/repl/%s/keepalive" % rid, headers=JSON, body="{}")
        self.assertEqual(r.status, 200, r.body)
        k = r.json()
        self.assertGreater(k["stopAt"], a["stopAt"])
        self.assertEqual((k["lastSignal"], k["keepalivesUsed"]), ("keepalive", 1))
        r = b.request("POST", "/api/repl/%s/keepalive" % rid, headers=JSON, body="{}")
        self.assertEqual(r.status, 200, r.body)
        # but not for ever
        r = b.request("POST", "/api/repl/%s/keepalive" % rid, headers=JSON, body="{}")
        self.assertEqual(r.status, 429, r.body)
        self.assertEqual(r.json()["code"], "keepalive_limit")
        stop_at = b.get("/api/repl/%s/activity" % rid).json()["stopAt"]
        # a second warning for the new deadline, then the sweep stops it as said
        got = w.until("stopped", timeout=20)
        phases = [e["event"] for e in got]
        self.assertIn("warning", phases)
        self.assertEqual(phases[-3:], ["stopping", "saving", "stopped"])
        self.assertGreaterEqual(time.time(), stop_at - 1)
        self.assertEqual(b.get("/api/repl/%s/activity" % rid).json()["running"], False)

    def test_a_keepalive_after_its_session_ended_writes_nothing(self):
        """A keepalive that races the stop of its session (the warning prompts
        the click just as the sweep stops it) answers 409 and leaves no
        partial session behind (one would count against sessions_per_user
        with no expiry)."""
        b = self.sign_in("olga")
        rid = self.create(b, "cull3")
        # The sweep repairs a "running" REPL without a session: take its lock
        # from this devexd (its renewal then fails) and let a sweep already
        # under way end, so the state set below holds for the requests.
        self.redis.call("SET", "devex:sweep:lock", "test", "PX", "30000")
        self.addCleanup(lambda: self.redis.call("DEL", "devex:sweep:lock"))
        time.sleep(1.5)
        # the REPL still reads "running" but its session is already gone: the
        # moment between the stop's end_session and its transition
        self.redis.call("HSET", "devex:replMeta:" + rid, "state", "running")
        self.addCleanup(lambda: self.redis.call("HSET", "devex:replMeta:" + rid, "state", "created"))
        r = b.request("POST", "/api/repl/%s/keepalive" % rid, headers=JSON, body="{}")
        self.assertEqual(r.status, 409, r.body)
        self.assertEqual(self.redis.call("EXISTS", "devex:activeSession:" + rid), 0)
        r = b.get("/api/repl/%s/activity" % rid)
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual((r.json()["state"], r.json()["keepalivesUsed"]), ("running", 0))

    def test_owner_only_activity(self):
        a = self.sign_in("mike")
        rid = self.create(a, "cull2")
        other = self.sign_in("nina")
        self.assertEqual(other.get("/api/repl/%s/activity" % rid).status, 404)
        self.assertEqual(other.request("POST", "/api/repl/%s/keepalive" % rid, headers=JSON, body="{}").status, 404)
        self.assertEqual(self.d.request("GET", "/api/repl/%s/activity" % rid).status, 401)
        r = a.request("POST", "/api/repl/%s/keepalive" % rid, headers=JSON, body="{}")
        self.assertEqual(r.status, 409, r.body)


class ActivityPolicyTest(LocalEventsTest):
    """policy.cleanup.counts_as_activity decides which signals postpone an
    idle stop: here gateway requests for /_standin/info do not count, other
    gateway requests and keepalives do, and the activity answer names the
    kind of the last signal that counted."""

    CLEANUP = ("  cleanup = { idle_limit = 600, sweep_interval = 1, activity_interval = 1,\n"
               "    counts_as_activity = function(s)\n"
               "      return not (s.kind == 'http' and s.method == 'GET' and s.path == '/_standin/info')\n"
               "    end },\n")

    def activity(self, b, rid):
        r = b.get("/api/repl/%s/activity" % rid)
        self.assertEqual(r.status, 200, r.body)
        return r.json()

    def test_policy_decides_what_counts(self):
        b = self.sign_in("olga")
        rid, _ = self.start(b, "act")
        a0 = self.activity(b, rid)
        self.assertEqual(a0["lastSignal"], "start")
        time.sleep(1.2)  # a later second than the start's
        # ignored traffic: several flushes later nothing moved
        for _ in range(3):
            self.assertEqual(b.get("/repl/%s/_standin/info" % rid).status, 200)
        time.sleep(2.5)
        a1 = self.activity(b, rid)
        self.assertEqual((a1["lastActivityAt"], a1["lastSignal"]), (a0["lastActivityAt"], "start"))
        # counted traffic is recorded at the next flush, with its kind
        self.assertEqual(b.get("/repl/%s/_standin/last-request" % rid).status, 200)
        deadline = time.time() + 10
        while True:
            a2 = self.activity(b, rid)
            if a2["lastSignal"] == "http" or time.time() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual(a2["lastSignal"], "http")
        self.assertGreater(a2["lastActivityAt"], a0["lastActivityAt"])
        self.assertEqual(a2["idleStopAt"], a2["lastActivityAt"] + 600)
        # a keepalive counts too (the default policy function lets every kind through)
        r = b.request("POST", "/api/repl/%s/keepalive" % rid, headers=JSON, body="{}")
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json()["lastSignal"], "keepalive")
        self.assertEqual(self.activity(b, rid)["lastSignal"], "keepalive")


# the tests of LocalEventsTest run with its own devexd only
for _name in dir(LocalEventsTest):
    if _name.startswith("test_"):
        setattr(CullingTest, _name, None)
        setattr(ActivityPolicyTest, _name, None)


PHASE_ORDER = ["queued", "scheduling", "pulling", "restoring", "starting", "ready", "failed"]


class K8sEventsTest(unittest.TestCase):
    """The Kubernetes driver's pod watch as phases, against the real API
    server of k8s_harness with the simulated kubelet."""

    NS = "ev-repls"

    @classmethod
    def setUpClass(cls):
        import k8s_harness
        from fakes.github_fake import GitHubFake
        from test_k8s_runtime import cluster_config
        cls.k8s_harness = k8s_harness
        cls.tmp = tempfile.mkdtemp(prefix="devexd-k8sev-")
        cls.store_dir = os.path.join(cls.tmp, "bucket")
        os.mkdir(cls.store_dir)
        cls.kc = cls.enterClassContext(k8s_harness.KubeCluster())
        cls.kc.create_namespace(cls.NS)
        kubeconfig = cls.kc.write_kubeconfig(os.path.join(cls.tmp, "kubeconfig"))
        cls.redis = cls.enterClassContext(RedisServer())
        cls.gh = cls.enterClassContext(GitHubFake())
        conf = cluster_config(cls, kubeconfig, cls.NS)
        cls.d = cls.enterClassContext(Devexd(app=None, threads=2, config=conf))
        cls.d.sync_templates()

    def setUp(self):
        self.kc.kubelet.clear_rules()

    def login(self, login="OctoCat", uid=583231):
        import test_repl
        return test_repl.ReplTest.login(self, login, uid)

    def create(self, b, name):
        r = b.request("POST", "/api/repl/new", headers=JSON, body=json.dumps({"template": "node", "replName": name}))
        self.assertEqual(r.status, 201, r.body)
        rid = r.json()["id"]
        self.addCleanup(lambda: b.request("DELETE", "/api/repl/" + rid, headers=JSON))
        return rid

    def watch(self, b, rid, last_id=None):
        w = Watcher(self.d, "/api/repl/session/%s/events" % rid, b.cookie_header(), last_id)
        self.addCleanup(w.close)
        return w

    def test_phases_in_order_then_ready(self):
        b = self.login()
        rid = self.create(b, "k8s events")
        self.kc.kubelet.add_rule({"devex.test/ready-after": "1.5"}, namespace=self.NS, labels={"devex.io/repl": rid})
        w = self.watch(b, rid)
        r = b.get("/api/repl/session/" + rid)
        self.assertEqual(r.status, 200, r.body)
        got = w.until("ready")
        phases = [e["event"] for e in got]
        self.assertEqual(phases[0], "scheduling", phases)
        self.assertIn("starting", phases)
        order = [PHASE_ORDER.index(p) for p in phases]
        self.assertEqual(order, sorted(order), phases)
        self.assertEqual(len(phases), len(set(phases)), phases)
        self.assertEqual(got[-1]["data"]["url"], r.json()["url"])
        # resume from the first: the rest, once
        w2 = self.watch(b, rid, last_id=got[0]["id"])
        self.assertEqual([e["id"] for e in w2.until("ready", timeout=5)], [e["id"] for e in got[1:]])
        self.assertEqual(w2.quiet(0.5), [])
        r = b.request("DELETE", "/api/repl/session/" + rid, headers=JSON)
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual([e["event"] for e in w.until("stopped")], ["stopping", "saving", "stopped"])

    def test_eta_from_history_never_goes_back(self):
        b = self.login("eta-user", 5151)
        rid = self.create(b, "eta")
        rule = {"devex.test/ready-after": "1"}
        seen = []
        for _ in range(2):
            self.kc.kubelet.add_rule(rule, namespace=self.NS, labels={"devex.io/repl": rid})
            w = self.watch(b, rid)
            r = b.get("/api/repl/session/" + rid)
            self.assertEqual(r.status, 200, r.body)
            seen.append(w.until("ready"))
            # started at once after the previous stop: its own pod and
            # Deployment, not the previous session's on their way out
            sel = {"labelSelector": "devex.io/repl=" + rid}
            deps = self.kc.api.get("/apis/apps/v1/namespaces/%s/deployments" % self.NS, sel)["items"]
            self.assertEqual([d["metadata"].get("deletionTimestamp") for d in deps], [None])
            pods = self.kc.api.get("/api/v1/namespaces/%s/pods" % self.NS, sel)["items"]
            self.assertIn(None, [p["metadata"].get("deletionTimestamp") for p in pods])
            r = b.request("DELETE", "/api/repl/session/" + rid, headers=JSON)
            self.assertEqual(r.status, 200, r.body)
            w.until("stopped")
        # the second start has a history: every phase carries an ETA, the
        # median never above the p90, neither ever growing, 0 at ready
        got = seen[1]
        etas = [(e["event"], e["data"].get("eta"), e["data"].get("eta_p90")) for e in got]
        for phase, eta, p90 in etas:
            self.assertIsNotNone(eta, etas)
            self.assertLessEqual(eta, p90, etas)
        self.assertEqual(etas[-1][1:], (0, 0), etas)
        self.assertIn("starting", [e[0] for e in etas])  # it waited for its own pod
        self.assertGreater(etas[0][1], 0, etas)
        self.assertEqual([e[1] for e in etas], sorted([e[1] for e in etas], reverse=True), etas)
        self.assertEqual([e[2] for e in etas], sorted([e[2] for e in etas], reverse=True), etas)

    def test_kubernetes_events_become_notes(self):
        b = self.login("notes-user", 6161)
        rid = self.create(b, "notes")
        self.kc.kubelet.add_rule({"devex.test/ready-after": "4"}, namespace=self.NS, labels={"devex.io/repl": rid})
        w = self.watch(b, rid)
        import threading
        res = {}
        t = threading.Thread(target=lambda: res.update(r=b.get("/api/repl/session/" + rid)))
        t.start()
        sel = {"labelSelector": "devex.io/repl=" + rid}
        pods = harness.poll(lambda: self.kc.api.get("/api/v1/namespaces/%s/pods" % self.NS, sel)["items"],
                            "the start's pod", timeout=30)
        pod = pods[0]["metadata"]
        # what a kubelet reports while it pulls (the simulated one reports nothing)
        for i, (reason, message) in enumerate([
                ("Pulling", 'Pulling image "runner-node"'),
                ("Pulled", 'Successfully pulled image "runner-node" in 1.2s. Image size: 123456789 bytes.')]):
            self.kc.api.request("POST", "/api/v1/namespaces/%s/events" % self.NS, body={
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": "%s.note%d" % (pod["name"], i), "namespace": self.NS},
                "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": pod["name"],
                                   "namespace": self.NS, "uid": pod["uid"]},
                "reason": reason, "message": message, "type": "Normal",
                "source": {"component": "kubelet"}, "count": 1})
        got = w.until("ready", timeout=60)
        t.join(60)
        self.assertEqual(res["r"].status, 200, res["r"].body)
        notes = [e["data"] for e in got if e["event"] == "note"]
        self.assertIn(("Pulling", 'Pulling image "runner-node"'), [(n["reason"], n["message"]) for n in notes], got)
        pulled = [n for n in notes if n["reason"] == "Pulled"]
        self.assertEqual(len(pulled), 1, notes)
        self.assertEqual((pulled[0]["bytes"], pulled[0]["pod"], pulled[0]["type"]), (123456789, pod["name"], "Normal"))
        phases = [e["event"] for e in got if e["event"] != "note"]
        order = [PHASE_ORDER.index(p) for p in phases]
        self.assertEqual(order, sorted(order), phases)
        r = b.request("DELETE", "/api/repl/session/" + rid, headers=JSON)
        self.assertEqual(r.status, 200, r.body)

    def test_image_pull_failure(self):
        b = self.login("pull-user", 4242)
        rid = self.create(b, "bad image")
        self.kc.kubelet.add_rule({"devex.test/fail-image": "true"}, namespace=self.NS, labels={"devex.io/repl": rid})
        w = self.watch(b, rid)
        r = b.get("/api/repl/session/" + rid)
        self.assertEqual(r.status, 502, r.body)
        body = r.json()
        self.assertEqual(body["code"], "image_pull", body)
        self.assertIn("ErrImagePull", body["error"])  # the technical detail stays in `error`
        self.assertNotIn("ErrImagePull", body["message"])
        failed = w.until("failed")[-1]["data"]
        self.assertEqual(failed["code"], "image_pull")
        self.assertTrue(failed["image"], failed)
        self.assertIn(failed["image"], failed["message"])
        self.assertEqual(failed["message"], body["message"])
        # the failed start left nothing behind, at once (not after the
        # garbage collector's foreground deletion)
        sel = {"labelSelector": "devex.io/repl=" + rid}
        for path in ("/apis/apps/v1/namespaces/%s/deployments", "/apis/apps/v1/namespaces/%s/replicasets",
                     "/api/v1/namespaces/%s/pods"):
            self.assertEqual(self.kc.api.get(path % self.NS, sel)["items"], [], path)


if __name__ == "__main__":
    unittest.main(verbosity=2)
