"""Two devexd replicas on one Redis behind a round-robin client (issue #17
sections 5 and 7): the quota limits hold exactly across replicas and
workers, because each is checked and reserved in one Redis script
(repl.store RESERVE for repls_per_user and per_template, RESERVE_SESSION for
sessions_per_user with the move to "starting").

Single-host runtime; the templates' runner is the runner stand-in
(agent = false), one python process per running session. Every request goes
to the next replica in turn, from many threads at once.

- create storms (concurrent HTTP/2 streams to both replicas): per user, more
  creates than allowed, of two templates: each user ends with exactly
  repls_per_user REPLs, at most per_template of the
  limited template, every refusal the unchanged 429 {"error", "limit"};
  Redis' userRepls set equals the REPLs the API lists;
- start storms: every REPL started twice at once on both replicas: exactly
  sessions_per_user running per user, the others refused with the unchanged
  429 (error, limit, code "quota", in_use, the policy's sentence); one runner
  process per running session (no double start);
- stop and delete storms (each twice, both replicas; a second stop at once
  gets 409, never a failed save): no session, no runner, no REPL key left;
  the counts are back to zero;
- failed creates (a template without files) and failed starts (a runner
  that exits at once) release their slot; so does the sweep's repair of a
  REPL left "starting" by a crash;
- one sweeper across the two replicas for the whole run.
Each storm runs several rounds.
"""

import json
import os
import shutil
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd, RedisServer, poll  # noqa: E402
from test_auth import Browser  # noqa: E402

DEV_CONF = os.path.join(harness.SOURCE_DIR, "etc", "devexd.dev.conf.lua")
STANDIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runner_standin.py")
JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
REPLS, SESSIONS, PER_TEMPLATE = 3, 2, 2
ROUNDS = 3
USERS = ("ann", "ben", "cat")
QUOTA_SENTENCE = "You have %d of %d workspaces running, the most allowed. Stop one to start this one."


class RoundRobin:
    """One signed-in user's cookie, sent to the replicas in turn (a shared
    counter, so concurrent threads alternate too)."""

    def __init__(self, replicas, cookie):
        self.replicas = replicas
        self.cookie = cookie
        self.n = 0
        self.lock = threading.Lock()

    def request(self, method, path, body=None):
        with self.lock:
            d = self.replicas[self.n % len(self.replicas)]
            self.n += 1
        h = dict(JSON, Cookie=self.cookie)  # a JSON type: what the CSRF check asks of a write
        if body is not None:
            body = json.dumps(body)
        r = d.request(method, path, headers=h, body=body, timeout=120)
        try:
            return r.status, r.json()
        except ValueError:
            return r.status, r.body


