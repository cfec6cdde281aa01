"""devex.redis against a real redis-server (Debian's, started by the test on a
free loopback port): every reply type, pipelines, scripts with the NOSCRIPT
fallback, AUTH and SELECT from the URL, unix sockets, invalid URLs, command
timeouts, Redis down at start, and Redis killed and restarted under load.

The app is tests/integration/apps/redisapp.lua. Nothing here asserts on
wall-clock durations: waits have generous deadlines that only bound a failure.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import poll  # noqa: E402

URL_ENV = "DEVEX_TEST_REDIS_URL"


def post(d, path, body, timeout=10):
    r = d.request("POST", path, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"},
                  timeout=timeout)
    return r.status, r.json()


def call(d, *args, **kw):
    """POST /call {args=...}: returns (status, json body)."""
    body = dict(kw)
    body["args"] = list(args)
    return post(d, "/call", body)


def commandstats(rs):
    """{command: {calls:, failed_calls:, rejected_calls:, ...}} from INFO commandstats."""
    out = {}
    for line in rs.call("INFO", "commandstats").decode().splitlines():
        if not line.startswith("cmdstat_"):
            continue
        name, _, fields = line[len("cmdstat_"):].partition(":")
        out[name] = {}
        for kv in fields.split(","):
            k, _, v = kv.partition("=")
            out[name][k] = float(v) if "." in v else int(v)
    return out


def calls(stats, name, field="calls"):
    return stats.get(name, {}).get(field, 0)


class RedisReplyTest(unittest.TestCase):
    """One redis-server and one devexd for the tests that do not stop Redis."""

    @classmethod
    def setUpClass(cls):
        cls.rs = harness.RedisServer()
        cls.rs.__enter__()
        try:
            cls.d = harness.Devexd(app="redisapp", env={URL_ENV: cls.rs.url()}, max_body=1 << 20)
            cls.d.__enter__()
        except BaseException:
            cls.rs.__exit__(None, None, None)
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            cls.d.__exit__(None, None, None)  # SIGTERM, exit 0, no sanitizer report
        finally:
            cls.rs.__exit__(None, None, None)

    def setUp(self):
        self.rs.call("FLUSHALL")

    # ---- reply types ----

    def test_status_reply(self):
        st, b = call(self.d, "SET", "k", "v")
        self.assertEqual(st, 200, b)
        self.assertEqual(b["reply"], "OK")
        self.assertEqual(b["seen"]["lua_type"], "string")
        st, b = call(self.d, "PING")
        self.assertEqual((st, b["reply"]), (200, "PONG"))
        self.assertEqual(self.rs.call("GET", "k"), b"v")

    def test_error_reply(self):
        self.rs.call("SET", "k", "not a number")
        st, b = call(self.d, "INCR", "k")
        self.assertEqual(st, 502, b)
        self.assertEqual(b["code"], "redis")
        self.assertTrue(b["message"].startswith("ERR value is not an integer"), b)
        self.assertEqual(b["error"], "redis: " + b["message"])  # tostring(err)
        st, b = call(self.d, "NOSUCHCOMMAND", "x")
        self.assertEqual((st, b["code"]), (502, "redis"))
        self.assertIn("unknown command", b["message"])
        self.rs.call("RPUSH", "list", "a")
        st, b = call(self.d, "GET", "list")
        self.assertEqual((st, b["code"]), (502, "redis"))
        self.assertTrue(b["message"].startswith("WRONGTYPE"), b)
        # the connection is fine after error replies
        self.assertEqual(call(self.d, "PING")[1]["reply"], "PONG")

    def test_integer_reply(self):
        st, b = call(self.d, "INCR", "n")
        self.assertEqual((st, b["reply"]), (200, 1))
        self.assertEqual(b["seen"], {"lua_type": "number", "math_type": "integer", "is_null": False})
        st, b = call(self.d, "INCRBY", "n", -5)
        self.assertEqual(b["reply"], -4)
        self.rs.call("SET", "big", "9223372036854775806")
        st, b = call(self.d, "INCR", "big")
        self.assertEqual(b["reply"], 9223372036854775807)
        self.assertEqual(b["seen"]["math_type"], "integer")
        st, b = call(self.d, "EXISTS", "nope")
        self.assertEqual(b["reply"], 0)

    def test_bulk_string_reply(self):
        self.rs.call("SET", "s", "hello")
        st, b = call(self.d, "GET", "s")
        self.assertEqual((st, b["reply"]), (200, "hello"))
        self.assertEqual(b["seen"], {"lua_type": "string", "len": 5, "is_null": False})
        # binary-safe both ways: an argument and a reply with a NUL byte
        st, b = call(self.d, "SET", "bin", "a\u0000b")
        self.assertEqual(st, 200)
        self.assertEqual(self.rs.call("GET", "bin"), b"a\x00b")
        st, b = call(self.d, "GET", "bin")
        self.assertEqual((b["reply"], b["seen"]["len"]), ("a\u0000b", 3))
        # UTF-8 and an empty string (which is not nil)
        self.rs.call("SET", "u", "h\u00e9llo \u2603")
        self.assertEqual(call(self.d, "GET", "u")[1]["reply"], "h\u00e9llo \u2603")
        self.rs.call("SET", "empty", "")
        st, b = call(self.d, "GET", "empty")
        self.assertEqual((b["reply"], b["seen"]["is_null"], b["seen"]["len"]), ("", False, 0))
        # numbers as arguments are sent as their decimal text
        call(self.d, "SET", "num", 42)
        self.assertEqual(self.rs.call("GET", "num"), b"42")

    def test_nil_reply_is_null(self):
        st, b = call(self.d, "GET", "missing")
        self.assertEqual(st, 200, b)
        self.assertIsNone(b["reply"])  # JSON null
        self.assertTrue(b["seen"]["is_null"])  # redis.null in Lua
        self.assertEqual(b["seen"]["lua_type"], "userdata")
        st, b = call(self.d, "HGET", "nohash", "f")
        self.assertTrue(b["seen"]["is_null"])

    def test_array_reply(self):
        self.rs.call("RPUSH", "l", "a", "b", "c")
        st, b = call(self.d, "LRANGE", "l", 0, -1)
        self.assertEqual((st, b["reply"]), (200, ["a", "b", "c"]))
        self.assertEqual(b["seen"]["len"], 3)
        # nil elements keep their place as null
        self.rs.call("SET", "k1", "v1")
        self.rs.call("SET", "k3", "v3")
        st, b = call(self.d, "MGET", "k1", "k2", "k3")
        self.assertEqual(b["reply"], ["v1", None, "v3"])
        # integers inside arrays stay integers
        st, b = call(self.d, "EVAL", "return {1, 2, 3}", 0)
        self.assertEqual(b["reply"], [1, 2, 3])
        # an empty array is an empty Lua table (JSON cannot tell it from {}:
        # devex.redis does not mark it as an array)
        st, b = call(self.d, "LRANGE", "nolist", 0, -1)
        self.assertEqual(st, 200)
        self.assertEqual(b["seen"]["lua_type"], "table")
        self.assertEqual(b["seen"]["len"], 0)
        self.assertIn(b["reply"], ([], {}))

    def test_nested_array_reply(self):
        st, b = call(self.d, "EVAL", "return {1, {2, {'x', 'y'}, {}}, 'z'}", 0)
        self.assertEqual(st, 200, b)
        self.assertEqual(b["reply"][0], 1)
        self.assertEqual(b["reply"][1][:2], [2, ["x", "y"]])
        self.assertEqual(b["reply"][2], "z")
        # a real nested reply: XRANGE is [[id, [field, value, ...]], ...]
        self.rs.call("XADD", "s", "1-1", "f1", "v1", "f2", "v2")
        self.rs.call("XADD", "s", "2-1", "g", "w")
        st, b = call(self.d, "XRANGE", "s", "-", "+")
        self.assertEqual(b["reply"], [["1-1", ["f1", "v1", "f2", "v2"]], ["2-1", ["g", "w"]]])
        # an error reply nested in an array becomes an error table in its slot
        st, b = call(self.d, "EVAL", "return {1, redis.error_reply('MYERR nested'), 'after'}", 0)
        self.assertEqual(st, 200, b)
        self.assertEqual(b["reply"][0], 1)
        self.assertEqual(b["reply"][1], {"code": "redis", "message": "MYERR nested"})
        self.assertEqual(b["reply"][2], "after")
        # EXEC's array holds each queued command's reply, errors included
        st, b = post(self.d, "/pipeline", {"commands": [["MULTI"], ["SET", "t", "x"], ["INCR", "t"], ["GET", "t"],
                                                          ["EXEC"]]})
        self.assertEqual(st, 200, b)
        self.assertEqual(b["replies"][:4], ["OK", "QUEUED", "QUEUED", "QUEUED"])
        exec_reply = b["replies"][4]
        self.assertEqual(exec_reply[0], "OK")
        self.assertEqual(exec_reply[1]["code"], "redis")
        self.assertTrue(exec_reply[1]["message"].startswith("ERR value is not an integer"), exec_reply)
        self.assertEqual(exec_reply[2], "x")

    # ---- pipelines ----

    def test_pipeline_1000_commands(self):
        # 1,000 commands in one request body and one r:pipeline call: replies in order
        cmds = [["INCR", "pcount"] for _ in range(1000)]
        st, b = post(self.d, "/pipeline", {"commands": cmds})
        self.assertEqual(st, 200, b)
        self.assertEqual(b["n"], 1000)
        self.assertEqual(b["replies"], list(range(1, 1001)))
        self.assertEqual(b["errors"], [])
        self.assertEqual(self.rs.call("GET", "pcount"), b"1000")

    def test_pipeline_1000_mixed_with_errors(self):
        # built in Lua: i%4==1 SET pg:i i, ==2 GET pg:(i-1), ==3 INCR pg:(i-2), ==0 INCR on a non-number
        self.rs.call("SET", "notanumber:pg", "x")
        st, b = post(self.d, "/pipeline-generated", {"n": 1000, "prefix": "pg"})
        self.assertEqual(st, 200, b)
        self.assertEqual(b["n"], 1000)
        replies = b["replies"]
        self.assertEqual(len(replies), 1000)
        for i, v in enumerate(replies, 1):
            k = i % 4
            if k == 1:
                self.assertEqual(v, "OK", i)
            elif k == 2:
                self.assertEqual(v, str(i - 1), i)
            elif k == 3:
                self.assertEqual(v, i - 2 + 1, i)
            else:
                self.assertEqual(v["code"], "redis", i)
                self.assertTrue(v["message"].startswith("ERR value is not an integer"), v)
        self.assertEqual(self.rs.call("GET", "pg:997"), b"998")

    def test_pipeline_reply_kinds(self):
        cmds = [["SET", "x", "1"], ["INCR", "x"], ["HGET", "x", "f"], ["GET", "missing"], ["PING"],
                ["RPUSH", "pl", "a", "b"], ["LRANGE", "pl", 0, -1]]
        st, b = post(self.d, "/pipeline", {"commands": cmds})
        self.assertEqual(st, 200, b)
        self.assertEqual(b["errors"], [3])
        r = b["replies"]
        self.assertEqual(r[0], "OK")
        self.assertEqual(r[1], 2)
        self.assertEqual(r[2]["code"], "redis")
        self.assertTrue(r[2]["message"].startswith("WRONGTYPE"), r[2])
        self.assertIsNone(r[3])
        self.assertEqual(r[4:], ["PONG", 2, ["a", "b"]])

    def test_pipeline_bad_argument_raises(self):
        before = len([e for e in self.d.logs() if e.get("msg") == "lua error"])
        st, b = post(self.d, "/pipeline", {"commands": [["PING"], []]})
        self.assertEqual(st, 500, b)
        self.d.wait_log(lambda e: e.get("msg") == "lua error" and "non-empty list" in e.get("error", ""),
                        what="the pipeline argument error")
        self.assertGreater(len([e for e in self.d.logs() if e.get("msg") == "lua error"]), before)
        # nothing was sent: the next command's reply is its own
        self.assertEqual(call(self.d, "PING")[1]["reply"], "PONG")

    # ---- scripts ----

    def test_eval_noscript_fallback_then_evalsha(self):
        script = ("redis.call('SET', KEYS[1], ARGV[1]) "
                  "return {redis.call('GET', KEYS[1]), ARGV[2], #KEYS, #ARGV}")
        self.assertEqual(self.rs.call("SCRIPT", "FLUSH"), "OK")
        self.rs.call("CONFIG", "RESETSTAT")
        # 1st eval: EVALSHA -> NOSCRIPT -> EVAL (which loads the script)
        st, b = post(self.d, "/eval", {"script": script, "keys": ["sk"], "args": ["val1", "extra"]})
        self.assertEqual(st, 200, b)
        self.assertEqual(b["reply"], ["val1", "extra", 1, 2])
        s1 = commandstats(self.rs)
        self.assertEqual(calls(s1, "eval"), 1, s1)
        evalsha_attempts = calls(s1, "evalsha") + calls(s1, "evalsha", "rejected_calls")
        self.assertEqual(evalsha_attempts, 1, s1)  # the NOSCRIPT attempt
        self.assertEqual(self.rs.call("GET", "sk"), b"val1")
        # 2nd eval: EVALSHA succeeds, no EVAL
        st, b = post(self.d, "/eval", {"script": script, "keys": ["sk"], "args": ["val2", "x"]})
        self.assertEqual((st, b["reply"]), (200, ["val2", "x", 1, 2]))
        s2 = commandstats(self.rs)
        self.assertEqual(calls(s2, "eval"), 1, s2)
        self.assertEqual(calls(s2, "evalsha") - calls(s1, "evalsha"), 1, s2)
        self.assertEqual(calls(s2, "evalsha", "failed_calls"), calls(s1, "evalsha", "failed_calls"))
        self.assertEqual(calls(s2, "evalsha", "rejected_calls"), calls(s1, "evalsha", "rejected_calls"))
        # after another SCRIPT FLUSH the fallback works again
        self.rs.call("SCRIPT", "FLUSH")
        st, b = post(self.d, "/eval", {"script": script, "keys": ["sk"], "args": ["val3", "y"]})
        self.assertEqual((st, b["reply"]), (200, ["val3", "y", 1, 2]))
        self.assertEqual(calls(commandstats(self.rs), "eval"), 2)

    def test_eval_evalsha_seen_by_monitor(self):
        script = "return 'monitored ' .. ARGV[1]"
        sha = self.rs.call("SCRIPT", "LOAD", script).decode()
        self.rs.call("SCRIPT", "FLUSH")
        with self.rs.client() as mon:
            self.assertEqual(mon.call("MONITOR"), "OK")
            st, b = post(self.d, "/eval", {"script": script, "args": ["one"]})
            self.assertEqual((st, b["reply"]), (200, "monitored one"))
            st, b = post(self.d, "/eval", {"script": script, "args": ["two"]})
            self.assertEqual((st, b["reply"]), (200, "monitored two"))
            lines = []
            while sum(1 for x in lines if '"two"' in x) < 1:
                lines.append(mon.read())
        cmds = [x.split('"')[1].upper() for x in lines if '"' in x and ('"one"' in x or '"two"' in x)]
        # one: EVALSHA (NOSCRIPT), EVAL; two: EVALSHA only
        self.assertEqual(cmds, ["EVALSHA", "EVAL", "EVALSHA"], lines)
        self.assertTrue(any(sha in x for x in lines if '"two"' in x), lines)

    def test_eval_script_error(self):
        st, b = post(self.d, "/eval", {"script": "return redis.call('INCR', KEYS[1])", "keys": ["e"]})
        self.assertEqual((st, b["reply"]), (200, 1))
        self.rs.call("SET", "e", "text")
        st, b = post(self.d, "/eval", {"script": "return redis.call('INCR', KEYS[1])", "keys": ["e"]})
        self.assertEqual((st, b["code"]), (502, "redis"))
        self.assertIn("not an integer", b["message"])
        st, b = post(self.d, "/eval", {"script": "this is not lua"})
        self.assertEqual((st, b["code"]), (502, "redis"))
        self.assertIn("ERR", b["message"])

    # ---- URLs, timeouts, misuse ----

    def test_invalid_urls(self):
        cases = {
            "http://127.0.0.1:6379": "must start with redis://, rediss://, redis+sentinel:// or unix://",
            "127.0.0.1:6379": "must start with redis://, rediss://, redis+sentinel:// or unix://",
            # rediss:// (TLS, test_redis_tls.py) is read by the same rules
            "rediss://": "missing host",
            "rediss://127.0.0.1:99999": "invalid port",
            "redis://": "missing host",
            "redis://:6379": "missing host",
            "redis://127.0.0.1:0": "invalid port",
            "redis://127.0.0.1:65536": "invalid port",
            "redis://127.0.0.1:abc": "invalid port",
            "redis://127.0.0.1:6379/x": "invalid database number",
            "redis://127.0.0.1:6379/-1": "invalid database number",
            "redis://:%zz@127.0.0.1:6379": "invalid credentials",
            "redis://[::1": "invalid IPv6 host",
            "redis://[" + "a" * 300 + "]:6379": "invalid IPv6 host",
            "redis://[::1]x:6379": "invalid IPv6 host",
            # Sentinel (test_redis_sentinel.py): the sentinels, then /master[/db]
            "redis+sentinel://127.0.0.1:26379": "needs the master name",
            "redis+sentinel://127.0.0.1:26379/": "needs the master name",
            "redis+sentinel://127.0.0.1:26379/my master": "invalid master name",
            "redis+sentinel://127.0.0.1:26379/" + "m" * 200: "invalid master name",
            "redis+sentinel://127.0.0.1:26379/m/x": "invalid database number",
            "redis+sentinel://127.0.0.1:26379,/m": "missing host",
            "redis+sentinel://,127.0.0.1/m": "missing host",
            "redis+sentinel:///m": "missing host",
            "redis+sentinel://127.0.0.1:0/m": "invalid port",
            "redis+sentinel://" + ",".join(["127.0.0.1"] * 9) + "/m": "at most 8 sentinels",
            "redis+sentinel://:%zz@127.0.0.1/m": "invalid credentials",
            "rediss+sentinel://127.0.0.1:26379/m": "Sentinel over TLS (rediss+sentinel://) is not supported",
            "unix://": "invalid redis unix socket path",
            "unix://relative/path": "invalid redis unix socket path",
            "unix:///" + "p" * 300: "invalid redis unix socket path",
        }
        for url, want in cases.items():
            with self.subTest(url=url[:60]):
                r = self.d.get("/connect?url=" + urllib.parse.quote(url, safe=""))
                self.assertEqual(r.status, 400, r)
                b = r.json()
                self.assertEqual(b["code"], "invalid")
                self.assertIn(want, b["message"])
        # a valid URL to a port nobody listens on is not invalid: connect never blocks
        r = self.d.get("/connect?url=" + urllib.parse.quote("redis://127.0.0.1:%d/2" % harness.free_port(), safe=""))
        self.assertEqual(r.status, 200, r)
        # nor are sentinels nobody listens on (their failure is the connection's)
        url = "redis+sentinel://u:p@127.0.0.1:%d,[::1]:%d,localhost/m_1.x-y/3" % (harness.free_port(), harness.free_port())
        r = self.d.get("/connect?url=" + urllib.parse.quote(url, safe=""))
        self.assertEqual(r.status, 200, r)
        self.assertIn(r.json()["status"], ("down", "connecting"))

    def test_invalid_timeout_option_raises(self):
        st, b = call(self.d, "PING", timeout=-1)
        self.assertEqual(st, 500, b)
        self.d.wait_log(lambda e: e.get("msg") == "lua error" and "timeout must be between" in e.get("error", ""),
                        what="the timeout argument error")

    def test_status(self):
        self.assertEqual(call(self.d, "PING")[0], 200)
        st, b = post(self.d, "/status", {})
        self.assertEqual((st, b["status"]), (200, "ready"))
        self.assertNotIn("last_error", b)

    def test_yield_from_plain_coroutine_raises(self):
        r = self.d.get("/plain-coroutine")
        self.assertEqual(r.status, 500, r)
        self.assertEqual(r.json()["error"], "internal error")
        found = self.d.wait_log(lambda e: e.get("msg") == "lua error" and e.get("request_id") == r.json()["request_id"],
                                what="the lua error line")
        self.assertIn("redis:call: must be called from a request handler or a devex task, not from a plain coroutine",
                      found[0]["error"])

    def test_timeout_with_queued_command_on_one_connection(self):
        # Deterministic: DEBUG SLEEP and GET go over the same connection in
        # that order, so GET's reply cannot come before the sleep ends.
        self.rs.call("SET", "a", "A")
        self.rs.call("SET", "b", "B")
        st, b = post(self.d, "/queued-timeout", {"sleep": 1, "timeout": 0.2})
        self.assertEqual(st, 200, b)
        self.assertIsNone(b["first"])
        self.assertEqual(b["first_error"]["code"], "timeout", b)
        self.assertTrue(b["sleeper_ok"], b)
        self.assertEqual(b["slept"], "OK")
        self.assertEqual(b["after"], "B", b)  # not the late reply "A" of the timed-out GET
        self.assertIsNone(b["after_error"])
        self.assertTrue(b["same_connection"], b)

    def test_timeout_with_redis_cli_debug_sleep(self):
        self.rs.call("SET", "a", "A")
        self.rs.call("SET", "b", "B")
        st, b = call(self.d, "CLIENT", "ID")
        self.assertEqual(st, 200, b)
        client_id = b["reply"]
        sleeper = subprocess.Popen(["redis-cli", "-h", "127.0.0.1", "-p", str(self.rs.port), "DEBUG", "SLEEP", "2"],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            wait_busy(self.rs, sleeper)
            r = self.d.get("/get/a?timeout=0.5", timeout=10)
            self.assertEqual(r.status, 504, r)
            self.assertEqual(r.json()["code"], "timeout")
            self.assertEqual(r.json()["message"], "redis command timed out")
            out, _ = sleeper.communicate(timeout=30)
            self.assertEqual(out.strip(), b"OK")
        finally:
            if sleeper.poll() is None:
                sleeper.kill()
                sleeper.wait()
        # the connection still works, is the same one, and the late reply "A" was dropped
        st, b = call(self.d, "GET", "b")
        self.assertEqual((st, b["reply"]), (200, "B"))
        st, b = call(self.d, "CLIENT", "ID")
        self.assertEqual(b["reply"], client_id)
        r = self.d.get("/get/a?timeout=0.5")
        self.assertEqual((r.status, r.json()), (200, {"value": "A"}))


def wait_busy(rs, sleeper, timeout=20):
    """Returns once redis-server stops answering PING within 0.25 s (a DEBUG
    SLEEP has started). Fails if `sleeper` (the redis-cli) already exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sleeper.poll() is not None:
            raise AssertionError("redis-cli DEBUG SLEEP ended before the test saw Redis busy: %r"
                                 % (sleeper.stdout.read(),))
        c = rs.client(timeout=0.25)
        try:
            c.call("PING")
        except socket.timeout:
            return
        finally:
            c.close()
        time.sleep(0.005)
    raise AssertionError("redis never looked busy")


