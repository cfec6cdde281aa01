-- repl.sweep: the background job that keeps intent (Redis) and reality (the
-- runtime) together. One devexd replica sweeps at a time: the holder of a
-- Redis lock with an expiry (SET NX PX), renewed by each run, so if the
-- holder dies another replica takes over within the lock's expiry. A run:
--   1. stops sessions idle past policy.cleanup.idle_limit (no heartbeat or
--      request) or older than max_lifetime;
--   2. retries REPLs stuck in a transition past stuck_after, as a crash of
--      devexd (or of Redis or S3) in the middle of an operation leaves them
--      (tests/integration/test_crash_injection.py):
--        stopping: stop again, which saves first; after policy.sync.max_attempts
--          failed saves the REPL is flagged save_failed (reason in save_error,
--          metric devex_repl_save_failed) and left to the operator
--          (`devexd repl stuck`, `devexd repl resolve`), not retried for ever;
--        starting: remove what the start made and go back to "created";
--        creating: the template copy was cut short: remove its objects and
--          the REPL (its quota slot with it), as a failed create does;
--        deleting: finish the delete (the files, then the REPL);
--   3. asks the runtime to remove labelled workloads that no session owns,
--      older than orphan_grace (driver:orphans / driver:remove_orphan).
-- Every action is logged and counted in the run's report.
local crypto = require("devex.crypto")
local log = require("devex.log")
local policy = require("policy")
local redis = require("services.redis")
local store = require("repl.store")
local sessions = require("repl.sessions")

local M = {}

local LOCK = "sweep:lock"
local token = crypto.b64url(crypto.random_bytes(16))

local RELEASE = [[
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
]]
local RENEW = [[
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
local ok = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
if ok then return 1 end
return 0
]]

-- Takes or renews the lock; true when this replica is the sweeper.
function M.lead(ttl_ms)
  local r = redis.client()
  if not r then return false end
  local res = r:eval(RENEW, { redis.key(LOCK) }, token, ttl_ms)
  return res == 1
end

function M.release()
  local r = redis.client()
  if r then r:eval(RELEASE, { redis.key(LOCK) }, token) end
end

local function all_repl_ids(r)
  local ids, cursor = {}, "0"
  repeat
    local res = r:call("SCAN", cursor, "MATCH", redis.key("replMeta", "*"), "COUNT", 500)
    if not res then return nil end
    cursor = res[1]
    local plen = #redis.key("replMeta", "")
    for _, k in ipairs(res[2]) do ids[#ids + 1] = k:sub(plen + 1) end
  until cursor == "0"
  return ids
end

-- Save failures of a stop (repl.sessions.stop records each): counted in the
-- REPL's meta; at policy.sync.max_attempts the REPL is flagged save_failed.
local NOTE_FAILURE = [[
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local n = redis.call('HINCRBY', KEYS[1], 'save_failures', 1)
redis.call('HSET', KEYS[1], 'save_error', ARGV[1])
if n >= tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], 'save_failed', '1') end
return n
]]
function M.save_failed(id, why)
  local r = redis.client()
  if not r then return nil end
  local max = math.tointeger(policy.sync.max_attempts) or 3
  local n = r:eval(NOTE_FAILURE, { store.meta_key(id) }, tostring(why):sub(1, 500), max)
  require("devex.metrics").counter("devex_repl_save_failures_total")
  if n == max then
    log.error("repl stop: the files could not be saved after " .. max .. " attempts; the sweep no longer retries"
      .. " (devexd repl resolve)", { repl = id, error = tostring(why) })
  end
  return n
end

-- A save succeeded (or the operator resolved the REPL): the count starts over.
function M.save_ok(id)
  local r = redis.client()
  if r then r:call("HDEL", store.meta_key(id), "save_failures", "save_error", "save_failed") end
end

local function errmsg(err)
  if type(err) == "table" then
    return tostring(err.body and err.body.error or err.message or err.error or "error")
  end
  return tostring(err)
end

-- Finishes a create or delete cut short: the REPL's files, then the REPL.
local function drop_repl(m)
  local s, err = require("storage").open()
  if not s then return nil, err end
  local prefix = (m.prefix ~= nil and m.prefix ~= "") and m.prefix or nil
  if prefix then
    local res
    res, err = s:delete_prefix(prefix)
    if not res then return nil, err end
    if #res.failures > 0 then return nil, res.failures[1].error end
  end
  store.end_session(m.id)
  return store.remove(m.user, m.id)
end

