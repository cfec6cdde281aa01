-- routes.auth: sign-in (see README "Sign-in").
--   GET  /auth/:provider/login     302 to the provider (state, PKCE S256, nonce)
--   GET  /auth/:provider/callback  state check, code exchange, user, session;
--                                  302 to FRONTEND_URL/dashboard, or to
--                                  FRONTEND_URL?error=<reason> on any failure
--   POST /auth/logout              ends the session, expires the cookie
--   GET  /auth/me                  the user, or 401
--   GET  /auth/status              {"authenticated":false} or
--                                  {"authenticated":true,"user":{...},"token_expires_at":"<RFC 3339>"}
-- Failure reasons: invalid_state, access_denied, authorization_failed (another
-- error from the provider), exchange_failed, user_fetch_failed, session_error.
-- Sign-in starts are rate-limited per client address (policy.limits.signin):
-- each one writes a login attempt to Redis. The provider's tokens serve to
-- read the user and are then dropped (auth.session keeps none).
-- In production devexd refuses to load these routes without an https
-- public_url (auth.settings.check_serving).
-- E-mail magic links: routes.magiclink.
local json = require("devex.json")
local log = require("devex.log")
local auth = require("middleware.auth")
local optional_session = require("middleware.session")
local ratelimit = require("middleware.ratelimit")
local cookies = require("auth.cookies")
local registry = require("auth.registry")
local session = require("auth.session")
local settings = require("auth.settings")
local state = require("auth.state")

local NO_STORE = "no-store"

local function redirect(url, set_cookies)
  return 302, nil, { Location = url, ["Cache-Control"] = NO_STORE, ["Set-Cookie"] = set_cookies }
end

local function fail(p, reason, detail, set_cookies)
  log.warn("sign-in failed", { provider = p and p.name or "", reason = reason, detail = detail or "" })
  return redirect(settings.frontend_redirect(reason), set_cookies or { cookies.clear_state() })
end

-- The fields of the user the browser sees.
local function public_user(u)
  return {
    id = u.id,
    login = u.login,
    name = u.name == nil and json.null or u.name,
    email = u.email == nil and json.null or u.email,
    avatar_url = u.avatar_url == nil and json.null or u.avatar_url,
    created_at = u.created_at == nil and json.null or u.created_at,
  }
end

local function provider_of(req)
  local p = registry.get(req.params.provider)
  if not p then return nil, 404, { error = "unknown sign-in provider" } end
  return p
end

local function login(req)
  local p, status, body = provider_of(req)
  if not p then return status, body end
  local st, a = state.begin(p.name)
  if not st then return fail(p, "session_error", "state store: " .. tostring(a)) end
  a.state = st
  local url, detail = p:authorize_url(a)
  if not url then return fail(p, "provider_unavailable", detail) end
  return redirect(url, { cookies.state(st) })
end

local function callback(req)
  local p, status, body = provider_of(req)
  if not p then return status, body end
  local q = req.query
  local record, why = state.consume(q.state, req.cookies[settings.state_cookie], p.name)
  if record == nil then return fail(p, "session_error", "state store: " .. tostring(why)) end
  if q.error then
    local reason = q.error == "access_denied" and "access_denied" or "authorization_failed"
    local desc = type(q.error_description) == "string" and q.error_description:sub(1, 200) or ""
    return fail(p, reason, "provider answered error=" .. q.error:sub(1, 64) .. (desc ~= "" and (": " .. desc) or ""))
  end
  if not record then return fail(p, "invalid_state", why) end
  if type(q.code) ~= "string" or q.code == "" then return fail(p, "exchange_failed", "callback without a code") end
  local tokens, detail = p:exchange(q.code, record)
  if not tokens then return fail(p, "exchange_failed", detail) end
  local user
  user, detail = p:user(tokens)
  if not user then return fail(p, "user_fetch_failed", detail) end
  if user.created_at == nil or user.created_at == json.null then user.created_at = session.rfc3339(os.time()) end
  -- a new id on every sign-in (no fixation); the browser's previous session ends
  local old = req.cookies[settings.cookie_name]
  if old then session.destroy(old) end
  local id, err = session.create(user, p.name)
  if not id then return fail(p, "session_error", "session store: " .. tostring(err)) end
  log.info("signed in", { provider = p.name, user = user.subject })
  return redirect(settings.frontend_redirect(nil), { cookies.session(id), cookies.clear_state() })
end

local function logout(req)
  local id = req.cookies[settings.cookie_name]
  if id then
    local ok, err = session.destroy(id)
    if not ok then
      log.error("logout: session store unavailable", { error = tostring(err) })
      return 503, { error = "session store unavailable" }
    end
  end
  return 200, { message = "Logged out successfully" }, { ["Set-Cookie"] = cookies.clear_session(), ["Cache-Control"] = NO_STORE }
end

local function me(req)
  return 200, public_user(req.user), { ["Cache-Control"] = NO_STORE }
end

local function status_(req)
  if not req.user then return 200, { authenticated = false }, { ["Cache-Control"] = NO_STORE } end
  return 200, {
    authenticated = true,
    user = public_user(req.user),
    token_expires_at = session.rfc3339(req.session.expires_at or (os.time() + settings.session_ttl)),
  }, { ["Cache-Control"] = NO_STORE }
end

return function(app)
  settings.check_serving()
  require("routes.magiclink")(app) -- POST /auth/magiclink/login, GET /auth/magiclink/verify
  app:get("/auth/:provider/login", ratelimit.per_address("signin"), login)
  app:get("/auth/:provider/callback", callback)
  app:post("/auth/logout", logout)
  app:get("/auth/me", auth, me)
  app:get("/auth/status", optional_session, status_)
end
