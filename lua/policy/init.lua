-- policy: the REPL lifecycle policy operators change without recompiling.
-- Defaults live in lua/policy/<knob>.lua; the operator's file (config
-- policy.file, default /etc/devexd/policy.lua when it exists) returns a table
-- whose entries override them, e.g.
--   return { quota = { repls_per_user = 5 }, cleanup = { idle_limit = 600 } }
-- Tables merge key by key (nested tables too); a function replaces the
-- default. A file that fails to load stops `devexd --check` and makes SIGHUP
-- keep the running policy (the new VM is refused). With the Kubernetes
-- runtime, policy.workload.build must build every template with a valid
-- identity (lua/runtime/kubernetes.lua, M.check): a build that raises or
-- returns no Deployment is refused the same way, not found at the first start.
local config = require("devex.config").get()
local schema = require("policy.schema")

local KNOBS = { "quota", "naming", "templates", "cleanup", "workload", "sync", "limits", "messages" }
KNOBS[#KNOBS + 1] = "magiclink" -- who may sign in with an e-mail magic link (routes.magiclink)
KNOBS[#KNOBS + 1] = "sandbox" -- a local runner's limits under runtime.isolation, and a save's (runtime.local)

local function merge(dst, src, path)
  for k, v in pairs(src) do
    if type(v) == "table" and type(dst[k]) == "table" and getmetatable(v) == nil then
      merge(dst[k], v, path .. "." .. tostring(k))
    else
      dst[k] = v
    end
  end
end

local function copy(t)
  if type(t) ~= "table" then return t end
  local out = {}
  for k, v in pairs(t) do out[k] = copy(v) end
  return out
end

local policy = {}
for _, knob in ipairs(KNOBS) do
  local ok, mod = pcall(require, "policy." .. knob)
  if ok then
    policy[knob] = copy(mod)
  elseif not tostring(mod):find("module 'policy." .. knob .. "' not found", 1, true) then
    error(mod, 0)
  end
end

local pconf = config.policy or {}
local file = pconf.file
if file == nil then
  local f = io.open("/etc/devexd/policy.lua", "r")
  if f then f:close(); file = "/etc/devexd/policy.lua" end
end
if file and file ~= "" then
  local chunk, err = loadfile(file, "t")
  if not chunk then error("policy: " .. err, 0) end
  local overrides = chunk()
  if type(overrides) ~= "table" then error("policy: " .. file .. " must return a table", 0) end
  for k, v in pairs(overrides) do
    local known = false
    for _, knob in ipairs(KNOBS) do if knob == k then known = true end end
    if not known then error(string.format("policy: %s: unknown knob '%s'", file, tostring(k)), 0) end
    local ok, why = schema.check(k, v, policy[k])
    if not ok then error(string.format("policy: %s: %s", file, why), 0) end
    if type(v) == "table" and type(policy[k]) == "table" then
      merge(policy[k], v, k)
    else
      policy[k] = v
    end
  end
end
policy.file = file

-- sanity checks, so a typo is refused at load and not found at the first request
local q = policy.quota
assert(math.type(q.repls_per_user) == "integer" and q.repls_per_user >= 0, "policy: quota.repls_per_user must be an integer >= 0")
assert(math.type(q.sessions_per_user) == "integer" and q.sessions_per_user >= 0, "policy: quota.sessions_per_user must be an integer >= 0")
assert(type(policy.naming.new_id) == "function", "policy: naming.new_id must be a function")
for name, t in pairs(policy.templates.catalogue) do
  assert(type(name) == "string" and name:match("^[a-z0-9][a-z0-9-]*$"), "policy: template names must be lowercase DNS labels")
  assert(type(t) == "table", "policy: templates.catalogue." .. name .. " must be a table")
end
for _, k in ipairs({ "idle_limit", "max_lifetime", "sweep_interval", "stuck_after", "orphan_grace" }) do
  assert(type(policy.cleanup[k]) == "number" and policy.cleanup[k] > 0, "policy: cleanup." .. k .. " must be a positive number")
end
assert(policy.cleanup.counts_as_activity == nil or type(policy.cleanup.counts_as_activity) == "function",
  "policy: cleanup.counts_as_activity must be a function(signal) -> boolean")

for _, k in ipairs({ "memory", "processes", "file_size", "open_files", "tmp_size", "save_file_max", "save_total_max" }) do
  assert(math.type(policy.sandbox[k]) == "integer" and policy.sandbox[k] > 0, "policy: sandbox." .. k .. " must be a positive integer")
end
assert(policy.sandbox.cpu == nil or (type(policy.sandbox.cpu) == "number" and policy.sandbox.cpu > 0),
  "policy: sandbox.cpu must be a positive number of CPUs or nil")

if ((config.runtime or {}).driver or "kubernetes") == "kubernetes" then
  local ok, e = pcall(require("runtime.kubernetes").check, policy)
  if not ok then error("policy: workload: " .. tostring(e), 0) end
end

return policy
