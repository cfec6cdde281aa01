-- auth.providers.oidc: sign-in with any OpenID Connect provider
-- (authorization code flow with PKCE S256 and a nonce). Settings
-- (config.oauth.providers.<name>): issuer, client_id, client_secret,
-- redirect_url (required), scopes ("openid profile email"), ca_file,
-- token_auth ("basic" or "post"; default from the discovery document).
--
-- The discovery document (<issuer>/.well-known/openid-configuration) and the
-- JWKS are fetched on first use and cached per worker for an hour; the JWKS
-- is fetched again (at most once a minute) when an ID token names a key it
-- does not hold (key rotation). The ID token is verified with
-- devex.oauth.verify_jwt: signature, issuer, audience (client_id), expiry and
-- the login attempt's nonce; an azp claim, when present, must be client_id. The user comes from the ID token's claims, with
-- the userinfo endpoint filling in what the token lacks. The owner key is
-- made from the issuer and the sub claim (common.owner_oidc), never from
-- preferred_username or email, which the user or the provider's admin may
-- set to anything; the login (preferred_username, else a verified email,
-- else sub) is only shown.
local json = require("devex.json")
local log = require("devex.log")
local oauth = require("devex.oauth")
local common = require("auth.providers.common")

local M = {}
local P = {}
P.__index = P

local CACHE_TTL = 3600
local JWKS_MIN_INTERVAL = 60

function M.new(name, conf)
  common.check_conf(name, conf, { "issuer", "client_id", "client_secret", "redirect_url" })
  local scopes = conf.scopes or "openid profile email"
  if type(scopes) == "table" then scopes = table.concat(scopes, " ") end
  if not (" " .. scopes .. " "):find(" openid ", 1, true) then scopes = "openid " .. scopes end
  return setmetatable({
    name = name,
    kind = "oidc",
    issuer = conf.issuer,
    client_id = conf.client_id,
    client_secret = conf.client_secret,
    redirect_url = conf.redirect_url,
    scopes = scopes,
    ca_file = conf.ca_file,
    token_auth_conf = conf.token_auth,
    _doc = nil, _doc_at = 0, _jwks = nil, _jwks_at = 0,
  }, P)
end

-- The discovery document (cached).
function P:discover()
  if self._doc and os.time() - self._doc_at < CACHE_TTL then return self._doc end
  local url = self.issuer:gsub("/+$", "") .. "/.well-known/openid-configuration"
  local res, doc = common.request(self, { url = url })
  if not res then return nil, doc end
  if res.status ~= 200 or type(doc) ~= "table" then
    return nil, string.format("discovery answered %d", res.status)
  end
  if doc.issuer ~= self.issuer then
    return nil, string.format("discovery names issuer %q, configured %q", tostring(doc.issuer), self.issuer)
  end
  for _, f in ipairs({ "authorization_endpoint", "token_endpoint", "jwks_uri" }) do
    if type(doc[f]) ~= "string" then return nil, "discovery document lacks " .. f end
  end
  self._doc, self._doc_at = doc, os.time()
  return doc
end

function P:choose_token_auth(doc)
  if self.token_auth_conf then return self.token_auth_conf end
  local methods = doc.token_endpoint_auth_methods_supported
  if type(methods) ~= "table" then return "basic" end -- the default of OpenID Connect Discovery
  local has = {}
  for _, m in ipairs(methods) do has[m] = true end
  if has.client_secret_basic then return "basic" end
  return "post"
end

function P:jwks(force)
  local now = os.time()
  if self._jwks and not force and now - self._jwks_at < CACHE_TTL then return self._jwks end
  if self._jwks and force and now - self._jwks_at < JWKS_MIN_INTERVAL then return self._jwks end
  local doc, err = self:discover()
  if not doc then return nil, err end
  local res, keys = common.request(self, { url = doc.jwks_uri })
  if not res then return nil, keys end
  if res.status ~= 200 or type(keys) ~= "table" or type(keys.keys) ~= "table" then
    return nil, string.format("JWKS answered %d", res.status)
  end
  self._jwks, self._jwks_at = keys, now
  return keys
end

-- Verifies an ID token against the nonce of the login attempt.
function P:verify_id_token(token, nonce)
  local doc, err = self:discover()
  if not doc then return nil, err end
  local keys
  keys, err = self:jwks()
  if not keys then return nil, err end
  local opts = { issuer = doc.issuer, audience = self.client_id, nonce = nonce }
  local claims, e = oauth.verify_jwt(token, keys, opts)
  if not claims and e and e.check == "kid" then
    keys, err = self:jwks(true)
    if not keys then return nil, err end
    claims, e = oauth.verify_jwt(token, keys, opts)
  end
  if not claims then return nil, "ID token rejected: " .. tostring(e and e.message or e) end
  if type(claims.sub) ~= "string" or claims.sub == "" then return nil, "ID token has no sub" end
  -- OpenID Connect Core 3.1.3.7: an azp (authorized party) must be our client
  -- id; a token issued to another client of the provider is not ours to use
  if claims.azp ~= nil and claims.azp ~= self.client_id then
    return nil, "ID token rejected: azp names another client"
  end
  return claims
end

function P:authorize_url(a)
  local doc, err = self:discover()
  if not doc then return nil, err end
  return oauth.authorize_url(doc.authorization_endpoint, {
    response_type = "code",
    client_id = self.client_id,
    redirect_uri = self.redirect_url,
    scope = self.scopes,
    state = a.state,
    nonce = a.nonce,
    code_challenge = a.challenge,
    code_challenge_method = "S256",
  })
end

function P:exchange(code, record)
  local doc, err = self:discover()
  if not doc then return nil, err end
  self.token_auth = self:choose_token_auth(doc)
  local tokens
  tokens, err = common.token_request(self, doc.token_endpoint, common.code_form(self, code, record))
  if not tokens then return nil, err end
  if not tokens.id_token then return nil, "token endpoint answered without an id_token" end
  local claims
  claims, err = self:verify_id_token(tokens.id_token, record.nonce)
  if not claims then return nil, err end
  tokens.claims = claims
  return tokens
end

local function s(v) return type(v) == "string" and v ~= "" and v or nil end

function P:user(tokens)
  local c = tokens.claims
  local info = {}
  local doc = self._doc
  if doc and type(doc.userinfo_endpoint) == "string" and
     not (s(c.preferred_username) and s(c.email) and s(c.name)) then
    local res, body = common.request(self, { url = doc.userinfo_endpoint,
      headers = { ["Authorization"] = "Bearer " .. tokens.access_token, ["Accept"] = "application/json" } })
    if res and res.status == 200 and type(body) == "table" and body.sub == c.sub then
      info = body
    else
      log.warn("oidc: userinfo not used", { provider = self.name,
        detail = res and ("status " .. res.status) or tostring(body) })
    end
  end
  local function claim(k) return s(c[k]) or s(info[k]) end
  local email = claim("email")
  local verified = c.email_verified
  if verified == nil then verified = info.email_verified end
  if verified == false then email = nil end
  local login = claim("preferred_username") or (verified == true and email) or c.sub
  local owner, why = common.owner_oidc(self.issuer, c.sub)
  if not owner then return nil, "no owner key: " .. why end
  return {
    id = c.sub,
    login = login,
    name = claim("name") or json.null,
    email = email or json.null,
    avatar_url = claim("picture") or json.null,
    created_at = json.null,
    subject = self.name .. ":" .. c.sub,
    owner = owner,
    provider = self.name,
  }
end

return M
