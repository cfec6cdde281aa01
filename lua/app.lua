-- app: the devexd application: global middleware and every route.
local framework = require("devex.app")

local app = framework.new()

require("routes.health")(app)

return app
