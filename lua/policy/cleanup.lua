-- policy.cleanup: when sessions end on their own and how often the sweep runs.
--   idle_limit      seconds without traffic through the runner gateway (HTTP or bytes
--                   inside a WebSocket) or a runner heartbeat before a session is stopped
--   activity_interval  seconds between writes of a session's gateway traffic to Redis
--                   (at most one per session per interval, however many requests or frames)
--   max_lifetime    seconds a session may run at most, busy or not
--   sweep_interval  seconds between sweeps (one devexd replica sweeps at a time)
--   stuck_after     seconds a REPL may stay "starting" or "stopping" before the sweep retries it
--   orphan_grace    seconds a labelled workload without a session is left alone before removal
return {
  idle_limit = 30 * 60,
  activity_interval = 30,
  max_lifetime = 8 * 3600,
  sweep_interval = 30,
  stuck_after = 5 * 60,
  orphan_grace = 5 * 60,
}
