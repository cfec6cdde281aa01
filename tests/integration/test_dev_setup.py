"""Single-host mode with the shipped development configuration
(etc/devexd.dev.conf.lua): development sign-in by name, the built-in
dashboard, create, start (the runner is a child process), the runner's page
through /repl/<id>/, stop with the files saved, and the development sign-in
refused in a production configuration."""

import json
import os
import subprocess
import sys
import tempfile
import shutil
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd, RedisServer  # noqa: E402
from test_auth import Browser  # noqa: E402

DEV_CONF = os.path.join(harness.SOURCE_DIR, "etc", "devexd.dev.conf.lua")
JSON = {"Content-Type": "application/json"}


class DevSetupTest(unittest.TestCase):
    def test_single_host_flow(self):
        tmp = tempfile.mkdtemp(prefix="devexd-dev-")
        try:
            with RedisServer() as redis:
                conf = ('local c = dofile(%s)\n'
                        'c.server.listen = { { host = "127.0.0.1", port = @PORT@ } }\n'
                        'c.public_url = "http://localhost:@PORT@"\n'
                        'c.frontend_url = c.public_url\n'
                        'return c\n') % json.dumps(DEV_CONF)
                env = {"DEVEXD_DATA": tmp, "REDIS_URL": redis.url(), "ENVIRONMENT": "development"}
                with Devexd(app=None, threads=2, config_text=conf, env=env) as d:
                    d.sync_templates()
                    b = Browser(d)
                    self.assertEqual(b.get("/").header("Location"), "/dashboard")
                    r = b.get("/dashboard")
                    self.assertEqual(r.status, 200)
                    self.assertIn(b"/api/repl", r.body)
                    self.assertEqual(b.get("/auth/dev/login").status, 200)
                    r = b.request("POST", "/auth/dev/login", body="user=Ada",
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})
                    self.assertEqual(r.status, 302, r.body)
                    self.assertEqual(r.header("Location"), "http://localhost:%d/dashboard" % d.port)
                    self.assertEqual(b.get("/auth/me").json()["login"], "Ada")
                    form = {"Content-Type": "application/x-www-form-urlencoded"}
                    # signed in now: a form post without Origin is refused (CSRF), with ours it is checked
                    self.assertEqual(b.request("POST", "/auth/dev/login", body="user=x", headers=form).status, 403)
                    r = b.request("POST", "/auth/dev/login", body="user=../x",
                                  headers=dict(form, Origin="http://localhost:%d" % d.port))
                    self.assertEqual(r.status, 400)
                    r = b.request("POST", "/api/repl/new", headers=JSON,
                                  body=json.dumps({"template": "python", "replName": "first"}))
                    self.assertEqual(r.status, 201, r.body)
                    rid = r.json()["id"]
                    r = b.get("/api/repl/session/" + rid)
                    self.assertEqual(r.status, 200, r.body)
                    self.assertEqual(r.json()["url"], "http://localhost:%d/repl/%s/" % (d.port, rid))
                    r = b.get("/repl/%s/" % rid)
                    self.assertEqual(r.status, 200, r.body)
                    self.assertIn(b"Hello from your Python REPL", r.body)
                    with open(os.path.join(tmp, "workspaces", rid, "saved.txt"), "w") as f:
                        f.write("kept\n")
                    r = b.request("DELETE", "/api/repl/session/" + rid, headers=JSON)
                    self.assertEqual(r.status, 200, r.body)
                    with open(os.path.join(tmp, "storage", "repl", "ada", rid, "saved.txt")) as f:
                        self.assertEqual(f.read(), "kept\n")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def test_dev_login_refused_in_production(self):
        for env in ({"ENVIRONMENT": "production"}, {"PUBLIC_URL": "https://devex.example.com"}):
            p = subprocess.run([harness.DEVEXD_BIN, "--check", "-c", DEV_CONF, "-L", harness.LUA_DIR],
                               env=dict(os.environ, **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, timeout=30)
            self.assertNotEqual(p.returncode, 0, env)
            self.assertIn("dev_login is enabled", p.stderr)
            self.assertIn("refusing to start", p.stderr)


if __name__ == "__main__":
    harness.main()
