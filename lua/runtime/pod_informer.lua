-- runtime.pod_informer: one pod watch per worker and namespace for every
-- session start waiting for its pod (issue #17 section 5, #18), and one
-- watch of the namespace's Kubernetes Events about pods, for what the
-- scheduler and the kubelet say while a start waits (M.events).
--
-- Each start used to list and watch the pods of its own selector until one
-- was Ready: 500 parked starts were 500 watches on the API server and about
-- 195 KB of devexd memory each (a watch stream, its buffers, its decoder).
-- Here a worker keeps a single watch of the pods devexd manages (the
-- policy's managed_selector), opened when the first start waits and closed
-- `LINGER` seconds after the last one is done, and hands every pod it sees to
-- the waiters whose REPL label the pod carries. A waiter is a small table and
-- a condition variable, or whatever has a signal() method: a parked start
-- (runtime.kubernetes) gives one that resumes it.
--
--   local inf = pod_informer.get(client, namespace, managed_selector, repl_label)
--   local w = inf:waiter(repl_id, match)    -- match(labels) -> boolean (the start's selector)
--   local pods, err = w:next(timeout)       -- the waiter's pods that changed since the last
--                                           -- call ({} on timeout), or nil, err when the
--                                           -- informer cannot list or watch
--   w:quiet(), w:poll()                     -- whether next() would wait; next() without waiting
--   w:close()
--
--   local evs = pod_informer.events(client, namespace)   -- Events whose involvedObject is a Pod
--   local ew = evs:waiter(pod_name, nil, w.cond)  -- woken with the pod waiter (same cond)
--   ew:take()                                     -- the pod's new or changed Events, at once
--
-- A waiter registered after its pods were created still sees them: it is
-- seeded from the informer's cache, and registering and seeding happen
-- without yielding, so no event falls between the two.
--
-- The pod cache keeps each pod's name and REPL, not the pod: a waiter is
-- handed each version as it comes (slimmed, see slim), and one registered
-- later (a start whose pod already ran, on another worker or before a
-- restart, or a second waiter of the REPL) has its REPL's pods fetched once
-- on its first next() (spec.fetch: a GET of the pod), unless a newer version
-- has come through the watch meanwhile (the cache counts the versions that
-- came while the REPL had waiters). Every worker sees every pod of the
-- namespace: a body each was about 1 KB per parked start and per worker.
-- The event informer keeps every event, slimmed and encoded as one JSON
-- string (a third of the tables it stands for): an event waiter is made
-- when its start first sees its pod, often after the scheduler spoke, and
-- is seeded with them.
local json = require("devex.json")
local task = require("devex.task")
local dstream = require("devex.stream")
local timer = require("devex.timer")
local log = require("devex.log")

local M = {}
M.LINGER = 30 -- seconds the watch stays open with no waiter
M.WATCH_TIMEOUT = 60 -- seconds of one watch request (it is reopened while waiters remain)
M.BACKOFF = 1 -- seconds before relisting after a failed list or watch

local informers = {} -- "namespace\0selector\0label" -> informer (this worker)

local Informer = {}
Informer.__index = Informer
local Waiter = {}
Waiter.__index = Waiter

M.stats = { lists = 0, watches = 0 } -- requests made by this worker's informers

-- -> the waiters registered with this worker's informers (diagnostics, tests)
function M.waiting()
  local n = 0
  for _, inf in pairs(informers) do n = n + inf.nwaiters end
  return n
end

local function informer(key, client, namespace, spec)
  local inf = informers[key]
  if not inf then
    inf = setmetatable({ key = key, client = client, namespace = namespace, spec = spec,
                         pods = {}, -- name -> (pods) the sequence number of its last version seen while wanted | (events) the slimmed object as JSON text
                         repls = {}, -- name -> its REPL (spec.key_of)
                         waiters = {}, nwaiters = 0, seq = 0,
                         synced = false, running = false, idle_since = timer.now() }, Informer)
    informers[key] = inf
  end
  inf.client = client -- the newest client (a reload may have built another)
  return inf
end

-- What slim reads of a pod, and all the API's answers are decoded into
-- (the k8s client's keep): a pod's JSON is mostly managedFields and spec
-- that nothing here reads, and every worker decodes every pod event of the
-- namespace. Making it whole to slim it left that garbage interleaved with
-- the parked starts' live objects, pages the allocator could not give back.
local STATE_KEEP = { waiting = { reason = true, message = true }, terminated = { exitCode = true }, running = true }
local CONTAINER_KEEP = { name = true, image = true, state = STATE_KEEP, lastState = { terminated = { exitCode = true } } }
local POD_KEEP = {
  metadata = { name = true, labels = true, deletionTimestamp = true },
  spec = { nodeName = true, containers = { name = true, image = true }, initContainers = { name = true, image = true } },
  status = { phase = true, reason = true, message = true, podIP = true,
             conditions = { type = true, status = true, reason = true, message = true },
             containerStatuses = CONTAINER_KEEP, initContainerStatuses = CONTAINER_KEEP },
}
local EVENT_KEEP = { metadata = { name = true }, reason = true, message = true, type = true, count = true,
                     involvedObject = { name = true } }

-- The pods of selector, handed to waiters by the value of their repl_label.
function M.get(client, namespace, selector, repl_label)
  return informer(namespace .. "\0pods\0" .. selector .. "\0" .. repl_label, client, namespace, {
    ref = { apiVersion = "v1", kind = "Pod", namespace = namespace },
    opts = { label_selector = selector, keep = POD_KEEP },
    key_of = function(pod)
      local labels = pod.metadata and pod.metadata.labels
      return type(labels) == "table" and labels[repl_label] or nil
    end,
    keep = function(pod) return M._slim(pod) end,
    -- a pod no waiter of this worker wanted when it came: -> pod | false
    -- (gone) | nil, err
    fetch = function(inf, name)
      local p, err = inf.client:get({ apiVersion = "v1", kind = "Pod", namespace = namespace, name = name },
                                    { keep = POD_KEEP })
      if not p and type(err) == "table" and err.status == 404 then return false end
      return p, err
    end,
  })
end

-- Kubernetes Events about pods, handed to waiters by the pod's name.
function M.events(client, namespace)
  return informer(namespace .. "\0events", client, namespace, {
    ref = { apiVersion = "v1", kind = "Event", namespace = namespace },
    opts = { field_selector = "involvedObject.kind=Pod", keep = EVENT_KEEP },
    key_of = function(ev) return type(ev.involvedObject) == "table" and ev.involvedObject.name or nil end,
    keep = function(ev)
      return { metadata = { name = ev.metadata and ev.metadata.name }, reason = ev.reason, message = ev.message,
               type = ev.type, count = ev.count, involvedObject = { name = ev.involvedObject.name } }
    end,
  })
end

local function repl_of(inf, obj) return inf.spec.key_of(obj) end

-- inf.waiters[key]: the key's waiter, or a set of them ({[w] = true}) when
-- it has two or more: mostly one, and a set was a table (about 100 bytes)
-- per parked start and informer. waiters(slot) iterates either; a set is
-- iterated over a copy: a signal resumes a waiter's task at once, which may
-- register another waiter (adding a key while next() walks a table is
-- undefined in Lua).
local NONE = {} -- (read only)
local function one(w, prev) if prev == nil then return w end end
local function waiters(slot)
  if slot == nil then return next, NONE end
  if getmetatable(slot) == Waiter then return one, slot end
  local copy = {}
  for w in pairs(slot) do copy[w] = true end
  return next, copy
end

-- Signals every waiter of inf (after a list, or when it failed): gathered
-- first, for the same reason.
local function signal_all(inf)
  local all = {}
  for _, slot in pairs(inf.waiters) do
    for w in waiters(slot) do all[#all + 1] = w end
  end
  for _, w in ipairs(all) do w.cond:signal() end
end

-- notes pod `name` as changed for waiter w (false: deleted); w.pending is
-- nil while nothing changed (a waiter lives as long as its start is parked)
local function pend(w, name, v)
  local pending = w.pending or {}
  w.pending = pending
  pending[name] = v
end

-- hands pod to the waiters of its REPL that it matches
local function deliver(inf, pod, deleted)
  local id = repl_of(inf, pod)
  local slot = id and inf.waiters[id]
  if not slot then return end
  for w in waiters(slot) do
    if not w.match or w.match(pod.metadata and pod.metadata.labels) then
      pend(w, pod.metadata.name, not deleted and pod)
      w.cond:signal()
    end
  end
end

-- What a start and the event stream read of a pod (pod_state, events.pod and
-- events.failure, the session's podIP/nodeName): the informer keeps this much
-- of each pod, not the whole object, and every worker keeps every pod of the
-- namespace, so its size is per parked start and per worker. Measured with
-- 400 parked starts: 3.7 KB a pod when it kept the conditions, the
-- containers' states and last states whole. Kept: the Ready and PodScheduled
-- conditions, a container's state as waiting {reason, message}, running, or
-- terminated {exitCode} (last state: terminated only, for init containers).
-- Kept as JSON text (see the header): 2.75 KB a pod as these tables.
local function container_state(st)
  if type(st) ~= "table" then return nil end
  if type(st.waiting) == "table" then
    return { waiting = { reason = st.waiting.reason, message = st.waiting.message } }
  end
  if type(st.terminated) == "table" then return { terminated = { exitCode = st.terminated.exitCode } } end
  if st.running ~= nil then return { running = true } end
  return nil
end
local function containers(list)
  if type(list) ~= "table" then return nil end
  local out = {}
  for i, c in ipairs(list) do out[i] = { name = c.name, image = c.image } end
  return out
end
local function statuses(list, last)
  if type(list) ~= "table" then return nil end
  local out = {}
  for i, c in ipairs(list) do
    local ls = last and type(c.lastState) == "table" and type(c.lastState.terminated) == "table"
      and { terminated = { exitCode = c.lastState.terminated.exitCode } } or nil
    out[i] = { name = c.name, image = c.image, state = container_state(c.state), lastState = ls }
  end
  return out
end
local KEEP_CONDITIONS = { Ready = true, PodScheduled = true }
local function slim(p)
  local m, sp, st = p.metadata or {}, type(p.spec) == "table" and p.spec or {}, type(p.status) == "table" and p.status or {}
  local conds
  if type(st.conditions) == "table" then
    conds = {}
    for _, c in ipairs(st.conditions) do
      if KEEP_CONDITIONS[c.type] then
        conds[#conds + 1] = { type = c.type, status = c.status, reason = c.reason, message = c.message }
      end
    end
  end
  return {
    metadata = { name = m.name, labels = m.labels, deletionTimestamp = m.deletionTimestamp },
    spec = { nodeName = sp.nodeName, containers = containers(sp.containers),
             initContainers = containers(sp.initContainers) },
    status = { phase = st.phase, reason = st.reason, message = st.message, podIP = st.podIP,
               conditions = conds, containerStatuses = statuses(st.containerStatuses, false),
               initContainerStatuses = statuses(st.initContainerStatuses, true) },
  }
end
M._slim = slim
M._POD_KEEP = POD_KEEP -- test_pod_informer: slim of a pod decoded with it is slim of the whole pod

local function remember(inf, obj, deleted)
  local name = obj.metadata and obj.metadata.name
  if not name then return end
  if deleted then
    inf.pods[name], inf.repls[name] = nil, nil
  else
    local key = repl_of(inf, obj)
    if inf.spec.fetch and not (key and inf.waiters[key]) then
      -- no waiter here: that it exists is enough (Waiter:next fetches it)
      inf.pods[name], inf.repls[name] = nil, key
      return
    end
    obj = inf.spec.keep(obj, inf)
    if inf.spec.fetch then
      -- its waiters are handed it; kept: the informer's sequence number of
      -- the version (Waiter:fetch asks whether one came during its GET), not
      -- the object (a waiter registered later fetches it): 0.7-0.9 KB of
      -- JSON text per parked start
      inf.seq = inf.seq + 1 -- (never reset, not even by a relist: Waiter:fetch compares it)
      inf.pods[name], inf.repls[name] = inf.seq, key
    else
      local text = json.encode(obj)
      if text then
        inf.pods[name], inf.repls[name] = text, key -- (keep keeps what key_of reads)
      else -- not encodable (an infinite number from the API server): not cached, still delivered
        inf.pods[name], inf.repls[name] = nil, nil
      end
    end
  end
  deliver(inf, obj, deleted)
end

-- An object gone without a watch event saying so (a relist without it):
-- forgotten, and its waiters told (a pod: those of its REPL, if it was
-- wanted; the cache does not keep the pod to match it with)
local function forget(inf, name)
  local kept, key = inf.pods[name], inf.repls[name]
  if type(kept) == "string" then return remember(inf, json.decode(kept), true) end
  inf.pods[name], inf.repls[name] = nil, nil
  local slot = kept and key and inf.waiters[key]
  if not slot then return end
  for w in waiters(slot) do
    pend(w, name, false)
    w.cond:signal()
  end
end

local function fail_all(inf, err)
  inf.err = err
  signal_all(inf)
end

local function idle(inf)
  return inf.nwaiters == 0 and timer.now() - inf.idle_since >= M.LINGER
end

-- One watch request of inf's objects from resource version rv.
local function open_watch(inf, rv)
  local sel = inf.spec.opts
  M.stats.watches = M.stats.watches + 1
  return inf.client:watch(inf.spec.ref, { label_selector = sel.label_selector, field_selector = sel.field_selector,
                                          resource_version = rv, timeout = M.WATCH_TIMEOUT, keep = sel.keep })
end

-- The list-then-watch loop, while anyone waits (and LINGER seconds after).
local function run(inf)
  local ref, sel = inf.spec.ref, inf.spec.opts
  while not idle(inf) do
    M.stats.lists = M.stats.lists + 1
    local l, err = inf.client:list(ref, { label_selector = sel.label_selector, field_selector = sel.field_selector,
                                          keep = sel.keep })
    if not l then
      inf.synced = false
      fail_all(inf, err)
      timer.sleep(M.BACKOFF)
    else
      inf.err = nil
      inf.pods, inf.repls = {}, {}
      -- synced from here: a signal below resumes its waiter at once, which
      -- may register another waiter before the loop ends; seeded with what
      -- this list has given so far, it is handed the rest by the loop
      inf.synced = true
      for _, p in ipairs(l.items) do remember(inf, p, false) end
      signal_all(inf)
      local w
      w, err = open_watch(inf, l.resourceVersion)
      while w do
        local ev
        ev, err = w:next()
        if not ev then
          local rv = w.rv
          w:close()
          w = nil
          if err and err.code == "timeout" and rv and not idle(inf) then
            -- one watch request's time is up: the next goes on from the last
            -- version seen. Listing again instead decoded every pod of the
            -- namespace in every worker each WATCH_TIMEOUT and handed each to
            -- its waiters again (500 parked starts a worker: 3 MB of Lua
            -- heap each time); a version too old is the watcher's 410,
            -- answered with a RESYNC from a fresh list
            w, err = open_watch(inf, rv)
          elseif not (err and err.code == "timeout") then
            log.warn("pod informer: watch ended, relisting", { namespace = inf.namespace, error = tostring(err) })
            timer.sleep(M.BACKOFF)
          end
        elseif ev.type == "RESYNC" then
          local seen = {}
          for _, p in ipairs(ev.items or {}) do seen[p.metadata.name] = true; remember(inf, p, false) end
          for name in pairs(inf.repls) do
            if not seen[name] then forget(inf, name) end
          end
        elseif type(ev.object) == "table" and ev.object.kind ~= "Status" and type(ev.object.metadata) == "table" then
          remember(inf, ev.object, ev.type == "DELETED")
        end
        if w and idle(inf) then w:close(); w = nil end
      end
      if not w and err and not (err.code == "timeout") and not inf.synced then fail_all(inf, err) end
    end
  end
  inf.running, inf.synced, inf.pods, inf.repls = false, false, {}, {}
end

function Informer:waiter(repl_id, match, cond)
  local w = setmetatable({ inf = self, repl = repl_id, match = match, cond = cond or dstream.cond() }, Waiter)
  local slot = self.waiters[repl_id]
  if slot == nil then
    self.waiters[repl_id] = w
  elseif getmetatable(slot) == Waiter then
    self.waiters[repl_id] = { [slot] = true, [w] = true }
  else
    slot[w] = true
  end
  self.nwaiters = self.nwaiters + 1
  if self.synced then
    for name, repl in pairs(self.repls) do
      if repl == repl_id then
        local text = self.pods[name]
        if type(text) == "string" then
          local p = json.decode(text)
          if not match or match(p.metadata.labels) then pend(w, name, p) end
        else -- seen while no waiter here wanted it, or not kept: fetched by next()
          w.unfetched = w.unfetched or {}
          w.unfetched[#w.unfetched + 1] = name
        end
      end
    end
  end
  if not self.running then
    self.running = true
    task.spawn(run, self)
  end
  return w
end

-- The pods of this waiter's REPL that it was not handed (the informer saw
-- them before it was registered and kept their names), fetched. A version
-- that came through the watch during the GET (which yields) is newer, and
-- was handed to this waiter: the fetched one is dropped then; so is a pod
-- deleted meanwhile. -> true | nil, err
function Waiter:fetch()
  local inf, names = self.inf, self.unfetched
  self.unfetched = nil
  for i, name in ipairs(names) do
    if inf.repls[name] == self.repl then
      local seen = inf.pods[name]
      local p, err = inf.spec.fetch(inf, name)
      if p == nil then
        self.unfetched = { table.unpack(names, i) } -- tried again by the next call
        return nil, err
      end
      if p and inf.pods[name] == seen and inf.repls[name] == self.repl then remember(inf, p, false) end
    end
  end
  return true
end

-- Whether next() would wait: nothing changed, nothing to fetch, no failure
-- of the informer to report
function Waiter:quiet()
  return self.pending == nil and self.unfetched == nil and not (self.inf.err and not self.inf.synced)
end

-- -> { pod, ... } (deleted pods left out), or nil, err when the informer
-- failed or a pod seen before this waiter could not be fetched; waits up to
-- timeout seconds (on the waiter's cond) while quiet
function Waiter:next(timeout)
  if self:quiet() then self.cond:wait(math.max(0, timeout)) end
  return self:poll()
end

-- next() without the wait: what changed since the last call (maybe nothing)
function Waiter:poll()
  if self.unfetched then
    local ok, err = self:fetch()
    if not ok then return nil, err end
  end
  if self.pending == nil and self.inf.err and not self.inf.synced then return nil, self.inf.err end
  return self:take()
end

-- -> what changed since the last take, without waiting
function Waiter:take()
  local out = {}
  for _, p in pairs(self.pending or NONE) do
    if p then out[#out + 1] = p end
  end
  self.pending = nil
  return out
end

function Waiter:close()
  local inf = self.inf
  local slot = inf.waiters[self.repl]
  local set = slot ~= nil and getmetatable(slot) ~= Waiter
  if slot == self or (set and slot[self]) then
    if set then slot[self] = nil end
    if not set or next(slot) == nil then
      inf.waiters[self.repl] = nil
      if inf.spec.fetch then -- no waiter here wants its pods any more: their names are enough
        for name, repl in pairs(inf.repls) do
          if repl == self.repl then inf.pods[name] = nil end
        end
      end
    end
    inf.nwaiters = inf.nwaiters - 1
    if inf.nwaiters == 0 then inf.idle_since = timer.now() end
  end
end

return M
