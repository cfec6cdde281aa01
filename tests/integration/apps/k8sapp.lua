-- k8sapp: the test app of tests/integration/test_k8s.py and tests/bench/bench_k8s.sh.
-- Each route opens a Kubernetes client (lua/k8s) from the settings the test
-- sends (conf) and runs what the test asks, answering with JSON that says
-- exactly what Lua got back: results, or err = {code, message, status, ...}.
local framework = require("devex.app")
local json = require("devex.json")
local kc = require("devex.k8s")
local tasks = require("devex.tasks")
local timer = require("devex.timer")
local k8s = require("k8s")

local app = framework.new()
require("routes.health")(app)

local function plain(v, depth)
  depth = depth or 0
  if type(v) ~= "table" or depth > 20 then return v end
  local out = {}
  for k, x in pairs(v) do
    if type(x) ~= "function" and type(x) ~= "userdata" then out[k] = plain(x, depth + 1) end
  end
  local mt = getmetatable(v)
  if mt and mt.__name == "devex.json.array" then return json.array(out) end
  return out
end

local function plain_err(err)
  if type(err) ~= "table" then return { code = "raised", message = tostring(err) } end
  local out = plain(err)
  out.last = nil
  out.str = tostring(err)
  return out
end

local function client(b)
  return k8s.new(b.conf or {})
end

-- POST /new {conf}: what k8s.new makes of the settings (raised: its error)
app:post("/new", function(req)
  local ok, c, err = pcall(k8s.new, req:json().conf)
  if not ok then return 200, { ok = false, raised = tostring(c) } end
  if not c then return 200, { ok = false, err = plain_err(err) } end
  return 200, { ok = true, max_connections = c.max_connections }
end)

