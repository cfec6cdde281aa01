-- auth.cookies: Set-Cookie values for the session and login-attempt cookies.
-- Every cookie devexd sets is HttpOnly and SameSite=Lax (sent on the top-level
-- GET back from the provider, never on cross-site POSTs), and Secure when the
-- public URL is https. Secure host-only cookies carry the __Host- prefix
-- (names and paths come from auth.settings).
local settings = require("auth.settings")

local M = {}

-- build(name, value, max_age, path, domain) ->
--   "name=value; Path=/; Max-Age=N[; Domain=d]; HttpOnly; SameSite=Lax[; Secure]"
function M.build(name, value, max_age, path, domain)
  local parts = { name .. "=" .. value, "Path=" .. (path or "/"), "Max-Age=" .. math.floor(max_age) }
  if domain then parts[#parts + 1] = "Domain=" .. domain end
  if max_age <= 0 then parts[#parts + 1] = "Expires=Thu, 01 Jan 1970 00:00:00 GMT" end
  parts[#parts + 1] = "HttpOnly"
  parts[#parts + 1] = "SameSite=Lax"
  if settings.secure then parts[#parts + 1] = "Secure" end
  return table.concat(parts, "; ")
end

function M.clear(name, path, domain) return M.build(name, "", 0, path, domain) end

-- The session cookie carries auth.cookie_domain (when set) so that the
-- browser also sends it to the runner domain under the same parent. max_age:
-- what is left of the session (default: a new session's).
function M.session(id, max_age)
  max_age = max_age or math.min(settings.session_ttl, settings.max_lifetime)
  return M.build(settings.cookie_name, id, math.max(max_age, 1), "/", settings.cookie_domain)
end
function M.clear_session() return M.clear(settings.cookie_name, "/", settings.cookie_domain) end

-- The login-attempt cookie goes to /auth/ (where the callbacks are), or to /
-- when it has the __Host- prefix (which requires Path=/).
function M.state(value) return M.build(settings.state_cookie, value, settings.state_ttl, settings.state_cookie_path) end
function M.clear_state() return M.clear(settings.state_cookie, settings.state_cookie_path) end

-- Adds a header to a handler's headers table (creating it); a Set-Cookie (or
-- any header already there) becomes a list of values. Names compare
-- case-insensitively.
function M.add_header(headers, name, value)
  headers = headers or {}
  local lname = name:lower()
  for k, v in pairs(headers) do
    if type(k) == "string" and k:lower() == lname then
      if type(v) == "table" then v[#v + 1] = value else headers[k] = { v, value } end
      return headers
    end
  end
  headers[name] = value
  return headers
end

return M
