-- runtime.kubernetes: sessions as Kubernetes workloads (policy.workload).
-- start applies the Deployment (server-side apply, so a retry changes
-- nothing), then the Service, Ingress and Middleware (those the policy made)
-- concurrently with the Deployment as their owner, and watches the pod until
-- Ready; an image that cannot be pulled or a container that crashes fails the
-- start at once with the reason. stop injects the uploader (policy.sync) and
-- deletes the Deployment (its owned objects follow) only when the upload
-- exited 0.
--
-- Everything the driver needs to find, reach and remove a session's objects
-- comes from the identity policy.workload.build returns (see the header of
-- lua/policy/workload.lua): the pod selector, the object names, the upstream
-- ports, the public URL, the orphan selector and repl label. Nothing is
-- re-derived from names or labels here.
--
-- Where the identity comes from when no build result is at hand:
--   * stop: from the session hash, where start stored it (k8s_selector,
--     k8s_deployment). A policy changed (SIGHUP) between start and stop then
--     still finds the objects the old policy made, and a template removed
--     from the catalogue meanwhile does not make the session unstoppable.
--     A session stored without those fields is served by a rebuild.
--   * remove(meta) after a failed start (same request, same VM, so the same
--     policy) and the sweep's repair of a start interrupted by a crash:
--     build() again with the same ctx (build is a pure function of ctx).
--     What a changed policy no longer finds is left to the orphan sweep.
--   * orphans: build() for a probe REPL, for managed_selector and repl_label,
--     which must not depend on the REPL (the policy check verifies it).
local services = require("services.k8s")
local tasks = require("devex.tasks")
local timer = require("devex.timer")
local pod_informer = require("runtime.pod_informer")
local dstream = require("devex.stream")
local log = require("devex.log")
local events = require("repl.events") -- the session event stream (issue #18)
local json = require("devex.json")
local config = require("devex.config").get()

-- required lazily: policy/init.lua calls M.check while it is being loaded
local function P() return require("policy") end

local Driver = {}
Driver.__index = Driver
Driver.takes_continuation = true -- start(meta, opts, k): see Driver:start

local M = {}

function M.new(conf)
  local kube = conf.kube or {}
  return setmetatable({ name = "kubernetes", namespace = kube.namespace or "default" }, Driver)
end

-- a failure of the driver: a devex.error with the HTTP status a start or
-- stop that fails this way is answered with (repl.sessions)
local derror = require("devex.error")
local function err(status, message) return nil, derror.http(status, message) end
local function same(...) return ... end -- the continuation of a caller that gives none

local function client()
  local c, e = services.client()
  if not c then return nil, e end
  return c
end

local function nonempty(s)
  if type(s) == "string" and s ~= "" then return s end
  return nil
end

-- ---------------------------------------------------------------------------
-- The workload contract: ctx for policy.workload.build, and the identity
-- ---------------------------------------------------------------------------

-- The catalogue entry filled from templates.defaults, or nil.
function M.template(policy, name)
  local cat = policy.templates.catalogue[name]
  if type(cat) ~= "table" then return nil end
  local t = {}
  for k, v in pairs(policy.templates.defaults or {}) do t[k] = v end
  for k, v in pairs(cat) do t[k] = v end
  return t
end

-- A relative image name (no "/") gets the registry in front; an absolute one is used as is.
function M.image(policy, t)
  local img = t.image
  if type(img) ~= "string" or img == "" then return nil end
  local reg = nonempty(policy.templates.registry)
  if not img:find("/", 1, true) and reg then img = reg:gsub("/+$", "") .. "/" .. img end
  return img
end

-- ctx of policy.workload.build for the REPL meta (id, user, template, prefix).
-- opts: token, namespace. Raises on what no build can do without (an unknown
-- template, ingress mode without a host).
function M.context(policy, meta, opts)
  opts = opts or {}
  local wp = policy.workload
  local t = M.template(policy, meta.template)
  if not t then error(string.format("unknown template '%s'", tostring(meta.template)), 0) end
  local image = M.image(policy, t)
  if not image then error(string.format("templates.catalogue.%s has no image", meta.template), 0) end
  local r = config.runner or {}
  local exposure = r.exposure or "gateway"
  local public = (config.public_url or "http://localhost:8080"):gsub("/+$", "")
  local host, url
  if exposure == "ingress" then
    host = nonempty(wp.host) or nonempty(r.domain) or nonempty(r.cluster_ip)
    if not host then
      error('runner.exposure is "ingress" but no runner host is set (RUNNER_DOMAIN, RUNNER_CLUSTER_IP or workload.host)', 0)
    end
    url = "https://" .. host .. "/" .. meta.id .. "/"
  else
    -- the gateway answers the runner domain, and devexd's own /repl/<id>/ without one
    host = nonempty(r.domain)
    url = host and ((r.scheme or "https") .. "://" .. host .. "/" .. meta.id .. "/")
      or (public .. "/repl/" .. meta.id .. "/")
  end
  local mcp = t.mcp
  if mcp == nil then mcp = wp.mcp_sidecar end
  return {
    repl = meta, template = t, image = image, name = meta.id, namespace = opts.namespace,
    token = opts.token, callback_url = public .. "/api/runner/" .. meta.id, s3 = config.s3,
    exposure = exposure, host = host, url = url, mcp = mcp and true or false, policy = wp,
    sync = policy.sync, -- the agent's checkpoint settings (policy.sync.agent_env)
  }
end

local NAMED = { "deployment", "service", "ingress", "middleware" }

-- equality-based selectors only ("k=v,k2==v2"); nil for anything else
local function parse_selector(sel)
  local out = {}
  for part in (sel .. ","):gmatch("([^,]*),") do
    local k, v = part:match("^%s*([^=!%s]+)%s*==?%s*([^=!%s]*)%s*$")
    if not k then return nil end
    out[k] = v
  end
  return out
end

-- whether labels satisfy sel: true, false, or nil when sel is not equality-based
local function selects(labels, sel)
  local want = parse_selector(sel)
  if not want then return nil end
  for k, v in pairs(want) do
    if type(labels) ~= "table" or labels[k] ~= v then return false end
  end
  return true
end
local function may_match(labels, sel) return selects(labels, sel) ~= false end

local function pod_labels_of(dep)
  local tpl = type(dep.spec) == "table" and dep.spec.template
  return type(tpl) == "table" and type(tpl.metadata) == "table" and tpl.metadata.labels or {}
end

local function sorted_keys(t)
  local ks = {}
  for k in pairs(t) do ks[#ks + 1] = k end
  table.sort(ks)
  return ks
end

-- The identity of build's result: the one it returned, with what it left out
-- derived from the objects. Raises a message naming what is wrong.
function M.identity(objs, ctx)
  local function fail(fmt, ...) error(string.format(fmt, ...), 0) end
  if type(objs) ~= "table" then fail("build must return a table of objects, not %s", type(objs)) end
  local dep = objs.deployment
  if type(dep) ~= "table" then fail("build returned no deployment") end
  if dep.kind ~= "Deployment" or dep.apiVersion ~= "apps/v1" then
    fail("the deployment must be an apps/v1 Deployment, not %s %s", tostring(dep.apiVersion), tostring(dep.kind))
  end
  local meta = type(dep.metadata) == "table" and dep.metadata or {}
  if not nonempty(meta.name) then fail("the deployment has no metadata.name") end
  local given = objs.identity
  if given ~= nil and type(given) ~= "table" then fail("identity must be a table, not %s", type(given)) end
  given = given or {}
  local gnames = type(given.names) == "table" and given.names or {}
  local id = {}
  for k, v in pairs(given) do id[k] = v end

  id.names = {}
  for _, k in ipairs(NAMED) do
    local o = objs[k]
    id.names[k] = gnames[k] or (type(o) == "table" and type(o.metadata) == "table" and o.metadata.name) or nil
  end
  if id.names.deployment ~= meta.name then
    fail("identity.names.deployment (%s) is not the deployment's name (%s)", tostring(id.names.deployment), meta.name)
  end
  local labels = type(meta.labels) == "table" and meta.labels or {}
  if id.labels == nil then id.labels = labels end
  if id.selector == nil then
    local ml = type(dep.spec) == "table" and type(dep.spec.selector) == "table" and dep.spec.selector.matchLabels
    if type(ml) == "table" and next(ml) then
      local parts = {}
      for _, k in ipairs(sorted_keys(ml)) do parts[#parts + 1] = k .. "=" .. tostring(ml[k]) end
      id.selector = table.concat(parts, ",")
    end
  end
  if id.port == nil then id.port = ctx.template.port end
  if id.url == nil then id.url = ctx.url end
  if given.mcp_port == nil then
    local pod = type(dep.spec) == "table" and type(dep.spec.template) == "table" and dep.spec.template.spec
    for _, c in ipairs(type(pod) == "table" and pod.containers or {}) do
      if c.name == "mcp-server" and type(c.ports) == "table" and c.ports[1] then id.mcp_port = c.ports[1].containerPort end
    end
  end
  if id.repl_label == nil then
    local preferred = ctx.policy and ctx.policy.repl_label
    if preferred and labels[preferred] == ctx.repl.id then
      id.repl_label = preferred
    else
      for _, k in ipairs(sorted_keys(labels)) do
        if labels[k] == ctx.repl.id then id.repl_label = k; break end
      end
    end
  end
  if id.managed_selector == nil and labels["app.kubernetes.io/managed-by"] == "devexd" then
    id.managed_selector = "app.kubernetes.io/managed-by=devexd"
  end

  for _, k in ipairs({ "selector", "url", "managed_selector", "repl_label" }) do
    if not nonempty(id[k]) then fail("identity.%s is missing and cannot be derived from the objects", k) end
  end
  for _, k in ipairs({ "port", "mcp_port" }) do
    local v = id[k]
    if (k == "port" or v ~= nil) and (math.type(v) ~= "integer" or v < 1 or v > 65535) then
      fail("identity.%s must be a port number, not %s", k, tostring(v))
    end
  end
  if not may_match(pod_labels_of(dep), id.selector) then
    fail("identity.selector (%s) does not match the labels of the deployment's pods", id.selector)
  end
  if not may_match(labels, id.managed_selector) then
    fail("identity.managed_selector (%s) does not match the deployment's labels", id.managed_selector)
  end
  if labels[id.repl_label] ~= ctx.repl.id then
    fail("the deployment's label %s must be the REPL id (identity.repl_label)", id.repl_label)
  end
  return id
end

-- build(policy, meta, opts) -> objs, identity (raises with a clear message)
function M.build(policy, meta, opts)
  local ctx = M.context(policy, meta, opts)
  local wp = policy.workload
  local build = type(wp.build) == "function" and wp.build or require("policy.workload").build
  local ok, objs = pcall(build, ctx)
  if not ok then error("policy.workload.build failed: " .. tostring(objs), 0) end
  local ok2, id = pcall(M.identity, objs, ctx)
  if not ok2 then error("policy.workload.build: " .. tostring(id), 0) end
  return objs, id, ctx
end

-- A REPL that exists nowhere, for rendering, checking and the orphan listing.
local PROBE_IDS = { "repl-00000000-0000-4000-8000-000000000001", "repl-00000000-0000-4000-8000-000000000002" }
function M.probe(policy, template, n, user)
  local naming = policy.naming or {}
  local id = PROBE_IDS[n or 1] or PROBE_IDS[1]
  if type(naming.id_pattern) == "string" and not id:match(naming.id_pattern) then id = naming.new_id() end
  user = user or "devexd-probe"
  return { id = id, user = user, template = template, name = "probe", prefix = "repl/" .. user .. "/" .. id .. "/" }
end

-- The policy check (run when the policy loads, so --check and SIGHUP refuse
-- a build that fails): every template builds, with a valid identity, and the
-- identity's REPL-independent parts do not depend on the REPL or template.
function M.check(policy)
  local r = config.runner or {}
  if r.exposure == "ingress" and not (nonempty(policy.workload.host) or nonempty(r.domain) or nonempty(r.cluster_ip)) then
    error('runner.exposure is "ingress" but no runner host is set (RUNNER_DOMAIN, RUNNER_CLUSTER_IP or workload.host)', 0)
  end
  local opts = { token = "check", namespace = "default" }
  local first
  for _, name in ipairs(sorted_keys(policy.templates.catalogue)) do
    local ok, e, id = pcall(M.build, policy, M.probe(policy, name), opts)
    if not ok then error("templates.catalogue." .. name .. ": " .. tostring(e), 0) end
    local other = first
    if not first then
      first = id
      -- a second REPL of the same template: its selector must not select the first one's pods
      local objs2
      ok, objs2, other = pcall(M.build, policy, M.probe(policy, name, 2), opts)
      if not ok then error("templates.catalogue." .. name .. ": " .. tostring(objs2), 0) end
      if other.selector == id.selector or selects(pod_labels_of(objs2.deployment), id.selector) then
        error("policy.workload.build: identity.selector is the same for two REPLs (" .. id.selector .. ")", 0)
      end
    end
    for _, k in ipairs({ "managed_selector", "repl_label" }) do
      if id[k] ~= other[k] then
        error(string.format("policy.workload.build: identity.%s must not depend on the REPL or template (%s, %s)",
          k, tostring(other[k]), tostring(id[k])), 0)
      end
    end
  end
  return true
end

-- What `devexd workload render` prints: the objects in apply order and the identity.
function M.render(policy, meta, opts)
  local objs, id = M.build(policy, meta, opts)
  local list = {}
  for _, k in ipairs(NAMED) do if objs[k] then list[#list + 1] = objs[k] end end
  return { objects = json.array(list), identity = id }
end

-- The identity of a session's objects: stored by start in the session, else built again.
local function session_identity(self, meta, sess)
  if type(sess) == "table" and nonempty(sess.k8s_selector) and nonempty(sess.k8s_deployment) then
    return { selector = sess.k8s_selector, names = { deployment = sess.k8s_deployment } }
  end
  local ok, _, id = pcall(M.build, P(), meta, { namespace = self.namespace })
  if not ok then return nil, _ end
  return id
end

-- ---------------------------------------------------------------------------
-- The driver
-- ---------------------------------------------------------------------------

function Driver:ping()
  local c, e = client()
  if not c then return nil, e end
  return c:version()
end

-- A reason the pod can never become Ready (so the start fails now, not at the deadline).
local FATAL = { ErrImagePull = true, ImagePullBackOff = true, InvalidImageName = true,
                CrashLoopBackOff = true, CreateContainerConfigError = true, CreateContainerError = true }

local function pod_state(pod)
  if type(pod) ~= "table" or type(pod.status) ~= "table" then return nil end
  for _, c in ipairs(pod.status.conditions or {}) do
    if c.type == "Ready" and c.status == "True" then return "ready" end
  end
  for _, list in ipairs({ pod.status.initContainerStatuses or {}, pod.status.containerStatuses or {} }) do
    for _, cs in ipairs(list) do
      local w = type(cs.state) == "table" and cs.state.waiting
      if type(w) == "table" and FATAL[w.reason] then
        return "failed", string.format("container %s: %s%s", cs.name, w.reason, w.message and (": " .. w.message) or "")
      end
    end
  end
  if pod.status.phase == "Failed" then return "failed", "pod failed: " .. tostring(pod.status.reason or "") end
  return nil
end

-- An object being deleted (a pod: a previous session's on its way out,
-- never this one's).
local function dying(p) return p.metadata ~= nil and p.metadata.deletionTimestamp ~= nil end

-- Of pods, the first that is Ready or can never be, each one before it
-- noted for the session's event stream (its phases); dying ones passed
-- over. -> "ready", pod | "failed", why | nil
-- (The waits end with their continuation outside any generic for: in Lua
-- 5.4 a return inside one is not a tail call, and the wait's frame would
-- stay under what the continuation does.)
local function first_settled(pods, repl_id)
  for _, p in ipairs(pods) do
    if not dying(p) then
      events.pod(repl_id, p)
      local st, why = pod_state(p)
      if st == "ready" then return st, p end
      if st == "failed" then return st, why end
    end
  end
  return nil
end

-- The pod waiter and event waiters (ews: nil if none) of wait_ready_shared, closed.
local function close_waiters(w, ews)
  w:close()
  for _, ew in pairs(ews or {}) do ew:close() end
end

-- What the event waiters ews took, as notes in the session's event stream,
-- each reason and message once (said: those already noted, or nil). -> said
local function note_events(repl_id, ews, said)
  for _, ew in pairs(ews) do
    for _, ev in ipairs(ew:take()) do
      local key = tostring(ev.reason) .. "\0" .. tostring(ev.message)
      said = said or {}
      if not said[key] then
        said[key] = true
        events.note(repl_id, { reason = ev.reason, message = ev.message, type = ev.type,
                               pod = ev.involvedObject and ev.involvedObject.name })
      end
    end
  end
  return said
end

-- A start's wait for its pod through the shared watch: one table, s below,
-- with the step that looks at what the waiters took (Wait.step). Parked,
-- s is what the waiters signal (their cond): Wait.signal resumes the step
-- from the park; otherwise their cond is a devex.stream cond. Fields: w
-- (the pod waiter), ews (the event waiters, by pod name, once a pod is
-- seen), said (the event notes made), deadline, timeout, repl_id, k, park
-- (the park's handle while parked). Few fields on purpose: up to 8 fit the
-- table's smaller size (266 bytes against 458 with 11).
local Wait = {}
Wait.__index = Wait

local step -- Wait.step under a guard, below

function Wait.signal(s)
  local p = s.park
  if p then
    s.park = nil
    p(step, s)
  end
end

local function arm(p, s) s.park = p end

local function wait_end(s, ...)
  close_waiters(s.w, s.ews)
  return s.k(...)
end

local function expired(s)
  return wait_end(s, err(504, "the pod was not Ready within " .. s.timeout .. "s"))
end

function Wait.step(s)
  local w = s.w
  local parks = w.cond == s
  while true do
    local left = s.deadline - timer.now()
    if left <= 0 then return expired(s) end
    local pods, e
    if not parks then
      pods, e = w:next(left)
    elseif w:quiet() then -- (nothing yields between this check and the park)
      return dstream.park(left, arm, expired, s)
    else
      pods, e = w:poll()
    end
    if not pods then return wait_end(s, err(502, "kubernetes: " .. tostring(e))) end
    for _, p in ipairs(pods) do
      if not dying(p) then
        local name = p.metadata.name
        if name and not (s.ews and s.ews[name]) then
          s.ews = s.ews or {}
          s.ews[name] = pod_informer.events(w.inf.client, w.inf.namespace):waiter(name, nil, w.cond)
        end
      end
    end
    if s.ews then s.said = note_events(s.repl_id, s.ews, s.said) end
    local st, x = first_settled(pods, s.repl_id)
    if st == "ready" then return wait_end(s, x) end
    if st then return wait_end(s, err(502, x)) end
  end
end

-- Wait.step, its waiters closed if it raises (a waiter left registered
-- would keep the informer's watch open for good): not a tail call, so the
-- continuation runs under this frame (a parked start keeps none: parking
-- drops it).
local function unwaited(s, ok, ...)
  if not ok then
    close_waiters(s.w, s.ews)
    error((...), 0)
  end
  return ...
end
step = function(s) return unwaited(s, pcall(Wait.step, s)) end

-- Waits through the worker's shared pod watch (runtime.pod_informer) until
-- a pod of the start's selector is Ready or fails. Used when the pods carry
-- the policy's managed_selector and both selectors are equality-based (the
-- informer watches the first and matches the second itself); otherwise the
-- start watches its own pods (wait_ready_own_watch). Both end by calling
-- k(pod) or k(nil, err) in tail position (Driver:start's continuation).
-- A start answered later whose callers said so (parks: opts.park, from the
-- session route through repl.sessions; its task can park) waits parked
-- (devex.stream.park): no coroutine while nothing happens, the
-- waiters' signal or the deadline resuming the step as a new task of the
-- request (one more parked start: 18.6 to 16.7 KB, waves of 1,000).
-- Otherwise it waits on a cond.
function Driver:wait_ready_shared(c, id, timeout, repl_id, k, parks)
  local inf = pod_informer.get(c, self.namespace, id.managed_selector, id.repl_label)
  local selector = id.selector
  local s = setmetatable({ deadline = timer.now() + timeout, timeout = timeout, repl_id = repl_id, k = k }, Wait)
  -- (what the scheduler and the kubelet say about this start's pods, as
  -- notes in the session's event stream, comes through event waiters woken
  -- through the same cond: Wait.step)
  s.w = inf:waiter(repl_id, function(labels) return selects(labels, selector) == true end,
                   parks and dstream.parkable() and s or dstream.cond())
  return step(s)
end

-- Watches the pods of selector until one is Ready or fails.
function Driver:wait_ready_own_watch(c, selector, timeout, repl_id, k)
  local deadline = timer.now() + timeout
  local ref = { apiVersion = "v1", kind = "Pod", namespace = self.namespace }
  local l, e = c:list(ref, { label_selector = selector })
  if not l then return k(err(502, "kubernetes: " .. tostring(e))) end
  local st, x = first_settled(l.items, repl_id)
  if st == "ready" then return k(x) end
  if st == "failed" then return k(err(502, x)) end
  local w
  w, e = c:watch(ref, { label_selector = selector, resource_version = l.resourceVersion,
                        timeout = math.max(0.1, deadline - timer.now()) })
  if not w then return k(err(502, "kubernetes: " .. tostring(e))) end
  while true do
    local ev
    ev, e = w:next()
    if not ev then
      w:close()
      if e and e.code == "timeout" then return k(err(504, "the pod was not Ready within " .. timeout .. "s")) end
      return k(err(502, "kubernetes watch: " .. tostring(e)))
    end
    if ev.type ~= "DELETED" then
      st, x = first_settled(ev.type == "RESYNC" and ev.items or { ev.object }, repl_id)
      if st then
        w:close()
        if st == "ready" then return k(x) end
        return k(err(502, x))
      end
    end
  end
end

-- With policy.workload.start_concurrency = N (> 0), at most N starts of
-- this worker make their API calls at once; the others queue here, first
-- come first served. A burst of starts otherwise has every one of them in
-- flight together, each with its libcurl transfer and the decoded answers:
-- the allocator keeps that peak long after the starts have parked to wait
-- for their pods (200 parked starts: about 72-74 KB of resident memory each
-- without turns, 57-58 KB with 8; before the answers were decoded with keep,
-- 101-128 and 58-73). The price is the burst's latency (the 200 starts'
-- calls took 5.4-6.1 s instead of 1.8 s with 8 turns;
-- tests/bench/bench_parked_starts.py), so it is off by default.
-- Waiting for a pod holds no slot.
local gate = require("runtime.turns").new() -- this worker's (a VM's) turns and queued starts
local function gate_timeout(timeout)
  return err(504, "the start did not get its turn to call the API server within " .. timeout .. "s (too many starts at once)")
end
M._gate = gate -- for tests

-- Applies the Deployment, then the Service, Ingress and Middleware at once
-- with the Deployment as their owner. -> true, or nil, err
-- What is read of the answers: the Deployment's uid (its dependents' owner)
-- and nothing of the others (see the k8s client's keep); of an earlier
-- Deployment, whether it is being deleted.
local DEPLOYMENT_KEEP, NOTHING_KEEP = { metadata = { uid = true } }, {}
local DYING_GET_OPTS = { keep = { metadata = { deletionTimestamp = true } } }
local function apply_objects(c, objs)
  local dep, e = c:apply(objs.deployment, { force = true, keep = DEPLOYMENT_KEEP })
  if not dep then return err(502, "kubernetes: deployment: " .. tostring(e)) end
  local owner = { apiVersion = "apps/v1", kind = "Deployment", name = dep.metadata.name, uid = dep.metadata.uid,
                  controller = true, blockOwnerDeletion = true }
  local others = {}
  for _, k in ipairs({ "service", "ingress", "middleware" }) do
    local o = objs[k]
    if o then
      o.metadata.ownerReferences = { owner }
      others[#others + 1] = function() return c:apply(o, { force = true, keep = NOTHING_KEEP }) end
    end
  end
  for i, r in ipairs(tasks.all(others)) do
    if not r[1] or not r[2] then
      return err(502, "kubernetes: " .. tostring(r[3] or r[2]) .. " (object " .. i .. ")")
    end
  end
  return true
end

-- driver:start(meta, opts) -> info | nil, err (runtime's contract), or with
-- k: ends by calling k(info) or k(nil, err) in tail position and returns
-- what k returns. A caller that tail-calls this with its own continuation
-- (repl.sessions) keeps no frame while the start waits minutes for its pod:
-- the parked coroutine is then only its task's first frames and the wait's,
-- so the collector shrinks its stack (which the apply grew to 160 slots,
-- and the wait 8 frames deep kept there: about 2.7 KB a parked start).
function Driver:start(meta, opts, k)
  k = k or same
  local c, e = client()
  if not c then return k(err(503, "kubernetes: " .. tostring(e))) end
  local policy = P()
  local ok, objs, id = pcall(M.build, policy, meta, { token = opts.token, namespace = self.namespace })
  if not ok then return k(err(500, tostring(objs))) end
  local timeout = math.min(opts.deadline or 120, policy.workload.start_timeout or 120)
  local deadline = timer.now() + timeout
  -- A stop deletes the Deployment with foreground propagation: until its pods
  -- are gone it is still there, marked for deletion. Applying to it would
  -- revive a Deployment the garbage collector is about to remove (and the
  -- pod watch would find the dying pod Ready): wait until it is gone.
  local dref = { apiVersion = "apps/v1", kind = "Deployment", namespace = self.namespace,
                 name = objs.deployment.metadata.name }
  local limit = math.floor(policy.workload.start_concurrency or 0)
  if limit <= 0 then limit = math.huge end -- no turns (the default)
  while true do
    local turn, old, ge = gate:run(limit, deadline, c.get, c, dref, DYING_GET_OPTS)
    if not turn then return k(gate_timeout(timeout)) end
    if not old then
      if ge and ge.status ~= 404 then return k(err(502, "kubernetes: deployment: " .. tostring(ge))) end
      break
    end
    if not dying(old) then break end
    if timer.now() > deadline then
      return k(err(504, "the previous session's workload was still being removed after " .. timeout .. "s"))
    end
    timer.sleep(0.2)
  end
  local turn, applied, ae = gate:run(limit, deadline, apply_objects, c, objs)
  if not turn then return k(gate_timeout(timeout)) end
  if not applied then return k(nil, ae) end
  local shared = policy.workload.shared_watch ~= false and selects(pod_labels_of(objs.deployment), id.managed_selector)
    and id.repl_label and parse_selector(id.selector) and true
  -- a parked start keeps only what it waits with: the objects it sent and the
  -- API's answers (tens of KB of tables each) are garbage from here on, and
  -- of its identity (which holds the Deployment's labels) what is read below;
  -- opts (the token, the local runtime's exit callback) was for the build
  local parks = opts.park -- (the caller's word: see repl.sessions.start)
  objs, dref, opts = nil, nil, nil
  id = { url = id.url, port = id.port, mcp_port = id.mcp_port, selector = id.selector,
         managed_selector = id.managed_selector, repl_label = id.repl_label, deployment = id.names.deployment }
  events.emit(meta.id, "scheduling")
  local left = math.max(0.1, deadline - timer.now())
  local function ready(pod, werr)
    if not pod then return k(nil, werr) end
    local ip = pod.status and pod.status.podIP or ""
    return k({
      url = id.url,
      endpoint = ip .. ":" .. tostring(id.port),
      session = {
        pod = pod.metadata.name, node = pod.spec and pod.spec.nodeName or "",
        mcp_endpoint = id.mcp_port and (ip .. ":" .. tostring(id.mcp_port)) or nil,
        -- what stop needs, as this policy made it (see the header)
        k8s_selector = id.selector, k8s_deployment = id.deployment,
      },
    })
  end
  -- tail calls: this frame (its locals, the objects it applied) goes
  if shared then return self:wait_ready_shared(c, id, left, meta.id, ready, parks) end
  return self:wait_ready_own_watch(c, id.selector, left, meta.id, ready)
end

-- The name of an uploader (ephemeral container named save-*, as
-- policy.sync.container names them) that the pod lists but that has not
-- terminated, or nil.
function M.running_uploader(pod)
  local spec = type(pod.spec) == "table" and pod.spec.ephemeralContainers or {}
  local done = {}
  local st = type(pod.status) == "table" and pod.status.ephemeralContainerStatuses or {}
  for _, cs in ipairs(st) do
    if type(cs.state) == "table" and cs.state.terminated then done[cs.name] = true end
  end
  for _, ec in ipairs(spec) do
    if type(ec.name) == "string" and ec.name:match("^save%-") and not done[ec.name] then return ec.name end
  end
  return nil
end

-- At most STOP_CONCURRENCY stops of this worker add their uploader at
-- once; the others queue, first come first served. Adding an ephemeral
-- container writes the whole pod (before 1.22: read it, put it back, again
-- on a conflict): 500 stops at once took 16 s each at the median in the API
-- server and 17 of them passed the client's 30 s timeout (not retried: the
-- add is not idempotent) and answered 502 (bench_storm.py --ready-now).
-- Waiting for the uploader to finish holds no slot.
M.STOP_CONCURRENCY = 8
local stop_gate = require("runtime.turns").new()

-- The session's pod that is not being deleted, or false when there is none;
-- nil, err when the pods cannot be listed. The list is first answered from
-- the API server's watch cache (resourceVersion 0): a quorum read decodes
-- every pod of the namespace from etcd to filter them by label, and 500 stops
-- at once made 500 of those, each over the client's 30 s timeout, retried
-- (about 1,900 failed lists; 499 of the 500 answered 502). "No live pod" means
-- the stop saves nothing before deleting, so that answer is confirmed with a
-- quorum read (the cache may lag a pod the Deployment just made).
function Driver:live_pod(c, selector)
  local ref = { apiVersion = "v1", kind = "Pod", namespace = self.namespace }
  for _, rv in ipairs({ "0", false }) do
    local l, e = c:list(ref, { label_selector = selector, resource_version = rv or nil })
    if not l then return nil, e end
    for _, p in ipairs(l.items) do
      if not dying(p) then return p end
    end
  end
  return false
end

function Driver:stop(meta, sess)
  local c, e = client()
  if not c then return err(503, "kubernetes: " .. tostring(e)) end
  local id
  id, e = session_identity(self, meta, sess)
  if not id then return err(500, "cannot tell which objects are this session's: " .. tostring(e)) end
  local pod
  pod, e = self:live_pod(c, id.selector)
  if pod == nil then return err(502, "kubernetes: " .. tostring(e)) end
  local t = M.template(P(), meta.template)
  if pod and t and t.agent == true then
    -- the agent saves the workspace itself: its final checkpoint, confirmed
    -- by devexd's sync before it answers, and only then the deletion. A dead
    -- or failing agent falls back to the uploader below.
    events.emit(meta.id, "saving")
    -- ask the pod that runs now: after a node loss the Deployment recreated
    -- it at another address than the one the start recorded (the port is
    -- the template's, unchanged)
    local target = sess
    local ip, port = pod.status and pod.status.podIP, type(sess) == "table" and type(sess.endpoint) == "string"
      and sess.endpoint:match("^[^/]+:(%d+)$")
    if type(ip) == "string" and ip ~= "" and port then
      target = {}
      for k, v in pairs(sess) do target[k] = v end
      target.endpoint = ip .. ":" .. port
    end
    local ok, why = require("runtime.agent").final_checkpoint(target, P().sync)
    if ok then return self:delete_deployment(c, id.names.deployment) end
    log.warn("repl stop: the agent's final checkpoint failed, saving with the uploader", { repl = meta.id, error = why })
  end
  if pod then
    local policy = P()
    local sp = policy.sync
    local ctx = { repl = meta, s3 = config.s3, policy = sp, workload_policy = policy.workload }
    events.emit(meta.id, "saving")
    -- An uploader of an earlier attempt that has not finished (devexd was
    -- restarted while it waited, or the sweep retries a slow save): wait for
    -- it instead of adding another, since an ephemeral container can never
    -- be removed from its pod and each retry would add one more.
    local name = M.running_uploader(pod)
    if name then
      log.info("repl stop: waiting for the uploader of an earlier attempt", { repl = meta.id, container = name })
    else
      local container = (type(sp.container) == "function" and sp.container or require("policy.sync").container)(ctx)
      local ok
      local turn
      turn, ok, e = stop_gate:run(M.STOP_CONCURRENCY, timer.now() + (sp.timeout or 300), c.add_ephemeral_container, c,
        { namespace = self.namespace, name = pod.metadata.name }, container)
      if not turn then
        return err(504, "the stop did not get its turn to start the uploader (too many stops at once)")
      end
      if not ok then return err(502, "could not start the uploader: " .. tostring(e)) end
      name = container.name
    end
    local code
    code, e = c:wait_ephemeral({ namespace = self.namespace, name = pod.metadata.name }, name,
      { timeout = sp.timeout or 300 })
    if code == nil then return err(504, "the upload did not finish: " .. tostring(e)) end
    if code ~= 0 then return err(502, "the upload failed with exit code " .. tostring(code)) end
  else
    log.warn("repl stop: no running pod, nothing to save", { repl = meta.id })
  end
  return self:delete_deployment(c, id.names.deployment)
end

function Driver:delete_deployment(c, name)
  local res, e = c:delete({ apiVersion = "apps/v1", kind = "Deployment", namespace = self.namespace, name = name },
    { propagation = "Foreground" })
  if not res then return err(502, "kubernetes: " .. tostring(e)) end
  return true
end

-- Deployments of managed_selector older than grace seconds: { {repl=, name=, age=}, ... };
-- nil when they cannot be listed (so that no caller takes "none" for an answer).
function Driver:orphans(grace)
  local policy = P()
  local names = sorted_keys(policy.templates.catalogue)
  if not names[1] then return nil end
  local ok, _, id = pcall(M.build, policy, M.probe(policy, names[1]), { namespace = self.namespace })
  if not ok then
    log.warn("sweep: cannot list orphans, the policy does not build", { error = tostring(_) })
    return nil
  end
  local c = client()
  if not c then return nil end
  local l = c:list({ apiVersion = "apps/v1", kind = "Deployment", namespace = self.namespace },
    { label_selector = id.managed_selector })
  if not l then return nil end
  local out = {}
  local now = os.time()
  -- os.time reads a date table as local time; creationTimestamp is UTC
  local offset = os.time(os.date("!*t", now)) - now
  for _, d in ipairs(l.items) do
    local created = d.metadata.creationTimestamp or ""
    local y, mo, da, h, mi, se = created:match("^(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)")
    local t = y and os.time({ year = y, month = mo, day = da, hour = h, min = mi, sec = se, isdst = false }) - offset or now
    local repl = d.metadata.labels and d.metadata.labels[id.repl_label]
    if repl and now - t >= grace then out[#out + 1] = { repl = repl, name = d.metadata.name, age = now - t } end
  end
  return out
end

function Driver:remove_orphan(o)
  local c, e = client()
  if not c then return err(503, "kubernetes: " .. tostring(e)) end
  return self:delete_deployment(c, o.name)
end

-- Removes what a start made (a failed start, a start interrupted by a crash).
function Driver:remove(meta, sess)
  local c, e = client()
  if not c then return err(503, "kubernetes: " .. tostring(e)) end
  local id
  id, e = session_identity(self, meta, sess)
  if not id then return err(500, "cannot tell which objects are this session's: " .. tostring(e)) end
  return self:remove_now(c, id)
end

-- What a failed start (or the delete of a REPL) leaves is removed at once and
-- seen gone: nothing there served anyone, so nothing waits for a graceful
-- end. The Deployment goes with background propagation (a foreground delete
-- stays visible until the garbage collector has removed every pod, minutes
-- for a burst of failed starts), then its ReplicaSets and pods are deleted
-- directly with no grace period, and the pods are listed until none is left
-- (up to REMOVE_CONFIRM seconds; past that the sweep's orphan cleanup is the
-- backstop, and the log says so).
M.REMOVE_CONFIRM = 15
function Driver:remove_now(c, id)
  local ns = self.namespace
  local res, e = c:delete({ apiVersion = "apps/v1", kind = "Deployment", namespace = ns, name = id.names.deployment },
    { propagation = "Background" })
  if not res then return err(502, "kubernetes: " .. tostring(e)) end
  local deadline = timer.now() + M.REMOVE_CONFIRM
  for _, kind in ipairs({ { "apps/v1", "ReplicaSet" }, { "v1", "Pod" } }) do
    local ref = { apiVersion = kind[1], kind = kind[2], namespace = ns }
    local l
    l, e = c:list(ref, { label_selector = id.selector })
    if not l then return err(502, "kubernetes: " .. tostring(e)) end
    local dels = {}
    for _, o in ipairs(l.items) do
      dels[#dels + 1] = function()
        return c:delete({ apiVersion = kind[1], kind = kind[2], namespace = ns, name = o.metadata.name },
          { grace_period = 0, propagation = "Background" })
      end
    end
    tasks.all(dels)
  end
  local podref = { apiVersion = "v1", kind = "Pod", namespace = ns }
  while true do
    local l
    l, e = c:list(podref, { label_selector = id.selector })
    if l and #l.items == 0 then return true end
    if timer.now() > deadline then
      log.warn("a failed start's pods are not gone yet; the sweep's orphan cleanup will see to them",
        { deployment = id.names.deployment, pods = l and #l.items or nil, error = e and tostring(e) or nil })
      return true
    end
    timer.sleep(0.25)
  end
end

-- A running session's pod was replaced (its node lost, evicted, deleted):
-- the Deployment made a new one, whose agent restored the last checkpoint
-- and said so (routes.runner_storage, the restore's progress). The gateway
-- must reach the new pod, so the session's endpoint is read again from the
-- API server: the newest pod of the session's selector that is not being
-- deleted and has an IP, on the ports the session had. The runner's own word
-- is never the address (a runner could otherwise point the owner's gateway
-- anywhere inside the cluster). -> the session's fields to change (endpoint,
-- pod, node, mcp_endpoint) when it moved | false | nil, err
function Driver:refresh_endpoint(meta, sess)
  local c, e = client()
  if not c then return nil, e end
  local id
  id, e = session_identity(self, meta, sess)
  if not id then return nil, e end
  local l
  l, e = c:list({ apiVersion = "v1", kind = "Pod", namespace = self.namespace }, { label_selector = id.selector })
  if not l then return nil, e end
  local best
  for _, p in ipairs(l.items) do
    local md, st = p.metadata or {}, p.status or {}
    if not md.deletionTimestamp and type(st.podIP) == "string" and st.podIP ~= ""
        and (not best or tostring(md.creationTimestamp) > tostring(best.metadata.creationTimestamp)) then
      best = p
    end
  end
  if not best then return false end
  local ip = best.status.podIP
  local function moved(ep)
    local port = type(ep) == "string" and ep:match(":(%d+)$")
    return port and (ip .. ":" .. port) or nil
  end
  local ep, mcp = moved(sess.endpoint), moved(sess.mcp_endpoint)
  if not ep or (ep == sess.endpoint and best.metadata.name == sess.pod) then return false end
  -- the session's new fields; repl.service (restored) writes them: the
  -- session's state is the domain's to write, the driver only finds the pod
  local fields = { endpoint = ep, pod = best.metadata.name, node = best.spec and best.spec.nodeName or "" }
  if mcp then fields.mcp_endpoint = mcp end
  return fields
end

return M
