-- repl.store: the REPL data model in Redis (key names from the original
-- service, behind the configured prefix):
--   replMeta:{id}       hash: id, name, user, template, state, created_at, last_active, prefix
--   userRepls:{user}    set of the REPL ids a user owns
--   activeSession:{id}  hash: the live session (started_at, endpoint, token_hash, ...)
--   sessions:activity   sorted set: replId scored by last activity
-- Indexes, so that the sweep reads only what is due (repl.sweep), kept in
-- the same scripts that change what they index (no crash point between the
-- two), and repaired by the sweep when it meets an entry that is wrong:
--   replIdx:transit     sorted set: REPLs in starting/stopping/creating/deleting, by state_since
--                       (not a stop flagged save_failed: the operator's, not the sweep's)
--   replIdx:running     sorted set: running REPLs, by state_since
--   replIdx:saveFailed  set: "stopping" REPLs flagged save_failed
--   sessions:started    sorted set: sessions by started_at
--   replIdx:version     set once the indexes were built from a SCAN (the
--                       sweep does it when the key is absent: an upgrade)
-- Changes that must hold together (quota check plus reservation, state
-- transitions) are Lua scripts run atomically in Redis.
local redis = require("services.redis")
local json = require("devex.json")

local M = {}

local function key(...) return redis.key(...) end
M.meta_key = function(id) return key("replMeta", id) end
M.user_key = function(user) return key("userRepls", user) end
M.session_key = function(id) return key("activeSession", id) end
M.activity_key = function() return key("sessions:activity") end
M.transit_key = function() return key("replIdx:transit") end
M.running_key = function() return key("replIdx:running") end
M.save_failed_key = function() return key("replIdx:saveFailed") end
M.started_key = function() return key("sessions:started") end
M.index_version_key = function() return key("replIdx:version") end
M.INDEX_VERSION = "1"
M.TRANSIT_STATES = { starting = true, stopping = true, creating = true, deleting = true }

-- The indexes of one REPL from its record, for the scripts that change the
-- record: reindex(replMeta key, id, transit, running, saveFailed keys). A
-- REPL that is gone leaves every index. Prepended to those scripts.
M.REINDEX_LUA = [[
local function reindex(mk, id, tk, rk, fk)
  local v = redis.call('HMGET', mk, 'state', 'state_since', 'save_failed', 'last_active')
  local st = v[1]
  local since = tonumber(v[2]) or tonumber(v[4]) or 0
  local flagged = st == 'stopping' and v[3] == '1'
  if (st == 'starting' or st == 'stopping' or st == 'creating' or st == 'deleting') and not flagged then
    redis.call('ZADD', tk, since, id)
  else
    redis.call('ZREM', tk, id)
  end
  if st == 'running' then redis.call('ZADD', rk, since, id) else redis.call('ZREM', rk, id) end
  if flagged then redis.call('SADD', fk, id) else redis.call('SREM', fk, id) end
end
]]
-- the index keys every such script takes after its own KEYS
function M.index_keys() return M.transit_key(), M.running_key(), M.save_failed_key() end

local function client()
  local r, err = redis.client()
  if not r then return nil, err end
  return r
end

-- KEYS: userRepls, replMeta. ARGV: limit, id, template, per-template limit
-- (-1: none), the replMeta key prefix, then field/value pairs. Both limits
-- are checked and the REPL recorded in one script, so concurrent creates on
-- any worker or replica cannot pass a limit together. The per-template count
-- is read from the user's REPL records (not kept apart), so whatever removes
-- a REPL (rollback, delete, the sweep) releases its slot with it.
-- Returns 1 when reserved, 0 at the REPL limit, 2 at the per-template limit.
-- KEYS[3..5]: the indexes (M.index_keys).
local RESERVE = M.REINDEX_LUA .. [[
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
local per = tonumber(ARGV[4])
if per >= 0 then
  local n = 0
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    if redis.call('HGET', ARGV[5] .. id, 'template') == ARGV[3] then n = n + 1 end
  end
  if n >= per then return 2 end
end
redis.call('SADD', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], unpack(ARGV, 6))
reindex(KEYS[2], ARGV[2], KEYS[3], KEYS[4], KEYS[5])
return 1
]]

