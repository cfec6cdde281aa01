-- policy.cleanup: when sessions end on their own and how often the sweep runs.
--   idle_limit      seconds without traffic through the runner gateway (HTTP or bytes
--                   inside a WebSocket) or a runner heartbeat before a session is stopped
--   activity_interval  seconds between writes of a session's gateway traffic to Redis
--                   (at most one per session per interval, however many requests or frames)
--   max_lifetime    seconds a session may run at most, busy or not
--   sweep_interval  seconds between sweeps (one devexd replica sweeps at a time)
--   stuck_after     seconds a REPL may stay "starting" or "stopping" before the sweep retries it
--   orphan_grace    seconds a labelled workload without a session is left alone before removal
--   counts_as_activity(signal) -> boolean: whether a signal postpones an idle stop.
--                   signal.repl is the REPL id, signal.kind one of
--                     "http"       a request through the runner gateway (method, path without
--                                  the /repl/<id> prefix or query, websocket = true for a handshake)
--                     "websocket"  bytes moved inside a proxied WebSocket since the last flush
--                     "heartbeat"  the runner's POST /api/runner/<id>/heartbeat
--                     "keepalive"  the owner's POST /api/repl/<id>/keepalive
--                   A signal that does not count is not recorded at all. Called for every
--                   proxied request, so keep it cheap; an error counts the signal (and is logged).
return {
  counts_as_activity = function(signal) -- luacheck: ignore signal
    return true
  end,
  idle_limit = 30 * 60,
  activity_interval = 30,
  max_lifetime = 8 * 3600,
  sweep_interval = 30,
  stuck_after = 5 * 60,
  orphan_grace = 5 * 60,
}
