"""devex.app.later (stream.later in C): a handler answers with a function
run as a task of its own once the handler has returned through the
middleware. The answer is that function's results (status, body, headers)
with the middleware's headers kept; errors are mapped as a handler's; the
handler's request and coroutine are freed while the function waits (what
the session start relies on to keep parked starts small); a client that
leaves meanwhile, or before the handler has returned, does not stop the
function (it may finish what the handler began).
"""

import json
import os
import signal
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

APP = r"""
local framework = require("devex.app")
local timer = require("devex.timer")
local app = framework.new()
require("routes.health")(app)

-- a global middleware that adds a header on the way out
app:use(function(req, next)
  local status, body, headers = next(req)
  headers = headers or {}
  headers["X-Mw"] = "out"
  return status, body, headers
end)

local weak = setmetatable({}, { __mode = "v" })
local left = { done = 0 }

app:get("/later/:mode", function(req)
  local mode = req.params.mode
  weak.req = req -- reached only from the handler's frames
  return framework.later(req, function()
    if mode ~= "sync" then timer.sleep(0.05) end
    if mode == "http_error" then error(framework.error(418, { error = "teapot" })) end
    if mode == "raise" then error("later went wrong") end
    if mode == "text" then return 202, "made later", { ["Content-Type"] = "text/x-later" } end
    collectgarbage("collect"); collectgarbage("collect")
    return 201, { mode = mode, request_freed = weak.req == nil }, { ["X-Later"] = "yes" }
  end)
end)

-- the client leaves while the function waits; it still runs to its end
app:get("/leave", function(req)
  return framework.later(req, function()
    timer.sleep(0.5)
    left.done = left.done + 1
    return 200, { ok = true }
  end)
end)
-- the client leaves before the handler has returned: what it was to do
-- later is still done (a session start whose workload exists must finish)
app:get("/leave-early", function(req)
  timer.sleep(0.5)
  return framework.later(req, function()
    left.early = (left.early or 0) + 1
    return 200, { ok = true }
  end)
end)
app:get("/left", function() return 200, left end)

-- stream.park: the later task ends while it waits; /wake/:key resumes it
local stream = require("devex.stream")
local parked = {}
local coros = setmetatable({}, { __mode = "k" }) -- the later tasks' coroutines, while alive
local function arm_as(key) return function(p) parked[key] = p end end
app:get("/park/:key/:secs", function(req)
  local key, secs = req.params.key, tonumber(req.params.secs)
  local post = key:match("^post") and framework.reply or nil
  return framework.later(req, function()
    coros[coroutine.running()] = key
    timer.sleep(0.01) -- a wait before the park: the task has yielded once
    local before = "before " .. key -- a local of the parked frames: gone with them
    return stream.park(secs, arm_as(key), function(arg)
      left.expired_arg = arg
      left.expired = (left.expired or 0) + 1
      return 504, { error = "expired", key = key }
    end, "arg-" .. key) and before
  end, post)
end)
app:get("/wake/:key/:how", function(req)
  local key, how = req.params.key, req.params.how
  local p = parked[key]
  if not p then return 404, { error = "nothing parked as " .. key } end
  local resumed = p(function(how, n) -- (its arguments, as the handle was given them)
    left.woken = (left.woken or 0) + 1
    left.woken_args = how .. "/" .. n
    timer.sleep(0.01) -- the resumed task waits too
    if how == "raise" then error("resumed went wrong") end
    if how == "fail" then return nil, framework.error(409, { error = "conflict", key = key }) end
    if how == "repark" then
      return stream.park(5, arm_as(key .. "2"), function() return 504, { error = "expired again" } end)
    end
    return 201, { woke = key, parkable = stream.parkable() }, { ["X-Woken"] = "yes" }
  end, how, 7)
  local again = p(function() return 200, { error = "resumed twice" } end)
  return 200, { resumed = resumed, again = again }
end)
app:get("/coroutines", function()
  collectgarbage("collect"); collectgarbage("collect")
  local n = 0
  for _ in pairs(coros) do n = n + 1 end
  return 200, { later_coroutines = n }
end)
app:get("/park-here", function()
  local ok, err = pcall(stream.park, 1, function() end, function() end)
  return 200, { parkable = stream.parkable(), ok = ok, err = tostring(err) }
end)
return app
"""


