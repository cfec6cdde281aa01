#!/usr/bin/env python3
"""The policy schema (lua/policy/schema.lua, issue #17 section 7): a policy
file with an unknown nested setting, a value of the wrong type, or a typo
inside a limits rule is refused by `devexd --check` with the setting named
(and the nearest known one suggested); maps the operator fills (templates,
labels) and `false` for a rule stay accepted; a running devexd given such a
file on SIGHUP keeps its policy."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd, RedisServer  # noqa: E402

DEV_CONF = os.path.join(harness.SOURCE_DIR, "etc", "devexd.dev.conf.lua")


class PolicySchemaTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="devexd-schema-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def check(self, policy_text):
        policy = os.path.join(self.tmp, "policy.lua")
        with open(policy, "w") as f:
            f.write(policy_text)
        conf = os.path.join(self.tmp, "devexd.conf.lua")
        with open(conf, "w") as f:
            f.write("local c = dofile(%s)\nc.policy = { file = %s }\nreturn c\n" % (json.dumps(DEV_CONF), json.dumps(policy)))
        env = dict(os.environ, DEVEXD_DATA=os.path.join(self.tmp, "data"), ENVIRONMENT="development")
        p = subprocess.run([harness.DEVEXD_BIN, "--check", "-c", conf, "-L", harness.LUA_DIR], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
        self.assertFalse(harness.sanitizer_errors(p.stderr), p.stderr)
        return p

    def refused(self, policy_text, *needles):
        p = self.check(policy_text)
        self.assertNotEqual(p.returncode, 0, p.stdout)
        for n in needles:
            self.assertIn(n, p.stderr)
        return p.stderr

    def test_typo_in_a_section_is_refused_with_a_suggestion(self):
        self.refused("return { cleanup = { idle_limt = 600 } }\n",
                     "unknown setting cleanup.idle_limt", "did you mean cleanup.idle_limit?")

    def test_unknown_setting_far_from_any_lists_the_known_ones(self):
        err = self.refused("return { quota = { bananas = 3 } }\n", "unknown setting quota.bananas", "known:")
        self.assertIn("repls_per_user", err)

    def test_wrong_type_is_refused(self):
        self.refused("return { cleanup = { idle_limit = '600' } }\n", "cleanup.idle_limit must be a number, got a string")
        self.refused("return { naming = { new_id = 'x' } }\n", "naming.new_id must be a function")

    def test_limits_rules_are_checked_one_level_down(self):
        self.refused("return { limits = { signin = { limt = 3, window = 60 } } }\n",
                     "unknown setting limits.signin.limt", "did you mean limits.signin.limit?")

    def test_the_removed_cleanup_start_timeout_is_refused(self):
        self.refused("return { cleanup = { start_timeout = 30 } }\n", "unknown setting cleanup.start_timeout")

    def test_what_operators_may_set_is_accepted(self):
        p = self.check("return {\n"
                       "  cleanup = { idle_limit = 600, warning_lead = 60, keepalive_max = 2,\n"
                       "              counts_as_activity = function(s) return s.kind ~= 'http' end },\n"
                       "  limits = { signin = false, ping = { limit = 5, window = 10, fail_open = true } },\n"
                       "  workload = { shared_watch = false, start_timeout = 300 },\n"
                       "  templates = { catalogue = { rust = { image = 'runner-rust', port = 8081,\n"
                       "    local_command = { 'sh', '-c', 'true' } } } },\n"
                       "  messages = { quota = 'You have %s of %s.' },\n"
                       "}\n")
        self.assertEqual(p.returncode, 0, p.stderr)

    def test_sighup_with_a_typo_keeps_the_running_policy(self):
        policy = os.path.join(self.tmp, "live.lua")
        with open(policy, "w") as f:
            f.write("return { cleanup = { idle_limit = 600 } }\n")
        with RedisServer() as redis:
            conf = ('local c = dofile(%s)\n'
                    'c.server.listen = { { host = "127.0.0.1", port = @PORT@ } }\n'
                    'c.public_url = "http://localhost:@PORT@"\n'
                    'c.policy = { file = %s }\n'
                    'return c\n') % (json.dumps(DEV_CONF), json.dumps(policy))
            env = {"DEVEXD_DATA": os.path.join(self.tmp, "data"), "REDIS_URL": redis.url(), "ENVIRONMENT": "development"}
            with Devexd(app=None, threads=1, config_text=conf, env=env) as d:
                with open(policy, "w") as f:
                    f.write("return { cleanup = { idle_limt = 60 } }\n")
                mark = d.mark()
                d.signal(signal.SIGHUP)
                e = d.wait_log(lambda e: "idle_limt" in json.dumps(e), since=mark, what="the refused reload")
                self.assertIn("unknown setting cleanup.idle_limt", json.dumps(e))
                self.assertEqual(d.request("GET", "/healthz").status, 200)


if __name__ == "__main__":
    unittest.main(verbosity=2)
