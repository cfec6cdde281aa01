"""The command line and configuration checks: --check with good and bad
configs (unknown setting, malformed environment value, Lua syntax error in the
app), --version, --help and invalid --threads."""

import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SHIPPED_CONF = os.path.join(harness.SOURCE_DIR, "etc", "devexd.conf.lua")

BROKEN_APP = """-- brokenapp: a syntax error on line 4
local app = require("devex.app").new()
require("routes.health")(app)
app:get("/x", function() return 200, { ok = } end) -- SYNTAX_ERROR_LINE
return app
"""


def clean_env(**extra):
    """A minimal environment: the shipped config reads many variables, and the
    test must not depend on the caller's (sanitizer options are kept)."""
    env = {k: v for k, v in os.environ.items()
           if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR") or k.endswith("SAN_OPTIONS")}
    env.update(extra)
    return env


class ConfigTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="devexd-config-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.app_dir = os.path.join(self.tmp, "apps")
        shutil.copytree(harness.APPS_DIR, self.app_dir)

    def write(self, name, text):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def conf(self, name="devexd.conf.lua", server_extra=None, app="testapp", text_after=None):
        server = {"listen": [{"host": "127.0.0.1", "port": harness.free_port()}], "max_body": 4096}
        server.update(server_extra or {})
        conf = {"server": server, "lua": {"path": [self.app_dir], "app": app}}
        return self.write(name, "return " + harness.to_lua(conf) + "\n")

    def devexd(self, *args, env=None, timeout=20):
        p = subprocess.run([harness.DEVEXD_BIN] + list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=timeout,
                           env=env if env is not None else clean_env())
        san = harness.sanitizer_errors(p.stderr)
        self.assertFalse(san, "sanitizer errors:\n" + p.stderr)
        return p

    def check(self, conf, env=None):
        return self.devexd("--check", "-c", conf, "-L", harness.LUA_DIR, env=env)

    # ---- --check ----

    def test_check_good_config(self):
        p = self.check(self.conf())
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("OK", p.stdout)

    def test_check_shipped_config_clean_env(self):
        # production by default, so an http (or missing) PUBLIC_URL is refused
        # unless plain HTTP is asked for explicitly
        for env in ({}, {"PUBLIC_URL": "http://devex.example.com"}):
            p = self.check(SHIPPED_CONF, env=clean_env(**env))
            self.assertNotEqual(p.returncode, 0, env)
            self.assertIn("environment is production but public_url is", p.stderr)
            self.assertIn("DEVEXD_ALLOW_HTTP=1", p.stderr)
        for env in ({"PUBLIC_URL": "https://devex.example.com"}, {"DEVEXD_ALLOW_HTTP": "1"},
                    {"ENVIRONMENT": "development"}):
            p = self.check(SHIPPED_CONF, env=clean_env(**env))
            self.assertEqual(p.returncode, 0, "%r: %s" % (env, p.stderr))
        p = self.check(SHIPPED_CONF, env=clean_env(DEVEXD_ALLOW_HTTP="maybe"))
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("DEVEXD_ALLOW_HTTP", p.stderr)

    def test_check_trusted_proxies(self):
        # the shipped app (it loads the rate limiter, which parses them)
        def conf(proxies, header=None):
            server = {"listen": [{"host": "127.0.0.1", "port": harness.free_port()}], "trusted_proxies": proxies}
            if header is not None:
                server["client_ip_header"] = header
            return self.write("proxies.conf.lua", "return " + harness.to_lua({"server": server}) + "\n")
        p = self.check(conf(["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::1"]))
        self.assertEqual(p.returncode, 0, p.stderr)
        for bad in ("10.0.0.0/33", "300.1.2.3", "example.com", "10.0.0.0/", "2001:db8:::1", "1:2:3:4:5:6:7:8:9"):
            p = self.check(conf(["127.0.0.1", bad]))
            self.assertNotEqual(p.returncode, 0, bad)
            self.assertIn("server.trusted_proxies[2]", p.stderr, bad)
        p = self.check(conf(["127.0.0.1"], header="X-Forwarded-For: x"))
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("server.client_ip_header", p.stderr)

    def test_check_unknown_setting(self):
        conf = self.write("listn.conf.lua", """return {
  server = { listn = { { host = "127.0.0.1", port = 8080 } } },
}
""")
        p = self.check(conf)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("server.listn", p.stderr)
        self.assertRegex(p.stderr, r"server\.listn: unknown")

    def test_check_malformed_settings_named(self):
        cases = [
            ({"max_body": "big"}, "server.max_body"),
            ({"listen": [{"host": "127.0.0.1", "port": 70000}]}, r"server\.listen\[1\]\.port"),
            # a listener is a port or a Unix socket (absolute), not both, not neither
            ({"listen": [{"host": "127.0.0.1"}]}, r"server\.listen\[1\]: needs either port or socket"),
            ({"listen": [{"port": 8080, "socket": "/tmp/x.sock"}]}, r"server\.listen\[1\]: needs either port or socket"),
            ({"listen": [{"socket": "rel.sock"}]}, r"server\.listen\[1\]\.socket: must be an absolute path"),
            ({"listen": [{"socket": "/tmp/x.sock", "only": "api/"}]}, r"server\.listen\[1\]\.only"),
            ({"log_level": "loud"}, "server.log_level"),
            ({"access_log": "yes"}, "server.access_log"),
            ({"request_id_header": "sometimes"}, "server.request_id_header"),
        ]
        for extra, name in cases:
            p = self.check(self.conf(server_extra=extra))
            self.assertNotEqual(p.returncode, 0, extra)
            self.assertRegex(p.stderr, name, extra)
        p = self.check(self.write("top.conf.lua", "return { serverr = {} }\n"))
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("serverr", p.stderr)

    def test_check_bad_env_port(self):
        for value in ("abc", "70000", "80x"):
            p = self.check(SHIPPED_CONF, env=clean_env(PORT=value, PUBLIC_URL="https://devex.example.com"))
            self.assertNotEqual(p.returncode, 0, "PORT=%s accepted" % value)
            self.assertIn("PORT", p.stderr)
            self.assertIn(value, p.stderr)
        # several bad variables are all named at once
        p = self.check(SHIPPED_CONF, env=clean_env(PORT="abc", LOG_LEVEL="loud", ACCESS_LOG="maybe",
                                                   DEVEXD_REQUEST_ID_HEADER="never"))
        self.assertNotEqual(p.returncode, 0)
        for name in ("PORT", "LOG_LEVEL", "ACCESS_LOG", "DEVEXD_REQUEST_ID_HEADER"):
            self.assertIn(name, p.stderr)

    def test_start_with_bad_env_port_fails(self):
        # not only --check: starting refuses it too, before listening
        p = self.devexd("-c", SHIPPED_CONF, "-L", harness.LUA_DIR, "-t", "1", env=clean_env(PORT="abc"))
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("PORT", p.stderr)

    def test_check_app_syntax_error(self):
        with open(os.path.join(self.app_dir, "brokenapp.lua"), "w") as f:
            f.write(BROKEN_APP)
        line = next(i for i, s in enumerate(BROKEN_APP.splitlines(), 1) if "SYNTAX_ERROR_LINE" in s)
        conf = self.conf(app="brokenapp")
        p = self.check(conf)
        self.assertNotEqual(p.returncode, 0)
        self.assertRegex(p.stderr, r"brokenapp\.lua:%d:" % line)
        # starting with it fails the same way
        p = self.devexd("-c", conf, "-L", harness.LUA_DIR, "-t", "1")
        self.assertNotEqual(p.returncode, 0)
        self.assertRegex(p.stderr, r"brokenapp\.lua:%d:" % line)

    def test_check_missing_app_module(self):
        p = self.check(self.conf(app="no_such_app_module"))
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("no_such_app_module", p.stderr)

    def test_check_config_syntax_error(self):
        conf = self.write("syntax.conf.lua", "return {\n  server = { max_body = },\n}\n")
        p = self.check(conf)
        self.assertNotEqual(p.returncode, 0)
        self.assertRegex(p.stderr, r"syntax\.conf\.lua:2:")

    def test_check_missing_config_file(self):
        missing = os.path.join(self.tmp, "nope.conf.lua")
        p = self.check(missing)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("nope.conf.lua", p.stderr)

    # ---- command line ----

    def test_version(self):
        for flag in ("--version", "-v"):
            p = self.devexd(flag)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertRegex(p.stdout.strip(), r"^devexd \d+\.\d+\.\d+\S*$")

    def test_help(self):
        for flag in ("--help", "-h"):
            p = self.devexd(flag)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn("Usage", p.stdout)
            for opt in ("--config", "--threads", "--check", "--version"):
                self.assertIn(opt, p.stdout)

    def test_threads_rejected(self):
        conf = self.conf()
        for value in ("0", "-1", "abc", "257", ""):
            p = self.devexd("--check", "-c", conf, "-L", harness.LUA_DIR, "--threads", value)
            self.assertNotEqual(p.returncode, 0, "--threads %r accepted" % value)
            self.assertIn("threads", p.stderr)
        p = self.devexd("--check", "-c", conf, "-L", harness.LUA_DIR, "--threads", "2")
        self.assertEqual(p.returncode, 0, p.stderr)

    def test_unknown_option_and_argument(self):
        p = self.devexd("--no-such-option")
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("Usage", p.stderr)
        p = self.devexd("-c", self.conf(), "-L", harness.LUA_DIR, "stray")
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("stray", p.stderr)


if __name__ == "__main__":
    harness.main()
