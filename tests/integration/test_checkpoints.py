"""The runner agent's checkpoints and restore (issue #16, items 3 and 4):
real devexd (storage broker, lua/routes/runner_storage.lua) and real
`devexd runner` processes (lua/runner/checkpoint.lua, restore.lua), with the
fs storage driver (devexd serves the bytes itself) and against the
signature-checking S3 test server (presigned URLs).

 - files written in the workspace reach storage without any stop, with the
   checkpoint interval shortened to 1 s; a deletion is propagated; devexd
   records lastSavedAt and GET /api/repl's store reads it;
 - after kill -9 of the agent, a new agent over an empty directory restores
   the last confirmed checkpoint byte-identical (nested folders, empty
   files, non-ASCII names, a binary file) and reports its progress (files
   and bytes) on the session's event stream;
 - the final checkpoint devexd asks for at stop (POST /api/v1/checkpoint)
   needs the token, is confirmed when it answers, and a FIFO and a symbolic
   link in the workspace are reported, not fatal;
 - the agent's environment and command line hold no storage credential;
 - STORAGE_VIA_DEVEXD=1 moves the bytes through devexd even with S3;
 - GET /api/repl returns lastSavedAt once a save was confirmed;
 - `devexd workload render`: with the agent as runner no init container.
Assertions are on what arrives, never on elapsed time; waits are generous.
"""
import hashlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import DEVEXD_BIN, LUA_DIR, Devexd, RedisServer, free_port, poll, sanitizer_errors  # noqa: E402
from test_s3 import S3Server, ensure_s3_server  # noqa: E402

OWNER = "gh_1001"
RID = "repl-0000cccc-3333"
TOKEN = "c" * 43

FILES = {
    "main.py": b"print('hello')\n",
    "empty.txt": b"",
    "src/pkg/deep/module.py": b"x = 1\n" * 100,
    "donn\u00e9es/\u00e9t\u00e9 \u2603.txt": "caf\u00e9 \u2603\n".encode(),
    "bin/blob.dat": bytes(range(256)) * 64,
    ".hidden/config": b"k=v\n",
}


