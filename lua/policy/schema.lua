-- policy.schema: what an operator's policy file may set, checked when it is
-- loaded (devexd --check, start, SIGHUP), so that a typo such as
-- `cleanup = { idle_limt = 600 }` is refused with the setting named instead
-- of being ignored while the default silently applies.
--
-- A section's settings are the keys of its defaults (lua/policy/<section>.lua)
-- plus the OPTIONAL ones below, which have no default. A value must have its
-- default's type (a number for a number, a function for a function...);
-- `false` may switch off a setting whose default is a table or a function
-- (a limits rule, a hook). Some tables are maps whose keys the operator
-- chooses (templates, labels, environment variables, Kubernetes objects):
-- their contents are not checked here; the limits rules are, one level down.
local M = {}

-- Settings without a default value: the type expected.
M.OPTIONAL = {
  cleanup = { warning_lead = "number", keepalive_max = "number" },
  workload = { host = "string", shared_watch = "boolean" },
  quota = { limit_for = "function" },
  naming = {},
  sync = {},
  limits = {},
  messages = {},
  magiclink = {},
  sandbox = {},
  templates = {},
}

-- Sections whose nested tables are checked key by key against the default.
M.NESTED = { limits = true }

local function distance(a, b)
  if math.abs(#a - #b) > 3 then return 99 end
  local prev = {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur = { [0] = i }
    for j = 1, #b do
      local cost = a:sub(i, i) == b:sub(j, j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev = cur
  end
  return prev[#b]
end

local function known_keys(defaults, optional)
  local ks = {}
  for k in pairs(defaults or {}) do if type(k) == "string" then ks[#ks + 1] = k end end
  for k in pairs(optional or {}) do ks[#ks + 1] = k end
  table.sort(ks)
  return ks
end

local function unknown(path, key, keys)
  local best, bd = nil, 3
  for _, k in ipairs(keys) do
    local d = distance(key, k)
    if d < bd then best, bd = k, d end
  end
  local hint = best and ("; did you mean " .. path .. "." .. best .. "?")
    or ("; known: " .. (#keys > 0 and table.concat(keys, ", ") or "none"))
  return "unknown setting " .. path .. "." .. key .. hint
end

local function type_ok(want, v)
  if want == "any" then return true end
  if type(v) == want then return true end
  return v == false and (want == "table" or want == "function")
end

-- check_table(path, overrides, defaults, optional, nested) -> true | nil, message
local function check_table(path, over, defaults, optional, nested)
  local keys
  for k, v in pairs(over) do
    if type(k) ~= "string" then return nil, path .. ": keys must be names, got " .. tostring(k) end
    local d = defaults and defaults[k]
    local want = d ~= nil and type(d) or (optional and optional[k])
    if want == nil then
      keys = keys or known_keys(defaults, optional)
      return nil, unknown(path, k, keys)
    end
    if not type_ok(want, v) then
      return nil, string.format("%s.%s must be a %s, got a %s", path, k, want, type(v))
    end
    if nested and type(v) == "table" and type(d) == "table" then
      local ok, e = check_table(path .. "." .. k, v, d, nil, false)
      if not ok then return nil, e end
    end
  end
  return true
end

-- check(section, overrides, defaults) -> true | nil, message
function M.check(section, over, defaults)
  if type(over) ~= "table" then
    if type(defaults) == "table" then
      return nil, section .. " must be a table, got a " .. type(over)
    end
    return true
  end
  return check_table(section, over, defaults, M.OPTIONAL[section] or {}, M.NESTED[section])
end

return M
