-- runtime: the driver that runs REPL sessions, chosen by config.runtime.driver:
--   "kubernetes" (the workload of policy.workload on a cluster) or
--   "local" (the template's runner as a child process of devexd, single-host mode).
-- A driver has:
--   driver.name
--   driver:start(meta, {token, deadline}) -> { url, endpoint, session = {extra fields} } | nil, {status, message}
--   driver.takes_continuation: true when driver:start(meta, opts, k) ends by
--     calling k(info) or k(nil, err) in tail position (repl.sessions then
--     keeps no frame while a start waits for its workload); with opts.park
--     (the callers' word that they are tail calls down to a later answer's
--     function) it may wait parked (devex.stream.park), which drops them
--   driver:stop(meta, session) -> true | nil, {status, message}   (files saved before anything is removed)
--   driver:remove(meta)        -> removes whatever a failed start left
local config = require("devex.config").get()

local M = {}
local drivers = {}

-- The local runtime runs users' code on devexd's host: with a real sign-in
-- (any provider but dev_login, so more than one person) only isolated
-- (runtime.sandbox); devexd refuses to start otherwise.
if ((config.runtime or {}).driver or "kubernetes") == "local" then
  local real = next(require("auth.registry").providers) ~= nil or require("auth.magiclink").enabled
  require("runtime.sandbox").check(config, real)
end

-- The URL the frontend gets for a REPL's runner in gateway exposure, when a
-- runner domain is configured: <runner.scheme>://<runner.domain>/<replId>/
-- (devexd answers it: lua/routes/gateway.lua); nil otherwise.
function M.gateway_url(id)
  local r = config.runner or {}
  if (r.exposure or "gateway") ~= "gateway" or type(r.domain) ~= "string" or r.domain == "" then return nil end
  return (r.scheme or "https") .. "://" .. r.domain .. "/" .. id .. "/"
end

function M.driver()
  local name = (config.runtime or {}).driver or "kubernetes"
  local d = drivers[name]
  if d then return d end
  local ok, mod = pcall(require, "runtime." .. name)
  if not ok then error("runtime driver '" .. tostring(name) .. "' is not available: " .. tostring(mod), 0) end
  d = mod.new(config)
  drivers[name] = d
  return d
end

return M
