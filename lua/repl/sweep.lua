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
--        starting: remove what the start made and go back to "created"
--          (only once the start's own deadline, workload.start_timeout, is
--          past too: until then a live start ends the transition itself);
--        creating: the template copy was cut short: remove its objects and
--          the REPL (its quota slot with it), as a failed create does;
--        deleting: finish the delete (the files, then the REPL);
--   3. asks the runtime to remove labelled workloads that no session owns,
--      older than orphan_grace (driver:orphans / driver:remove_orphan).
-- Every action is logged and counted in the run's report. Each step reads
-- only what is due, from the indexes repl.store keeps (see M.run), so a
-- run's cost follows the due sessions and REPLs, not all of them.
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

-- Save failures of a stop (repl.sessions.stop records each): counted in the
-- REPL's meta; at policy.sync.max_attempts the REPL is flagged save_failed.
-- KEYS: replMeta, store.index_keys (the flag is indexed in replIdx:saveFailed).
-- ARGV: the error, max_attempts, id.
local NOTE_FAILURE = store.REINDEX_LUA .. [[
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local n = redis.call('HINCRBY', KEYS[1], 'save_failures', 1)
redis.call('HSET', KEYS[1], 'save_error', ARGV[1])
if n >= tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], 'save_failed', '1') end
reindex(KEYS[1], ARGV[3], KEYS[2], KEYS[3], KEYS[4])
return n
]]
function M.save_failed(id, why)
  local r = redis.client()
  if not r then return nil end
  local max = math.tointeger(policy.sync.max_attempts) or 3
  local n = r:eval(NOTE_FAILURE, { store.meta_key(id), store.index_keys() }, tostring(why):sub(1, 500), max, id)
  require("devex.metrics").counter("devex_repl_save_failures_total")
  if n == max then
    log.error("repl stop: the files could not be saved after " .. max .. " attempts; the sweep no longer retries"
      .. " (devexd repl resolve)", { repl = id, error = tostring(why) })
  end
  return n
end

-- A save succeeded (or the operator resolved the REPL): the count starts over.
local SAVE_OK = store.REINDEX_LUA .. [[
redis.call('HDEL', KEYS[1], 'save_failures', 'save_error', 'save_failed')
reindex(KEYS[1], ARGV[1], KEYS[2], KEYS[3], KEYS[4])
return 1
]]
function M.save_ok(id)
  local r = redis.client()
  if r then r:eval(SAVE_OK, { store.meta_key(id), store.index_keys() }, id) end
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

-- At most this many entries of each index are taken per run (the rest the
-- next run); one run's cost is bounded whatever the backlog.
local BATCH = 1000

-- ids of sorted set k scored in [min, max], lowest first, at most BATCH
local function due(r, k, min, max)
  local res = r:call("ZRANGEBYSCORE", k, min, max, "LIMIT", 0, BATCH)
  return type(res) == "table" and res or {}
end

-- every id of sorted set k (the running and transitional REPLs: the
-- comparisons with the runtime need all of them, one command)
local function all_of(r, k)
  local res = r:call("ZRANGE", k, 0, -1)
  return type(res) == "table" and res or {}
end

-- a pipelined HGETALL's reply as a table; nil for an error reply
local function hash(flat)
  if type(flat) ~= "table" or flat.code ~= nil then return nil end
  if type(flat) ~= "table" then return nil end
  local t = {}
  for i = 1, #flat - 1, 2 do t[flat[i]] = flat[i + 1] end
  return t
end

