-- auth.state: the single-use OAuth `state` of a login attempt, bound to the
-- browser. begin() makes a random state (32 bytes, base64url), a PKCE pair and
-- an OpenID nonce, and keeps them in Redis under a hash of the state with a
-- TTL (settings.state_ttl); the state also goes into a short-lived HttpOnly
-- cookie. consume() checks the cookie against the query and takes the record
-- out of Redis atomically (GET and DEL in one script), so a state works once.
local crypto = require("devex.crypto")
local json = require("devex.json")
local oauth = require("devex.oauth")
local redis = require("services.redis")
local settings = require("auth.settings")

local M = {}

local function key(state) return redis.key("oauth_state", crypto.sha256_hex(state)) end

-- begin(provider_name) -> state, { verifier, challenge, nonce } | nil, err
function M.begin(provider)
  local r, err = redis.client()
  if not r then return nil, err end
  local state = oauth.state()
  local verifier, challenge = oauth.pkce()
  local nonce = oauth.nonce()
  local record = { provider = provider, verifier = verifier, nonce = nonce, created_at = os.time() }
  local ok
  ok, err = r:call("SET", key(state), json.encode(record), "EX", settings.state_ttl)
  if ok ~= "OK" then return nil, err end
  return state, { verifier = verifier, challenge = challenge, nonce = nonce }
end

local TAKE = [[
local v = redis.call('GET', KEYS[1])
if v then redis.call('DEL', KEYS[1]) end
return v
]]

-- consume(query_state, cookie_state, provider_name) -> record | false, why | nil, err
-- The record is removed whether or not it matches the provider, so a state
-- never works twice.
function M.consume(query_state, cookie_state, provider)
  if type(query_state) ~= "string" or #query_state ~= 43 or not query_state:match("^[A-Za-z0-9_-]+$") then
    return false, "missing or malformed state"
  end
  if type(cookie_state) ~= "string" or not crypto.equal(query_state, cookie_state) then
    return false, "state does not match the browser's cookie"
  end
  local r, err = redis.client()
  if not r then return nil, err end
  local v
  v, err = r:eval(TAKE, { key(query_state) })
  if v == nil then return nil, err end
  if type(v) ~= "string" then return false, "unknown, used or expired state" end
  local record = json.decode(v)
  if type(record) ~= "table" then return false, "unreadable state record" end
  if record.provider ~= provider then return false, "state belongs to another provider" end
  return record
end

return M
