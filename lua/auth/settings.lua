-- auth.settings: the sign-in settings, read once per worker from the config
-- (the open tables github, session and oauth), with their defaults.
--
--   session.ttl             seconds a session lives without use (604800: 7 days);
--                           renewed (sliding) when used with less than half left
--   session.max_lifetime    seconds a session lives at most, used or not
--                           (2592000: 30 days); then the user signs in again
--   session.state_ttl       seconds an OAuth state (login attempt) is valid (600)
--   session.cookie_name     the session cookie ("devex_session"; "__Host-devex_session"
--                           when the cookie is Secure and host-only, below)
--   session.state_cookie    the login-attempt cookie ("devex_oauth_state", with
--                           the same prefix when Secure)
--   oauth.timeout           seconds for each call to a provider (10)
--   auth.cookie_domain      Domain attribute of the session cookie (nil: host-only)
--   oauth.providers         { name = { issuer=, client_id=, client_secret=,
--                             redirect_url=, scopes=, ca_file= } } (OpenID Connect)
-- Provider tokens are used during the sign-in only (to read the user) and
-- never stored: nothing calls the provider for a user afterwards.
local config = require("devex.config").get()

local M = {}

local session = config.session or {}
local oauth = config.oauth or {}

local function num(v, default, what, allow_zero)
  if v == nil then return default end
  if type(v) ~= "number" or v < 0 or (v == 0 and not allow_zero) then
    error(what .. " must be a number " .. (allow_zero and ">= 0" or "> 0"), 0)
  end
  return v
end

local function seconds(v, default, what)
  v = num(v, default, what)
  return math.tointeger(v) or math.ceil(v)
end

M.session_ttl = seconds(session.ttl, 7 * 24 * 3600, "session.ttl")
M.max_lifetime = seconds(session.max_lifetime, 30 * 24 * 3600, "session.max_lifetime")
M.state_ttl = seconds(session.state_ttl, 600, "session.state_ttl")
M.timeout = num(oauth.timeout, 10, "oauth.timeout")

-- auth.cookie_domain (COOKIE_DOMAIN): the session cookie's Domain, so that it
-- also reaches the runner domain (README "Runner gateway"); nil: host-only.
local auth_conf = config.auth or {}
M.cookie_domain = auth_conf.cookie_domain
if M.cookie_domain ~= nil then
  if type(M.cookie_domain) ~= "string" or not M.cookie_domain:match("^%.?[%w][%w%-%.]*[%w]$")
     or M.cookie_domain:find("..", 1, true) then
    error("auth.cookie_domain must be a domain name such as example.com", 0)
  end
  M.cookie_domain = M.cookie_domain:gsub("^%.", ""):lower()
end

M.environment = config.environment or "development"
M.public_url = config.public_url
M.frontend_url = (config.frontend_url or "http://localhost:3000"):gsub("/+$", "")
-- Cookies carry Secure whenever devexd's own public URL is https.
M.secure = M.public_url ~= nil and M.public_url:lower():match("^https://") ~= nil
M.allow_insecure_http = config.allow_insecure_http == true

-- Cookie names. A Secure, host-only cookie with Path=/ gets the __Host-
-- prefix: the browser then refuses the name from anywhere but this host over
-- HTTPS (a sibling subdomain cannot plant or shadow it: no session fixation).
-- The session cookie cannot have it when auth.cookie_domain gives it a Domain
-- (so that it reaches the runner domain); the login-attempt cookie always
-- can, and then goes to Path=/ instead of /auth/. The frontend never reads
-- either cookie (HttpOnly).
local function host_prefixed(name, host_only)
  if M.secure and host_only and name:sub(1, 7) ~= "__Host-" then return "__Host-" .. name end
  return name
end
M.cookie_name = host_prefixed(session.cookie_name or "devex_session", M.cookie_domain == nil)
M.state_cookie = host_prefixed(session.state_cookie or "devex_oauth_state", true)
M.state_cookie_path = M.state_cookie:sub(1, 7) == "__Host-" and "/" or "/auth/"

-- Called when the app that serves sign-in loads: in production the session
-- cookie must be Secure, so public_url must be https, unless the config says
-- allow_insecure_http = true (DEVEXD_ALLOW_HTTP=1 in the shipped config).
-- Not checked by the one-shot commands (templates sync, workload render...).
function M.check_serving()
  if M.environment ~= "production" or M.secure then return end
  -- (the development sign-in refuses production itself, with its own reason)
  if type(config.dev_login) == "table" and config.dev_login.enabled == true then return end
  if not M.allow_insecure_http then
    error("environment is production but public_url is " .. (M.public_url and "not https (" .. M.public_url .. ")" or "not set")
      .. ": session cookies would travel without Secure. Set PUBLIC_URL to devexd's https URL, or allow plain HTTP"
      .. " explicitly with allow_insecure_http = true (DEVEXD_ALLOW_HTTP=1)", 0)
  end
  require("devex.log").warn("serving production over plain HTTP (allow_insecure_http): session cookies are not Secure")
end

-- The origin (scheme://host[:port], lowercased) of a URL, or nil.
function M.origin_of(url)
  if type(url) ~= "string" then return nil end
  local o = url:match("^(%a[%w+.-]*://[^/?#]+)")
  return o and o:lower() or nil
end

-- Origins the browser frontend runs on: FRONTEND_URL, plus
-- http://localhost:3000 in development.
M.allowed_origins = {}
do
  local o = M.origin_of(M.frontend_url)
  if o then M.allowed_origins[o] = true end
  if M.environment == "development" then M.allowed_origins["http://localhost:3000"] = true end
end

-- Where the browser goes after a login: FRONTEND_URL/dashboard, or
-- FRONTEND_URL?error=<reason>.
function M.frontend_redirect(reason)
  if not reason then return M.frontend_url .. "/dashboard" end
  local sep = M.frontend_url:find("?", 1, true) and "&" or "?"
  return M.frontend_url .. sep .. "error=" .. reason
end

M.config = config
return M
