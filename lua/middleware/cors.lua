-- middleware.cors: the browser frontend calls devexd from another origin with
-- credentials. Allowed origins: FRONTEND_URL's, and http://localhost:3000 when
-- environment is development. An allowed Origin is echoed exactly with
-- Access-Control-Allow-Credentials: true; any other origin gets no CORS
-- headers. Preflights (OPTIONS with Access-Control-Request-Method) are
-- answered here for GET, POST, DELETE and OPTIONS and the requested headers
-- (each must be an HTTP token). Responses carry Vary: Origin.
local settings = require("auth.settings")
local add_header = require("auth.cookies").add_header

local METHODS = "GET, POST, DELETE, OPTIONS"
local ALLOWED_METHODS = { GET = true, POST = true, DELETE = true, OPTIONS = true, HEAD = true }
local MAX_AGE = "600"
-- shared and never modified: cors is the outermost middleware, so nothing
-- touches the headers it returns
local VARY_ONLY = setmetatable({ Vary = "Origin" }, { __newindex = function() error("VARY_ONLY is shared", 2) end })

local M = {}

function M.allowed(origin)
  return type(origin) == "string" and settings.allowed_origins[origin:lower()] == true
end

-- "a, b ,c" -> "a, b, c" or nil when an entry is not an RFC 9110 token.
local function header_list(v)
  if v == nil then return "" end
  local out = {}
  for item in (v .. ","):gmatch("([^,]*),") do
    item = item:match("^[ \t]*(.-)[ \t]*$")
    if item ~= "" then
      if not item:match("^[!#$%%&'*+%-.^_`|~%w]+$") then return nil end
      out[#out + 1] = item:lower()
    end
  end
  return table.concat(out, ", ")
end

local function preflight(req, origin)
  local vary = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
  if not M.allowed(origin) then return 403, { error = "origin not allowed" }, { Vary = vary } end
  local method = req.headers["access-control-request-method"]
  if not ALLOWED_METHODS[method] then return 403, { error = "method not allowed" }, { Vary = vary } end
  local hdrs = header_list(req.headers["access-control-request-headers"])
  if not hdrs then return 400, { error = "invalid Access-Control-Request-Headers" }, { Vary = vary } end
  local h = {
    ["Access-Control-Allow-Origin"] = origin,
    ["Access-Control-Allow-Credentials"] = "true",
    ["Access-Control-Allow-Methods"] = METHODS,
    ["Access-Control-Max-Age"] = MAX_AGE,
    ["Vary"] = vary,
  }
  if hdrs ~= "" then h["Access-Control-Allow-Headers"] = hdrs end
  return 204, nil, h
end

function M.middleware(req, next)
  local origin = req.raw:header("origin") -- straight from C: no header table for the common case
  if req.method == "OPTIONS" and origin and req.headers["access-control-request-method"] then
    return preflight(req, origin)
  end
  local status, body, headers = next(req)
  if not origin and not headers then
    return status, body, VARY_ONLY -- the common case for non-browser clients: no table to build
  end
  headers = add_header(headers, "Vary", "Origin")
  if M.allowed(origin) then
    headers["Access-Control-Allow-Origin"] = origin
    headers["Access-Control-Allow-Credentials"] = "true"
    headers["Access-Control-Expose-Headers"] = "X-Request-Id"
  end
  return status, body, headers
end

return M.middleware
