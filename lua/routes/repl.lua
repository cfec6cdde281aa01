-- routes.repl: the REPL routes of the frontend contract (../shared/DESIGN.md,
-- "REST API"), the runner's callbacks, and /ping.
local auth = require("middleware.auth")
local ratelimit = require("middleware.ratelimit")
local service = require("repl.service")
local tasks = require("devex.tasks")
local json = require("devex.json")
local log = require("devex.log")
local timer = require("devex.timer")
local app_errors = require("devex.app") -- reply/fail: a returned error as its HTTP answer
local reply, fail = app_errors.reply, app_errors.fail

-- The runner token: "Authorization: Bearer <token>".
local function runner_token(req)
  local h = req.headers["authorization"]
  return h and h:match("^[Bb]earer%s+(%S+)$")
end

-- (a store that cannot be read answers 503: never 401 or 404 for a session
-- that may well exist)
local function runner(req, next)
  local ok, err = service.check_runner(req.params.id, runner_token(req))
  if ok == nil then return fail(err) end
  if not ok then return 401, { error = "unauthorized" } end
  return next(req)
end

return function(app)
  require("routes.gateway").register(app) -- /repl/<replId>/... and the runner domain

  app:get("/api/repl", auth, function(req)
    return reply(service.list(req.user))
  end)
  -- the Go service's own path (it redirected /api/repl here): the same answer
  app:get("/api/repl/", auth, function(req)
    return reply(service.list(req.user))
  end)

  app:post("/api/repl/new", auth, ratelimit.per_user("create"), function(req)
    local repl, err = service.create(req.user, req:json())
    if not repl then return fail(err) end
    return 201, repl
  end)

  -- answered later (devex.app.later): a start parked waiting for its
  -- workload keeps no request coroutine with the middleware's frames
  app:get("/api/repl/session/:id", auth, ratelimit.per_user("start"), function(req)
    local meta, err = service.owned(req.user, req.params.id)
    if not meta then return fail(err) end
    -- (all tail calls down to the driver: the start may park, see devex.stream.park)
    return app_errors.later(req, function() return service.start_owned(meta, true) end, reply)
  end)

  -- the session's lifecycle as Server-Sent Events (repl.events)
  app:get("/api/repl/session/:id/events", auth, function(req)
    return require("repl.events").handler(req)
  end)

  app:delete("/api/repl/session/:id", auth, ratelimit.per_user("stop"), function(req)
    local ok, err = service.stop(req.user, req.params.id)
    if not ok then return fail(err) end
    return 200, { message = "Session stopped" }
  end)

  -- when the session will be stopped and why; a keepalive postpones an idle stop (repl.culling)
  app:get("/api/repl/:id/activity", auth, function(req)
    local meta, e = service.owned(req.user, req.params.id)
    if not meta then return fail(e) end
    return reply(require("repl.culling").info(meta))
  end)

  app:post("/api/repl/:id/keepalive", auth, function(req)
    local meta, e = service.owned(req.user, req.params.id)
    if not meta then return fail(e) end
    return reply(require("repl.culling").keepalive(meta))
  end)

  app:delete("/api/repl/:id", auth, function(req)
    local ok, err = service.delete(req.user, req.params.id)
    if not ok then return fail(err) end
    return 200, { message = "Repl deleted" }
  end)

  -- the runner ends its own session when idle (token of that session only)
  app:delete("/api/runner/:id", runner, function(req)
    local ok, err = service.runner_stop(req.params.id)
    if not ok then return fail(err) end
    return 200, { message = "Session stopped" }
  end)

  app:post("/api/runner/:id/heartbeat", runner, function(req)
    local ok, err = service.heartbeat(req.params.id)
    if not ok then return fail(err) end
    return 200, { ok = true }
  end)

  -- /ping: Redis, storage and the runtime, checked in parallel (each with a
  -- short timeout) at most once per PING_CACHE seconds per worker; everyone
  -- gets only "ok" or "degraded" per dependency (an upstream's error names
  -- internal hosts: it goes to the log), and requests are rate-limited per
  -- client address (policy.limits.ping)
  local PING_CACHE = 5
  local NAMES = { "redis", "s3", "k8s" }
  local checks = {
    redis = function()
      local r, err = require("services.redis").client()
      if not r then return tostring(err) end
      local pong
      pong, err = r:call("PING")
      return pong == "PONG" and "ok" or tostring(err)
    end,
    s3 = function()
      local s, err = require("storage").open()
      if not s then return tostring(err) end
      local ok
      ok, err = s:head_bucket()
      return ok and "ok" or tostring(err)
    end,
    k8s = function()
      local ok, driver = pcall(require("runtime").driver)
      if not ok then return tostring(driver) end
      if not driver.ping then return "the " .. tostring(driver.name) .. " runtime has no check" end
      local res, err = driver:ping()
      return res and "ok" or tostring(err)
    end,
  }
  local fns = {}
  for i, n in ipairs(NAMES) do fns[i] = checks[n] end
  local cached, cached_at, refreshing = nil, -math.huge, false

  local function check_all()
    local results = tasks.all(fns)
    -- runtime: which driver the "k8s" entry checked (the frontend's key
    -- stays): "kubernetes" (the API server answers) or "local" (the
    -- workspace directory can be written)
    local dok, drv = pcall(require("runtime").driver)
    local body, failed = { api = "ok", runtime = dok and drv.name or "unavailable" }, {}
    for i, n in ipairs(NAMES) do
      local r = results[i]
      local detail = r[1] and r[2] or ("error: " .. tostring(r[2]))
      body[n] = detail == "ok" and "ok" or "degraded"
      if detail ~= "ok" then
        body.api = "degraded"
        failed[n] = detail
      end
    end
    if body.api ~= "ok" then log.warn("ping: dependency degraded", failed) end
    return json.frozen(body)
  end

  app:get("/ping", ratelimit.per_address("ping"), function()
    local now = timer.now()
    -- while one request refreshes, the others get the previous answer
    if cached and (now - cached_at < PING_CACHE or refreshing) then return 200, cached end
    refreshing = true
    local ok, body = pcall(check_all)
    refreshing = false
    if not ok then error(body, 0) end
    cached, cached_at = body, timer.now()
    return 200, body -- the frontend reads the body; `api` says degraded
  end)
end
