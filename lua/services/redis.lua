-- services.redis: the app's Redis client, from the config's redis.url, and the
-- key prefix every key of devexd carries (redis.prefix, default "devex:").
-- The connection is per worker thread and made in the background, so this
-- module loads (and devexd starts) whether Redis is up or not.
local redis = require("devex.redis")
local config = require("devex.config").get()

local M = {}

local conf = config.redis or {}
local url = conf.url or "redis://127.0.0.1:6379/0"
M.prefix = conf.prefix or "devex:"
M.timeout = conf.timeout or 5

local client
-- The client of this worker; nil, err only for a malformed URL.
function M.client()
  if client then return client end
  local c, err = redis.connect(url, { timeout = M.timeout })
  if not c then return nil, err end
  client = c
  return c
end

-- M.key("replMeta", id) -> "devex:replMeta:<id>"
function M.key(...)
  return M.prefix .. table.concat({ ... }, ":")
end

return M