class RedisUrlTest(unittest.TestCase):
    """AUTH and SELECT from the URL, unix sockets."""

    PASSWORD = "p@ss:w/rd%1"  # needs percent-encoding in a URL

    def test_auth_and_select_from_url(self):
        with harness.RedisServer(password=self.PASSWORD) as rs:
            url = rs.url(db=3)
            self.assertIn("p%40ss%3Aw%2Frd%251@", url)
            with harness.Devexd(app="redisapp", env={URL_ENV: url}) as d:
                st, b = call(d, "SET", "authkey", "in-db-3")
                self.assertEqual(st, 200, b)
                p = rs.cli("GET", "authkey", db=3)
                self.assertEqual(p.stdout.strip(), "in-db-3", p.stderr)
                p = rs.cli("EXISTS", "authkey", db=0)
                self.assertEqual(p.stdout.strip(), "0", p.stderr)
                st, b = call(d, "CLIENT", "INFO")
                self.assertIn(" db=3 ", b["reply"])
                # user:password form (ACL user "default")
                st, b = call(d, "GET", "authkey", url="redis://default:%s@127.0.0.1:%d/3"
                             % (urllib.parse.quote(self.PASSWORD, safe=""), rs.port))
                self.assertEqual((st, b.get("reply")), (200, "in-db-3"), b)
                # no password: every command gets NOAUTH as an error reply
                st, b = call(d, "GET", "authkey", url=rs.url(db=None, password=False))
                self.assertEqual((st, b["code"]), (502, "redis"), b)
                self.assertIn("NOAUTH", b["message"])
                # a wrong password: the handshake fails, then "unavailable" with Redis's reason
                wrong = "redis://:wrong@127.0.0.1:%d/3" % rs.port
                seen = []

                def wrongpass():
                    st, b = call(d, "GET", "authkey", url=wrong)
                    seen.append((st, b))
                    return st == 503 and "WRONGPASS" in b.get("message", "")

                poll(wrongpass, "503 with WRONGPASS")
                for st, b in seen:
                    self.assertIn(st, (502, 503), b)  # never 200: commands queued behind AUTH get NOAUTH
                d.wait_log(lambda e: e.get("msg", "").startswith("redis handshake failed") and e.get("level") == "error",
                           what="the handshake error log line")
                # the good connection was not disturbed
                self.assertEqual(call(d, "GET", "authkey")[1]["reply"], "in-db-3")

    def test_unix_socket(self):
        with harness.RedisServer(unix_socket=True) as rs:
            with harness.Devexd(app="redisapp", env={URL_ENV: rs.unix_url(db=2)}) as d:
                st, b = call(d, "SET", "ukey", "via-unix")
                self.assertEqual(st, 200, b)
                self.assertEqual(rs.cli("GET", "ukey", db=2).stdout.strip(), "via-unix")
                st, b = call(d, "CLIENT", "INFO")
                self.assertIn(" db=2 ", b["reply"])
                self.assertIn("laddr=" + rs.unix_path, b["reply"])
                # a bare path is a unix socket URL too (db 0)
                st, b = call(d, "SET", "bare", "yes", url=rs.unix_path)
                self.assertEqual(st, 200, b)
                self.assertEqual(rs.cli("GET", "bare", db=0).stdout.strip(), "yes")
                # a socket path where nothing listens: unavailable, not a hang
                st, b = call(d, "PING", url="unix://" + rs.unix_path + ".none", timeout=30)
                self.assertEqual((st, b["code"]), (503, "unavailable"), b)


