-- devex.app: the web framework every route is written against.
--
--   local app = require("devex.app").new()
--   app:use(function(req, next) ... return next(req) end)      -- global middleware
--   app:get("/api/repl/session/:id", auth, function(req) ... end) -- route middleware + handler
--
-- A handler returns `status, body, headers`; a table body is sent as JSON.
-- Errors raised with app.error(status, body) become that response; any other
-- Lua error becomes 500 {"error":"internal error","request_id":...} and is
-- logged with its traceback. An error *returned* by the layers below (a
-- devex.error: primitives, drivers, storage, the REPL domain) becomes its
-- HTTP answer in app.fail(err), the one place that mapping is made; handlers
-- write `return app.reply(service.list(req.user))`.
local router = require("devex.router")
local json = require("devex.json")
local log = require("devex.log")
local metrics = require("devex.metrics")
local stream = require("devex.stream")
local setmetatable, xpcall = setmetatable, xpcall -- per request: no global lookups

local M = {}

local HttpError = {}
HttpError.__index = HttpError
HttpError.__tostring = function(e) return string.format("HTTP %d", e.status) end

-- Raises an error that the dispatcher turns into this response.
function M.error(status, body, headers)
  if type(body) == "string" then body = { error = body } end
  error(setmetatable({ status = status, body = body, headers = headers }, HttpError), 2)
end

function M.is_error(e) return getmetatable(e) == HttpError end

local derror = require("devex.error")

-- the status of an error that does not carry one, by its code
local STATUS_OF_CODE = {
  unavailable = 503, timeout = 504, invalid_input = 400, not_found = 404, conflict = 409, limit = 429,
}

-- fail(err) -> status, body: the HTTP answer of a returned error. A
-- devex.error answers its status (or, without one, the status its code
-- implies, else 500) with {"error": err.message} plus err.fields. The
-- domain (repl.service, repl.sessions) wraps the errors of drivers and
-- upstreams, whose status is the upstream's, before they reach a route.
-- Anything else is a bug below: logged, answered 500 "internal error".
function M.fail(err)
  if derror.is(err) then
    local st = err.status
    if math.type(st) ~= "integer" or st < 400 or st > 599 then st = STATUS_OF_CODE[err.code] or 500 end
    local body = { error = tostring(err.message or err.code) }
    if type(err.fields) == "table" then
      for k, v in pairs(err.fields) do
        if k ~= "error" then body[k] = v end
      end
    end
    return st, body
  end
  metrics.counter("devex_lua_errors_total", { where = "request" })
  log.error("a route got an error that is not a devex.error", { error = tostring(err) })
  return 500, { error = "internal error" }
end

-- reply(value, err) -> 200, value; or the answer of err (app.fail) when
-- value is nil or false.
function M.reply(v, err)
  if v == nil or v == false then return M.fail(err) end
  return 200, v
end

-- ---- request -------------------------------------------------------------

local function unescape(s)
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- Parses a query string; the first value of a repeated name wins.
function M.parse_query(qs)
  local t = {}
  if not qs or qs == "" then return t end
  for pair in qs:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    k = unescape(k)
    if k ~= "" and t[k] == nil then t[k] = unescape(v) end
  end
  return t
end

function M.parse_cookies(header)
  local t = {}
  if not header then return t end
  for pair in header:gmatch("[^;]+") do
    local k, v = pair:match("^%s*([^=%s]+)%s*=%s*(.-)%s*$")
    if k and t[k] == nil then
      if v:sub(1, 1) == '"' and v:sub(-1) == '"' and #v >= 2 then v = v:sub(2, -2) end
      t[k] = v
    end
  end
  return t
end

