-- runner.settings: what the agent reads from its environment, checked once
-- at start (a malformed value stops the agent, named).
--
--   DEVEXD_RUNNER_DIR        the workspace (set by `devexd runner --dir`)
--   DEVEXD_RUNNER_PORT       the agent's own port (--port): /user-app/ never proxies to it
--   REPL_ID, RUNNER_TOKEN, CALLBACK_URL   the runner contract (README "The runner contract");
--                            without CALLBACK_URL and RUNNER_TOKEN: no heartbeats, no self-stop
--   APP_PORT                 the user's program's port for /user-app/ (default 5000, the IDE page's)
--   RUNNER_SHELL             the terminals' program (default /bin/bash, else /bin/sh)
--   RUNNER_MAX_TERMINALS     terminals open at once in the workspace (default 8)
--   RUNNER_IDLE_LIMIT        seconds with no client and no busy terminal before the agent
--                            asks devexd to stop it (default 1800, cleanup.idle_limit's default)
--   RUNNER_HEARTBEAT_INTERVAL seconds between heartbeats while in use (default 30)
--   RUNNER_MAX_FILE          largest file read or written through the protocol (default 8 MiB)
--   CHECKPOINT_INTERVAL      seconds between checkpoints to devexd (policy.sync.checkpoint_interval,
--                            default 30; 0: only the final one devexd asks for at stop)
--   CHECKPOINT_CONCURRENCY   transfers at once in a checkpoint or the restore (default 8)
--   RESTORE                  0: do not restore the workspace at start (someone else did; default 1)
--   STORAGE_VIA_DEVEXD       1: transfers through devexd's own routes, not presigned URLs (a
--                            sandboxed single-host agent reaches only devexd)
local M = {}

local function number(name, default, min, max)
  local v = os.getenv(name)
  if v == nil or v == "" then return default end
  local n = tonumber(v)
  if not n or n ~= n or n < min or n > max then
    error(string.format("%s: must be a number from %s to %s, got '%s'", name, min, max, v), 0)
  end
  return n
end

local function executable(p)
  local f = io.open(p, "r")
  if f then f:close() return true end
  return false
end

local current
function M.get()
  if current then return current end
  local dir = os.getenv("DEVEXD_RUNNER_DIR")
  if not dir or dir == "" then error("DEVEXD_RUNNER_DIR is not set: start the agent with devexd runner --dir DIR", 0) end
  local callback = os.getenv("CALLBACK_URL")
  if callback == "" then callback = nil end
  if callback and not callback:match("^https?://[^/]") then
    error("CALLBACK_URL: must be an http:// or https:// URL, got '" .. callback .. "'", 0)
  end
  local token = os.getenv("RUNNER_TOKEN")
  if token == "" then token = nil end
  local shell = os.getenv("RUNNER_SHELL")
  if not shell or shell == "" then shell = executable("/bin/bash") and "/bin/bash" or "/bin/sh" end
  current = {
    dir = dir,
    port = math.tointeger(number("DEVEXD_RUNNER_PORT", 8081, 1, 65535)),
    repl_id = os.getenv("REPL_ID"),
    token = token,
    callback_url = callback and (callback:gsub("/+$", "")) or nil,
    app_port = math.tointeger(number("APP_PORT", 5000, 1, 65535)),
    shell = shell,
    max_terminals = math.tointeger(number("RUNNER_MAX_TERMINALS", 8, 0, 1000)),
    idle_limit = number("RUNNER_IDLE_LIMIT", 1800, 0.1, 365 * 86400),
    heartbeat_interval = number("RUNNER_HEARTBEAT_INTERVAL", 30, 0.05, 86400),
    max_file = math.tointeger(number("RUNNER_MAX_FILE", 8 * 1024 * 1024, 1, 1 << 30)),
    checkpoint_interval = number("CHECKPOINT_INTERVAL", 30, 0, 86400),
    checkpoint_concurrency = math.tointeger(number("CHECKPOINT_CONCURRENCY", 8, 1, 64)),
    restore = number("RESTORE", 1, 0, 1) == 1,
    via_devexd = number("STORAGE_VIA_DEVEXD", 0, 0, 1) == 1,
  }
  return current
end

return M
