-- routes.gateway: the runner gateway. The IDE page reaches a REPL's runner
-- at <runner domain>/<replId>/... (HTTP and WebSocket; on devexd's own host
-- also at /repl/<replId>/...); devexd proxies it to that REPL's runner with
-- the prefix stripped, as the original service's Traefik StripPrefix did:
--   - only the REPL's owner gets through (session cookie, which
--     auth.cookie_domain lets reach the runner domain); anyone else, and a
--     REPL that does not exist or does not run, gets the same 404;
--   - a WebSocket handshake whose Origin is not an allowed frontend origin
--     is refused (403), and so is any other request with a foreign Origin
--     that is not a GET or HEAD: a foreign page must not use the cookie;
--   - the upstream is the address devexd recorded when it started the
--     session (pod or local runner), never anything from the request;
--   - the Cookie and Authorization headers never reach the runner;
--   - traffic marks the session active (repl.activity), bytes inside a
--     WebSocket included.
-- /mcp/<replId>/... on the runner domain goes the same way to the session's
-- MCP sidecar when it has one (policy.workload).
local proxy = require("devex.proxy")
local current = require("auth.current")
local auth_settings = require("auth.settings")
local activity = require("repl.activity")
local service = require("repl.service")
local store = require("repl.store")
local timer = require("devex.timer")

local M = {}

local NOT_FOUND = { error = "repl not found" }
local OWNERS_MAX = 10000
local OWNER_TTL = 30 -- seconds: `devexd owners migrate` may re-key a REPL's owner

-- replId -> { owner, expires }: a page load makes dozens of requests, and a
-- REPL's owner changes only through a migration, so a worker remembers it
-- for a while (bounded); whether a session runs, and where, is read per
-- request (one HMGET), so a stopped session is never reached through a
-- stale entry
local owners, nowners = {}, 0

local function owner_of(id)
  local now = timer.now()
  local o = owners[id]
  if o and o.expires > now then return o.owner end
  local meta, err = store.get(id)
  if meta == nil then return nil, err end -- the store failed: not "no such REPL"
  if not meta then return false end
  if not o then
    if nowners >= OWNERS_MAX then owners, nowners = {}, 0 end
    nowners = nowners + 1
  end
  owners[id] = { owner = meta.user, expires = now + OWNER_TTL }
  return meta.user
end

function M.forget(id)
  if owners[id] then owners[id], nowners = nil, nowners - 1 end
end

-- The answer for a request that reached a REPL's prefix: rest is the path
-- after the prefix ("" or "/..."), prefix what the browser sees before it.
local function pass(req, id, rest, prefix, mcp)
  local origin = req.headers["origin"]
  local upgrade = req.raw:upgrade()
  if upgrade or (req.method ~= "GET" and req.method ~= "HEAD") then
    if (upgrade or origin) and not (origin and auth_settings.allowed_origins[origin:lower()]) then
      return 403, { error = "origin not allowed" }
    end
  end
  local s, err = current.load(req)
  if s == nil then return current.unavailable(err) end
  if not s or not service.valid_id(id) then return 404, NOT_FOUND end
  local owner, oerr = owner_of(id)
  if owner == nil then return current.unavailable(oerr) end
  if owner ~= req.user.owner then return 404, NOT_FOUND end
  local endpoint, mcp_endpoint = store.session_endpoints(id)
  if endpoint == nil then return 503, { error = "session store unavailable" } end
  -- (the owner learns why; the status stays that of a REPL with nothing to reach)
  if not endpoint then return 404, { error = "this repl is not running: start its session first" } end
  local upstream = endpoint
  if mcp then
    upstream = mcp_endpoint
    if not upstream then return 404, { error = "this repl has no MCP server" } end
  end
  if rest == "" then
    return current.finish(req, 308, nil, { Location = prefix .. "/" })
  end
  activity.mark(id, { kind = "http", method = req.method, path = rest,
                      websocket = upgrade and true or false })
  local q = req.raw:query()
  if q then rest = rest .. "?" .. q end
  return current.finish(req, proxy.pass{
    upstream = upstream, path = rest, location_prefix = prefix .. "/", activity = id,
    headers = { cookie = false, authorization = false, ["X-Devex-Repl"] = id },
  })
end

-- Every request on the runner domain.
function M.runner_domain(req)
  local path = req.path
  local mcp = false
  if path:sub(1, 5) == "/mcp/" then
    mcp = true
    path = path:sub(5)
  end
  local id, rest = path:match("^/([^/]+)(.*)$")
  if not id then return 404, NOT_FOUND end
  return pass(req, id, rest, (mcp and "/mcp/" or "/") .. id, mcp)
end

-- /repl/<replId>/... on devexd's own host.
function M.own_host(req)
  local id = req.params.id
  local prefix = "/repl/" .. id
  -- the router decodes the id; a percent-encoded one is not a REPL's prefix
  if req.path:sub(1, #prefix) ~= prefix then return 404, NOT_FOUND end
  return pass(req, id, req.path:sub(#prefix + 1), prefix, false)
end

function M.register(app)
  app:gateway(M.runner_domain)
  app:route("*", "/repl/:id/*rest", M.own_host)
  app:route("*", "/repl/:id", M.own_host)
  activity.start()
end

return M
