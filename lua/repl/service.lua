-- repl.service: the REPL lifecycle (create, list, delete; start and stop go
-- through the runtime driver). States: created -> starting -> running ->
-- stopping -> stopped, and deleting. Redis holds what was intended; every
-- step is safe to retry, and a failure undoes what the step did.
local policy = require("policy")
local store = require("repl.store")
local log = require("devex.log")
local json = require("devex.json")
local owners = require("auth.providers.common")
local current = require("auth.current")
local tracked = require("services.tracked")
local derror = require("devex.error")

local M = {}

-- GET /api/repl: the list is read in the session's script (one round trip)
for _, pattern in ipairs({ "/api/repl", "/api/repl/" }) do
  current.read_with_session("GET", pattern, { body = store.LIST_WITH_SESSION, args = store.list_with_session_args() })
end

-- Errors are devex.error values carrying the HTTP status of the answer and
-- any extra JSON fields (devex.error.http); the routes answer them with
-- devex.app.fail, the one place an error becomes an HTTP response.
local function fail(status, msg, fields)
  return nil, derror.http(status, msg, fields)
end

local function storage()
  local s, err = require("storage").open()
  if not s then return nil, err end
  return s
end

function M.valid_id(id)
  local n = policy.naming
  return type(id) == "string" and #id <= (n.id_max or 63) and id:match(n.id_pattern) ~= nil
end

function M.valid_name(name)
  local n = policy.naming
  if type(name) ~= "string" or not utf8.len(name) then return false end
  local len = utf8.len(name)
  return len >= n.name_min and len <= n.name_max and name:match(n.name_pattern) ~= nil
end

-- The storage prefix of a REPL's files: repl/<owner>/<replId>/. The owner is
-- an owner key ([a-z0-9_-], auth.providers.common) and the id matches the
-- naming policy, so no part of it can reach into another owner's prefix.
function M.prefix(owner, id)
  assert(owners.is_owner_key(owner), "repl.service.prefix: not an owner key")
  assert(M.valid_id(id), "repl.service.prefix: not a REPL id")
  return "repl/" .. owner .. "/" .. id .. "/"
end

local function limit_for(user, template)
  local q = policy.quota
  if type(q.limit_for) == "function" then
    local n = q.limit_for(user, template)
    if math.type(n) == "integer" then return n end
  end
  return q.repls_per_user
end

