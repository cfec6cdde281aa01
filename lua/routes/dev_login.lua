-- routes.dev_login: development sign-in, a user by name without OAuth, for a
-- laptop or a single-host install without GitHub. It exists only when the
-- config says dev_login = { enabled = true }, and devexd refuses to start
-- with it enabled when public_url is https or environment is production (a
-- passwordless sign-in must never face the internet).
--   GET  /auth/dev/login            a small form
--   POST /auth/dev/login            user=<name> (form or JSON): session cookie, 302 to FRONTEND_URL/dashboard
-- The user's owner key is dev_<lowercased name> (auth.providers.common).
local config = require("devex.config").get()
local session = require("auth.session")
local cookies = require("auth.cookies")
local settings = require("auth.settings")
local log = require("devex.log")
local app_mod = require("devex.app")
local providers = require("auth.providers.common")

local M = {}

function M.enabled()
  local d = config.dev_login
  return type(d) == "table" and d.enabled == true
end

local function check_safe()
  if config.environment == "production" then
    error("dev_login is enabled but environment is production: refusing to start", 0)
  end
  if type(config.public_url) == "string" and config.public_url:match("^https://") then
    error("dev_login is enabled but public_url is https: refusing to start", 0)
  end
end

local FORM = [[<!doctype html>
<html><head><meta charset="utf-8"><title>devexd: development sign-in</title></head>
<body><h1>Development sign-in</h1>
<p>No password: this exists only in a development setup.</p>
<form method="post" action="/auth/dev/login">
<label>User name <input name="user" pattern="[A-Za-z0-9][A-Za-z0-9\-]{0,38}" required autofocus></label>
<button type="submit">Sign in</button></form></body></html>
]]

local function name_of(req)
  local ctype = (req.headers["content-type"] or ""):lower()
  local user
  if ctype:find("application/json", 1, true) then
    local v = req:json()
    user = type(v) == "table" and v.user
  else
    user = app_mod.parse_query(req.body or "").user
  end
  if type(user) ~= "string" or not user:match("^[A-Za-z0-9][A-Za-z0-9%-]*$") or #user > 39 then
    return nil
  end
  return user
end

function M.register(app)
  if not M.enabled() then return end
  check_safe()
  log.warn("development sign-in is enabled: anyone who reaches devexd can sign in as anyone")
  app:get("/auth/dev/login", function()
    return 200, FORM, { ["Content-Type"] = "text/html; charset=utf-8", ["Cache-Control"] = "no-store" }
  end)
  -- a minimal dashboard over the REST API, for a single-host setup without the frontend
  local path = package.searchpath("routes.dev_login", package.path):gsub("dev_login%.lua$", "dev_dashboard.html")
  local f = assert(io.open(path, "r"))
  local page = f:read("a")
  f:close()
  local html = { ["Content-Type"] = "text/html; charset=utf-8", ["Cache-Control"] = "no-store" }
  app:get("/dashboard", function() return 200, page, html end)
  app:get("/", function() return 302, nil, { Location = "/dashboard" } end)
  app:post("/auth/dev/login", function(req)
    local name = name_of(req)
    if not name then return 400, { error = "user must be 1 to 39 letters, digits or '-'" } end
    local login = name:lower()
    local user = {
      id = login, login = name, name = name, email = login .. "@dev.invalid",
      avatar_url = "", created_at = session.rfc3339(os.time()),
      -- the name is the subject here (no password: anyone may take any name)
      provider = "dev", subject = "dev:" .. login, owner = assert(providers.owner_dev(login)),
    }
    local old = req.cookies[settings.cookie_name]
    if old then session.destroy(old) end
    local id, err = session.create(user, "dev", {})
    if not id then return 503, { error = "session store unavailable: " .. tostring(err) } end
    log.info("signed in", { provider = "dev", user = user.subject })
    return 302, nil, { Location = settings.frontend_redirect(nil), ["Set-Cookie"] = { cookies.session(id) },
                       ["Cache-Control"] = "no-store" }
  end)
end

return M
