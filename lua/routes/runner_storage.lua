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
-- The fs storage driver (single-host development) cannot presign: there the
-- `url` fields are devexd's own routes, path-absolute (no host: the agent
-- joins them to its CALLBACK_URL's origin, whatever way it reaches devexd),
-- authenticated by the same token:
--   GET /api/runner/<id>/blob/<path>  the stored bytes, streamed from the file
--   PUT /api/runner/<id>/blob/<path>  stores the body (at most
--        policy.sync.max_file_size bytes, and server.max_body bounds every
--        request body: a larger one is 413), written atomically
-- so the runner agent (lua/runner/checkpoint.lua, restore.lua) has one code
-- path. With "?via=devexd" on GET files and POST uploads the URLs are the
-- blob routes whatever the driver: a sandboxed single-host agent reaches
-- devexd only, never S3 (the blob routes then read and write the object
-- whole, bounded by max_file_size). The sh scripts of the Kubernetes pods need the s3 driver (they send
-- no token to the URLs).
--
--   POST /api/runner/<id>/progress {files, filesTotal, bytes, bytesTotal}
--        the agent's restore progress, relayed on the session event stream
--        as a `restoring` event with those fields (repl.events.progress)
local log = require("devex.log")
local policy = require("policy")
local service = require("repl.service")
local common = require("storage.common")
local fs = require("devex.fs")
local dstream = require("devex.stream")
local fail = require("devex.app").fail -- a returned error as its HTTP answer

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

-- The session token (while the REPL is starting: the start's token, whose
-- hash repl.sessions puts in replMeta first), or the save token of a stop in
-- progress: repl.sessions.check_broker. -> true | false | nil, err (the
-- store failed: 503, never "unauthorized" for a token that may well be valid)
M.check_token = service.check_broker

local function runner(req, next)
  local ok, err = service.check_broker(req.params.id, bearer(req))
  if ok == nil then return fail(err) end
  if not ok then return 401, { error = "unauthorized" } end
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
-- (-> s, prefix | nil, nil, status, message)
local function open(id)
  local meta, err = service.runner_repl(id)
  if not meta then
    local status, body = fail(err)
    return nil, nil, status, body.error
  end
  local s, serr = require("storage").open()
  if not s then return nil, nil, 503, "storage unavailable: " .. tostring(serr) end
  return s, service.storage_prefix(meta)
end

-- a path as the URL path of the blob route: every byte but the unreserved
-- ones and '/' percent-encoded (the router decodes the wildcard)
local function url_path(p)
  return (p:gsub("[^%w%-%._~/]", function(c) return string.format("%%%02X", c:byte()) end))
end

-- a URL for one method and key: presigned on S3, the blob route on fs
local function url_for(s, id, method, key, rel, expires, via)
  if s.presign and not via then return s:presign(method, key, expires) end
  return "/api/runner/" .. id .. "/blob/" .. url_path(rel)
end

local function via_devexd(req) return req.query and req.query.via == "devexd" end

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
        local url, perr = url_for(s, req.params.id, "GET", o.key, rel, expires, via_devexd(req))
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
      local url, perr = url_for(s, req.params.id, "PUT", key, p, expires, via_devexd(req))
      if not url then return 500, { error = "cannot presign: " .. tostring(perr) } end
      out[i] = { path = p, url = url }
    end
    if plain(req) then return lines(out, "url") end
    return 200, { uploads = require("devex.json").array(out), expires = expires }, { ["cache-control"] = "no-store" }
  end)

  -- the fs driver's bytes (see the top): the path checked as any listed one
  local function blob_target(req)
    local rel = req.params.rest or ""
    local ok, why = M.check_path(rel)
    if not ok then return nil, 400, why end
    local s, prefix, status, msg = open(req.params.id)
    if not s then return nil, status, msg end
    local key = prefix .. rel
    local kok, kerr = common.check_key(key)
    if not kok then return nil, 400, tostring(kerr.message) end
    return s, key
  end

  app:get("/api/runner/:id/blob/*rest", runner, function(req)
    local s, key, msg = blob_target(req)
    if not s then return key, { error = msg } end
    if s.driver ~= "fs" then -- ?via=devexd over S3: the object whole
      local body, gerr = s:get(key)
      if not body then
        if gerr and gerr.status == 404 then return 404, { error = "no such file" } end
        return 502, { error = "storage: " .. tostring(gerr) }
      end
      return 200, body, { ["content-type"] = "application/octet-stream", ["cache-control"] = "no-store" }
    end
    local path, perr = s:path(key)
    if not path then return 400, { error = tostring(perr) } end
    local f = io.open(path, "rb")
    local st = f and fs.lstat(path)
    if not f or not st or st.type ~= "file" then
      if f then f:close() end
      return 404, { error = "no such file" }
    end
    -- sent as read, 1 MiB at a time: a large file is never held in memory
    return 200, dstream.new(function(w)
      while true do
        local chunk = f:read(1 << 20)
        if not chunk or not w:write(chunk) then break end
      end
      f:close()
    end), { ["content-type"] = "application/octet-stream", ["cache-control"] = "no-store",
            ["x-object-size"] = tostring(st.size) }
  end)

  app:put("/api/runner/:id/blob/*rest", runner, function(req)
    local s, key, msg = blob_target(req)
    if not s then return key, { error = msg } end
    local body = req.body or ""
    local max = knob("max_file_size", 1 << 30)
    if #body > max then return 413, { error = "a file is larger than " .. max .. " bytes" } end
    local r, err = s:put(key, body)
    if not r then return 502, { error = "storage: " .. tostring(err) } end
    return 200, { etag = r.etag, size = #body }
  end)

  app:post("/api/runner/:id/progress", runner, function(req)
    local b = req:json()
    if type(b) ~= "table" then return 400, { error = "body must be a JSON object" } end
    local out = {}
    for _, k in ipairs({ "files", "filesTotal", "bytes", "bytesTotal" }) do
      local v = b[k]
      if math.type(v) ~= "integer" or v < 0 then return 400, { error = '"' .. k .. '" must be a non-negative integer' } end
      out[k] = v
    end
    if out.files > out.filesTotal or out.bytes > out.bytesTotal then
      return 400, { error = "progress is past its total" }
    end
    require("repl.events").progress(req.params.id, out)
    if out.files == out.filesTotal then
      -- a restore finished (in a running session: its pod was replaced)
      local ok, err = service.restored(req.params.id)
      if not ok then return fail(err) end
    end
    return 204
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
    local ok, serr = service.saved(id, now)
    if not ok then return fail(serr) end
    log.info("repl files saved", { repl = id, files = #paths, deleted = deleted })
    return 200, { files = #paths, deleted = deleted, lastSavedAt = now }
  end)
end
