-- auth.session: browser sessions kept in Redis.
--
-- The cookie holds an opaque id: base64url of 32 random bytes (256 bits).
-- Redis keeps the session under a hash of that id, <prefix>session:<sha256 hex>,
-- so a copy of the keyspace cannot be replayed as cookies. The hash holds the
-- user (JSON), the provider's name, created_at and expires_at; no provider
-- token (nothing uses one after the sign-in; the fields of sessions written
-- before are deleted when such a session is next used). The key carries a
-- TTL (settings.session_ttl) renewed when the session is used with less than
-- half of it left (sliding expiry), never past created_at +
-- settings.max_lifetime (absolute expiry: a stolen cookie that is kept busy
-- still dies). Expiry and logout are Redis's TTL and DEL, so they hold at
-- once on every replica.
--
-- user.owner is an owner key made from the provider's stable subject
-- (auth.providers.common). A session written before owner keys existed
-- holds the login as owner; load() gives it the key of its subject instead,
-- so such a session never acts for a login (which may have changed hands).
local crypto = require("devex.crypto")
local json = require("devex.json")
local log = require("devex.log")
local redis = require("services.redis")
local settings = require("auth.settings")
local owners = require("auth.providers.common")
local tracked = require("services.tracked")

local M = {}

local ID_PATTERN = "^[A-Za-z0-9_-]+$"
local ID_LEN = 43 -- base64url of 32 bytes, unpadded

function M.valid_id(id)
  return type(id) == "string" and #id == ID_LEN and id:match(ID_PATTERN) ~= nil
end

function M.key(id) return redis.key("session", crypto.sha256_hex(id)) end

-- Creates the hash and its TTL in one step.
local CREATE = [[
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
]]

-- Reads the session. ARGV: ttl, now, max_lifetime. A session past
-- created_at + max_lifetime is deleted (false). With less than half of the
-- TTL left, the TTL (and expires_at) is renewed to the TTL, or to what is
-- left of the lifetime when that is shorter. Returns the flattened hash plus
-- "_renewed" when it renewed, or false. Token fields of older sessions are
-- deleted.
local TOUCH = [[
local h = redis.call('HGETALL', KEYS[1])
if #h == 0 then return false end
local ttl, now, max = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local created, tokens
for i = 1, #h, 2 do
  local f = h[i]
  if f == 'created_at' then created = tonumber(h[i + 1])
  elseif f == 'access_token' or f == 'refresh_token' or f == 'token_expires_at' then tokens = true end
end
if tokens then redis.call('HDEL', KEYS[1], 'access_token', 'refresh_token', 'token_expires_at') end
if not created then
  created = now
  redis.call('HSET', KEYS[1], 'created_at', tostring(now))
end
local left = created + max - now
if left <= 0 then
  redis.call('DEL', KEYS[1])
  return false
end
if left > ttl then left = ttl end
local pttl = redis.call('PTTL', KEYS[1])
if pttl >= 0 and pttl < ttl * 500 and left * 1000 > pttl + 1000 then
  local exp = tostring(now + left)
  redis.call('EXPIRE', KEYS[1], left)
  redis.call('HSET', KEYS[1], 'expires_at', exp)
  for i = 1, #h, 2 do if h[i] == 'expires_at' then h[i + 1] = exp end end
  h[#h + 1] = '_renewed'
  h[#h + 1] = '1'
end
return h
]]

local function client()
  local r, err = redis.client()
  if not r then return nil, err end
  return r
end

-- create(user, provider_name) -> id, session | nil, err
-- user: { id, login, name, email, avatar_url, created_at, subject, owner }.
function M.create(user, provider)
  if not owners.is_owner_key(user.owner) then return nil, "the user has no valid owner key" end
  local r, err = client()
  if not r then return nil, err end
  local id = crypto.b64url(crypto.random_bytes(32))
  local now = os.time()
  local ttl = math.min(settings.session_ttl, settings.max_lifetime)
  local expires_at = now + ttl
  local ok
  ok, err = r:eval(CREATE, { M.key(id) }, ttl,
    "user", json.encode(user), "provider", provider,
    "created_at", tostring(now), "expires_at", tostring(expires_at))
  if not ok then return nil, err end
  return id, { id = id, user = user, provider = provider, created_at = now, expires_at = expires_at }
end

local function to_session(id, flat, key)
  local h = {}
  for i = 1, #flat, 2 do h[flat[i]] = flat[i + 1] end
  local user = h.user and json.decode(h.user)
  if type(user) ~= "table" then return nil end
  return {
    id = id,
    key = key or M.key(id),
    user = user,
    provider = h.provider,
    created_at = tonumber(h.created_at),
    expires_at = tonumber(h.expires_at),
    renewed = h._renewed == "1",
  }
end

-- A read done in the same script as TOUCH, after it found a live session:
-- one round trip to Redis for the session and what the request reads next
-- (GET /api/repl: the list, repl.service). also.body is the body of a Redis
-- Lua function(user, A): user is the session's user (decoded JSON, {} when
-- unreadable), A the array also.args; what it returns is session.also. The
-- script is made once per body (kept here), so body must be a constant.
local with_cache = {}
local function touch_with(body)
  local script = with_cache[body]
  if not script then
    script = "local function touch()\n" .. TOUCH .. "\nend\n" .. [[
local h = touch()
if not h then return false end
local u
for i = 1, #h, 2 do if h[i] == 'user' then u = h[i + 1] end end
local ok, user = pcall(cjson.decode, u or '')
if not ok or type(user) ~= 'table' then user = {} end
local function also(user, A)
]] .. body .. [[

end
return { h, also(user, { unpack(ARGV, 4) }) }
]]
    with_cache[body] = script
  end
  return script
end

-- This worker's copies of live sessions (services.tracked: dropped as soon
-- as Redis reports a write, a DEL (logout), an expiry of the key, or a
-- flush), by cookie id. An entry is used until the renewal would be due
-- (less than half of the TTL left: then the script runs and renews) and never
-- past expires_at or created_at + max_lifetime.
local cached = tracked.cache("sessions")

