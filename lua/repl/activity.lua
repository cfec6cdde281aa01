-- repl.activity: traffic through the runner gateway marks a session active.
-- Every proxied request marks its REPL here (a table of this worker); bytes
-- inside a WebSocket tunnel are counted by the C core (devex.proxy
-- tunnel_activity). Every policy.cleanup.activity_interval seconds each
-- worker writes what it saw to Redis in one script call that updates a
-- session only when its recorded activity is older than the interval, so
-- Redis sees at most one write per session per interval, however many
-- requests or frames moved. The sweep's idle decision reads the same sorted
-- set that runner heartbeats update.
local policy = require("policy")
local proxy = require("devex.proxy")
local redis = require("services.redis")
local store = require("repl.store")
local log = require("devex.log")

local M = {}

local seen = {} -- replId -> true, since the last flush

function M.mark(id) seen[id] = true end

-- Only when the recorded activity is older than ARGV[2] seconds; XX: a
-- session that ended meanwhile is not brought back.
local TOUCH = [[
local n = 0
for i, id in ipairs(ARGV) do
  if i > 2 then
    local score = tonumber(redis.call('ZSCORE', KEYS[1], id))
    if score and score <= tonumber(ARGV[1]) - tonumber(ARGV[2]) then
      redis.call('ZADD', KEYS[1], 'XX', ARGV[1], id)
      redis.call('HSET', KEYS[2] .. id, 'last_active', ARGV[1])
      n = n + 1
    end
  end
end
return n
]]

function M.interval()
  return tonumber(policy.cleanup.activity_interval) or 30
end

-- Writes what this worker saw since the last call; returns how many
-- sessions were updated (nil, err when Redis is down: kept for next time).
function M.flush(now)
  for _, id in ipairs(proxy.tunnel_activity()) do seen[id] = true end
  local ids = {}
  for id in pairs(seen) do ids[#ids + 1] = id end
  if #ids == 0 then return 0 end
  local r, err = redis.client()
  if not r then return nil, err end
  -- a little under the interval, so that two flushes a full interval apart always write
  local gap = math.max(0, math.floor(M.interval() * 0.9))
  local res
  res, err = r:eval(TOUCH, { store.activity_key(), store.meta_key("") }, now or os.time(), gap, table.unpack(ids))
  if res == nil then
    log.warn("activity: could not record gateway traffic", { error = tostring(err), sessions = #ids })
    return nil, err
  end
  seen = {}
  return res
end

-- Starts this worker's flush timer (once per worker, from app.lua).
function M.start()
  local timer = require("devex.timer")
  return timer.every(M.interval(), function() M.flush() end)
end

return M
