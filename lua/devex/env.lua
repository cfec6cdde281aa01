-- devex.env: typed reads of environment variables for the config file.
-- Each reader returns the parsed value or the default; a malformed value is
-- recorded (by variable name) instead of silently falling back, and
-- devex.config reports every recorded problem at start.
local M = {}

local problems = {}

function M.reset() problems = {} end
function M.problems() return problems end

local function bad(name, raw, expected)
  problems[#problems + 1] = string.format("%s: expected %s, got %q", name, expected, raw)
end

local function raw(name)
  local v = os.getenv(name)
  if v == nil or v == "" then return nil end
  return v
end

function M.str(name, default)
  return raw(name) or default
end

function M.int(name, default, min, max)
  local v = raw(name)
  if v == nil then return default end
  local n = math.tointeger(tonumber(v))
  if not n or not v:match("^%-?%d+$") then bad(name, v, "an integer"); return default end
  if (min and n < min) or (max and n > max) then
    bad(name, v, string.format("an integer from %s to %s", min or "-inf", max or "inf"))
    return default
  end
  return n
end

function M.num(name, default)
  local v = raw(name)
  if v == nil then return default end
  local n = tonumber(v)
  if not n then bad(name, v, "a number"); return default end
  return n
end

local truthy = { ["1"] = true, ["true"] = true, yes = true, on = true }
local falsy = { ["0"] = true, ["false"] = true, no = true, off = true }

function M.bool(name, default)
  local v = raw(name)
  if v == nil then return default end
  local l = v:lower()
  if truthy[l] then return true end
  if falsy[l] then return false end
  bad(name, v, "a boolean (true/false, 1/0, yes/no, on/off)")
  return default
end

function M.enum(name, default, allowed)
  local v = raw(name)
  if v == nil then return default end
  for _, a in ipairs(allowed) do if v == a then return v end end
  bad(name, v, "one of " .. table.concat(allowed, ", "))
  return default
end

-- A URL as it may be shown in an error: the userinfo's password replaced by
-- *** ("scheme://user:***@host..."), and a userinfo without a colon, which a
-- redis:// URL uses for the password alone, replaced whole ("***@host...").
local function redact(v)
  local pre, userinfo, rest = v:match("^(%a[%w+.-]*://)(.*)@(.*)$")
  if not pre then
    pre = ""
    userinfo, rest = v:match("^(.*)@(.*)$")
    if not userinfo then return v end
  end
  local user = userinfo:match("^([^:]*):")
  if user and user ~= "" then return pre .. user .. ":***@" .. rest end
  return pre .. "***@" .. rest
end
M.redact = redact

-- Schemes that look right but that this build cannot speak, and what to do
-- instead (rediss:// is spoken since src/redis_tls.c).
local UNSUPPORTED = {
  ["rediss+sentinel"] = "Sentinel over TLS is not supported: use redis+sentinel:// on a private network, "
    .. "or rediss:// to one Redis",
}

-- A URL whose scheme is one of `schemes` (for example {"http", "https"}).
-- unix:///path (a socket path, no host) is accepted when "unix" is one of
-- them. A rejected value is reported without its password.
function M.url(name, default, schemes)
  local v = raw(name)
  if v == nil then return default end
  local scheme = v:match("^(%a[%w+.-]*)://")
  local ok = false
  for _, s in ipairs(schemes) do if scheme == s then ok = true end end
  if ok then
    if scheme == "unix" then
      ok = v:match("^unix:///[^%s?#]") ~= nil
    else
      ok = v:match("^%a[%w+.-]*://[^%s/?#]+") ~= nil
    end
  end
  if not ok or v:find("[%s]") then
    local expected = "a " .. table.concat(schemes, " or ") .. " URL"
    local note = scheme and UNSUPPORTED[scheme:lower()]
    problems[#problems + 1] = string.format("%s: expected %s, got %q%s", name, expected, redact(v),
      note and ("; " .. note) or "")
    return default
  end
  return v
end

return M
