-- k8s.client: devexd's Kubernetes client, on devex.http (I/O, HTTP/2 over
-- TLS: concurrent requests of a worker share one connection) and devex.k8s
-- (C: connection config, name checks, path/query escaping).
--
--   local k8s = require("k8s")
--   local c, err = k8s.new(settings)   -- settings: see devex.k8s load_config, plus
--       max_attempts = 4, backoff = 0.1 (s), timeout = 30 (s), connect_timeout = 5,
--       http2 = true, field_manager = "devexd", token_max_age = 60 (s),
--       max_connections = 4: connections per worker for requests (watches are
--       apart): a burst waits for a stream on one of them rather than opening
--       a connection per request past the server's streams per connection
--
-- Objects are plain Lua tables as devex.json decodes them. A "ref" names an
-- object: { apiVersion =, kind =, namespace =, name = } or a whole object
-- (its metadata.namespace / metadata.name). A namespaced kind without a
-- namespace gets the client's default (cfg.namespace or "default").
--
--   c:create(obj, {subresource=})                      -> obj | nil, err   (not retried)
--   c:get(ref, {subresource=})                         -> obj | nil, err
--   c:list(ref, {label_selector=, field_selector=, limit=, resource_version=}) -- ref.namespace = nil: the default
--                                                         namespace; all_namespaces = true: every one
--     -> { items = {...}, resourceVersion = "..." } with every page (`continue`) followed
--   c:delete(ref, {propagation = "Foreground"|"Background"|"Orphan", grace_period = s})
--     -> "deleted", answer | "gone" (it was not there) | nil, err
--   c:patch(ref, patch, {type = "merge"|"strategic"|"json", subresource=})  -> obj | nil, err
--     (patch: a table, or the JSON text; json patches are not retried)
--   c:apply(obj, {field_manager=, force=, subresource=, keep=}) -> obj | nil, err  (server-side apply)
--   c:replace(obj, {subresource=})                      -> obj | nil, err  (PUT, not retried)
--   c:watch(ref, {resource_version=, timeout=, label_selector=, field_selector=, name=, keep=})
--     -> watcher; watcher:next() -> event | nil, err; event = { type = "ADDED" | "MODIFIED" |
--        "DELETED" | "RESYNC", object = obj (RESYNC: items = {...} from a fresh list after
--        410 Gone) }; err.code "timeout" when the watch's timeout passed. watcher:close().
--   c:wait(ref, pred, {timeout = 60})  -> value, obj | nil, err: pred(obj, why) is called with
--     the object now (why "EXISTING", or obj nil and why "ABSENT") and after every change
--     (why = the event type; "DELETED" with obj nil); its first truthy result ends the wait
--     and is returned with the object (nil when absent). err.code "timeout" at the deadline.
--   c:version() -> { major=, minor=, gitVersion= } (cached)
--   c:add_ephemeral_container(ref_of_pod, container) -> pod (or EphemeralContainers) | nil, err
--     (>= 1.22: the pod's ephemeralcontainers subresource takes a strategic merge patch of
--      the Pod; before: GET/PUT of an EphemeralContainers object on that subresource)
--   c:wait_ephemeral(ref_of_pod, name, {timeout=}) -> exit_code, pod | nil, err
--   c:resource(apiVersion, kind) -> { prefix, resource, namespaced, kind } | nil, err  (discovery)
--   c:request{method, path, query, body, content_type, idempotent, keep} -> decoded body, res | nil, err
--
-- keep (get, list, apply, watch, request): only these members of each answered object
-- are made into Lua tables (devex.json's decode(text, keep)); what the verb itself reads
-- (kind, apiVersion, metadata.name/resourceVersion, a Status's code/reason/message) is
-- added. An informer that keeps a few fields of every pod of a namespace does not build
-- the whole of each (managedFields, the spec) to throw it away.
--
-- Errors: the devex.error shape. From the API's Status: { code = reason ("AlreadyExists",
-- "NotFound", "Forbidden", "Invalid", "Conflict", "Gone"... or "http_<status>"),
-- status = 409, reason =, message =, details = }. Before any request: code "invalid_input"
-- (no kind, an unknown kind, a bad name). Transport: "unavailable" or "timeout" (cause =
-- the devex.http code). Config: see devex.k8s.
--
-- Retries: 429 (honouring Retry-After), 5xx and transport failures are retried with
-- exponential backoff and full jitter, up to max_attempts, for idempotent verbs only:
-- get, list, delete, apply, watch's start, discovery. create, replace and patches are
-- not retried (a merge/strategic patch is retried only when opts.idempotent is set).
local metrics = require("devex.metrics") -- counting hooks in Client:request
local kc = require("devex.k8s")
local http = require("devex.http")
local json = require("devex.json")
local timer = require("devex.timer")
local dstream = require("devex.stream")
local log = require("devex.log")

