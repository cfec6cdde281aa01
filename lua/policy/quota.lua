-- policy.quota: how many REPLs and sessions a user may have.
--   repls_per_user     REPLs a user may own (the original service allowed 2)
--   sessions_per_user  REPLs of one user running at the same time
--   per_template       optional { [template] = max REPLs of that template per user }
--   limit_for          optional function(user, template) -> repls limit, for
--                      per-user decisions (a paid plan, an admin...); it wins
--                      over repls_per_user when it returns a number
return {
  repls_per_user = 2,
  sessions_per_user = 2,
  per_template = {},
  limit_for = nil,
}
