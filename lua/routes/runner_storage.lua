-- routes.runner_storage: devexd as the storage broker of one REPL, for the
-- pod's init container, the uploader injected at stop and the runner agent.
-- Nothing in a runner pod holds a storage credential: these routes, called
-- with the session's runner token ("Authorization: Bearer $RUNNER_TOKEN", or
-- the save token policy.sync mints for the uploader), hand out presigned URLs
-- for exactly one method and one key under the REPL's own prefix
-- (repl/<owner>/<replId>/), valid policy.sync.url_expires seconds, and do
-- the deletions a save implies themselves.
--
--   GET  /api/runner/<id>/files    -> { files = [{path, size, etag, url}], expires }
--   POST /api/runner/<id>/uploads  {"paths": [...]} -> { uploads = [{path, url}], expires }
--   POST /api/runner/<id>/sync     {"paths": [...every file the workspace holds...]}
--        -> { deleted = n, lastSavedAt }; 409 { missing = [...] } when a listed
--        file is not stored (nothing is deleted then)
-- Paths are relative to the prefix. With "Accept: text/plain" the answers of
-- files and uploads are one "path<TAB>url" line per file (a POSIX sh script
-- reads them without a JSON parser), and the POST bodies may be text/plain
-- too: one path a line. Paths: UTF-8, no control character, not absolute,
-- no empty, "." or ".." segment, at most policy.sync.max_path bytes, at most
-- policy.sync.max_files of them.
--
-- The fs storage driver (development) cannot presign: these routes answer
-- 501 with the reason; the Kubernetes runtime needs the s3 driver.
local crypto = require("devex.crypto")
local log = require("devex.log")
local policy = require("policy")
local sessions = require("repl.sessions")
local store = require("repl.store")
local service = require("repl.service")
local common = require("storage.common")

local M = {}

local function knob(name, default)
  local sp = policy.sync
  local v = sp and sp[name]
  if v == nil then return default end
  return v
end

local function bearer(req)
  local h = req.headers["authorization"]
  return h and h:match("^[Bb]earer%s+(%S+)$")
end

-- The session token, or the save token of a stop in progress (policy.sync:
-- save_token_hash and save_token_expires in the session hash).
function M.check_token(id, token)
  if sessions.check_runner(id, token) then return true end
  if type(token) ~= "string" or #token < 16 or #token > 256 then return false end
  local sess = store.get_session(id)
  if not sess or not sess.save_token_hash then return false end
  if (tonumber(sess.save_token_expires) or 0) < os.time() then return false end
  return crypto.equal(crypto.sha256_hex(token), sess.save_token_hash)
end

local function runner(req, next)
  local id = req.params.id
  if not service.valid_id(id) or not M.check_token(id, bearer(req)) then
    return 401, { error = "unauthorized" }
  end
  return next(req)
end

-- a relative path of the workspace, checked before it becomes a key
function M.check_path(p)
  if type(p) ~= "string" then return nil, "a path must be a string" end
  if p == "" then return nil, "a path is empty" end
  local max = knob("max_path", 900)
  if #p > max then return nil, "a path is longer than " .. max .. " bytes" end
  if p:sub(1, 1) == "/" then return nil, "a path is absolute" end
  if p:find("[%z\1-\31\127]") then return nil, "a path holds a control character" end
  if not utf8.len(p) then return nil, "a path is not valid UTF-8" end
  for seg in (p .. "/"):gmatch("([^/]*)/") do
    if seg == "" or seg == "." or seg == ".." then return nil, "a path has an empty, '.' or '..' segment" end
  end
  return true
end

local function plain(req)
  local a = req.headers["accept"]
  return a ~= nil and a:find("text/plain", 1, true) ~= nil
end

