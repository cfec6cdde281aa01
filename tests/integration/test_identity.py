"""Owners keyed on stable identity (issue 14, item 1) with the shipped app:
sign-in through the GitHub-shaped fake and a real OpenID Connect provider
(oauth2-mock-server), a real redis-server, the fs storage driver and the
single-host runtime.

- A GitHub user renames the account and a new account takes the old login:
  the new account sees nothing of the first one's (list, session start and
  stop, delete, the runner gateway at /repl/<id>/, storage), and the first
  one, under its new login, keeps everything.
- Two OpenID Connect users with the same preferred_username and different
  sub are two owners.
- Owner keys and storage prefixes are [a-z0-9_-] whatever the login holds.
- A session written before owner keys (owner = the login) acts as the owner
  key of its subject, never as the login.
- `devexd owners migrate`: the dry run (with and without a map) changes
  nothing; --apply moves a login-keyed REPL (metadata, userRepls set, files,
  byte for byte) to the subject's key, leaves running, unmapped and nested
  ones alone, and a second run changes nothing; leftovers of an interrupted
  run are finished. `devexd owners suggest` proposes lines from sign-in
  sessions and flags logins that changed hands.
"""

import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd, RedisServer  # noqa: E402
from fakes.github_fake import GitHubFake  # noqa: E402
import test_repl  # noqa: E402
from test_auth import (Browser, OidcServer, http_get, local_path, replace_query,  # noqa: E402
                       FRONTEND, GH_REDIRECT)

JSON = {"Content-Type": "application/json"}
KEY_CHARS = re.compile(r"^[a-z0-9_-]+$")


def oidc_key(issuer, sub):
    """The owner key devexd makes for an OpenID Connect subject."""
    digest = hashlib.sha256(("%d:%s%s" % (len(issuer), issuer, sub)).encode()).digest()
    return "oidc_" + base64.b32encode(digest).decode().lower().rstrip("=")


class IdentityBase(unittest.TestCase):
    runtime = True

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="devexd-identity-")
        cls.store_dir = os.path.join(cls.tmp, "bucket")
        os.mkdir(cls.store_dir)
        cls.redis = cls.enterClassContext(RedisServer())
        cls.gh = cls.enterClassContext(GitHubFake())
        cls.oidc = cls.enterClassContext(OidcServer())
        conf = {
            "environment": "production", "allow_insecure_http": True,
            "frontend_url": FRONTEND,
            "redis": {"url": cls.redis.url(), "timeout": 2},
            "github": cls.gh.config(GH_REDIRECT),
            "oauth": {"timeout": 5, "providers": {"mock": cls.oidc.config()}},
            "session": {"ttl": 3600, "state_ttl": 600},
            "storage": {"driver": "fs", "dir": cls.store_dir},
        }
        if cls.runtime:
            conf["runtime"] = {"driver": "local", "dir": os.path.join(cls.tmp, "ws"), "stop_grace": 2}
        cls.d = cls.enterClassContext(Devexd(app=None, threads=2, config=conf))
        cls.addClassCleanup(harness.kill_session_runners, cls.redis)
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        cls.d.sync_templates()

    def setUp(self):
        harness.kill_session_runners(self.redis)
        self.redis.call("FLUSHALL")
        shutil.rmtree(os.path.join(self.store_dir, "repl"), ignore_errors=True)

    # ---- helpers ----

    def gh_login(self, login, uid):
        return test_repl.ReplTest.login(self, login, uid)

    def oidc_login(self, sub):
        b = Browser(self.d)
        r = b.get("/auth/mock/login")
        self.assertEqual(r.status, 302, r.body)
        status, headers, body = http_get(replace_query(r.header("Location"), login_hint=sub))
        self.assertIn(status, (302, 303), body[:300])
        r = b.get(local_path(headers["Location"]))
        self.assertEqual(r.header("Location"), FRONTEND + "/dashboard", r.body)
        return b

    def create(self, b, name="my repl", template="python"):
        r = b.request("POST", "/api/repl/new", headers=JSON,
                      body=json.dumps({"template": template, "replName": name}))
        self.assertEqual(r.status, 201, r.body)
        return r.json()

    def meta(self, rid):
        flat = self.redis.call("HGETALL", "devex:replMeta:" + rid)
        return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}

    def members(self, owner):
        return sorted(m.decode() for m in self.redis.call("SMEMBERS", "devex:userRepls:" + owner))

    def owners_in_storage(self):
        root = os.path.join(self.store_dir, "repl")
        return sorted(os.listdir(root)) if os.path.isdir(root) else []

    def assert_not_found_everywhere(self, b, rid):
        for method, path in (("GET", "/api/repl/session/"), ("DELETE", "/api/repl/session/"),
                             ("DELETE", "/api/repl/")):
            r = b.request(method, path + rid, headers=JSON)
            self.assertEqual((r.status, r.json()), (404, {"error": "repl not found"}), (method, path))
        r = b.get("/repl/%s/" % rid)
        self.assertEqual(r.status, 404, r.body)


