-- repl.sessions: starting and stopping a REPL's session through the runtime
-- driver (lua/runtime: "kubernetes" or "local"). Start is idempotent (a
-- running REPL answers at once; of two concurrent starts one makes the
-- workload and the other waits for it). Stop saves the files first and only
-- then removes the workload; if saving fails nothing is removed, the REPL
-- stays "stopping" and the sweep retries.
local crypto = require("devex.crypto")
local timer = require("devex.timer")
local task = require("devex.task")
local dstream = require("devex.stream")
local log = require("devex.log")
local policy = require("policy")
local store = require("repl.store")
local runtime = require("runtime")
local metrics = require("devex.metrics")
local events = require("repl.events") -- the session event stream (issue #18)
local derror = require("devex.error")

-- metrics: how long a start took (only starts that made a workload)
local function start_metric(t0, result)
  metrics.observe("devex_repl_session_start_duration_seconds", { result = result }, metrics.now() - t0)
end

local M = {}

-- Errors are devex.error values carrying the HTTP status of the answer
-- (devex.error.http; the routes answer them with devex.app.fail).
local function fail(status, msg, fields)
  return nil, derror.http(status, msg, fields)
end

local function unavailable(err) return fail(503, "store unavailable: " .. tostring(err)) end

-- the status a driver's failure is answered with: its own when it is an
-- HTTP error status, else 502 (the workload's platform failed)
local function status_of(err)
  local st = type(err) == "table" and err.status
  if math.type(st) == "integer" and st >= 400 and st <= 599 then return st end
  return 502
end

local function message_of(err)
  return tostring(type(err) == "table" and err.message or err)
end

local started -- the end of a start, once the driver has answered

local function answer(meta, sess)
  return { replId = meta.id, replName = meta.name, url = sess.url }
end

-- how long a start may take: the workload's own start timeout (the drivers
-- wait at most this for their runner to be ready; the sweep does not call a
-- start stuck before it has passed)
function M.start_deadline()
  return tonumber(policy.workload.start_timeout) or 120
end
local start_deadline = M.start_deadline

-- Waits for another request's start of the same REPL to finish.
-- A failed read does not end the wait: the other request is still making
-- the workload, and one Redis timeout in a poll (650 starts at once on two
-- replicas: 7 such waits answered 503 while their REPL started) would tell
-- the user a start failed that did not. The last read's error is answered
-- only if the deadline comes while reads still fail.
local function wait_running(meta)
  local deadline = timer.now() + start_deadline()
  local last_err
  while timer.now() < deadline do
    timer.sleep(0.2)
    local m, err = store.get(meta.id)
    last_err = nil
    if m == nil then
      last_err = err
    elseif not m then
      return fail(404, "repl not found")
    elseif m.state == "running" then
      local sess
      sess, err = store.get_session(meta.id)
      if sess == nil then last_err = err end
      if sess then return answer(m, sess) end
    elseif m.state ~= "starting" then
      return fail(502, "the concurrent start of this repl failed")
    end
  end
  if last_err ~= nil then return unavailable(last_err) end
  return fail(504, "timed out waiting for the repl to start")
end

-- The end of a start: the session recorded and the REPL "running", or
-- whatever the driver made removed and the REPL back where it was.
started = function(meta, prev, token, driver, started_at, t0, info, err)
  if not info then
    start_metric(t0, "error")
    log.error("repl start failed", { repl = meta.id, error = message_of(err) })
    driver:remove(meta) -- whatever it made
    store.transition(meta.id, prev, { "starting" })
    local status = status_of(err)
    local f = events.failure(meta.id, err, status)
    events.emit(meta.id, "failed", f)
    return fail(status, "start failed: " .. message_of(err), { code = f.code, message = f.message })
  end
  local fields = { started_at = started_at, url = info.url or "", endpoint = info.endpoint or "",
                   token_hash = crypto.sha256_hex(token), driver = driver.name }
  for k, v in pairs(info.session or {}) do fields[k] = v end
  local ok
  ok, err = store.put_session(meta.id, fields)
  if ok then ok, err = store.transition(meta.id, "running", { "starting" }) end
  if not ok then
    -- Redis lost what we made (restarted, or the REPL was deleted meanwhile):
    -- remove the workload and the session keys rather than leak them
    start_metric(t0, "error")
    driver:remove(meta)
    store.end_session(meta.id)
    store.transition(meta.id, prev, { "starting" })
    events.emit(meta.id, "failed", { code = "start_failed", message = events.sentence("start_failed") })
    if ok == false then return fail(409, "the repl changed or was deleted during the start") end
    return unavailable(err)
  end
  start_metric(t0, "ok")
  events.emit(meta.id, "ready", { url = fields.url })
  log.info("repl started", { repl = meta.id, driver = driver.name })
  return answer(meta, fields)
end

-- start(meta [, parks]): parks, the caller's word that this is a tail call
-- of its later answer's function (devex.app.later) with no frame of its own
-- in between: the driver may then wait for the workload parked
-- (devex.stream.park), which drops every frame above the wait
function M.start(meta, parks)
  local sess, serr = store.get_session(meta.id)
  if sess == nil then return unavailable(serr) end
  if sess and meta.state == "running" then return answer(meta, sess) end
  if meta.state == "starting" then return wait_running(meta) end
  -- the sessions_per_user check and the move to "starting" are one script
  -- (repl.store.reserve_session): atomic across workers and replicas
  local limit = policy.quota.sessions_per_user
  local prev, err, in_use = store.reserve_session(meta, limit, { "created", "stopped", "failed" })
  if prev == nil then return unavailable(err) end
  if prev == false and err == "limit" then
    return fail(429, "session limit reached", { limit = limit, code = "quota", in_use = in_use,
      message = events.sentence("quota", in_use, limit) })
  end
  if prev == false then
    local m
    m, err = store.get(meta.id)
    if m == nil then return unavailable(err) end
    if m and m.state == "starting" then return wait_running(m) end
    if m and m.state == "running" then
      local s2
      s2, err = store.get_session(meta.id)
      if s2 == nil then return unavailable(err) end
      if s2 then return answer(m, s2) end
    end
    return fail(409, "repl is " .. tostring(m and m.state or "gone"))
  end
  events.begin(meta.id, meta.template)
  local token = crypto.b64url(crypto.random_bytes(32))
  -- the runner may call devexd before the start returns (the agent's restore,
  -- the init container's download): routes.runner_storage accepts this hash
  -- while the REPL is "starting"; the session's token_hash takes over after
  store.set_fields(meta.id, { start_token_hash = crypto.sha256_hex(token) })
  local driver = runtime.driver()
  local opts = { token = token, deadline = start_deadline(), park = parks,
    -- a runner that ends without a stop (the local runtime's child exits)
    on_exit = function(code, signal) M.runner_gone(meta, { code = code, signal = signal }) end }
  local started_at, t0 = os.time(), metrics.now()
  local function done(info, derr) return started(meta, prev, token, driver, started_at, t0, info, derr) end
  -- a driver that takes the continuation (kubernetes) calls it in tail
  -- position, and this is a tail call: a start parked for minutes waiting
  -- for its workload keeps no frame of this function, only what done holds
  if driver.takes_continuation then return driver:start(meta, opts, done) end
  return done(driver:start(meta, opts))
end

local stop_locked -- the stop itself, run while holding the REPL's stop lock

-- One stop at a time per REPL: two at once (a double click, a retry, the
-- sweep, a runner found gone, on any worker or replica) would each save the
-- workspace while the other removes it; a save that walks a workspace being
-- removed stores a partial list and deletes the rest from storage. The lock
-- expires cleanup.stuck_after seconds after its holder died (when the sweep
-- would retry a stop anyway); while the holder is at work, a save longer
-- than that included, it is renewed every third of that, up to RENEW_FOR
-- lifetimes (a stop wedged for good does not keep it for ever).
-- with_stop_lock(id, busy, fn, ...) -> fn(...), or busy() when another holds
-- the lock, or nil, err (503) when Redis cannot say.
local RENEW_FOR = 4 -- lifetimes: a wedged stop's lock still expires, 4 x stuck_after after it was taken
local function with_stop_lock(id, busy, fn, ...)
  local ttl = math.max(1, tonumber(policy.cleanup.stuck_after) or 300)
  local lock, err = store.lock_stop(id, ttl)
  if lock == nil then return unavailable(err) end
  if lock == false then return busy() end
  local held = { done = false, wake = dstream.cond() }
  task.spawn(function()
    local until_ = timer.now() + RENEW_FOR * ttl
    while not held.done and timer.now() < until_ do
      held.wake:wait(ttl / 3)
      -- done is read after the renewal too: the stop may end while it waits on Redis
      if held.done or store.renew_stop(id, lock, ttl) == 0 or held.done then return end
    end
  end)
  local ok, res, e = pcall(fn, ...)
  held.done = true
  held.wake:signal()
  store.unlock_stop(id, lock)
  if not ok then error(res, 0) end
  return res, e
end
local STOP_BUSY = "a stop of this repl is in progress"
local function stop_in_progress() return fail(409, STOP_BUSY) end
-- whether err is the answer of a stop that found another one at work
function M.stop_in_progress(err)
  return type(err) == "table" and err.status == 409 and err.message == STOP_BUSY
end

function M.stop(meta)
  return with_stop_lock(meta.id, stop_in_progress, stop_locked, meta)
end

stop_locked = function(meta)
  local prev, err = store.transition(meta.id, "stopping", { "running", "stopping", "starting" })
  if prev == nil then return unavailable(err) end
  if prev == false then
    if meta.state == "created" or meta.state == "stopped" then return true end -- nothing runs
    return fail(409, "repl is " .. tostring(meta.state))
  end
  events.emit(meta.id, "stopping")
  -- (a failed read leaves the REPL "stopping": the sweep retries the stop)
  local sess
  sess, err = store.get_session(meta.id)
  if sess == nil then return unavailable(err) end
  sess = sess or {}
  local driver = runtime.driver()
  local ok
  ok, err = driver:stop(meta, sess)
  if not ok then
    log.error("repl stop: files not saved, workload kept", { repl = meta.id, error = message_of(err) })
    pcall(require("repl.sweep").save_failed, meta.id, message_of(err)) -- counted, flagged at N
    return fail(status_of(err), "stop failed, files not saved: " .. message_of(err))
  end
  store.end_session(meta.id)
  store.transition(meta.id, "stopped", { "stopping" })
  -- always, not only when `meta` (read before the stop lock) showed failures:
  -- a retry that failed in between would leave the REPL flagged save_failed,
  -- and its next interrupted stop would not be retried by the sweep
  pcall(require("repl.sweep").save_ok, meta.id)
  events.emit(meta.id, "stopped")
  log.info("repl stopped", { repl = meta.id })
  return true
end

-- discard(meta) -> true | nil, err: the operator's way out of a stop whose
-- save keeps failing (devexd repl resolve --discard, repl.stuck): the
-- workload goes WITHOUT saving, the REPL keeps its last confirmed save and
-- is "stopped". Under the stop lock, so that no retried stop saves while
-- the workload is removed.
function M.discard(meta)
  return with_stop_lock(meta.id, stop_in_progress, function()
    local sess, serr = store.get_session(meta.id)
    if sess == nil then return unavailable(serr) end
    local done, rerr = runtime.driver():remove(meta, sess or {})
    if not done then return fail(502, "could not remove the workload: " .. message_of(rerr)) end
    store.end_session(meta.id)
    local prev, terr = store.transition(meta.id, "stopped", { "stopping" })
    if prev == nil then return unavailable(terr) end
    if not prev then return fail(409, "the repl changed meanwhile") end
    pcall(require("repl.sweep").save_ok, meta.id) -- the failures are discarded with the files
    events.emit(meta.id, "stopped")
    return true
  end)
end

-- runner_gone(meta, why) -> true | false | nil, err: the session's runner
-- ended without a stop (the local runtime's child exited: why = {code,
-- signal}; or the sweep found its process gone after a restart of devexd).
-- As a stop: "running" -> "stopping", the driver salvages what it left
-- (Driver:salvage: saves the files), then the session ends and the REPL is
-- "stopped". false when the REPL is not running or a stop holds its lock (a
-- stop in progress has it: its own exit) or the save failed (it stays
-- "stopping": the sweep retries the stop, which saves first).
local runner_gone_locked

function M.runner_gone(meta, why)
  -- under the stop lock: the sweep's retry of a stop that looks stuck (or
  -- the user's stop) must not save and remove the workspace meanwhile
  return with_stop_lock(meta.id, function() return false end, runner_gone_locked, meta, why)
end

runner_gone_locked = function(meta, why)
  local m, err = store.get(meta.id)
  if m == nil then return unavailable(err) end
  if not m or m.state ~= "running" then return false end
  local driver = runtime.driver()
  if not driver.salvage then return false end
  log.warn("runner gone without a stop; saving its files",
    { repl = meta.id, code = why and why.code, signal = why and why.signal })
  local prev
  prev, err = store.transition(meta.id, "stopping", { "running" })
  if prev == nil then return unavailable(err) end
  if not prev then return false end
  -- the session's event stream says it ended, and why, as a stop's does
  events.emit(meta.id, "stopping", { reason = "runner_gone" })
  local sess
  sess, err = store.get_session(meta.id)
  if sess == nil then return unavailable(err) end
  local ok
  ok, err = driver:salvage(m, sess or {})
  if not ok then
    log.error("could not save the files of a gone runner; the sweep retries", { repl = meta.id, error = message_of(err) })
    return false
  end
  store.end_session(meta.id)
  store.transition(meta.id, "stopped", { "stopping" })
  events.emit(meta.id, "stopped", { reason = "runner_gone" })
  return true
end

-- The runner's own calls carry its session token; only the hash is stored.
-- check_runner(id, token) -> true | false | nil, err (the store failed: the
-- caller answers 503, never "unauthorized" or "not found")
function M.check_runner(id, token)
  if type(token) ~= "string" or #token < 16 or #token > 256 then return false end
  local sess, err = store.get_session(id)
  if sess == nil then return nil, derror.http(503, "store unavailable: " .. tostring(err)) end
  if not sess or not sess.token_hash then return false end
  return crypto.equal(crypto.sha256_hex(token), sess.token_hash)
end

-- check_broker(id, token) -> true | false | nil, err: a token the storage
-- broker (routes.runner_storage) accepts: the session's runner token; while
-- the REPL is "starting", the start's token (its runner restores before the
-- session exists: start_token_hash in replMeta); or the save token of a stop
-- in progress (policy.sync: save_token_hash, save_token_expires in the
-- session hash). A store that cannot be read is an error (503), never a
-- refusal.
function M.check_broker(id, token)
  local ok, err = M.check_runner(id, token)
  if ok == nil then return nil, err end
  if ok then return true end
  if type(token) ~= "string" or #token < 16 or #token > 256 then return false end
  local meta
  meta, err = store.get(id)
  if meta == nil then return unavailable(err) end
  if meta and meta.state == "starting" and meta.start_token_hash
      and crypto.equal(crypto.sha256_hex(token), meta.start_token_hash) then
    return true
  end
  local sess
  sess, err = store.get_session(id)
  if sess == nil then return unavailable(err) end
  if not sess or not sess.save_token_hash then return false end
  if (tonumber(sess.save_token_expires) or 0) < os.time() then return false end
  return crypto.equal(crypto.sha256_hex(token), sess.save_token_hash)
end

return M
