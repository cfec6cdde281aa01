-- proxyapp: the app of tests/integration/test_proxy.py ("single-host mode").
-- /repl/:id/*rest is proxied to the REPL runner when Lua says so: id "ok"
-- goes to $PROXY_TEST_UPSTREAM (a Python server in the test), id "down" to
-- $PROXY_TEST_DOWN (a port nobody listens on), anything else is a 404 made
-- here. The rest of the path is taken raw from req.path (not the decoded
-- param), and the query string is passed on unchanged.
local framework = require("devex.app")
local proxy = require("devex.proxy")

local app = framework.new()

require("routes.health")(app)

local UPSTREAMS = {
  ok = os.getenv("PROXY_TEST_UPSTREAM"),
  down = os.getenv("PROXY_TEST_DOWN"),
  ph = os.getenv("PROXY_TEST_UPSTREAM"), -- same runner, with preserve_host and location_prefix
}

app:route("*", "/repl/:id/*rest", function(req)
  local upstream = UPSTREAMS[req.params.id]
  if not upstream then return 404, { error = "no such repl" } end
  local prefix = "/repl/" .. req.params.id
  local rest = req.path:sub(#prefix + 1) -- "/..." (raw, as the client sent it)
  local q = req.raw:query()
  if q then rest = rest .. "?" .. q end
  return proxy.pass {
    upstream = upstream,
    path = rest,
    headers = { ["X-Devex-Repl"] = req.params.id, ["x-strip-me"] = false },
    activity = req.params.id, -- a WebSocket tunnel is watched under the repl id
    preserve_host = req.params.id == "ph",
    location_prefix = req.params.id == "ph" and "/repl/ph/" or nil,
  }
end)

-- the WebSocket tunnels of this worker: how many, and which moved bytes
-- since the last call (comma-separated)
app:get("/tunnels", function()
  return 200, { count = proxy.tunnels(), active = table.concat(proxy.tunnel_activity(), ",") }
end)

app:get("/bad/activity", function()
  return proxy.pass { upstream = UPSTREAMS.ok, path = "/", activity = "no spaces" }
end)

-- a handler that names an upstream that is not a host:port (a URL, a space): pass() raises
app:get("/bad/upstream", function()
  return proxy.pass { upstream = "http://10.1.2.3:80", path = "/" }
end)

-- a Unix socket upstream must be an absolute path
app:get("/bad/unix", function()
  return proxy.pass { upstream = "unix:relative.sock", path = "/" }
end)

app:get("/bad/path", function()
  return proxy.pass { upstream = UPSTREAMS.ok, path = "/a\r\nx-injected: 1" }
end)

app:get("/bad/header", function()
  return proxy.pass { upstream = UPSTREAMS.ok, path = "/", headers = { host = "evil" } }
end)

-- the instruction returned as a plain value, not through `return pass{}`:
-- not a status, so the C core answers 500
app:get("/bad/shape", function()
  local _, instr = proxy.pass { upstream = UPSTREAMS.ok, path = "/" }
  return instr
end)

-- pass() after a yield (the task resumed from a timer): the hand-off
-- happens outside H2O's on_req
app:get("/later/*rest", function(req)
  require("devex.timer").sleep(0.05)
  return proxy.pass { upstream = UPSTREAMS.ok, path = "/" .. req.params.rest }
end)

return app
