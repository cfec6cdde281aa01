-- runner.checkpoint: the agent's checkpoints (issue #16, item 3): at most
-- CHECKPOINT_INTERVAL seconds of work at risk. Every interval, and once more
-- when devexd stops the session (POST /api/v1/checkpoint, runner.app), the
-- agent uploads what changed since the last confirmed checkpoint and then
-- confirms the complete list of files with devexd's sync call, which deletes
-- from storage what the workspace no longer holds and records lastSavedAt.
--
-- What "changed" means: a file whose size or mtime differs from what the
-- last confirmed checkpoint (or the restore) recorded is hashed (MD5, the
-- object's ETag); only when the hash differs too is it uploaded, so a file
-- touched but not changed costs a read, not a transfer. The recorded state
-- is replaced only after devexd confirmed the sync: a failed checkpoint
-- leaves it as it was and the next one sends the same changes again. The
-- size and mtime recorded are those read before the hash: a file written
-- during its upload differs at the next checkpoint and is sent again.
--
-- Skipped and reported (never fatal): FIFOs, sockets, devices, symbolic
-- links, and names the broker refuses (control characters, not UTF-8,
-- longer than its max_path). Uploads run CHECKPOINT_CONCURRENCY at a time.
-- One checkpoint runs at a time; a final one asked while another runs waits
-- for it and then runs its own, so the last confirmed one holds every write
-- made before the request.
local fs = require("devex.fs")
local s3 = require("devex.s3")
local log = require("devex.log")
local timer = require("devex.timer")
local tasks = require("devex.tasks")
local stream = require("devex.stream")
local json = require("devex.json")
local settings = require("runner.settings")
local broker = require("runner.broker")

local M = {}

-- path -> { size, mtime, md5 } as of the last confirmed checkpoint (or restore)
local confirmed = {}
local busy = false
local idle = stream.cond()
local enabled = false -- set when the restore finished: never sync over a workspace not restored
local stats = { checkpoints = 0, failures = 0, uploaded = 0, last_error = nil, last_saved_at = nil }

function M.stats() return stats end

-- record(path, {size, mtime, md5}): a file as restored (runner.restore)
function M.record(path, entry) confirmed[path] = entry end

local function name_problem(rel)
  if rel:find("[%z\1-\31\127]") then return "control character in the name" end
  if not utf8.len(rel) then return "name is not UTF-8" end
  if #rel > 900 then return "name longer than 900 bytes" end
  return nil
end

-- scan(root) -> files {rel -> {size, mtime}}, skipped {{path, reason}}
function M.scan(root)
  local files, skipped = {}, {}
  local function walk(dir, rel)
    local entries, err = fs.readdir(dir)
    if not entries then
      skipped[#skipped + 1] = { path = rel == "" and "." or rel, reason = tostring(err) }
      return
    end
    for _, e in ipairs(entries) do
      local r = rel == "" and e.name or (rel .. "/" .. e.name)
      local abs = dir .. "/" .. e.name
      if e.type == "dir" then
        walk(abs, r)
      elseif e.type == "file" then
        local why = name_problem(r)
        local st = not why and fs.lstat(abs)
        if why then
          skipped[#skipped + 1] = { path = r, reason = why }
        elseif st and st.type == "file" then
          files[r] = { size = st.size, mtime = st.mtime }
        end -- gone between readdir and lstat: not there
      else
        skipped[#skipped + 1] = { path = r, reason = e.type == "link" and "symbolic link" or "not a regular file" }
      end
    end
  end
  walk(root, "")
  return files, skipped
end

local function run(final)
  local s = settings.get()
  local root = s.dir
  local files, skipped = M.scan(root)
  local next_state, uploads, paths = {}, {}, {}
  local deleted = 0
  for rel, f in pairs(files) do
    paths[#paths + 1] = rel
    local old = confirmed[rel]
    if old and old.size == f.size and old.mtime == f.mtime then
      next_state[rel] = old
    else
      local md5, n = s3.md5_file(root .. "/" .. rel)
      if md5 then
        local entry = { size = n, mtime = f.mtime, md5 = md5 }
        next_state[rel] = entry
        if not (old and old.md5 == md5) then uploads[#uploads + 1] = rel end
      elseif fs.lstat(root .. "/" .. rel) then
        -- there but unreadable (its mode): reported, and its stored copy,
        -- if any, kept rather than deleted by the sync
        skipped[#skipped + 1] = { path = rel, reason = "unreadable: " .. tostring(n) }
        next_state[rel] = old
      end -- removed since the scan: left out, so the sync deletes its copy
    end
  end
  -- a file the scan saw but could not hash is not listed: it is not stored
  for i = #paths, 1, -1 do
    if not next_state[paths[i]] then table.remove(paths, i) end
  end
  for rel in pairs(confirmed) do
    if not next_state[rel] then deleted = deleted + 1 end
  end
  for _, k in ipairs(skipped) do
    log.warn("checkpoint: skipped", { path = k.path, reason = k.reason })
  end
  if #uploads == 0 and deleted == 0 and not final and stats.checkpoints > 0 then
    return { files = #paths, uploaded = 0, deleted = 0, skipped = skipped, unchanged = true }
  end
  table.sort(uploads)
  if #uploads > 0 then
    local status, body = broker.call("POST", "/uploads", { paths = json.array(uploads) })
    if status ~= 200 or type(body) ~= "table" or type(body.uploads) ~= "table" then
      return nil, "uploads: " .. tostring(status) .. " " .. (type(body) == "table" and tostring(body.error) or tostring(body))
    end
    local _, failures = tasks.map(body.uploads, function(u)
      return broker.put_file(u.url, root .. "/" .. u.path, next_state[u.path] and next_state[u.path].size)
    end, { concurrency = s.checkpoint_concurrency })
    if #failures > 0 then
      return nil, #failures .. " uploads failed, the first: " .. tostring(failures[1].item and failures[1].item.path)
        .. ": " .. tostring(failures[1].error)
    end
  end
  table.sort(paths)
  local status, body = broker.call("POST", "/sync", { paths = json.array(paths) })
  if status == 409 and type(body) == "table" and type(body.missing) == "table" then
    -- stored objects gone behind our back: send them again next time
    for _, p in ipairs(body.missing) do confirmed[p] = nil end
    return nil, "sync: " .. #body.missing .. " files are not stored, sent again at the next checkpoint"
  end
  if status ~= 200 or type(body) ~= "table" then
    return nil, "sync: " .. tostring(status) .. " " .. (type(body) == "table" and tostring(body.error) or tostring(body))
  end
  confirmed = next_state
  stats.uploaded = stats.uploaded + #uploads
  stats.last_saved_at = body.lastSavedAt
  return { files = #paths, uploaded = #uploads, deleted = body.deleted or deleted, skipped = skipped,
           lastSavedAt = body.lastSavedAt }
end

-- M.run{final=} -> report | nil, err. Waits for a checkpoint in progress.
function M.run(opts)
  local final = opts and opts.final
  if not enabled then return nil, "the workspace is not restored yet" end
  while busy do idle:wait(5) end
  busy = true
  local ok, report, err = pcall(run, final)
  busy = false
  idle:signal()
  if not ok then report, err = nil, tostring(report) end
  if report then
    stats.checkpoints = stats.checkpoints + 1
    stats.last_error = nil
    if not report.unchanged then
      log.info("checkpoint confirmed", { files = report.files, uploaded = report.uploaded, deleted = report.deleted,
                                         skipped = #report.skipped, final = final and true or false })
    end
  else
    stats.failures = stats.failures + 1
    stats.last_error = err
    log.warn("checkpoint failed, the next one retries", { error = err, final = final and true or false })
  end
  return report, err
end

-- Starts the periodic checkpoints (after the restore; CHECKPOINT_INTERVAL 0: none).
function M.start()
  enabled = true
  local every = settings.get().checkpoint_interval
  -- a tick while a checkpoint still runs is skipped, not queued
  if every > 0 then timer.every(every, function() if not busy then M.run() end end) end
end

return M
