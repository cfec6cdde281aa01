-- routes.dev_ide: the development IDE page (GET /ide?repl=<replId>), a small
-- working IDE over the runner protocol (README "Runner protocol"): file tree,
-- editor, terminal and the user's app, for a single-host setup without the
-- separate frontend. Like the dashboard it exists only with the development
-- sign-in (dev_login = { enabled = true }); the page itself holds nothing
-- secret: it reaches the REPL through the gateway (/repl/<id>/...), which
-- lets only the owner's session cookie through.
local dev_login = require("routes.dev_login")

local M = {}

function M.register(app)
  if not dev_login.enabled() then return end
  -- read once at start, as the dashboard is (a reload of devexd picks up edits)
  local path = package.searchpath("routes.dev_ide", package.path):gsub("dev_ide%.lua$", "dev_ide.html")
  local f = assert(io.open(path, "r"))
  local page = f:read("a")
  f:close()
  local html = { ["Content-Type"] = "text/html; charset=utf-8", ["Cache-Control"] = "no-store" }
  -- the REPL id is read by the page from its query and checked by the API it calls
  app:get("/ide", function() return 200, page, html end)
end

return M
