-- runner.app: `devexd runner`, the workspace agent (README "Runner agent").
-- GET /ping for readiness, the IDE page's protocol on the WebSocket at
-- /api/v1/repl/ws (runner.protocol), and /user-app/[PORT/]... proxied to the
-- user's own program on this machine.
local app = require("devex.app").new()
local proxy = require("devex.proxy")
local settings = require("runner.settings")
local protocol = require("runner.protocol")
local lifecycle = require("runner.lifecycle")
local restore = require("runner.restore")
local checkpoint = require("runner.checkpoint")

local conf = settings.get() -- a malformed setting stops the agent here

-- ready only once the workspace is restored (runner.restore)
app:get("/ping", function()
  local phase, why = restore.state()
  if phase ~= "done" then
    return 503, { error = phase == "failed" and ("restore failed: " .. tostring(why)) or "restoring the workspace" }
  end
  return 200, '"pong"\n', { ["content-type"] = "application/json" }
end)

-- devexd's stop asks for the final checkpoint here and deletes the workload
-- (or the workspace) only after a 200: a stop is complete when the last
-- checkpoint is confirmed. Authorization: Bearer RUNNER_TOKEN, or the
-- token's SHA-256 hex, which is all devexd keeps of it (the session's
-- token_hash): that proves devexd's session store, and the route can only
-- save the workspace to the REPL's own storage through devexd.
app:post("/api/v1/checkpoint", function(req)
  local crypto = require("devex.crypto")
  local h = req.headers["authorization"]
  local token = h and h:match("^[Bb]earer%s+(%S+)$")
  if not conf.token or not token or not (crypto.equal(token, conf.token)
      or crypto.equal(token, crypto.sha256_hex(conf.token))) then
    return 401, { error = "unauthorized" }
  end
  local report, err = checkpoint.run{ final = true }
  if not report then return 503, { error = "checkpoint failed: " .. tostring(err) } end
  local skipped = require("devex.json").array()
  for i, k in ipairs(report.skipped) do skipped[i] = k end
  return 200, { files = report.files, uploaded = report.uploaded, deleted = report.deleted,
                lastSavedAt = report.lastSavedAt, skipped = skipped }
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
restore.start() -- then the checkpoints (runner.checkpoint)

return app
