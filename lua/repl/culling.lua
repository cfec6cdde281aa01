-- repl.culling: when a running session will be stopped and why (issue #18,
-- item 4): GET /api/repl/<id>/activity, POST /api/repl/<id>/keepalive, and
-- the `warning` events the sweep leader sends before an idle or lifetime
-- stop.
--
-- Knobs (policy.cleanup, beside idle_limit and max_lifetime):
--   warning_lead   seconds before a stop that the `warning` event goes out (300)
--   keepalive_max  keepalives a session may use (12): each counts as activity
--                  (it postpones an idle stop by up to idle_limit), so with the
--                  defaults a user who only answers warnings keeps a session
--                  at most 12 x 30 min past its last real activity; never past
--                  max_lifetime, which no activity moves.
-- Signals: the recorded activity (sessions:activity) is what
-- policy.cleanup.counts_as_activity let through of gateway requests
-- ("http"), bytes inside proxied WebSockets ("websocket"), runner heartbeats
-- ("heartbeat") and keepalives ("keepalive"); the kind of the last one is
-- kept with it (last_signal), "start" until the first.
local policy = require("policy")
local rds = require("services.redis")
local store = require("repl.store")
local events = require("repl.events")
local activity = require("repl.activity")
local log = require("devex.log")

local M = {}

local function knobs()
  local c = policy.cleanup
  return tonumber(c.idle_limit) or 1800, tonumber(c.max_lifetime) or 28800,
    tonumber(c.warning_lead) or 300, math.tointeger(c.keepalive_max) or 12
end

-- The stop times of a running session: { idle_at, lifetime_at, at, reason }
local function deadlines(last_active, started_at)
  local idle_limit, max_lifetime = knobs()
  local idle_at = last_active and (last_active + idle_limit) or nil
  local lifetime_at = started_at and (started_at + max_lifetime) or nil
  local at, reason = idle_at, "idle"
  if lifetime_at and (not at or lifetime_at <= at) then at, reason = lifetime_at, "lifetime" end
  return idle_at, lifetime_at, at, reason
end

local function unavailable(err)
  return nil, require("devex.error").http(503, "store unavailable: " .. tostring(err))
end

-- last_active_of(id) -> seconds | false (not in the index) | nil, err
local function last_active_of(id)
  local r, err = rds.client()
  if not r then return nil, err end
  local v
  v, err = r:call("ZSCORE", store.activity_key(), id)
  if v == nil then return nil, err end
  return tonumber(v) or false
end

-- info(meta, now) -> the activity answer | nil, err (a 503 devex.error: a
-- failed read is not "no deadline")
function M.info(meta, now)
  now = now or os.time()
  local idle_limit, max_lifetime, lead, kmax = knobs()
  local out = { replId = meta.id, state = meta.state, running = meta.state == "running",
                idleLimit = idle_limit, maxLifetime = max_lifetime, warningLead = lead, keepaliveMax = kmax }
  if meta.state ~= "running" then return out end
  local sess, err = store.get_session(meta.id)
  if sess == nil then return unavailable(err) end
  sess = sess or {}
  local started = tonumber(sess.started_at)
  local last
  last, err = last_active_of(meta.id)
  if last == nil then return unavailable(err) end
  last = last or nil
  local idle_at, lifetime_at, at, reason = deadlines(last, started)
  out.startedAt, out.lastActivityAt = started, last
  out.idleSince = last
  out.idleSeconds = last and math.max(0, now - last) or nil
  out.idleStopAt, out.lifetimeStopAt = idle_at, lifetime_at
  out.stopAt, out.stopReason = at, reason
  out.stopIn = at and math.max(0, at - now) or nil
  out.keepalivesUsed = tonumber(sess.keepalives) or 0
  out.lastSignal = last and (meta.last_signal or "activity") or nil
  return out
end

-- One script: a keepalive that races the stop of its session (the warning
-- prompts a click just as the sweep stops it) must not write into the
-- session's deleted key, which would make a partial session that counts
-- against sessions_per_user with no expiry. -1: no session; -2: over the
-- limit; else the keepalives used.
local KEEPALIVE = [[
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local used = tonumber(redis.call('HGET', KEYS[1], 'keepalives') or '0') + 1
if used > tonumber(ARGV[1]) then return -2 end
redis.call('HSET', KEYS[1], 'keepalives', used, 'last_keepalive', ARGV[2])
return used
]]

-- keepalive(meta) -> info | nil, err (a devex.error with the HTTP status)
function M.keepalive(meta, now)
  local derror = require("devex.error")
  now = now or os.time()
  if meta.state ~= "running" then return nil, derror.http(409, "repl is not running") end
  local _, _, _, kmax = knobs()
  local r, err = rds.client()
  if not r then return nil, derror.http(503, "store unavailable: " .. tostring(err)) end
  local used
  used, err = r:eval(KEEPALIVE, { store.session_key(meta.id) }, kmax, now)
  if used == nil then return nil, derror.http(503, "store unavailable: " .. tostring(err)) end
  if used == -1 then return nil, derror.http(409, "repl is not running") end
  if used == -2 then
    return nil, derror.http(429, "keepalive limit reached", { code = "keepalive_limit", limit = kmax })
  end
  if activity.counts({ kind = "keepalive", repl = meta.id }) then
    store.touch(meta.id, now, "keepalive")
    meta.last_signal = "keepalive"
  end
  return M.info(meta, now)
end

-- due_ids(now, limit) -> the ids of the sessions whose idle or lifetime stop
-- falls within warning_lead from now, from the indexes (sessions:activity
-- by last activity, sessions:started by start), at most `limit` of each:
-- the sweep reads only these REPLs for warn(), not every running one.
function M.due_ids(now, limit)
  local idle_limit, max_lifetime, lead = knobs()
  if lead <= 0 then return {} end
  local r = rds.client()
  if not r then return {} end
  local out, seen = {}, {}
  for _, ix in ipairs({ { store.activity_key(), idle_limit }, { store.started_key(), max_lifetime } }) do
    -- a stop at t + span is in (now, now + lead] when t is in (now - span, now - span + lead]
    local from = now - ix[2]
    local res = r:call("ZRANGEBYSCORE", ix[1], "(" .. from, from + lead, "LIMIT", 0, limit or 1000)
    for _, id in ipairs(type(res) == "table" and res or {}) do
      if not seen[id] then
        seen[id] = true
        out[#out + 1] = id
      end
    end
  end
  return out
end

-- warn(now, metas): the sweep leader's call (metas: those of due_ids). Sends `warning` (reason, stopAt,
-- in) once per deadline for every running session within warning_lead of
-- its stop.
function M.warn(now, metas)
  now = now or os.time()
  local _, _, lead = knobs()
  if lead <= 0 then return 0 end
  local r = rds.client()
  if not r then return 0 end
  local n = 0
  for _, m in ipairs(metas or {}) do
    if m.state == "running" then
      local sess = store.get_session(m.id) or {}
      local _, _, at, reason = deadlines(last_active_of(m.id), tonumber(sess.started_at))
      if at and at > now and at - now <= lead then
        local k = rds.key("cullWarned", m.id, tostring(at))
        local fresh = r:call("SET", k, "1", "NX", "EX", math.ceil(lead * 2 + 60))
        if fresh then
          events.emit(m.id, "warning", { reason = reason, stopAt = at, ["in"] = at - now,
            message = events.sentence("warning_" .. reason, at - now) })
          n = n + 1
        end
      end
    end
  end
  if n > 0 then log.info("sweep: stop warnings sent", { sessions = n }) end
  return n
end

return M
