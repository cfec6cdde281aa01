-- services.redis: the app's Redis client, from the config's redis.url, and the
-- key prefix every key of devexd carries (redis.prefix, default "devex:").
-- The connection is per worker thread and made in the background, so this
-- module loads (and devexd starts) whether Redis is up or not.
-- rediss:// is TLS (src/redis_tls.c): redis.ca_file (default: the system's
-- CAs), and redis.cert_file + redis.key_file for a client certificate.
-- redis+sentinel://[user:pass@]host:port,host:port/master[/db] finds the
-- primary through Redis Sentinel and follows a failover (src/redis.c); the
-- TLS files do not apply to it (Sentinel over TLS is not supported).
local redis = require("devex.redis")
local config = require("devex.config").get()

local M = {}

local conf = config.redis or {}
local url = conf.url or "redis://127.0.0.1:6379/0"
M.prefix = conf.prefix or "devex:"
M.timeout = conf.timeout or 5

-- The options of devex.redis.connect for another Redis a command connects
-- to (migrate from-go --source-redis): the TLS files only for a rediss://
-- URL (the C side refuses them with a plain one).
function M.options(u)
  local o = { timeout = M.timeout }
  if type(u) == "string" and u:sub(1, 9) == "rediss://" then
    o.ca_file, o.cert_file, o.key_file = conf.ca_file, conf.cert_file, conf.key_file
  end
  return o
end

local client
-- The client of this worker; nil, err only for a malformed URL.
function M.client()
  if client then return client end
  -- the configured files as they are: with a plain URL devex.redis refuses
  -- them (they would look like TLS and not be)
  local c, err = redis.connect(url, { timeout = M.timeout, ca_file = conf.ca_file, cert_file = conf.cert_file,
    key_file = conf.key_file })
  if not c then return nil, err end
  client = c
  return c
end

-- Connect as soon as the worker runs (in the background), so that a wrong
-- password, CA or host is in the log at start, not at the first request.
-- From a timer, not now: the app is loaded on the main thread for each
-- worker, and devex.redis keeps its connections per thread, so a connection
-- made during the load would be shared by every worker. pcall: outside a
-- worker (commands) there are no timers, and the first use connects. A
-- client that cannot even be made (a malformed URL, TLS files with a plain
-- URL, an unreadable CA file) is logged here too.
pcall(require("devex.timer").at, 0, function()
  local _, err = M.client()
  if err then require("devex.log").error("redis client not usable", { error = tostring(err) }) end
end)

-- M.key("replMeta", id) -> "devex:replMeta:<id>"
function M.key(...)
  return M.prefix .. table.concat({ ... }, ":")
end

return M
