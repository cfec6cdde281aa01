"""devex.task (spawn, wait, done) and devex.tasks (all, map) inside request
handlers: result order, errors as `false, msg`, concurrency limits, children
that raise or outlive their request, and the clear error for a yielding
primitive inside a plain Lua coroutine.

The app is tests/integration/apps/tasksapp.lua. Assertions are on what Lua
observed (orders, counters, messages), never on durations.
"""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


class TasksTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = harness.Devexd(app="tasksapp", threads=2)
        cls.d.__enter__()

    @classmethod
    def tearDownClass(cls):
        cls.d.__exit__(None, None, None)  # SIGTERM, exit 0, no sanitizer report

    def get_json(self, path):
        st, body = self.d.get_json(path)
        self.assertEqual(st, 200, body)
        return body

    def lua_error(self, path, message):
        """GET path must answer 500 and log a lua error containing message."""
        r = self.d.get(path)
        self.assertEqual(r.status, 500, r)
        body = r.json()
        self.assertEqual(body["error"], "internal error")
        rid = body["request_id"]
        lines = self.d.wait_log(lambda e: e.get("request_id") == rid and e.get("level") == "error",
                                what="the error line of %s" % path)
        self.assertIn(message, lines[0].get("error", ""), lines[0])
        return lines[0]

    # ---- spawn / wait ----

    def test_spawn_wait_results_in_spawn_order(self):
        b = self.get_json("/spawn-order")
        res = b["results"]
        self.assertEqual(len(res), 5)
        self.assertEqual(res[0], {"n": 4, "values": [True, 1, 10, "tag1"]})
        self.assertEqual(res[1], {"n": 4, "values": [True, 2, 20, "tag2"]})
        self.assertEqual(res[3], {"n": 4, "values": [True, 4, 40, "tag4"]})
        # nil as a first result is kept: true, nil, "nil first", tag
        self.assertEqual(res[4], {"n": 4, "values": [True, None, "nil first", "tag5"]})
        # a raising child: false, msg (with a traceback)
        self.assertEqual(res[2]["n"], 2)
        self.assertIs(res[2]["values"][0], False)
        self.assertRegex(res[2]["values"][1], r"tasksapp\.lua:\d+: child 3 failed$")
        self.assertTrue(res[2]["traceback"])
        # they ran concurrently: all five finished, in the order of their sleeps
        # (one loop time for all five timers), not in spawn order
        self.assertEqual(b["finished"], [4, 2, 5, 3, 1])

    def test_spawn_of_a_child_that_never_yields(self):
        b = self.get_json("/spawn-sync")
        self.assertTrue(b["done_before"])
        self.assertEqual(b["first"], {"n": 3, "values": [True, 5, "sum"]})
        self.assertEqual(b["second"], b["first"])  # wait() again returns the same results
        self.assertFalse(b["slow_done_before"])
        self.assertEqual(b["slow"], {"n": 2, "values": [True, "slow"]})
        self.assertTrue(b["slow_done_after"])

    def test_child_that_raises_does_not_kill_the_parent(self):
        b = self.get_json("/child-raises")
        self.assertTrue(b["parent_still_running"])
        self.assertIs(b["early"]["ok"], False)
        self.assertRegex(b["early"]["msg"], r"early child boom$")
        self.assertIs(b["late"]["ok"], False)
        self.assertRegex(b["late"]["msg"], r"late child boom$")
        self.assertEqual(b["fine"], {"ok": True, "value": "fine"})
        self.assertTrue(b["ignored_done"])
        # wait() returns false, msg; it does not raise in the parent
        self.assertIs(b["pcall_ok"], True)
        self.assertIs(b["pcall_value"], False)
        # and the worker is fine afterwards
        self.assertEqual(self.d.get("/healthz").status, 200)

    def test_second_waiter_is_an_error(self):
        b = self.get_json("/double-wait")
        self.assertIs(b["second_wait_ok"], False)
        self.assertIn("another task is already waiting on this one", b["second_wait_error"])
        self.assertEqual(b["waiter"], [True, True, "child result"])

    def test_child_outlives_its_request(self):
        rid = "outlive1-request"
        r = self.d.get("/fire-and-forget?tag=outlive1", headers={"X-Request-Id": rid})
        self.assertEqual((r.status, r.json()), (200, {"spawned": True}))
        self.assertEqual(r.header("X-Request-Id"), rid)
        lines = self.d.wait_log(lambda e: e.get("msg") == "child finished" and e.get("tag") == "outlive1",
                                what="the child's log line")
        # the child logs under its parent's request id
        self.assertEqual(lines[0].get("request_id"), rid)

    # ---- tasks.all ----

    def test_tasks_all(self):
        b = self.get_json("/all")
        res = b["results"]
        self.assertEqual(b["count"], 4)
        self.assertEqual(res[0], {"n": 3, "values": [True, 1, 2]})
        self.assertEqual(res[1]["n"], 2)
        self.assertIs(res[1]["values"][0], False)
        self.assertRegex(res[1]["values"][1], r"all: second failed$")
        self.assertEqual(res[2], {"n": 2, "values": [True, "c"]})
        self.assertEqual(res[3], {"n": 2, "values": [True, "xy"]})  # nested tasks.all
        self.assertEqual(b["empty"], 0)

    # ---- tasks.map ----

    def test_map_200_items_concurrency_16(self):
        b = self.get_json("/map?n=200&c=16&sleep=0.05")
        self.assertEqual(b["max_running"], 16)
        self.assertEqual(b["present"], 200)
        self.assertTrue(b["correct"])
        self.assertEqual(b["calls"], 200)
        self.assertEqual(b["failures"], 0)
        self.assertEqual(b["running_after"], 0)
        self.assertTrue(b["index_ok"])

    def test_map_default_concurrency_and_small_inputs(self):
        b = self.get_json("/map?n=40&sleep=0.01")  # no opts: 16
        self.assertEqual((b["max_running"], b["present"], b["correct"]), (16, 40, True))
        b = self.get_json("/map?n=5&c=16&sleep=0.01")  # fewer items than the limit
        self.assertEqual((b["max_running"], b["present"], b["correct"]), (5, 5, True))
        b = self.get_json("/map?n=7&c=1&sleep=0")  # sequential
        self.assertEqual((b["max_running"], b["present"], b["correct"]), (1, 7, True))
        b = self.get_json("/map?n=0&c=4&sleep=0")
        self.assertEqual((b["max_running"], b["present"], b["calls"], b["failures"]), (0, 0, 0, 0))

    def test_map_failures_with_index(self):
        b = self.get_json("/map-fail")
        res = b["results"]
        self.assertEqual(len(res), 10)
        for i in range(1, 11):
            if i in (3, 7, 9):
                self.assertIsNone(res[i - 1], i)
            else:
                self.assertEqual(res[i - 1], "ITEM%d" % i)
        f = b["failures"]
        self.assertEqual([x["index"] for x in f], [3, 7, 9])  # sorted by index
        self.assertEqual([x["item"] for x in f], ["item3", "item7", "item9"])
        self.assertRegex(f[0]["error"], r"tasksapp\.lua:\d+: bad item3$")
        self.assertEqual(f[1]["error"], "soft failure of item7")  # nil, err
        self.assertEqual(f[2]["error"], "table error")  # an error object is kept as is

    # ---- plain coroutines ----

    def test_yielding_primitive_in_plain_coroutine(self):
        self.lua_error("/plain-coroutine/sleep",
                       "timer.sleep: must be called from a request handler or a devex task, "
                       "not from a plain coroutine or at load time")
        self.lua_error("/plain-coroutine/wait", "task:wait: must be called from a request handler or a devex task")
        self.lua_error("/plain-coroutine/map", "task:wait: must be called from a request handler or a devex task")

    def test_bare_yield_in_handler(self):
        self.lua_error("/plain-coroutine/yield", "coroutine.yield called outside a coroutine of the handler's own")

    def test_plain_coroutines_without_primitives_work(self):
        self.assertEqual(self.get_json("/plain-coroutine/generator"), {"values": [1, 2, 3]})

    def test_worker_still_serves_after_errors(self):
        for path in ("/plain-coroutine/sleep", "/plain-coroutine/yield", "/child-raises"):
            self.d.get(path)
        self.assertEqual(self.get_json("/map?n=32&c=8&sleep=0")["present"], 32)


if __name__ == "__main__":
    harness.main()
