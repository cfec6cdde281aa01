-- middleware.auth: the route needs a signed-in user. Sets req.user (and
-- req.session, the stored session: never send it) or answers
-- 401 {"error":"unauthorized"}; 503 when the session store is down.
--
--   local auth = require("middleware.auth")
--   app:get("/api/repl", auth, function(req) ... req.user.owner ... end)
--
-- req.user: { id, login, name, email, avatar_url, created_at, provider,
--   subject = "<provider>:<provider's stable id>", owner = the owner key made
--   from that subject (gh_<GitHub user id>, oidc_<hash of issuer and sub>,
--   dev_<name>; see auth.providers.common): everything a user owns is keyed
--   on owner; login and name are for display only }.
local current = require("auth.current")

return function(req, next)
  local s, err = current.load(req)
  if s == nil then return current.unavailable(err) end
  if not s then return 401, { error = "unauthorized" } end
  return current.finish(req, next(req))
end
