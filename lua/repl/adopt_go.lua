-- repl.adopt_go: adopting the REPLs of the Go service devexd replaces.
--
--   devexd migrate from-go --map FILE [--apply] [--source-redis URL]
--       [--source-db N] [--source-prefix P] [--move-files] [--delete-old]
--       [--include-active]
--   devexd migrate from-go --suggest [--source-...]
--
-- The Go service (apps/core/internal/redis/store.go, services/repl/route.go)
-- keeps, with no key prefix:
--   repl:<replId>   hash: id, name, user (the lowercased login), template,
--                   isActive ("true" while it has a pod, else "false")
--   user:<login>    set of that login's replIds
-- and the files of a REPL under repl/<login>/<replId>/ in its bucket
-- (templates/<template>/ copied there at creation; the pod's init container
-- downloads that prefix, an ephemeral container uploads /workspaces back to
-- it when the session ends). It records no creation time and no user id.
--
-- A login proves nothing about who owns it now, so the owner comes from the
-- operator's map, the file of `devexd owners migrate --map` (read by
-- repl.migrate.read_map): "<login> <subject>" lines, subject github:<id>,
-- email:<address>, <oidc provider>:<sub> or dev:<name>.
--
-- Dry run unless --apply. Per Go REPL whose login is mapped, --apply:
--   1. copies its files from repl/<login>/<id>/ to repl/<owner key>/<id>/
--      and checks that each arrived (size, and the ETag where both have one);
--   2. in one Redis script, only if devexd has no REPL of that id yet:
--      replMeta:<id> (state stopped, adopted_from "go", go_owner, go_prefix),
--      the id in userRepls:<owner key> and in adopted:go (so that a REPL
--      deleted in devexd later is not adopted again by a later run);
--   3. with --move-files, deletes the Go copy of the files; with
--      --delete-old, deletes repl:<id> and the id from user:<login>.
-- An interrupted run is finished by the next one (step 1 is repeated when
-- no record was written; 3 is repeated for adopted REPLs). A REPL whose Go
-- record says isActive "true" is skipped (its last edits may still be in
-- its pod) unless --include-active; a login not in the map, a template
-- devexd does not offer, and an id devexd already uses for another REPL are
-- reported and left alone. The Go keys and files are never changed without
-- --delete-old / --move-files.
local redis = require("services.redis")
local store = require("repl.store")
local migrate = require("repl.migrate")
local tasks = require("devex.tasks")

local M = {}

local function say(fmt, ...) io.stdout:write(string.format(fmt, ...), "\n") end
local function complain(fmt, ...) io.stderr:write("devexd: migrate from-go: ", string.format(fmt, ...), "\n") end

local scan = migrate.scan

local function hash(r, k)
  local flat, err = r:call("HGETALL", k)
  if not flat then return nil, err end
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end

