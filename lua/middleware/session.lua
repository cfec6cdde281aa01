-- middleware.session: like middleware.auth, but a request without a valid
-- session goes on with req.user == nil (for routes such as /auth/status).
local current = require("auth.current")

return function(req, next)
  local s, err = current.load(req)
  if s == nil then return current.unavailable(err) end
  return current.finish(req, next(req))
end