function M.run(now)
  now = now or os.time()
  local c = policy.cleanup
  local report = { idle = 0, expired = 0, retried = 0, orphans = 0, errors = 0 }
  local r = redis.client()
  if not r then return report end
  -- 1. idle and expired sessions
  local idle = store.idle_sessions(now - c.idle_limit, 100) or {}
  local seen = {}
  for _, id in ipairs(idle) do seen[id] = "idle" end
  local ids = all_repl_ids(r) or {}
  local metas = {}
  for _, id in ipairs(ids) do
    local m = store.get(id)
    if m then
      metas[#metas + 1] = m
      if m.state == "running" and not seen[id] then
        local sess = store.get_session(id)
        if sess and tonumber(sess.started_at) and now - tonumber(sess.started_at) > c.max_lifetime then
          seen[id] = "expired"
        end
      end
    end
  end
  pcall(require("repl.culling").warn, now, metas) -- `warning` events before a stop (issue #18)
  -- sessions whose process is gone (the local runtime after a restart)
  local dok, drv = pcall(require("runtime").driver)
  if not dok then drv = nil end
  if drv and drv.alive then
    for _, m in ipairs(metas) do
      if m.state == "running" and not seen[m.id] then
        local sess = store.get_session(m.id)
        if not sess or not drv:alive(m, sess) then
          if drv:recover(m) then
            report.recovered = (report.recovered or 0) + 1
            log.info("sweep recovered a session whose runner is gone", { repl = m.id })
          else
            report.errors = report.errors + 1
          end
        end
      end
    end
  end
  for id, why in pairs(seen) do
    local m = store.get(id)
    -- the log says "lifetime" as GET /api/repl/<id>/activity's stopReason does
    local reason = why == "expired" and "lifetime" or why
    if m and m.state == "running" then
      local ok, err = sessions.stop(m)
      if ok then
        report[why] = report[why] + 1
        log.info("sweep stopped a session", { repl = id, reason = reason })
      else
        report.errors = report.errors + 1
        log.warn("sweep could not stop a session", { repl = id, reason = reason, error = err and err.body and err.body.error })
      end
    elseif m == false then
      store.end_session(id) -- activity entry of a REPL that no longer exists
    end
  end
  -- 2. stuck transitions
  local flagged = 0
  for _, m in ipairs(metas) do
    local since = tonumber(m.state_since or m.last_active or 0) or 0
    if m.state == "stopping" and m.save_failed == "1" then
      flagged = flagged + 1 -- the operator's: devexd repl resolve
    elseif (m.state == "stopping" or m.state == "starting" or m.state == "creating" or m.state == "deleting")
        and now - since > c.stuck_after then
      local ok, err
      if m.state == "stopping" then
        ok, err = sessions.stop(m)
      elseif m.state == "creating" or m.state == "deleting" then
        ok, err = drop_repl(m)
      else
        if drv then drv:remove(m) end
        store.end_session(m.id)
        ok = store.transition(m.id, "created", { "starting" })
      end
      if ok then
        report.retried = report.retried + 1
        log.info("sweep repaired a stuck repl", { repl = m.id, state = m.state })
      else
        report.errors = report.errors + 1
        log.warn("sweep could not repair a stuck repl", { repl = m.id, state = m.state, error = errmsg(err) })
      end
    end
  end
  report.save_failed = flagged
  require("devex.metrics").gauge("devex_repl_save_failed", nil, flagged)
  -- 3. workloads no session owns (orphans), and running REPLs whose workload
  -- is gone (deleted by hand, or a start whose "running" was written while
  -- devexd lost the reply and removed the workload): one listing for both
  if drv and drv.orphans then
    local listed_at = os.time()
    local list = drv:orphans(0)
    if list then
      local has = {}
      for _, o in ipairs(list) do
        has[o.repl] = true
        local orphan = false
        if (o.age or c.orphan_grace) >= c.orphan_grace then
          local m = store.get(o.repl)
          -- m == nil: Redis did not answer (restarting); a failed read never
          -- makes a live session's workload an orphan
          orphan = m == false or (m ~= nil and m.state ~= "running" and m.state ~= "starting" and m.state ~= "stopping")
        end
        if orphan then
          local removed = drv:remove_orphan(o)
          if removed then
            report.orphans = report.orphans + 1
            log.info("sweep removed an orphan workload", { repl = o.repl, name = o.name })
          else
            report.errors = report.errors + 1
          end
        end
      end
      for _, m in ipairs(metas) do
        if m.state == "running" and not has[m.id] then
          -- read again: only a REPL that was already running when the list
          -- was made (a start marks "running" after its workload exists)
          local fresh = store.get(m.id)
          local since = fresh and tonumber(fresh.state_since or 0) or 0
          if fresh and fresh.state == "running" and since < listed_at - 1
              and store.transition(m.id, "stopped", { "running" }) then
            store.end_session(m.id)
            report.lost = (report.lost or 0) + 1
            log.warn("sweep: a running session's workload is gone; the REPL is stopped", { repl = m.id })
          end
        end
      end
    end
  end
  return report
end

-- Starts the periodic sweep on this worker (called once per worker; the lock
-- makes one replica, and in it one worker, do the work).
function M.start()
  local timer = require("devex.timer")
  local interval = policy.cleanup.sweep_interval
  local ttl_ms = math.floor(interval * 3 * 1000)
  return timer.every(interval, function()
    if not M.lead(ttl_ms) then return end
    -- metrics: runs, actions, and an error (re-raised with its traceback)
    local metrics = require("devex.metrics")
    local ok, report = xpcall(M.run, debug.traceback)
    if not ok then
      metrics.counter("devex_sweep_runs_total", { result = "error" })
      metrics.counter("devex_lua_errors_total", { where = "sweep" })
      error(report, 0)
    end
    metrics.counter("devex_sweep_runs_total", { result = "ok" })
    for action, n in pairs(report) do
      -- save_failed is a count of flagged REPLs (the gauge), not an action
      if action ~= "save_failed" and math.type(n) == "integer" and n > 0 then metrics.counter("devex_sweep_actions_total", { action = action }, n) end
    end
    log.info("sweep", report)
  end)
end

return M