class LaterApp(unittest.TestCase):
    """A devexd running APP for the class."""

    @classmethod
    def setUpClass(cls):
        cls.d = harness.Devexd(app="laterapp", app_files={"laterapp.lua": APP}, threads=1)
        cls.d.__enter__()

    @classmethod
    def tearDownClass(cls):
        cls.d.__exit__(None, None, None)  # SIGTERM, exit 0, no sanitizer report


class LaterTest(LaterApp):

    def test_the_answer_is_the_functions_with_the_middlewares_headers(self):
        for mode in ("wait", "sync"):
            r = self.d.get("/later/" + mode, headers={"X-Request-Id": "later-" + mode})
            self.assertEqual(r.status, 201, r)
            self.assertEqual(r.json(), {"mode": mode, "request_freed": True})
            self.assertEqual(r.header("X-Later"), "yes")
            self.assertEqual(r.header("X-Mw"), "out")
            self.assertEqual(r.header("Content-Type"), "application/json")
            self.assertEqual(r.header("X-Request-Id"), "later-" + mode)

    def test_a_text_answer_keeps_its_content_type(self):
        r = self.d.get("/later/text")
        self.assertEqual((r.status, r.body, r.header("Content-Type")), (202, b"made later", "text/x-later"))

    def test_errors_are_mapped_as_a_handlers(self):
        r = self.d.get("/later/http_error")
        self.assertEqual((r.status, r.json()), (418, {"error": "teapot"}))
        r = self.d.get("/later/raise")
        self.assertEqual(r.status, 500, r)
        body = r.json()
        self.assertEqual(body["error"], "internal error")
        self.assertEqual(body["request_id"], r.header("X-Request-Id"))
        lines = self.d.wait_log(lambda e: e.get("request_id") == body["request_id"] and e.get("level") == "error",
                                what="the error line of the later function")
        self.assertIn("later went wrong", lines[0].get("error", ""))
        self.assertEqual(lines[0].get("route"), "/later/:mode")

    def test_a_client_that_leaves_meanwhile(self):
        before = self.d.get_json("/left")[1]["done"]
        s = socket.create_connection(("127.0.0.1", self.d.port))
        s.sendall(b"GET /leave HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        time.sleep(0.1)
        s.close()
        deadline = time.time() + 10
        while self.d.get_json("/left")[1]["done"] == before:
            self.assertLess(time.time(), deadline, "the later function never ended")
            time.sleep(0.1)
        self.assertEqual(self.d.get("/healthz").status, 200)

    def test_a_client_that_leaves_before_the_handler_returns(self):
        s = socket.create_connection(("127.0.0.1", self.d.port))
        s.sendall(b"GET /leave-early HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        time.sleep(0.1)
        s.close()
        deadline = time.time() + 10
        while not self.d.get_json("/left")[1].get("early"):
            self.assertLess(time.time(), deadline, "the later function of a gone client never ran")
            time.sleep(0.1)
        self.assertEqual(self.d.get_json("/left")[1]["early"], 1)


class ParkTest(LaterApp):
    """stream.park: a later answer's task ends while it waits (no coroutine
    is left), the request kept until a function resumes it from another
    task, or its deadline does. The last test leaves one request parked
    (/park/forever): the shutdown ends it (exit 0, no sanitizer report)."""

    def send(self, path):
        s = socket.create_connection(("127.0.0.1", self.d.port), timeout=10)
        s.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" % path).encode())
        return s

    def answer(self, s):
        data = harness.recv_all(s)
        s.close()
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = dict((k.lower(), v.strip()) for k, v in (x.split(":", 1) for x in lines[1:]))
        return int(lines[0].split()[1]), headers, body

    def test_a_parked_request_is_answered_by_the_function_it_is_resumed_with(self):
        s = self.send("/park/a/30")
        time.sleep(0.3)
        r = self.d.get_json("/coroutines")[1]
        self.assertEqual(r["later_coroutines"], 0, "the parked task's coroutine is still alive")
        self.assertEqual(self.d.get_json("/wake/a/ok"), (200, {"resumed": True, "again": False}))
        status, headers, body = self.answer(s)
        self.assertEqual(status, 201, body)
        self.assertEqual(json.loads(body), {"woke": "a", "parkable": True})
        self.assertEqual(headers.get("x-woken"), "yes")
        self.assertEqual(headers.get("x-mw"), "out")  # the middleware's headers, added before the park
        self.assertEqual(self.d.get_json("/left")[1]["woken_args"], "ok/7")
        self.assertEqual(self.d.get("/wake/zz/ok").status, 404)

    def test_the_deadline_resumes_with_expired(self):
        before = self.d.get_json("/left")[1].get("expired", 0)
        t0 = time.time()
        status, _, body = self.answer(self.send("/park/b/0.3"))
        self.assertEqual((status, json.loads(body)), (504, {"error": "expired", "key": "b"}))
        self.assertGreaterEqual(time.time() - t0, 0.3)
        self.assertEqual(self.d.get_json("/left")[1]["expired"], before + 1)
        self.assertEqual(self.d.get_json("/left")[1]["expired_arg"], "arg-b")  # park's arg, given to expired
        self.assertEqual(self.d.get_json("/wake/b/ok")[1], {"resumed": False, "again": False})

    def test_the_resumed_functions_results_go_through_post_and_the_error_mapping(self):
        s = self.send("/park/post1/30")
        time.sleep(0.3)
        self.d.get_json("/wake/post1/fail")
        status, _, body = self.answer(s)
        self.assertEqual((status, json.loads(body)), (409, {"error": "conflict", "key": "post1"}))
        s = self.send("/park/c/30")
        time.sleep(0.3)
        self.d.get_json("/wake/c/raise")
        status, headers, body = self.answer(s)
        self.assertEqual(status, 500, body)
        self.assertEqual(json.loads(body)["error"], "internal error")
        rid = json.loads(body)["request_id"]
        lines = self.d.wait_log(lambda e: e.get("request_id") == rid and e.get("level") == "error",
                                what="the error line of the resumed function")
        self.assertIn("resumed went wrong", lines[0].get("error", ""))
        self.assertEqual(lines[0].get("route"), "/park/:key/:secs")

    def test_a_resumed_task_can_park_again(self):
        s = self.send("/park/d/30")
        time.sleep(0.3)
        self.d.get_json("/wake/d/repark")
        time.sleep(0.3)
        self.assertEqual(self.d.get_json("/coroutines")[1]["later_coroutines"], 0)
        self.d.get_json("/wake/d2/ok")
        status, _, body = self.answer(s)
        self.assertEqual((status, json.loads(body)), (201, {"woke": "d2", "parkable": True}))

    def test_a_client_that_leaves_while_parked(self):
        woken = self.d.get_json("/left")[1].get("woken", 0)
        s = self.send("/park/e/30")
        time.sleep(0.3)
        s.close()
        time.sleep(0.2)
        # the resumed function still runs (a start must finish what it began); its answer is dropped
        self.assertEqual(self.d.get_json("/wake/e/ok")[1], {"resumed": True, "again": False})
        harness.poll(lambda: self.d.get_json("/left")[1].get("woken", 0) == woken + 1, what="the resumed function")
        self.assertEqual(self.d.get("/healthz").status, 200)

    def test_only_a_later_task_parks(self):
        r = self.d.get_json("/park-here")[1]
        self.assertFalse(r["parkable"])
        self.assertFalse(r["ok"])
        self.assertIn("only the task of an answer made later", r["err"])

    def test_a_park_outlives_a_reload(self):
        # parked in the VM a SIGHUP retires; its deadline still answers
        s = self.send("/park/f/1.5")
        time.sleep(0.3)
        self.d.signal(signal.SIGHUP)
        self.d.wait_log(lambda e: "reload" in e.get("msg", ""), what="the reload")
        status, _, body = self.answer(s)
        self.assertEqual((status, json.loads(body)), (504, {"error": "expired", "key": "f"}))
        self.assertEqual(self.d.get("/healthz").status, 200)
        type(self).forever = self.send("/park/forever/3600")  # left parked for the shutdown in tearDownClass
        time.sleep(0.3)


if __name__ == "__main__":
    unittest.main()