-- reserve(user, limit, fields, per_template) -> true | false, "repls" or
-- "template" (the limit reached) | nil, err. per_template: the most REPLs of
-- fields.template the user may have (nil: no such limit).
function M.reserve(user, limit, fields, per_template)
  local r, err = client()
  if not r then return nil, err end
  local args = { limit, fields.id, fields.template or "", per_template or -1, key("replMeta", "") }
  for k, v in pairs(fields) do
    args[#args + 1] = k
    args[#args + 1] = tostring(v)
  end
  local res
  res, err = r:eval(RESERVE, { M.user_key(user), M.meta_key(fields.id), M.index_keys() }, table.unpack(args))
  if res == nil then return nil, err end
  if res == 1 then return true end
  return false, res == 2 and "template" or "repls"
end

-- Removes a REPL's keys, its quota slot and its index entries (rollback and
-- delete), in one script. KEYS: userRepls, replMeta, activeSession,
-- sessions:activity, sessions:started, then M.index_keys. ARGV: id.
local REMOVE = [[
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3])
for i = 4, 7 do redis.call('ZREM', KEYS[i], ARGV[1]) end
redis.call('SREM', KEYS[8], ARGV[1])
return 1
]]
function M.remove(user, id)
  local r, err = client()
  if not r then return nil, err end
  local res
  res, err = r:eval(REMOVE, { M.user_key(user), M.meta_key(id), M.session_key(id), M.activity_key(),
    M.started_key(), M.index_keys() }, id)
  if not res then return nil, err end
  return true
end

-- One stop at a time per REPL: stopLock:{id} holds the token of the stop in
-- progress, on whichever worker or replica, and expires after ttl seconds if
-- its holder dies. lock_stop(id, ttl) -> token | false (held) | nil, err
function M.lock_stop(id, ttl)
  local r, err = client()
  if not r then return nil, err end
  local token = require("devex.crypto").b64url(require("devex.crypto").random_bytes(12))
  local res
  res, err = r:call("SET", key("stopLock", id), token, "NX", "EX", math.max(1, math.floor(ttl)))
  if res == nil then return nil, err end
  if res == json.null or res == false then return false end
  return token
end