-- A copy per request: handlers may add to req.user, and auth.current keeps
-- per-request data keyed by the user table.
local function copy_of(s)
  local c, u = {}, {}
  for k, v in pairs(s) do c[k] = v end
  for k, v in pairs(s.user) do u[k] = v end
  c.user = u
  return c
end

local function keep(tok, s, now)
  if not tok or not s.expires_at then return end
  local ttl = settings.session_ttl
  local until_ = s.expires_at - ttl // 2
  if s.created_at then until_ = math.min(until_, s.created_at + settings.max_lifetime) end
  until_ = math.min(until_, s.expires_at)
  if until_ <= now then return end
  local v = copy_of(s)
  v.renewed, v.renewed_at, v.also, v.cache_token = false, nil, nil, nil
  tracked.put(tok, cached, s.id, v, { s.key }, until_)
end

-- load(id[, also]) -> session | false (no such session) | nil, err (Redis failed).
-- Renews the session's TTL when due (session.renewed is then true). With
-- also = { body, args }, the same script also runs that read (see
-- touch_with) and its result is session.also. A session from this worker's
-- cache (services.tracked) has no also: session.cache_token is then nil and
-- the caller reads on its own; after a read from Redis, cache_token is
-- services.tracked's token taken before it (for the caller's own put of also).
function M.load(id, also)
  if not M.valid_id(id) then return false end
  local now = os.time()
  local hit = tracked.get(cached, id, now)
  if hit then return copy_of(hit) end
  local tok = tracked.begin()
  local r, err = client()
  if not r then return nil, err end
  local key = M.key(id)
  local flat, extra
  if also then
    flat, err = r:eval(touch_with(also.body), { key }, settings.session_ttl, now, settings.max_lifetime,
      table.unpack(also.args))
    if flat == nil then return nil, err end
    if type(flat) == "table" then flat, extra = flat[1], flat[2] end
  else
    flat, err = r:eval(TOUCH, { key }, settings.session_ttl, now, settings.max_lifetime)
  end
  if flat == nil then return nil, err end
  if type(flat) ~= "table" then return false end
  local s = to_session(id, flat, key)
  if not s then
    log.warn("session: unreadable session record, ignored")
    return false
  end
  -- Redis's TTL is the authority; this only guards against clock-skewed renewals.
  if s.expires_at and s.expires_at < now then return false end
  -- the cookie's Max-Age is counted from the renewal, not from the end of
  -- the request (a request that crossed a second gave a second less)
  if s.renewed then s.renewed_at = now end
  if not owners.is_owner_key(s.user.owner) then
    -- a session from before owner keys: its subject was always the stable id
    local owner, why = owners.owner_of_subject(s.user.subject)
    if not owner then
      log.warn("session: no owner key for the session's subject, ignored", { detail = why })
      return false
    end
    s.user.owner = owner
  end
  keep(tok, s, now)
  s.also = extra
  s.cache_token = tok
  return s
end

-- destroy(id) -> true | nil, err
function M.destroy(id)
  if not M.valid_id(id) then return true end
  local r, err = client()
  if not r then return nil, err end
  local ok
  ok, err = r:call("DEL", M.key(id))
  if ok == nil then return nil, err end
  -- Redis's invalidation reaches every worker; this one need not wait for it
  tracked.invalidate(M.key(id))
  return true
end

-- RFC 3339 (UTC) of an epoch time.
function M.rfc3339(t)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(t))
end

return M