local M = {}

-- keep with what a verb reads of every object added (see the header). Made
-- once per keep table (callers pass constants, never changed after use):
-- every start applies and gets with the same few.
local OBJECT_KEEP = { kind = true, apiVersion = true, code = true, reason = true, message = true,
                      metadata = { name = true, namespace = true, resourceVersion = true } }
local basics_of = setmetatable({}, { __mode = "k" }) -- keep -> with_basics(keep)
local list_keep_of = setmetatable({}, { __mode = "k" }) -- keep -> the keep of a list page
local function with_basics(keep)
  if keep == nil then return nil end
  if basics_of[keep] then return basics_of[keep] end
  local out = {}
  for k, v in pairs(keep) do out[k] = v end
  for k, v in pairs(OBJECT_KEEP) do
    local mine = out[k]
    if mine == nil then
      out[k] = v
    elseif type(mine) == "table" and type(v) == "table" then
      local merged = {}
      for k2, v2 in pairs(v) do merged[k2] = v2 end
      for k2, v2 in pairs(mine) do merged[k2] = v2 end
      out[k] = merged
    end
  end
  basics_of[keep] = out
  return out
end
local function list_keep(keep)
  if keep == nil then return nil end
  local out = list_keep_of[keep]
  if not out then
    out = { kind = true, apiVersion = true, metadata = { resourceVersion = true, ["continue"] = true },
            items = with_basics(keep) }
    list_keep_of[keep] = out
  end
  return out
end
local Client = {}
Client.__index = Client

-- errors: devex.error values (the shape every primitive returns)
local E = require("devex.error").new
M.error = E

local function bad(msg) return nil, E("invalid_input", msg) end

-- Discovery answers per server, shared by the clients of this VM.
local discovery_cache = {}
local DISCOVERY_TTL = 300

local CONFIG_KEYS = {
  "server", "ca_file", "ca_pem", "token", "token_file", "client_cert", "client_cert_pem", "client_key",
  "client_key_pem", "insecure", "namespace", "kubeconfig", "config_path", "context", "in_cluster_root", "in_cluster",
}
local CLIENT_KEYS = {
  max_attempts = "number", backoff = "number", timeout = "number", connect_timeout = "number", http2 = "boolean",
  field_manager = "string", token_max_age = "number", max_connections = "number",
}

function M.new(settings)
  settings = settings or {}
  if type(settings) ~= "table" then error("k8s.new: settings table expected", 2) end
  local conf = {}
  for _, k in ipairs(CONFIG_KEYS) do conf[k] = settings[k] end
  for k, v in pairs(settings) do
    local known = CLIENT_KEYS[k] ~= nil
    for _, ck in ipairs(CONFIG_KEYS) do if ck == k then known = true end end
    if not known then error("k8s.new: unknown setting '" .. tostring(k) .. "'", 2) end
    if CLIENT_KEYS[k] and type(v) ~= CLIENT_KEYS[k] then
      error("k8s.new: " .. k .. " must be a " .. CLIENT_KEYS[k], 2)
    end
  end
  local mc = settings.max_connections
  if mc ~= nil and (math.type(mc) ~= "integer" or mc < 1 or mc > 1024) then
    error("k8s.new: max_connections must be an integer from 1 to 1024", 2)
  end
  local cfg, err = kc.load_config(conf)
  if not cfg then return nil, err end
  local self = setmetatable({
    cfg = cfg,
    server = cfg.server,
    namespace = cfg.namespace or "default",
    max_attempts = settings.max_attempts or 4,
    backoff = settings.backoff or 0.1,
    timeout = settings.timeout or 30,
    connect_timeout = settings.connect_timeout or 5,
    http2 = settings.http2 ~= false,
    field_manager = settings.field_manager or "devexd",
    token_max_age = settings.token_max_age or 60,
    max_connections = mc or 4,
  }, Client)
  if cfg.token_file then
    local tok, terr = self:_read_token()
    if not tok then return nil, terr end
  end
  return self
end

-- The client holds no OS resource: closing only drops the token.
function Client:close() self._token = nil end
Client.__close = Client.close

-- ---- transport ------------------------------------------------------------

function Client:_read_token()
  local f, ferr = io.open(self.cfg.token_file, "rb")
  if not f then return nil, E("config", "cannot read the token file: " .. tostring(ferr)) end
  local t = f:read("a") or ""
  f:close()
  t = t:gsub("%s+$", ""):gsub("^%s+", "")
  if t == "" then return nil, E("config", "the token file " .. self.cfg.token_file .. " is empty") end
  self._token, self._token_at = t, timer.now()
  return t
end

