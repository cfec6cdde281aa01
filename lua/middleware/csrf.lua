-- middleware.csrf: a state-changing request (any method but GET, HEAD and
-- OPTIONS) that carries the session cookie must come from an allowed origin:
-- its Origin is one of the CORS origins or devexd's own (PUBLIC_URL), or it
-- has no Origin and a JSON Content-Type (which a cross-site form cannot send
-- without a preflight). Otherwise 403 {"error":"forbidden"}.
local log = require("devex.log")
local settings = require("auth.settings")

local SAFE = { GET = true, HEAD = true, OPTIONS = true }
local own = settings.origin_of(settings.public_url)

local function origin_ok(origin)
  local o = origin:lower()
  return settings.allowed_origins[o] == true or (own ~= nil and o == own)
end

local function json_type(ct)
  if type(ct) ~= "string" then return false end
  local mt = ct:match("^%s*([^;%s]+)")
  return mt ~= nil and mt:lower() == "application/json"
end

return function(req, next)
  if SAFE[req.method] or not req.cookies[settings.cookie_name] then return next(req) end
  local origin = req.headers["origin"]
  if origin then
    if origin_ok(origin) then return next(req) end
  elseif json_type(req.headers["content-type"]) then
    return next(req)
  end
  log.warn("csrf: refused a state-changing request", { method = req.method, path = req.path,
    origin = origin or "(none)" })
  return 403, { error = "forbidden" }
end
