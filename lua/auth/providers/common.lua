-- auth.providers.common: what every sign-in provider shares: HTTP calls to
-- the provider (its CA file, timeout, JSON bodies) and the OAuth 2.0 token
-- endpoint (authorization_code and refresh_token grants).
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
--               subject = "<provider>:<stable id>", owner = <lowercased login> }
--   p:refresh(session) -> tokens | nil, detail   (session.refresh_token is set)
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

function M.refresh_form(session)
  return { grant_type = "refresh_token", refresh_token = session.refresh_token }
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
return M