-- The shape the frontend reads. `user` is what the dashboard shows in its
-- Owner column: the owner's login (the signed-in user's current one when
-- given), never the owner key, which is for ownership only.
-- lastSavedAt (epoch seconds of the last save the storage broker confirmed,
-- absent before the first) is an extra field the frontend ignores; so are
-- saveFailed (true once the sweep flagged the REPL: its stop could not save
-- the files policy.sync.max_attempts times, and the operator must act) and
-- saveError (the last save's failure), present only on a flagged REPL.
function M.view(meta, active, login)
  local flagged = meta.save_failed == "1"
  return { user = login or meta.login or meta.user, id = meta.id, name = meta.name, template = meta.template,
           isActive = active and true or false, lastSavedAt = math.tointeger(tonumber(meta.lastSavedAt)),
           saveFailed = flagged or nil, saveError = flagged and meta.save_error or nil }
end

-- The owner key of a signed-in user; nil for anything else (a login-keyed
-- value never owns anything).
local function owner_of(user)
  local o = user and user.owner
  if owners.is_owner_key(o) then return o end
  return nil
end

-- This worker's copies of users' lists (services.tracked), by owner: the
-- answer of GET /api/repl for a login, dropped as soon as Redis reports a
-- write to the user's set of REPLs or to any listed REPL's record or session
-- key (create, delete, start, stop, rename, the sweep: whoever writes, on
-- whichever replica), or a flush.
local lists = tracked.cache("repl_lists")

local function list_keys(owner, repls)
  local keys = { store.user_key(owner) }
  for _, m in ipairs(repls) do
    keys[#keys + 1] = store.meta_key(m.id)
    keys[#keys + 1] = store.session_key(m.id)
  end
  return keys
end

-- list(user) -> array | nil, err
function M.list(user)
  local owner = owner_of(user)
  if not owner then return json.array() end
  local now = os.time()
  local hit = tracked.get(lists, owner, now)
  if hit and hit.login == user.login then return hit.out end
  -- read with the session in one script (auth.current) when the request
  -- came through GET /api/repl; else (or an owner that differs) a round trip
  local repls = store.list_of(current.also(user), owner)
  local tok = current.also_token(user)
  local err
  if not repls then
    tok = tracked.begin()
    repls, err = store.list(owner)
    if not repls then return fail(503, "store unavailable: " .. tostring(err)) end
  end
  local out = json.array()
  for _, m in ipairs(repls) do
    if type(m.id) ~= "string" then tok = nil end -- nothing to watch it by: not kept
    out[#out + 1] = M.view(m, m.active, user.login)
  end
  if tok then tracked.put(tok, lists, owner, { login = user.login, out = out }, list_keys(owner, repls), now + tracked.max_age) end
  return out
end

-- create(user, {template, replName}) -> view | nil, err
function M.create(user, input)
  if type(input) ~= "table" then return fail(400, "body must be a JSON object") end
  local template, name = input.template, input.replName
  if type(template) ~= "string" or not policy.templates.catalogue[template] then
    return fail(400, "unknown template")
  end
  if not M.valid_name(name) then
    return fail(400, string.format("replName must be %d to %d characters: letters, digits, space, '_', '.', '-'",
      policy.naming.name_min, policy.naming.name_max))
  end
  local per_template = policy.quota.per_template and policy.quota.per_template[template]
  local id = policy.naming.new_id()
  assert(M.valid_id(id), "policy.naming.new_id made an id that does not match id_pattern")
  local owner = owner_of(user)
  if not owner then return fail(403, "this sign-in has no owner key") end
  local limit = limit_for(owner, template)
  local now = os.time()
  local prefix = M.prefix(owner, id)
  local ok, err = store.reserve(owner, limit, {
    id = id, name = name, user = owner, login = user.login, template = template, state = "creating",
    created_at = now, last_active = now, prefix = prefix,
  }, math.type(per_template) == "integer" and per_template or nil) -- both limits in one script
  if ok == nil then return fail(503, "store unavailable: " .. tostring(err)) end
  if not ok then return fail(429, "repl limit reached", { limit = err == "template" and per_template or limit }) end

  -- copy the template; on any failure undo everything done so far
  local s
  s, err = storage()
  local res
  if s then res, err = s:copy_prefix("templates/" .. template .. "/", prefix, { concurrency = 16 }) end
  if not res or #res.failures > 0 or res.copied == 0 then
    local why = err and tostring(err) or (res and #res.failures > 0 and tostring(res.failures[1].error))
      or "the template has no files"
    log.error("repl create failed, rolling back", { repl = id, template = template, error = why })
    if s then
      local d = s:delete_prefix(prefix)
      if d and #d.failures > 0 then
        log.error("rollback left objects behind", { repl = id, failures = #d.failures })
      end
    end
    store.remove(owner, id)
    if res and res.copied == 0 and #res.failures == 0 then return fail(500, "template " .. template .. " has no files") end
    return fail(502, "storage failed: " .. why)
  end
  ok, err = store.transition(id, "created", { "creating" })
  if ok == nil then
    -- Redis failed with the answer: the REPL may be "created" already (a
    -- lost reply), so its files stay. One still "creating" is removed with
    -- them by the sweep after cleanup.stuck_after (test_crash_injection).
    log.error("repl create: the store failed at the last step; the sweep settles it", { repl = id, error = tostring(err) })
    return fail(503, "store unavailable: " .. tostring(err))
  end
  if not ok then -- removed meanwhile (the sweep took it for a create cut short)
    if s then s:delete_prefix(prefix) end
    store.remove(owner, id)
    return fail(503, "the repl was removed during its create")
  end
  log.info("repl created", { repl = id, template = template, files = res.copied })
  return M.view({ user = owner, id = id, name = name, template = template }, false, user.login)
end

-- The REPL if `user` owns it; 404 for missing and for someone else's (so
-- nothing about other users' REPLs leaks).
function M.owned(user, id)
  if not M.valid_id(id) then return fail(404, "repl not found") end
  local meta, err = store.get(id)
  if meta == nil then return fail(503, "store unavailable: " .. tostring(err)) end
  local owner = owner_of(user)
  if not meta or not owner or meta.user ~= owner then return fail(404, "repl not found") end
  return meta
end

-- delete(user, id) -> true | nil, err
function M.delete(user, id)
  local meta, e = M.owned(user, id)
  if not meta then return nil, e end
  local sess, serr = store.get_session(id)
  if sess == nil then return fail(503, "store unavailable: " .. tostring(serr)) end
  if sess then
    local ok, err = M.stop(user, id)
    if not ok then return nil, err end
  end
  local prev, err = store.transition(id, "deleting", { "created", "stopped", "creating", "deleting", "failed" })
  if prev == nil then return fail(503, "store unavailable: " .. tostring(err)) end
  if prev == false then return fail(409, "repl is " .. tostring(meta.state) .. "; stop it first") end
  local s
  s, err = storage()
  if not s then return fail(502, "storage unavailable: " .. tostring(err)) end
  local res
  res, err = s:delete_prefix(meta.prefix ~= nil and meta.prefix ~= "" and meta.prefix or M.prefix(meta.user, id))
  if not res or #res.failures > 0 then
    local why = err and tostring(err) or tostring(res.failures[1].error)
    log.error("repl delete: files not removed, REPL kept", { repl = id, error = why })
    return fail(502, "storage failed: " .. why)
  end
  local ok
  ok, err = store.remove(meta.user, id)
  if not ok then return fail(503, "store unavailable: " .. tostring(err)) end
  log.info("repl deleted", { repl = id, files = res.deleted })
  return true
end

-- start/stop: the runtime driver (lua/runtime) makes the workload.
-- start_owned(meta, parks): the start of a REPL that M.owned already gave
-- (the session route checks the owner in its handler, so that what is
-- answered later holds the REPL, not the user); a tail call, so that a
-- parked start keeps no frame of it. parks: the caller's word that its
-- frames are tail calls down to its later answer's function, so the start
-- may wait for its workload parked (repl.sessions.start)
function M.start_owned(meta, parks)
  return require("repl.sessions").start(meta, parks)
end

function M.stop(user, id)
  local meta, e = M.owned(user, id)
  if not meta then return nil, e end
  return require("repl.sessions").stop(meta)
end

-- ---- the runner's side (routes.repl /api/runner/<id>, routes.runner_storage) ----
-- The runner's routes go through here as the user's do: its token checked
-- by repl.sessions, every failure a devex.error (a store that cannot be
-- read is 503, never "not found" or "unauthorized").

-- check_runner(id, token) / check_broker(id, token) -> true | false | nil, err
function M.check_runner(id, token)
  if not M.valid_id(id) then return false end
  return require("repl.sessions").check_runner(id, token)
end

function M.check_broker(id, token)
  if not M.valid_id(id) then return false end
  return require("repl.sessions").check_broker(id, token)
end

-- runner_repl(id) -> meta | nil, err: the REPL of a runner's request
function M.runner_repl(id)
  local meta, err = store.get(id)
  if meta == nil then return fail(503, "store unavailable: " .. tostring(err)) end
  if not meta then return fail(404, "repl not found") end
  return meta
end

-- storage_prefix(meta): where the REPL's files are (its record's prefix, or
-- the one repl.service.prefix makes for a record without one)
function M.storage_prefix(meta)
  if meta.prefix and meta.prefix ~= "" then return meta.prefix end
  return M.prefix(meta.user, meta.id)
end

-- runner_stop(id) -> true | nil, err: the runner ends its own session (idle)
function M.runner_stop(id)
  local meta, e = M.runner_repl(id)
  if not meta then return nil, e end
  return require("repl.sessions").stop(meta)
end

-- heartbeat(id) -> true | nil, err: the runner reports activity (counted
-- as repl.activity allows)
function M.heartbeat(id)
  if require("repl.activity").counts({ kind = "heartbeat", repl = id }) then
    local ok, err = store.touch(id, nil, "heartbeat")
    if not ok then return fail(503, "store unavailable: " .. tostring(err)) end
  end
  return true
end

-- saved(id, now) -> true | nil, err: the broker confirmed a save: lastSavedAt
-- (nothing when the REPL is gone meanwhile)
function M.saved(id, now)
  local ok, err = store.mark_saved(id, now)
  if ok == nil then return fail(503, "store unavailable: " .. tostring(err)) end
  return true
end

-- restored(id) -> true | nil, err: the runner's restore finished. In a
-- session that is already running its pod was replaced, and the gateway must
-- reach the new one: the driver asks the API server where it is (never the
-- runner); a failed look-up is only logged (the next restore retries).
function M.restored(id)
  local meta, err = store.get(id)
  if meta == nil then return fail(503, "store unavailable: " .. tostring(err)) end
  if not meta or meta.state ~= "running" then return true end
  local drv = require("runtime").driver()
  if not drv.refresh_endpoint then return true end
  local sess
  sess, err = store.get_session(meta.id)
  if sess == nil then return fail(503, "store unavailable: " .. tostring(err)) end
  local fields
  fields, err = drv:refresh_endpoint(meta, sess or {})
  if fields == nil then
    log.warn("could not look up a restored session's new pod", { repl = meta.id, error = tostring(err) })
  elseif fields then
    -- only a session that still exists (not one ended meanwhile)
    local ok
    ok, err = store.update_session(meta.id, fields)
    if ok == nil then return fail(503, "store unavailable: " .. tostring(err)) end
    if ok then log.info("repl session moved to a new pod", { repl = meta.id, pod = fields.pod, endpoint = fields.endpoint }) end
  end
  return true
end

return M