-- One run reads only what is due, from the indexes repl.store keeps
-- (replIdx:transit, replIdx:running, replIdx:saveFailed, sessions:started,
-- sessions:activity): its cost grows with the sessions and REPLs that are
-- due, not with all REPLs. report.examined counts the REPL records it read,
-- report.sessions_read the session records (the local runtime's liveness
-- check reads every running session's, in one round trip). An index entry
-- found wrong (REPL gone, or no longer in that state) is repaired from the
-- REPL's record (report.healed).
function M.run(now)
  now = now or os.time()
  local c = policy.cleanup
  local report = { idle = 0, expired = 0, retried = 0, orphans = 0, errors = 0, examined = 0 }
  local r = redis.client()
  if not r then return report end
  -- 0. a deployment from before the indexes: build them once (SCAN)
  local built, berr = store.build_indexes()
  if built then
    report.indexed = built
    log.info("sweep: built the REPL indexes", { repls = built })
  elseif built == nil then
    report.errors = report.errors + 1
    log.warn("sweep: could not build the REPL indexes", { error = errmsg(berr) })
  end
  -- each REPL's record read at most once per run (false: gone)
  local metas = {}
  local function get(id)
    local m = metas[id]
    if m == nil then
      m = store.get(id)
      if m == nil then return nil end -- Redis did not answer: not "gone"
      report.examined = report.examined + 1
      metas[id] = m
    end
    return m
  end
  local heal = {}
  -- 1. idle and expired sessions
  local seen = {}
  for _, id in ipairs(store.idle_sessions(now - c.idle_limit, 100) or {}) do seen[id] = "idle" end
  for _, id in ipairs(due(r, store.started_key(), "-inf", "(" .. (now - c.max_lifetime))) do
    if not seen[id] then
      local m = get(id)
      if m == false then
        seen[id] = "expired" -- ended below: the session of a REPL that no longer exists
      elseif m and m.state == "running" then
        local sess = store.get_session(id)
        if sess and tonumber(sess.started_at) and now - tonumber(sess.started_at) > c.max_lifetime then
          seen[id] = "expired"
        elseif sess == false then
          heal[#heal + 1] = id -- no session: the entry goes
        end
      elseif m and m.state ~= "running" then
        -- not running (any more): the entry goes unless a session is left
        -- (a stop whose save failed keeps it), so such entries do not pile
        -- up at the head of the index in front of sessions that are due
        heal[#heal + 1] = id
      end
    end
  end
  -- `warning` events before a stop (issue #18): the sessions within
  -- warning_lead of a stop, from the same indexes
  local culling = require("repl.culling")
  local wmetas = {}
  for _, id in ipairs(culling.due_ids(now, BATCH)) do
    local m = get(id)
    if m then wmetas[#wmetas + 1] = m end
  end
  pcall(culling.warn, now, wmetas)
  -- sessions whose process is gone (the local runtime after a restart): the
  -- running REPLs from replIdx:running, their sessions in one pipeline
  local dok, drv = pcall(require("runtime").driver)
  if not dok then drv = nil end
  if drv and drv.alive then
    local running = all_of(r, store.running_key())
    local cmds = {}
    for i, id in ipairs(running) do cmds[i] = { "HGETALL", store.session_key(id) } end
    local sess_of = #cmds > 0 and r:pipeline(cmds) or {}
    report.sessions_read = #cmds
    for i, id in ipairs(running) do
      local sess = hash(sess_of[i])
      -- no reply or an error reply: unknown, never "gone"
      if not seen[id] and sess ~= nil and (not sess.started_at or not drv:alive({ id = id }, sess)) then
        local m = get(id)
        if m and m.state == "running" then
          if sessions.runner_gone(m) then -- (the REPL's state is repl.sessions')
            report.recovered = (report.recovered or 0) + 1
            log.info("sweep recovered a session whose runner is gone", { repl = id })
          else
            report.errors = report.errors + 1
          end
        elseif m ~= nil then
          heal[#heal + 1] = id -- gone, or no longer running
        end
      end
    end
  end
  for id, why in pairs(seen) do
    local m = get(id)
    -- the log says "lifetime" as GET /api/repl/<id>/activity's stopReason does
    local reason = why == "expired" and "lifetime" or why
    if m and m.state == "running" then
      local ok, err = sessions.stop(m)
      if ok then
        report[why] = report[why] + 1
        log.info("sweep stopped a session", { repl = id, reason = reason })
      else
        report.errors = report.errors + 1
        log.warn("sweep could not stop a session", { repl = id, reason = reason, error = errmsg(err) })
      end
    elseif m == false then
      store.end_session(id) -- activity entry of a REPL that no longer exists
    end
  end
  -- 2. stuck transitions: replIdx:transit up to now - stuck_after (a stop
  -- flagged save_failed is not in it: the operator's, devexd repl resolve)
  local start_window = math.max(c.stuck_after, sessions.start_deadline() + 5)
  local flagged = store.count_save_failed()
  flagged = math.tointeger(flagged) or 0
  for _, id in ipairs(due(r, store.transit_key(), "-inf", "(" .. (now - c.stuck_after))) do
    local m = get(id)
    local since = m and tonumber(m.state_since or m.last_active or 0) or 0
    if m == false or (m and (not store.TRANSIT_STATES[m.state] or m.save_failed == "1"
        or now - since <= c.stuck_after)) then
      heal[#heal + 1] = id -- gone, in another state, or its entry's time is stale
    elseif m and m.state == "starting" and now - since <= start_window then
      -- not stuck yet: a live start waits for its workload up to the
      -- policy's start_timeout and ends the transition itself (a shorter
      -- stuck_after would remove a workload that is still coming up)
      report.starting = (report.starting or 0) + 1
    elseif m then
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
      elseif m.state == "stopping" and sessions.stop_in_progress(err) then
        -- a stop longer than stuck_after, still at work (its lock is renewed): not stuck
        report.stopping = (report.stopping or 0) + 1
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
  -- devexd lost the reply and removed the workload): one listing for both,
  -- compared with replIdx:running and replIdx:transit; only the REPLs that
  -- differ are read
  if drv and drv.orphans then
    local listed_at = os.time()
    local list = drv:orphans(0)
    if list then
      local live, has = {}, {}
      local running = all_of(r, store.running_key())
      for _, id in ipairs(running) do live[id] = true end
      for _, id in ipairs(all_of(r, store.transit_key())) do live[id] = true end
      for _, o in ipairs(list) do
        has[o.repl] = true
        local orphan = false
        if (o.age or c.orphan_grace) >= c.orphan_grace and not live[o.repl] then
          local m = get(o.repl)
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
      for _, id in ipairs(running) do
        if not has[id] then
          -- read again: only a REPL that was already running when the list
          -- was made (a start marks "running" after its workload exists)
          local fresh = store.get(id)
          report.examined = report.examined + 1
          local since = fresh and tonumber(fresh.state_since or 0) or 0
          if fresh == false or (fresh and fresh.state ~= "running") then
            heal[#heal + 1] = id
          elseif fresh and since < listed_at - 1 and store.transition(id, "stopped", { "running" }) then
            store.end_session(id)
            report.lost = (report.lost or 0) + 1
            log.warn("sweep: a running session's workload is gone; the REPL is stopped", { repl = id })
          end
        end
      end
    end
  end
  if #heal > 0 and store.reindex(heal) then report.healed = #heal end
  return report
end

-- What a run's report counts that is not an action: the REPLs flagged
-- save_failed (the gauge), what the run read, its time.
local NOT_ACTIONS = { save_failed = true, examined = true, sessions_read = true, ms = true, starting = true,
                      stopping = true }

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
    local t0 = timer.now()
    local ok, report = xpcall(M.run, debug.traceback)
    if not ok then
      metrics.counter("devex_sweep_runs_total", { result = "error" })
      metrics.counter("devex_lua_errors_total", { where = "sweep" })
      error(report, 0)
    end
    metrics.counter("devex_sweep_runs_total", { result = "ok" })
    report.ms = math.floor((timer.now() - t0) * 1e4 + 0.5) / 10 -- the run's wall time (tests/bench/bench_sweep.py)
    for action, n in pairs(report) do
      if not NOT_ACTIONS[action] and math.type(n) == "integer" and n > 0 then
        metrics.counter("devex_sweep_actions_total", { action = action }, n)
      end
    end
    log.info("sweep", report)
  end)
end

return M
