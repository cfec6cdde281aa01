-- runtime.kubernetes: sessions as Kubernetes workloads (policy.workload).
-- start applies the Deployment (server-side apply, so a retry changes
-- nothing), then the Service, Ingress and Middleware concurrently with the
-- Deployment as their owner, and watches the pod until Ready; an image that
-- cannot be pulled or a container that crashes fails the start at once with
-- the reason. stop injects the uploader (policy.sync) and deletes the
-- Deployment (its owned objects follow) only when the upload exited 0.
local services = require("services.k8s")
local tasks = require("devex.tasks")
local timer = require("devex.timer")
local log = require("devex.log")
local policy = require("policy")
local config = require("devex.config").get()

local Driver = {}
Driver.__index = Driver

local M = {}

function M.new(conf)
  local kube = conf.kube or {}
  return setmetatable({ name = "kubernetes", namespace = kube.namespace or "default" }, Driver)
end

local function err(status, message) return nil, { status = status, message = message } end

local function client()
  local c, e = services.client()
  if not c then return nil, e end
  return c
end

local function object_name(id) return id end -- repl-<uuid>: a valid DNS label

local function selector(id) return "devex.io/repl=" .. id end

function Driver:ping()
  local c, e = client()
  if not c then return nil, e end
  return c:version()
end

local function image_of(t)
  local img = t.image
  if not img:find("/", 1, true) and policy.templates.registry then img = policy.templates.registry .. "/" .. img end
  return img
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

-- Watches the session's pods until one is Ready or fails.
function Driver:wait_ready(c, id, timeout)
  local deadline = timer.now() + timeout
  local ref = { apiVersion = "v1", kind = "Pod", namespace = self.namespace }
  local l, e = c:list(ref, { label_selector = selector(id) })
  if not l then return err(502, "kubernetes: " .. tostring(e)) end
  for _, p in ipairs(l.items) do
    local s, why = pod_state(p)
    if s == "ready" then return p end
    if s == "failed" then return err(502, why) end
  end
  local w
  w, e = c:watch(ref, { label_selector = selector(id), resource_version = l.resourceVersion,
                        timeout = math.max(0.1, deadline - timer.now()) })
  if not w then return err(502, "kubernetes: " .. tostring(e)) end
  while true do
    local ev
    ev, e = w:next()
    if not ev then
      w:close()
      if e and e.code == "timeout" then return err(504, "the pod was not Ready within " .. timeout .. "s") end
      return err(502, "kubernetes watch: " .. tostring(e))
    end
    local pods = ev.type == "RESYNC" and ev.items or { ev.object }
    for _, p in ipairs(pods) do
      if ev.type ~= "DELETED" then
        local s, why = pod_state(p)
        if s == "ready" then w:close(); return p end
        if s == "failed" then w:close(); return err(502, why) end
      end
    end
  end
end

