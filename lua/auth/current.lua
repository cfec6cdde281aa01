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

-- load(req) -> session | false | nil, err
function M.load(req)
  local id = req.cookies[settings.cookie_name]
  if not id then return false end
  local s, err = session.load(id)
  if s == nil then return nil, err end
  if not s then return false end
  req.session = s
  req.user = s.user
  return s
end

function M.finish(req, status, body, headers)
  local s = req.session
  if s and s.renewed then
    local left = s.expires_at and (s.expires_at - os.time()) or nil
    headers = cookies.add_header(headers, "Set-Cookie", cookies.session(s.id, left))
  end
  return status, body, headers
end

function M.unavailable(err)
  log.error("session store unavailable", { error = tostring(err) })
  return 503, { error = "session store unavailable" }
end

return M
