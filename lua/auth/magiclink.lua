-- auth.magiclink: e-mail magic-link sign-in (README "Sign-in").
--
-- Configuration: auth.magiclink = { smtp_url=, username=, password=, from=,
-- from_name=, subject=, resend_api_key=, resend_url=, redirect_url=,
-- token_ttl=, timeout=, ca_file= } (etc/devexd.conf.lua fills it from
-- SMTP_URL, SMTP_USERNAME, SMTP_PASSWORD, MAIL_FROM, GMAIL_USER/GMAIL_PASSWORD,
-- RESEND_API_KEY, MAGICLINK_REDIRECT_URL). The sign-in is off unless an SMTP
-- URL or a Resend key is set; with a Resend key, mail goes through Resend.
--
-- Tokens: 32 random bytes (base64url, 43 characters) in the link; Redis keeps
-- <prefix>magiclink:<sha256 hex of the token> = the normalised address, with
-- a TTL (token_ttl, 900 s). verify() reads and deletes it in one script, so a
-- link signs in once, on one replica, whatever the concurrency.
--
-- Identity: the subject is email:<address>, the owner key em_<base32 of
-- SHA-256 of the address> (auth.providers.common.owner_email); login and name
-- are the address's local part.
local crypto = require("devex.crypto")
local redis = require("services.redis")
local settings = require("auth.settings")
local owners = require("auth.providers.common")
local mail = require("auth.mail")

local M = {}

local conf = (settings.config.auth or {}).magiclink
if conf ~= nil and type(conf) ~= "table" then error("auth.magiclink must be a table", 0) end
conf = conf or {}

local function opt_str(k)
  local v = conf[k]
  if v ~= nil and (type(v) ~= "string" or v:find("[%c]")) then
    error("auth.magiclink." .. k .. " must be a string without control characters", 0)
  end
  if v == "" then return nil end
  return v
end

local c = {
  smtp_url = opt_str("smtp_url"), username = opt_str("username"), password = opt_str("password"),
  from = opt_str("from"), from_name = opt_str("from_name"), subject = opt_str("subject"),
  resend_api_key = opt_str("resend_api_key"), resend_url = opt_str("resend_url") or "https://api.resend.com",
  redirect_url = opt_str("redirect_url"), ca_file = opt_str("ca_file"),
  timeout = conf.timeout or 20, token_ttl = conf.token_ttl or 900,
}
c.resend_url = c.resend_url:gsub("/+$", "")
M.conf = c
M.enabled = c.smtp_url ~= nil or c.resend_api_key ~= nil

if M.enabled then
  if math.type(c.token_ttl) ~= "integer" or c.token_ttl < 1 or c.token_ttl > 86400 then
    error("auth.magiclink.token_ttl must be an integer number of seconds from 1 to 86400", 0)
  end
  if type(c.timeout) ~= "number" or c.timeout <= 0 or c.timeout > 300 then
    error("auth.magiclink.timeout must be a number of seconds, > 0 and <= 300", 0)
  end
  if not c.resend_api_key and not c.smtp_url:lower():match("^smtps?://[^/%s]+") then
    error("auth.magiclink.smtp_url must be an smtp:// or smtps:// URL", 0)
  end
  if not c.resend_url:match("^https?://[^/%s]+") then
    error("auth.magiclink.resend_url must be an http(s) URL", 0)
  end
  if not c.from or not mail.normalize(c.from) then
    error("auth.magiclink.from (MAIL_FROM) must be the sender's e-mail address", 0)
  end
  if c.redirect_url and not c.redirect_url:match("^https?://[^/%s]+") then
    error("auth.magiclink.redirect_url (MAGICLINK_REDIRECT_URL) must be an http(s) URL", 0)
  end
  if not c.redirect_url and not settings.public_url then
    error("auth.magiclink needs redirect_url (MAGICLINK_REDIRECT_URL) or public_url (PUBLIC_URL) to build the link", 0)
  end
end

-- The link in the mail: redirect_url (the verify route, or a frontend page
-- that forwards to it) or <public_url>/auth/magiclink/verify, plus ?token=.
function M.link(token)
  local base = c.redirect_url or (settings.public_url:gsub("/+$", "") .. "/auth/magiclink/verify")
  return base .. (base:find("?", 1, true) and "&" or "?") .. "token=" .. token
end

local TOKEN = "^[A-Za-z0-9_-]+$"

local function key(token) return redis.key("magiclink", crypto.sha256_hex(token)) end

-- issue(address) -> token | nil, err: a fresh token bound to the address.
function M.issue(address)
  local r, err = redis.client()
  if not r then return nil, err end
  local token = crypto.b64url(crypto.random_bytes(32))
  local ok
  ok, err = r:call("SET", key(token), address, "EX", tostring(c.token_ttl))
  if not ok then return nil, err end
  return token
end

-- revoke(token): the link of a mail that could not be sent.
function M.revoke(token)
  local r = redis.client()
  if r then r:call("DEL", key(token)) end
end

local CONSUME = [[
local v = redis.call('GET', KEYS[1])
if v then redis.call('DEL', KEYS[1]) end
return v
]]

-- consume(token) -> address | false (unknown, used or expired) | nil, err
function M.consume(token)
  if type(token) ~= "string" or #token ~= 43 or not token:match(TOKEN) then return false end
  local r, err = redis.client()
  if not r then return nil, err end
  local v
  v, err = r:eval(CONSUME, { key(token) })
  if v == nil and err then return nil, err end
  if type(v) ~= "string" then return false end
  return v
end

-- The session's user for a verified address.
function M.user(address, now)
  local loc = address:match("^(.*)@") or address
  local owner = assert(owners.owner_email(address))
  return {
    id = owner, login = loc, name = loc, email = address, avatar_url = "",
    created_at = require("auth.session").rfc3339(now or os.time()),
    provider = "magiclink", subject = "email:" .. address, owner = owner,
  }
end

return M
