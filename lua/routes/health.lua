-- routes.health: liveness, readiness and version. /healthz never touches a
-- dependency: it answers as long as the worker's loop and Lua VM run.
-- /readyz answers 200 once the app is loaded and Redis answers a PING.
local runtime = require("devex.runtime")
local json = require("devex.json")

local OK = json.frozen({ status = "ok" }) -- encoded once: probes hit this often

return function(app)
  app:get("/healthz", function() return 200, OK end)
  app:get("/readyz", function()
    local redis = require("services.redis")
    local r, err = redis.client()
    if r then
      local pong
      pong, err = r:call("PING")
      if pong == "PONG" then return 200, { status = "ready" } end
    end
    -- the detail names internal hosts: it goes to the log, not to anonymous callers
    require("devex.log").warn("readyz: redis not ready", { error = tostring(err) })
    return 503, { status = "not ready", redis = "unavailable" }
  end)
  app:get("/version", function()
    return 200, { name = "devexd", version = runtime.version }
  end)
end