class H2Burst(harness.H2Client):
    """POSTs with JSON bodies over one HTTP/2 connection, all written in one
    send: the server reads them together, so they run interleaved on the
    connection's worker (each yields at its first Redis call), which is
    where a read-then-act check lets two requests through."""

    def send_all(self, path, bodies, cookie):
        frames, sids = [], []
        for body in bodies:
            sid = self.next_id
            self.next_id += 2
            data = json.dumps(body).encode()
            block = b"".join(self._literal(k, v) for k, v in [
                (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", self.authority),
                ("content-type", "application/json"), ("content-length", str(len(data))), ("cookie", cookie)])
            self.streams[sid] = {"status": None, "data": b"", "ended": False, "reset": False}
            frames.append(self._frame(self.HEADERS, self.END_HEADERS, sid, block))
            frames.append(self._frame(self.DATA, self.END_STREAM, sid, data))
            sids.append(sid)
        self.sock.sendall(b"".join(frames))
        return sids

    def answers(self, sids):
        """The decoded JSON bodies (the status of a 201 or 429 is not in the
        client's small static table; the bodies tell them apart)."""
        return [json.loads(self.wait(sid)["data"]) for sid in sids]


def at_once(calls):
    """Runs the callables in threads released together; their results in order."""
    out = [None] * len(calls)
    gate = threading.Barrier(len(calls))

    def run(i, fn):
        gate.wait()
        try:
            out[i] = fn()
        except Exception as e:  # reported as the result, asserted by the caller
            out[i] = ("exception", repr(e))

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return out


class ReplicasTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="devexd-replicas-")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        # a copy of the stand-in under a path of our own: its processes are
        # this test's runners (counted by command line)
        cls.standin = os.path.join(cls.tmp, "standin-replicas.py")
        shutil.copy(STANDIN, cls.standin)
        policy = os.path.join(cls.tmp, "policy.lua")
        runner = "agent = false, local_command = { 'sh', '-c', 'exec python3 %s --host 127.0.0.1 --port \"$PORT\"' }" \
            % cls.standin
        with open(policy, "w") as f:
            f.write("return {\n"
                    "  templates = { catalogue = {\n"
                    "    standin = { image = 'runner-standin', port = 8081, %s },\n"
                    "    other = { image = 'runner-other', port = 8081, %s },\n"
                    "    broken = { image = 'runner-broken', port = 8081, agent = false,"
                    " local_command = { 'sh', '-c', 'exit 3' } },\n"
                    # no files in storage: its creates fail and roll back
                    "    empty = { image = 'runner-empty', port = 8081, %s } } },\n"
                    "  quota = { repls_per_user = %d, sessions_per_user = %d, per_template = { standin = %d } },\n"
                    "  cleanup = { sweep_interval = 2, idle_limit = 3600, stuck_after = 60 },\n"
                    # the storms are many creates and starts per user: the rate
                    # limits (tested in test_abuse) stay out of the way
                    "  limits = { create = false, start = false, stop = false },\n"
                    "}\n" % (runner, runner, runner, REPLS, SESSIONS, PER_TEMPLATE))
        for t in ("standin", "other", "broken"):
            os.makedirs(os.path.join(cls.tmp, "templates", t))
            with open(os.path.join(cls.tmp, "templates", t, "README.md"), "w") as f:
                f.write("workspace\n")
        cls.redis = cls.enterClassContext(RedisServer())
        conf = ('local c = dofile(%s)\n'
                'c.server.listen = { { host = "127.0.0.1", port = @PORT@ } }\n'
                'c.public_url = "http://localhost:@PORT@"\n'
                'c.policy = { file = %s }\n'
                'return c\n') % (json.dumps(DEV_CONF), json.dumps(policy))
        # one host, one data directory (the local runtime's workspaces), as
        # two replicas on one machine would share it
        env = {"DEVEXD_DATA": os.path.join(cls.tmp, "data"), "REDIS_URL": cls.redis.url(),
               "ENVIRONMENT": "development"}
        cls.replicas = [cls.enterClassContext(Devexd(app=None, threads=2, config_text=conf, env=env))
                        for _ in range(2)]
        cls.addClassCleanup(harness.kill_session_runners, cls.redis)
        cls.replicas[0].sync_templates(os.path.join(cls.tmp, "templates"))

    @classmethod
    def tearDownClass(cls):
        # one sweeper across the two replicas for the whole run (the lock's
        # expiry is 3 sweep intervals; no replica stalls that long here)
        def runs():
            return [len([e for e in d.logs() if e.get("msg") == "sweep"]) for d in cls.replicas]
        try:
            poll(lambda: max(runs()) > 0, "a sweep", timeout=15)
        except AssertionError:
            pass  # reported below
        runs = runs()
        super().tearDownClass()
        if not (min(runs) == 0 and max(runs) > 0):
            raise AssertionError("sweep runs per replica: %r (want exactly one sweeper)" % runs)

    # ---- helpers ----

    def sign_in(self, user):
        b = Browser(self.replicas[0])
        r = b.request("POST", "/auth/dev/login", body="user=" + user, headers=FORM)
        self.assertEqual(r.status, 302, r.body)
        return RoundRobin(self.replicas, b.cookie_header())

    def keys(self, pattern):
        return sorted(k.decode() for k in (self.redis.call("KEYS", "devex:" + pattern) or []))

    def runner_pids(self):
        """The pids of this test's runner processes (the stand-in copy)."""
        pids = []
        for p in os.listdir("/proc"):
            if not p.isdigit():
                continue
            try:
                with open("/proc/%s/cmdline" % p, "rb") as f:
                    argv = f.read().split(b"\0")
                with open("/proc/%s/stat" % p) as f:
                    zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
            except OSError:
                continue
            if not zombie and any(a.decode(errors="replace") == self.standin for a in argv) \
                    and argv[0].decode(errors="replace").startswith("python3"):
                pids.append(int(p))
        return sorted(pids)

    def listed(self, c):
        st, body = c.request("GET", "/api/repl")
        self.assertEqual(st, 200, body)
        return body

    def check_exact(self, clients):
        """Redis agrees with the API and with the processes: each user's
        userRepls set is the REPLs listed, each session has one live runner
        and every runner a session."""
        sessions = 0
        for c in clients:
            repls = self.listed(c)
            ids = sorted(r["id"] for r in repls)
            if repls:  # the owner key is in the record (the API shows the login)
                owner = self.redis.call("HGET", "devex:replMeta:" + ids[0], "user").decode()
                members = sorted(m.decode() for m in self.redis.call("SMEMBERS", "devex:userRepls:" + owner))
                self.assertEqual(members, ids)
            self.assertLessEqual(len(ids), REPLS)
            self.assertLessEqual(len([r for r in repls if r["template"] == "standin"]), PER_TEMPLATE)
            running = [r for r in repls if r["isActive"]]
            self.assertLessEqual(len(running), SESSIONS)
            sessions += len(running)
        session_keys = self.keys("activeSession:*")
        self.assertEqual(len(session_keys), sessions)
        pids = sorted(int(self.redis.call("HGET", k, "pid")) for k in session_keys)
        self.assertEqual(len(set(pids)), len(pids))
        # a runner is `sh -c exec python3 ...`: the session's pid is the runner
        poll(lambda: self.runner_pids() == pids, "one runner process per running session", timeout=30)
        return sessions

    # ---- tests ----

    def test_quotas_exact_across_replicas(self):
        clients = [self.sign_in(u) for u in USERS]
        for rnd in range(ROUNDS):
            # create storms, as concurrent streams of one HTTP/2 connection to
            # each replica (every user's at once): 6 creates of the limited
            # template (exactly PER_TEMPLATE made), then 3 of each template
            # (exactly one more, of the other)
            conns = [H2Burst("127.0.0.1", d.port, timeout=120) for d in self.replicas]
            for n_limited, n_other, made in ((6, 0, PER_TEMPLATE), (3, 3, REPLS - PER_TEMPLATE)):
                sent = []
                for c in clients:
                    bodies = [{"template": t, "replName": "r%d-%s%d" % (rnd, t, i)}
                              for i, t in enumerate(["standin"] * n_limited + ["other"] * n_other)]
                    for k, h2 in enumerate(conns):
                        sent.append((c, h2, h2.send_all("/api/repl/new", bodies[k::2], c.cookie)))
                per_user = {}
                for c, h2, sids in sent:
                    for body in h2.answers(sids):
                        if "id" in body:
                            per_user[c] = per_user.get(c, 0) + 1
                        else:
                            self.assertIn(body, ({"error": "repl limit reached", "limit": REPLS},
                                                 {"error": "repl limit reached", "limit": PER_TEMPLATE}))
                self.assertEqual(sorted(per_user.values()), [made] * len(clients), per_user)
                self.check_exact(clients)
            for h2 in conns:
                h2.close()
            for c in clients:
                repls = self.listed(c)
                self.assertEqual(len(repls), REPLS)
            self.assertEqual(self.check_exact(clients), 0)

            # start storm: each REPL twice at once, the two on different replicas
            calls = []
            for c in clients:
                for r in self.listed(c):
                    for _ in range(2):
                        calls.append(lambda c=c, rid=r["id"]: (rid, c.request("GET", "/api/repl/session/" + rid)))
            results = at_once(calls)
            by_repl = {}
            for rid, (st, body) in results:
                by_repl.setdefault(rid, []).append((st, body))
                if st == 200:
                    self.assertEqual(body["replId"], rid)
                else:
                    self.assertEqual(st, 429, body)
                    self.assertEqual(body, {"error": "session limit reached", "limit": SESSIONS, "code": "quota",
                                            "in_use": SESSIONS, "message": QUOTA_SENTENCE % (SESSIONS, SESSIONS)})
            for rid, answers in by_repl.items():
                urls = {b["url"] for st, b in answers if st == 200}
                self.assertLessEqual(len(urls), 1, answers)  # both starts of a REPL: one session
            for c in clients:
                self.assertEqual(len([r for r in self.listed(c) if r["isActive"]]), SESSIONS)
            self.assertEqual(self.check_exact(clients), SESSIONS * len(clients))

            # stop storm, then delete storm (each twice, both replicas)
            ids = [(c, r["id"]) for c in clients for r in self.listed(c)]
            results = at_once([lambda c=c, rid=rid: c.request("DELETE", "/api/repl/session/" + rid)
                               for c, rid in ids for _ in range(2)])
            for st, body in results:
                self.assertIn(st, (200, 204, 409), body)  # 409: the other stop holds it
            poll(lambda: not self.keys("activeSession:*"), "every session to end", timeout=60)
            self.assertEqual(self.check_exact(clients), 0)
            results = at_once([lambda c=c, rid=rid: c.request("DELETE", "/api/repl/" + rid)
                               for c, rid in ids for _ in range(2)])
            for st, body in results:
                self.assertIn(st, (200, 204, 404, 409), body)
            for c, rid in ids:  # a delete refused while the other ran is done now
                st, body = c.request("DELETE", "/api/repl/" + rid)
                self.assertIn(st, (200, 204, 404), body)
            for c in clients:
                self.assertEqual(self.listed(c), [])
            self.assertEqual(self.keys("userRepls:*"), [])
            self.assertEqual(self.keys("replMeta:*"), [])
            self.assertEqual(self.keys("activeSession:*"), [])
            self.assertEqual(self.runner_pids(), [])

    def test_failed_creates_and_starts_release_their_slot(self):
        c = self.sign_in("dan")
        # creates that fail (the template has no files) and roll back, at once
        # on both replicas: none keeps a slot, so all three creates below pass
        results = at_once([lambda i=i: c.request("POST", "/api/repl/new", {"template": "empty", "replName": "e%d" % i})
                           for i in range(2 * REPLS)])
        for st, body in results:  # a create holds its slot until it is rolled back
            self.assertIn((st, body), ((500, {"error": "template empty has no files"}),
                                       (429, {"error": "repl limit reached", "limit": REPLS})))
        self.assertIn(500, [st for st, _ in results])
        self.assertEqual(self.redis.call("SCARD", "devex:userRepls:dev_dan"), 0)
        ids = {}
        for tpl in ("standin", "other", "broken"):
            st, body = c.request("POST", "/api/repl/new", {"template": tpl, "replName": tpl})
            self.assertEqual(st, 201, body)
            ids[tpl] = body["id"]
        self.addCleanup(lambda: [c.request("DELETE", "/api/repl/" + i) for i in ids.values()])
        for _ in range(ROUNDS):
            # the broken REPL's starts fail (its runner exits) while the good
            # ones start, at both replicas; a refusal is the quota's 429
            results = at_once([lambda rid=rid: c.request("GET", "/api/repl/session/" + rid)
                               for rid in ids.values() for _ in range(2)])
            for st, body in results:
                self.assertIn(st, (200, 429, 502), body)
            # the failed starts released their slots: both good REPLs start
            for tpl in ("standin", "other"):
                st, body = c.request("GET", "/api/repl/session/" + ids[tpl])
                self.assertEqual(st, 200, body)
            st, body = c.request("GET", "/api/repl/session/" + ids["broken"])
            self.assertEqual((st, body.get("in_use")), (429, SESSIONS), body)
            # one slot free: the broken start fails (502, not 429) and frees it again
            st, body = c.request("DELETE", "/api/repl/session/" + ids["other"])
            self.assertIn(st, (200, 204), body)
            for _ in range(2):
                st, body = c.request("GET", "/api/repl/session/" + ids["broken"])
                self.assertEqual(st, 502, body)
                self.assertEqual(body.get("code"), "crashed", body)
            st, body = c.request("GET", "/api/repl/session/" + ids["other"])
            self.assertEqual(st, 200, body)
            self.assertEqual(self.check_exact([c]), SESSIONS)
            for tpl in ("standin", "other"):
                st, body = c.request("DELETE", "/api/repl/session/" + ids[tpl])
                self.assertIn(st, (200, 204), body)
            self.assertEqual(self.check_exact([c]), 0)


    def test_sweep_repair_releases_the_slot(self):
        """A REPL left "starting" by a crash holds a session slot until the
        sweep (on whichever replica holds its lock) repairs it; then it is free."""
        c = self.sign_in("eve")
        ids = []
        for tpl in ("standin", "other", "other"):
            st, body = c.request("POST", "/api/repl/new", {"template": tpl, "replName": "x" + tpl})
            self.assertEqual(st, 201, body)
            ids.append(body["id"])
        self.addCleanup(lambda: [c.request("DELETE", "/api/repl/" + i) for i in ids])
        st, body = c.request("GET", "/api/repl/session/" + ids[0])
        self.assertEqual(st, 200, body)
        # a start cut short by a crash long ago: "starting", no workload
        since = str(int(time.time()) - 1000)
        self.redis.call("HSET", "devex:replMeta:" + ids[1], "state", "starting", "state_since", since)
        # the store's index of REPLs in a transition (lua/repl/store.lua), as its scripts keep it
        self.redis.call("ZADD", "devex:replIdx:transit", since, ids[1])
        st, body = c.request("GET", "/api/repl/session/" + ids[2])
        self.assertEqual((st, body.get("in_use")), (429, SESSIONS), body)
        poll(lambda: self.redis.call("HGET", "devex:replMeta:" + ids[1], "state") == b"created",
             "the sweep to repair the stuck start", timeout=60)
        st, body = c.request("GET", "/api/repl/session/" + ids[2])
        self.assertEqual(st, 200, body)
        for rid in (ids[0], ids[2]):
            st, body = c.request("DELETE", "/api/repl/session/" + rid)
            self.assertIn(st, (200, 204), body)
        self.assertEqual(self.check_exact([c]), 0)


if __name__ == "__main__":
    unittest.main()
