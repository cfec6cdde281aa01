"""Single-host isolation (issue 14 item 3, lua/runtime/sandbox.lua,
src/sandbox.c): with runtime.isolation each local runner runs under its own
uid in a bubblewrap sandbox, reached through a Unix socket. The template's
command here is an attacker (ATTACKER below, run from the REPL's workspace):
from inside it tries devexd's environment, another workspace, the storage
directory, Redis, another runner and devexd's port, all of which must fail;
a fork bomb and a memory hog are contained while devexd and another user's
runner keep answering; a 10 GB file cannot be written, and a 10 GB sparse
file left in a workspace is skipped by the save with a recorded error while
the rest is saved; stop kills every process of the runner's uid and removes
its cgroups. Also: devexd refuses to start with the local runtime and a real
sign-in provider without isolation. Runs as root (it needs setuid)."""

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd, RedisServer  # noqa: E402
from fakes.github_fake import GitHubFake  # noqa: E402
import test_repl  # noqa: E402
from test_auth import FRONTEND, GH_REDIRECT  # noqa: E402

JSON = {"Content-Type": "application/json"}
SECRET = "s3cr3t-only-devexd-knows-%d" % os.getpid()
FIRST_UID = 230000 + (os.getpid() % 100) * 20
UID_COUNT = 20
GB = 1024 * 1024 * 1024
MB = 1024 * 1024
PROCESSES = 64

# The runner: an HTTP server on $SOCKET whose routes run the attacks on request.
ATTACKER = r'''
import http.server, json, os, socket, socketserver, sys, time, urllib.parse

def outcome(fn):
    try:
        return "LEAK: " + repr(fn())[:200]
    except Exception as e:
        return "denied: %s: %s" % (type(e).__name__, e)

def read(path):
    with open(path, "rb") as f:
        return f.read()

def tcp(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    s.sendall(b"PING\r\n")
    return s.recv(100)

def unix(path):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(2)
    s.connect(path)
    return "connected"

def scan_environ(secret):
    found = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if secret.encode() in read("/proc/%s/environ" % p):
                    found.append(p)
            except OSError:
                pass
    if not found:
        raise LookupError("secret in no visible environ")
    return found

def probes(a):
    return {
        "uid": os.getuid(),
        "my_env_has_secret": a["secret"] in json.dumps(dict(os.environ)),
        "devexd_environ": outcome(lambda: read("/proc/%d/environ" % a["devexd_pid"])),
        "any_environ": outcome(lambda: scan_environ(a["secret"])),
        "kill_devexd": outcome(lambda: os.kill(a["devexd_pid"], 0)),
        "other_workspace": outcome(lambda: os.listdir(a["other_ws"])),
        "other_file": outcome(lambda: read(a["other_ws"] + "/secret.txt")),
        "storage": outcome(lambda: os.listdir(a["storage"])),
        "config": outcome(lambda: read(a["config"])),
        "redis": outcome(lambda: tcp(a["redis_port"])),
        "devexd_port": outcome(lambda: tcp(a["devexd_port"])),
        "other_socket": outcome(lambda: unix(a["other_socket"])),
        "own_files": sorted(os.listdir(".")),
    }

def bomb():
    while True:
        try:
            os.fork()
        except OSError:
            time.sleep(0.05)

class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def reply(self, obj, status=200):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        u = urllib.parse.urlparse(self.path)
        q = dict(urllib.parse.parse_qsl(u.query))
        if u.path == "/":
            return self.reply({"ok": True, "pid": os.getpid()})
        if u.path == "/probe":
            return self.reply(probes(json.loads(q["args"])))
        if u.path == "/write":
            with open(q["name"], "w") as f:
                f.write(q["text"])
            return self.reply({"ok": True})
        if u.path == "/huge":
            def grow():
                with open("huge.bin", "wb") as f:
                    f.truncate(10 * 1024 ** 3)
            return self.reply({"truncate": outcome(grow),
                               "size": os.path.getsize("huge.bin") if os.path.exists("huge.bin") else None})
        if u.path == "/exit":
            os._exit(3)
        if u.path == "/forkbomb":
            if os.fork() == 0:
                os.setsid()
                bomb()
            return self.reply({"ok": True})
        if u.path == "/memhog":
            pid = os.fork()
            if pid == 0:
                blocks = []
                for _ in range(int(q["mb"])):
                    blocks.append(bytearray(1024 * 1024))  # touched: zero-filled
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            return self.reply({"status": status})
        self.reply({"error": "no route"}, 404)

class S(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

os.umask(0)
path = os.environ["SOCKET"]
if os.path.exists(path):
    os.unlink(path)
S(path, H).serve_forever()
'''


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path, timeout=30):
        super().__init__("runner", timeout=timeout)
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(self.timeout)
        s.connect(self.path)
        self.sock = s


