-- repl.events: a REPL session's lifecycle as events (issue #18), for
-- GET /api/repl/session/<id>/events (Server-Sent Events).
--
-- Phases: scheduling, pulling, restoring, starting, ready (url), failed
-- (code, message), stopping, saving, stopped; and `warning` (reason, stopAt,
-- in, message) before a stop by the sweep (repl.culling). `queued` is reserved: no
-- policy queues a start today (a start over the session limit is refused with
-- 429), so nothing emits it yet.
--
-- Where events live: a Redis stream per REPL, <prefix>replEvents:<replId>,
-- XADD with MAXLEN ~ MAXLEN and a TTL renewed on every event; the stream id
-- ("<ms>-<seq>") is the SSE `id:`, so a client that reconnects with
-- Last-Event-ID gets exactly the entries after it, in order, none twice,
-- whichever replica or worker serves it. A start begins with a "begin"
-- entry that is never sent: a client without Last-Event-ID gets the events
-- of the latest start (and what followed it), so a REPL already running
-- answers `ready` at once.
--
-- How watchers read it: one hub per REPL per worker, however many streams
-- (tabs) watch that REPL on that worker. The hub's task reads the stream with
-- XRANGE after its last id every POLL seconds, and at once when this worker
-- emitted an event for that REPL; the watchers wait on the hub's condition
-- (devex.stream.cond) and take what is new from its buffer. Why polling and
-- not a blocking XREAD: a worker has one multiplexed Redis connection, and a
-- blocking command on it would stall every other command of the worker; a
-- dedicated blocking connection per worker (or per REPL) would need a
-- connection of its own that hiredis's async client holds busy, and
-- pub/sub loses what was published while a client reconnects, which the
-- stream (our source of truth for resume) does not. A poll costs one XRANGE
-- per watched REPL per worker per POLL; events emitted by the same worker
-- (the start itself runs in one request) are seen with no delay.
local json = require("devex.json")
local log = require("devex.log")
local timer = require("devex.timer")
local task = require("devex.task")
local dstream = require("devex.stream")
local rds = require("services.redis")
local metrics = require("devex.metrics")

local M = {}

M.MAXLEN = 200          -- entries kept per REPL (about ten starts and stops)
M.TTL = 24 * 3600       -- seconds a REPL's events outlive the last one
M.POLL = 0.25           -- seconds between a hub's reads of the stream
M.BUFFER = 256          -- entries a hub keeps for its watchers
M.HISTORY = 50          -- starts kept per template for the ETA
M.HISTORY_TTL = 30 * 24 * 3600

local PHASES = { queued = 1, scheduling = 2, pulling = 3, restoring = 4, starting = 5, ready = 6, failed = 7,
                 stopping = 8, saving = 9, stopped = 10, warning = 11 }
M.PHASES = PHASES

local function key(id) return rds.key("replEvents", id) end
local function history_key(template) return rds.key("startDurations", template) end

-- "<ms>-<seq>" -> ms, seq (numbers), or nil
function M.parse_id(s)
  if type(s) ~= "string" or #s > 41 then return nil end
  local a, b = s:match("^(%d+)%-(%d+)$")
  if not a then return nil end
  return tonumber(a), tonumber(b)
end

local function id_after(a, b)
  local am, as = M.parse_id(a)
  local bm, bs = M.parse_id(b)
  if not am then return false end
  if not bm then return true end
  return am > bm or (am == bm and as > bs)
end
M.id_after = id_after

-- ---- ETA from history: per template, the offsets of each phase from the
-- start's begin and the total, of the last HISTORY starts that got ready ----

local runs = {}        -- replId -> { t0, template, marks = {phase = offset}, last_phase, last_at } (this worker)
local hist_cache = {}  -- template -> { at, list }
-- replId -> what failure reasons need of the last pod seen during its start
-- (this worker): pod_facts, not the pod (it lives as long as the start is
-- parked, and thousands may be)
local pods = {}

