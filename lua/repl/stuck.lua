-- repl.stuck: the operator's view of REPLs stuck in a transition and the way
-- out for a stop whose files cannot be saved (issue #17, section 4).
--
--   devexd repl stuck
--       one JSON object per line for every REPL in "creating", "starting",
--       "stopping" or "deleting" (found through repl.store's indexes, not a
--       SCAN of every REPL): id, user, state, seconds in that state and,
--       for stops, save_failures / save_error / save_failed (set by the sweep
--       after policy.sync.max_attempts failed saves; it then stops retrying).
--   devexd repl resolve ID --retry
--       clears the failure count and stops the REPL now (saving first), as
--       the sweep would; exit 0 when it stopped.
--   devexd repl resolve ID --discard --yes
--       ends the session WITHOUT saving: the workload is removed, the REPL
--       becomes "stopped" and keeps the files of its last confirmed save
--       (lastSavedAt). Without --yes it only says what would be lost.
-- Both commands act on one REPL in "stopping"; the sweep repairs the other
-- transitions itself.
local json = require("devex.json")
local redis = require("services.redis")
local store = require("repl.store")

local M = {}

local TRANSITIONS = { creating = true, starting = true, stopping = true, deleting = true }

local function out(t) io.stdout:write(json.encode(t), "\n") end
local function fail(msg) io.stderr:write("devexd: repl: ", msg, "\n"); return 1 end

-- The ids that may be in a transition: from the indexes repl.store keeps
-- (replIdx:transit, and replIdx:saveFailed for the flagged stops the
-- transit index leaves out), a few reads however many REPLs there are; by a
-- SCAN of every replMeta key only while the indexes are not built yet (a
-- deployment from before them, until its sweep builds them).
local function candidates(r)
  local v, err = r:call("GET", store.index_version_key())
  if v == nil then return nil, err end
  if v == store.INDEX_VERSION then
    local res
    res, err = r:pipeline{ { "ZRANGE", store.transit_key(), "0", "-1" }, { "SMEMBERS", store.save_failed_key() } }
    if not res then return nil, err end
    local ids = {}
    for _, list in ipairs(res) do
      -- an error reply is a table too (with a code)
      if type(list) ~= "table" then return nil, tostring(list) end
      if list.code ~= nil then return nil, tostring(list.message or list.code) end
      for _, id in ipairs(list) do ids[#ids + 1] = id end
    end
    return ids
  end
  local ids, cursor = {}, "0"
  local plen = #redis.key("replMeta", "")
  repeat
    local res
    res, err = r:call("SCAN", cursor, "MATCH", redis.key("replMeta", "*"), "COUNT", 500)
    if not res then return nil, err end
    cursor = res[1]
    for _, k in ipairs(res[2]) do ids[#ids + 1] = k:sub(plen + 1) end
  until cursor == "0"
  return ids
end

-- every REPL in a transition: { {id=, user=, state=, since=, save_failures=, ...}, ... }
function M.list(now)
  now = now or os.time()
  local r, err = redis.client()
  if not r then return nil, err end
  local ids
  ids, err = candidates(r)
  if not ids then return nil, err end
  local found, seen = {}, {}
  for _, id in ipairs(ids) do
    local m
    if not seen[id] then
      seen[id] = true
      m, err = store.get(id)
      if m == nil then return nil, err end
    end
    if m and TRANSITIONS[m.state] then -- an index entry may be stale: the record decides
      local since = tonumber(m.state_since or m.last_active or 0) or 0
      found[#found + 1] = {
        id = m.id, user = m.user, state = m.state, seconds = now - since,
        save_failures = tonumber(m.save_failures), save_error = m.save_error,
        save_failed = m.save_failed == "1", lastSavedAt = tonumber(m.lastSavedAt),
      }
    end
  end
  table.sort(found, function(a, b) return a.id < b.id end)
  return found
end

local function stopping(id)
  if type(id) ~= "string" or not require("repl.service").valid_id(id) then return nil, "not a REPL id" end
  local m, err = store.get(id)
  if m == nil then return nil, "store unavailable: " .. tostring(err) end
  if not m then return nil, "no such REPL" end
  if m.state ~= "stopping" then return nil, "the REPL is " .. tostring(m.state) .. ", not stopping" end
  return m
end

function M.retry(id)
  local m, err = stopping(id)
  if not m then return nil, err end
  require("repl.sweep").save_ok(id)
  local ok
  ok, err = require("repl.sessions").stop(m)
  if not ok then return nil, type(err) == "table" and err.message or tostring(err) end
  return true
end

function M.discard(id)
  local m, err = stopping(id)
  if not m then return nil, err end
  local ok
  ok, err = require("repl.sessions").discard(m) -- the REPL's state is repl.sessions'
  if not ok then return nil, err.message end
  require("devex.log").warn("repl stopped without saving (devexd repl resolve --discard)",
    { repl = id, last_saved_at = m.lastSavedAt })
  return true
end

function M.cli(args)
  local sub = args[2]
  if sub == "stuck" then
    local list, err = M.list()
    if not list then return fail(tostring(err)) end
    for _, e in ipairs(list) do out(e) end
    return 0
  end
  -- resolve ID --retry | --discard [--yes]
  local id, mode, yes = args[3], nil, false
  for i = 4, #args do
    if args[i] == "--retry" or args[i] == "--discard" then
      if mode then return fail("give one of --retry and --discard") end
      mode = args[i]
    elseif args[i] == "--yes" then yes = true
    else return fail("unknown option " .. tostring(args[i]):gsub("%c", "?")) end
  end
  if not id or not mode then return fail("usage: devexd repl resolve ID --retry | --discard --yes") end
  if mode == "--retry" then
    local ok, err = M.retry(id)
    if not ok then return fail("resolve " .. id .. ": " .. tostring(err)) end
    out({ id = id, state = "stopped", saved = true })
    return 0
  end
  if not yes then
    local m, err = stopping(id)
    if not m then return fail("resolve " .. id .. ": " .. tostring(err)) end
    io.stderr:write("devexd: repl resolve --discard removes the workload of ", id, " WITHOUT saving its files;\n",
      "the REPL keeps what its last confirmed save stored (lastSavedAt ", tostring(m.lastSavedAt or "never"), ").\n",
      "Run again with --yes to do it.\n")
    return 2
  end
  local ok, err = M.discard(id)
  if not ok then return fail("resolve " .. id .. ": " .. tostring(err)) end
  out({ id = id, state = "stopped", saved = false })
  return 0
end

return M
