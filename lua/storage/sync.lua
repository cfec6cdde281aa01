-- storage.sync: `devexd templates sync [DIR]`: mirrors a local templates
-- directory (DIR/<name>/**) to the store's templates/<name>/**.
--
--   sync.sync(store, local_dir, {dry_run = false, concurrency = 16})
--     -> { uploaded = {keys}, skipped = {keys}, deleted = {keys}, failures = {{key, error}...} } | nil, err
--   A file whose MD5 equals the remote object's ETag (a single-part object's
--   ETag is its MD5; the fs driver's too) is skipped; remote objects under
--   templates/ that have no local file any more are deleted. Dot files are
--   ignored. An empty local directory is refused (it would delete every
--   template).
--   sync.cli(args) -> exit code: args = { "DIR", "--dry-run" } (DIR defaults to
--   "templates"); prints the report to stdout. Call it inside a task.
local s3c = require("devex.s3")
local tasks = require("devex.tasks")
local common = require("storage.common")

local M = {}
local PREFIX = "templates/"

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local data = f:read("a")
  f:close()
  return data
end

function M.sync(store, local_dir, opts)
  opts = opts or {}
  local files, err = s3c.fs_walk(local_dir)
  if not files then return nil, err end
  local locals = {}
  local nlocal = 0
  for _, f in ipairs(files) do
    if f.path:find("/") then -- DIR/<name>/...; files directly in DIR are not templates
      local key = PREFIX .. f.path
      local ok, kerr = common.check_key(key)
      if not ok then return nil, kerr end
      locals[key] = local_dir .. "/" .. f.path
      nlocal = nlocal + 1
    end
  end
  if nlocal == 0 then return nil, common.error("invalid", local_dir .. " holds no template files") end
  local listing, lerr = store:list(PREFIX)
  if not listing then return nil, lerr end
  local remote = {}
  for _, o in ipairs(listing.objects) do remote[o.key] = o end

  local report = { uploaded = {}, skipped = {}, deleted = {}, failures = {} }
  local uploads = {}
  local keys = {}
  for key in pairs(locals) do keys[#keys + 1] = key end
  table.sort(keys)
  for _, key in ipairs(keys) do
    local data = read_file(locals[key])
    if not data then
      report.failures[#report.failures + 1] = { key = key, error = common.error("io", "cannot read " .. locals[key]) }
    elseif remote[key] and remote[key].etag == s3c.md5_hex(data) then
      report.skipped[#report.skipped + 1] = key
    else
      uploads[#uploads + 1] = { key = key, data = data }
    end
  end
  local stale = {}
  for _, o in ipairs(listing.objects) do
    if not locals[o.key] then stale[#stale + 1] = o.key end
  end

  if opts.dry_run then
    for _, u in ipairs(uploads) do report.uploaded[#report.uploaded + 1] = u.key end
    report.deleted = stale
    return report
  end
  local results, failures = tasks.map(uploads, function(u)
    return store:put(u.key, u.data, { content_type = common.content_type(u.key) })
  end, { concurrency = opts.concurrency or 16 })
  for i, u in ipairs(uploads) do
    if results[i] then report.uploaded[#report.uploaded + 1] = u.key end
  end
  for _, f in ipairs(failures) do
    report.failures[#report.failures + 1] = { key = f.item and f.item.key, error = f.error }
  end
  if #stale > 0 then
    local del, derr = store:delete_many(stale)
    if not del then return nil, derr end
    local failed = {}
    for _, f in ipairs(del.failures) do
      failed[f.key] = true
      report.failures[#report.failures + 1] = f
    end
    for _, k in ipairs(stale) do
      if not failed[k] then report.deleted[#report.deleted + 1] = k end
    end
  end
  return report
end

function M.cli(args)
  args = args or {}
  local dir, dry = nil, false
  for _, a in ipairs(args) do
    if a == "--dry-run" or a == "-n" then dry = true
    elseif a:sub(1, 1) == "-" then io.stderr:write("templates sync: unknown option " .. a .. "\n"); return 2
    elseif dir then io.stderr:write("templates sync: one DIR only\n"); return 2
    else dir = a end
  end
  dir = dir or "templates"
  local store, err = require("storage").open()
  if not store then io.stderr:write("templates sync: " .. tostring(err) .. "\n"); return 1 end
  local report, serr = M.sync(store, dir, { dry_run = dry })
  if not report then io.stderr:write("templates sync: " .. tostring(serr) .. "\n"); return 1 end
  local verb = dry and "would " or ""
  for _, k in ipairs(report.uploaded) do io.stdout:write(verb .. "upload  " .. k .. "\n") end
  for _, k in ipairs(report.deleted) do io.stdout:write(verb .. "delete  " .. k .. "\n") end
  for _, f in ipairs(report.failures) do io.stdout:write("FAILED  " .. tostring(f.key) .. ": " .. tostring(f.error) .. "\n") end
  io.stdout:write(string.format("%s%d uploaded, %d unchanged, %d deleted, %d failed\n", verb,
    #report.uploaded, #report.skipped, #report.deleted, #report.failures))
  return #report.failures == 0 and 0 or 1
end

return M