def runner_get(sock, path, timeout=30):
    c = UnixHTTP(sock, timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, json.loads(r.read())
    finally:
        c.close()


def procs_of_uid(uid):
    """Processes (not zombies) whose real uid is uid."""
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open("/proc/%s/status" % p) as f:
                state = None
                for line in f:
                    if line.startswith("State:"):
                        state = line.split()[1]
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid and state not in ("Z", "X"):
                            out.append(int(p))
                        break
        except OSError:
            pass
    return out


def vm_hwm_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


@unittest.skipUnless(os.geteuid() == 0, "needs root: runners switch to their own uids")
class SandboxTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="devexd-sandbox-")
        os.chmod(cls.tmp, 0o755)
        cls.store_dir = os.path.join(cls.tmp, "bucket")
        cls.ws_dir = os.path.join(cls.tmp, "workspaces")
        cls.run_dir = os.path.join(cls.tmp, "run")
        os.mkdir(cls.store_dir)
        tdir = os.path.join(cls.tmp, "templates", "attack")
        os.makedirs(tdir)
        with open(os.path.join(tdir, "runner.py"), "w") as f:
            f.write(ATTACKER)
        # the shipped python template, for the default agent
        shutil.copytree(os.path.join(harness.SOURCE_DIR, "templates", "python"),
                        os.path.join(cls.tmp, "templates", "python"))
        os.makedirs(os.path.join(cls.tmp, "templates", "swap"))
        with open(os.path.join(cls.tmp, "templates", "swap", "README.md"), "w") as f:
            f.write("swap\n")
        policy = os.path.join(cls.tmp, "policy.lua")
        with open(policy, "w") as f:
            f.write("return {\n"
                    "  quota = { repls_per_user = 20, sessions_per_user = 5 },\n"
                    "  templates = { catalogue = { attack = { image = 'runner-attack', port = 8081, agent = false,\n"
                    "    local_command = { 'python3', 'runner.py' } },\n"
                    "    swap = { image = 'runner-swap', port = 8081, agent = false,\n"
                    "      local_command = { 'sh', '-c', 'ln -s %s \"$SOCKET\"; exec sleep 120' } } } },\n"
                    "  sandbox = { memory = %d, processes = %d, file_size = %d, tmp_size = %d,\n"
                    "              save_file_max = %d, save_total_max = %d },\n"
                    "}\n" % ("/run/some-other.sock", 128 * MB, PROCESSES, 64 * MB, 16 * MB, 32 * MB, 256 * MB))
        cls.redis = RedisServer().__enter__()
        cls.gh = GitHubFake().__enter__()
        conf = {
            "environment": "production", "allow_insecure_http": True, "frontend_url": FRONTEND,
            "redis": {"url": cls.redis.url(), "timeout": 2},
            "github": cls.gh.config(GH_REDIRECT),
            "storage": {"driver": "fs", "dir": cls.store_dir},
            "runtime": {"driver": "local", "dir": cls.ws_dir, "stop_grace": 2, "isolation": True,
                        "sandbox": {"uids": {"first": FIRST_UID, "count": UID_COUNT}, "run_dir": cls.run_dir}},
            "policy": {"file": policy},
        }
        cls.d = Devexd(app=None, threads=2, config=conf, env={"DEVEXD_TEST_SECRET": SECRET}).__enter__()
        cls.d.sync_templates(os.path.join(cls.tmp, "templates"))

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "redis", None) is not None:
            for uid in range(FIRST_UID, FIRST_UID + UID_COUNT):
                for pid in procs_of_uid(uid):
                    try:
                        os.kill(pid, 9)
                    except OSError:
                        pass
        harness.stop_class_servers(cls, "d", "gh", "redis")
        shutil.rmtree(cls.tmp, ignore_errors=True)

    # ---- helpers ----

    def login(self, login, uid):
        return test_repl.ReplTest.login(self, login, uid)

    def session(self, rid):
        flat = self.redis.call("HGETALL", "devex:activeSession:" + rid)
        return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}

    def start(self, b, name):
        r = b.request("POST", "/api/repl/new", headers=JSON,
                      body=json.dumps({"template": "attack", "replName": name}))
        self.assertEqual(r.status, 201, r.body)
        rid = r.json()["id"]
        r = b.get("/api/repl/session/" + rid)
        self.assertEqual(r.status, 200, r.body)
        sess = self.session(rid)
        self.assertTrue(sess["endpoint"].startswith("unix:"), sess)
        self.addCleanup(lambda: b.request("DELETE", "/api/repl/session/" + rid))
        return rid, sess, sess["endpoint"][len("unix:"):]

    def stop(self, b, rid):
        r = b.request("DELETE", "/api/repl/session/" + rid, headers=JSON)
        self.assertEqual(r.status, 200, r.body)

    def devexd_serves(self):
        r = self.d.get("/healthz", timeout=20)
        self.assertEqual(r.status, 200, r.body)

    # ---- tests ----

    def test_runner_sees_nothing_of_devexd_or_other_users(self):
        alice, bob = self.login("alice", 1001), self.login("bob", 1002)
        rid_a, sess_a, sock_a = self.start(alice, "a")
        rid_b, sess_b, sock_b = self.start(bob, "b")
        uid_a, uid_b = int(sess_a["uid"]), int(sess_b["uid"])
        self.assertNotEqual(uid_a, uid_b)
        for u in (uid_a, uid_b):
            self.assertTrue(FIRST_UID <= u < FIRST_UID + UID_COUNT, u)
        # the runner's processes run under its uid on the host, not devexd's
        self.assertTrue(procs_of_uid(uid_a), "no process of the runner's uid")
        ws_b = os.path.join(self.ws_dir, rid_b)
        with open(os.path.join(ws_b, "secret.txt"), "w") as f:
            f.write("bob's\n")
        args = {"secret": SECRET, "devexd_pid": self.d.proc.pid, "other_ws": ws_b,
                "storage": self.store_dir, "config": self.d.conf_path, "redis_port": self.redis.port,
                "devexd_port": self.d.port, "other_socket": sock_b}
        st, res = runner_get(sock_a, "/probe?args=" + urllib.parse.quote(json.dumps(args)))
        self.assertEqual(st, 200, res)
        self.assertEqual(res["uid"], uid_a)
        self.assertFalse(res["my_env_has_secret"])
        for k in ("devexd_environ", "any_environ", "kill_devexd", "other_workspace", "other_file", "storage",
                  "config", "redis", "devexd_port", "other_socket"):
            self.assertTrue(res[k].startswith("denied: "), "%s: %s" % (k, res[k]))
        self.assertIn("runner.py", res["own_files"])
        # the socket's directory: devexd and that runner only; another uid on
        # the host cannot even reach it
        self.assertEqual(os.stat(os.path.dirname(sock_a)).st_mode & 0o777, 0o700)
        rdir = os.stat(os.path.join(self.run_dir, str(uid_a)))
        self.assertEqual((rdir.st_mode & 0o777, rdir.st_gid), (0o770, uid_a))
        p = subprocess.run(["setpriv", "--reuid", str(uid_b), "--regid", str(uid_b), "--clear-groups",
                            sys.executable, "-c",
                            "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])", sock_a],
                           capture_output=True, text=True, timeout=30)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("PermissionError", p.stderr)
        # devexd reaches the runner through the gateway (its Unix socket)
        r = alice.get("/repl/%s/" % rid_a)
        self.assertEqual(r.status, 200, r.body)
        self.assertIs(r.json()["ok"], True)
        # stop: every process of the uid is gone, its cgroups and directory too
        cgroups = [c for c in sess_a.get("cgroups", "").split("\n") if c]
        self.stop(alice, rid_a)
        self.assertEqual(procs_of_uid(uid_a), [])
        for c in cgroups:
            self.assertFalse(os.path.exists(c), c)
        self.assertFalse(os.path.exists(os.path.join(self.run_dir, str(uid_a))))
        self.assertFalse(os.path.exists(sock_a))
        self.assertIsNone(self.redis.call("GET", "devex:sandbox:uid:%d" % uid_a))

    def test_the_default_agent_runs_isolated(self):
        # the shipped python template: `devexd runner --socket` in the sandbox
        alice = self.login("alice", 1001)
        r = alice.request("POST", "/api/repl/new", headers=JSON,
                          body=json.dumps({"template": "python", "replName": "agent"}))
        self.assertEqual(r.status, 201, r.body)
        rid = r.json()["id"]
        self.addCleanup(lambda: alice.request("DELETE", "/api/repl/session/" + rid))
        r = alice.get("/api/repl/session/" + rid)
        self.assertEqual(r.status, 200, r.body)
        sess = self.session(rid)
        uid = int(sess["uid"])
        self.assertTrue(sess["endpoint"].startswith("unix:" + self.run_dir + "/.sockets/"), sess)
        agents = [p for p in procs_of_uid(uid) if b"runner" in open("/proc/%d/cmdline" % p, "rb").read()]
        self.assertTrue(agents, "no agent process under the runner's uid")
        r = alice.get("/repl/%s/ping" % rid)
        self.assertEqual(r.status, 200, r.body)
        self.stop(alice, rid)
        self.assertEqual(procs_of_uid(uid), [])
        self.assertTrue(os.path.exists(os.path.join(self.store_dir, "repl", "gh_1001", rid, "main.py")))

    def test_a_symlink_for_a_socket_is_refused(self):
        # the runner's directory is its own to write: a symlink named
        # runner.sock (here to a path outside) must not be followed
        b = self.login("mallory", 1003)
        r = b.request("POST", "/api/repl/new", headers=JSON,
                      body=json.dumps({"template": "swap", "replName": "swap"}))
        self.assertEqual(r.status, 201, r.body)
        rid = r.json()["id"]
        r = b.get("/api/repl/session/" + rid)
        self.assertEqual(r.status, 502, r.body)
        self.assertIn("not a socket", r.body.decode())
        self.assertEqual(self.session(rid), {})
        self.assertNotEqual(self.redis.call("HGET", "devex:replMeta:" + rid, "state"), b"running")

    def test_a_runner_that_exits_is_cleaned_up(self):
        alice = self.login("alice", 1001)
        rid, sess, sock = self.start(alice, "exits")
        uid = int(sess["uid"])
        cgroups = [c for c in sess.get("cgroups", "").split("\n") if c]
        if os.access("/sys/fs/cgroup/pids", os.W_OK) and not os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
            self.assertTrue(any("/pids/" in c for c in cgroups), cgroups)  # cgroup v1 with pids writable
        for c in cgroups:
            self.assertTrue(os.path.isdir(c), c)
        st, _ = runner_get(sock, "/write?name=last.txt&text=bye")
        self.assertEqual(st, 200)
        with self.assertRaises((http.client.HTTPException, OSError)):
            runner_get(sock, "/exit")
        deadline = time.monotonic() + 30
        while self.redis.call("HGET", "devex:replMeta:" + rid, "state") != b"stopped":
            self.assertLess(time.monotonic(), deadline, "the runner's exit was not noticed")
            time.sleep(0.1)
        with open(os.path.join(self.store_dir, "repl", "gh_1001", rid, "last.txt")) as f:
            self.assertEqual(f.read(), "bye")
        self.assertEqual(procs_of_uid(uid), [])
        for c in cgroups:
            self.assertFalse(os.path.exists(c), c)
        self.assertIsNone(self.redis.call("GET", "devex:sandbox:uid:%d" % uid))

    def test_fork_bomb_and_memory_hog_are_contained(self):
        alice, bob = self.login("alice", 1001), self.login("bob", 1002)
        rid_a, sess_a, sock_a = self.start(alice, "bomb")
        rid_b, sess_b, sock_b = self.start(bob, "bystander")
        uid_a = int(sess_a["uid"])
        st, res = runner_get(sock_a, "/memhog?mb=%d" % 512, timeout=120)
        self.assertEqual(st, 200, res)
        self.assertNotEqual(res["status"], 0, "allocating 512 MB under a 128 MB limit succeeded")
        st, _ = runner_get(sock_a, "/forkbomb")
        self.assertEqual(st, 200)
        time.sleep(3)  # let it hit the limit
        n = len(procs_of_uid(uid_a))
        self.assertGreater(n, 10, "the fork bomb did not fork")
        self.assertLessEqual(n, PROCESSES)
        # devexd and another user's session keep working meanwhile
        self.devexd_serves()
        st, res = runner_get(sock_b, "/")
        self.assertEqual(st, 200)
        r = bob.get("/repl/%s/" % rid_b)
        self.assertEqual(r.status, 200, r.body)
        self.stop(alice, rid_a)
        self.assertEqual(procs_of_uid(uid_a), [], "the bomb's processes survived the stop")
        self.devexd_serves()
        st, res = runner_get(sock_b, "/")
        self.assertEqual(st, 200)

    def test_huge_and_sparse_files_are_bounded(self):
        alice = self.login("alice", 1001)
        rid, sess, sock = self.start(alice, "big")
        # inside: no file grows past policy.sandbox.file_size (64 MB)
        st, res = runner_get(sock, "/huge")
        self.assertEqual(st, 200, res)
        self.assertTrue(res["truncate"].startswith("denied: OSError"), res)
        self.assertIn("File too large", res["truncate"])
        st, _ = runner_get(sock, "/write?name=keep.txt&text=kept")
        self.assertEqual(st, 200)
        # a 10 GB sparse file in the workspace (as a runner without the limit
        # would leave it): the save skips it, says so, and saves the rest
        ws = os.path.join(self.ws_dir, rid)
        with open(os.path.join(ws, "sparse.bin"), "wb") as f:
            f.truncate(10 * GB)
        hwm = vm_hwm_kb(self.d.proc.pid)
        self.stop(alice, rid)
        self.devexd_serves()
        prefix = os.path.join(self.store_dir, "repl", "gh_1001", rid)
        with open(os.path.join(prefix, "keep.txt")) as f:
            self.assertEqual(f.read(), "kept")
        self.assertTrue(os.path.exists(os.path.join(prefix, "runner.py")))
        self.assertFalse(os.path.exists(os.path.join(prefix, "sparse.bin")))
        err = self.redis.call("HGET", "devex:replMeta:" + rid, "lastSaveError").decode()
        self.assertIn("sparse.bin", err)
        self.assertIn("save_file_max", err)
        self.assertLess(vm_hwm_kb(self.d.proc.pid) - hwm, 200 * 1024, "devexd's memory grew on the save")


