-- runner.restore: the agent restores the workspace at start (issue #16,
-- item 4): the REPL's stored files, listed by devexd (GET <callback>/files),
-- downloaded CHECKPOINT_CONCURRENCY at a time from the URLs devexd hands out,
-- each streamed to "<name>.devexd-part" beside its place and renamed over it
-- once its size is right (a reader never sees half a file). Progress
-- (files and bytes, done and total) goes to devexd (POST <callback>/progress)
-- at most every PROGRESS_EVERY seconds and at the end; devexd relays it on
-- the session's event stream as `restoring` events.
--
-- Until the restore has succeeded, GET /ping answers 503 (runner.app) and no
-- checkpoint runs: a checkpoint over a workspace not restored would tell
-- devexd to delete every stored file. A failed restore is retried
-- (RETRIES times, a few seconds apart), then the agent stays not ready, with
-- the reason in /ping's answer.
local fs = require("devex.fs")
local s3 = require("devex.s3")
local log = require("devex.log")
local timer = require("devex.timer")
local tasks = require("devex.tasks")
local settings = require("runner.settings")
local broker = require("runner.broker")
local checkpoint = require("runner.checkpoint")

local M = {}

M.PROGRESS_EVERY = 0.5
M.RETRIES = 3

local state = { phase = "pending", error = nil }

-- "pending" | "restoring" | "done" | "failed", and the failure's reason
function M.state() return state.phase, state.error end

local function report(p, force)
  local now = timer.now()
  if not force and (p.reporting or now - p.last < M.PROGRESS_EVERY) then return end
  p.reporting, p.last = true, now
  local status, body = broker.call("POST", "/progress", {
    files = p.files, filesTotal = p.files_total, bytes = p.bytes, bytesTotal = p.bytes_total,
  }, 10)
  p.reporting = false
  if status ~= 204 then
    log.warn("restore: progress not accepted", { status = status, error = type(body) == "table" and body.error or tostring(body) })
  end
end

-- one file: downloaded beside its place, checked, renamed over it
local function fetch(root, f, p)
  local path = root .. "/" .. f.path
  local parent = path:match("^(.*)/[^/]*$")
  local ok, err = s3.fs_mkdir_p(parent)
  if not ok then return nil, err end
  local part = path .. ".devexd-part"
  ok, err = broker.get_file(f.url, part, f.size)
  if ok then
    local st = fs.lstat(part)
    if not st or st.size ~= f.size then
      ok, err = nil, "got " .. tostring(st and st.size) .. " bytes of " .. tostring(f.size)
    end
  end
  if ok then ok, err = os.rename(part, path) end
  if not ok then
    os.remove(part)
    return nil, err
  end
  local st = fs.lstat(path)
  local etag = type(f.etag) == "string" and f.etag:lower():gsub('"', "") or nil
  -- a single-part object's ETag is its MD5; a multipart one's is not, and
  -- the next checkpoint hashes that file instead of trusting it
  checkpoint.record(f.path, { size = st.size, mtime = st.mtime, md5 = etag and etag:match("^%x+$") and #etag == 32 and etag or nil })
  p.files, p.bytes = p.files + 1, p.bytes + f.size
  report(p)
  return true
end

local function once()
  local s = settings.get()
  local status, body = broker.call("GET", "/files")
  if status ~= 200 or type(body) ~= "table" or type(body.files) ~= "table" then
    return nil, "listing: " .. tostring(status) .. " " .. (type(body) == "table" and tostring(body.error) or tostring(body))
  end
  local root = s.dir
  local p = { files = 0, bytes = 0, files_total = #body.files, bytes_total = 0, last = -math.huge }
  for _, f in ipairs(body.files) do p.bytes_total = p.bytes_total + (math.tointeger(f.size) or 0) end
  report(p, true)
  local _, failures = tasks.map(body.files, function(f) return fetch(root, f, p) end,
    { concurrency = s.checkpoint_concurrency })
  if #failures > 0 then
    return nil, #failures .. " downloads failed, the first: " .. tostring(failures[1].item and failures[1].item.path)
      .. ": " .. tostring(failures[1].error)
  end
  report(p, true)
  return p
end

-- Runs the restore (a background task started at the agent's start), then
-- the checkpoints. Without CALLBACK_URL and RUNNER_TOKEN, or with
-- RESTORE=0, there is nothing to restore and the agent is ready at once.
function M.start()
  local s = settings.get()
  if not broker.enabled() then
    state.phase = "done"
    return
  end
  if not s.restore then
    state.phase = "done"
    checkpoint.start()
    return
  end
  state.phase = "restoring"
  timer.at(0, function()
    local t0 = timer.now()
    for attempt = 1, M.RETRIES do
      local ok, p, err = pcall(once)
      if not ok then p, err = nil, tostring(p) end
      if p then
        log.info("workspace restored", { files = p.files, bytes = p.bytes, seconds = timer.now() - t0 })
        state.phase, state.error = "done", nil
        checkpoint.start()
        return
      end
      state.error = err
      log.warn("restore failed", { attempt = attempt, error = err })
      if attempt < M.RETRIES then timer.sleep(2 * attempt) end
    end
    state.phase = "failed"
  end)
end

return M
