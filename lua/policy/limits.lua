-- policy.limits: request rate limits (middleware.ratelimit). Each rule is
-- { limit = N, window = S }: at most N requests per S seconds, counted in
-- Redis (so across every worker and replica) in fixed windows; past it the
-- answer is 429 {"error":"too many requests"} with Retry-After (the seconds
-- until the window ends). A rule set to false is off.
--   signin   GET /auth/<provider>/login, per client address: each one writes a
--            login attempt to Redis for session.state_ttl (10 minutes)
--   magiclink          POST /auth/magiclink/login, per client address (each one sends a mail)
--   magiclink_address  the same, per e-mail address (the Go service's 3 a minute); both
--                      answer the Go service's 429 {"error":"Too many requests. Please try again later."}
--   ping     GET /ping, per client address (its answer is cached a few seconds)
--   create   POST /api/repl/new, per user (owner key)
--   start    GET /api/repl/session/<id>, per user
--   stop     DELETE /api/repl/session/<id>, per user
-- A rule's fail_open says what happens when Redis cannot count: true lets the
-- request through (sign-in and /ping: each needs or reports Redis itself, and
-- an outage must not turn into a lock-out or hide what /ping reports); false
-- answers 503 with Retry-After (create, start, stop: they start work outside
-- Redis, in storage and the cluster, and cannot proceed without Redis anyway).
-- Client addresses: the peer's address, or behind a proxy listed in
-- server.trusted_proxies the address that proxy forwarded (README
-- "Configuration"); IPv6 clients are counted per /64, what one host gets.
return {
  signin = { limit = 30, window = 60, fail_open = true },
  magiclink = { limit = 10, window = 60, fail_open = true },
  magiclink_address = { limit = 3, window = 60, fail_open = true },
  ping = { limit = 300, window = 60, fail_open = true },
  create = { limit = 20, window = 60, fail_open = false },
  start = { limit = 30, window = 60, fail_open = false },
  stop = { limit = 30, window = 60, fail_open = false },
}
