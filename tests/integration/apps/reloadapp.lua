-- reloadapp: the app of test_reload.py. Its routes live in reload_routes.lua,
-- which the test writes (v1, v2, broken...) in its tempdir copy before SIGHUP.
local app = require("devex.app").new()
require("routes.health")(app)
require("reload_routes")(app)
return app
