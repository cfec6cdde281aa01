-- repl.activity: traffic through the runner gateway marks a session active.
-- Every proxied request marks its REPL here (a table of this worker); bytes
-- inside a WebSocket tunnel are counted by the C core (devex.proxy
-- tunnel_activity). Every policy.cleanup.activity_interval seconds each
-- worker writes what it saw to Redis in one script call that updates a
-- session only when its recorded activity is older than the interval, so
-- Redis sees at most one write per session per interval, however many
-- requests or frames moved. The sweep's idle decision reads the same sorted
-- set that runner heartbeats update.
--
-- What counts is the policy's: every signal (gateway request, WebSocket
-- bytes, heartbeat, keepalive) goes through policy.cleanup.counts_as_activity
-- first, and the kind of the last one that counted is kept beside the time
-- (last_signal in the REPL's hash) so GET /api/repl/<id>/activity can say
-- which signal keeps a session alive.
local policy = require("policy")
local proxy = require("devex.proxy")
local redis = require("services.redis")
local store = require("repl.store")
local log = require("devex.log")

local M = {}

local seen = {} -- replId -> the kind of the last signal that counted, since the last flush

-- counts(signal) -> boolean: policy.cleanup.counts_as_activity, where a
-- policy error counts the signal (a broken policy must not cull busy sessions).
function M.counts(signal)
  local f = policy.cleanup.counts_as_activity
  if f == nil then return true end
  local ok, res = pcall(f, signal)
  if not ok then
    log.warn("policy: cleanup.counts_as_activity failed; the signal counts", { error = tostring(res), kind = signal.kind })
    return true
  end
  return res and true or false
end

-- mark(id, signal): a signal seen by this worker, written at the next flush.
function M.mark(id, signal)
  signal = signal or { kind = "http" }
  signal.repl = id
  if M.counts(signal) then seen[id] = signal.kind end
end

-- Only when the recorded activity is older than ARGV[2] seconds; XX: a
-- session that ended meanwhile is not brought back.
-- ARGV: now, gap, then pairs of replId, signal kind.
local TOUCH = [[
local n = 0
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local score = tonumber(redis.call('ZSCORE', KEYS[1], id))
  if score and score <= tonumber(ARGV[1]) - tonumber(ARGV[2]) then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[1], id)
    redis.call('HSET', KEYS[2] .. id, 'last_active', ARGV[1], 'last_signal', ARGV[i + 1])
    n = n + 1
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
  for _, id in ipairs(proxy.tunnel_activity()) do
    if not seen[id] then M.mark(id, { kind = "websocket" }) end
  end
  local args = {}
  for id, kind in pairs(seen) do args[#args + 1] = id; args[#args + 1] = kind end
  if #args == 0 then return 0 end
  local r, err = redis.client()
  if not r then return nil, err end
  -- a little under the interval, so that two flushes a full interval apart always write
  local gap = math.max(0, math.floor(M.interval() * 0.9))
  local res
  res, err = r:eval(TOUCH, { store.activity_key(), store.meta_key("") }, now or os.time(), gap, table.unpack(args))
  if res == nil then
    log.warn("activity: could not record gateway traffic", { error = tostring(err), sessions = #args // 2 })
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