class RedisAvailabilityTest(unittest.TestCase):
    """Redis down at start, stopped and started, killed under load."""

    def test_redis_down_at_start(self):
        rs = harness.RedisServer()  # port chosen, not started
        try:
            with harness.Devexd(app="redisapp", env={URL_ENV: rs.url()}) as d:
                self.assertEqual(d.get("/healthz").status, 200)
                # a 30 s command timeout: an answer within the client's 10 s is the
                # "unavailable" fast path, not a timeout
                r = d.get("/get/k?timeout=30", timeout=10)
                self.assertEqual(r.status, 503, r)
                self.assertEqual(r.json()["code"], "unavailable")
                self.assertTrue(r.json()["message"].startswith("redis"), r.json())
                st, b = post(d, "/status", {})
                self.assertIn(b["status"], ("down", "connecting"))
                self.assertEqual(d.get("/healthz").status, 200)
                rs.start()
                rs.call("SET", "k", "later")
                statuses = set()

                def ready():
                    r = d.get("/get/k?timeout=30")
                    statuses.add(r.status)
                    return r.status == 200 and r.json() == {"value": "later"}

                poll(ready, "the endpoint to succeed after Redis started", timeout=20)
                self.assertLessEqual(statuses, {200, 503})
                self.assertEqual(post(d, "/status", {})[1]["status"], "ready")
        finally:
            rs.close()

    def test_stop_and_start(self):
        with harness.RedisServer() as rs, harness.Devexd(app="redisapp", env={URL_ENV: rs.url()}) as d:
            self.assertEqual(d.get("/kv/a").status, 200)
            rs.stop()  # SHUTDOWN NOSAVE
            # every primitive fails fast with "unavailable" (no hang, no timeout)
            for _ in range(3):
                r = d.get("/kv/a?timeout=30")
                self.assertEqual((r.status, r.json()["code"]), (503, "unavailable"), r)
                st, b = post(d, "/pipeline", {"commands": [["PING"], ["PING"]], "timeout": 30})
                self.assertEqual((st, b["code"]), (503, "unavailable"), b)
                st, b = post(d, "/eval", {"script": "return 1", "timeout": 30})
                self.assertEqual((st, b["code"]), (503, "unavailable"), b)
            self.assertEqual(d.get("/healthz").status, 200)
            d.wait_log(lambda e: e.get("level") == "warn" and "redis connection lost" in e.get("msg", ""),
                       what="the connection-lost warning")
            rs.start()
            poll(lambda: d.get("/kv/a").status == 200, "recovery after restart")
            st, b = post(d, "/pipeline", {"commands": [["PING"], ["PING"]]})
            self.assertEqual((st, b["replies"]), (200, ["PONG", "PONG"]))
            st, b = post(d, "/eval", {"script": "return 1"})
            self.assertEqual((st, b["reply"]), (200, 1))

    def test_killed_and_restarted_under_load(self):
        nthreads = 20
        with harness.RedisServer() as rs, \
                harness.Devexd(app="redisapp", threads=2, env={URL_ENV: rs.url()}) as d:
            phase = ["before"]  # before -> stopping -> down -> up
            stop = threading.Event()
            results = [[] for _ in range(nthreads)]  # (phase at completion, status, body or exception)

            def worker(i):
                conn = d.connection(timeout=10)
                try:
                    while not stop.is_set():
                        try:
                            r = d.request("GET", "/kv/load%d?timeout=5" % i, conn=conn)
                            results[i].append((phase[0], r.status, r.body))
                        except Exception as e:  # a client timeout or a broken connection
                            results[i].append((phase[0], "exception", repr(e)))
                            conn.close()
                            conn = d.connection(timeout=10)
                finally:
                    conn.close()

            threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(nthreads)]
            for t in threads:
                t.start()
            try:
                poll(lambda: all(sum(1 for x in res if x[1] == 200) >= 3 for res in results),
                     "3 successes per thread before the kill", timeout=30)
                phase[0] = "stopping"
                rs.stop(kill=True)  # SIGKILL
                phase[0] = "down"
                poll(lambda: all(any(x[0] == "down" and x[1] == 503 for x in res) for res in results),
                     "a 503 in every thread during the outage", timeout=30)
                time.sleep(2)  # the outage lasts ~2 s
                rs.start()  # same port
                phase[0] = "up"

                def recovered():
                    return all(len(res) >= 5 and all(x[0] == "up" and x[1] == 200 for x in res[-5:])
                               for res in results)

                poll(recovered, "5 successes in a row per thread after the restart", timeout=30)
            finally:
                stop.set()
                for t in threads:
                    t.join(30)
            self.assertFalse(any(t.is_alive() for t in threads), "a client thread is stuck")

            total = sum(len(r) for r in results)
            for i, res in enumerate(results):
                exceptions = [x for x in res if x[1] == "exception"]
                self.assertEqual(exceptions, [], "thread %d: requests failed or hung" % i)
                for ph, st, body in res:
                    self.assertIn(st, (200, 503), (i, ph, st, body))
                    b = json.loads(body)
                    if st == 503:
                        self.assertEqual(b["code"], "unavailable", b)
                        self.assertTrue(b["error"].startswith("unavailable: "), b)
                    if ph == "before":  # answered before Redis was killed
                        self.assertEqual(st, 200, (i, b))
                self.assertTrue(any(x[1] == 503 for x in res), "thread %d saw no outage" % i)
                self.assertEqual([x[1] for x in res[-3:]], [200, 200, 200], "thread %d: last requests" % i)
            self.assertGreater(total, nthreads * 10)
            d.wait_log(lambda e: e.get("level") == "warn" and "redis connection lost" in e.get("msg", ""),
                       what="the connection-lost warning")