-- The bearer token: cfg.token, or the token file re-read when older than
-- token_max_age (service account tokens rotate).
function Client:_token_value()
  if self.cfg.token then return self.cfg.token end
  if not self.cfg.token_file then return nil end
  if not self._token or timer.now() - self._token_at > self.token_max_age then
    local t, err = self:_read_token()
    if not t then
      if self._token then
        log.warn("k8s: token file not readable, keeping the previous token", { error = tostring(err) })
        return self._token
      end
      return nil, err
    end
  end
  return self._token
end

function Client:_http_opts(o)
  local cfg = self.cfg
  o.ca_file, o.ca_pem = cfg.ca_file, cfg.ca_pem
  o.client_cert, o.client_cert_pem = cfg.client_cert, cfg.client_cert_pem
  o.client_key, o.client_key_pem = cfg.client_key, cfg.client_key_pem
  o.insecure = cfg.insecure or nil
  o.http2 = self.http2
  o.connect_timeout = self.connect_timeout
  local headers = o.headers
  headers["user-agent"] = "devexd"
  local tok, err = self:_token_value()
  if err then return nil, err end
  if tok then headers.authorization = "Bearer " .. tok end
  return o
end

local TRANSPORT_RETRY = { connect = true, timeout = true, protocol = true, resolve = true }

local function transport_error(self, herr)
  return E(herr.code == "timeout" and "timeout" or "unavailable",
    "Kubernetes API at " .. self.server .. ": " .. tostring(herr), nil, { cause = herr.code })
end

-- The error value of a non-2xx answer: from its Status object when it has one.
local function answer_error(res)
  local st = res.body and res.body ~= "" and json.decode(res.body)
  if type(st) == "table" and st.kind == "Status" then
    local reason = type(st.reason) == "string" and st.reason ~= "" and st.reason or nil
    return E(reason or ("http_" .. res.status), type(st.message) == "string" and st.message or ("HTTP " .. res.status),
      res.status, { reason = reason, details = st.details })
  end
  local reasons = { [400] = "BadRequest", [401] = "Unauthorized", [403] = "Forbidden", [404] = "NotFound",
    [405] = "MethodNotAllowed", [409] = "Conflict", [410] = "Gone", [415] = "UnsupportedMediaType",
    [422] = "Invalid", [429] = "TooManyRequests", [500] = "InternalError", [503] = "ServiceUnavailable",
    [504] = "Timeout" }
  local reason = reasons[res.status]
  local snippet = res.body and res.body:sub(1, 200) or ""
  return E(reason or ("http_" .. res.status), "Kubernetes API answered " .. res.status ..
    (snippet ~= "" and (": " .. snippet) or ""), res.status, { reason = reason })
end
M.answer_error = answer_error

local function retry_delay(self, attempt, res)
  local ra = res and res.headers and tonumber(res.headers["retry-after"])
  if ra and ra >= 0 then return math.min(ra, 30) end
  local cap = math.min(5, self.backoff * 2 ^ (attempt - 1))
  return cap / 2 + math.random() * cap / 2
end