-- POST /op {conf, op, args = [...]}: one client method call.
app:post("/op", function(req)
  local b = req:json()
  local c, err = client(b)
  if not c then return 200, { ok = false, err = plain_err(err) } end
  local args = b.args or {}
  local t0 = timer.now()
  local ok, r1, r2 = xpcall(c[b.op], debug.traceback, c, table.unpack(args, 1, b.nargs or #args))
  local elapsed = timer.now() - t0
  if not ok then return 200, { ok = false, raised = tostring(r1), elapsed = elapsed } end
  if r1 == nil then return 200, { ok = false, err = plain_err(r2), elapsed = elapsed } end
  return 200, { ok = true, result = plain(r1), second = plain(r2), elapsed = elapsed }
end)

-- POST /config {settings}: devex.k8s.load_config as JSON (PEM text shortened).
app:post("/config", function(req)
  local b = req:json()
  local ok, cfg, err = pcall(kc.load_config, b.settings)
  if not ok then return 200, { ok = false, raised = tostring(cfg) } end
  if not cfg then return 200, { ok = false, err = plain_err(err) } end
  return 200, { ok = true, result = cfg }
end)

-- POST /wait {conf, ref, pred = "ready" | "exists" | "absent", timeout}
app:post("/wait", function(req)
  local b = req:json()
  local c, err = client(b)
  if not c then return 200, { ok = false, err = plain_err(err) } end
  local preds = {
    ready = k8s.pod_ready,
    exists = function(o) return o ~= nil end,
    absent = function(o) return o == nil end,
  }
  local t0 = timer.now()
  local v, obj = c:wait(b.ref, preds[b.pred or "ready"], { timeout = b.timeout or 30 })
  local elapsed = timer.now() - t0
  if not v then return 200, { ok = false, err = plain_err(obj), elapsed = elapsed } end
  return 200, { ok = true, result = plain(obj), elapsed = elapsed }
end)

-- POST /ephemeral {conf, pod = {namespace, name}, container, timeout, legacy}:
-- inject an ephemeral container and wait for it to terminate.
app:post("/ephemeral", function(req)
  local b = req:json()
  local c, err = client(b)
  if not c then return 200, { ok = false, err = plain_err(err) } end
  local r
  r, err = c:add_ephemeral_container(b.pod, b.container, { legacy = b.legacy })
  if not r then return 200, { ok = false, stage = "add", err = plain_err(err) } end
  local code, pod, info = c:wait_ephemeral(b.pod, b.container.name, { timeout = b.timeout or 30 })
  if not code then return 200, { ok = false, stage = "wait", err = plain_err(pod) } end
  return 200, { ok = true, exit_code = code, reason = info.reason }
end)

-- POST /watch {conf, ref, opts, max_events, stop_after}: the events of one watch.
app:post("/watch", function(req)
  local b = req:json()
  local c, err = client(b)
  if not c then return 200, { ok = false, err = plain_err(err) } end
  local w
  w, err = c:watch(b.ref, b.opts)
  if not w then return 200, { ok = false, err = plain_err(err) } end
  local events = {}
  local final
  for _ = 1, b.max_events or 10 do
    local ev, eerr = w:next()
    if not ev then final = plain_err(eerr); break end
    local e = { type = ev.type }
    if ev.object then
      e.name = ev.object.metadata and ev.object.metadata.name
      e.rv = ev.object.metadata and ev.object.metadata.resourceVersion
    end
    if ev.items then
      e.names = {}
      for i, it in ipairs(ev.items) do e.names[i] = it.metadata.name end
      e.names = json.array(e.names)
    end
    events[#events + 1] = e
  end
  w:close()
  return 200, { ok = true, events = json.array(events), final = final, relists = w.relists }
end)

-- POST /batch {conf, objects, mode = "concurrent" | "serial", verb = "apply" | "create"}:
-- the objects of a REPL session at once or one after the other; the elapsed time.
app:post("/batch", function(req)
  local b = req:json()
  local c, err = client(b)
  if not c then return 200, { ok = false, err = plain_err(err) } end
  local verb = b.verb or "apply"
  local t0 = timer.now()
  local results, failures
  local function one(obj)
    if verb == "delete" then
      local st, derr = c:delete(obj)
      return st, derr
    end
    return c[verb](c, obj)
  end
  if b.mode == "serial" then
    results, failures = {}, {}
    for i, obj in ipairs(b.objects) do
      local r, rerr = one(obj)
      if r then results[i] = r else failures[#failures + 1] = { index = i, error = rerr } end
    end
  else
    results, failures = tasks.map(b.objects, one, { concurrency = #b.objects })
  end
  local elapsed = timer.now() - t0
  local errs = {}
  for i, f in ipairs(failures) do errs[i] = { index = f.index, error = plain_err(f.error) } end
  return 200, { ok = #failures == 0, elapsed = elapsed, failures = json.array(errs), n = #b.objects }
end)

-- POST /rotate {conf, ref, token_file, new_token, wait}: a get, the token file
-- rewritten, a pause, another get with the same client (token re-read?).
app:post("/rotate", function(req)
  local b = req:json()
  local c, err = client(b)
  if not c then return 200, { ok = false, err = plain_err(err) } end
  local r1, e1 = c:get(b.ref)
  local f = assert(io.open(b.token_file, "w"))
  f:write(b.new_token .. "\n")
  f:close()
  timer.sleep(b.wait or 0)
  local r2, e2 = c:get(b.ref)
  return 200, { ok = r1 ~= nil and r2 ~= nil, e1 = e1 and plain_err(e1), e2 = e2 and plain_err(e2) }
end)

-- POST /conns {conf, n}: n concurrent GET /version, reporting the HTTP versions seen.
app:post("/conns", function(req)
  local b = req:json()
  local c, err = client(b)
  if not c then return 200, { ok = false, err = plain_err(err) } end
  local fns = {}
  for i = 1, b.n or 4 do
    fns[i] = function()
      local _, res = c:request{ method = "GET", path = "/version", idempotent = true }
      return res and res.http_version
    end
  end
  local out = {}
  for i, r in ipairs(tasks.all(fns)) do out[i] = r[2] or json.null end
  return 200, { ok = true, versions = json.array(out) }
end)

return app
