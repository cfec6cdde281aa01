-- auth.providers.common: what every sign-in provider shares: HTTP calls to
-- the provider (its CA file, timeout, JSON bodies) and the OAuth 2.0 token
-- endpoint (the authorization_code grant: the tokens read the user once, at
-- sign-in, and are not kept).
--
-- A provider (lua/auth/providers/<kind>.lua) is made by new(name, conf) and
-- offers:
--   p.name, p.kind
--   p:authorize_url({ state=, challenge=, nonce= }) -> url | nil, detail
--   p:exchange(code, record) -> tokens | nil, detail
--       record: the login attempt { verifier=, nonce= }
--       tokens: { access_token=, refresh_token=, expires_at= (epoch s), claims= }
--   p:user(tokens) -> user | nil, detail
--       user: { id, login, name, email, avatar_url, created_at,
--               subject = "<provider>:<stable id>", owner = an owner key (below) }
-- A detail is a short text for the log that never holds a secret.
local http = require("devex.http")
local json = require("devex.json")
local oauth = require("devex.oauth")
local crypto = require("devex.crypto")
local settings = require("auth.settings")

local M = {}

-- request(p, opts) -> res, decoded_json_or_nil | nil, detail
function M.request(p, opts)
  opts.timeout = opts.timeout or settings.timeout
  opts.ca_file = opts.ca_file or p.ca_file
  opts.headers = opts.headers or {}
  opts.headers["User-Agent"] = opts.headers["User-Agent"] or "devexd"
  local res, err = http.request(opts)
  if not res then return nil, string.format("%s %s: %s", opts.method or "GET", M.redact_url(opts.url), tostring(err)) end
  local body
  local ctype = res.headers["content-type"] or ""
  if res.body and res.body ~= "" and (ctype:find("json", 1, true) or res.body:match("^%s*[%[{]")) then
    body = json.decode(res.body)
  end
  return res, body
end

-- The URL without its query (which may carry a code or a token).
function M.redact_url(url)
  return (tostring(url):gsub("[?#].*$", ""))
end

