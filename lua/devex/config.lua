-- devex.config: loads the config file (a Lua chunk returning a table),
-- validates it against the schema below and fills defaults. Unknown keys and
-- malformed values are errors, reported by name, never ignored.
-- M.load(path) -> conf | nil, {messages}; M.get() -> the config of this VM.
local env = require("devex.env")

local M = {}

local function range(min, max)
  return function(v)
    if v < min or v > max then return string.format("must be from %s to %s", min, max) end
  end
end

-- Schema: a spec is a type name, or a table {type=..., fields=..., items=...,
-- default=..., check=function(v) -> errmsg|nil}.
local listener = {
  type = "table",
  fields = {
    host = { type = "string", default = "127.0.0.1" },
    port = { type = "integer", optional = true, check = function(v) if v < 1 or v > 65535 then return "must be 1..65535" end end },
    tls = { type = "table", optional = true, fields = { cert = "string", key = "string" } },
    -- a Unix socket instead of host/port (made 0666: the directory guards it)
    socket = { type = "string", optional = true, check = function(v)
      if v:sub(1, 1) ~= "/" or #v > 107 then return "must be an absolute path of at most 107 bytes" end
    end },
    -- requests on this listener reach only paths under this prefix (others
    -- get 404), e.g. "/api/runner/" for the socket sandboxed runners call back on
    only = { type = "string", optional = true, check = function(v)
      if v:sub(1, 1) ~= "/" then return "must be a path prefix starting with /" end
    end },
  },
  check = function(v)
    if (v.port == nil) == (v.socket == nil) then return "needs either port or socket" end
    if v.socket and v.tls then return "tls is for TCP listeners, not socket" end
  end,
}

local schema = {
  type = "table",
  fields = {
    environment = { type = "string", default = "development", check = function(v)
      if v ~= "development" and v ~= "production" and v ~= "test" then
        return "must be development, production or test"
      end
    end },
    public_url = { type = "string", optional = true },
    -- production refuses to start unless public_url is https, because the
    -- session cookie is Secure only then; true serves plain HTTP anyway
    allow_insecure_http = { type = "boolean", default = false },
    frontend_url = { type = "string", optional = true },
    server = {
      type = "table", default = {},
      fields = {
        listen = { type = "list", items = listener, default = { { host = "127.0.0.1", port = 8080 } } },
        threads = { type = "integer", default = 0, check = range(0, 256) },
        max_body = { type = "integer", default = 1048576, check = range(1, 1 << 40) },
        header_timeout = { type = "number", default = 10, check = range(0.001, 86400) },
        idle_timeout = { type = "number", default = 60, check = range(0.001, 86400) },
        shutdown_timeout = { type = "number", default = 15, check = range(0, 86400) },
        -- src/h2_guard.c: streams one HTTP/2 connection may reset before their
        -- response is complete before it is closed (once they are also more
        -- than half its requests), and its Lua handlers running at once
        -- (those of reset streams included; beyond it 503 without Lua)
        http2_max_resets = { type = "integer", default = 100, check = range(0, 1 << 30) },
        http2_max_inflight = { type = "integer", default = 128, check = range(1, 1 << 30) },
        log_level = { type = "string", default = "info", check = function(v)
          if v ~= "debug" and v ~= "info" and v ~= "warn" and v ~= "error" then return "must be debug, info, warn or error" end
        end },
        access_log = { type = "boolean", default = true },
        request_id_header = { type = "string", default = "errors", check = function(v)
          if v ~= "always" and v ~= "errors" then return "must be always or errors" end
        end },
        -- proxies (addresses or CIDRs) whose client_ip_header names the client
        -- (rate limits per client address, middleware.ratelimit); nobody else's is believed
        trusted_proxies = { type = "list", optional = true, items = { type = "string", check = function(v)
          if not (v:match("^[%d%.]+/?%d*$") or v:match("^[%x:]+[%d%.]*/?%d*$")) or v:match("/$") then
            return "must be an IP address or a CIDR such as 10.0.0.0/8"
          end
        end } },
        client_ip_header = { type = "string", optional = true, check = function(v)
          if not v:match("^[%w%-]+$") then return "must be a header name such as X-Forwarded-For" end
        end },
      },
    },
    lua = {
      type = "table", optional = true,
      fields = { path = { type = "list", items = "string", optional = true }, app = { type = "string", optional = true } },
    },
    redis = { type = "table", optional = true, open = true },
    s3 = { type = "table", optional = true, open = true },
    github = { type = "table", optional = true, open = true },
    oauth = { type = "table", optional = true, open = true },
    session = { type = "table", optional = true, open = true },
    kube = { type = "table", optional = true, open = true },
    runner = { type = "table", optional = true, open = true, check = function(v)
      local d = v.domain
      if d ~= nil and (type(d) ~= "string" or not d:match("^[%w][%w%-%.]*(:?%d*)$") or d:match(":$")) then
        return "domain must be a host name with an optional :port (no scheme, no path)"
      end
    end },
    auth = { type = "table", optional = true, open = true },
    runtime = { type = "table", optional = true, open = true },
    dev_login = { type = "table", optional = true, fields = { enabled = { type = "boolean", default = false } } },
    storage = { type = "table", optional = true, open = true },
    policy = { type = "table", optional = true, open = true },
    metrics = { type = "table", optional = true, open = true },
  },
}

