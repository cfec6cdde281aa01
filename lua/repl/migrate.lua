-- repl.migrate: moving REPLs keyed on a login (the scheme before owner keys:
-- replMeta.user = the lowercased GitHub login or development name, or
-- "<provider>:<login>" for OpenID Connect) to the owner key of the account
-- that owns them (auth.providers.common: gh_<id>, oidc_<hash>, dev_<name>).
--
--   devexd owners migrate --map FILE [--apply]
--   devexd owners suggest
--
-- Legacy data records no subject, and a login proves nothing about who
-- owns it now (GitHub gives a renamed account's old login to whoever asks),
-- so nothing is guessed: the operator's map says which account owns each
-- legacy key, one "<legacy key> <subject>" per line (subject as sessions and
-- the sign-in log record it: github:<numeric id>, <oidc provider>:<sub>,
-- dev:<name>). `owners suggest` prints candidate lines from the sign-in
-- sessions still in Redis, with conflicts and accounts younger than the
-- REPLs flagged, for the operator to check.
--
-- migrate is a dry run unless --apply: it prints what it would move. Per
-- REPL whose user is a mapped legacy key, --apply:
--   1. marks it "migrating" (from created, stopped or failed; a REPL with a
--      session is skipped until it is stopped), so nothing starts or
--      deletes it meanwhile;
--   2. copies its files from the old prefix to repl/<owner key>/<id>/ and
--      checks that every one arrived with its size;
--   3. in one Redis script: user, prefix, the old owner and prefix kept in
--      legacy_owner / legacy_prefix, the state restored, the id moved from
--      userRepls:<legacy> to userRepls:<owner key>;
--   4. deletes the old files, then legacy_prefix.
-- A failure before 3 restores the state and removes the partial copy; a
-- failure after 3 leaves legacy_prefix, and the next run deletes those
-- files. Files under the old prefix that belong to another REPL (an old
-- owner holding '/' put one REPL's prefix inside another's) are neither
-- copied nor deleted. A finished run leaves nothing for the next one to do.
local redis = require("services.redis")
local store = require("repl.store")
local owners = require("auth.providers.common")
local json = require("devex.json")
local tasks = require("devex.tasks")

local M = {}

local function say(fmt, ...) io.stdout:write(string.format(fmt, ...), "\n") end
local function complain(fmt, ...) io.stderr:write("devexd: owners: ", string.format(fmt, ...), "\n") end

-- Every key matching pattern (SCAN, all pages), sorted; nil, err when Redis fails.
local function scan(r, pattern)
  local keys, cursor = {}, "0"
  repeat
    local res, err = r:call("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
    if not res then return nil, err end
    cursor = res[1]
    for _, k in ipairs(res[2]) do keys[#keys + 1] = k end
  until cursor == "0"
  table.sort(keys)
  return keys
end
M.scan = scan

-- Every REPL's metadata, by id, and the ids in order.
local function all_repls(r)
  local keys, err = scan(r, redis.key("replMeta", "*"))
  if not keys then return nil, err end
  local plen = #redis.key("replMeta", "")
  local metas, ids = {}, {}
  for _, k in ipairs(keys) do
    local id = k:sub(plen + 1)
    local m
    m, err = store.get(id)
    if m == nil then return nil, err end
    if m then metas[id] = m; ids[#ids + 1] = id end
  end
  table.sort(ids, function(a, b)
    local ca, cb = tonumber(metas[a].created_at) or 0, tonumber(metas[b].created_at) or 0
    if ca ~= cb then return ca < cb end
    return a < b
  end)
  return metas, ids
end

local function legacy_prefix_of(meta)
  if type(meta.prefix) == "string" and meta.prefix ~= "" then return meta.prefix end
  return "repl/" .. tostring(meta.user) .. "/" .. meta.id .. "/"
end

-- An old prefix is only ever repl/<something>/<this id>/.
local function plausible_prefix(prefix, id)
  return prefix:sub(1, 5) == "repl/" and #prefix > #id + 7 and prefix:sub(-(#id + 2)) == "/" .. id .. "/"
end

-- The objects under prefix that are this REPL's: not under another REPL's
-- prefix nested inside it.
local function files_of(s, prefix, others)
  local listing, err = s:list(prefix)
  if not listing then return nil, err end
  local nested = {}
  for _, p in ipairs(others) do
    if p ~= prefix and p:sub(1, #prefix) == prefix then nested[#nested + 1] = p end
  end
  local files, bytes = {}, 0
  for _, o in ipairs(listing.objects) do
    local theirs = false
    for _, p in ipairs(nested) do
      if o.key:sub(1, #p) == p then theirs = true; break end
    end
    if not theirs then
      files[#files + 1] = o
      bytes = bytes + (tonumber(o.size) or 0)
    end
  end
  return files, bytes, #nested
end

-- In the map, '%', '#', white space and control characters of a key or
-- subject are written %XX (an OpenID Connect login may hold a space).
local function encode(v)
  return (v:gsub("[%%#%s%c]", function(c) return string.format("%%%02X", c:byte()) end))
end
local function decode(v)
  return (v:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end
M.encode = encode

-- The map file: "<legacy key> <subject>" lines, '#' comments.
-- -> { [legacy key] = { owner=, subject=, line= } } | nil, message
function M.read_map(path)
  local f, ferr = io.open(path, "r")
  if not f then return nil, "cannot read the map: " .. tostring(ferr) end
  local map, n = {}, 0
  for line in f:lines() do
    n = n + 1
    line = line:gsub("^%s+", ""):gsub("%s+$", "")
    if line ~= "" and line:sub(1, 1) ~= "#" then
      local legacy, subject = line:match("^(%S+)%s+(%S+)$")
      if not legacy then f:close(); return nil, string.format("%s:%d: expected \"<legacy key> <subject>\"", path, n) end
      legacy, subject = decode(legacy):lower(), decode(subject)
      if owners.is_owner_key(legacy) then
        f:close()
        return nil, string.format("%s:%d: %s is already an owner key, not a legacy one", path, n, legacy)
      end
      if map[legacy] then
        f:close()
        return nil, string.format("%s:%d: %s is mapped twice (line %d)", path, n, legacy, map[legacy].line)
      end
      local owner, why = owners.owner_of_subject(subject)
      if not owner then
        f:close()
        return nil, string.format("%s:%d: subject %q: %s", path, n, subject, tostring(why))
      end
      map[legacy] = { owner = owner, subject = subject, line = n }
    end
  end
  f:close()
  return map
end

-- Scripts ------------------------------------------------------------------

-- KEYS: replMeta, activeSession. ARGV: legacy owner, states it may start from...
-- -> the state it was in, or false (another owner, a session, another state)
local LOCK = [[
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur or redis.call('HGET', KEYS[1], 'user') ~= ARGV[1] then return false end
if redis.call('EXISTS', KEYS[2]) == 1 then return false end
if cur == 'migrating' then return cur end
for i = 2, #ARGV do
  if ARGV[i] == cur then
    redis.call('HSET', KEYS[1], 'state', 'migrating', 'migrating_from', cur)
    return cur
  end
end
return false
]]

-- KEYS: replMeta. ARGV: legacy owner.
local UNLOCK = [[
if redis.call('HGET', KEYS[1], 'state') ~= 'migrating' or redis.call('HGET', KEYS[1], 'user') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'state', redis.call('HGET', KEYS[1], 'migrating_from') or 'stopped')
redis.call('HDEL', KEYS[1], 'migrating_from')
return 1
]]

-- KEYS: replMeta, userRepls:<legacy>, userRepls:<owner key>, activeSession.
-- ARGV: legacy owner, owner key, new prefix, old prefix, id.
local FLIP = [[
if redis.call('HGET', KEYS[1], 'user') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'state') ~= 'migrating' then
  return 0
end
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
local prev = redis.call('HGET', KEYS[1], 'migrating_from') or 'stopped'
redis.call('HSET', KEYS[1], 'user', ARGV[2], 'prefix', ARGV[3], 'legacy_owner', ARGV[1],
  'legacy_prefix', ARGV[4], 'state', prev)
redis.call('HDEL', KEYS[1], 'migrating_from')
redis.call('SREM', KEYS[2], ARGV[5])
redis.call('SADD', KEYS[3], ARGV[5])
return 1
]]

-- KEYS: replMeta. ARGV: the legacy prefix that was deleted.
local FORGET = [[
if redis.call('HGET', KEYS[1], 'legacy_prefix') ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'legacy_prefix')
return 1
]]

local MOVABLE = { "created", "stopped", "failed" }

-- One step ---------------------------------------------------------------

local function delete_files(s, files)
  if #files == 0 then return true end
  local keys = {}
  for i, o in ipairs(files) do keys[i] = o.key end
  local res, err = s:delete_many(keys)
  if not res then return nil, tostring(err) end
  if #res.failures > 0 then
    return nil, string.format("%d file(s) not deleted, first %s: %s", #res.failures,
      tostring(res.failures[1].key), tostring(res.failures[1].error))
  end
  return true
end

-- Moves one REPL; returns true, or nil and why (the REPL is as it was, or
-- moved with its old files left for the next run, which the message says).
local function move(r, s, meta, to, old, new, files)
  local id, legacy = meta.id, meta.user
  local mkey, skey = store.meta_key(id), store.session_key(id)
  local prev, err = r:eval(LOCK, { mkey, skey }, legacy, table.unpack(MOVABLE))
  if prev == nil then return nil, "redis: " .. tostring(err) end
  if not prev or prev == json.null then return nil, "it changed meanwhile (a session, another state or owner)" end
  local function undo(why)
    s:delete_prefix(new)
    r:eval(UNLOCK, { mkey }, legacy)
    return nil, why
  end
  local _, failures = tasks.map(files, function(o)
    return s:copy(o.key, new .. o.key:sub(#old + 1))
  end, { concurrency = 16 })
  if #failures > 0 then
    return undo(string.format("copying failed for %d file(s), first %s: %s", #failures,
      tostring(failures[1].item and failures[1].item.key), tostring(failures[1].error)))
  end
  local listing
  listing, err = s:list(new)
  if not listing then return undo("listing the copy failed: " .. tostring(err)) end
  local have = {}
  for _, o in ipairs(listing.objects) do have[o.key] = tonumber(o.size) end
  for _, o in ipairs(files) do
    local k = new .. o.key:sub(#old + 1)
    if have[k] ~= tonumber(o.size) then return undo("the copy of " .. o.key .. " is missing or differs") end
  end
  local flipped
  flipped, err = r:eval(FLIP, { mkey, store.user_key(legacy), store.user_key(to), skey }, legacy, to, new, old, id)
  if flipped == nil then return undo("redis: " .. tostring(err)) end
  if flipped ~= 1 then return undo("it changed meanwhile") end
  local ok
  ok, err = delete_files(s, files)
  if not ok then return nil, "moved, but the old files stay (the next run deletes them): " .. err end
  r:eval(FORGET, { mkey }, old)
  return true
end

-- migrate ----------------------------------------------------------------

-- run{map=, apply=} -> exit code; prints the report.
function M.run(opts)
  local r, err = redis.client()
  if not r then complain("redis: %s", tostring(err)); return 1 end
  local s
  s, err = require("storage").open()
  if not s then complain("storage: %s", tostring(err)); return 1 end
  local metas, ids = all_repls(r)
  if not metas then complain("redis: %s", tostring(ids)); return 1 end
  local map = opts.map or {}
  local apply = opts.apply
  local verb = apply and "" or "would "
  say("owners migrate: %s", apply and "applying" or "dry run (nothing changes; --apply does it)")

  -- every prefix in use, so that nested ones are left to their own REPL
  local prefixes = {}
  for _, id in ipairs(ids) do
    local m = metas[id]
    prefixes[#prefixes + 1] = owners.is_owner_key(m.user) and m.prefix or legacy_prefix_of(m)
    if m.legacy_prefix and m.legacy_prefix ~= "" then prefixes[#prefixes + 1] = m.legacy_prefix end
  end

  local n = { moved = 0, unmapped = 0, skipped = 0, failed = 0, leftovers = 0, stale = 0 }
  local used = {}
  for _, id in ipairs(ids) do
    local m = metas[id]
    local label = string.format("%s %q", id, tostring(m.name))
    if owners.is_owner_key(m.user) then
      -- moved by an earlier run whose deletion of the old files failed
      local lp = m.legacy_prefix
      if lp and lp ~= "" then
        if not plausible_prefix(lp, id) then
          say("skip   %s: legacy_prefix %q is not repl/<owner>/<id>/; left alone", label, lp)
          n.skipped = n.skipped + 1
        else
          local files, e = files_of(s, lp, prefixes)
          if not files then
            say("FAILED %s: listing %s: %s", label, lp, tostring(e)); n.failed = n.failed + 1
          else
            say("%sdelete the old files of %s (moved to %s): %d file(s) under %s", verb, label, m.user, #files, lp)
            n.leftovers = n.leftovers + 1
            if apply then
              local ok, derr = delete_files(s, files)
              if ok then r:eval(FORGET, { store.meta_key(id) }, lp)
              else say("FAILED %s: %s", label, derr); n.failed = n.failed + 1 end
            end
          end
        end
      end
    else
      local legacy = tostring(m.user or "")
      local target = map[legacy]
      local old = legacy_prefix_of(m)
      if legacy == "" then
        say("skip   %s: it has no owner at all", label); n.skipped = n.skipped + 1
      elseif not target then
        say("skip   %s of %s: not in the map (it stays keyed on the login, reachable by nobody)", label, legacy)
        n.unmapped = n.unmapped + 1
      elseif not plausible_prefix(old, id) then
        say("skip   %s of %s: its prefix %q is not repl/<owner>/<id>/", label, legacy, old)
        n.skipped = n.skipped + 1
      else
        used[legacy] = true
        local new = "repl/" .. target.owner .. "/" .. id .. "/"
        local sess = store.get_session(id)
        local movable = m.state == "migrating"
        for _, st in ipairs(MOVABLE) do if m.state == st then movable = true end end
        if sess or not movable then
          say("skip   %s of %s: it is %s%s; run again once it is stopped", label, legacy, tostring(m.state),
            sess and " with a session" or "")
          n.skipped = n.skipped + 1
        else
          local files, bytes, nested = files_of(s, old, prefixes)
          if not files then
            say("FAILED %s of %s: listing %s: %s", label, legacy, old, tostring(bytes)); n.failed = n.failed + 1
          else
            say("%smove %s of %s to %s (%s): %d file(s), %d bytes, %s -> %s%s", verb, label, legacy, target.owner,
              target.subject, #files, bytes, old, new,
              nested > 0 and string.format(" (leaving %d other REPL(s) nested under it)", nested) or "")
            if apply then
              local ok, why = move(r, s, m, target.owner, old, new, files)
              if ok then n.moved = n.moved + 1
              else say("FAILED %s: %s", label, why); n.failed = n.failed + 1 end
            else
              n.moved = n.moved + 1
            end
          end
        end
      end
    end
  end

  -- userRepls sets of legacy keys whose members are not (or no longer) that key's
  local sets
  sets, err = scan(r, redis.key("userRepls", "*"))
  if not sets then complain("redis: %s", tostring(err)); return 1 end
  local slen = #redis.key("userRepls", "")
  for _, k in ipairs(sets) do
    local owner = k:sub(slen + 1)
    if not owners.is_owner_key(owner) then
      local members
      members, err = r:call("SMEMBERS", k)
      if not members then complain("redis: %s", tostring(err)); return 1 end
      table.sort(members)
      for _, id in ipairs(members) do
        local m = metas[id]
        if not m or m.user ~= owner then
          say("%sremove %s from userRepls:%s (no REPL of that owner)", verb, id, owner)
          n.stale = n.stale + 1
          if apply then r:call("SREM", k, id) end
        end
      end
    end
  end

  local unused = {}
  for legacy, t in pairs(map) do
    if not used[legacy] then unused[#unused + 1] = t; t.legacy = legacy end
  end
  table.sort(unused, function(a, b) return a.line < b.line end)
  for _, t in ipairs(unused) do say("note   map line %d: %s has no REPL to move", t.line, t.legacy) end
  say("%s%d moved, %d old file set(s) deleted, %d stale set member(s) removed; %d not in the map, %d skipped, %d failed",
    verb, n.moved, n.leftovers, n.stale, n.unmapped, n.skipped, n.failed)
  if apply and (n.moved + n.leftovers) > 0 then
    say("reload devexd (SIGHUP) so that the runner gateway forgets the owners it cached")
  end
  return n.failed == 0 and 0 or 1
end

local USAGE = "usage: devexd owners migrate [--map FILE] [--apply]\n"

function M.cli(args)
  local opts, mapfile = {}, nil
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "--apply" then opts.apply = true
    elseif a == "--dry-run" or a == "-n" then opts.apply = false
    elseif a == "--map" then
      i = i + 1
      mapfile = args[i]
      if not mapfile then io.stderr:write(USAGE); return 2 end
    elseif a:match("^%-%-map=") then mapfile = a:sub(7)
    elseif a == "-h" or a == "--help" then io.stdout:write(USAGE); return 0
    else io.stderr:write("devexd: owners migrate: unknown argument " .. a:gsub("%c", "?") .. "\n" .. USAGE); return 2 end
    i = i + 1
  end
  if mapfile then
    local map, err = M.read_map(mapfile)
    if not map then complain("%s", err); return 2 end
    opts.map = map
  end
  return M.run(opts)
end

-- suggest ----------------------------------------------------------------

-- epoch seconds of an RFC 3339 UTC time ("2011-01-25T18:44:36Z"), or nil
local function epoch_of(t)
  if type(t) ~= "string" then return nil end
  local y, mo, d, h, mi, se = t:match("^(%d%d%d%d)-(%d%d)-(%d%d)T(%d%d):(%d%d):(%d%d)")
  if not y then return nil end
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  -- days from civil (Howard Hinnant)
  y = mo <= 2 and y - 1 or y
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local doy = (153 * (mo + (mo > 2 and -3 or 9)) + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  local days = era * 146097 + doe - 719468
  return days * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(se)
end

local function date(t) return t and os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(t)) or "?" end

-- The legacy key a signed-in user had (or would have had) under the login scheme.
local function legacy_key_of(u)
  if type(u.owner) == "string" and u.owner ~= "" and not owners.is_owner_key(u.owner) then return u.owner end
  if type(u.login) ~= "string" or u.login == "" then return nil end
  local p = require("auth.registry").get(u.provider)
  if p and p.kind == "oidc" then return u.provider .. ":" .. u.login:lower() end
  return u.login:lower()
end

function M.suggest()
  local r, err = redis.client()
  if not r then complain("redis: %s", tostring(err)); return 1 end
  local metas, ids = all_repls(r)
  if not metas then complain("redis: %s", tostring(ids)); return 1 end
  local legacy, order = {}, {}
  for _, id in ipairs(ids) do
    local m = metas[id]
    if not owners.is_owner_key(m.user) and m.user and m.user ~= "" then
      local l = legacy[m.user]
      if not l then l = { ids = {}, oldest = math.huge }; legacy[m.user] = l; order[#order + 1] = m.user end
      l.ids[#l.ids + 1] = id
      local c = tonumber(m.created_at)
      if c and c < l.oldest then l.oldest = c; l.oldest_id = id end
    end
  end
  return M.suggest_for(r, legacy, "owners suggest", "owners migrate --map FILE")
end

-- suggest_for(r, legacy, name, command): the candidate lines for the legacy
-- keys in `legacy` ({ [key] = { ids = {...}, oldest = epoch | math.huge,
-- oldest_id = } }) from the sign-in sessions in Redis; name is the command
-- printing them, command the one the map is for (also `migrate from-go`,
-- lua/repl/adopt_go.lua).
function M.suggest_for(r, legacy, name, command)
  local order = {}
  for key in pairs(legacy) do order[#order + 1] = key end
  table.sort(order)
  local keys, err = scan(r, redis.key("session", "*"))
  if not keys then complain("redis: %s", tostring(err)); return 1 end
  for _, k in ipairs(keys) do
    local v = r:call("HMGET", k, "user", "created_at")
    local u = type(v) == "table" and type(v[1]) == "string" and json.decode(v[1])
    if type(u) == "table" and type(u.subject) == "string" then
      local key = legacy_key_of(u)
      local l = key and legacy[key]
      if l then
        l.seen = l.seen or {}
        local e = l.seen[u.subject]
        if not e then
          local p = require("auth.registry").get(u.provider)
          e = { subject = u.subject, login = tostring(u.login), sessions = 0,
                account = (p and p.kind == "github") and epoch_of(u.created_at) or nil }
          l.seen[u.subject] = e
        end
        e.sessions = e.sessions + 1
        local at = tonumber(type(v[2]) == "string" and v[2] or nil)
        if at and (not e.last or at > e.last) then e.last = at end
      end
    end
  end
  say("# devexd %s: candidate lines for `devexd %s`, from the sign-in", name, command)
  say("# sessions in Redis. A session shows only that an account held the login when it signed in:")
  say("# check each line (README, \"Owner keys\") before using it.")
  if #order == 0 then say("# no REPL is keyed on a login: nothing to migrate") end
  for _, key in ipairs(order) do
    local l = legacy[key]
    local head = string.format("# %s: %d REPL(s), the oldest created %s", key, #l.ids, date(l.oldest ~= math.huge and l.oldest or nil))
    local seen = {}
    for _, e in pairs(l.seen or {}) do seen[#seen + 1] = e end
    table.sort(seen, function(a, b) return a.subject < b.subject end)
    local function desc(e)
      return string.format("%s (login %q, %d session(s), last signed in %s%s)", e.subject, e.login, e.sessions,
        date(e.last), e.account and (", account created " .. date(e.account)) or "")
    end
    if #seen == 0 then
      say("%s; no sign-in seen: write \"%s <provider>:<id>\" yourself if you know whose it is", head, encode(key))
    elseif #seen > 1 then
      local d = {}
      for i, e in ipairs(seen) do d[i] = desc(e) end
      say("%s; claimed by %d accounts: %s: the login changed hands, decide by hand", head, #seen, table.concat(d, ", "))
    else
      local e = seen[1]
      if e.account and l.oldest ~= math.huge and e.account > l.oldest then
        say("%s; only %s, which did not exist yet when %s was created: the login changed hands, not suggested",
          head, desc(e), l.oldest_id)
      else
        say("%s; seen: %s", head, desc(e))
        say("%s %s", encode(key), encode(e.subject))
      end
    end
  end
  return 0
end

return M
