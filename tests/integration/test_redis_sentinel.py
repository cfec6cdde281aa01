"""Redis Sentinel (issue 17, section 5), against real redis-servers: a
primary, its replica and three sentinels (Debian's redis-server --sentinel),
all on loopback, and devexd with REDIS_URL
redis+sentinel://127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3/mymaster/0.

  * a stale sentinel (a fake listed first that names the replica as the
    primary): devexd checks ROLE, refuses the replica, asks the next
    sentinel and works on the real primary;
  * failover under load: signed-in users list and create REPLs in threads
    while the primary is killed (SIGKILL); the sentinels promote the
    replica and announce it (+switch-master, which devexd follows at once);
    every answer during the switch is a success or a clean 503
    JSON; requests succeed again within 30 s; the writes after the failover
    are on the new primary; /readyz said 503 during the outage and 200
    after; the invalidation connections (caches) moved to the new primary;
    the same for a planned SENTINEL FAILOVER while devexd is connected;
  * an ACL user in the URL (the primary's credentials); without ROLE it
    works with a warning, with +role it is checked;
  * every sentinel down at start, or none knowing the master name: devexd
    starts, /readyz and a sign-in answer 503 JSON at once (no hang) and the
    log says why; rediss+sentinel:// is refused at config load.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd, RedisClient, RedisServer, poll  # noqa: E402
from fakes.github_fake import GitHubFake  # noqa: E402
import test_repl  # noqa: E402
from test_auth import FRONTEND, GH_REDIRECT  # noqa: E402
from test_config import SHIPPED_CONF, clean_env  # noqa: E402

JSON = {"Content-Type": "application/json"}
MASTER = "mymaster"
# many creates per user (the rate limit still counts them in Redis)
POLICY = """return { quota = { repls_per_user = 1000, sessions_per_user = 5 },
  limits = { create = { limit = 100000, window = 60, fail_open = false } } }