-- One request. o = { method, path, query = "?...", body = string | table, content_type,
-- idempotent, timeout, stream = true (returns the open stream), accept, keep }
-- -> decoded body (or the stream), res | nil, err
function Client:request(o)
  local body = o.body
  if type(body) == "table" then
    local text, jerr = json.encode(body)
    if not text then return nil, E("invalid_input", "cannot encode the body as JSON: " .. tostring(jerr)) end
    body = text
  end
  local url = self.server .. o.path .. (o.query or "")
  local attempts = o.idempotent and self.max_attempts or 1
  local last
  for attempt = 1, attempts do
    local headers = { accept = o.accept or "application/json" }
    if body then headers["content-type"] = o.content_type or "application/json" end
    -- Past the API server's streams per connection (250 for Go's HTTP/2)
    -- libcurl opened a connection per waiting request: a burst of 500 session
    -- starts left 190-300 connections of about 100 KB each in its cache. The
    -- requests wait for a stream on a few instead; a watch holds its stream
    -- for minutes, so watches are not counted (a watch-per-start policy on
    -- an HTTP/1.1 API server would otherwise wait on itself)
    local opts, cerr = self:_http_opts{ url = url, method = o.method, headers = headers, body = body,
      timeout = o.timeout or self.timeout, max_size = o.max_size,
      max_host_connections = not o.stream and self.max_connections or nil }
    if not opts then return nil, cerr end
    local res, herr
    local t0 = metrics.now() -- metrics: each attempt
    if o.stream then res, herr = http.stream(opts) else res, herr = http.request(opts) end
    metrics.counter("devex_k8s_requests_total", { method = o.method, status = res and res.status or "error" })
    metrics.observe("devex_k8s_request_duration_seconds", { method = o.method }, metrics.now() - t0)
    local retry
    if not res then
      retry = TRANSPORT_RETRY[herr.code]
      last = transport_error(self, herr)
    elseif res.status >= 200 and res.status < 300 then
      if o.stream then return res, res end
      if res.body == "" then return {}, res end
      local v, jerr = json.decode(res.body, o.keep)
      if v == nil then
        metrics.counter("devex_k8s_request_errors_total", { method = o.method, code = "bad_response" })
        return nil, E("bad_response", "the API answered invalid JSON: " .. tostring(jerr), res.status)
      end
      return v, res
    else
      if o.stream then
        -- the error body of a stream: read it (small) and close
        local lines = {}
        for _ = 1, 1000 do
          local l = res:read_line()
          if not l then break end
          lines[#lines + 1] = l
        end
        res:close()
        res = { status = res.status, headers = res.headers, body = table.concat(lines, "\n") }
      end
      last = answer_error(res)
      retry = res.status == 429 or res.status >= 500
    end
    if not retry or attempt == attempts then break end
    local delay = retry_delay(self, attempt, res)
    log.warn("k8s request retried", { method = o.method, path = o.path, attempt = attempt, code = last.code,
      status = last.status, delay = delay })
    timer.sleep(delay)
  end
  metrics.counter("devex_k8s_request_errors_total", { method = o.method, code = last and last.code or "error" })
  return nil, last
end

-- ---- discovery ------------------------------------------------------------

local function api_prefix(api_version)
  if type(api_version) ~= "string" or api_version == "" then return nil end
  local group, version = api_version:match("^([a-z0-9.-]+)/([a-z0-9]+)$")
  if group then return "/apis/" .. group .. "/" .. version end
  if api_version:match("^v[0-9a-z]+$") then return "/api/" .. api_version end
  return nil
end

-- The resource list of one group/version, cached DISCOVERY_TTL seconds.
-- One fetch at a time per group/version and worker: the others that need it
-- meanwhile wait for its answer (a burst of starts on a fresh worker made a
-- GET each, 14 for 20 starts).
local discovering = {} -- server .. prefix -> cond of the fetch in flight
function Client:_discover(prefix, refresh)
  local per = discovery_cache[self.server]
  if not per then per = {}; discovery_cache[self.server] = per end
  local key = self.server .. prefix
  while discovering[key] do
    discovering[key]:wait(30)
    refresh = false -- what that fetch brought is fresh (if it failed: no entry, fetch below)
  end
  local hit = per[prefix]
  if hit and not refresh and timer.now() - hit.at < DISCOVERY_TTL then return hit.list end
  local flight = dstream.cond()
  discovering[key] = flight
  local ok, list, err = pcall(self.request, self, { method = "GET", path = prefix, idempotent = true })
  if ok and list then per[prefix] = { list = list, at = timer.now() } end
  discovering[key] = nil
  flight:signal() -- (resumes the waiters now: the cache is written first)
  if not ok then error(list, 0) end
  if not list then return nil, err end
  return list
end

-- apiVersion + kind -> { prefix, resource, namespaced, kind, verbs } | nil, err
function Client:resource(api_version, kind)
  local prefix = api_prefix(api_version)
  if not prefix then return bad("apiVersion " .. (type(api_version) == "string" and ("'" .. api_version .. "'") or "missing") ..
    " is not <version> or <group>/<version>") end
  if type(kind) ~= "string" or not kind:match("^[A-Z][A-Za-z0-9]*$") then
    return bad("kind " .. (type(kind) == "string" and ("'" .. kind .. "'") or "missing") .. " is not a Kubernetes kind")
  end
  for pass = 1, 2 do
    local list, err = self:_discover(prefix, pass == 2)
    if not list then
      if err.status == 404 then
        return bad("apiVersion '" .. api_version .. "' is not served by the API server (unknown group or version)")
      end
      return nil, err
    end
    for _, r in ipairs(list.resources or {}) do
      if r.kind == kind and not r.name:find("/", 1, true) then
        return { prefix = prefix, resource = r.name, namespaced = r.namespaced == true, kind = kind, verbs = r.verbs }
      end
    end
  end
  return bad("kind '" .. kind .. "' is not served in " .. api_version .. " (unknown kind)")
end

function M.clear_discovery() discovery_cache = {} end

-- ---- refs -------------------------------------------------------------------

local NAME_RULES = { Service = "dns1035", Namespace = "label" }
-- kinds whose names are path segments only (RBAC names such as "system:node")
local PATH_SEGMENT_KINDS = { Role = true, ClusterRole = true, RoleBinding = true, ClusterRoleBinding = true }

local function check_name(kind, name, what)
  if type(name) ~= "string" or name == "" then return bad((what or "name") .. " is missing") end
  if PATH_SEGMENT_KINDS[kind] then
    if name == "." or name == ".." or name:find("[/%%]") then
      return bad(kind .. " name '" .. name .. "' may not be '.' or '..' or contain '/' or '%'")
    end
    return true
  end
  local ok, why = kc.check_name(name, NAME_RULES[kind] or "subdomain")
  if not ok then return bad(kind .. " name '" .. name .. "' is invalid: " .. why) end
  return true
end
M.check_name = check_name

-- ref (or object) -> { api, kind, namespace, name, res = discovery entry } | nil, err
function Client:_target(ref, need_name, opts)
  if type(ref) ~= "table" then return bad("an object or {apiVersion, kind, name} was expected") end
  local md = type(ref.metadata) == "table" and ref.metadata or {}
  local kind = ref.kind
  if kind == nil then return bad("the object has no kind") end
  if ref.apiVersion == nil then return bad("the object has no apiVersion") end
  local name = ref.name or md.name
  local ns = ref.namespace or md.namespace
  if need_name then
    local ok, err = check_name(kind, name)
    if not ok then return nil, err end
  elseif name ~= nil then
    local ok, err = check_name(kind, name)
    if not ok then return nil, err end
  end
  if ns ~= nil then
    if type(ns) ~= "string" or not kc.check_name(ns, "label") then
      return bad("namespace '" .. tostring(ns) .. "' is not a valid RFC 1123 label")
    end
  end
  local res, err = self:resource(ref.apiVersion, kind)
  if not res then return nil, err end
  if res.namespaced then
    if ns == nil and not (opts and opts.all_namespaces) then ns = self.namespace end
  else
    ns = nil
  end
  return { api = ref.apiVersion, kind = kind, namespace = ns, name = name, res = res }
end

local function path_of(t, with_name, subresource)
  return kc.path{ prefix = t.res.prefix, resource = t.res.resource, namespace = t.namespace,
    name = with_name and t.name or nil, subresource = subresource }
end

local function check_subresource(s)
  if s ~= nil and (type(s) ~= "string" or not s:match("^[a-z]+$")) then
    return bad("subresource must be a lower-case word such as status or ephemeralcontainers")
  end
  return true
end

-- ---- verbs --------------------------------------------------------------------

-- A verb on one named object (GET, PUT): checks, target, one request.
function Client:_on_named(method, ref, opts, body, idempotent)
  opts = opts or {}
  local ok, err = check_subresource(opts.subresource)
  if not ok then return nil, err end
  local t
  t, err = self:_target(ref, true)
  if not t then return nil, err end
  local v
  v, err = self:request{ method = method, path = path_of(t, true, opts.subresource), body = body, idempotent = idempotent,
                         keep = method == "GET" and with_basics(opts.keep) or nil }
  if not v then return nil, err end
  return v
end

function Client:get(ref, opts)
  return self:_on_named("GET", ref, opts, nil, true)
end

function Client:create(obj, opts)
  opts = opts or {}
  local ok, err = check_subresource(opts.subresource)
  if not ok then return nil, err end
  local md = type(obj) == "table" and obj.metadata
  if type(md) == "table" and md.name == nil and type(md.generateName) == "string" and not opts.subresource then
    local t
    t, err = self:_target(obj, false)
    if not t then return nil, err end
    local v
    v, err = self:request{ method = "POST", path = path_of(t, false), body = obj }
    if not v then return nil, err end
    return v
  end
  local t
  t, err = self:_target(obj, opts.subresource ~= nil)
  if not t then return nil, err end
  if not t.name then return bad("the object has no metadata.name") end
  local v
  v, err = self:request{ method = "POST", path = path_of(t, opts.subresource ~= nil, opts.subresource), body = obj }
  if not v then return nil, err end
  return v
end

function Client:replace(obj, opts)
  return self:_on_named("PUT", obj, opts, obj, false)
end

function Client:list(ref, opts)
  opts = opts or {}
  if type(ref) ~= "table" then return bad("a {apiVersion, kind, namespace} table was expected") end
  local r = { apiVersion = ref.apiVersion, kind = ref.kind, namespace = ref.namespace }
  local t, err = self:_target(r, false, opts)
  if not t then return nil, err end
  local path = path_of(t, false)
  local out = { items = json.array({}) }
  local token
  local keep = list_keep(opts.keep)
  for _ = 1, 100000 do
    local q = {}
    if opts.label_selector then q.labelSelector = opts.label_selector end
    if opts.field_selector then q.fieldSelector = opts.field_selector end
    -- resource_version = "0": any version the API server holds, answered from
    -- its watch cache (no etcd read, cheap); the default is a quorum read
    if opts.resource_version and not token then q.resourceVersion = tostring(opts.resource_version) end
    q.limit = opts.limit or 500
    if token then q["continue"] = token end
    local page
    page, err = self:request{ method = "GET", path = path, query = kc.query(q), idempotent = true, keep = keep }
    if not page then return nil, err end
    for _, item in ipairs(page.items or {}) do
      -- list items carry no kind/apiVersion: put them back so items can be passed to other verbs
      item.apiVersion = item.apiVersion or t.api
      item.kind = item.kind or t.kind
      out.items[#out.items + 1] = item
    end
    local meta = page.metadata or {}
    out.resourceVersion = meta.resourceVersion
    local nxt = meta["continue"]
    if type(nxt) ~= "string" or nxt == "" then return out end
    if nxt == token then return nil, E("bad_response", "list continue token did not advance") end
    token = nxt
  end
  return nil, E("bad_response", "list does not end")
end

local PROPAGATION = { Foreground = true, Background = true, Orphan = true }

function Client:delete(ref, opts)
  opts = opts or {}
  if opts.propagation ~= nil and not PROPAGATION[opts.propagation] then
    return bad("propagation must be Foreground, Background or Orphan")
  end
  if opts.grace_period ~= nil and (math.type(opts.grace_period) ~= "integer" or opts.grace_period < 0) then
    return bad("grace_period must be a non-negative integer of seconds")
  end
  local t, err = self:_target(ref, true)
  if not t then return nil, err end
  local body
  if opts.propagation or opts.grace_period then
    body = { kind = "DeleteOptions", apiVersion = "v1", propagationPolicy = opts.propagation,
      gracePeriodSeconds = opts.grace_period }
  end
  local v
  v, err = self:request{ method = "DELETE", path = path_of(t, true), body = body, idempotent = true }
  if not v then
    if err.status == 404 then return "gone" end
    return nil, err
  end
  return "deleted", v
end

local PATCH_TYPES = {
  merge = "application/merge-patch+json",
  strategic = "application/strategic-merge-patch+json",
  json = "application/json-patch+json",
}

function Client:patch(ref, patch, opts)
  opts = opts or {}
  local ptype = opts.type or "merge"
  local ctype = PATCH_TYPES[ptype]
  if not ctype then return bad("patch type must be merge, strategic or json") end
  local ok, err = check_subresource(opts.subresource)
  if not ok then return nil, err end
  if type(patch) ~= "table" and type(patch) ~= "string" then return bad("the patch must be a table or JSON text") end
  if ptype == "json" and type(patch) == "table" and not json.is_array(patch) then
    return bad("a JSON patch is a list of operations")
  end
  local t
  t, err = self:_target(ref, true)
  if not t then return nil, err end
  local v
  v, err = self:request{ method = "PATCH", path = path_of(t, true, opts.subresource), body = patch,
    content_type = ctype, idempotent = ptype ~= "json" and opts.idempotent or false }
  if not v then return nil, err end
  return v
end

function Client:apply(obj, opts)
  opts = opts or {}
  local ok, err = check_subresource(opts.subresource)
  if not ok then return nil, err end
  local t
  t, err = self:_target(obj, true)
  if not t then return nil, err end
  local q = { fieldManager = opts.field_manager or self.field_manager }
  if opts.force then q.force = true end
  local v
  -- JSON is valid YAML: the apply body is the object as JSON
  v, err = self:request{ method = "PATCH", path = path_of(t, true, opts.subresource), query = kc.query(q),
    body = obj, content_type = "application/apply-patch+yaml", idempotent = true, keep = with_basics(opts.keep) }
  if not v then return nil, err end
  return v
end

-- ---- watch ------------------------------------------------------------------------

local Watcher = {}
Watcher.__index = Watcher

function Client:watch(ref, opts)
  opts = opts or {}
  if type(ref) ~= "table" then return bad("a {apiVersion, kind, namespace, name} table was expected") end
  local name = ref.name or (type(ref.metadata) == "table" and ref.metadata.name) or nil
  local r = { apiVersion = ref.apiVersion, kind = ref.kind, name = name,
    namespace = ref.namespace or (type(ref.metadata) == "table" and ref.metadata.namespace) or nil }
  local t, err = self:_target(r, false, opts)
  if not t then return nil, err end
  local field = opts.field_selector
  if name then
    local byname = "metadata.name=" .. name
    field = field and (field .. "," .. byname) or byname
  end
  local timeout = opts.timeout or 300
  return setmetatable({
    client = self, target = t, path = path_of(t, false), label = opts.label_selector, field = field,
    rv = opts.resource_version, deadline = timer.now() + timeout, stream = nil, restarts = 0,
    relists = 0, idle_restarts = 0, got_event = false, keep = opts.keep,
    event_keep = opts.keep and { type = true, object = with_basics(opts.keep) },
  }, Watcher)
end

function Watcher:close()
  if self.stream then self.stream:close(); self.stream = nil end
  self.closed = true
end
Watcher.__close = Watcher.close
Watcher.__gc = Watcher.close

-- a fresh list: the RESYNC event, and the resourceVersion to watch from
function Watcher:_relist()
  self.relists = self.relists + 1
  local c, t = self.client, self.target
  local l, err = c:list({ apiVersion = t.api, kind = t.kind, namespace = t.namespace },
    { label_selector = self.label, field_selector = self.field, all_namespaces = t.namespace == nil, keep = self.keep })
  if not l then return nil, err end
  self.rv = l.resourceVersion
  return { type = "RESYNC", items = l.items, resourceVersion = l.resourceVersion }
end

function Watcher:_open()
  local left = self.deadline - timer.now()
  if left <= 0 then return nil, E("timeout", "the watch's timeout passed") end
  local q = { watch = true, allowWatchBookmarks = true, timeoutSeconds = math.max(1, math.ceil(left)) }
  if self.label then q.labelSelector = self.label end
  if self.field then q.fieldSelector = self.field end
  if self.rv then q.resourceVersion = self.rv end
  local s, err = self.client:request{ method = "GET", path = self.path, query = kc.query(q), stream = true,
    idempotent = true, timeout = left + 5, max_size = 64 * 1024 * 1024 }
  if not s then return nil, err end
  self.stream = s
  return true
end

-- -> event | nil, err
function Watcher:next()
  if self.closed then return nil, E("closed", "the watcher is closed") end
  local pending
  for _ = 1, 1000 do
    if pending then local p = pending; pending = nil; return p end
    if timer.now() >= self.deadline then self:close(); return nil, E("timeout", "the watch's timeout passed") end
    if not self.stream then
      local ok, err = self:_open()
      if not ok then
        if err.status == 410 then
          local ev, lerr = self:_relist()
          if not ev then return nil, lerr end
          return ev
        end
        return nil, err
      end
    end
    local line, rerr = self.stream:read_line()
    if line == nil then
      -- the server ended the watch (its timeoutSeconds) or the connection dropped: resume from rv
      self.stream:close()
      self.stream = nil
      self.restarts = self.restarts + 1
      if rerr and rerr.code ~= "cancelled" then
        log.info("k8s watch interrupted, resuming", { path = self.path, error = tostring(rerr) })
      end
      -- a watch that ends without an event (or fails) again and again is not reopened in a tight loop
      if rerr or not self.got_event then
        self.idle_restarts = self.idle_restarts + 1
        timer.sleep(math.min(1, 0.05 * self.idle_restarts, math.max(0, self.deadline - timer.now())))
      else
        self.idle_restarts = 0
      end
      self.got_event = false
    elseif line ~= "" and line ~= "\r" then
      local ev, jerr = json.decode(line, self.event_keep)
      if type(ev) ~= "table" then
        self:close()
        return nil, E("bad_response", "watch event is not JSON: " .. tostring(jerr))
      end
      local obj = ev.object
      self.got_event = true
      if ev.type == "ERROR" then
        self.stream:close()
        self.stream = nil
        if type(obj) == "table" and (obj.code == 410 or obj.reason == "Expired" or obj.reason == "Gone") then
          local rev, lerr = self:_relist()
          if not rev then return nil, lerr end
          return rev
        end
        self:close()
        local st = type(obj) == "table" and obj or {}
        return nil, E(st.reason or "watch_error", st.message or "watch error", st.code)
      end
      if type(obj) == "table" and type(obj.metadata) == "table" and obj.metadata.resourceVersion then
        self.rv = obj.metadata.resourceVersion
      end
      if ev.type ~= "BOOKMARK" then
        if type(obj) == "table" then
          obj.apiVersion = obj.apiVersion or self.target.api
          obj.kind = obj.kind or self.target.kind
        end
        return { type = ev.type, object = obj }
      end
    end
  end
  return nil, E("bad_response", "the watch made no progress")
end

-- ---- wait --------------------------------------------------------------------------

function Client:wait(ref, pred, opts)
  opts = opts or {}
  if type(pred) ~= "function" then error("k8s wait: predicate function expected", 2) end
  local timeout = opts.timeout or 60
  local deadline = timer.now() + timeout
  local name = ref.name or (type(ref.metadata) == "table" and ref.metadata.name) or nil
  local r = { apiVersion = ref.apiVersion, kind = ref.kind, name = name,
    namespace = ref.namespace or (type(ref.metadata) == "table" and ref.metadata.namespace) or nil }
  if not name then return bad("wait needs a name") end
  -- now: one list (by name) gives the object and the resourceVersion to watch from
  local t, err = self:_target(r, true)
  if not t then return nil, err end
  local l
  l, err = self:list({ apiVersion = t.api, kind = t.kind, namespace = t.namespace },
    { field_selector = "metadata.name=" .. name })
  if not l then return nil, err end
  local cur = l.items[1]
  local v = pred(cur, cur and "EXISTING" or "ABSENT")
  if v then return v, cur end
  local w
  w, err = self:watch(r, { resource_version = l.resourceVersion, timeout = math.max(0.001, deadline - timer.now()) })
  if not w then return nil, err end
  while true do
    local ev
    ev, err = w:next()
    if not ev then
      w:close()
      if err.code == "timeout" then
        return nil, E("timeout", string.format("%s %s did not reach the awaited state within %gs", t.kind, name, timeout),
          nil, { last = cur })
      end
      return nil, err
    end
    if ev.type == "RESYNC" then
      cur = ev.items[1]
      v = pred(cur, cur and "RESYNC" or "ABSENT")
    elseif ev.type == "DELETED" then
      cur = nil
      v = pred(nil, "DELETED")
    else
      cur = ev.object
      v = pred(cur, ev.type)
    end
    if v then w:close(); return v, cur end
  end
end

-- predicates
function M.pod_ready(pod)
  if type(pod) ~= "table" or type(pod.status) ~= "table" then return false end
  for _, c in ipairs(pod.status.conditions or {}) do
    if c.type == "Ready" and c.status == "True" then return true end
  end
  return false
end

-- a predicate: the ephemeral container `name` terminated; its value is {exit_code=, reason=}
function M.ephemeral_terminated(name)
  return function(pod)
    if type(pod) ~= "table" or type(pod.status) ~= "table" then return false end
    for _, s in ipairs(pod.status.ephemeralContainerStatuses or {}) do
      if s.name == name and type(s.state) == "table" and type(s.state.terminated) == "table" then
        local term = s.state.terminated
        return { exit_code = term.exitCode, reason = term.reason, message = term.message }
      end
    end
    return false
  end
end

-- ---- version and ephemeral containers --------------------------------------------

function Client:version()
  if self._version then return self._version end
  local v, err = self:request{ method = "GET", path = "/version", idempotent = true }
  if not v then return nil, err end
  v.major_n = tonumber((tostring(v.major or ""):match("^(%d+)")))
  v.minor_n = tonumber((tostring(v.minor or ""):match("^(%d+)")))
  self._version = v
  return v
end

local function pod_ref(ref)
  local md = type(ref.metadata) == "table" and ref.metadata or {}
  return { apiVersion = "v1", kind = "Pod", name = ref.name or md.name, namespace = ref.namespace or md.namespace }
end

function Client:add_ephemeral_container(ref, container, opts)
  opts = opts or {}
  if type(ref) ~= "table" then return bad("a pod {namespace, name} was expected") end
  if type(container) ~= "table" then return bad("an ephemeral container table was expected") end
  local ok, err = kc.check_name(type(container.name) == "string" and container.name or "", "label")
  if not ok then return bad("ephemeral container name is invalid: " .. tostring(err)) end
  local pr = pod_ref(ref)
  local ver
  ver, err = self:version()
  if not ver then return nil, err end
  local legacy = opts.legacy
  if legacy == nil then legacy = ver.major_n == 1 and ver.minor_n ~= nil and ver.minor_n < 22 end
  if not legacy then
    -- >= 1.22: a strategic merge patch of the Pod on the ephemeralcontainers subresource
    return self:patch(pr, { spec = { ephemeralContainers = json.array({ container }) } },
      { type = "strategic", subresource = "ephemeralcontainers" })
  end
  -- < 1.22: GET the EphemeralContainers object, append, PUT it back. The PUT
  -- carries the pod's resourceVersion, so a pod that changed in between (the
  -- kubelet updating its status) answers 409 Conflict: read again and retry.
  local res
  for attempt = 1, 6 do
    local ec
    ec, err = self:get(pr, { subresource = "ephemeralcontainers" })
    if not ec then return nil, err end
    ec.ephemeralContainers = ec.ephemeralContainers or json.array({})
    ec.ephemeralContainers[#ec.ephemeralContainers + 1] = container
    ec.apiVersion, ec.kind = "v1", "EphemeralContainers"
    res, err = self:request{ method = "PUT", path = kc.path{ prefix = "/api/v1", resource = "pods",
      namespace = pr.namespace or self.namespace, name = pr.name, subresource = "ephemeralcontainers" }, body = ec }
    if res or not (err and err.status == 409) then return res, err end
    timer.sleep(0.05 * attempt)
  end
  return nil, err
end

function Client:wait_ephemeral(ref, name, opts)
  local v, pod = self:wait(pod_ref(ref), M.ephemeral_terminated(name), opts)
  if not v then return nil, pod end
  return v.exit_code, pod, v
end

M.Client = Client
return M
