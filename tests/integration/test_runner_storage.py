"""devexd as the storage broker of a REPL (lua/routes/runner_storage.lua):
presigned URLs (devex.s3.presign, SigV4 query-string authentication) against
the signature-checking S3 test server (tests/s3/server/server.js), and the
init container's and the uploader's scripts (policy.workload.download_script,
policy.sync.upload_script) run as local processes with only RUNNER_TOKEN and
CALLBACK_URL pointing at devexd.

 - a presigned GET/PUT works for its key only: another key, another REPL's
   prefix, templates/, another method and a tampered URL are refused (403
   SignatureDoesNotMatch), and the URL is refused after its expiry (403
   AccessDenied "Request has expired");
 - the broker routes refuse without the token, with another session's
   token, and path escapes;
 - a workspace (empty files, nested folders, a 50 MB file, non-ASCII names)
   round-trips byte-identical through upload script -> S3 -> download script;
   sync deletes what the workspace no longer holds and sets lastSavedAt;
 - `devexd workload render` shows no devexd-s3 Secret and no AWS_* variable.
"""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd, RedisServer  # noqa: E402
from test_s3 import S3Server, ensure_s3_server  # noqa: E402

OWNER, OTHER = "gh_1001", "gh_2002"
RID, RID2 = "repl-0000aaaa-1111", "repl-0000bbbb-2222"
TOKEN, TOKEN2 = "t" * 43, "u" * 43


def lua_module(rel):
    with open(os.path.join(harness.SOURCE_DIR, rel), encoding="utf-8") as f:
        return f.read()


def script(rel, name):
    """The [=[ ... ]=] shell script `name` of a policy module."""
    src = lua_module(rel)
    start = src.index(name + " = [=[") + len(name + " = [=[")
    return src[start:src.index("]=]", start)].lstrip("\n")


DOWNLOAD = script("lua/policy/workload.lua", "M.download_script")
UPLOAD = script("lua/policy/sync.lua", "M.upload_script")


