-- auth.registry: the configured sign-in providers by name. "github" from
-- config.github (when client_id is set), and one OpenID Connect provider per
-- entry of config.oauth.providers ({ name = { issuer=, client_id=, ... } };
-- an entry may say kind = "github" to add another GitHub-shaped provider).
-- Built when the app loads, so a provider missing a setting stops devexd
-- (and `devexd --check`) with its name.
local settings = require("auth.settings")

local M = { providers = {} }

local kinds = {
  github = "auth.providers.github",
  oidc = "auth.providers.oidc",
}

local function add(name, kind, conf)
  if type(name) ~= "string" or not name:match("^[a-z0-9][a-z0-9_-]*$") then
    error(string.format("oauth.providers: invalid provider name %q (use a-z, 0-9, _ and -)", tostring(name)), 0)
  end
  if name == "magiclink" then
    error(string.format("oauth.providers: the name %q is taken by another sign-in", name), 0)
  end
  if M.providers[name] then error(string.format("sign-in provider %q is configured twice", name), 0) end
  local mod = kinds[kind]
  if not mod then error(string.format("sign-in provider %q: unknown kind %q", name, tostring(kind)), 0) end
  M.providers[name] = require(mod).new(name, conf)
end

local conf = settings.config
if conf.github and conf.github.client_id then add("github", "github", conf.github) end
local extra = conf.oauth and conf.oauth.providers or {}
if type(extra) ~= "table" then error("oauth.providers must be a table", 0) end
local names = {}
for name in pairs(extra) do names[#names + 1] = name end
table.sort(names)
for _, name in ipairs(names) do
  local p = extra[name]
  if type(p) ~= "table" then error(string.format("oauth.providers.%s must be a table", name), 0) end
  add(name, p.kind or "oidc", p)
end

function M.get(name) return M.providers[name] end

return M
