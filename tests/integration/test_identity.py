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
"""

import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd, RedisServer  # noqa: E402
from fakes.github_fake import GitHubFake  # noqa: E402
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
            "environment": "production",
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
        self.gh.user["login"] = login
        self.gh.user["id"] = uid
        b = Browser(self.d)
        r = b.get("/auth/github/login")
        self.assertEqual(r.status, 302, r.body)
        status, headers, body = http_get(r.header("Location"))
        self.assertIn(status, (302, 303), body)
        r = b.get(local_path(headers["Location"]))
        self.assertEqual(r.header("Location"), FRONTEND + "/dashboard")
        return b

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
        r = alice.get("/repl/%s/" % rid)  # the runner gateway on devexd's host
        self.assertEqual(r.status, 200, r.body)
        self.assertIn(b"Hello from your Python REPL", r.body)

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
        r = renamed.get("/repl/%s/" % rid)
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



if __name__ == "__main__":
    harness.main()
