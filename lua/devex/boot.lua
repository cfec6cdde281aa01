-- devex.boot: what a new VM runs: load the config, then the app module, and
-- hand the C core the app's request dispatcher.
local M = {}

function M.start(app_module)
  require("devex.config").get()
  local app = require(app_module)
  if type(app) ~= "table" or type(app.dispatcher) ~= "function" then
    error(string.format("module '%s' must return an app made with devex.app.new()", app_module), 0)
  end
  return app:dispatcher()
end

return M