local function b64(s)
  local t = crypto.b64url(s):gsub("-", "+"):gsub("_", "/")
  return t .. string.rep("=", (4 - #t % 4) % 4)
end

local function str(v) return type(v) == "string" and v ~= "" and v or nil end

-- Calls the token endpoint with a form; returns tokens or nil, detail.
-- GitHub answers failures (bad_verification_code...) with 200 and an
-- "error" field, so an error field always means failure.
function M.token_request(p, url, form)
  local headers = {
    ["Accept"] = "application/json",
    ["Content-Type"] = "application/x-www-form-urlencoded",
  }
  form.client_id = p.client_id
  if p.token_auth == "basic" then
    headers["Authorization"] = "Basic " .. b64(oauth.form_encode({ u = p.client_id }):sub(3) .. ":" ..
      oauth.form_encode({ u = p.client_secret }):sub(3))
  else
    form.client_secret = p.client_secret
  end
  local res, body = M.request(p, { method = "POST", url = url, headers = headers, body = oauth.form_encode(form) })
  if not res then return nil, body end
  if type(body) ~= "table" then
    return nil, string.format("token endpoint answered %d without a JSON body", res.status)
  end
  if body.error ~= nil then
    local desc = str(body.error_description)
    return nil, string.format("token endpoint answered %d: %s%s", res.status, tostring(body.error),
      desc and (" (" .. desc:sub(1, 200) .. ")") or "")
  end
  if res.status ~= 200 then return nil, string.format("token endpoint answered %d", res.status) end
  if not str(body.access_token) then return nil, "token endpoint answered without an access_token" end
  local expires_in = tonumber(body.expires_in)
  return {
    access_token = body.access_token,
    refresh_token = str(body.refresh_token),
    id_token = str(body.id_token),
    expires_at = expires_in and (os.time() + math.floor(expires_in)) or nil,
    token_type = str(body.token_type),
  }
end

function M.code_form(p, code, record)
  return { grant_type = "authorization_code", code = code, redirect_uri = p.redirect_url,
           code_verifier = record.verifier }
end

-- Checks the settings every provider needs.
function M.check_conf(name, conf, fields)
  for _, f in ipairs(fields) do
    if type(conf[f]) ~= "string" or conf[f] == "" then
      error(string.format("sign-in provider %q: %s is missing", name, f), 0)
    end
  end
end

M.str = str

-- Owner keys ----------------------------------------------------------------
-- user.owner keys everything a user owns: replMeta.user, userRepls:<owner>
-- and the storage prefix repl/<owner>/<replId>/. It is made from the
-- provider's stable subject, never from a login, display name or e-mail
-- address (a GitHub login is freed when its user renames the account, and
-- an OpenID Connect preferred_username or e-mail is whatever the user or
-- the provider's admin sets):
--   GitHub (the provider named "github")  gh_<numeric user id>
--   another GitHub-shaped provider        gh_<provider name>_<numeric user id>
--                                         (ids are unique only per GitHub instance)
--   OpenID Connect                        oidc_<base32 of SHA-256(len(issuer) ":" issuer sub)>
--                                         (issuer + sub is the OIDC identity; sub is up to 255
--                                         characters of anything, so it is hashed: 52 characters,
--                                         lower case, unpadded RFC 4648 base32, 256 bits)
--   development sign-in                   dev_<lowercased name>
--   e-mail magic link (subject email:<a>) em_<base32 of SHA-256(normalised address)>
--                                         (55 characters; the address is what the link
--                                         proved, lower-cased: auth.mail.normalize)
-- Every key is [a-z0-9_-] only, so it holds no '/', ':' or '.' to cross
-- into another owner's prefix or key, and every key holds a '_', which no
-- key of the login-based scheme before it did (GitHub logins and dev names
-- are letters, digits and '-'; OIDC keys were "<provider>:<login>"): a
-- legacy key never equals a new one (see `devexd owners migrate`).

local B32 = "abcdefghijklmnopqrstuvwxyz234567"

local function base32(s)
  local out, acc, nbits = {}, 0, 0
  for i = 1, #s do
    acc = (acc << 8) | s:byte(i)
    nbits = nbits + 8
    while nbits >= 5 do
      nbits = nbits - 5
      local v = (acc >> nbits) & 31
      out[#out + 1] = B32:sub(v + 1, v + 1)
    end
    acc = acc & ((1 << nbits) - 1)
  end
  if nbits > 0 then
    local v = (acc << (5 - nbits)) & 31
    out[#out + 1] = B32:sub(v + 1, v + 1)
  end
  return table.concat(out)
end
M.base32 = base32

local PROVIDER_NAME = "^[a-z0-9][a-z0-9_-]*$" -- as auth.registry allows
local DEV_NAME = "^[A-Za-z0-9][A-Za-z0-9-]*$"

-- owner_github(provider_name, id) -> key | nil, detail
function M.owner_github(name, id)
  local s = math.type(id) == "integer" and string.format("%d", id) or id
  if type(s) ~= "string" or not s:match("^%d+$") or #s > 20 then return nil, "the user id is not a number" end
  s = s:gsub("^0+(%d)", "%1")
  if name == "github" then return "gh_" .. s end
  if type(name) ~= "string" or not name:match(PROVIDER_NAME) then return nil, "invalid provider name" end
  return "gh_" .. name .. "_" .. s
end

-- owner_oidc(issuer, sub) -> key | nil, detail
function M.owner_oidc(issuer, sub)
  if type(issuer) ~= "string" or issuer == "" then return nil, "no issuer" end
  if type(sub) ~= "string" or sub == "" then return nil, "no sub" end
  return "oidc_" .. base32(crypto.sha256(#issuer .. ":" .. issuer .. sub))
end

-- owner_dev(name) -> key | nil, detail (names of the development sign-in)
function M.owner_dev(name)
  if type(name) ~= "string" or not name:match(DEV_NAME) or #name > 39 then return nil, "invalid name" end
  return "dev_" .. name:lower()
end

-- owner_email(address) -> key | nil, detail (a normalised address: auth.mail)
function M.owner_email(address)
  if type(address) ~= "string" or not address:match("^[^@%s]+@[^@%s]+$") or address ~= address:lower() then
    return nil, "not a normalised address"
  end
  return "em_" .. base32(crypto.sha256(address))
end

-- Whether s is an owner key of this scheme (false for a legacy login key).
function M.is_owner_key(s)
  if type(s) ~= "string" or #s > 100 then return false end
  if s:match("^gh_%d+$") or s:match("^gh_[a-z0-9][a-z0-9_-]*_%d+$") or s:match("^dev_[a-z0-9][a-z0-9-]*$") then
    return true
  end
  if #s == 55 and s:match("^em_[a-z2-7]+$") then return true end
  return #s == 57 and s:match("^oidc_[a-z2-7]+$") ~= nil
end

-- owner_of_subject("<provider>:<stable id>") -> key | nil, detail
-- The subject as sessions and the "signed in" log line record it; the
-- provider must be configured (its kind and, for OpenID Connect, its
-- issuer make the key). "dev:<name>" is the development sign-in,
-- "email:<address>" the magic link.
function M.owner_of_subject(subject)
  if type(subject) ~= "string" then return nil, "no subject" end
  local pname, id = subject:match("^([^:]+):(.+)$")
  if not pname then return nil, "a subject is <provider>:<id>" end
  local p = require("auth.registry").get(pname)
  if p then
    if p.kind == "github" then return M.owner_github(pname, id) end
    if p.kind == "oidc" then return M.owner_oidc(p.issuer, id) end
    return nil, "provider " .. pname .. " has no owner keys"
  end
  if pname == "dev" then return M.owner_dev(id) end
  if pname == "email" then return M.owner_email(id) end
  return nil, "no sign-in provider named " .. pname .. " is configured"
end

return M
