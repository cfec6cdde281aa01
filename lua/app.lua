-- app: the devexd application: global middleware and every route.
local framework = require("devex.app")

local app = framework.new()
require("routes.metrics")(app) -- GET /metrics (the dispatcher labels every request by route)

-- CORS first, so that every answer (a 401, a 403 from CSRF, a 404) carries
-- the CORS headers an allowed origin needs to read it.
app:use(require("middleware.cors"))
app:use(require("middleware.csrf"))

require("routes.health")(app)
require("routes.auth")(app)
require("routes.dev_login").register(app)
require("routes.dev_ide").register(app) -- GET /ide: the development IDE page (with dev_login only)
require("routes.repl")(app)
require("routes.runner_storage")(app) -- /api/runner/<replId>/files, uploads, sync: the storage broker

-- the background sweep (one replica at a time, through a Redis lock)
require("repl.sweep").start()

return app