local function typeof(v)
  local t = type(v)
  if t == "number" then return math.type(v) == "integer" and "integer" or "number" end
  if t == "table" and #v > 0 then return "list" end
  return t
end

local function matches(v, want)
  local t = typeof(v)
  if want == t then return true end
  if want == "number" and t == "integer" then return true end
  if want == "list" and type(v) == "table" then return true end
  if want == "table" and t == "list" then return false end
  return false
end

local function validate(v, spec, path, errs)
  if type(spec) == "string" then spec = { type = spec } end
  if not matches(v, spec.type) then
    errs[#errs + 1] = string.format("%s: expected %s, got %s", path, spec.type, typeof(v))
    return
  end
  if spec.check then
    local e = spec.check(v)
    if e then errs[#errs + 1] = path .. ": " .. e end
  end
  if spec.type == "list" and spec.items then
    for i, item in ipairs(v) do validate(item, spec.items, string.format("%s[%d]", path, i), errs) end
  end
  if spec.type == "table" and spec.fields and not spec.open then
    for k, sub in pairs(v) do
      local fs = spec.fields[k]
      local p = path == "" and tostring(k) or path .. "." .. tostring(k)
      if fs == nil then
        errs[#errs + 1] = string.format("%s: unknown setting", p)
      else
        validate(sub, fs, p, errs)
      end
    end
    for k, fs in pairs(spec.fields) do
      if v[k] == nil and type(fs) == "table" then
        if fs.default ~= nil then
          v[k] = fs.default
          if type(fs.default) == "table" then validate(v[k], fs, (path == "" and k or path .. "." .. k), errs) end
        elseif not fs.optional then
          errs[#errs + 1] = string.format("%s: missing", path == "" and k or path .. "." .. k)
        end
      elseif v[k] == nil and type(fs) == "string" then
        errs[#errs + 1] = string.format("%s: missing", path == "" and k or path .. "." .. k)
      end
    end
  end
end

function M.load(path)
  env.reset()
  local chunk, err = loadfile(path, "t")
  if not chunk then return nil, { err } end
  local ok, conf = pcall(chunk)
  if not ok then return nil, { tostring(conf) } end
  if type(conf) ~= "table" then return nil, { path .. ": must return a table" } end
  local errs = {}
  for _, p in ipairs(env.problems()) do errs[#errs + 1] = p end
  validate(conf, schema, "", errs)
  -- the runner domain is answered by the gateway alone: it cannot also be the API's host
  local rd = type(conf.runner) == "table" and type(conf.runner.domain) == "string" and conf.runner.domain:lower():gsub(":%d+$", "")
  local ph = type(conf.public_url) == "string" and conf.public_url:lower():match("^%a+://([^/:]+)")
  if rd and ph and rd == ph and conf.runner.exposure ~= "ingress" then
    errs[#errs + 1] = "runner.domain: must differ from public_url's host (the gateway answers every request to it)"
  end
  if #errs > 0 then return nil, errs end
  return conf
end

local current
function M.get()
  if current then return current end
  local runtime = require("devex.runtime")
  local conf, errs = M.load(runtime.conf_path)
  if not conf then error(table.concat(errs, "\n"), 0) end
  current = conf
  return conf
end

return M