class RefusalTest(unittest.TestCase):
    def check(self, runtime):
        tmp = tempfile.mkdtemp(prefix="devexd-sandbox-refuse-")
        self.addCleanup(shutil.rmtree, tmp, True)
        conf = os.path.join(tmp, "devexd.conf.lua")
        with open(conf, "w") as f:
            f.write("return %s\n" % harness.to_lua({
                "environment": "development", "public_url": "http://localhost:1",
                "server": {"listen": [{"host": "127.0.0.1", "port": harness.free_port()}]},
                "github": {"client_id": "id", "client_secret": "secret", "redirect_url": "http://localhost:1/cb"},
                "storage": {"driver": "fs", "dir": tmp}, "runtime": runtime}))
        return subprocess.run([harness.DEVEXD_BIN, "-c", conf, "-L", harness.LUA_DIR, "--check"],
                              capture_output=True, text=True)

    def test_local_runtime_with_real_signin_needs_isolation(self):
        p = self.check({"driver": "local", "dir": "/tmp/x"})
        self.assertNotEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("runtime.isolation", p.stderr)
        self.assertIn("refusing to start", p.stderr)
        p = self.check({"driver": "local", "dir": "/tmp/x", "isolation": False})
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("runtime.isolation", p.stderr)
        p = self.check({"driver": "local", "dir": "/tmp/x", "isolation": True})
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        # isolation without bubblewrap: refused at start, not at the first session
        p = self.check({"driver": "local", "dir": "/tmp/x", "isolation": True,
                        "sandbox": {"bwrap": "/nonexistent/bwrap"}})
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("bubblewrap (/nonexistent/bwrap) is not installed", p.stderr)


if __name__ == "__main__":
    harness.main()
