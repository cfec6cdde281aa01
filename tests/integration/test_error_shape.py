"""The one error shape (issue 17.7; src/errors.c, lua/devex/app.lua): the
devex.error module's new/http/is make the same values the C primitives
return (one metatable: error.is() is true for both, tostring prints
"code: message (status N)"), and devex.app.fail maps any of them to the HTTP
answer in one place: the error's status (or the one its code implies),
{"error": message} plus its fields, while an error that is not a devex.error
is a bug below (500 "internal error", logged)."""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd  # noqa: E402

APP = r'''
local framework = require("devex.app")
local derror = require("devex.error")
local json = require("devex.json")
local app = framework.new()
require("routes.health")(app)

-- what the module makes, as JSON (tostring and is() included)
app:get("/make", function()
  local a = derror.new("io", "disk full", 507, { path = "/x", code = "ignored", status = 1 })
  local b = derror.http(429, "repl limit reached", { limit = 5 })
  local c = derror.http(418, "teapot")
  local d = derror.new("odd", { "not a string" }, 99)
  local e = derror.new("plain")
  -- a primitive's own error: devex.redis with nothing listening
  local r = require("devex.redis").connect("redis://127.0.0.1:1", { timeout = 1 })
  local _, p = r:call("PING")
  return 200, {
    a = { code = a.code, message = a.message, status = a.status, path = a.path, s = tostring(a), is = derror.is(a) },
    b = { code = b.code, status = b.status, limit = b.fields.limit, is = derror.is(b), s = tostring(b) },
    c = { code = c.code, status = c.status, fields = c.fields == nil },
    d = { code = d.code, status = d.status == nil, message = type(d.message) },
    e = { code = e.code, message = e.message, status = e.status == nil },
    p = { code = p.code, is = derror.is(p), same = getmetatable(p) == getmetatable(a) },
    not_errors = { derror.is({ code = "x", message = "y" }), derror.is("x"), derror.is(nil), derror.is(setmetatable({}, {})) },
  }
end)

app:get("/bad_status", function()
  local ok, err = pcall(derror.http, 200, "not an error")
  return 200, { ok = ok, err = tostring(err) }
end)

-- the answers of returned errors
app:get("/fail/limit", function() return framework.fail(derror.http(429, "session limit reached",
  { limit = 3, code = "quota", message = "You have 3 sessions running", error = "must not win" })) end)
app:get("/fail/unavailable", function() return framework.fail(derror.new("unavailable", "redis: down")) end)
app:get("/fail/timeout", function() return framework.fail(derror.new("timeout", "too slow")) end)
app:get("/fail/unknown", function() return framework.fail(derror.new("weird", "what")) end)
app:get("/fail/upstream_status", function() return framework.fail(derror.new("NotFound", "pod x", 404)) end)
app:get("/fail/legacy", function() return framework.fail({ status = 404, body = { error = "old shape" } }) end)
app:get("/fail/string", function() return framework.fail("a string") end)
app:get("/reply/ok", function() return framework.reply({ fine = true }) end)
app:get("/reply/err", function() return framework.reply(nil, derror.http(409, "repl is running")) end)

return app
'''


class ErrorShapeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = Devexd(app="errapp", app_files={"errapp.lua": APP}).__enter__()

    @classmethod
    def tearDownClass(cls):
        cls.d.__exit__(None, None, None)

    def test_the_module(self):
        r = self.d.get("/make")
        self.assertEqual(r.status, 200, r.body)
        v = r.json()
        # extra members are copied, but never over code, message, status
        self.assertEqual(v["a"], {"code": "io", "message": "disk full", "status": 507, "path": "/x",
                                  "s": "io: disk full (status 507)", "is": True})
        self.assertEqual(v["b"], {"code": "limit", "status": 429, "limit": 5, "is": True,
                                  "s": "limit: repl limit reached (status 429)"})
        self.assertEqual(v["c"], {"code": "http_418", "status": 418, "fields": True})
        # made on failure paths: a message that is not a string is converted,
        # a status that is not an HTTP status left out (no raise instead of the error)
        self.assertEqual(v["d"], {"code": "odd", "status": True, "message": "string"})
        self.assertEqual(v["e"], {"code": "plain", "message": "plain", "status": True})
        self.assertEqual(v["p"], {"code": "unavailable", "is": True, "same": True})
        self.assertEqual(v["not_errors"], [False, False, False, False])
        r = self.d.get("/bad_status")
        self.assertEqual(r.json()["ok"], False)
        self.assertIn("HTTP error status", r.json()["err"])

    def test_fail_maps_to_http(self):
        cases = {
            "/fail/limit": (429, {"error": "session limit reached", "limit": 3, "code": "quota",
                                  "message": "You have 3 sessions running"}),
            "/fail/unavailable": (503, {"error": "redis: down"}),
            "/fail/timeout": (504, {"error": "too slow"}),
            "/fail/unknown": (500, {"error": "what"}),
            "/fail/upstream_status": (404, {"error": "pod x"}),
            "/reply/ok": (200, {"fine": True}),
            "/reply/err": (409, {"error": "repl is running"}),
        }
        for path, want in cases.items():
            r = self.d.get(path)
            self.assertEqual((r.status, r.json()), want, path)
        mark = self.d.mark()
        for path in ("/fail/legacy", "/fail/string"):
            r = self.d.get(path)
            self.assertEqual(r.status, 500, path)
            self.assertEqual(r.json()["error"], "internal error", path)
        self.d.wait_log(lambda e: e.get("msg") == "a route got an error that is not a devex.error",
                        count=2, since=mark, what="the two logged bugs")


if __name__ == "__main__":
    unittest.main()
