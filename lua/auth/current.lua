-- auth.current: the session of a request. load(req) reads the session cookie,
-- loads (and renews) the session and sets req.session and req.user. finish()
-- adds the renewed cookie (the new Max-Age: what is left of the session) to
-- the response when the session was renewed.
--
-- No provider token is kept or refreshed: the sign-in reads the user with
-- the provider's token once, and nothing calls the provider for the user
-- afterwards (auth.session).
local log = require("devex.log")
local session = require("auth.session")
local settings = require("auth.settings")
local cookies = require("auth.cookies")

local M = {}

-- Reads done in the session's own Redis script for some routes (one round
-- trip instead of two: auth.session load's also): [method][route pattern] ->
-- { body, args }. The result is kept for the request's user table only
-- (weak keys), read with M.also(user) by the handler.
local with_session = {}
local also_of = setmetatable({}, { __mode = "k" })
local token_of = setmetatable({}, { __mode = "k" })

-- read_with_session(method, pattern, { body = <Lua chunk>, args = {...} })
function M.read_with_session(method, pattern, also)
  with_session[method] = with_session[method] or {}
  with_session[method][pattern] = also
end

-- also(user) -> the result of the route's read_with_session body for the
-- session that gave this user table, or nil.
function M.also(user)
  return user and also_of[user]
end

-- also_token(user) -> the services.tracked token taken before the read that
-- gave M.also(user) (to cache what it read), or nil.
function M.also_token(user)
  return user and token_of[user]
end

-- load(req) -> session | false | nil, err
function M.load(req)
  local id = req.cookies[settings.cookie_name]
  if not id then return false end
  local by_route = with_session[req.method]
  local s, err = session.load(id, by_route and req.route and by_route[req.route])
  if s == nil then return nil, err end
  if not s then return false end
  req.session = s
  req.user = s.user
  if s.also ~= nil then
    also_of[s.user] = s.also
    token_of[s.user] = s.cache_token
    s.also = nil
  end
  return s
end

function M.finish(req, status, body, headers)
  local s = req.session
  if s and s.renewed then
    local left = s.expires_at and (s.expires_at - (s.renewed_at or os.time())) or nil
    headers = cookies.add_header(headers, "Set-Cookie", cookies.session(s.id, left))
  end
  return status, body, headers
end

function M.unavailable(err)
  log.error("session store unavailable", { error = tostring(err) })
  return 503, { error = "session store unavailable" }
end

return M