-- A pattern that matches s literally (SCAN's glob).
local function glob_quote(s) return (s:gsub("[%*%?%[%]\\]", "\\%0")) end

-- url with its database replaced by db
function M.with_db(url, db)
  if url:match("^unix://") then
    return (url:gsub("%?db=%d*$", "")) .. "?db=" .. db
  end
  local head, rest = url:match("^(redis://[^/]*)(.*)$")
  if not head then return url end
  return head .. "/" .. db
end

-- The source files of a Go REPL: every object under its prefix (not the
-- "folder" placeholders some S3 tools make).
local function files_of(s, prefix)
  local listing, err = s:list(prefix)
  if not listing then return nil, err end
  local files, bytes = {}, 0
  for _, o in ipairs(listing.objects) do
    if o.key:sub(-1) ~= "/" then
      files[#files + 1] = o
      bytes = bytes + (tonumber(o.size) or 0)
    end
  end
  return files, bytes
end

-- Copies files from old to new and checks them; true | nil, why.
local function copy_verified(s, files, old, new)
  local _, failures = tasks.map(files, function(o)
    return s:copy(o.key, new .. o.key:sub(#old + 1))
  end, { concurrency = 16 })
  if #failures > 0 then
    return nil, string.format("copying failed for %d file(s), first %s: %s", #failures,
      tostring(failures[1].item and failures[1].item.key), tostring(failures[1].error))
  end
  local listing, err = s:list(new)
  if not listing then return nil, "listing the copy failed: " .. tostring(err) end
  local have = {}
  for _, o in ipairs(listing.objects) do have[o.key] = o end
  for _, o in ipairs(files) do
    local c = have[new .. o.key:sub(#old + 1)]
    if not c or tonumber(c.size) ~= tonumber(o.size)
      or (c.etag and o.etag and c.etag ~= "" and o.etag ~= "" and c.etag ~= o.etag) then
      return nil, "the copy of " .. o.key .. " is missing or differs"
    end
  end
  return true
end

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

-- KEYS: replMeta, userRepls:<owner>, adopted:go. ARGV: id, then field/value pairs.
-- 1 when written, 0 when devexd already has (or had) a REPL of that id.
local ADOPT = [[
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
return 1
]]

-- run(opts) -> exit code; prints the report.
-- opts: map, apply, source_url, source_prefix, move_files, delete_old, include_active
function M.run(opts)
  local r, err = redis.client()
  if not r then complain("redis: %s", tostring(err)); return 1 end
  local src = r
  if opts.source_url then
    src, err = require("devex.redis").connect(opts.source_url, redis.options(opts.source_url))
    if not src then complain("source redis: %s", tostring(err)); return 1 end
  end
  local s
  s, err = require("storage").open()
  if not s then complain("storage: %s", tostring(err)); return 1 end
  local policy = require("policy")
  local sp = opts.source_prefix or ""
  local map = opts.map or {}
  local apply = opts.apply
  local verb = apply and "" or "would "
  say("migrate from-go: %s", apply and "applying" or "dry run (nothing changes; --apply does it)")

  local marker = redis.key("adopted", "go")  -- every id ever adopted
  local keys
  keys, err = scan(src, glob_quote(sp) .. "repl:*")
  if not keys then complain("source redis: %s", tostring(err)); return 1 end
  local n = { adopted = 0, done = 0, unmapped = 0, active = 0, skipped = 0, failed = 0, nofiles = 0,
              moved = 0, deleted = 0, dangling = 0 }
  local used, goids = {}, {}
  local unmapped = {}
  for _, k in ipairs(keys) do
    local id = k:sub(#sp + 6)
    local t = src:call("TYPE", k)
    t = type(t) == "table" and t.ok or t
    if t == "hash" then
      local h
      h, err = hash(src, k)
      if not h then complain("source redis: %s", tostring(err)); return 1 end
      goids[id] = h
      local login = tostring(h.user or ""):lower()
      local label = string.format("%s %q of %s", id, tostring(h.name), login)
      local old = "repl/" .. login .. "/" .. id .. "/"
      local target = map[login]
      if target then used[login] = true end
      local mine
      mine, err = store.get(id)
      if mine == nil then complain("redis: %s", tostring(err)); return 1 end
      local before = false
      if not mine then
        before, err = r:call("SISMEMBER", marker, id)
        if before == nil then complain("redis: %s", tostring(err)); return 1 end
        before = before == 1
      end
      if before or (mine and mine.adopted_from == "go" and mine.go_owner == login) then
        -- adopted by an earlier run (and perhaps deleted in devexd since:
        -- never adopted again): finish what it was asked to do
        if not mine then
          mine = { user = "a REPL deleted in devexd since" }
          say("note   %s was adopted before and deleted in devexd since: not adopted again", label)
        end
        n.done = n.done + 1
        if opts.move_files then
          local files, e = files_of(s, old)
          if not files then
            say("FAILED %s: listing %s: %s", label, old, tostring(e)); n.failed = n.failed + 1
          elseif #files > 0 then
            say("%sdelete the Go copy of %s (adopted as %s): %d file(s) under %s", verb, label, mine.user, #files, old)
            n.moved = n.moved + 1
            if apply then
              local ok, derr = delete_files(s, files)
              if not ok then say("FAILED %s: %s", label, derr); n.failed = n.failed + 1 end
            end
          end
        end
        if opts.delete_old then
          say("%sdelete the Go record of %s (adopted as %s)", verb, label, mine.user)
          n.deleted = n.deleted + 1
          if apply then src:pipeline({ { "DEL", k }, { "SREM", sp .. "user:" .. login, id } }) end
        end
      elseif mine then
        say("skip   %s: devexd already has a REPL %s (owner %s, not adopted from this record); left alone",
          label, id, tostring(mine.user))
        n.skipped = n.skipped + 1
      elseif login == "" then
        say("skip   %s: it has no user", label); n.skipped = n.skipped + 1
      elseif #id > (policy.naming.id_max or 63) or not id:match(policy.naming.id_pattern) then
        say("skip   %s: the id does not match naming.id_pattern", label); n.skipped = n.skipped + 1
      elseif not target then
        say("skip   %s: %s is not in the map; left with the Go service", label, login)
        n.unmapped = n.unmapped + 1
        unmapped[login] = (unmapped[login] or 0) + 1
      elseif h.isActive == "true" and not opts.include_active then
        say("skip   %s: the Go service has a live session for it (isActive true); stop the Go service's "
          .. "workloads so that its files are saved, then run again (or --include-active)", label)
        n.active = n.active + 1
      elseif not policy.templates.catalogue[tostring(h.template)] then
        say("skip   %s: template %q is not in devexd's catalogue", label, tostring(h.template))
        n.skipped = n.skipped + 1
      else
        local new = "repl/" .. target.owner .. "/" .. id .. "/"
        local files, bytes = files_of(s, old)
        if not files then
          say("FAILED %s: listing %s: %s", label, old, tostring(bytes)); n.failed = n.failed + 1
        else
          say("%sadopt %s as %s (%s): %d file(s), %d bytes, %s -> %s%s", verb, label, target.owner, target.subject,
            #files, bytes, old, new, #files == 0 and " (it has no files: it starts empty)" or "")
          if #files == 0 then n.nofiles = n.nofiles + 1 end
          local ok, why = true, nil
          if apply then
            ok, why = copy_verified(s, files, old, new)
            if not ok then s:delete_prefix(new) end  -- no record names it yet
            if ok then
              local now = os.time()
              local fields = { id = id, name = h.name or id, user = target.owner, login = login,
                               template = h.template, state = "stopped", created_at = now, last_active = now,
                               prefix = new, adopted_from = "go", go_owner = login, go_prefix = old }
              local args = { id }
              for fk, fv in pairs(fields) do args[#args + 1] = fk; args[#args + 1] = tostring(fv) end
              local res, e = r:eval(ADOPT, { store.meta_key(id), store.user_key(target.owner), marker },
                table.unpack(args))
              if res == nil then ok, why = nil, "redis: " .. tostring(e)
              elseif res ~= 1 then ok, why = nil, "devexd got a REPL of that id meanwhile" end
            end
            if ok then
              if opts.move_files then
                local dok, derr = delete_files(s, files)
                if not dok then say("note   %s: adopted, but the Go copy stays (the next run deletes it): %s", label, derr) end
              end
              if opts.delete_old then src:pipeline({ { "DEL", k }, { "SREM", sp .. "user:" .. login, id } }) end
            end
          end
          if ok then n.adopted = n.adopted + 1
          else say("FAILED %s: %s", label, tostring(why)); n.failed = n.failed + 1 end
        end
      end
    end
  end

  -- ids in a Go user set with no record (the Go service skipped them too)
  local sets
  sets, err = scan(src, glob_quote(sp) .. "user:*")
  if not sets then complain("source redis: %s", tostring(err)); return 1 end
  for _, k in ipairs(sets) do
    local login = k:sub(#sp + 6)
    local t = src:call("TYPE", k)
    t = type(t) == "table" and t.ok or t
    if t == "set" then
      local members = src:call("SMEMBERS", k) or {}
      table.sort(members)
      for _, id in ipairs(members) do
        if not goids[id] then
          say("note   user:%s lists %s, which has no repl:%s record: nothing to adopt", login, id, id)
          n.dangling = n.dangling + 1
        end
      end
    end
  end

  local logins = {}
  for l in pairs(unmapped) do logins[#logins + 1] = l end
  table.sort(logins)
  for _, l in ipairs(logins) do
    say("unmapped %s: %d REPL(s); add \"%s <provider>:<id>\" to the map once you know whose it is",
      l, unmapped[l], migrate.encode(l))
  end
  local unused = {}
  for login, t in pairs(map) do
    if not used[login] then t.login = login; unused[#unused + 1] = t end
  end
  table.sort(unused, function(a, b) return a.line < b.line end)
  for _, t in ipairs(unused) do say("note   map line %d: %s has no REPL in the Go data", t.line, t.login) end
  say("%s%d adopted (%d without files), %d adopted before; %d not in the map, %d with a live Go session, "
    .. "%d skipped, %d failed; %d dangling id(s); %d Go file set(s) and %d Go record(s) %sdeleted",
    verb, n.adopted, n.nofiles, n.done, n.unmapped, n.active, n.skipped, n.failed, n.dangling,
    n.moved, n.deleted, apply and "" or "to be ")
  return n.failed == 0 and 0 or 1
end

local USAGE = "usage: devexd migrate from-go --map FILE [--apply] [--source-redis URL] [--source-db N]\n"
  .. "         [--source-prefix P] [--move-files] [--delete-old] [--include-active]\n"
  .. "       devexd migrate from-go --suggest [--source-redis URL] [--source-db N] [--source-prefix P]\n"

-- suggest(opts): candidate map lines for the Go logins that own REPLs, from
-- the sign-in sessions in devexd's Redis (repl.migrate.suggest_for: a login
-- seen signing in with exactly one account). The Go data has no creation
-- times, so the check "account younger than the REPLs" cannot be made.
function M.suggest(opts)
  local r, err = redis.client()
  if not r then complain("redis: %s", tostring(err)); return 1 end
  local src = r
  if opts.source_url then
    src, err = require("devex.redis").connect(opts.source_url, redis.options(opts.source_url))
    if not src then complain("source redis: %s", tostring(err)); return 1 end
  end
  local sp = opts.source_prefix or ""
  local keys
  keys, err = scan(src, glob_quote(sp) .. "repl:*")
  if not keys then complain("source redis: %s", tostring(err)); return 1 end
  local legacy = {}
  for _, k in ipairs(keys) do
    local login = src:call("HGET", k, "user")
    if type(login) == "string" and login ~= "" then
      login = login:lower()
      local l = legacy[login]
      if not l then l = { ids = {}, oldest = math.huge }; legacy[login] = l end
      l.ids[#l.ids + 1] = k:sub(#sp + 6)
    end
  end
  return migrate.suggest_for(r, legacy, "migrate from-go --suggest", "migrate from-go --map FILE")
end

function M.cli(args)
  local opts, mapfile = {}, nil
  local i = 1
  local function value(a, name)
    local v = a:match("^%-%-" .. name:gsub("%-", "%%-") .. "=(.*)$")
    if v then return v, false end
    if a == "--" .. name then i = i + 1; return args[i], true end
  end
  while i <= #args do
    local a = args[i]
    local v
    if a == "--apply" then opts.apply = true
    elseif a == "--dry-run" or a == "-n" then opts.apply = false
    elseif a == "--move-files" then opts.move_files = true
    elseif a == "--delete-old" then opts.delete_old = true
    elseif a == "--include-active" then opts.include_active = true
    elseif a == "--suggest" then opts.suggest = true
    elseif a == "-h" or a == "--help" then io.stdout:write(USAGE); return 0
    else
      local matched = false
      for _, name in ipairs({ "map", "source-redis", "source-db", "source-prefix" }) do
        v = value(a, name)
        if v ~= nil or a == "--" .. name or a:sub(1, #name + 3) == "--" .. name .. "=" then
          if v == nil then io.stderr:write("devexd: migrate from-go: --" .. name .. " needs a value\n" .. USAGE); return 2 end
          opts[name] = v
          matched = true
          break
        end
      end
      if not matched then
        io.stderr:write("devexd: migrate from-go: unknown argument " .. a:gsub("%c", "?") .. "\n" .. USAGE)
        return 2
      end
    end
    i = i + 1
  end
  local conf = require("devex.config").get().redis or {}
  local url = opts["source-redis"]
  if opts["source-db"] then
    if not opts["source-db"]:match("^%d+$") then io.stderr:write("devexd: migrate from-go: --source-db must be a number\n"); return 2 end
    url = M.with_db(url or conf.url or "redis://127.0.0.1:6379/0", opts["source-db"])
  end
  if opts.suggest then return M.suggest({ source_url = url, source_prefix = opts["source-prefix"] }) end
  mapfile = opts.map
  if not mapfile then io.stderr:write("devexd: migrate from-go: --map FILE is required\n" .. USAGE); return 2 end
  local map, err = migrate.read_map(mapfile)
  if not map then complain("%s", err); return 2 end
  return M.run({ map = map, apply = opts.apply, source_url = url, source_prefix = opts["source-prefix"],
                 move_files = opts.move_files, delete_old = opts.delete_old, include_active = opts.include_active })
end

return M
