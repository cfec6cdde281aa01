-- auth.current: the session of a request. load(req) reads the session cookie,
-- loads (and renews) the session, refreshes the provider token when it is
-- near expiry, and sets req.session and req.user. finish() adds the renewed
-- cookie (new Max-Age) to the response when the session was renewed.
local log = require("devex.log")
local session = require("auth.session")
local settings = require("auth.settings")
local cookies = require("auth.cookies")

local M = {}

-- Refreshes the provider's token when a refresh token exists and the access
-- token expires within settings.refresh_margin. A failed refresh keeps the
-- session (the sign-in is still valid) and is logged.
function M.refresh_if_due(s)
  if not s.refresh_token or not s.token_expires_at then return false end
  if s.token_expires_at - os.time() > settings.refresh_margin then return false end
  local p = require("auth.registry").get(s.provider)
  if not p or not p.refresh then return false end
  if not session.lock_refresh(s) then return false end -- another request refreshes it
  local tokens, detail = p:refresh(s)
  local ok = false
  if tokens then
    local stored, err = session.update_tokens(s, tokens)
    if stored == nil then
      log.warn("session: could not store refreshed provider tokens", { provider = s.provider, error = tostring(err) })
    else
      ok = true
    end
  else
    log.warn("session: provider token refresh failed", { provider = s.provider, detail = detail })
  end
  session.unlock_refresh(s)
  return ok
end

-- load(req) -> session | false | nil, err
function M.load(req)
  local id = req.cookies[settings.cookie_name]
  if not id then return false end
  local s, err = session.load(id)
  if s == nil then return nil, err end
  if not s then return false end
  M.refresh_if_due(s)
  req.session = s
  req.user = s.user
  return s
end

function M.finish(req, status, body, headers)
  local s = req.session
  if s and s.renewed then
    headers = cookies.add_header(headers, "Set-Cookie", cookies.session(s.id))
  end
  return status, body, headers
end

function M.unavailable(err)
  log.error("session store unavailable", { error = tostring(err) })
  return 503, { error = "session store unavailable" }
end

return M
