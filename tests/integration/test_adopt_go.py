#!/usr/bin/env python3
"""`devexd migrate from-go`: taking over the REPLs of the Go service.

The Go service's data is written here as its code writes it: repl:<id>
hashes (id, name, user = the lowercased login, template, isActive) and
user:<login> sets in Redis with no key prefix, files under
repl/<login>/<id>/ in the bucket (the fs storage driver here). The operator's
map is the `devexd owners migrate` file.

- The dry run changes nothing and says what it would do.
- --apply: mapped REPLs are listed by their owner after a GitHub sign-in,
  with their files byte-identical under repl/<owner key>/<id>/, and a
  session starts; the Go data is left as it was; an unmapped login's REPL,
  one with a live Go session and a dangling id are reported and untouched.
- A second run changes nothing; --move-files --delete-old then remove the
  Go copy of what was adopted, and nothing else.
- --source-db / --source-prefix read Go data from another database and
  behind a prefix.
"""
import json
import os
import shutil
import time
import signal
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd, RedisServer  # noqa: E402
from fakes.github_fake import GitHubFake  # noqa: E402
from test_auth import FRONTEND, GH_REDIRECT  # noqa: E402
import test_repl  # noqa: E402

JSON = {"Content-Type": "application/json"}


def tree(root):
    """{relative path: bytes} of every file under root."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


def fs_rel(rel):
    # the fs driver stores a path segment starting with "." as "%2E..."
    return "/".join(("%2E" + s[1:]) if s.startswith(".") else s for s in rel.split("/"))


class AdoptGoTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="devexd-adopt-")
        cls.store_dir = os.path.join(cls.tmp, "bucket")
        os.mkdir(cls.store_dir)
        cls.redis = cls.enterClassContext(RedisServer())
        cls.gh = cls.enterClassContext(GitHubFake())
        conf = {
            "environment": "production", "allow_insecure_http": True,
            "frontend_url": FRONTEND,
            "redis": {"url": cls.redis.url(), "timeout": 2},
            "github": cls.gh.config(GH_REDIRECT),
            "session": {"ttl": 3600, "state_ttl": 600},
            "storage": {"driver": "fs", "dir": cls.store_dir},
            "runtime": {"driver": "local", "dir": os.path.join(cls.tmp, "ws"), "stop_grace": 2},
        }
        cls.d = cls.enterClassContext(Devexd(app=None, threads=2, config=conf))
        cls.addClassCleanup(harness.kill_session_runners, cls.redis)
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        cls.d.sync_templates()

    def gh_login(self, login, uid):
        return test_repl.ReplTest.login(self, login, uid)

    def meta(self, rid):
        flat = self.redis.call("HGETALL", "devex:replMeta:" + rid)
        return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}

    def members(self, owner):
        return sorted(m.decode() for m in self.redis.call("SMEMBERS", "devex:userRepls:" + owner))

    A = "repl-0f1e2d3c-0000-4000-8000-00000000000a"  # octocat, stopped, files
    B = "repl-0f1e2d3c-0000-4000-8000-00000000000b"  # octocat, isActive true
    C = "repl-0f1e2d3c-0000-4000-8000-00000000000c"  # carol, not in the map
    D = "repl-0f1e2d3c-0000-4000-8000-00000000000d"  # dave, its files are missing
    GONE = "repl-0f1e2d3c-0000-4000-8000-000000000999"  # in user:octocat, no record

    FILES = {"notes.md": b"# from go\n", ".env": b"A=1\n", "src/lib/util.py": b"x = 1\n",
             "empty.txt": b"", "dir with space/\u00fc.txt": "\u00fc\n".encode(), "bin.dat": bytes(range(256)) * 64}

    def cli(self, *args, ok=True):
        p = subprocess.run([harness.DEVEXD_BIN, "-c", self.d.conf_path, "-L", harness.LUA_DIR] + list(args),
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=120)
        if ok:
            self.assertEqual(p.returncode, 0, p.stderr + p.stdout)
        return p

    def put_files(self, prefix, files):
        for rel, data in files.items():
            path = os.path.join(self.store_dir, prefix, fs_rel(rel))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)

    def go_repl(self, rid, login, name, template="python", active=False, files=None, db=0, prefix=""):
        """What the Go service's CreateRepl (and CreateReplSession) leave."""
        self.redis.call("HSET", prefix + "repl:" + rid, "id", rid, "name", name, "user", login,
                        "template", template, "isActive", "true" if active else "false", db=db)
        self.redis.call("SADD", prefix + "user:" + login, rid, db=db)
        if files:
            self.put_files("repl/%s/%s/" % (login, rid), files)

    def write_map(self, text):
        path = os.path.join(self.tmp, "go.map")
        with open(path, "w") as f:
            f.write(text)
        return path

    def snapshot(self, db=0):
        """Redis (minus what the running devexd writes on its own: sessions,
        and the periodic sweep's lock and its indexes' version marker, which
        reappear within one sweep interval after setUp's FLUSHALL) and the
        bucket's files."""
        data = {}
        for k in self.redis.call("KEYS", "*", db=db):
            k = k.decode()
            if k.startswith("devex:session:") or k in ("devex:sweep:lock", "devex:replIdx:version"):
                continue
            t = self.redis.call("TYPE", k, db=db)
            t = t.decode() if isinstance(t, bytes) else t
            if t == "hash":
                flat = self.redis.call("HGETALL", k, db=db)
                data[k] = sorted(zip(flat[0::2], flat[1::2]))
            elif t == "set":
                data[k] = sorted(self.redis.call("SMEMBERS", k, db=db))
            else:
                data[k] = t
        return data, tree(self.store_dir)

    def assertSameSnapshot(self, got, want, msg=None):
        """assertEqual for two snapshots that names the keys and files that
        differ: unittest's own diff of two 5000-file snapshots (difflib) ran
        for more than 15 minutes instead of failing."""
        if got == want:
            return
        diff = []
        for part, g, w in (("redis", got[0], want[0]), ("file", got[1], want[1])):
            for k in sorted(set(g) | set(w)):
                if g.get(k) != w.get(k):
                    diff.append("%s %s: %.200r != %.200r" % (part, k, g.get(k), w.get(k)))
        self.fail("snapshots differ (%d):\n%s%s" % (len(diff), "\n".join(diff[:20]), "\n" + msg if msg else ""))

    def go_hash(self, rid, db=0, prefix=""):
        flat = self.redis.call("HGETALL", prefix + "repl:" + rid, db=db)
        return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}

    def setUp(self):
        harness.kill_session_runners(self.redis)
        self.redis.call("FLUSHALL")
        shutil.rmtree(os.path.join(self.store_dir, "repl"), ignore_errors=True)
        self.go_repl(self.A, "octocat", "my app", files=self.files())
        self.go_repl(self.B, "octocat", "busy", template="node", active=True, files={"index.js": b"1\n"})
        self.redis.call("SADD", "user:octocat", self.GONE)
        self.go_repl(self.C, "carol", "carol's", files={"main.py": b"carol\n"})
        self.go_repl(self.D, "dave", "lost files")
        self.map = self.write_map("# Go login, then whose it is\n"
                                  "octocat github:583231\n"
                                  "dave github:4242\n"
                                  "nobody github:5\n")

    def files(self):
        """A REPL the Go service made from the python template (its copy of
        templates/python/ then the user's edits), so that it runs."""
        files = {}
        root = os.path.join(self.store_dir, "templates", "python")
        for rel, data in tree(root).items():
            files[rel.replace("%2E", ".")] = data
        files.update(self.FILES)
        return files

    def want_files(self):
        return {fs_rel(k): v for k, v in self.files().items()}

    def test_dry_run_apply_again(self):
        before = self.snapshot()
        p = self.cli("migrate", "from-go", "--map", self.map)
        self.assertIn("dry run", p.stdout)
        self.assertIn("would adopt %s \"my app\" of octocat as gh_583231 (github:583231): %d file(s)" % (self.A, len(self.files())), p.stdout)
        self.assertIn("would 2 adopted (1 without files), 0 adopted before; 1 not in the map, "
                      "1 with a live Go session, 0 skipped, 0 failed; 1 dangling id(s)", p.stdout)
        self.assertSameSnapshot(self.snapshot(), before)

        # a run killed half way through copying A's files left part of a copy
        self.put_files("repl/gh_583231/%s/" % self.A, {"notes.md": b"torn", "src/lib/util.py": b""})
        p = self.cli("migrate", "from-go", "--map", self.map, "--apply")
        self.assertIn("2 adopted (1 without files), 0 adopted before; 1 not in the map, "
                      "1 with a live Go session, 0 skipped, 0 failed; 1 dangling id(s)", p.stdout)
        self.assertIn("skip   %s \"busy\" of octocat: the Go service has a live session" % self.B, p.stdout)
        self.assertIn("unmapped carol: 1 REPL(s)", p.stdout)
        self.assertIn("user:octocat lists %s, which has no repl:%s record" % (self.GONE, self.GONE), p.stdout)
        self.assertIn("map line 4: nobody has no REPL", p.stdout)
        meta = self.meta(self.A)
        self.assertEqual((meta["user"], meta["prefix"], meta["state"], meta["template"], meta["name"]),
                         ("gh_583231", "repl/gh_583231/%s/" % self.A, "stopped", "python", "my app"))
        self.assertEqual((meta["adopted_from"], meta["go_owner"]), ("go", "octocat"))
        self.assertEqual(self.members("gh_583231"), [self.A])
        self.assertEqual(self.members("gh_4242"), [self.D])
        self.assertEqual(tree(os.path.join(self.store_dir, "repl", "gh_583231", self.A)), self.want_files())
        # the Go data is as it was: keys, files, the unmapped and the active REPL
        self.assertEqual(tree(os.path.join(self.store_dir, "repl", "octocat", self.A)), self.want_files())
        self.assertEqual(self.go_hash(self.A)["user"], "octocat")
        self.assertEqual(self.go_hash(self.C), {"id": self.C, "name": "carol's", "user": "carol",
                                                "template": "python", "isActive": "false"})
        self.assertEqual(tree(os.path.join(self.store_dir, "repl", "carol")), {self.C + "/main.py": b"carol\n"})
        for rid in (self.B, self.C, self.GONE):
            self.assertEqual(self.redis.call("EXISTS", "devex:replMeta:" + rid), 0)

        # a second run changes nothing
        before = self.snapshot()
        p = self.cli("migrate", "from-go", "--map", self.map, "--apply")
        self.assertIn("0 adopted (0 without files), 2 adopted before", p.stdout)
        self.assertSameSnapshot(self.snapshot(), before)

        # the owner sees it after a GitHub sign-in and can start it
        gh = self.gh_login("OctoCat", 583231)
        listed = gh.get("/api/repl").json()
        self.assertEqual([(x["id"], x["name"], x["isActive"]) for x in listed], [(self.A, "my app", False)])
        r = gh.get("/api/repl/session/" + self.A)
        self.assertEqual(r.status, 200, r.body)
        r = gh.get("/repl/%s/ping" % self.A)  # the REPL's runner agent, through the runner gateway
        self.assertEqual((r.status, r.body), (200, b'"pong"\n'))
        self.assertEqual(gh.request("DELETE", "/api/repl/session/" + self.A, headers=JSON).status, 200)
        self.assertEqual(self.gh_login("dave", 4242).get("/api/repl").json()[0]["id"], self.D)
        self.assertEqual(self.gh_login("carol", 77).get("/api/repl").json(), [])

        # --move-files --delete-old: the Go copy of what was adopted goes, nothing else
        p = self.cli("migrate", "from-go", "--map", self.map, "--apply", "--move-files", "--delete-old")
        self.assertIn("0 adopted (0 without files), 2 adopted before", p.stdout)
        self.assertFalse(os.path.exists(os.path.join(self.store_dir, "repl", "octocat", self.A)))
        self.assertEqual(self.redis.call("EXISTS", "repl:" + self.A, "repl:" + self.D, "user:dave"), 0)
        self.assertEqual(sorted(m.decode() for m in self.redis.call("SMEMBERS", "user:octocat")), [self.B, self.GONE])
        self.assertEqual(self.go_hash(self.B)["isActive"], "true")
        self.assertEqual(tree(os.path.join(self.store_dir, "repl", "octocat", self.B)), {"index.js": b"1\n"})
        self.assertEqual(self.go_hash(self.C)["user"], "carol")
        self.assertEqual(tree(os.path.join(self.store_dir, "repl", "carol")), {self.C + "/main.py": b"carol\n"})
        self.assertEqual(self.meta(self.A)["user"], "gh_583231")

        # D deleted in devexd by its owner, its Go record still there: not adopted again
        self.go_repl(self.D, "dave", "lost files")
        dave = self.gh_login("dave", 4242)
        self.assertEqual(dave.request("DELETE", "/api/repl/" + self.D, headers=JSON).status, 200)
        p = self.cli("migrate", "from-go", "--map", self.map, "--apply")
        self.assertIn("%s \"lost files\" of dave was adopted before and deleted in devexd since" % self.D, p.stdout)
        self.assertIn("0 adopted (0 without files), 1 adopted before", p.stdout)
        self.assertEqual(dave.get("/api/repl").json(), [])
        self.redis.call("DEL", "repl:" + self.D, "user:dave")

        # B once the Go service's workloads are stopped (isActive left true): --include-active
        p = self.cli("migrate", "from-go", "--map", self.map, "--apply", "--include-active")
        self.assertIn("1 adopted (0 without files), 0 adopted before", p.stdout)
        self.assertEqual(self.meta(self.B)["state"], "stopped")
        self.assertEqual(self.members("gh_583231"), [self.A, self.B])

    def test_killed_half_way_completes_on_rerun(self):
        """A real SIGKILL of an --apply run while it copies (80 REPLs of 60
        files each), then a rerun: every mapped REPL adopted once, with all its
        files, and a third run changes nothing."""
        rids = ["repl-0f1e2d3c-0000-4000-8000-%012d" % (100 + i) for i in range(80)]
        files = {"f%02d.txt" % j: (b"%d\n" % j) * 100 for j in range(60)}
        for i, rid in enumerate(rids):
            self.go_repl(rid, "octocat", "bulk %d" % i, files=files)
        cmd = [harness.DEVEXD_BIN, "-c", self.d.conf_path, "-L", harness.LUA_DIR,
               "migrate", "from-go", "--map", self.map, "--apply"]
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        # kill it once it has started adopting, before it can finish
        deadline = time.monotonic() + 60
        while not os.path.isdir(os.path.join(self.store_dir, "repl", "gh_583231")):
            self.assertLess(time.monotonic(), deadline, "the run never started copying")
            time.sleep(0.005)
        time.sleep(0.02)
        p.kill()
        out = p.communicate()[0].decode()
        killed = p.returncode == -signal.SIGKILL
        adopted_before = self.members("gh_583231")
        # the rerun completes whatever state the kill left
        p2 = self.cli("migrate", "from-go", "--map", self.map, "--apply")
        want = {fs_rel(k): v for k, v in files.items()}
        self.assertEqual(sorted(self.members("gh_583231")), sorted(rids + [self.A]))
        for rid in rids:
            self.assertEqual(tree(os.path.join(self.store_dir, "repl", "gh_583231", rid)), want, rid)
            self.assertEqual(self.meta(rid)["state"], "stopped")
        before = self.snapshot()
        p3 = self.cli("migrate", "from-go", "--map", self.map, "--apply")
        self.assertSameSnapshot(self.snapshot(), before, p3.stdout)
        # the kill really landed half way (not after the end): say so if not
        self.assertTrue(killed, "the first run ended before the kill:\n" + out)
        self.assertLess(len(adopted_before), len(rids) + 1, "the first run adopted everything before the kill")
        self.assertIn("adopted", p2.stdout)

    def test_other_db_and_prefix(self):
        self.redis.call("FLUSHALL")
        self.go_repl(self.A, "octocat", "my app", files=self.files(), db=2, prefix="go:")
        before0 = self.snapshot()
        p = self.cli("migrate", "from-go", "--map", self.map, "--source-db", "2", "--source-prefix", "go:")
        self.assertIn("would 1 adopted", p.stdout)
        self.assertSameSnapshot(self.snapshot(), before0)
        p = self.cli("migrate", "from-go", "--map", self.map, "--source-db=2", "--source-prefix=go:", "--apply")
        self.assertIn("1 adopted (0 without files)", p.stdout)
        self.assertEqual(self.members("gh_583231"), [self.A])
        self.assertEqual(tree(os.path.join(self.store_dir, "repl", "gh_583231", self.A)), self.want_files())
        self.assertEqual(self.go_hash(self.A, db=2, prefix="go:")["user"], "octocat")

    def test_suggest(self):
        self.gh_login("OctoCat", 583231)
        self.gh_login("carol", 77)
        self.gh_login("dave", 4242)
        self.gh_login("dave", 9999)  # the login went to another account: no line
        out = self.cli("migrate", "from-go", "--suggest").stdout
        self.assertIn("# devexd migrate from-go --suggest: candidate lines for `devexd migrate from-go --map FILE`", out)
        lines = [x for x in out.splitlines() if not x.startswith("#")]
        self.assertEqual(sorted(lines), ["carol github:77", "octocat github:583231"])
        self.assertIn("# dave: 1 REPL(s)", out)
        self.assertIn("claimed by 2 accounts", out)
        p = self.cli("migrate", "from-go", "--map", self.write_map(out))
        self.assertIn("would 2 adopted (0 without files), 0 adopted before; 1 not in the map, 1 with a live Go session", p.stdout)

    def test_usage(self):
        p = self.cli("migrate", "from-go", ok=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("--map FILE is required", p.stderr)
        p = self.cli("migrate", "from-go", "--map", self.map, "--bogus", ok=False)
        self.assertEqual(p.returncode, 2)
        p = self.cli("migrate", "from-go", "--map", self.write_map("octocat\n"), ok=False)
        self.assertEqual(p.returncode, 2)
        self.assertEqual(self.redis.call("KEYS", "devex:*"), [])


class AdoptGoS3Test(unittest.TestCase):
    """The same against S3 (the signature-checking test server): the Go
    service's bucket, as its CopyFolder and the pods' `aws s3 cp` leave it."""
    RID = "repl-0f1e2d3c-0000-4000-8000-0000000000a1"
    FILES = {"main.py": "print('hi')\n", ".config/settings.json": "{}\n", "a/b/c.txt": "deep \u00fc\n", "e": ""}

    @classmethod
    def setUpClass(cls):
        from test_s3 import S3Server, ensure_s3_server
        ensure_s3_server()
        cls.tmp = tempfile.mkdtemp(prefix="devexd-adopt-s3-")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        cls.s3 = cls.enterClassContext(S3Server())
        cls.redis = cls.enterClassContext(RedisServer())
        cls.gh = cls.enterClassContext(GitHubFake())
        cls.s3app = cls.enterClassContext(Devexd(app="s3app", config={"s3": cls.s3.conf()}))
        conf = {
            "environment": "production", "allow_insecure_http": True, "frontend_url": FRONTEND,
            "redis": {"url": cls.redis.url(), "timeout": 2},
            "github": cls.gh.config(GH_REDIRECT),
            "session": {"ttl": 3600, "state_ttl": 600},
            "s3": cls.s3.conf(), "storage": {"driver": "s3"},
        }
        cls.d = cls.enterClassContext(Devexd(app=None, threads=2, config=conf))

    def op(self, op, *args):
        r = self.s3app.request("POST", "/op", body=json.dumps({"op": op, "args": list(args)}),
                               headers={"Content-Type": "application/json"}, timeout=120)
        self.assertEqual(r.status, 200, r.body)
        out = r.json()
        self.assertTrue(out["ok"], out)
        return out

    def bucket(self):
        """{key: (size, etag, body)} of every object."""
        out = {}
        for o in self.op("list", "")["objects"]:
            out[o["key"]] = (o["size"], o.get("etag"), self.op("get", o["key"])["body"])
        return out

    def test_s3(self):
        self.redis.call("FLUSHALL")
        for rel, data in self.FILES.items():
            self.op("put", "repl/octocat/%s/%s" % (self.RID, rel), data)
        self.op("put", "repl/carol/repl-0f1e2d3c-0000-4000-8000-0000000000c1/main.py", "carol\n")
        self.redis.call("HSET", "repl:" + self.RID, "id", self.RID, "name", "s3 app", "user", "octocat",
                        "template", "python", "isActive", "false")
        self.redis.call("SADD", "user:octocat", self.RID)
        self.redis.call("HSET", "repl:repl-0f1e2d3c-0000-4000-8000-0000000000c1", "id",
                        "repl-0f1e2d3c-0000-4000-8000-0000000000c1", "name", "c", "user", "carol",
                        "template", "python", "isActive", "false")
        mapfile = os.path.join(self.tmp, "go.map")
        with open(mapfile, "w") as f:
            f.write("octocat github:583231\n")
        cmd = [harness.DEVEXD_BIN, "-c", self.d.conf_path, "-L", harness.LUA_DIR, "migrate", "from-go", "--map", mapfile]

        def run(*extra):
            p = subprocess.run(cmd + list(extra), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
            self.assertEqual(p.returncode, 0, p.stderr + p.stdout)
            return p.stdout

        def keys():
            return sorted(k.decode() for k in self.redis.call("KEYS", "*") if not k.startswith(b"devex:session:"))

        before = (self.bucket(), keys())
        self.assertIn("would 1 adopted (0 without files), 0 adopted before; 1 not in the map", run())
        self.assertEqual((self.bucket(), keys()), before)
        self.assertIn("1 adopted (0 without files), 0 adopted before; 1 not in the map", run("--apply"))
        after = self.bucket()
        for rel, data in self.FILES.items():
            old, new = after["repl/octocat/%s/%s" % (self.RID, rel)], after["repl/gh_583231/%s/%s" % (self.RID, rel)]
            self.assertEqual(new, old)
            self.assertEqual(new[2], data)
        self.assertEqual(len(after), 2 * len(self.FILES) + 1)
        gh = test_repl.ReplTest.login(self, "OctoCat", 583231)
        self.assertEqual([x["id"] for x in gh.get("/api/repl").json()], [self.RID])
        before = (self.bucket(), keys())
        self.assertIn("0 adopted (0 without files), 1 adopted before", run("--apply"))
        self.assertEqual((self.bucket(), keys()), before)
        # --move-files: the Go copy goes, carol's stays
        run("--apply", "--move-files")
        left = self.bucket()
        self.assertEqual(sorted(k for k in left if not k.startswith("repl/gh_583231/")),
                         ["repl/carol/repl-0f1e2d3c-0000-4000-8000-0000000000c1/main.py"])


if __name__ == "__main__":
    unittest.main()