"""


class Sentinel:
    """redis-server --sentinel on a reserved loopback port, monitoring
    MASTER at primary_port (quorum 2, down after 3 s: CI runs this beside
    heavy tests, and a server starved for a second must not be failed over
    behind the test's back; a failover that stalls on a busy machine is
    given 15 s before it is abandoned)."""

    def __init__(self, tmp, name, primary_port):
        self.dir = os.path.join(tmp, name)
        os.mkdir(self.dir)
        self.port, self._reservation = harness.reserve_port()
        self.conf = os.path.join(self.dir, "sentinel.conf")
        with open(self.conf, "w") as f:  # sentinel rewrites it: its own file
            f.write("port %d\nbind 127.0.0.1\ndaemonize no\ndir %s\nlogfile \"\"\n"
                    "sentinel monitor %s 127.0.0.1 %d 2\n"
                    "sentinel down-after-milliseconds %s 3000\n"
                    "sentinel failover-timeout %s 15000\n"
                    "sentinel parallel-syncs %s 1\n"
                    % (self.port, self.dir, MASTER, primary_port, MASTER, MASTER, MASTER))
        self.log_path = os.path.join(self.dir, "sentinel.log")
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(["redis-server", self.conf, "--sentinel"], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         preexec_fn=harness._set_pdeathsig)
        finally:
            log.close()
        self._reservation.close()
        self._reservation = None
        poll(self.pingable, "sentinel %d to answer PING" % self.port, timeout=15)

    def pingable(self):
        try:
            return self.call("PING") == "PONG"
        except (OSError, ConnectionError):
            return False

    def call(self, *args):
        with RedisClient(port=self.port, timeout=3) as c:
            return c.call(*args)

    def master_port(self):
        r = self.call("SENTINEL", "get-master-addr-by-name", MASTER)
        return int(r[1]) if r else None

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")


class StaleSentinel:
    """A fake sentinel that names `port` (a replica) as the primary: what a
    sentinel that has not seen a failover yet answers."""

    def __init__(self, port):
        self.named_port = port
        self.queries = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn):
        f = conn.makefile("rb")
        try:
            while True:
                cmd = harness._resp_read(f)
                if isinstance(cmd, list) and [c.lower() for c in cmd[:2]] == [b"sentinel", b"get-master-addr-by-name"]:
                    self.queries += 1
                    conn.sendall(harness._resp_encode(["127.0.0.1", str(self.named_port)]))
                else:
                    conn.sendall(b"-ERR unknown command\r\n")
        except (OSError, ConnectionError, ValueError):
            pass
        finally:
            f.close()
            conn.close()

    def close(self):
        self.sock.close()


def sentinel_url(ports, master=MASTER):
    return "redis+sentinel://%s/%s/0" % (",".join("127.0.0.1:%d" % p for p in ports), master)


def is_clean_503(r):
    if r.status != 503:
        return False
    try:
        body = r.json()
    except ValueError:
        return False
    return isinstance(body, dict) and isinstance(body.get("error") or body.get("status"), str)


class SentinelTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="devexd-sentinel-")
        cls.store_dir = os.path.join(cls.tmp, "bucket")
        os.mkdir(cls.store_dir)
        cls.policy = os.path.join(cls.tmp, "policy.lua")
        with open(cls.policy, "w") as f:
            f.write(POLICY)
        cls.sentinels = []
        cls.primary = RedisServer().__enter__()
        cls.replica = RedisServer(args=["--replicaof", "127.0.0.1", str(cls.primary.port)]).__enter__()
        poll(lambda: b"master_link_status:up" in cls.replica.call("INFO", "replication"),
             "the replica to sync", timeout=20)
        for i in range(3):
            cls.sentinels.append(Sentinel(cls.tmp, "s%d" % i, cls.primary.port))

        # the failover needs every sentinel to know the replica and the others
        def topology_known():
            for s in cls.sentinels:
                if len(s.call("SENTINEL", "replicas", MASTER)) != 1 or len(s.call("SENTINEL", "sentinels", MASTER)) != 2:
                    return False
            return True
        poll(topology_known, "the sentinels to discover the replica and each other", timeout=30, interval=0.2)
        cls.gh = GitHubFake().__enter__()

    @classmethod
    def tearDownClass(cls):
        for s in getattr(cls, "sentinels", []):
            s.close()
        harness.stop_class_servers(cls, "gh", "replica", "primary")

    def devexd(self, url):
        conf = {
            "environment": "production", "allow_insecure_http": True,
            "frontend_url": FRONTEND,
            "redis": {"url": url, "timeout": 2},
            "github": self.gh.config(GH_REDIRECT),
            "session": {"ttl": 3600, "state_ttl": 600},
            "storage": {"driver": "fs", "dir": self.store_dir},
            "policy": {"file": self.policy},
        }
        d = Devexd(app=None, threads=2, config=conf)
        d.__enter__()
        self.addCleanup(d.__exit__, None, None, None)
        return d

    def login(self, d, login, uid):
        self.d = d
        return test_repl.ReplTest.login(self, login=login, uid=uid)

    def wait_ready(self, d, timeout=30):
        poll(lambda: d.get("/readyz").status == 200, "/readyz 200", timeout=timeout, interval=0.1)

    def create(self, b, name):
        return b.request("POST", "/api/repl/new", headers=JSON,
                         body=json.dumps({"template": "python", "replName": name, "userName": "ignored"}))

    def roles(self):
        out = {}
        for rs in (self.primary, self.replica):
            if rs.running():
                out[rs.port] = rs.call("ROLE")[0]
        return out

    # ---- tests (named in the order they must run: the failover is last) ----

    def test_1_stale_sentinel_answer_is_checked(self):
        self.assertEqual(self.roles()[self.primary.port], b"master")
        fake = StaleSentinel(self.replica.port)
        self.addCleanup(fake.close)
        d = self.devexd(sentinel_url([fake.port] + [s.port for s in self.sentinels]))
        d.sync_templates()
        # each worker's connection: the fake first, the replica refused, then the real primary
        d.wait_log(lambda e: "is a slave; asking again" in e.get("msg", ""), count=2, timeout=20,
                   what="the ROLE check refusing the replica")
        d.wait_log(lambda e: "names 127.0.0.1:%d as the primary" % self.primary.port in e.get("msg", ""),
                   count=2, timeout=20, what="the real sentinel's answer")
        self.wait_ready(d)
        self.assertGreaterEqual(fake.queries, 2)
        b = self.login(d, "stale", 7001)
        r = self.create(b, "after stale")
        self.assertEqual(r.status, 201, r.body)
        rid = r.json()["id"]
        # the write went to the primary (a replica would have refused it: READONLY)
        self.assertEqual(self.primary.call("EXISTS", "devex:replMeta:" + rid), 1)

    def run_load(self, d, browsers, switch, new_primary):
        """Signed-in users list and create REPLs (and /readyz is polled) in
        threads; switch() makes the failover once the load runs. Returns the
        results [(time, what, response or exception)] and the times: switch
        (before it), promoted (every sentinel names new_primary), recovered
        (the first REPL created after that)."""
        stop = threading.Event()
        results = []
        lock = threading.Lock()

        def record(what, r):
            with lock:
                results.append((time.monotonic(), what, r))

        def load(i, b):
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    if n % 4 == 0:
                        record("create", self.create(b, "load %d %d" % (i, n)))
                    else:
                        record("list", b.get("/api/repl"))
                except Exception as e:  # a reset or a timeout is a failure here
                    record("exception", e)
                time.sleep(0.02)

        def readyz():
            while not stop.is_set():
                try:
                    record("readyz", d.get("/readyz"))
                except Exception as e:
                    record("exception", e)
                time.sleep(0.1)

        threads = [threading.Thread(target=load, args=(i, b), daemon=True) for i, b in enumerate(browsers)]
        threads.append(threading.Thread(target=readyz, daemon=True))
        for t in threads:
            t.start()
        times = {}
        try:
            time.sleep(1.5)
            times["before"] = time.monotonic()
            switch()
            times["switch"] = time.monotonic()
            poll(lambda: all(s.master_port() == new_primary.port for s in self.sentinels),
                 "the sentinels to promote %d" % new_primary.port, timeout=40, interval=0.2)
            times["promoted"] = time.monotonic()

            def recovered():
                with lock:
                    return any(t > times["promoted"] and w == "create" and getattr(r, "status", 0) == 201
                               for t, w, r in results)
            poll(recovered, "a REPL created after the failover", timeout=30, interval=0.1)
            times["recovered"] = time.monotonic()
            time.sleep(1.5)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        return results, times

    def check_load(self, d, browsers, results, times, new_primary):
        """What must hold after a failover under load (run_load)."""
        t_switch, t_recovered = times["switch"], times["recovered"]
        shown = {k: round(v - times["before"], 2) for k, v in times.items()}
        bad = [(round(t - t_switch, 2), w, r if isinstance(r, Exception) else (r.status, r.body[:200]))
               for t, w, r in results
               if isinstance(r, Exception) or not (r.status in (200, 201) or is_clean_503(r))]
        self.assertEqual(bad, [], "answers that are neither a success nor a clean 503")
        before = [r for t, w, r in results if t < times["before"]]
        self.assertTrue(before and all(r.status in (200, 201) for r in before))
        # devexd followed within the bound (from the switch to a successful write)
        self.assertLess(t_recovered - t_switch, 30, shown)
        # each worker follows on its own: /readyz, which either may answer,
        # is 200 again, and steadily
        after = [r.status for t, w, r in results if w == "readyz" and t > t_recovered]
        self.assertIn(200, after)
        poll(lambda: all(d.get("/readyz").status == 200 for _ in range(10)), "/readyz 200 ten times in a row",
             timeout=30, interval=0.2)
        # the writes after the failover are on the new primary
        created = [r.json()["id"] for t, w, r in results if w == "create" and t > t_recovered and r.status == 201]
        self.assertTrue(created)
        self.assertEqual(new_primary.call("ROLE")[0], b"master", self.sentinel_events())
        for rid in created:
            self.assertEqual(new_primary.call("EXISTS", "devex:replMeta:" + rid), 1, rid)
        # every list after the recovery shows what its user created since
        # (the caches followed). Creates acknowledged by the old primary
        # just before it stopped taking writes may be gone: Redis replicates
        # asynchronously, and a failover keeps only what the replica had;
        # they are counted, not asserted
        lost = 0
        for b in browsers:
            ids = {x["id"] for x in b.get("/api/repl").json()}
            mine = [(t, r.json()["id"]) for t, w, r in results if w == "create" and r.status == 201
                    and r.json().get("user") == b.login]
            self.assertTrue({i for t, i in mine if t > t_recovered} <= ids, b.login)
            lost += sum(1 for t, i in mine if i not in ids)
        poll(lambda: self.tracking_clients(new_primary, browsers), "a tracking connection on the new primary",
             timeout=20, interval=0.2)
        d.wait_log(lambda e: "names 127.0.0.1:%d as the primary" % new_primary.port in e.get("msg", ""),
                   what="the sentinels' new answer")
        # the failover was announced to devexd (+switch-master), not only found by retrying
        d.wait_log(lambda e: e.get("msg") == "redis: the sentinels moved the primary of 'mymaster' to 127.0.0.1:%d"
                   % new_primary.port, what="the +switch-master message")
        self.assertTrue(d.running())
        n503 = sum(1 for t, w, r in results if w != "readyz" and r.status == 503)
        n_ok = sum(1 for t, w, r in results if w != "readyz" and r.status in (200, 201))
        sys.stderr.write("\n%s: %s s after the start of the switch; %d requests ok, %d clean 503, "
                         "%d acknowledged creates lost in the switch\n" % (self.id().split(".")[-1], shown, n_ok, n503,
                                                                            lost))
        return lost

    def signed_in(self, d, prefix, uid):
        browsers = []
        for i in range(3):
            b = self.login(d, "%s%d" % (prefix, i), uid + i)
            b.login = "%s%d" % (prefix, i)
            browsers.append(b)
        return browsers

    def test_2_failover_under_load(self):
        d = self.devexd(sentinel_url([s.port for s in self.sentinels]))
        d.sync_templates()
        self.wait_ready(d)
        browsers = self.signed_in(d, "load", 8000)
        # the invalidation connections (opened at a worker's first cached read) track on the primary
        poll(lambda: self.tracking_clients(self.primary, browsers), "a tracking connection on the primary",
             timeout=20, interval=0.2)

        def kill():
            # everything before the kill is replicated (no lost write is the sentinels' business)
            self.primary.call("WAIT", 1, 2000)
            self.primary.stop(kill=True)
        results, times = self.run_load(d, browsers, kill, self.replica)
        outage = [r.status for t, w, r in results if w == "readyz" and times["switch"] < t < times["promoted"]]
        self.assertIn(503, outage, "/readyz during the outage")
        self.check_load(d, browsers, results, times, self.replica)

    def test_3_planned_failover_while_connected(self):
        """SENTINEL FAILOVER back to the first server, restarted: the old
        primary stays up (a replica now), so devexd must leave it on the
        announcement or on its READONLY answers, not on a lost connection."""
        self.primary.start()  # empty, a master until the sentinels make it a replica of the new primary
        poll(lambda: self.primary.call("ROLE")[0] == b"slave"
             and b"master_link_status:up" in self.primary.call("INFO", "replication"),
             "the restarted server to be a synced replica", timeout=40, interval=0.2)

        def replica_known():
            for s in self.sentinels:
                reps = s.call("SENTINEL", "replicas", MASTER)
                fields = [dict(zip(x[::2], x[1::2])) for x in reps]
                if not any(f.get(b"port") == str(self.primary.port).encode() and f.get(b"flags") == b"slave"
                           for f in fields):
                    return False
            return True
        poll(replica_known, "every sentinel to see the replica as healthy", timeout=40, interval=0.2)
        d = self.devexd(sentinel_url([s.port for s in self.sentinels]))
        d.sync_templates()
        self.wait_ready(d)
        browsers = self.signed_in(d, "swap", 9000)
        poll(lambda: self.tracking_clients(self.replica, browsers), "a tracking connection on the primary",
             timeout=20, interval=0.2)

        def failover():
            def ask():
                try:
                    return self.sentinels[0].call("SENTINEL", "FAILOVER", MASTER) == "OK"
                except harness.RedisError as e:  # INPROG, NOGOODSLAVE while the sentinels settle
                    return "refused: %s" % e and False
            poll(ask, "SENTINEL FAILOVER accepted", timeout=20, interval=0.5)
        results, times = self.run_load(d, browsers, failover, self.primary)
        self.check_load(d, browsers, results, times, self.primary)
        poll(lambda: self.replica.call("ROLE")[0] == b"slave", "the old primary to be a replica", timeout=20)

    def test_4_acl_user(self):
        """The primary's credentials from the URL (AUTH before ROLE); an ACL
        user without ROLE (in @dangerous) works, with a warning that the
        role cannot be checked; one given +role is checked quietly."""
        servers = {rs.port: rs for rs in (self.primary, self.replica)}
        primary = servers[self.sentinels[0].master_port()]
        for rs in servers.values():  # ACLs are not replicated
            rs.call("ACL", "SETUSER", "narrow", "on", ">pw-narrow", "~devex:*", "&__redis__:invalidate", "+@all",
                    "-@dangerous")
            rs.call("ACL", "SETUSER", "withrole", "on", ">pw-role", "~devex:*", "&__redis__:invalidate", "+@all",
                    "-@dangerous", "+role")
        ports = [s.port for s in self.sentinels]
        for user, pw, warned in (("narrow", "pw-narrow", True), ("withrole", "pw-role", False)):
            with self.subTest(user=user):
                d = self.devexd(sentinel_url(ports).replace("://", "://%s:%s@" % (user, pw), 1))
                d.sync_templates()
                self.wait_ready(d)
                b = self.login(d, user, 9900 + len(user))
                r = self.create(b, "acl " + user)
                self.assertEqual(r.status, 201, r.body)
                self.assertEqual(primary.call("EXISTS", "devex:replMeta:" + r.json()["id"]), 1)
                users = {f.split("=", 1)[1] for line in primary.call("CLIENT", "LIST").decode().splitlines()
                         for f in line.split() if f.startswith("user=")}
                self.assertIn(user, users)
                checked = [e for e in d.logs() if "cannot check that" in e.get("msg", "")]
                if warned:
                    self.assertTrue(checked and "NOPERM" in checked[0]["msg"], checked)
                else:
                    self.assertEqual(checked, [])
                self.assertNotIn(pw, d.raw_log())

    def sentinel_events(self):
        """What the sentinels decided (down, failover, switch), for a failure
        message: a failover the test did not ask for shows here."""
        keep = ("+sdown", "+odown", "+try-failover", "+elected-leader", "+switch-master", "-sdown")
        return "\n".join("sentinel %d: %s" % (s.port, line.strip()) for s in self.sentinels
                         for line in s.log().splitlines() if any(k in line for k in keep))

    @staticmethod
    def tracking_clients(rs, browsers):
        """devexd's invalidation connections on rs (after a signed-in request
        each, so that every worker has opened its own)."""
        for b in browsers:
            b.get("/api/repl")
        clients = rs.call("CLIENT", "LIST").decode()
        # flags t: client tracking on (B: broadcast mode)
        return sum(1 for line in clients.splitlines() for f in line.split() if f.startswith("flags=") and "t" in f[6:])


class NoSentinelTest(unittest.TestCase):
    def test_all_sentinels_down_at_start(self):
        held = [harness.reserve_port() for _ in range(3)]  # bound, not listening: refused
        try:
            with GitHubFake() as gh, tempfile.TemporaryDirectory() as tmp:
                conf = {"environment": "production", "allow_insecure_http": True, "frontend_url": FRONTEND,
                        "redis": {"url": sentinel_url([p for p, _ in held]), "timeout": 2},
                        "github": gh.config(GH_REDIRECT), "storage": {"driver": "fs", "dir": tmp}}
                with Devexd(app=None, threads=2, config=conf) as d:
                    for _ in range(3):
                        r = d.get("/readyz", timeout=15)
                        self.assertEqual(r.status, 503, r.body)
                        self.assertEqual(r.json()["redis"], "unavailable")
                        # a signed-in request (any well-formed session id: Redis is asked)
                        r = d.get("/api/repl", timeout=15, headers={"Cookie": "devex_session=" + "A" * 43})
                        self.assertEqual(r.status, 503, r.body)
                        self.assertEqual(r.json(), {"error": "session store unavailable"})
                    d.wait_log(lambda e: e.get("msg", "").startswith("redis: no sentinel named the primary of 'mymaster'")
                               and "Connection refused" in e.get("msg", ""), what="the sentinels' failure")
        finally:
            for _, s in held:
                s.close()

    def test_unknown_master_name(self):
        with RedisServer() as primary, tempfile.TemporaryDirectory() as tmp, GitHubFake() as gh:
            s = Sentinel(tmp, "s", primary.port)
            try:
                conf = {"environment": "production", "allow_insecure_http": True, "frontend_url": FRONTEND,
                        "redis": {"url": sentinel_url([s.port], master="nosuch"), "timeout": 2},
                        "github": gh.config(GH_REDIRECT), "storage": {"driver": "fs", "dir": tmp}}
                with Devexd(app=None, threads=2, config=conf) as d:
                    self.assertEqual(d.get("/readyz", timeout=15).status, 503)
                    d.wait_log(lambda e: "does not know a primary named 'nosuch'" in e.get("msg", ""),
                               what="the unknown master name")
            finally:
                s.close()

    def test_url_errors_at_config_load(self):
        cases = {
            "rediss+sentinel://127.0.0.1:26379/mymaster": "Sentinel over TLS is not supported",
            "redis+sentinel:///mymaster": "expected a redis or rediss or unix or redis+sentinel URL",
        }
        for url, want in cases.items():
            with self.subTest(url=url):
                p = subprocess.run([harness.DEVEXD_BIN, "-c", SHIPPED_CONF, "-L", harness.LUA_DIR, "--check"],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   timeout=30, env=clean_env(REDIS_URL=url, ENVIRONMENT="test"))
                self.assertEqual(p.returncode, 1, p.stdout)
                self.assertIn(want, p.stderr)


if __name__ == "__main__":
    unittest.main()