-- req.headers looks each header up on first use (case-insensitive), so a
-- request whose middleware reads one header does not copy all of them.
-- pairs(req.headers) sees only what was read: use req:header_table() to list.
local RAW = {} -- private key of the proxy's userdata
local headers_mt = {
  __index = function(t, k)
    if type(k) ~= "string" then return nil end
    local v = rawget(t, RAW):header(k)
    if v ~= nil then rawset(t, k, v) end
    return v
  end,
}
local function headers_proxy(raw)
  return setmetatable({ [RAW] = raw }, headers_mt)
end

local lazy = {
  headers = function(req) return headers_proxy(req.raw) end,
  id = function(req) return req.raw:id() end,
  query = function(req) return M.parse_query(req.raw:query()) end,
  cookies = function(req) return M.parse_cookies(req.raw:header("cookie")) end,
  body = function(req) return req.raw:body() end,
}

local Request = {}
Request.__index = function(req, k)
  local f = lazy[k]
  if f then
    local v = f(req)
    rawset(req, k, v)
    return v
  end
  return Request[k]
end

function Request:header(name) return self.raw:header(name) end

-- Every request header: { [lowercase name] = value }, repeated ones joined.
function Request:header_table() return self.raw:headers() or {} end

-- The decoded JSON body; raises a 400 error when the body is not valid JSON.
function Request:json()
  local cached = rawget(self, "_json")
  if cached ~= nil then return cached end
  local body = self.body
  if body == nil or body == "" then M.error(400, "request body must be JSON") end
  local v, err = json.decode(body)
  if v == nil then M.error(400, "invalid JSON: " .. err) end
  rawset(self, "_json", v)
  return v
end

M.Request = Request

-- ---- app -----------------------------------------------------------------

local App = {}
App.__index = App

function M.new()
  return setmetatable({ _router = router.new(), _routes = {}, _middleware = {}, _chains = nil, _gateway = nil }, App)
end