def request(method, url, body=None, headers=None, timeout=60):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Agent:
    """`devexd runner` over a workspace, with the runner contract's variables only."""

    def __init__(self, d, interval, extra=None):
        self.dir = tempfile.mkdtemp(prefix="devexd-ckpt-ws-")
        self.log_path = self.dir + ".log"
        self.port = free_port()
        # a clean environment: nothing of the test's own (no storage keys) leaks in
        self.env = {"PATH": os.environ["PATH"], "HOME": self.dir, "DEVEXD_LUA_DIR": LUA_DIR,
                    "REPL_ID": RID, "RUNNER_TOKEN": TOKEN, "CALLBACK_URL": d.url("/api/runner/" + RID),
                    "CHECKPOINT_INTERVAL": str(interval), "LOG_LEVEL": "debug"}
        for k in ("ASAN_OPTIONS", "LSAN_OPTIONS", "UBSAN_OPTIONS"):
            if k in os.environ:
                self.env[k] = os.environ[k]
        self.env.update(extra or {})
        self.proc = None

    def start(self, wait_ready=True):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([DEVEXD_BIN, "runner", "--dir", self.dir, "--port", str(self.port),
                                      "--host", "127.0.0.1"], env=self.env, stdout=self.log, stderr=self.log,
                                     preexec_fn=harness._set_pdeathsig)
        if wait_ready:
            poll(lambda: self.ping() == 200, "the agent's /ping after its restore", timeout=60)
        return self

    def ping(self):
        if self.proc.poll() is not None:
            raise AssertionError("the agent exited: " + self.logtext())
        try:
            return request("GET", "http://127.0.0.1:%d/ping" % self.port, timeout=5)[0]
        except OSError:
            return None

    def checkpoint(self, token=TOKEN):
        h = {"Authorization": "Bearer " + token} if token else {}
        s, b = request("POST", "http://127.0.0.1:%d/api/v1/checkpoint" % self.port, body=b"", headers=h,
                       timeout=120)
        return s, json.loads(b or b"null")

    def logtext(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def write(self, rel, data):
        p = os.path.join(self.dir, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)

    def kill9(self):
        self.proc.kill()
        self.proc.wait()
        self.log.close()

    def stop(self):
        """SIGTERM; checks the exit and the log for sanitizer reports."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("the agent did not stop on SIGTERM")
            self.log.close()
            errs = sanitizer_errors(self.logtext())
            if errs or self.proc.returncode != 0:
                raise AssertionError("agent exit %s, sanitizer: %s\n%s"
                                     % (self.proc.returncode, errs, self.logtext()[-4000:]))

    def cleanup(self):
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            if os.path.exists(self.log_path):
                os.remove(self.log_path)


class CheckpointBase:
    """The tests, run once per storage driver (the subclasses say which)."""

    @classmethod
    def storage_conf(cls):
        raise NotImplementedError

    @classmethod
    def setUpClass(cls):
        cls.redis = RedisServer().__enter__()
        conf = {"environment": "test", "public_url": "http://127.0.0.1:0",
                "redis": {"url": cls.redis.url(), "timeout": 2}}
        conf.update(cls.storage_conf())
        cls.d = Devexd(app=None, threads=2, config=conf, max_body=16 << 20).__enter__()

    @classmethod
    def tearDownClass(cls):
        harness.stop_class_servers(cls, "d", "redis")
        cls.cleanup_storage()

    @classmethod
    def cleanup_storage(cls):
        pass

    def setUp(self):
        self.redis.call("FLUSHALL")
        self.redis.call("HSET", "devex:replMeta:" + RID, "id", RID, "user", OWNER, "name", RID,
                        "template", "python", "state", "running", "prefix", "repl/%s/%s/" % (OWNER, RID))
        self.redis.call("HSET", "devex:activeSession:" + RID, "started_at", str(int(time.time())),
                        "token_hash", hashlib.sha256(TOKEN.encode()).hexdigest(), "driver", "local")
        s, b = self.api("POST", "/api/runner/%s/sync" % RID, {"paths": []})  # an empty prefix
        self.assertEqual(s, 200, b)
        self.agents = []

    def tearDown(self):
        for a in self.agents:
            a.cleanup()

    def agent(self, interval, **kw):
        a = Agent(self.d, interval, **kw)
        self.agents.append(a)
        return a

    def api(self, method, path, body=None):
        r = self.d.request(method, path, body=json.dumps(body) if body is not None else None,
                           headers={"Authorization": "Bearer " + TOKEN, "Content-Type": "application/json"},
                           timeout=120)
        return r.status, r.body

    def stored(self):
        """{path: md5 hex} of what the broker lists for the REPL."""
        s, b = self.api("GET", "/api/runner/%s/files" % RID)
        self.assertEqual(s, 200, b)
        return {f["path"]: f["etag"] for f in json.loads(b)["files"]}

    def stored_bytes(self):
        """{path: bytes}: every listed file fetched through its URL."""
        s, b = self.api("GET", "/api/runner/%s/files" % RID)
        out = {}
        for f in json.loads(b)["files"]:
            url = f["url"]
            h = {}
            if url.startswith("/"):
                url, h = self.d.url(url), {"Authorization": "Bearer " + TOKEN}
            st, data = request("GET", url, headers=h)
            self.assertEqual(st, 200, data[:200])
            out[f["path"]] = data
        return out

    def wait_stored(self, expected, what):
        want = {k: hashlib.md5(v).hexdigest() for k, v in expected.items()}
        poll(lambda: self.stored() == want, what, timeout=60, interval=0.2)

    # ---- the tests ----

    def test_checkpoints_deletions_and_restore_after_kill(self):
        a = self.agent(1).start()
        for rel, data in FILES.items():
            a.write(rel, data)
        # no stop, no request: the periodic checkpoint carries them
        self.wait_stored(FILES, "the workspace's files in storage by a periodic checkpoint")
        saved = self.redis.call("HGET", "devex:replMeta:" + RID, "lastSavedAt")
        self.assertTrue(saved and int(saved) > 0, saved)
        os.remove(os.path.join(a.dir, "main.py"))
        a.write("src/pkg/deep/module.py", b"changed\n")
        expected = dict(FILES)
        del expected["main.py"]
        expected["src/pkg/deep/module.py"] = b"changed\n"
        self.wait_stored(expected, "the deletion and the change propagated")
        a.write("late.txt", b"written last\n")
        expected["late.txt"] = b"written last\n"
        self.wait_stored(expected, "the last write confirmed")
        a.kill9()

        b = self.agent(1).start()
        self.assertEqual(harness.tree(b.dir), expected)
        self.assertEqual(self.stored_bytes(), expected)
        # the restore's progress on the session's event stream: files and bytes
        events = [json.loads(e[1][1]) for e in self.redis.call("XRANGE", "devex:replEvents:" + RID, "-", "+")]
        prog = [e for e in events if e.get("phase") == "restoring" and "bytesTotal" in e]
        self.assertTrue(prog, events)
        last = prog[-1]
        self.assertEqual(last["files"], len(expected))
        self.assertEqual(last["filesTotal"], len(expected))
        self.assertEqual(last["bytesTotal"], sum(len(v) for v in expected.values()))
        self.assertEqual(last["bytes"], last["bytesTotal"])
        # a restored workspace costs no upload: the next checkpoints find nothing changed
        s, rep = b.checkpoint()
        self.assertEqual(s, 200, rep)
        self.assertEqual(rep["uploaded"], 0, rep)
        self.assertEqual(rep["deleted"], 0, rep)

    def test_final_checkpoint_special_files_and_token(self):
        a = self.agent(0).start()  # no periodic checkpoint: only the one a stop asks for
        a.write("a/b.txt", b"final\n")
        keep = os.urandom(3 << 20)
        a.write("keep.bin", keep)
        os.mkfifo(os.path.join(a.dir, "a", "pipe"))
        os.symlink("/etc/passwd", os.path.join(a.dir, "link"))
        s, rep = a.checkpoint(token=None)
        self.assertEqual(s, 401, rep)
        s, rep = a.checkpoint(token="d" * 43)
        self.assertEqual(s, 401, rep)
        self.assertEqual(self.stored(), {})  # nothing sent without the token
        s, rep = a.checkpoint()
        self.assertEqual(s, 200, rep)
        self.assertEqual(rep["files"], 2, rep)
        self.assertEqual(rep["uploaded"], 2, rep)
        self.assertIsInstance(rep["lastSavedAt"], int)
        skipped = {k["path"]: k["reason"] for k in rep["skipped"]}
        self.assertEqual(set(skipped), {"a/pipe", "link"}, rep)
        # confirmed when it answered: storage already holds both
        self.assertEqual(self.stored_bytes(), {"a/b.txt": b"final\n", "keep.bin": keep})
        self.assertEqual(self.redis.call("HGET", "devex:replMeta:" + RID, "lastSavedAt"), str(rep["lastSavedAt"]).encode())
        # touched but not changed: hashed, not sent again
        os.utime(os.path.join(a.dir, "keep.bin"))
        s, rep = a.checkpoint()
        self.assertEqual((s, rep["uploaded"]), (200, 0), rep)
        self.assertIn("checkpoint: skipped", a.logtext())

    def test_no_storage_credential_in_the_agent(self):
        a = self.agent(1).start()
        a.write("x.txt", b"x")
        self.wait_stored({"x.txt": b"x"}, "x.txt stored")
        with open("/proc/%d/environ" % a.proc.pid, "rb") as f:
            env = f.read().split(b"\0")
        with open("/proc/%d/cmdline" % a.proc.pid, "rb") as f:
            cmdline = f.read()
        names = {e.split(b"=", 1)[0] for e in env if e}
        self.assertEqual(names & {b"AWS_ACCESS_KEY_ID", b"AWS_SECRET_ACCESS_KEY", b"AWS_SESSION_TOKEN",
                                  b"S3_ACCESS_KEY", b"S3_SECRET_KEY"}, set())
        for secret in self.secrets():
            self.assertNotIn(secret.encode(), b"\0".join(env))
            self.assertNotIn(secret.encode(), cmdline)
        ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
        mine = [l for l in ps.splitlines() if l.split(None, 1)[0] == str(a.proc.pid)]
        self.assertTrue(mine, ps)
        for secret in self.secrets():
            self.assertNotIn(secret, mine[0])

    def secrets(self):
        return []


class FsDriverTest(CheckpointBase, unittest.TestCase):
    """The fs driver: devexd serves and stores the bytes itself (the blob route)."""

    @classmethod
    def storage_conf(cls):
        cls.storage_dir = tempfile.mkdtemp(prefix="devexd-ckpt-store-")
        return {"storage": {"driver": "fs", "dir": cls.storage_dir}}

    @classmethod
    def cleanup_storage(cls):
        shutil.rmtree(cls.storage_dir, ignore_errors=True)

    def test_blob_route_checks(self):
        base = "/api/runner/%s/blob/" % RID
        r = self.d.request("PUT", base + "a.txt", body=b"hi", headers={})
        self.assertEqual(r.status, 401)
        r = self.d.request("PUT", base + "a.txt", body=b"hi", headers={"Authorization": "Bearer " + "z" * 43})
        self.assertEqual(r.status, 401)
        h = {"Authorization": "Bearer " + TOKEN}
        for bad in ("..%2F..%2Fetc%2Fpasswd", "a/../../b", "%00x", "a//b"):
            r = self.d.request("GET", base + bad, headers=h)
            self.assertIn(r.status, (400, 404), bad)
            self.assertNotIn(b"root:", r.body)
        r = self.d.request("PUT", base + "d%C3%A9j%C3%A0/x%20y.txt", body=b"bytes", headers=h)
        self.assertEqual(r.status, 200, r.body)
        r = self.d.request("GET", base + "d%C3%A9j%C3%A0/x%20y.txt", headers=h)
        self.assertEqual((r.status, r.body), (200, b"bytes"))
        r = self.d.request("GET", base + "missing.txt", headers=h)
        self.assertEqual(r.status, 404)
        # over server.max_body: refused from the Content-Length, before any byte of the body
        c = http.client.HTTPConnection("127.0.0.1", self.d.port, timeout=60)
        c.putrequest("PUT", base + "big")
        c.putheader("Authorization", "Bearer " + TOKEN)
        c.putheader("Content-Length", str((16 << 20) + 1))
        c.endheaders()
        self.assertEqual(c.getresponse().status, 413)
        c.close()
        # progress reports are checked like any input
        for bad in ({}, {"files": -1, "filesTotal": 1, "bytes": 0, "bytesTotal": 0},
                    {"files": 2, "filesTotal": 1, "bytes": 0, "bytesTotal": 0},
                    {"files": "1", "filesTotal": 1, "bytes": 0, "bytesTotal": 0}):
            s, b = self.api("POST", "/api/runner/%s/progress" % RID, bad)
            self.assertEqual(s, 400, (bad, b))


class S3DriverTest(CheckpointBase, unittest.TestCase):
    """The s3 driver: presigned URLs to the signature-checking S3 test server."""

    @classmethod
    def storage_conf(cls):
        ensure_s3_server()
        cls.s3 = S3Server().start()
        return {"s3": cls.s3.conf()}

    @classmethod
    def cleanup_storage(cls):
        harness.stop_class_servers(cls, "s3")

    def secrets(self):
        return [self.s3.access_key, self.s3.secret_key]

    def test_via_devexd(self):
        """STORAGE_VIA_DEVEXD=1 (a sandboxed single-host agent): no presigned URL, devexd moves the bytes."""
        a = self.agent(0, extra={"STORAGE_VIA_DEVEXD": "1"}).start()
        a.write("n/\u00fc.txt", "\u00fc\n".encode())
        a.write("e", b"")
        s, rep = a.checkpoint(token=hashlib.sha256(TOKEN.encode()).hexdigest())  # devexd's credential: the hash
        self.assertEqual((s, rep["uploaded"]), (200, 2), rep)
        a.kill9()
        b = self.agent(0, extra={"STORAGE_VIA_DEVEXD": "1"}).start()
        self.assertEqual(harness.tree(b.dir), {"n/\u00fc.txt": "\u00fc\n".encode(), "e": b""})
        s, b_ = self.api("GET", "/api/runner/%s/files?via=devexd" % RID)
        self.assertTrue(all(f["url"].startswith("/api/runner/") for f in json.loads(b_)["files"]), b_)


class LastSavedAtTest(unittest.TestCase):
    """GET /api/repl returns lastSavedAt (an extra field) once a save was confirmed."""

    @classmethod
    def setUpClass(cls):
        from fakes.github_fake import GitHubFake
        from test_auth import FRONTEND, GH_REDIRECT
        cls.tmp = tempfile.mkdtemp(prefix="devexd-ckpt-list-")
        cls.redis = RedisServer().__enter__()
        cls.gh = GitHubFake().__enter__()
        conf = {"environment": "production", "allow_insecure_http": True, "frontend_url": FRONTEND,
                "redis": {"url": cls.redis.url(), "timeout": 2}, "github": cls.gh.config(GH_REDIRECT),
                "storage": {"driver": "fs", "dir": cls.tmp}}
        cls.d = Devexd(app=None, threads=2, config=conf).__enter__()
        cls.d.sync_templates()

    @classmethod
    def tearDownClass(cls):
        harness.stop_class_servers(cls, "d", "gh", "redis")
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_list_has_last_saved_at(self):
        import test_repl
        b = test_repl.ReplTest.login(self)
        status, body = test_repl.ReplTest.create(self, b)
        self.assertEqual(status, 201, body)
        rid = body["id"]
        r = b.get("/api/repl")
        self.assertEqual(r.status, 200, r.body)
        self.assertNotIn("lastSavedAt", [x for x in r.json() if x["id"] == rid][0])
        self.redis.call("HSET", "devex:activeSession:" + rid, "started_at", str(int(time.time())),
                        "token_hash", hashlib.sha256(TOKEN.encode()).hexdigest(), "driver", "local")
        r = self.d.request("POST", "/api/runner/%s/sync" % rid, body=json.dumps({"paths": []}),
                           headers={"Authorization": "Bearer " + TOKEN, "Content-Type": "application/json"})
        self.assertEqual(r.status, 200, r.body)
        saved = r.json()["lastSavedAt"]
        r = b.get("/api/repl")
        self.assertEqual([x.get("lastSavedAt") for x in r.json() if x["id"] == rid], [saved])


class LocalRuntimeAgentTest(unittest.TestCase):
    """The single-host runtime with the agent (the default) and devexd's callback
    socket: the agent restores (progress on the event stream), checkpoints
    every sync.checkpoint_interval (1 s here), and the stop is its final
    checkpoint (devexd's own save not needed)."""

    @classmethod
    def setUpClass(cls):
        from test_gateway import standin_devexd
        standin_devexd(
            cls, "devexd-ckpt-local-",
            "return {\n"
            "  templates = { catalogue = { py = { image = 'runner-py', port = 8081,\n"
            "    local_command = { 'python3', 'app.py' } } } },\n"
            "  sync = { checkpoint_interval = 1 },\n"
            "}\n",
            templates=("py",),
            extra_conf='c.server.listen[2] = { socket = os.getenv("DEVEXD_DATA") .. "-cb.sock", only = "/api/runner/" }\n'
                       'c.runtime.agent_env = { RUNNER_SHELL = "/bin/sh" }\n')

    def stored(self, rid, rel):
        p = os.path.join(self.tmp, "data", "storage", "repl")
        for owner in os.listdir(p):
            f = os.path.join(p, owner, rid, rel)
            if os.path.exists(f):
                with open(f, "rb") as fh:
                    return fh.read()
        return None

    def test_restore_checkpoints_and_final_checkpoint(self):
        import test_local_agent as tla
        b = tla.LocalAgentTest.sign_in(self, "carol")
        rid = tla.LocalAgentTest.start_repl(self, b, "ckpt")
        events = [json.loads(e[1][1]) for e in self.redis.call("XRANGE", "devex:replEvents:" + rid, "-", "+")]
        prog = [e for e in events if e.get("phase") == "restoring" and "bytesTotal" in e]
        self.assertTrue(prog, events)
        self.assertEqual(prog[-1]["files"], prog[-1]["filesTotal"])
        self.assertGreaterEqual(prog[-1]["files"], 1)  # the template's README.md
        ws = os.path.join(self.tmp, "data", "workspaces", rid)
        self.assertEqual(harness.tree(ws).get("README.md"), b"workspace\n")
        with open(os.path.join(ws, "periodic.txt"), "wb") as f:
            f.write(b"saved without a stop\n")
        poll(lambda: self.stored(rid, "periodic.txt") == b"saved without a stop\n", "a periodic checkpoint",
             timeout=60, interval=0.2)
        with open(os.path.join(ws, "last.txt"), "wb") as f:
            f.write(b"just before the stop\n")
        r = self.d.request("DELETE", "/api/repl/session/" + rid, timeout=120,
                           headers={"Cookie": b.cookie_header(), "Origin": tla.ORIGIN})
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(self.stored(rid, "last.txt"), b"just before the stop\n")
        self.assertTrue(self.redis.call("HGET", "devex:replMeta:" + rid, "lastSavedAt"))
        log = self.d.raw_log()
        self.assertIn("repl files saved", log)  # the broker's sync, as the agent called it
        self.assertNotIn("final checkpoint failed", log)  # so devexd's own save did not run


class AgentWorkloadTest(unittest.TestCase):
    """`devexd workload render`: with the agent (templates.<t>.agent, the default
    with RUNNER_AGENT_REGISTRY) the pod has no init container and the runner
    gets the checkpoint settings of policy.sync; the original image keeps the
    init container."""

    def render(self, policy_text=None, **env):
        from test_workload_render import SHIPPED_CONF, clean_env
        conf = SHIPPED_CONF
        tmp = tempfile.mkdtemp(prefix="devexd-ckpt-render-")
        self.addCleanup(shutil.rmtree, tmp, True)
        if policy_text is not None:
            pol = os.path.join(tmp, "policy.lua")
            with open(pol, "w") as f:
                f.write(policy_text)
            conf = os.path.join(tmp, "devexd.conf.lua")
            with open(conf, "w") as f:
                f.write("return { policy = { file = %s } }\n" % json.dumps(pol))
        env.setdefault("ENVIRONMENT", "test")
        p = subprocess.run([DEVEXD_BIN, "-c", conf, "-L", LUA_DIR, "workload", "render", "--template", "python"],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
                           env=clean_env(**env))
        self.assertEqual(p.returncode, 0, p.stderr)
        dep = [o for o in json.loads(p.stdout)["objects"] if o["kind"] == "Deployment"][0]
        spec = dep["spec"]["template"]["spec"]
        runner = [c for c in spec["containers"] if c["name"] == "runner"][0]
        return spec, {e["name"]: e.get("value") for e in runner["env"]}

    def test_agent_has_no_init_container(self):
        spec, env = self.render(RUNNER_AGENT_REGISTRY="registry.invalid/devex")
        self.assertNotIn("initContainers", spec)
        self.assertEqual(env["CHECKPOINT_INTERVAL"], "30")
        self.assertEqual(env["CHECKPOINT_CONCURRENCY"], "8")
        self.assertFalse([k for k in env if k.startswith("AWS_")], env)
        spec, env = self.render('return { templates = { catalogue = { python = { image = "x/y:1", agent = true } } },'
                                ' sync = { checkpoint_interval = 7 } }')
        self.assertNotIn("initContainers", spec)
        self.assertEqual(env["CHECKPOINT_INTERVAL"], "7")

    def test_original_runner_keeps_the_init_container(self):
        spec, env = self.render()
        self.assertEqual([c["name"] for c in spec["initContainers"]], ["download"])
        self.assertNotIn("CHECKPOINT_INTERVAL", env)


if __name__ == "__main__":
    harness.main()
