-- runner.lifecycle: the agent's side of the runner contract. While a client
-- is connected or a terminal is busy it sends heartbeats
-- (POST $CALLBACK_URL/heartbeat); after settings.idle_limit seconds without
-- either it asks devexd to end the session (DELETE $CALLBACK_URL), both with
-- Authorization: Bearer $RUNNER_TOKEN. A refused or failed self-stop is
-- retried at the next check; a client that comes back starts over.
-- With CALLBACK_SOCKET set (a sandboxed agent, which has no network to
-- devexd) the calls go over that Unix socket; CALLBACK_URL still names the path.
local http = require("devex.http")
local timer = require("devex.timer")
local log = require("devex.log")
local settings = require("runner.settings")
local terminals = require("runner.terminals")

local M = {}

local callback_socket = os.getenv("CALLBACK_SOCKET")
if callback_socket == "" then callback_socket = nil end

local clients = 0
local last_active = timer.now()
local last_heartbeat = -math.huge
local stop_asked = false
local stats = { heartbeats = 0, heartbeat_failures = 0, self_stops = 0 }

function M.client_opened() clients = clients + 1; last_active = timer.now(); stop_asked = false end
function M.client_closed() clients = clients - 1; last_active = timer.now() end
function M.touch() last_active = timer.now() end
function M.stats() return stats end

local function call(method, url)
  local s = settings.get()
  return http.request{
    method = method, url = url, timeout = 10, body = method == "POST" and "" or nil,
    headers = { authorization = "Bearer " .. s.token },
    unix_socket = callback_socket,
  }
end

local function heartbeat()
  local s = settings.get()
  local res, err = call("POST", s.callback_url .. "/heartbeat")
  if res and res.status >= 200 and res.status < 300 then
    stats.heartbeats = stats.heartbeats + 1
    return
  end
  stats.heartbeat_failures = stats.heartbeat_failures + 1
  log.warn("heartbeat failed", { status = res and res.status, error = err and tostring(err) })
end

local function self_stop()
  local s = settings.get()
  log.info("idle: asking devexd to end this session", { idle_limit = s.idle_limit, repl = s.repl_id })
  local res, err = call("DELETE", s.callback_url)
  if res and res.status >= 200 and res.status < 300 then
    stop_asked = true
    stats.self_stops = stats.self_stops + 1
    return
  end
  log.warn("self-stop refused or failed, retrying later", { status = res and res.status, error = err and tostring(err) })
end

local function tick()
  local s = settings.get()
  local now = timer.now()
  local busy = clients > 0 or terminals.busy(s.heartbeat_interval)
  if busy then
    last_active = now
    if now - last_heartbeat >= s.heartbeat_interval then
      last_heartbeat = now
      heartbeat()
    end
    return
  end
  if not stop_asked and now - last_active >= s.idle_limit then self_stop() end
end

-- Starts the checks (at app load); without a callback URL and a token the
-- agent runs standalone.
function M.start()
  local s = settings.get()
  if not s.callback_url or not s.token then
    log.info("no CALLBACK_URL or RUNNER_TOKEN: no heartbeats and no self-stop")
    return
  end
  local every = math.min(s.heartbeat_interval, s.idle_limit / 4, 5)
  timer.every(every, tick)
end

return M