local function quantile(xs, q)
  if #xs == 0 then return nil end
  table.sort(xs)
  local i = math.max(1, math.min(#xs, math.ceil(q * #xs)))
  return xs[i]
end

local function history(template)
  local c = hist_cache[template]
  if c and timer.now() - c.at < 30 then return c.list end
  local list = {}
  local r = rds.client()
  local raw = r and r:call("LRANGE", history_key(template), 0, M.HISTORY - 1)
  if type(raw) == "table" then
    for _, s in ipairs(raw) do
      local ok, v = pcall(json.decode, s)
      if ok and type(v) == "table" and type(v.total) == "number" then list[#list + 1] = v end
    end
  end
  -- an empty history is not kept: the first start recorded by another
  -- worker must give ETAs at once, not after the cache's 30 s
  if #list > 0 then hist_cache[template] = { at = timer.now(), list = list } end
  return list
end

-- The expected remaining seconds when `phase` begins: median and p90 over
-- the recent starts of the template that went through that phase.
function M.eta(template, phase)
  if phase == "ready" then return 0, 0 end
  local rem = {}
  for _, h in ipairs(history(template)) do
    local off = type(h.offsets) == "table" and h.offsets[phase]
    if type(off) == "number" then rem[#rem + 1] = math.max(0, h.total - off) end
  end
  if #rem == 0 then return nil end
  local p50 = quantile(rem, 0.5)
  local p90 = quantile(rem, 0.9)
  return math.floor(p50 * 10 + 0.5) / 10, math.floor(p90 * 10 + 0.5) / 10
end

local function record_history(run, total)
  local entry = json.encode({ offsets = json.object(run.marks), total = total })
  local r = rds.client()
  if not r then return end
  local k = history_key(run.template)
  r:pipeline{ { "LPUSH", k, entry }, { "LTRIM", k, 0, M.HISTORY - 1 }, { "EXPIRE", k, M.HISTORY_TTL } }
  hist_cache[run.template] = nil
end

local function observe_phase(run, phase, now)
  -- the phase that just ended lasted from its begin until now
  if run.last_phase then
    pcall(metrics.observe, "devex_repl_start_phase_duration_seconds",
      { template = run.template, phase = run.last_phase }, now - run.last_at)
  end
  -- (fields, not a table: a run lives as long as its start is parked)
  run.last_phase, run.last_at = phase, now
end

-- ---- emitting ----

local hubs = {} -- replId -> hub (this worker)

local function xadd(id, fields)
  local r, e = rds.client()
  if not r then return nil, e end
  local k = key(id)
  local res
  res, e = r:pipeline{
    { "XADD", k, "MAXLEN", "~", tostring(M.MAXLEN), "*", "e", json.encode(fields) },
    { "EXPIRE", k, M.TTL },
  }
  if not res then return nil, e end
  local h = hubs[id]
  if h then h.kick:signal() end -- watchers on this worker see it now
  return res[1]
end

-- A start of `id` begins (repl.sessions.start): the boundary a new watcher
-- reads from, and t0 of the phases' offsets.
function M.begin(id, template)
  runs[id] = { t0 = timer.now(), template = template or "unknown", marks = {} }
  local ok, e = xadd(id, { phase = "begin", template = template, at = os.time() })
  if not ok then log.warn("repl events: not recorded", { repl = id, error = tostring(e) }) end
end

-- emit(id, phase, fields): records a phase of REPL `id`. Never fails the
-- caller: a Redis error is logged. The same phase twice in a row is one event.
function M.emit(id, phase, fields)
  if type(id) ~= "string" or not PHASES[phase] then return end
  local ev = {}
  for k, v in pairs(fields or {}) do ev[k] = v end
  ev.phase, ev.replId, ev.at = phase, id, os.time()
  local run = runs[id]
  if run then
    -- one event per phase, in order: a pod that flips back (a probe, a
    -- restart) does not take the stream backwards
    if run.last_phase and PHASES[phase] <= PHASES.starting and PHASES[run.last_phase] >= PHASES[phase] then return end
    local now = timer.now()
    if run.marks[phase] == nil and phase ~= "failed" then run.marks[phase] = now - run.t0 end
    local okh, p50, p90 = pcall(M.eta, run.template, phase)
    if okh and p50 then
      -- never backwards within one start: the medians of two phases come from
      -- different sets of past starts when one of them skipped a phase
      if run.eta then p50, p90 = math.min(p50, run.eta), math.min(p90, run.eta_p90) end
      p90 = math.max(p90, p50)
      run.eta, run.eta_p90 = p50, p90
      ev.eta, ev.eta_p90 = p50, p90
    end
    observe_phase(run, phase, now)
    if phase == "ready" then
      pcall(record_history, run, now - run.t0)
      runs[id] = nil
      pods[id] = nil
    elseif phase == "failed" then
      runs[id] = nil
    end
  end
  local ok, e = xadd(id, ev)
  if not ok then log.warn("repl events: not recorded", { repl = id, phase = phase, error = tostring(e) }) end
end

-- progress(id, {files, filesTotal, bytes, bytesTotal}): the runner agent's
-- restore progress (routes.runner_storage), one `restoring` event each time
-- with those fields. Not through emit: emit keeps one event per phase, and
-- the agent's reports arrive on any worker, outside the start's request.
function M.progress(id, fields)
  if type(id) ~= "string" then return end
  local ev = { phase = "restoring", replId = id, at = os.time() }
  for k, v in pairs(fields) do ev[k] = v end
  local ok, e = xadd(id, ev)
  if not ok then log.warn("repl events: progress not recorded", { repl = id, error = tostring(e) }) end
end

-- ---- reading: one hub per REPL per worker ----

local function decode(entry)
  -- entry = { id, { "e", json } }
  local id, kv = entry[1], entry[2]
  if type(id) ~= "string" or type(kv) ~= "table" then return nil end
  for i = 1, #kv, 2 do
    if kv[i] == "e" then
      local ok, v = pcall(json.decode, kv[i + 1])
      if ok and type(v) == "table" then return { id = id, phase = v.phase, data = kv[i + 1], ev = v } end
    end
  end
  return nil
end

local function hub_loop(h)
  local r = rds.client()
  while h.watchers > 0 do
    local res, e
    if r then
      if h.last then
        res, e = r:call("XRANGE", h.key, "(" .. h.last, "+", "COUNT", 100)
      else
        res, e = r:call("XRANGE", h.key, "-", "+")
      end
    else
      r, e = rds.client()
    end
    if type(res) == "table" then
      local added = false
      for _, entry in ipairs(res) do
        local d = decode(entry)
        if d and id_after(d.id, h.last) then
          h.buf[#h.buf + 1] = d
          h.last = d.id
          added = true
        end
      end
      if #h.buf > M.BUFFER then
        local keep = {}
        for i = #h.buf - M.BUFFER + 1, #h.buf do keep[#keep + 1] = h.buf[i] end
        h.buf = keep
      end
      h.loaded = true
      if added or not h.signaled_once then h.signaled_once = true; h.cond:signal() end
      if #res >= 100 then goto continue end -- more to read
    elseif e then
      h.error = e
      h.cond:signal()
    end
    h.kick:wait(M.POLL)
    ::continue::
  end
  hubs[h.id] = nil
end

local function hub_for(id)
  local h = hubs[id]
  if h then
    h.watchers = h.watchers + 1
    return h
  end
  h = { id = id, key = key(id), watchers = 1, buf = {}, cond = dstream.cond(), kick = dstream.cond() }
  hubs[id] = h
  task.spawn(hub_loop, h)
  return h
end
M._hubs = hubs

-- The index in h.buf after which a watcher starts: after `cursor` when it
-- gave one, else at the latest "begin" — or at the end when that start's
-- session has already stopped (a new watcher waits for the next start, it
-- is not shown the last one again).
local function start_index(h, cursor)
  if cursor then
    for i = #h.buf, 1, -1 do
      if not id_after(h.buf[i].id, cursor) then return i end
    end
    return 0
  end
  if #h.buf > 0 and h.buf[#h.buf].phase == "stopped" then return #h.buf end
  for i = #h.buf, 1, -1 do
    if h.buf[i].phase == "begin" then return i end
  end
  return 0
end

local function sse(d)
  return "id: " .. d.id .. "\nevent: " .. d.phase .. "\ndata: " .. d.data .. "\n\n"
end

M.HEARTBEAT = 15

-- watch(w, id, cursor, opts): writes the REPL's events to the stream writer
-- `w` until the client goes away. opts.ready_url: the REPL runs (with that
-- URL) and `ready` is sent at once if its events do not say so.
function M.watch(w, id, cursor, opts)
  opts = opts or {}
  local h = hub_for(id)
  local ok, err = pcall(function()
    if not w:write("retry: 2000\n\n") then return end
    while not h.loaded and not h.error do
      if not w:wait(h.cond, M.HEARTBEAT) and not w:write(": keepalive\n\n") then return end
    end
    local i = start_index(h, cursor)
    local sent_ready = false
    local function flush()
      while i < #h.buf do
        i = i + 1
        local d = h.buf[i]
        if d.phase ~= "begin" then
          if not w:write(sse(d)) then return false end
          cursor = d.id
          if d.phase == "ready" then sent_ready = true end
        else
          cursor = d.id
        end
      end
      return true
    end
    if not flush() then return end
    if opts.ready_url and not sent_ready and not cursor then
      -- running, with no event saying so (events expired, or started before them)
      local ev = json.encode({ phase = "ready", replId = id, url = opts.ready_url, at = os.time(), eta = 0, eta_p90 = 0 })
      local last = h.buf[#h.buf]
      if not w:write("id: " .. (last and last.id or "0-0") .. "\nevent: ready\ndata: " .. ev .. "\n\n") then return end
    end
    while true do
      local before = #h.buf > 0 and h.buf[#h.buf].id or nil
      if not w:wait(h.cond, M.HEARTBEAT) then
        if not w:write(": keepalive\n\n") then return end
      end
      -- the buffer may have been trimmed: find our place again by id
      if cursor then i = start_index(h, cursor) elseif before == nil then i = 0 end
      if not flush() then return end
    end
  end)
  h.watchers = h.watchers - 1
  if h.watchers == 0 then h.kick:signal() end
  if not ok then error(err, 0) end
end

-- ---- the Kubernetes pod as phases (runtime.kubernetes's pod watch) ----


local function scheduled(pod)
  for _, c in ipairs(pod.status and pod.status.conditions or {}) do
    if c.type == "PodScheduled" then return c.status == "True", c end
  end
  return type(pod.spec) == "table" and type(pod.spec.nodeName) == "string" and pod.spec.nodeName ~= "", nil
end

local function first_image(pod)
  local spec = type(pod.spec) == "table" and pod.spec or {}
  for _, list in ipairs({ spec.initContainers or {}, spec.containers or {} }) do
    for _, c in ipairs(list) do if c.image then return c.image end end
  end
end

-- The phase a pod of a starting session is in, with its fields, or nil
-- (Ready: the start itself emits `ready` once the session is recorded).
function M.pod_phase(pod)
  if type(pod) ~= "table" or type(pod.status) ~= "table" then return nil end
  for _, c in ipairs(pod.status.conditions or {}) do
    if c.type == "Ready" and c.status == "True" then return nil end
  end
  local sched, cond = scheduled(pod)
  if not sched then
    local f = {}
    if cond and cond.reason == "Unschedulable" then f.reason = cond.message or cond.reason end
    return "scheduling", f
  end
  local spec = type(pod.spec) == "table" and pod.spec or {}
  local images = {}
  for _, list in ipairs({ spec.initContainers or {}, spec.containers or {} }) do
    for _, c in ipairs(list) do images[c.name or ""] = c.image end
  end
  local inits = pod.status.initContainerStatuses or {}
  for _, cs in ipairs(inits) do
    local st = type(cs.state) == "table" and cs.state or {}
    if not st.terminated then
      if st.running then return "restoring", {} end
      return "pulling", { image = cs.image or images[cs.name or ""] }
    end
  end
  local conts = pod.status.containerStatuses or {}
  if #conts == 0 then return "pulling", { image = first_image(pod) } end
  for _, cs in ipairs(conts) do
    local st = type(cs.state) == "table" and cs.state or {}
    if type(st.waiting) == "table" and st.waiting.reason ~= "CrashLoopBackOff" then
      return "pulling", { image = cs.image or images[cs.name or ""] }
    end
  end
  return "starting", {}
end

-- note(id, fields): what Kubernetes said about the start's pod (an Event:
-- reason, message, type, pod), as a `note` in the stream; not a phase, so
-- it does not move the phases on. A kubelet's "Pulled" note carries the
-- image's size in bytes when the kubelet reports it.
function M.note(id, fields)
  if type(id) ~= "string" then return end
  local ev = { phase = "note", replId = id, at = os.time() }
  for k, v in pairs(fields or {}) do ev[k] = v end
  local size = type(ev.message) == "string" and ev.message:match("[Ii]mage size: (%d+) bytes")
  if size then ev.bytes = tonumber(size) end
  local ok, e = xadd(id, ev)
  if not ok then log.warn("repl events: note not recorded", { repl = id, error = tostring(e) }) end
end

-- (pod_facts has checked that pod.status is a table)
local function pod_image_problem(pod)
  for _, list in ipairs({ pod.status.initContainerStatuses or {}, pod.status.containerStatuses or {} }) do
    for _, cs in ipairs(list) do
      local w = type(cs.state) == "table" and cs.state.waiting
      if type(w) == "table" and (w.reason == "ErrImagePull" or w.reason == "ImagePullBackOff"
          or w.reason == "InvalidImageName") then
        return cs.image or first_image(pod)
      end
    end
  end
end

-- What failure() reads of a start's last pod, kept instead of the pod (about
-- 1 KB a parked start, as JSON): its image problem, the image to name when
-- the error alone says the pull failed, why it cannot be scheduled, whether
-- an init container (the restore) exited with an error.
local function pod_facts(pod)
  if type(pod.status) ~= "table" then return { image = first_image(pod) } end
  local f = { image_problem = pod_image_problem(pod), image = first_image(pod) }
  local sched, cond = scheduled(pod)
  if not sched and cond and cond.reason == "Unschedulable" then f.unschedulable = cond.message or "unschedulable" end
  for _, cs in ipairs(pod.status.initContainerStatuses or {}) do
    local st = type(cs.state) == "table" and cs.state or {}
    local t = st.terminated or (type(cs.lastState) == "table" and cs.lastState.terminated)
    if type(t) == "table" and t.exitCode and t.exitCode ~= 0 then f.restore_failed = true end
  end
  return f
end

-- pod(id, pod): called by the driver for each version of the pod it sees.
function M.pod(id, pod)
  if type(id) ~= "string" or type(pod) ~= "table" then return end
  pods[id] = pod_facts(pod)
  local phase, fields = M.pod_phase(pod)
  if phase then M.emit(id, phase, fields) end
end

-- ---- plain-language failures ----

-- The sentences users read, by code: policy.messages (lua/policy/messages.lua),
-- which operators reword in their policy file.
M.MESSAGES = require("policy.messages")

local function sentence(code, ...)
  local ok, pol = pcall(require, "policy")
  local msgs = ok and type(pol) == "table" and type(pol.messages) == "table" and pol.messages or nil
  local fmt = (msgs and type(msgs[code]) == "string" and msgs[code]) or M.MESSAGES[code] or M.MESSAGES.start_failed
  local args = table.pack(...)
  for i = 1, args.n do args[i] = tostring(args[i]) end
  local ok2, s = pcall(string.format, fmt, table.unpack(args, 1, args.n))
  return ok2 and s or fmt
end
M.sentence = sentence

-- failure(id, err, status) -> { code, message }: what the user reads about a
-- failed start; err (the driver's technical error) is for the logs.
function M.failure(id, err, status)
  local msg = tostring(type(err) == "table" and err.message or err or "")
  status = status or (type(err) == "table" and err.status) or 502
  local pod = pods[id] or {}
  pods[id] = nil
  if pod.image_problem or msg:find("ErrImagePull", 1, true) or msg:find("ImagePullBackOff", 1, true)
      or msg:find("InvalidImageName", 1, true) then
    local image = pod.image_problem or pod.image or "?"
    return { code = "image_pull", image = image, message = sentence("image_pull", image) }
  end
  if pod.unschedulable then
    return { code = "capacity", reason = pod.unschedulable, message = sentence("capacity", pod.unschedulable) }
  end
  if pod.restore_failed then return { code = "restore_failed", message = sentence("restore_failed") } end
  if msg:find("could not fetch the files", 1, true) then return { code = "restore_failed", message = sentence("restore_failed") } end
  if msg:find("^storage") then return { code = "storage_down", message = sentence("storage_down") } end
  if msg:find("CrashLoopBackOff", 1, true) or msg:find("exited before answering", 1, true) then
    return { code = "crashed", message = sentence("crashed") }
  end
  if status == 504 then return { code = "start_timeout", message = sentence("start_timeout") } end
  if msg:find("^kubernetes") and (status == 503 or msg:find("unavailable") or msg:find("connect")
      or msg:find("timeout")) then
    return { code = "kubernetes_down", message = sentence("kubernetes_down") }
  end
  if msg:find("^store unavailable") then return { code = "store_down", message = sentence("store_down") } end
  return { code = "start_failed", message = sentence("start_failed") }
end

-- ---- the route: GET /api/repl/session/:id/events ----

function M.handler(req)
  local service = require("repl.service")
  local store = require("repl.store")
  local meta, e = service.owned(req.user, req.params.id)
  if not meta then return require("devex.app").fail(e) end
  local cursor = req.headers["last-event-id"]
  if cursor ~= nil and not M.parse_id(cursor) then cursor = nil end
  local ready_url
  if meta.state == "running" then
    local sess = store.get_session(meta.id)
    ready_url = sess and sess.url or nil
  end
  local id = meta.id
  return 200, dstream.new(function(w) M.watch(w, id, cursor, { ready_url = ready_url }) end),
    { ["Content-Type"] = "text/event-stream; charset=utf-8", ["Cache-Control"] = "no-cache",
      ["X-Accel-Buffering"] = "no" }
end

return M