class IdentityTest(IdentityBase):
    def test_github_login_changes_hands(self):
        alice = self.gh_login("Alice", 1001)
        repl = self.create(alice)
        rid = repl["id"]
        self.assertEqual(repl["user"], "Alice")  # the login, for display
        meta = self.meta(rid)
        self.assertEqual((meta["user"], meta["prefix"], meta["login"]), ("gh_1001", "repl/gh_1001/%s/" % rid, "Alice"))
        self.assertEqual(self.members("gh_1001"), [rid])
        self.assertEqual(alice.get("/api/repl/session/" + rid).status, 200)
        r = alice.get("/repl/%s/ping" % rid)  # the runner gateway on devexd's host (the agent)
        self.assertEqual((r.status, r.body), (200, b'"pong"\n'))

        # Alice renames her account; someone else registers "Alice"
        mallory = self.gh_login("Alice", 2002)
        self.assertEqual(mallory.get("/auth/me").json()["login"], "Alice")
        self.assertEqual(mallory.get("/api/repl").json(), [])
        self.assert_not_found_everywhere(mallory, rid)
        self.assertEqual(self.meta(rid)["state"], "running")  # the stop and delete did nothing
        self.assertEqual(self.owners_in_storage(), ["gh_1001"])
        theirs = self.create(mallory, name="mine")
        self.assertEqual(self.meta(theirs["id"])["prefix"], "repl/gh_2002/%s/" % theirs["id"])
        self.assertEqual(mallory.get("/api/repl").json(), [theirs])
        self.assertEqual(self.owners_in_storage(), ["gh_1001", "gh_2002"])
        self.assertEqual(self.redis.call("KEYS", "devex:userRepls:alice"), [])

        # the first account, under its new login, still has its REPL and session
        renamed = self.gh_login("Alice-Renamed", 1001)
        listed = renamed.get("/api/repl").json()
        self.assertEqual(listed, [dict(repl, user="Alice-Renamed", isActive=True)])
        r = renamed.get("/repl/%s/ping" % rid)
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(renamed.request("DELETE", "/api/repl/session/" + rid, headers=JSON).status, 200)
        self.assertEqual(renamed.request("DELETE", "/api/repl/" + rid, headers=JSON).status, 200)
        self.assertEqual(self.members("gh_1001"), [])
        self.assertEqual(mallory.get("/api/repl").json(), [theirs])  # untouched

    def test_oidc_same_username_different_sub(self):
        a = self.oidc_login("sub-alpha")
        me_a = a.get("/auth/me").json()
        self.assertEqual((me_a["id"], me_a["login"]), ("sub-alpha", "JohnDoe"))
        repl = self.create(a)
        rid = repl["id"]
        self.assertEqual(repl["user"], "JohnDoe")
        key_a = oidc_key(self.oidc.issuer, "sub-alpha")
        self.assertEqual(self.meta(rid)["user"], key_a)
        self.assertEqual(len(key_a), 57)
        self.assertRegex(key_a, KEY_CHARS)
        b = self.oidc_login("sub-beta")
        me_b = b.get("/auth/me").json()
        self.assertEqual((me_b["id"], me_b["login"]), ("sub-beta", "JohnDoe"))
        self.assertEqual(b.get("/api/repl").json(), [])
        self.assert_not_found_everywhere(b, rid)
        theirs = self.create(b, name="other")
        self.assertEqual(self.meta(theirs["id"])["user"], oidc_key(self.oidc.issuer, "sub-beta"))
        self.assertEqual(a.get("/api/repl").json(), [repl])
        self.assertEqual(sorted(self.owners_in_storage()),
                         sorted([key_a, oidc_key(self.oidc.issuer, "sub-beta")]))

    def test_keys_hold_no_separator(self):
        b = self.gh_login("../a/b:c", 7)
        repl = self.create(b)
        self.assertEqual(repl["user"], "../a/b:c")
        self.assertEqual(self.meta(repl["id"])["prefix"], "repl/gh_7/%s/" % repl["id"])
        self.assertEqual(self.owners_in_storage(), ["gh_7"])
        session = json.loads(self.redis.call("HGET", self.redis.call("KEYS", "devex:session:*")[0], "user"))
        self.assertEqual((session["owner"], session["subject"]), ("gh_7", "github:7"))

    def test_session_from_before_owner_keys(self):
        # a login-keyed REPL, and a session as the login-based code wrote it
        legacy = "repl-00000000-0000-4000-8000-00000000aaaa"
        self.redis.call("HSET", "devex:replMeta:" + legacy, "id", legacy, "name", "old", "user", "octocat",
                        "template", "python", "state", "stopped", "created_at", "1", "prefix",
                        "repl/octocat/%s/" % legacy)
        self.redis.call("SADD", "devex:userRepls:octocat", legacy)
        sid = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
        key = "devex:session:" + hashlib.sha256(sid.encode()).hexdigest()
        user = {"id": 583231, "login": "OctoCat", "name": "The Octocat", "email": None, "avatar_url": None,
                "created_at": "2011-01-25T18:44:36Z", "provider": "github", "subject": "github:583231",
                "owner": "octocat"}
        now = int(time.time())
        self.redis.call("HSET", key, "user", json.dumps(user), "provider", "github", "created_at", str(now),
                        "expires_at", str(now + 3600), "access_token", "", "refresh_token", "", "token_expires_at", "")
        self.redis.call("EXPIRE", key, "3600")
        b = Browser(self.d)
        b.jar["devex_session"] = sid
        self.assertEqual(b.get("/auth/me").json()["login"], "OctoCat")
        self.assertEqual(b.get("/api/repl").json(), [])  # not the login's REPLs
        self.assert_not_found_everywhere(b, legacy)
        repl = self.create(b)
        self.assertEqual(self.meta(repl["id"])["user"], "gh_583231")
        # the account signing in anew has the same owner
        self.assertEqual(self.gh_login("OctoCat", 583231).get("/api/repl").json(), [repl])


