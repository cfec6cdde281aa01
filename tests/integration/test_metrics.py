"""GET /metrics (lua/routes/metrics.lua, src/metrics.c) with the shipped app,
a real redis-server and the fs storage: the exposition passes `promtool check
metrics`, request counts move by route *pattern* and status, REPL states are
read from Redis at scrape time, Redis commands are counted, and a client
address outside `metrics.allow` gets the router's 404."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd, RedisServer  # noqa: E402

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text):
    """{(name, frozenset(labels.items())): value} of every sample."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, "not a sample line: %r" % line
        labels = frozenset(LABEL.findall(m.group(3) or ""))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


class MetricsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="devexd-metrics-")
        cls.redis = RedisServer().__enter__()
        conf = {
            "environment": "development",
            "redis": {"url": cls.redis.url(), "timeout": 2},
            "storage": {"driver": "fs", "dir": cls.tmp},
            "runtime": {"driver": "local", "dir": os.path.join(cls.tmp, "run")},
            "dev_login": {"enabled": True},
        }
        cls.d = Devexd(app=None, threads=3, config=conf).__enter__()

    @classmethod
    def tearDownClass(cls):
        harness.stop_class_servers(cls, "d", "redis")

    def scrape(self):
        r = self.d.get("/metrics")
        self.assertEqual(r.status, 200, r.body)
        self.assertTrue(r.header("Content-Type").startswith("text/plain; version=0.0.4"), r.header("Content-Type"))
        return r.body.decode("utf-8")

    def test_promtool_accepts_the_exposition(self):
        promtool = shutil.which("promtool")
        if promtool is None:
            raise AssertionError("promtool is not installed (Debian package prometheus; scripts/deps.sh --test installs it)")
        # make every kind of series appear: requests, 404s, a label needing escapes
        self.d.get("/healthz")
        self.d.get("/no/such/path")
        self.d.request("POST", "/healthz")
        text = self.scrape()
        p = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        self.assertEqual(p.returncode, 0, p.stdout + "\n---\n" + text)
        for family, kind in [("devex_http_requests_total", "counter"),
                             ("devex_http_request_duration_seconds", "histogram"),
                             ("devex_repl_sessions", "gauge"),
                             ("devex_repl_session_start_duration_seconds", "histogram"),
                             ("devex_k8s_requests_total", "counter"), ("devex_s3_requests_total", "counter"),
                             ("devex_redis_commands_total", "counter"), ("devex_sweep_runs_total", "counter"),
                             ("devex_sweep_actions_total", "counter"), ("devex_lua_errors_total", "counter"),
                             ("devex_reloads_total", "counter")]:
            self.assertIn("# TYPE %s %s\n" % (family, kind), text)
            self.assertIn("# HELP %s " % family, text)

    def test_requests_counted_by_route_pattern_and_status(self):
        before = parse(self.scrape())
        for _ in range(3):
            self.assertEqual(self.d.get("/healthz").status, 200)
        # a parameterised route: labelled by its pattern, not the raw path
        self.assertEqual(self.d.get("/api/repl/session/repl-abc").status, 401)
        self.assertEqual(self.d.get("/api/repl/session/repl-def").status, 401)
        self.assertEqual(self.d.get("/nothing-here/x").status, 404)
        self.assertEqual(self.d.request("POST", "/healthz").status, 405)
        after = parse(self.scrape())

        def delta(**labels):
            return (value(after, "devex_http_requests_total", **labels)
                    - value(before, "devex_http_requests_total", **labels))
        self.assertEqual(delta(route="/healthz", method="GET", status="200"), 3)
        self.assertEqual(delta(route="/api/repl/session/:id", method="GET", status="401"), 2)
        self.assertEqual(delta(route="unmatched", method="GET", status="404"), 1)
        self.assertEqual(delta(route="unmatched", method="POST", status="405"), 1)
        # the previous scrape itself was counted too
        self.assertGreaterEqual(delta(route="/metrics", method="GET", status="200"), 1)
        text = self.scrape()
        self.assertNotIn("repl-abc", text)
        count = (value(after, "devex_http_request_duration_seconds_count", route="/healthz", method="GET")
                 - value(before, "devex_http_request_duration_seconds_count", route="/healthz", method="GET"))
        self.assertEqual(count, 3)
        inf = value(after, "devex_http_request_duration_seconds_bucket", route="/healthz", method="GET", le="+Inf")
        self.assertEqual(inf, value(after, "devex_http_request_duration_seconds_count", route="/healthz",
                                    method="GET"))

    def test_unknown_method_is_bounded(self):
        r = self.d.request("BREW", "/healthz")
        self.assertIn(r.status, (400, 404, 405, 501))
        text = self.scrape()
        self.assertNotIn('method="BREW"', text)

    def test_h2o_generated_responses_are_counted(self):
        before = parse(self.scrape())
        # over max_body (4096): H2O answers 413 before devexd's handler runs
        r = self.d.request("POST", "/auth/dev/login", body=b"x" * 10000,
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(r.status, 413)
        after = parse(self.scrape())
        self.assertEqual(value(after, "devex_http_requests_total", route="unmatched", method="POST", status="413")
                         - value(before, "devex_http_requests_total", route="unmatched", method="POST",
                                 status="413"), 1)

    def test_repl_states_read_from_redis_and_redis_commands_counted(self):
        self.redis.call("FLUSHALL")
        self.redis.call("HSET", "devex:replMeta:repl-1", "id", "repl-1", "state", "running")
        self.redis.call("HSET", "devex:replMeta:repl-2", "id", "repl-2", "state", "running")
        self.redis.call("HSET", "devex:replMeta:repl-3", "id", "repl-3", "state", "stopped")
        self.redis.call("HSET", "devex:replMeta:repl-4", "id", "repl-4", "state", "weird")
        s = parse(self.scrape())
        self.assertEqual(value(s, "devex_repl_sessions", state="running"), 2)
        self.assertEqual(value(s, "devex_repl_sessions", state="stopped"), 1)
        self.assertEqual(value(s, "devex_repl_sessions", state="created"), 0)
        self.assertEqual(value(s, "devex_repl_sessions", state="other"), 1)
        self.redis.call("DEL", "devex:replMeta:repl-1")
        s2 = parse(self.scrape())
        self.assertEqual(value(s2, "devex_repl_sessions", state="running"), 1)
        # the scrape itself ran SCAN and EVAL on Redis
        self.assertGreater(value(s2, "devex_redis_commands_total", command="SCAN"),
                           value(s, "devex_redis_commands_total", command="SCAN"))
        self.assertGreaterEqual(value(s2, "devex_redis_commands_total", command="EVAL"), 1)
        self.assertGreater(value(s2, "devex_redis_command_duration_seconds_count", command="SCAN"), 0)
        self.redis.call("FLUSHALL")

    def test_signed_in_routes_counted(self):
        r = self.d.request("POST", "/auth/dev/login", body=b"user=ada",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(r.status, 302, r.body)
        cookie = r.header("Set-Cookie").split(";")[0]
        r = self.d.get("/auth/me", headers={"Cookie": cookie})
        self.assertEqual(r.status, 200, r.body)
        # a request is counted when H2O disposes of it, which may be just after
        # the client has read the whole answer: scrape until both are there
        def counted():
            s = parse(self.scrape())
            me = value(s, "devex_http_requests_total", route="/auth/me", method="GET", status="200")
            login = value(s, "devex_http_requests_total", route="/auth/dev/login", method="POST", status="302")
            return (me or 0) >= 1 and (login or 0) >= 1
        harness.poll(counted, "both signed-in requests counted in /metrics", timeout=10)


class MetricsAccessTest(unittest.TestCase):
    def test_clients_outside_the_allowlist_get_404(self):
        with Devexd(app=None, config={"metrics": {"allow": ["10.9.8.7"]}}) as d:
            r = d.get("/metrics")
            self.assertEqual(r.status, 404)
            self.assertEqual(r.json(), {"error": "not found"})
            self.assertNotIn(b"devex_", r.body)

    def test_bad_allow_setting_refuses_to_start(self):
        with tempfile.NamedTemporaryFile("w", suffix=".lua") as f:
            f.write('return { metrics = { allow = { 127 } } }\n')
            f.flush()
            p = subprocess.run([harness.DEVEXD_BIN, "--check", "-c", f.name, "-L", harness.LUA_DIR], text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        self.assertNotEqual(p.returncode, 0, p.stdout)
        self.assertIn("metrics.allow", p.stdout)


if __name__ == "__main__":
    harness.main()