-- the paths of a POST body: {"paths": [...]} or text/plain lines
local function body_paths(req)
  local ct = req.headers["content-type"] or ""
  local paths = {}
  if ct:find("text/plain", 1, true) then
    for line in ((req.body or "") .. "\n"):gmatch("([^\n]*)\n") do
      if line ~= "" then paths[#paths + 1] = line end
    end
  else
    local b = req:json()
    if type(b) ~= "table" or type(b.paths) ~= "table" then return nil, '"paths" (a list of relative paths) is required' end
    for i, p in ipairs(b.paths) do paths[i] = p end
  end
  local max = knob("max_files", 10000)
  if #paths > max then return nil, "more than " .. max .. " paths" end
  local seen = {}
  for _, p in ipairs(paths) do
    local ok, why = M.check_path(p)
    if not ok then return nil, why end
    if seen[p] then return nil, "a path is listed twice" end
    seen[p] = true
  end
  return paths
end

-- the REPL's storage, and its prefix
local function open(id)
  local meta = store.get(id)
  if not meta then return nil, nil, 404, "repl not found" end
  local s, err = require("storage").open()
  if not s then return nil, nil, 503, "storage unavailable: " .. tostring(err) end
  if not s.presign then
    return nil, nil, 501, "the " .. tostring(s.driver) .. " storage driver cannot presign URLs: runner pods need the s3 driver"
  end
  local prefix = (meta.prefix and meta.prefix ~= "") and meta.prefix or service.prefix(meta.user, meta.id)
  return s, prefix
end

local function lines(list, field)
  local out = {}
  for i, f in ipairs(list) do out[i] = f.path .. "\t" .. f[field] .. "\n" end
  return 200, table.concat(out), { ["content-type"] = "text/plain; charset=utf-8", ["cache-control"] = "no-store" }
end

return function(app)
  app:get("/api/runner/:id/files", runner, function(req)
    local s, prefix, status, msg = open(req.params.id)
    if not s then return status, { error = msg } end
    local listing, err = s:list(prefix)
    if not listing then return 502, { error = "storage: " .. tostring(err) } end
    local expires = knob("url_expires", 300)
    local files = {}
    for _, o in ipairs(listing.objects) do
      local rel = o.key:sub(#prefix + 1)
      local ok, why = M.check_path(rel)
      if not ok then
        -- "folder" placeholders ("a/"), and names another writer stored that
        -- no workspace can hold (or that would break the text form: a line
        -- break, a tab) are not handed out
        if rel ~= "" and rel:sub(-1) ~= "/" then
          log.warn("runner storage: object skipped", { repl = req.params.id, reason = why })
        end
      else
        local url, perr = s:presign("GET", o.key, expires)
        if not url then return 500, { error = "cannot presign: " .. tostring(perr) } end
        files[#files + 1] = { path = rel, size = o.size, etag = o.etag, url = url }
      end
    end
    if plain(req) then return lines(files, "url") end
    return 200, { files = require("devex.json").array(files), expires = expires }, { ["cache-control"] = "no-store" }
  end)

  app:post("/api/runner/:id/uploads", runner, function(req)
    local paths, why = body_paths(req)
    if not paths then return 400, { error = why } end
    local s, prefix, status, msg = open(req.params.id)
    if not s then return status, { error = msg } end
    local expires = knob("url_expires", 300)
    local out = {}
    for i, p in ipairs(paths) do
      local key = prefix .. p
      local ok, kerr = common.check_key(key)
      if not ok then return 400, { error = tostring(kerr.message) } end
      local url, perr = s:presign("PUT", key, expires)
      if not url then return 500, { error = "cannot presign: " .. tostring(perr) } end
      out[i] = { path = p, url = url }
    end
    if plain(req) then return lines(out, "url") end
    return 200, { uploads = require("devex.json").array(out), expires = expires }, { ["cache-control"] = "no-store" }
  end)

  app:post("/api/runner/:id/sync", runner, function(req)
    local paths, why = body_paths(req)
    if not paths then return 400, { error = why } end
    local id = req.params.id
    local s, prefix, status, msg = open(id)
    if not s then return status, { error = msg } end
    local listing, err = s:list(prefix)
    if not listing then return 502, { error = "storage: " .. tostring(err) } end
    local keep, stored, extra = {}, {}, {}
    for _, p in ipairs(paths) do keep[prefix .. p] = true end
    for _, o in ipairs(listing.objects) do
      stored[o.key] = true
      if not keep[o.key] then extra[#extra + 1] = o.key end
    end
    local missing = {}
    for _, p in ipairs(paths) do
      if not stored[prefix .. p] then missing[#missing + 1] = p end
    end
    if #missing > 0 then
      return 409, { error = "files listed but not stored: the save is not confirmed",
                    missing = require("devex.json").array(missing) }
    end
    local deleted = 0
    if #extra > 0 then
      local r, derr = s:delete_many(extra)
      if not r then return 502, { error = "storage: " .. tostring(derr) } end
      if #r.failures > 0 then
        return 502, { error = "storage: " .. #r.failures .. " deletions failed: " .. tostring(r.failures[1].error) }
      end
      deleted = r.deleted
    end
    local now = os.time()
    local ok, serr = store.mark_saved(id, now)
    if ok == nil then return 503, { error = "store unavailable: " .. tostring(serr) } end
    log.info("repl files saved", { repl = id, files = #paths, deleted = deleted })
    return 200, { files = #paths, deleted = deleted, lastSavedAt = now }
  end)
end