def http(method, url, body=None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def tree(root):
    """{relative path: sha256 hex} of every file under root."""
    return {k: hashlib.sha256(v).hexdigest() for k, v in harness.tree(root).items()}


class RunnerStorageTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        ensure_s3_server()
        cls.s3 = S3Server().start()
        cls.redis = RedisServer().__enter__()
        conf = {
            "environment": "test", "public_url": "http://127.0.0.1:0",
            "redis": {"url": cls.redis.url(), "timeout": 2},
            "s3": cls.s3.conf(),
        }
        cls.policy_dir = tempfile.mkdtemp(prefix="devexd-broker-")
        cls.d = Devexd(app=None, threads=2, config=conf, max_body=1 << 20).__enter__()

    @classmethod
    def tearDownClass(cls):
        harness.stop_class_servers(cls, "d", "redis", "s3")
        shutil.rmtree(cls.policy_dir, ignore_errors=True)

    def setUp(self):
        self.redis.call("FLUSHALL")
        for rid, owner, tok in ((RID, OWNER, TOKEN), (RID2, OTHER, TOKEN2)):
            self.redis.call("HSET", "devex:replMeta:" + rid, "id", rid, "user", owner, "name", rid,
                            "template", "python", "state", "running", "prefix", "repl/%s/%s/" % (owner, rid))
            self.redis.call("HSET", "devex:activeSession:" + rid, "started_at", str(int(time.time())),
                            "token_hash", hashlib.sha256(tok.encode()).hexdigest(), "driver", "kubernetes")
        for rid, tok in ((RID, TOKEN), (RID2, TOKEN2)):  # empty both prefixes (devexd deletes)
            r = self.api("POST", "/api/runner/%s/sync" % rid, token=tok, body={"paths": []})
            self.assertEqual(r.status, 200, r.body)
        self.tmp = tempfile.mkdtemp(prefix="devexd-broker-ws-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- helpers ----

    def api(self, method, path, token=TOKEN, body=None, ctype="application/json", accept=None):
        h = {}
        if token:
            h["Authorization"] = "Bearer " + token
        if body is not None:
            h["Content-Type"] = ctype
            body = body if isinstance(body, (bytes, str)) else json.dumps(body)
        if accept:
            h["Accept"] = accept
        return self.d.request(method, path, body=body, headers=h, timeout=120)

    def uploads(self, paths, rid=RID, token=TOKEN):
        r = self.api("POST", "/api/runner/%s/uploads" % rid, token=token, body={"paths": paths})
        self.assertEqual(r.status, 200, r.body)
        return {u["path"]: u["url"] for u in r.json()["uploads"]}

    def run_script(self, text, ws, token=TOKEN, rid=RID):
        env = {"PATH": os.environ["PATH"], "RUNNER_TOKEN": token, "CALLBACK_URL": self.d.url("/api/runner/" + rid),
               "WORKSPACE_DIR": ws}
        return subprocess.run(["sh", "-c", text], env=env, capture_output=True, timeout=300)

    def run_script_s3_refusing(self, text, ws):
        """run_script while the S3 server answers every request 403 AccessDenied."""
        self.s3.fail(1000, status=403, code="AccessDenied")
        try:
            return self.run_script(text, ws)
        finally:
            self.s3.fail(0)

    # ---- presigned URLs against the S3 test server ----

    def test_presigned_put_get_scope(self):
        url = self.uploads(["dir/a.txt"])["dir/a.txt"]
        self.assertIn("X-Amz-Signature=", url)
        self.assertNotIn(self.s3.secret_key, url)
        st, body = http("PUT", url, b"hello")
        self.assertEqual(st, 200, body)
        r = self.api("GET", "/api/runner/%s/files" % RID)
        self.assertEqual(r.status, 200, r.body)
        files = r.json()["files"]
        self.assertEqual([f["path"] for f in files], ["dir/a.txt"])
        get = files[0]["url"]
        self.assertEqual(http("GET", get), (200, b"hello"))
        # the same signature on another key, another REPL's prefix, templates/
        for other in ("repl/%s/%s/dir/b.txt" % (OWNER, RID), "repl/%s/%s/dir/a.txt" % (OTHER, RID2),
                      "templates/python/main.py"):
            for u in (url, get):
                parts = urllib.parse.urlsplit(u)
                path = "/" + self.s3.bucket + "/" + urllib.parse.quote(other)
                forged = urllib.parse.urlunsplit(parts._replace(path=path))
                st, body = http("GET", forged)
                self.assertEqual(st, 403, (other, body))
                self.assertIn(b"SignatureDoesNotMatch", body)
                st, body = http("PUT", forged, b"x")
                self.assertEqual(st, 403, body)
        # another method with a GET URL, a DELETE with the PUT URL
        self.assertEqual(http("PUT", get, b"evil")[0], 403)
        self.assertEqual(http("DELETE", url)[0], 403)
        # a longer expiry on the same signature
        self.assertEqual(http("GET", get.replace("X-Amz-Expires=300", "X-Amz-Expires=3000"))[0], 403)
        self.assertEqual(http("GET", get), (200, b"hello"))

    def test_presigned_url_expires(self):
        r = self.d.request("POST", "/api/runner/%s/uploads" % RID, body=json.dumps({"paths": ["e.txt"]}),
                           headers={"Authorization": "Bearer " + TOKEN, "Content-Type": "application/json"})
        url = r.json()["uploads"][0]["url"]
        # the same URL with a 5 s expiry, signed again by devexd's signer: a
        # URL whose expiry passed is refused even for its own key (5 s, not 1:
        # under ASan with the suite beside it the first PUT came too late)
        t0 = time.monotonic()
        short = self.presign_short("PUT", "repl/%s/%s/e.txt" % (OWNER, RID), 5)
        self.assertEqual(http("PUT", short, b"x")[0], 200)
        time.sleep(max(0.0, t0 + 6.2 - time.monotonic()))
        st, body = http("PUT", short, b"y")
        self.assertEqual(st, 403, body)
        self.assertIn(b"Request has expired", body)
        self.assertEqual(http("PUT", url, b"z")[0], 200)

    def presign_short(self, method, key, expires=1):
        """A presigned URL with X-Amz-Expires=expires from devexd's own signer (the
        s3app test app's generic /op calls store:presign)."""
        if not hasattr(self, "_s3app"):
            type(self)._s3app = Devexd(app="s3app", config={"s3": self.s3.conf()}).__enter__()
            self.addClassCleanup(self._s3app.__exit__, None, None, None)
        r = self._s3app.request("POST", "/op", body=json.dumps({"op": "presign", "args": [method, key, expires]}),
                                headers={"Content-Type": "application/json"})
        self.assertEqual(r.status, 200, r.body)
        self.assertTrue(r.json()["ok"], r.body)
        return r.json()["result"]

    # ---- the broker's checks ----

    def test_routes_refuse_without_or_with_another_token(self):
        for method, path, body in (("GET", "/api/runner/%s/files" % RID, None),
                                   ("POST", "/api/runner/%s/uploads" % RID, {"paths": ["a"]}),
                                   ("POST", "/api/runner/%s/sync" % RID, {"paths": []})):
            for tok in (None, TOKEN2, "x" * 43):
                r = self.api(method, path, token=tok, body=body)
                self.assertEqual(r.status, 401, (method, path, tok, r.body))
        # the other REPL's token cannot even list this one
        self.assertEqual(self.api("GET", "/api/runner/%s/files" % RID2, token=TOKEN).status, 401)

    def test_save_token(self):
        """The uploader's save token (policy.sync.save_token): accepted while
        it is valid, refused once expired, and only for its own REPL."""
        save = "s" * 43
        key = "devex:activeSession:" + RID
        h = hashlib.sha256(save.encode()).hexdigest()
        self.redis.call("HSET", key, "save_token_hash", h, "save_token_expires", str(int(time.time()) + 60))
        self.assertEqual(self.api("GET", "/api/runner/%s/files" % RID, token=save).status, 200)
        self.assertEqual(self.api("GET", "/api/runner/%s/files" % RID2, token=save).status, 401)
        self.redis.call("HSET", key, "save_token_expires", str(int(time.time()) - 1))
        self.assertEqual(self.api("GET", "/api/runner/%s/files" % RID, token=save).status, 401)
        # the session token itself is not a save token of another REPL
        self.redis.call("HSET", "devex:activeSession:" + RID2, "save_token_hash", h,
                        "save_token_expires", str(int(time.time()) + 60))
        self.assertEqual(self.api("GET", "/api/runner/%s/files" % RID2, token=save).status, 200)
        self.assertEqual(self.api("GET", "/api/runner/%s/files" % RID2, token=TOKEN).status, 401)

    def test_path_escapes_refused(self):
        bad = ["../x", "a/../../b", "/etc/passwd", "a//b", "./a", "a/./b", "a\nb", "a\tb", "a\x00b",
               "x" * 901, ""]
        for p in bad:
            r = self.api("POST", "/api/runner/%s/uploads" % RID, body={"paths": [p]})
            self.assertEqual(r.status, 400, (p, r.body))
            r = self.api("POST", "/api/runner/%s/sync" % RID, body={"paths": [p]})
            self.assertEqual(r.status, 400, (p, r.body))
        r = self.api("POST", "/api/runner/%s/uploads" % RID, body={"paths": ["f%d" % i for i in range(10001)]})
        self.assertEqual(r.status, 400, r.body)
        r = self.api("POST", "/api/runner/%s/uploads" % RID, body="../a\n", ctype="text/plain")
        self.assertEqual(r.status, 400, r.body)

    def test_sync_deletes_and_confirms(self):
        ups = self.uploads(["keep.txt", "gone/old.txt"])
        for u in ups.values():
            self.assertEqual(http("PUT", u, b"1")[0], 200)
        # a listed file that is not stored: not confirmed, nothing deleted
        r = self.api("POST", "/api/runner/%s/sync" % RID, body={"paths": ["keep.txt", "never.txt"]})
        self.assertEqual(r.status, 409, r.body)
        self.assertEqual(r.json()["missing"], ["never.txt"])
        self.assertEqual(len(self.api("GET", "/api/runner/%s/files" % RID).json()["files"]), 2)
        r = self.api("POST", "/api/runner/%s/sync" % RID, body="keep.txt\n", ctype="text/plain")
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json()["deleted"], 1)
        saved = self.redis.call("HGET", "devex:replMeta:" + RID, "lastSavedAt")
        self.assertTrue(saved and abs(int(saved) - time.time()) < 30, saved)
        r = self.api("GET", "/api/runner/%s/files" % RID, accept="text/plain")
        self.assertEqual(r.status, 200)
        lines = r.body.decode().splitlines() if isinstance(r.body, bytes) else r.body.splitlines()
        self.assertEqual([ln.split("\t")[0] for ln in lines], ["keep.txt"])

    # ---- the pod's scripts, run locally ----

    def test_scripts_round_trip(self):
        src = os.path.join(self.tmp, "src")
        os.makedirs(os.path.join(src, "deep/er/still deeper"))
        os.makedirs(os.path.join(src, "ünï cödé/日本語"))
        files = {
            "empty": b"",
            "deep/er/still deeper/x y.txt": b"nested\n",
            "ünï cödé/日本語/ファイル ✓.txt": "non-ascii ✓\n".encode(),
            "big.bin": os.urandom(1 << 20) * 50,
            "plus+equals=amp&[br].txt": b"odd",
            'quote"back\\slash {x}.txt': b"escaped in curl's config",
            ".hidden": b"dot",
        }
        for rel, data in files.items():
            with open(os.path.join(src, rel), "wb") as f:
                f.write(data)
        os.mkfifo(os.path.join(src, "a.fifo"))
        # a language server's socket (issue 17.4: a stop of such a workspace must not fail)
        lsp = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(lsp.close)
        lsp.bind(os.path.join(src, "deep", "lsp.sock"))
        lsp.listen(1)
        r = self.run_script(UPLOAD, src)
        self.assertEqual(r.returncode, 0, r.stderr.decode(errors="replace"))
        self.assertIn(b"a.fifo", r.stderr)  # reported, skipped
        self.assertIn(b"deep/lsp.sock", r.stderr)
        os.remove(os.path.join(src, "deep", "lsp.sock"))
        dst = os.path.join(self.tmp, "dst")
        os.mkdir(dst)
        r = self.run_script(DOWNLOAD, dst)
        self.assertEqual(r.returncode, 0, r.stderr.decode(errors="replace"))
        self.assertEqual(tree(dst), {k: hashlib.sha256(v).hexdigest() for k, v in files.items()})
        # a file removed from the workspace is deleted by devexd's sync
        os.remove(os.path.join(src, "big.bin"))
        os.remove(os.path.join(src, "a.fifo"))
        r = self.run_script(UPLOAD, src)
        self.assertEqual(r.returncode, 0, r.stderr.decode(errors="replace"))
        names = [f["path"] for f in self.api("GET", "/api/runner/%s/files" % RID).json()["files"]]
        self.assertNotIn("big.bin", names)
        self.assertEqual(len(names), len(files) - 1)
        # the other REPL's prefix was never touched
        self.assertEqual(self.api("GET", "/api/runner/%s/files" % RID2, token=TOKEN2).json()["files"], [])

    def test_scripts_fail_when_a_transfer_fails(self):
        ws = os.path.join(self.tmp, "w")
        os.makedirs(os.path.join(ws, "d"))
        for i in range(20):
            with open(os.path.join(ws, "d", "f%d" % i), "w") as f:
                f.write("x" * i)
        self.redis.call("HDEL", "devex:replMeta:" + RID, "lastSavedAt")
        r = self.run_script_s3_refusing(UPLOAD, ws)
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertIn(b"403", r.stderr)  # curl's --fail on a PUT, not the broker
        saved = self.redis.call("HGET", "devex:replMeta:" + RID, "lastSavedAt")
        self.assertIsNone(saved)  # no sync after a failed upload
        r = self.run_script(UPLOAD, ws)
        self.assertEqual(r.returncode, 0, r.stderr.decode(errors="replace"))
        dst = os.path.join(self.tmp, "dst")
        os.mkdir(dst)
        r = self.run_script_s3_refusing(DOWNLOAD, dst)
        self.assertNotEqual(r.returncode, 0, r.stdout)
        r = self.run_script(DOWNLOAD, dst)
        self.assertEqual(r.returncode, 0, r.stderr.decode(errors="replace"))
        self.assertEqual(tree(dst), tree(ws))

    def test_scripts_fail_loudly(self):
        ws = os.path.join(self.tmp, "w")
        os.mkdir(ws)
        with open(os.path.join(ws, "f"), "w") as f:
            f.write("x")
        r = self.run_script(UPLOAD, ws, token=TOKEN2)  # another session's token
        self.assertNotEqual(r.returncode, 0)
        r = self.run_script(DOWNLOAD, ws, token="nope" * 8)
        self.assertNotEqual(r.returncode, 0)


class RenderTest(unittest.TestCase):
    def test_render_has_no_storage_credentials(self):
        from test_workload_render import SHIPPED_CONF, clean_env
        r = subprocess.run([harness.DEVEXD_BIN, "-c", SHIPPED_CONF, "-L", harness.LUA_DIR, "workload", "render",
                            "--template", "python"], capture_output=True, timeout=60,
                           env=clean_env(ENVIRONMENT="test"))
        out = r.stdout.decode() + r.stderr.decode()
        self.assertEqual(r.returncode, 0, out)
        objs = json.loads(r.stdout)
        self.assertIn("curl", json.dumps(objs))
        self.assertNotIn("devexd-s3", out)
        self.assertNotIn("AWS_", out)
        self.assertNotIn("secretKeyRef", out)
        self.assertIn("RUNNER_TOKEN", out)
        self.assertIn("CALLBACK_URL", out)


if __name__ == "__main__":
    unittest.main()
