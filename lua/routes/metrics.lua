-- routes.metrics: GET /metrics in the Prometheus text format (0.0.4), and the
-- global middleware that gives each request its route label.
--
-- The numbers live in C (src/metrics.c, devex.metrics), process-wide across
-- worker threads. Requests are counted by the matched route *pattern*
-- (/api/repl/session/:id), "unmatched" for the router's 404/405. REPLs by
-- state (devex_repl_sessions) are read from Redis at scrape time (SCAN of
-- replMeta:*), so every replica reports the same cluster-wide numbers.
--
-- Access: only client addresses in config `metrics = { allow = {...} }`
-- (exact addresses; default loopback: 127.0.0.1 and ::1); everyone else gets
-- the router's 404, so the endpoint is invisible from outside.
local metrics = require("devex.metrics")
local log = require("devex.log")
local config = require("devex.config").get()

local STATES = { "created", "starting", "running", "stopping", "stopped", "deleting", "failed" }

local function allowlist()
  local conf = config.metrics or {}
  local allow = conf.allow or { "127.0.0.1", "::1" }
  if type(allow) ~= "table" then error("metrics.allow: expected a list of client addresses", 0) end
  local set = {}
  for i, a in ipairs(allow) do
    if type(a) ~= "string" then error(string.format("metrics.allow[%d]: expected a string", i), 0) end
    set[a] = true
  end
  for k in pairs(conf) do
    if k ~= "allow" then error("metrics." .. tostring(k) .. ": unknown setting", 0) end
  end
  return set
end

-- counts every REPL by state, in batches (SCAN, then one script per batch)
local STATES_OF = [[
local out = {}
for i, k in ipairs(KEYS) do out[i] = redis.call('HGET', k, 'state') or '' end
return out
]]

local function repl_states()
  local redis = require("services.redis")
  local r, err = redis.client()
  if not r then return nil, err end
  local counts, cursor, seen = {}, "0", 0
  repeat
    local res
    res, err = r:call("SCAN", cursor, "MATCH", redis.key("replMeta", "*"), "COUNT", 1000)
    if not res then return nil, err end
    cursor = res[1]
    if #res[2] > 0 then
      local states
      states, err = r:eval(STATES_OF, res[2])
      if not states then return nil, err end
      for _, s in ipairs(states) do
        if s ~= "" then counts[s] = (counts[s] or 0) + 1 end
      end
    end
    seen = seen + #res[2]
  until cursor == "0" or seen > 1000000
  return counts
end

local known = {}
for _, s in ipairs(STATES) do known[s] = true end

local function scrape()
  local counts, err = repl_states()
  if counts then
    local other = 0
    for s, n in pairs(counts) do if not known[s] then other = other + n end end
    for _, s in ipairs(STATES) do metrics.gauge("devex_repl_sessions", { state = s }, counts[s] or 0) end
    metrics.gauge("devex_repl_sessions", { state = "other" }, other)
  else
    log.warn("metrics: cannot read REPL states from Redis", { error = tostring(err) })
  end
  return metrics.render()
end

return function(app)
  local allow = allowlist()
  app:get("/metrics", function(req)
    local addr = req.raw:remote_addr() or ""
    addr = addr:gsub("^::ffff:(%d+%.%d+%.%d+%.%d+)$", "%1") -- an IPv4 client on a dual-stack socket
    if not allow[addr] then return 404, { error = "not found" } end
    return 200, scrape(), { ["Content-Type"] = metrics.content_type, ["Cache-Control"] = "no-store" }
  end)
end
