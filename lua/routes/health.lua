-- routes.health: liveness and version. /healthz never touches a dependency:
-- it answers as long as the worker's loop and Lua VM run.
local runtime = require("devex.runtime")

return function(app)
  app:get("/healthz", function() return 200, { status = "ok" } end)
  app:get("/version", function()
    return 200, { name = "devexd", version = runtime.version }
  end)
end