class RedisHandshakeTest(unittest.TestCase):
    """Regression tests for bugs found in review: commands never run before
    AUTH/SELECT succeeded, and a pipeline that cannot be sent is reported."""

    def test_failed_select_does_not_run_queued_commands_on_db0(self):
        # A command issued before the handshake finished (here SELECT 20 fails
        # on a server with 16 databases) must not run on database 0.
        with harness.RedisServer() as rs, harness.Devexd(app="redisapp", env={URL_ENV: rs.url(db=20)}) as d:
            st, b = call(d, "SET", "wrongdb", "x")  # the first command: always queued during the connect
            leaked = rs.call("EXISTS", "wrongdb")
            self.assertEqual(leaked, 0, "the SET ran on db 0")
            self.assertEqual((st, b.get("code")), (503, "unavailable"), b)

    def test_pipeline_while_disconnecting_is_unavailable(self):
        # After a failed AUTH the connection is not usable: a pipeline issued
        # then is "unavailable" at once (not a timeout, and nothing leaks).
        with harness.RedisServer(password="pw") as rs, \
                harness.Devexd(app="redisapp", env={URL_ENV: rs.url()}) as d:
            wrong = "redis://:wrong@127.0.0.1:%d" % rs.port
            st, b = post(d, "/call-then-pipeline", {"url": wrong, "timeout": 0.5, "args": ["GET", "k"],
                                                    "commands": [["PING"]]})
            self.assertEqual(st, 200, b)
            self.assertEqual(b["pipeline_error"]["code"], "unavailable", b)


if __name__ == "__main__":
    harness.main()