-- app:gateway([middleware...], handler): what answers every request whose
-- Host is the runner domain (config runner.domain; the C core tells the
-- dispatcher). The app's global middleware does not run there: that domain
-- is not the API (no CORS, no API routes), only the runner gateway.
function App:gateway(...)
  local fns = { ... }
  assert(#fns >= 1, "gateway needs a handler")
  for i, f in ipairs(fns) do assert(type(f) == "function", "gateway argument " .. i .. " must be a function") end
  self._gateway = fns
  return self
end

function App:use(mw)
  assert(type(mw) == "function", "middleware must be a function(req, next)")
  assert(self._chains == nil, "app:use after the app started serving")
  self._middleware[#self._middleware + 1] = mw
  return self
end

-- app:route(method, pattern, [middleware...], handler)
function App:route(method, pattern, ...)
  local fns = { ... }
  assert(#fns >= 1, "route needs a handler")
  for i, f in ipairs(fns) do assert(type(f) == "function", "route argument " .. i .. " must be a function") end
  local id = #self._routes + 1
  self._router:add(method, pattern, id)
  self._routes[id] = { method = method, pattern = pattern, fns = fns }
  return self
end

for _, m in ipairs({ "get", "post", "put", "patch", "delete", "options" }) do
  local upper = m:upper()
  App[m] = function(self, pattern, ...) return self:route(upper, pattern, ...) end
end

-- Every route, for documentation checks: { {method=, pattern=}, ... }.
function App:routes()
  local out = {}
  for _, r in ipairs(self._routes) do out[#out + 1] = { method = r.method, pattern = r.pattern } end
  return out
end

-- A chain runs fns[i](req, next) as an onion; the last one is the handler.
-- The `next` functions are made once per chain, not per request, so a
-- middleware must pass the request on: next(req).
local function make_chain_runner(fns)
  local nexts = {}
  for i = #fns, 1, -1 do
    local f = fns[i]
    if i == #fns then
      nexts[i] = f -- the handler: called as f(req), no wrapper
    else
      local after = nexts[i + 1]
      nexts[i] = function(req)
        if not req then error("middleware must call next(req) with the request", 2) end
        return f(req, after)
      end
    end
  end
  return nexts[1]
end

local function not_found() return 404, { error = "not found" } end

local function build_chain(global, fns)
  local chain = {}
  for _, mw in ipairs(global) do chain[#chain + 1] = mw end
  for _, f in ipairs(fns) do chain[#chain + 1] = f end
  return make_chain_runner(chain)
end

local function on_error(e)
  if M.is_error(e) then return e end
  return { traceback = debug.traceback(tostring(e), 2) }
end

-- The answer of a chain (or a later function) run under xpcall: an error
-- raised on purpose is its HTTP answer, any other a logged 500. req: the
-- request, or what later() kept of it (id, route).
local function answer(req, ok, status, body, headers)
  if ok then return status, body, headers end
  local e = status
  if M.is_error(e) then return e.status, e.body, e.headers end
  metrics.counter("devex_lua_errors_total", { where = "request" })
  log.error("lua error", { error = e.traceback, route = req.route or "" })
  return 500, { error = "internal error", request_id = req.id }
end

-- Shared by every request of a route without parameters; read-only so that a
-- handler cannot leak a value into other requests through it.
local NO_PARAMS = setmetatable({}, { __newindex = function() error("req.params of a route without parameters is read-only", 2) end })

-- The function the C core calls for every request, in the request's task.
-- Per request it builds one table (the request, sized for its usual fields
-- in one go) and calls the route's chain; everything else is prepared here.
function App:dispatcher()
  local routes = {}
  for id, r in ipairs(self._routes) do
    routes[id] = { chain = build_chain(self._middleware, r.fns), pattern = r.pattern, label = metrics.route_label(r.pattern) }
  end
  local not_found_chain = build_chain(self._middleware, { not_found })
  local gateway_chain = make_chain_runner(self._gateway or { not_found })
  local gateway_label = metrics.route_label("(runner gateway)")
  self._chains = routes
  local rt = self._router
  local global = self._middleware
  local set_route = metrics.set_route
  local match = rt.match

  return function(raw, method, path, gateway)
    local req, chain
    local route
    if gateway then
      req = setmetatable({ raw = raw, method = method, path = path, params = NO_PARAMS, gateway = true }, Request)
      chain = gateway_chain
      set_route(gateway_label)
    else
      local id, params, allow = match(rt, method, path)
      route = routes[id]
      if route then
        req = setmetatable({ raw = raw, method = method, path = path, params = params or NO_PARAMS, route = route.pattern }, Request)
        chain = route.chain
        set_route(route.label) -- the request's label in /metrics
      else
        req = setmetatable({ raw = raw, method = method, path = path, params = NO_PARAMS }, Request)
        if params == "method_not_allowed" then
          chain = build_chain(global, { function() return 405, { error = "method not allowed" }, { Allow = allow } end })
        else
          chain = not_found_chain
        end
      end
    end
    -- (a status that is not an integer is answered 500 and logged by the C core)
    return answer(req, xpcall(chain, on_error, req))
  end
end

-- later(req, fn [, post]) -> 200, a response made later: the handler returns
-- it through the middleware (their headers are kept), then fn() runs as a
-- task of its own and its results (through post, e.g. M.reply, when given)
-- are the answer, an error mapped as a handler's. Meanwhile the handler's
-- coroutine, its middleware frames and the request are freed: a start that
-- waits minutes for its workload keeps only what fn holds. fn must not use
-- req (gone by then) or its raw request.
-- fn's task may park (devex.stream.park: ended while it waits, the request
-- kept); the function the park is resumed with (and its arguments) then
-- takes fn's place, its results going through post and the error mapping as
-- fn's would.
function M.later(req, fn, post)
  local id, route = req.id, req.route
  local function run(f, ...)
    local who = { id = id, route = route } -- (made when run: a parked answer keeps two strings, not a table)
    if post then return answer(who, xpcall(function(...) return post(f(...)) end, on_error, ...)) end
    return answer(who, xpcall(f, on_error, ...))
  end
  return 200, stream.later(fn, run)
end

return M
