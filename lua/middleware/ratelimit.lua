-- middleware.ratelimit: request rate limits from policy.limits (see
-- lua/policy/limits.lua for the rules and their defaults).
--
--   local ratelimit = require("middleware.ratelimit")
--   app:get("/auth/:provider/login", ratelimit.per_address("signin"), handler)
--   app:post("/api/repl/new", auth, ratelimit.per_user("create"), handler) -- after auth
--
-- Past a rule's limit: 429 {"error":"too many requests"} with Retry-After
-- (seconds until the window ends).
--
-- Counting: a fixed window per rule and client, one Redis key
-- <prefix>ratelimit:<rule>:<client> holding a counter that expires with its
-- window, updated by one script (INCR, and EXPIRE on the window's first
-- request): one round trip and one small key per client, so a flood costs
-- Redis a constant amount of memory, and Retry-After is exact (the key's
-- TTL). Why not a sliding window: a sliding log keeps one entry per request,
-- and a sliding counter needs two keys and gives an approximate answer; a
-- fixed window lets a client make at most twice the limit across a window
-- boundary, which is enough for what these limits are for (bounding what an
-- abusive client costs Redis, storage and the cluster), not for fairness.
--
-- When Redis cannot count (down, timing out) a rule with fail_open = true
-- lets the request through, and one with fail_open = false answers 503 with
-- Retry-After (policy.limits says which and why); either way it is logged, at
-- most every 10 s per rule and worker.
--
-- The client address is the peer's address (req.raw:remote_addr()). Behind a
-- proxy every client has the proxy's address: when the peer is one of
-- server.trusted_proxies (addresses or CIDRs), the address comes from
-- server.client_ip_header (default X-Forwarded-For): its entries are read
-- from the right, skipping trusted proxies, and the first other one is the
-- client. Nobody else's header is believed. IPv4-mapped IPv6 addresses count
-- as IPv4; an IPv6 client is counted per /64 (what one host or one customer
-- of a provider gets), so it cannot make fresh addresses to reset its count.
local config = require("devex.config").get()
local log = require("devex.log")
local policy = require("policy")
local redis = require("services.redis")
local timer = require("devex.timer")

local M = {}

-- ---- addresses -------------------------------------------------------------

local V4_MAPPED = string.rep("\0", 10) .. "\255\255"