class OwnersMigrateTest(IdentityBase):
    runtime = False

    A = "repl-00000000-0000-4000-8000-00000000000a"  # octocat, stopped
    B = "repl-00000000-0000-4000-8000-00000000000b"  # octocat, running
    C = "repl-00000000-0000-4000-8000-00000000000c"  # mock:johndoe (OpenID Connect)
    D = "repl-00000000-0000-4000-8000-00000000000d"  # carol, not in the map
    E = "repl-00000000-0000-4000-8000-00000000000e"  # "mock:johndoe/<C>": nested inside C's prefix
    F = "repl-00000000-0000-4000-8000-00000000000f"  # dave, whose login went to a newer account

    FILES = {"main.py": b"print('hi')\n", "src/.hidden": b"dot\n", "empty.txt": b"",
             "dir with space/\u00fc.txt": "non-ASCII \u00fc\n".encode()}

    def cli(self, *args, ok=True):
        p = subprocess.run([harness.DEVEXD_BIN, "-c", self.d.conf_path, "-L", harness.LUA_DIR] + list(args),
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=120)
        if ok:
            self.assertEqual(p.returncode, 0, p.stderr + p.stdout)
        return p

    def put_files(self, prefix, files):
        for rel, data in files.items():
            # the fs driver stores a segment starting with "." as "%2E..."
            rel = "/".join(("%2E" + s[1:]) if s.startswith(".") else s for s in rel.split("/"))
            path = os.path.join(self.store_dir, prefix, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)

    def legacy(self, rid, owner, state="stopped", files=None, prefix=None, created=1700000000):
        prefix = prefix or "repl/%s/%s/" % (owner, rid)
        self.redis.call("HSET", "devex:replMeta:" + rid, "id", rid, "name", "r " + rid[-1], "user", owner,
                        "template", "python", "state", state, "created_at", str(created),
                        "last_active", str(created), "prefix", prefix)
        self.redis.call("SADD", "devex:userRepls:" + owner, rid)
        self.put_files(prefix, files if files is not None else {"main.py": rid.encode()})

    def snapshot(self):
        data = {}
        for k in self.redis.call("KEYS", "devex:*"):
            k = k.decode()
            if k.startswith("devex:session:"):
                continue
            t = self.redis.call("TYPE", k)
            t = t.decode() if isinstance(t, bytes) else t
            if t == "hash":
                flat = self.redis.call("HGETALL", k)
                data[k] = sorted(zip(flat[0::2], flat[1::2]))
            elif t == "set":
                data[k] = sorted(self.redis.call("SMEMBERS", k))
            else:
                data[k] = t
        return data, harness.tree(self.store_dir)

    def session(self, owner, subject, login, account_created):
        sid = secrets.token_hex(16)
        user = {"id": subject.split(":", 1)[1], "login": login, "provider": subject.split(":", 1)[0],
                "subject": subject, "owner": owner, "created_at": account_created}
        self.redis.call("HSET", "devex:session:" + sid, "user", json.dumps(user), "created_at", str(int(time.time())))

    def write_map(self, text):
        path = os.path.join(self.tmp, "owners.map")
        with open(path, "w") as f:
            f.write(text)
        return path

    def setUp(self):
        super().setUp()
        self.legacy(self.A, "octocat", files=self.FILES)
        self.legacy(self.B, "octocat", state="running")
        self.redis.call("HSET", "devex:activeSession:" + self.B, "started_at", "1", "endpoint", "127.0.0.1:9")
        self.legacy(self.C, "mock:johndoe", state="created")
        self.legacy(self.D, "carol")
        self.legacy(self.E, "mock:johndoe/" + self.C, prefix="repl/mock:johndoe/%s/%s/" % (self.C, self.E),
                    files={"nested.txt": b"not C's\n"})
        self.legacy(self.F, "dave")
        self.redis.call("SADD", "devex:userRepls:octocat", "repl-00000000-0000-4000-8000-000000000999")  # stale
        self.key_c = oidc_key(self.oidc.issuer, "johndoe")
        self.map = self.write_map("# legacy key, then whose it is\n"
                                  "OctoCat github:583231\n"
                                  "mock:johndoe   mock:johndoe\n"
                                  "nobody github:5\n")

    def test_dry_runs_change_nothing(self):
        before = self.snapshot()
        p = self.cli("owners", "migrate")
        self.assertIn("skip   %s \"r a\" of octocat: not in the map" % self.A, p.stdout)
        self.assertIn("would 0 moved", p.stdout)
        p = self.cli("owners", "migrate", "--map", self.map)
        out = p.stdout
        self.assertIn("would move %s \"r a\" of octocat to gh_583231 (github:583231): 4 file(s), %d bytes, "
                      "repl/octocat/%s/ -> repl/gh_583231/%s/"
                      % (self.A, sum(map(len, self.FILES.values())), self.A, self.A), out)
        self.assertIn("would move %s \"r c\" of mock:johndoe to %s (mock:johndoe)" % (self.C, self.key_c), out)
        self.assertIn("(leaving 1 other REPL(s) nested under it)", out)
        self.assertIn("skip   %s \"r b\" of octocat: it is running with a session" % self.B, out)
        self.assertIn("skip   %s \"r d\" of carol: not in the map" % self.D, out)
        self.assertIn("would remove repl-00000000-0000-4000-8000-000000000999 from userRepls:octocat", out)
        self.assertIn("note   map line 4: nobody has no REPL to move", out)
        self.assertIn("would 2 moved", out)
        self.assertEqual(self.snapshot(), before)

    def test_bad_maps_are_refused(self):
        before = self.snapshot()
        for text, why in (("octocat\n", "expected"), ("octocat github:1\noctocat github:2\n", "mapped twice"),
                          ("octocat github:abc\n", "not a number"), ("octocat nosuch:1\n", "no sign-in provider"),
                          ("gh_1 github:1\n", "already an owner key")):
            p = self.cli("owners", "migrate", "--map", self.write_map(text), "--apply", ok=False)
            self.assertEqual(p.returncode, 2, p.stdout)
            self.assertIn(why, p.stderr)
        self.assertEqual(self.snapshot(), before)

    def test_apply_then_again(self):
        p = self.cli("owners", "migrate", "--map", self.map, "--apply")
        self.assertIn("2 moved, 0 old file set(s) deleted, 1 stale set member(s) removed; 3 not in the map, "
                      "1 skipped, 0 failed", p.stdout)
        # A: metadata, set and files under the subject's key
        meta = self.meta(self.A)
        self.assertEqual(meta["user"], "gh_583231")
        self.assertEqual(meta["prefix"], "repl/gh_583231/%s/" % self.A)
        self.assertEqual(meta["state"], "stopped")
        self.assertEqual(meta["legacy_owner"], "octocat")
        self.assertNotIn("legacy_prefix", meta)
        self.assertNotIn("migrating_from", meta)
        self.assertEqual(self.members("gh_583231"), [self.A])
        self.assertEqual(self.members("octocat"), [self.B])  # the running one waits; the stale member is gone
        want = {("/".join(("%2E" + s[1:]) if s.startswith(".") else s for s in k.split("/"))): v
                for k, v in self.FILES.items()}
        self.assertEqual(harness.tree(os.path.join(self.store_dir, "repl", "gh_583231", self.A)), want)
        self.assertFalse(os.path.exists(os.path.join(self.store_dir, "repl", "octocat", self.A)))
        # C moved; E, nested in C's old prefix, is left where it is, whole
        self.assertEqual(self.meta(self.C)["user"], self.key_c)
        self.assertEqual(self.meta(self.C)["state"], "created")
        self.assertEqual(harness.tree(os.path.join(self.store_dir, "repl", self.key_c, self.C)), {"main.py": self.C.encode()})
        self.assertEqual(harness.tree(os.path.join(self.store_dir, "repl", "mock:johndoe", self.C)),
                         {os.path.join(self.E, "nested.txt"): b"not C's\n"})
        self.assertEqual(self.meta(self.E)["user"], "mock:johndoe/" + self.C)
        self.assertEqual(self.meta(self.D)["user"], "carol")
        # the accounts see their REPLs
        gh = self.gh_login("OctoCat", 583231)
        listed = gh.get("/api/repl").json()
        self.assertEqual([(x["id"], x["user"]) for x in listed], [(self.A, "OctoCat")])
        self.assertEqual(self.oidc_login("johndoe").get("/api/repl").json()[0]["id"], self.C)

        # a second run changes nothing
        before = self.snapshot()
        p = self.cli("owners", "migrate", "--map", self.map, "--apply")
        self.assertIn("0 moved, 0 old file set(s) deleted, 0 stale set member(s) removed", p.stdout)
        self.assertEqual(self.snapshot(), before)

        # B once its session is over
        self.redis.call("DEL", "devex:activeSession:" + self.B)
        self.redis.call("HSET", "devex:replMeta:" + self.B, "state", "stopped")
        p = self.cli("owners", "migrate", "--map", self.map, "--apply")
        self.assertIn("1 moved", p.stdout)
        self.assertEqual(self.members("gh_583231"), [self.A, self.B])
        self.assertEqual(self.redis.call("EXISTS", "devex:userRepls:octocat"), 0)

        # an interrupted run (moved, old files not yet deleted) is finished by the next
        old = "repl/octocat/%s/" % self.A
        self.put_files(old, {"stale.txt": b"x"})
        self.redis.call("HSET", "devex:replMeta:" + self.A, "legacy_prefix", old)
        p = self.cli("owners", "migrate", "--map", self.map)
        self.assertIn("would delete the old files of %s \"r a\" (moved to gh_583231): 1 file(s)" % self.A, p.stdout)
        self.assertTrue(os.path.exists(os.path.join(self.store_dir, old, "stale.txt")))
        self.cli("owners", "migrate", "--map", self.map, "--apply")
        self.assertFalse(os.path.exists(os.path.join(self.store_dir, old)))
        self.assertNotIn("legacy_prefix", self.meta(self.A))
        self.assertEqual(len(harness.tree(os.path.join(self.store_dir, "repl", "gh_583231", self.A))), 4)

    def test_suggest(self):
        # octocat: one account, older than the REPLs; carol: two accounts; dave: an account made after his REPL
        self.session("octocat", "github:583231", "OctoCat", "2011-01-25T18:44:36Z")
        self.session("gh_583231", "github:583231", "OctoCat", "2011-01-25T18:44:36Z")  # a later sign-in
        self.session("carol", "github:11", "carol", "2010-01-01T00:00:00Z")
        self.session("gh_12", "github:12", "Carol", "2012-01-01T00:00:00Z")
        self.session("gh_13", "github:13", "Dave", "2030-01-01T00:00:00Z")
        self.session("mock:johndoe", "mock:johndoe", "JohnDoe", None)
        before = self.snapshot()
        out = self.cli("owners", "suggest").stdout
        lines = [x for x in out.splitlines() if x and not x.startswith("#")]
        self.assertEqual(sorted(lines), ["mock:johndoe mock:johndoe", "octocat github:583231"])
        self.assertIn("# carol: 1 REPL(s)", out)
        self.assertIn("claimed by 2 accounts: github:11", out)
        self.assertIn("which did not exist yet when %s was created" % self.F, out)
        self.assertIn("# mock:johndoe/%s: 1 REPL(s)" % self.C, out)
        self.assertIn("no sign-in seen", out)
        self.assertEqual(self.snapshot(), before)
        # its lines are a map migrate takes
        p = self.cli("owners", "migrate", "--map", self.write_map(out))
        self.assertIn("would 2 moved", p.stdout)


if __name__ == "__main__":
    harness.main()
