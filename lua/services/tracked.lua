-- services.tracked: this worker's caches of Redis reads (the sessions of
-- auth.session, the REPL lists of repl.service), kept right by Redis itself:
-- devex.redis_track has Redis report every write, delete, expiry and
-- eviction of a key under the tracked prefixes, from any client of any
-- replica, and every flush. A cache is used only while that stream is
-- confirmed and alive; when it is not (Redis down, restarted, a hang, a
-- flush, missed messages) everything is dropped and reads go to Redis as if
-- there were no cache.
--
--   local c = tracked.cache("sessions")          -- per worker, per VM
--   local v = tracked.get(c, k, now)             -- nil on a miss
--   local tok = tracked.begin()                  -- BEFORE reading Redis
--   ... read Redis ...
--   tracked.put(tok, c, k, v, { redis keys v was read from }, valid_until)
--
-- put() keeps nothing when one of those keys was invalidated after begin()
-- (the read may predate the write). Bounds: redis.cache.entries entries per
-- cache (default 10000; a full cache is emptied, not grown) and
-- redis.cache.max_age seconds per entry (default 60, a backstop only: the
-- invalidations are what keeps entries right). redis.cache = false turns the
-- caches off.
local track = require("devex.redis_track")
local redis = require("services.redis")
local log = require("devex.log")
local config = require("devex.config").get()

local M = {}

-- the URL services.redis connects to (its default when the config has none)
local URL = redis.url or (config.redis or {}).url or "redis://127.0.0.1:6379/0"

local conf = (config.redis or {}).cache
M.enabled = conf ~= false and not (type(conf) == "table" and conf.enabled == false)
conf = type(conf) == "table" and conf or {}
M.max_entries = math.tointeger(conf.entries) or 10000
M.max_age = tonumber(conf.max_age) or 60

-- the key prefixes of what the caches hold (Redis refuses overlapping ones)
M.PREFIXES = { redis.key("session", ""), redis.key("userRepls", ""), redis.key("replMeta", ""),
               redis.key("activeSession", "") }

local handle, open_failed
local epoch, seq -- what this VM applied from the stream; epoch nil: nothing cached
local caches = {}
local deps = {} -- redis key -> { [entry] = true }

function M.cache(name)
  local c = caches[name]
  if not c then
    c = { name = name, entries = {}, n = 0 }
    caches[name] = c
  end
  return c
end

local function clear_all()
  for _, c in pairs(caches) do
    c.entries, c.n = {}, 0
  end
  deps = {}
end

local function drop(e)
  local c = e.cache
  if c.entries[e.k] == e then
    c.entries[e.k] = nil
    c.n = c.n - 1
  end
  for _, d in ipairs(e.deps) do
    local set = deps[d]
    if set then
      set[e] = nil
      if next(set) == nil then deps[d] = nil end
    end
  end
end

-- drops every entry read from `key`
function M.invalidate(key)
  local set = deps[key]
  if not set then return end
  for e in pairs(set) do drop(e) end
  deps[key] = nil
end

-- Applies what the stream reported since the last look; false when no
-- cache may be used now.
local function sync()
  if not handle then
    if not M.enabled or open_failed then return false end
    local err
    handle, err = track.open(URL, M.PREFIXES)
    if not handle then
      -- outside a worker thread (a CLI task) try again later; else (rediss://,
      -- a malformed URL) this VM never caches
      if not tostring(err):find("worker thread", 1, true) then
        open_failed = true
        log.warn("redis caches off", { error = tostring(err) })
      end
      return false
    end
  end
  local ready, ep, sq, keys = handle:poll(seq)
  if not ready then
    if epoch then clear_all() end
    epoch = nil
    return false
  end
  if ep ~= epoch then
    clear_all()
    epoch, seq = ep, sq
  elseif sq ~= seq then
    if keys then
      for i = 1, #keys do M.invalidate(keys[i]) end
    else
      clear_all()
    end
    seq = sq
  end
  return true
end

-- get(c, k, now) -> the value, or nil (miss, expired, or no cache now)
function M.get(c, k, now)
  if not sync() then return nil end
  local e = c.entries[k]
  if not e then return nil end
  if e.deadline <= now then
    drop(e)
    return nil
  end
  return e.v
end

-- begin() -> a token for put(), taken before the read; nil when no cache now
function M.begin()
  if not sync() then return nil end
  return { epoch = epoch, seq = seq }
end

-- put(tok, c, k, v, keys, valid_until): keeps v unless something it was
-- read from changed after begin() (or the stream restarted).
function M.put(tok, c, k, v, keys, valid_until)
  if not tok or not sync() or epoch ~= tok.epoch then return end
  if seq ~= tok.seq then
    local _, ep, _, since = handle:poll(tok.seq)
    if ep ~= epoch or not since then return end
    local changed = {}
    for i = 1, #since do changed[since[i]] = true end
    for i = 1, #keys do
      if changed[keys[i]] then return end
    end
  end
  local old = c.entries[k]
  if old then drop(old) end
  if c.n >= M.max_entries then clear_all() end
  local now = os.time()
  if valid_until > now + M.max_age then valid_until = now + M.max_age end
  local e = { cache = c, k = k, v = v, deadline = valid_until, deps = keys }
  c.entries[k] = e
  c.n = c.n + 1
  for i = 1, #keys do
    local d = keys[i]
    local set = deps[d]
    if not set then
      set = {}
      deps[d] = set
    end
    set[e] = true
  end
end

-- for tests and /metrics-style checks: entries per cache, stream state
function M.stats()
  local out = { enabled = M.enabled, ready = false }
  if handle then out.stream = handle:status() end
  out.ready = epoch ~= nil
  for name, c in pairs(caches) do out[name] = c.n end
  return out
end

return M
