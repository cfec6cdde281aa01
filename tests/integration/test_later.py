"""devex.app.later (stream.later in C): a handler answers with a function
run as a task of its own once the handler has returned through the
middleware. The answer is that function's results (status, body, headers)
with the middleware's headers kept; errors are mapped as a handler's; the
handler's request and coroutine are freed while the function waits (what
the session start relies on to keep parked starts small); a client that
leaves meanwhile, or before the handler has returned, does not stop the
function (it may finish what the handler began).
"""

import os
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
return app
"""


class LaterTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = harness.Devexd(app="laterapp", app_files={"laterapp.lua": APP}, threads=1)
        cls.d.__enter__()

    @classmethod
    def tearDownClass(cls):
        cls.d.__exit__(None, None, None)  # SIGTERM, exit 0, no sanitizer report

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


if __name__ == "__main__":
    unittest.main()