function Driver:start(meta, opts)
  local c, e = client()
  if not c then return err(503, "kubernetes: " .. tostring(e)) end
  local t = policy.templates.catalogue[meta.template]
  local wp = policy.workload
  local host = wp.host or (config.runner or {}).cluster_ip or "localhost"
  local public = (config.public_url or "http://localhost:8080"):gsub("/+$", "")
  local ctx = {
    repl = meta, template = t, name = object_name(meta.id), token = opts.token, namespace = self.namespace,
    callback_url = public .. "/api/runner/" .. meta.id, image = image_of(t), s3 = config.s3, host = host,
    policy = wp,
  }
  local objs = (type(wp.build) == "function" and wp.build or require("policy.workload").build)(ctx)
  local dep
  dep, e = c:apply(objs.deployment, { force = true })
  if not dep then return err(e and e.status == 403 and 502 or 502, "kubernetes: deployment: " .. tostring(e)) end
  local owner = { apiVersion = "apps/v1", kind = "Deployment", name = dep.metadata.name, uid = dep.metadata.uid,
                  controller = true, blockOwnerDeletion = true }
  local others = {}
  for _, k in ipairs({ "service", "ingress", "middleware" }) do
    local o = objs[k]
    if o then
      o.metadata.ownerReferences = { owner }
      others[#others + 1] = function() return c:apply(o, { force = true }) end
    end
  end
  for i, r in ipairs(tasks.all(others)) do
    if not r[1] or not r[2] then
      return err(502, "kubernetes: " .. tostring(r[3] or r[2]) .. " (object " .. i .. ")")
    end
  end
  local timeout = math.min(opts.deadline or 120, wp.start_timeout or 120)
  local pod
  pod, e = self:wait_ready(c, meta.id, timeout)
  if not pod then return nil, e end
  return {
    url = "https://" .. host .. "/" .. meta.id .. "/",
    endpoint = (pod.status and pod.status.podIP or "") .. ":" .. tostring(t.port or 8080),
    session = { pod = pod.metadata.name, node = pod.spec and pod.spec.nodeName or "" },
  }
end

function Driver:stop(meta, sess)
  local c, e = client()
  if not c then return err(503, "kubernetes: " .. tostring(e)) end
  local l
  l, e = c:list({ apiVersion = "v1", kind = "Pod", namespace = self.namespace }, { label_selector = selector(meta.id) })
  if not l then return err(502, "kubernetes: " .. tostring(e)) end
  local pod
  for _, p in ipairs(l.items) do
    if not (p.metadata and p.metadata.deletionTimestamp) then pod = p end
  end
  if pod then
    local sp = policy.sync
    local ctx = { repl = meta, s3 = config.s3, policy = sp, workload_policy = policy.workload }
    local container = (type(sp.container) == "function" and sp.container or require("policy.sync").container)(ctx)
    local ok
    ok, e = c:add_ephemeral_container({ namespace = self.namespace, name = pod.metadata.name }, container)
    if not ok then return err(502, "could not start the uploader: " .. tostring(e)) end
    local code
    code, e = c:wait_ephemeral({ namespace = self.namespace, name = pod.metadata.name }, container.name,
      { timeout = sp.timeout or 300 })
    if code == nil then return err(504, "the upload did not finish: " .. tostring(e)) end
    if code ~= 0 then return err(502, "the upload failed with exit code " .. tostring(code)) end
  else
    log.warn("repl stop: no running pod, nothing to save", { repl = meta.id })
  end
  return self:remove(meta)
end

-- Labelled Deployments older than grace seconds: { {repl=, name=}, ... }.
function Driver:orphans(grace)
  local c = client()
  if not c then return {} end
  local l = c:list({ apiVersion = "apps/v1", kind = "Deployment", namespace = self.namespace },
    { label_selector = "app.kubernetes.io/managed-by=devexd" })
  if not l then return {} end
  local out = {}
  local now = os.time()
  for _, d in ipairs(l.items) do
    local created = d.metadata.creationTimestamp or ""
    local y, mo, da, h, mi, se = created:match("^(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)")
    local t = y and os.time({ year = y, month = mo, day = da, hour = h, min = mi, sec = se, isdst = false }) or now
    -- os.time reads the table as local time; creationTimestamp is UTC
    local offset = os.time(os.date("!*t", now)) - now
    t = t - offset
    local repl = d.metadata.labels and d.metadata.labels["devex.io/repl"]
    if repl and now - t >= grace then out[#out + 1] = { repl = repl, name = d.metadata.name } end
  end
  return out
end

function Driver:remove_orphan(o)
  local c, e = client()
  if not c then return err(503, "kubernetes: " .. tostring(e)) end
  local res
  res, e = c:delete({ apiVersion = "apps/v1", kind = "Deployment", namespace = self.namespace, name = o.name },
    { propagation = "Foreground" })
  if not res then return err(502, "kubernetes: " .. tostring(e)) end
  return true
end

function Driver:remove(meta)
  local c, e = client()
  if not c then return err(503, "kubernetes: " .. tostring(e)) end
  local res
  res, e = c:delete({ apiVersion = "apps/v1", kind = "Deployment", namespace = self.namespace,
                      name = object_name(meta.id) }, { propagation = "Foreground" })
  if not res then return err(502, "kubernetes: " .. tostring(e)) end
  return true
end

return M
