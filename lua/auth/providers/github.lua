-- auth.providers.github: sign-in with GitHub (OAuth 2.0 authorization code
-- flow with PKCE S256). Settings (config.github): client_id, client_secret,
-- redirect_url (required), authorize_url (https://github.com/login/oauth/authorize),
-- token_url (https://github.com/login/oauth/access_token), api_url
-- (https://api.github.com), ca_file, scopes ("read:user user:email").
-- The user is GET {api}/user; when it has no public email, the primary
-- verified address of GET {api}/user/emails. The owner key is the numeric
-- user id (gh_<id>; common.owner_github): the login is a display field, as
-- GitHub frees it for anyone when its user renames the account.
local json = require("devex.json")
local log = require("devex.log")
local oauth = require("devex.oauth")
local common = require("auth.providers.common")

local M = {}
local P = {}
P.__index = P

function M.new(name, conf)
  common.check_conf(name, conf, { "client_id", "client_secret", "redirect_url" })
  return setmetatable({
    name = name,
    kind = "github",
    client_id = conf.client_id,
    client_secret = conf.client_secret,
    redirect_url = conf.redirect_url,
    authorize_endpoint = conf.authorize_url or "https://github.com/login/oauth/authorize",
    token_endpoint = conf.token_url or "https://github.com/login/oauth/access_token",
    api_url = (conf.api_url or "https://api.github.com"):gsub("/+$", ""),
    ca_file = conf.ca_file,
    scopes = conf.scopes or "read:user user:email",
    token_auth = "post", -- GitHub takes client_id and client_secret in the form
  }, P)
end

function P:authorize_url(a)
  return oauth.authorize_url(self.authorize_endpoint, {
    client_id = self.client_id,
    redirect_uri = self.redirect_url,
    scope = self.scopes,
    state = a.state,
    code_challenge = a.challenge,
    code_challenge_method = "S256",
    allow_signup = "true",
  })
end

function P:exchange(code, record)
  return common.token_request(self, self.token_endpoint, common.code_form(self, code, record))
end

local function api(self, path, token)
  return common.request(self, {
    url = self.api_url .. path,
    headers = {
      ["Authorization"] = "Bearer " .. token,
      ["Accept"] = "application/vnd.github+json",
      ["X-GitHub-Api-Version"] = "2022-11-28",
    },
  })
end

local function null_or(v)
  if type(v) == "string" and v ~= "" then return v end
  return json.null
end

function P:user(tokens)
  local res, u = api(self, "/user", tokens.access_token)
  if not res then return nil, u end
  if res.status ~= 200 or type(u) ~= "table" then
    return nil, string.format("GET /user answered %d", res.status)
  end
  local id = u.id
  if (math.type(id) ~= "integer" and type(id) ~= "string") or type(u.login) ~= "string" or u.login == "" then
    return nil, "GET /user answered without id or login"
  end
  local owner, why = common.owner_github(self.name, id)
  if not owner then return nil, "GET /user answered an unusable id: " .. why end
  local email = null_or(u.email)
  if email == json.null then
    local eres, list = api(self, "/user/emails", tokens.access_token)
    if eres and eres.status == 200 and type(list) == "table" then
      for _, e in ipairs(list) do
        if type(e) == "table" and e.primary == true and e.verified == true and type(e.email) == "string" then
          email = e.email
        end
      end
    else
      -- not fatal: the user signs in without an email
      log.warn("github: could not read the user's emails", { provider = self.name,
        detail = eres and ("status " .. eres.status) or tostring(list) })
    end
  end
  return {
    id = id,
    login = u.login,
    name = null_or(u.name),
    email = email,
    avatar_url = null_or(u.avatar_url),
    created_at = null_or(u.created_at),
    subject = self.name .. ":" .. tostring(id),
    owner = owner,
    provider = self.name,
  }
end

return M
