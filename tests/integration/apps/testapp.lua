-- testapp: the app the integration tests run against (tests/integration).
-- Routes exercise routing, params, bodies, errors, headers, cookies, and
-- "held" requests whose completion the test controls with gate files, so the
-- concurrency and shutdown tests assert on ordering instead of wall-clock time.
local framework = require("devex.app")
local timer = require("devex.timer")
local log = require("devex.log")
local testlib = require("testlib")

local app = framework.new()

require("routes.health")(app)

app:get("/hello/:name", function(req)
  return 200, { hello = req.params.name }
end)

app:get("/users/:id/items/:item", function(req)
  return 200, { id = req.params.id, item = req.params.item }
end)

app:get("/things", function() return 200, { things = {} } end)
app:post("/things", function() return 201, { created = true } end)

app:get("/text", function() return 200, "plain text body", { ["X-Custom"] = "yes" } end)

app:get("/sleep/:s", function(req)
  timer.sleep(tonumber(req.params.s))
  return 200, { ok = true, slept = tonumber(req.params.s) }
end)

-- Sleeps :s seconds, then waits for the gate file ?gate=NAME (if given).
-- Logs "hold start" on entry and "hold done" before answering, with ?tag=.
app:get("/hold/:s", function(req)
  local tag = req.query.tag or ""
  log.info("hold start", { tag = tag })
  if not testlib.hold(tonumber(req.params.s), req.query.gate) then
    return 504, { error = "gate never opened" }
  end
  log.info("hold done", { tag = tag })
  return 200, { ok = true, tag = tag }
end)

app:get("/boom", function(req)
  error("kaboom from the test app") -- BOOM_LINE
end)

app:get("/nostatus", function() end)
app:get("/badstatus", function() return "200", { ok = true } end)
app:get("/bigstatus", function() return 1000 end)

app:post("/json", function(req)
  local v = req:json()
  return 200, { got = v }
end)

app:post("/body", function(req)
  local b = req.body or ""
  return 200, { len = #b }
end)

app:get("/echo", function(req)
  return 200, {
    method = req.method,
    path = req.path,
    query = req.query,
    header = req.headers["X-Test-Header"],
    header_lower = req.headers["x-test-header"],
    header_method = req:header("X-TEST-HEADER"),
    cookies = req.cookies,
  }
end)

-- Logs request secrets through devex.log under secret-looking names: the
-- logger must redact them.
app:get("/log-secrets", function(req)
  log.info("secrets seen", { cookie = req.headers.cookie, authorization = req.headers.authorization })
  return 200, { logged = true }
end)

return app
