-- runner.app: `devexd runner`, the workspace agent (README "Runner agent").
-- GET /ping for readiness, the IDE page's protocol on the WebSocket at
-- /api/v1/repl/ws (runner.protocol), and /user-app/[PORT/]... proxied to the
-- user's own program on this machine.
local app = require("devex.app").new()
local proxy = require("devex.proxy")
local settings = require("runner.settings")
local protocol = require("runner.protocol")
local lifecycle = require("runner.lifecycle")

local conf = settings.get() -- a malformed setting stops the agent here

app:get("/ping", function()
  return 200, '"pong"\n', { ["content-type"] = "application/json" }
end)

app:get("/api/v1/repl/ws", protocol.serve)

-- /user-app/<port>/<path> (the IDE page's form) or /user-app/<path> (APP_PORT).
local function user_app(req)
  local rest = req.params.rest or ""
  local port = conf.app_port
  local first, after = rest:match("^(%d+)/?(.*)$")
  if first then
    local p = tonumber(first)
    if p < 1024 or p > 65535 or p == conf.port then return 400, { error = "invalid port" } end
    port, rest = p, after
  end
  local q = req.raw:query()
  return proxy.pass{ upstream = "127.0.0.1:" .. port, path = "/" .. rest .. (q and ("?" .. q) or "") }
end
app:route("*", "/user-app/*rest", user_app)

lifecycle.start()

return app