local UNLOCK_STOP = [[
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
]]
local RENEW_STOP = [[
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 0
]]
-- renew_stop(id, token, ttl) -> 1 | 0 (no longer this stop's) | nil, err:
-- another ttl seconds for a stop that is still at work.
function M.renew_stop(id, token, ttl)
  local r, err = client()
  if not r then return nil, err end
  return r:eval(RENEW_STOP, { key("stopLock", id) }, token, tostring(math.max(1, math.floor(ttl))))
end

-- unlock_stop(id, token): releases the lock if it is still this stop's.
function M.unlock_stop(id, token)
  local r, err = client()
  if not r then return nil, err end
  return r:eval(UNLOCK_STOP, { key("stopLock", id) }, token)
end

-- KEYS: replMeta, then M.index_keys. ARGV: new state, now, id, allowed
-- from-states... Returns the previous state, or false when the REPL is gone
-- or in a state the transition does not start from.
local TRANSITION = M.REINDEX_LUA .. [[
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return false end
for i = 4, #ARGV do
  if ARGV[i] == cur then
    redis.call('HSET', KEYS[1], 'state', ARGV[1], 'state_since', ARGV[2])
    reindex(KEYS[1], ARGV[3], KEYS[2], KEYS[3], KEYS[4])
    return cur
  end
end
return false
]]

-- transition(id, to, {from...}) -> previous state | false | nil, err
function M.transition(id, to, from)
  local r, err = client()
  if not r then return nil, err end
  local res
  res, err = r:eval(TRANSITION, { M.meta_key(id), M.index_keys() }, to, os.time(), id, table.unpack(from))
  if res == nil then return nil, err end
  if res == json.null or res == false then return false end
  return res
end

-- KEYS: replMeta, userRepls. ARGV: sessions limit, now, the replMeta and
-- activeSession key prefixes, the REPL's id, then the states a start may
-- begin from. A REPL holds one of its user's sessions while "starting",
-- "running" or "stopping" (a workload exists or is being made or saved), or
-- while an activeSession key exists. The sessions_per_user check and the transition to "starting"
-- in one script: two starts of one user's REPLs on any worker or replica
-- cannot both pass the limit, and one REPL cannot be started twice. The
-- count is read from the user's REPL records, so every way out of those
-- states (a failed start, stop, delete, the sweep's repairs) releases the
-- slot; there is no counter to drift.
-- Returns { 1, previous state }, { 0, current state or false } when the REPL
-- is gone or not in a from-state, { -1, sessions in use } at the limit.
-- KEYS[3..5]: the indexes (M.index_keys).
local RESERVE_SESSION = M.REINDEX_LUA .. [[
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return { 0, false } end
local ok = false
for i = 6, #ARGV do if ARGV[i] == cur then ok = true end end
if not ok then return { 0, cur } end
local n = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if id ~= ARGV[5] then
    local st = redis.call('HGET', ARGV[3] .. id, 'state')
    if st == 'starting' or st == 'running' or st == 'stopping'
        or redis.call('EXISTS', ARGV[4] .. id) == 1 then n = n + 1 end
  end
end
if n >= tonumber(ARGV[1]) then return { -1, n } end
redis.call('HSET', KEYS[1], 'state', 'starting', 'state_since', ARGV[2])
reindex(KEYS[1], ARGV[5], KEYS[3], KEYS[4], KEYS[5])
return { 1, cur }
]]

-- reserve_session(meta, limit, from) -> previous state | false, current
-- state (nil: gone) | false, "limit", in_use | nil, err
function M.reserve_session(meta, limit, from)
  local r, err = client()
  if not r then return nil, err end
  local res
  res, err = r:eval(RESERVE_SESSION, { M.meta_key(meta.id), M.user_key(meta.user), M.index_keys() },
    limit, os.time(), key("replMeta", ""), key("activeSession", ""), meta.id, table.unpack(from))
  if res == nil then return nil, err end
  if type(res) ~= "table" then return nil, "unexpected reply from the session reservation" end
  if res[1] == 1 then return res[2] end
  if res[1] == -1 then return false, "limit", res[2] end
  return false, type(res[2]) == "string" and res[2] or nil
end

local function hash_to_table(flat)
  if type(flat) ~= "table" then return nil end
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end

-- get(id) -> meta table | false (no such REPL) | nil, err
function M.get(id)
  local r, err = client()
  if not r then return nil, err end
  local flat
  flat, err = r:call("HGETALL", M.meta_key(id))
  if flat == nil then return nil, err end
  local t = hash_to_table(flat)
  if not t or not t.id then return false end
  return t
end

-- The user's REPLs with their session flag, in one round trip (a script).
local LIST = [[
local ids = redis.call('SMEMBERS', KEYS[1])
local out = {}
for _, id in ipairs(ids) do
  out[#out + 1] = redis.call('HGETALL', ARGV[1] .. id)
  out[#out + 1] = redis.call('EXISTS', ARGV[2] .. id)
end
return out
]]

-- The same read, run in the session's script (auth.session touch_with),
-- with only the fields GET /api/repl shows and sorts by (HMGET, not
-- HGETALL: a smaller reply to read into Lua; a field added to
-- repl.service's view must be added to LIST_FIELDS): the user's owner
-- comes from the session's user; A: the userRepls, replMeta and
-- activeSession key prefixes, then the field names. Returns
-- { owner, { fields of REPL 1, EXISTS of its session, ... } }.
M.LIST_FIELDS = { "id", "name", "user", "login", "template", "created_at", "lastSavedAt", "save_failed", "save_error" }
M.LIST_WITH_SESSION = [[
local owner = user.owner
if type(owner) ~= 'string' or owner == '' then return false end
local ids = redis.call('SMEMBERS', A[1] .. owner)
local fields = { unpack(A, 4) }
local out = {}
for _, id in ipairs(ids) do
  out[#out + 1] = redis.call('HMGET', A[2] .. id, unpack(fields))
  out[#out + 1] = redis.call('EXISTS', A[3] .. id)
end
return { owner, out }
]]
function M.list_with_session_args()
  local args = { key("userRepls", ""), key("replMeta", ""), key("activeSession", "") }
  for _, f in ipairs(M.LIST_FIELDS) do args[#args + 1] = f end
  return args
end

local function by_created(a, b) return (a.created_at or "") < (b.created_at or "") end

local function to_list(res)
  local out = {}
  for i = 1, #res, 2 do
    local t = hash_to_table(res[i])
    if t and t.id then
      t.active = res[i + 1] == 1
      out[#out + 1] = t
    end
  end
  table.sort(out, by_created)
  return out
end

-- list_of(also, owner) -> the list (LIST_FIELDS and .active) from
-- LIST_WITH_SESSION's reply when it read owner's REPLs; nil otherwise (read
-- it with list(owner)).
function M.list_of(also, owner)
  if type(also) ~= "table" or also[1] ~= owner or type(also[2]) ~= "table" then return nil end
  local res, fields, n = also[2], M.LIST_FIELDS, #M.LIST_FIELDS
  local out = {}
  for i = 1, #res, 2 do
    local v = res[i]
    if type(v) == "table" and type(v[1]) == "string" then
      local t = { active = res[i + 1] == 1 }
      for j = 1, n do
        local x = v[j]
        if type(x) == "string" then t[fields[j]] = x end
      end
      out[#out + 1] = t
    end
  end
  table.sort(out, by_created)
  return out
end

-- list(user) -> { meta..., with .active } | nil, err
function M.list(user)
  local r, err = client()
  if not r then return nil, err end
  local res
  res, err = r:eval(LIST, { M.user_key(user) }, key("replMeta", ""), key("activeSession", ""))
  if res == nil then return nil, err end
  return to_list(res)
end

function M.set_fields(id, fields)
  local r, err = client()
  if not r then return nil, err end
  local args = { "HSET", M.meta_key(id) }
  for k, v in pairs(fields) do
    args[#args + 1] = k
    args[#args + 1] = tostring(v)
  end
  return r:call(table.unpack(args))
end

-- mark_saved(id, now): lastSavedAt = now (epoch seconds) in replMeta, the
-- time of the last save the storage broker confirmed (routes.runner_storage);
-- nothing when the REPL is gone. -> true | false (no such REPL) | nil, err
local MARK_SAVED = [[
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'lastSavedAt', ARGV[1])
return 1
]]
function M.mark_saved(id, now)
  local r, err = client()
  if not r then return nil, err end
  local res
  res, err = r:eval(MARK_SAVED, { M.meta_key(id) }, tostring(now or os.time()))
  if res == nil then return nil, err end
  return res == 1
end

-- Index repair and build --------------------------------------------------

-- KEYS: sessions:started, then M.index_keys. ARGV: the replMeta and
-- activeSession key prefixes, then ids. Sets each id's index entries from
-- its record (and its session's started_at): what the sweep calls for an
-- entry it found wrong, and the upgrade's build calls for every REPL.
local REINDEX_MANY = M.REINDEX_LUA .. [[
for i = 3, #ARGV do
  local id = ARGV[i]
  reindex(ARGV[1] .. id, id, KEYS[2], KEYS[3], KEYS[4])
  local sa = tonumber(redis.call('HGET', ARGV[2] .. id, 'started_at'))
  if sa and redis.call('EXISTS', ARGV[1] .. id) == 1 then
    redis.call('ZADD', KEYS[1], sa, id)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return #ARGV - 2
]]

-- reindex(ids) -> count | nil, err
function M.reindex(ids)
  if #ids == 0 then return 0 end
  local r, err = client()
  if not r then return nil, err end
  return r:eval(REINDEX_MANY, { M.started_key(), M.index_keys() }, key("replMeta", ""), key("activeSession", ""),
    table.unpack(ids))
end

-- KEYS: M.index_keys. ARGV: the replMeta key prefix. The REPLs flagged
-- save_failed (the gauge), each checked against its record on the way.
local COUNT_FLAGGED = M.REINDEX_LUA .. [[
for _, id in ipairs(redis.call('SMEMBERS', KEYS[3])) do reindex(ARGV[1] .. id, id, KEYS[1], KEYS[2], KEYS[3]) end
return redis.call('SCARD', KEYS[3])
]]
function M.count_save_failed()
  local r, err = client()
  if not r then return nil, err end
  return r:eval(COUNT_FLAGGED, { M.index_keys() }, key("replMeta", ""))
end

-- build_indexes() -> REPLs indexed | false (already built) | nil, err. For
-- a deployment that has REPLs from before the indexes: SCAN replMeta:* and
-- reindex each batch, then set replIdx:version. The sweep calls it under its
-- lock; a REPL changed meanwhile is indexed by the script that changed it,
-- and reindexing it again from its record is idempotent.
function M.build_indexes()
  local r, err = client()
  if not r then return nil, err end
  local v
  v, err = r:call("GET", M.index_version_key())
  if v == nil then return nil, err end
  if v == M.INDEX_VERSION then return false end
  local cursor, n = "0", 0
  local plen = #key("replMeta", "")
  repeat
    local res
    res, err = r:call("SCAN", cursor, "MATCH", key("replMeta", "*"), "COUNT", 1000)
    if type(res) ~= "table" then return nil, err end
    cursor = res[1]
    local ids = {}
    for _, k in ipairs(res[2]) do ids[#ids + 1] = k:sub(plen + 1) end
    local done
    done, err = M.reindex(ids)
    if done == nil then return nil, err end
    n = n + #ids
  until cursor == "0"
  v, err = r:call("SET", M.index_version_key(), M.INDEX_VERSION)
  if v == nil then return nil, err end
  return n
end

-- Sessions ----------------------------------------------------------------

function M.get_session(id)
  local r, err = client()
  if not r then return nil, err end
  local flat
  flat, err = r:call("HGETALL", M.session_key(id))
  if flat == nil then return nil, err end
  local t = hash_to_table(flat)
  if not t or not t.started_at then return false end
  return t
end

-- The live session's upstream addresses: endpoint, mcp_endpoint (either
-- may be nil); false when no session runs. One HMGET: the runner gateway
-- calls it per proxied request.
function M.session_endpoints(id)
  local r, err = client()
  if not r then return nil, err end
  local v
  v, err = r:call("HMGET", M.session_key(id), "endpoint", "mcp_endpoint")
  if v == nil then return nil, err end
  local ep = v[1]
  if type(ep) ~= "string" or ep == "" then return false end
  return ep, type(v[2]) == "string" and v[2] ~= "" and v[2] or nil
end

-- Sets fields of a session that still exists (a session ended meanwhile is
-- not brought back as a partial hash): true, false when there is none.
local UPDATE_SESSION = [[
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
]]
function M.update_session(id, fields)
  local r, err = client()
  if not r then return nil, err end
  local args = {}
  for k, v in pairs(fields) do
    args[#args + 1] = k
    args[#args + 1] = tostring(v)
  end
  if #args == 0 then return true end
  local res
  res, err = r:eval(UPDATE_SESSION, { M.session_key(id) }, table.unpack(args))
  if res == nil then return nil, err end
  return res == 1
end

function M.put_session(id, fields)
  local r, err = client()
  if not r then return nil, err end
  local args = { "HSET", M.session_key(id) }
  for k, v in pairs(fields) do
    args[#args + 1] = k
    args[#args + 1] = tostring(v)
  end
  local res
  local cmds = { args, { "ZADD", M.activity_key(), os.time(), id },
                 { "HSET", M.meta_key(id), "last_signal", "start" } }
  -- sessions:started, for the lifetime limit (the sweep heals an entry whose
  -- session is gone)
  local started = tonumber(fields.started_at)
  if started then cmds[#cmds + 1] = { "ZADD", M.started_key(), started, id } end
  res, err = r:pipeline(cmds)
  if not res then return nil, err end
  return true
end

function M.end_session(id)
  local r, err = client()
  if not r then return nil, err end
  local res
  res, err = r:pipeline({ { "DEL", M.session_key(id) }, { "ZREM", M.activity_key(), id },
                           { "ZREM", M.started_key(), id } })
  if not res then return nil, err end
  return true
end

function M.touch(id, now, kind)
  local r, err = client()
  if not r then return nil, err end
  return r:pipeline({
    { "ZADD", M.activity_key(), "XX", now or os.time(), id },
    { "HSET", M.meta_key(id), "last_active", now or os.time(), "last_signal", kind or "activity" },
  })
end

-- Sessions idle since before `before` (oldest first), at most `limit`.
function M.idle_sessions(before, limit)
  local r, err = client()
  if not r then return nil, err end
  return r:call("ZRANGEBYSCORE", M.activity_key(), "-inf", before, "LIMIT", 0, limit or 100)
end

return M
