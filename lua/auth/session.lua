-- auth.session: browser sessions kept in Redis.
--
-- The cookie holds an opaque id: base64url of 32 random bytes (256 bits).
-- Redis keeps the session under a hash of that id, <prefix>session:<sha256 hex>,
-- so a copy of the keyspace cannot be replayed as cookies. The hash holds the
-- user (JSON), the provider and its tokens (never sent to the browser), the
-- provider token's expiry, created_at and expires_at. The key carries a TTL
-- (settings.session_ttl) renewed when the session is used with less than half
-- of it left (sliding expiry). Expiry and logout are Redis's TTL and DEL, so
-- they hold at once on every replica.
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

-- Reads the session; renews the TTL (and expires_at) when less than half is left.
-- Returns the flattened hash plus "_renewed" when it renewed, or nil.
local TOUCH = [[
local h = redis.call('HGETALL', KEYS[1])
if #h == 0 then return false end
local ttl = tonumber(ARGV[1])
local pttl = redis.call('PTTL', KEYS[1])
if pttl >= 0 and pttl < ttl * 500 then
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('HSET', KEYS[1], 'expires_at', ARGV[2])
  for i = 1, #h, 2 do if h[i] == 'expires_at' then h[i + 1] = ARGV[2] end end
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

local function fields_of(tokens)
  return {
    "access_token", tokens.access_token or "",
    "refresh_token", tokens.refresh_token or "",
    "token_expires_at", tokens.expires_at and tostring(math.floor(tokens.expires_at)) or "",
  }
end

-- create(user, provider_name, tokens) -> id, session | nil, err
-- user: { id, login, name, email, avatar_url, created_at, subject, owner };
-- tokens: { access_token, refresh_token, expires_at (epoch s) }.
function M.create(user, provider, tokens)
  if not owners.is_owner_key(user.owner) then return nil, "the user has no valid owner key" end
  local r, err = client()
  if not r then return nil, err end
  local id = crypto.b64url(crypto.random_bytes(32))
  local now = os.time()
  local expires_at = now + settings.session_ttl
  local args = { settings.session_ttl,
    "user", json.encode(user), "provider", provider,
    "created_at", tostring(now), "expires_at", tostring(expires_at) }
  for _, v in ipairs(fields_of(tokens or {})) do args[#args + 1] = v end
  local ok
  ok, err = r:eval(CREATE, { M.key(id) }, table.unpack(args))
  if not ok then return nil, err end
  return id, { id = id, user = user, provider = provider, expires_at = expires_at }
end

local function to_session(id, flat)
  local h = {}
  for i = 1, #flat, 2 do h[flat[i]] = flat[i + 1] end
  local user = h.user and json.decode(h.user)
  if type(user) ~= "table" then return nil end
  return {
    id = id,
    key = M.key(id),
    user = user,
    provider = h.provider,
    access_token = h.access_token ~= "" and h.access_token or nil,
    refresh_token = h.refresh_token ~= "" and h.refresh_token or nil,
    token_expires_at = tonumber(h.token_expires_at),
    created_at = tonumber(h.created_at),
    expires_at = tonumber(h.expires_at),
    renewed = h._renewed == "1",
  }
end

-- load(id) -> session | false (no such session) | nil, err (Redis failed).
-- Renews the session's TTL when due (session.renewed is then true).
function M.load(id)
  if not M.valid_id(id) then return false end
  local r, err = client()
  if not r then return nil, err end
  local now = os.time()
  local flat
  flat, err = r:eval(TOUCH, { M.key(id) }, settings.session_ttl, tostring(now + settings.session_ttl))
  if flat == nil then return nil, err end
  if type(flat) ~= "table" then return false end
  local s = to_session(id, flat)
  if not s then
    log.warn("session: unreadable session record, ignored")
    return false
  end
  -- Redis's TTL is the authority; this only guards against clock-skewed renewals.
  if s.expires_at and s.expires_at < now then return false end
  if not owners.is_owner_key(s.user.owner) then
    -- a session from before owner keys: its subject was always the stable id
    local owner, why = owners.owner_of_subject(s.user.subject)
    if not owner then
      log.warn("session: no owner key for the session's subject, ignored", { detail = why })
      return false
    end
    s.user.owner = owner
  end
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
  return true
end

-- Stores refreshed provider tokens; only while the session still exists.
local UPDATE_TOKENS = [[
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
]]

function M.update_tokens(s, tokens)
  local r, err = client()
  if not r then return nil, err end
  local args = { "access_token", tokens.access_token or "",
    "token_expires_at", tokens.expires_at and tostring(math.floor(tokens.expires_at)) or "" }
  if tokens.refresh_token then
    args[#args + 1] = "refresh_token"; args[#args + 1] = tokens.refresh_token
  end
  local ok
  ok, err = r:eval(UPDATE_TOKENS, { s.key or M.key(s.id) }, table.unpack(args))
  if ok == nil then return nil, err end
  s.access_token = tokens.access_token
  if tokens.refresh_token then s.refresh_token = tokens.refresh_token end
  s.token_expires_at = tokens.expires_at
  return ok == 1
end

-- A short lock so that concurrent requests of one session refresh its
-- provider token once (a rotated refresh token works only once).
function M.lock_refresh(s)
  local r = client()
  if not r then return false end
  local ok = r:call("SET", redis.key("session_refresh", crypto.sha256_hex(s.id)), "1", "NX", "EX", "30")
  return ok == "OK"
end

function M.unlock_refresh(s)
  local r = client()
  if r then r:call("DEL", redis.key("session_refresh", crypto.sha256_hex(s.id))) end
end

-- RFC 3339 (UTC) of an epoch time.
function M.rfc3339(t)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(t))
end

return M