local function parse_v4(s)
  local parts = { s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$") }
  if #parts ~= 4 then return nil end
  local bytes = {}
  for i, p in ipairs(parts) do
    local n = tonumber(p)
    if #p > 3 or n > 255 or (#p > 1 and p:sub(1, 1) == "0") then return nil end
    bytes[i] = n
  end
  return string.char(table.unpack(bytes))
end

-- "a:b:c" -> { a, b, c } as numbers; the last may be a dotted IPv4 (two groups)
local function groups(part, v4_last)
  local out = {}
  if part == "" then return out end
  local items = {}
  for g in (part .. ":"):gmatch("([^:]*):") do items[#items + 1] = g end
  for k, g in ipairs(items) do
    if v4_last and k == #items and g:find(".", 1, true) then
      local v4 = parse_v4(g)
      if not v4 then return nil end
      out[#out + 1] = v4:byte(1) * 256 + v4:byte(2)
      out[#out + 1] = v4:byte(3) * 256 + v4:byte(4)
    else
      if not g:match("^%x%x?%x?%x?$") then return nil end
      out[#out + 1] = tonumber(g, 16)
    end
  end
  return out
end

local function parse_v6(s)
  if #s > 45 or s:find("[^%x:%.]") then return nil end
  local gs
  local i = s:find("::", 1, true)
  if i then
    local head, tail = s:sub(1, i - 1), s:sub(i + 2)
    if tail:find("::", 1, true) then return nil end
    local h, t = groups(head, false), groups(tail, true)
    if not h or not t or #h + #t > 7 then return nil end
    gs = h
    for _ = 1, 8 - #h - #t do gs[#gs + 1] = 0 end
    for _, g in ipairs(t) do gs[#gs + 1] = g end
  else
    gs = groups(s, true)
    if not gs or #gs ~= 8 then return nil end
  end
  local bytes = {}
  for _, g in ipairs(gs) do
    bytes[#bytes + 1] = g >> 8
    bytes[#bytes + 1] = g & 255
  end
  return string.char(table.unpack(bytes))
end

-- parse_ip(text) -> the address as 16 bytes (IPv4 as ::ffff:a.b.c.d) | nil
function M.parse_ip(s)
  if type(s) ~= "string" then return nil end
  local v4 = parse_v4(s)
  if v4 then return V4_MAPPED .. v4 end
  return parse_v6(s)
end

-- parse_cidr("10.0.0.0/8" | "2001:db8::/32" | "192.0.2.7") -> { bytes, bits } | nil, why
function M.parse_cidr(s)
  if type(s) ~= "string" then return nil, "expected a string" end
  local addr, len = s:match("^([^/]+)/(%d+)$")
  addr = addr or s
  local b = M.parse_ip(addr)
  if not b then return nil, "not an IP address or CIDR" end
  local v4 = parse_v4(addr) ~= nil
  local max = v4 and 32 or 128
  local bits = len and tonumber(len) or max
  if bits > max then return nil, "prefix length must be 0.." .. max end
  return { bytes = b, bits = v4 and bits + 96 or bits }
end

local function in_net(b, net)
  local full, rest = net.bits // 8, net.bits % 8
  if b:sub(1, full) ~= net.bytes:sub(1, full) then return false end
  if rest == 0 then return true end
  local mask = (0xff << (8 - rest)) & 0xff
  return (b:byte(full + 1) & mask) == (net.bytes:byte(full + 1) & mask)
end

-- The text a client is counted under: a.b.c.d, or the /64 of an IPv6 address.
function M.address_key(b)
  if b:sub(1, 12) == V4_MAPPED then
    return string.format("%d.%d.%d.%d", b:byte(13, 16))
  end
  return string.format("%02x%02x:%02x%02x:%02x%02x:%02x%02x::/64", b:byte(1, 8))
end

local server = config.server or {}
local trusted = {}
for i, s in ipairs(server.trusted_proxies or {}) do
  local net, why = M.parse_cidr(s)
  if not net then error(string.format("server.trusted_proxies[%d]: %q: %s", i, tostring(s), why), 0) end
  trusted[i] = net
end
local ip_header = (server.client_ip_header or "X-Forwarded-For"):lower()
local MAX_HOPS = 32

local function is_trusted(b)
  for _, net in ipairs(trusted) do
    if in_net(b, net) then return true end
  end
  return false
end

-- An entry of X-Forwarded-For: an address, maybe "[v6]", "[v6]:port" or "v4:port".
local function hop(s)
  s = s:match("^%s*(.-)%s*$")
  local b = M.parse_ip(s)
  if b then return b end
  local inner = s:match("^%[([^%]]+)%]") or s:match("^([%d%.]+):%d+$")
  return inner and M.parse_ip(inner)
end

-- client_address(req) -> 16 bytes | nil (no peer address)
function M.client_address(req)
  local peer = M.parse_ip(req.raw:remote_addr())
  if not peer or #trusted == 0 or not is_trusted(peer) then return peer end
  local h = req.raw:header(ip_header)
  if not h then return peer end
  local items = {}
  for item in (h .. ","):gmatch("([^,]*),") do items[#items + 1] = item end
  local addr = peer
  for k = #items, math.max(1, #items - MAX_HOPS + 1), -1 do
    local b = hop(items[k])
    if not b then break end -- garbage: keep the last address a trusted hop vouched for
    addr = b
    if not is_trusted(b) then break end
  end
  return addr
end

-- ---- the rules -------------------------------------------------------------

local RULES = { "signin", "ping", "create", "start", "stop", "magiclink", "magiclink_address" }
local known = {}
for _, name in ipairs(RULES) do known[name] = true end

-- Checks policy.limits, so a typo is refused at load (start, --check, SIGHUP).
local function check_policy(limits)
  if type(limits) ~= "table" then error("policy: limits must be a table", 0) end
  for name, rule in pairs(limits) do
    if not known[name] then
      error(string.format("policy: limits.%s: unknown rule (rules: %s)", tostring(name), table.concat(RULES, ", ")), 0)
    end
    if rule ~= false then
      local where = "policy: limits." .. name
      if type(rule) ~= "table" then error(where .. " must be a table { limit =, window = } or false", 0) end
      for k in pairs(rule) do
        if k ~= "limit" and k ~= "window" and k ~= "fail_open" then
          error(string.format("%s.%s: unknown setting", where, tostring(k)), 0)
        end
      end
      if math.type(rule.limit) ~= "integer" or rule.limit < 1 then
        error(where .. ".limit must be an integer >= 1 (false turns the rule off)", 0)
      end
      if math.type(rule.window) ~= "integer" or rule.window < 1 or rule.window > 86400 then
        error(where .. ".window must be an integer number of seconds from 1 to 86400", 0)
      end
      if rule.fail_open ~= nil and type(rule.fail_open) ~= "boolean" then
        error(where .. ".fail_open must be true or false", 0)
      end
    end
  end
end
check_policy(policy.limits or {})

-- INCR, and the window's TTL on its first request (or on a key that lost
-- its TTL); returns the count and the milliseconds left in the window.
local HIT = [[
local n = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1]) * 1000
end
return { n, ttl }
]]

local last_outage_log = {} -- rule -> when it was last logged
local function log_outage(rule, err, closed)
  local now = timer.now()
  if now - (last_outage_log[rule] or -math.huge) < 10 then return end
  last_outage_log[rule] = now
  log.warn("rate limiter: Redis unavailable", { rule = rule, error = tostring(err),
    action = closed and "refused (503)" or "let through" })
end

-- hit(rule, client) -> true | false, retry_after_seconds, status
-- (status 429 over the limit, 503 when the limiter failed closed)
function M.hit(rule_name, client)
  local rule = (policy.limits or {})[rule_name]
  if not rule then return true end
  local r, err = redis.client()
  local res
  if r then res, err = r:eval(HIT, { redis.key("ratelimit", rule_name, client) }, rule.window) end
  if type(res) ~= "table" or math.type(res[1]) ~= "integer" then
    local closed = rule.fail_open == false
    log_outage(rule_name, err or "unexpected reply", closed)
    if closed then return false, 5, 503 end
    return true
  end
  local n, pttl = res[1], tonumber(res[2]) or rule.window * 1000
  if n <= rule.limit then return true end
  if n == rule.limit + 1 then
    log.warn("rate limit reached", { rule = rule_name, client = client, limit = rule.limit, window = rule.window })
  end
  return false, math.max(1, math.ceil(pttl / 1000)), 429
end

local TOO_MANY = { error = "too many requests" }
local UNAVAILABLE = { error = "rate limiter unavailable" }

local function refuse(retry_after, status)
  return status, status == 429 and TOO_MANY or UNAVAILABLE,
    { ["Retry-After"] = tostring(retry_after), ["Cache-Control"] = "no-store" }
end

local function rule_arg(name)
  assert(known[name], "middleware.ratelimit: unknown rule " .. tostring(name))
  return name
end

-- Middleware counting requests per client address.
function M.per_address(name)
  rule_arg(name)
  return function(req, next)
    local b = M.client_address(req)
    local ok, retry_after, status = M.hit(name, b and M.address_key(b) or "unknown")
    if not ok then return refuse(retry_after, status) end
    return next(req)
  end
end

-- Middleware counting requests per signed-in user (req.user.owner): place
-- it after middleware.auth.
function M.per_user(name)
  rule_arg(name)
  return function(req, next)
    local owner = req.user and req.user.owner
    if type(owner) ~= "string" then error("middleware.ratelimit.per_user needs middleware.auth before it", 0) end
    local ok, retry_after, status = M.hit(name, owner)
    if not ok then return refuse(retry_after, status) end
    return next(req)
  end
end

return M
