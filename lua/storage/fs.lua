-- storage.fs: the fs driver of the storage API (see storage/init.lua): a
-- local directory plays the bucket, for development. Same methods, results
-- and error codes as storage.s3 (a missing object is NoSuchKey, status 404).
--
-- Keys map to paths segment by segment; in each segment '%' and a leading
-- '.' are percent-encoded (so no stored name starts with '.', which keeps
-- the driver's own ".devex-tmp" directory out of every key's way, and a
-- listing decodes names back to keys). Writes go to a temporary file in
-- <dir>/.devex-tmp and are renamed into place, so a reader never sees half a
-- file. The ETag is the hex MD5 of the content, as S3's for a single-part
-- object. Files are read and written with Lua's io (blocking: development use).
local s3c = require("devex.s3")
local crypto = require("devex.crypto")
local common = require("storage.common")

local M = {}
local Store = {}
Store.__index = Store

local check_key, E = common.check_key, common.error

-- new{dir = "/path"} -> store | nil, err (the directory is created if needed)
function M.new(conf)
  local dir = type(conf) == "table" and conf.dir
  if type(dir) ~= "string" or dir == "" then return nil, E("invalid", "fs storage: dir is required") end
  dir = dir:gsub("/+$", "")
  if dir == "" then dir = "/" end
  local ok, err = s3c.fs_mkdir_p(dir .. "/.devex-tmp")
  if not ok then return nil, err end
  return setmetatable({ driver = "fs", dir = dir }, Store)
end

local function enc_segment(seg)
  seg = seg:gsub("%%", "%%25")
  return (seg:gsub("^%.", "%%2E"))
end

local function dec(name)
  return (name:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

function Store:path(key)
  local parts = {}
  for seg in key:gmatch("[^/]+") do
    local e = enc_segment(seg)
    if #e > 255 then return nil, E("invalid_key", "a key segment is too long for the filesystem") end
    parts[#parts + 1] = e
  end
  return self.dir .. "/" .. table.concat(parts, "/")
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local data = f:read("a")
  f:close()
  return data -- nil for a directory
end

local function not_found(key) return E("NoSuchKey", "The specified key does not exist.", 404, { key = key }) end

function Store:head_bucket()
  if os.rename(self.dir, self.dir) then return true end
  return nil, E("NoSuchBucket", "storage directory " .. self.dir .. " does not exist", 404)
end

function Store:get(key)
  local ok, err = check_key(key)
  if not ok then return nil, err end
  local p, perr = self:path(key)
  if not p then return nil, perr end
  local data = read_file(p)
  if not data then return nil, not_found(key) end
  return data, { size = #data, etag = s3c.md5_hex(data), content_type = common.content_type(key) }
end

function Store:head(key)
  local data, info = self:get(key)
  if not data then return nil, info end
  return info
end

function Store:put(key, data, opts)
  local ok, err = check_key(key)
  if not ok then return nil, err end
  if type(data) ~= "string" then error("fs put: data must be a string", 2) end
  local p, perr = self:path(key)
  if not p then return nil, perr end
  local parent = p:match("^(.*)/[^/]*$")
  ok, err = s3c.fs_mkdir_p(parent)
  if not ok then return nil, E("io", err.message) end
  local tmp = self.dir .. "/.devex-tmp/" .. crypto.hex(crypto.random_bytes(12))
  local f, ferr = io.open(tmp, "wb")
  if not f then return nil, E("io", ferr) end
  local wok, werr = f:write(data)
  local cok, cerr = f:close()
  if not wok or not cok then os.remove(tmp); return nil, E("io", werr or cerr) end
  local rok, rerr = os.rename(tmp, p)
  if not rok then os.remove(tmp); return nil, E("io", rerr) end
  return { etag = s3c.md5_hex(data) }
end

-- put_file(key, path, {max_bytes=}): copies the file in 256 KiB pieces (a
-- file is never held in memory whole); with max_bytes, a file that holds
-- more (it may grow while it is read) is refused with code "TooLarge".
function Store:put_file(key, path, opts)
  local ok, err = check_key(key)
  if not ok then return nil, err end
  local p, perr = self:path(key)
  if not p then return nil, perr end
  local max = opts and opts.max_bytes
  local src, serr = io.open(path, "rb")
  if not src then return nil, E("io", "cannot read " .. path .. ": " .. tostring(serr)) end
  ok, err = s3c.fs_mkdir_p(self.dir .. "/.devex-tmp")
  if ok then ok, err = s3c.fs_mkdir_p(p:match("^(.*)/[^/]*$")) end
  if not ok then src:close(); return nil, E("io", err.message) end
  local tmp = self.dir .. "/.devex-tmp/" .. crypto.hex(crypto.random_bytes(12))
  local dst, derr = io.open(tmp, "wb")
  if not dst then src:close(); return nil, E("io", derr) end
  local total, failure = 0, nil
  while true do
    local chunk = src:read(262144)
    if not chunk then break end
    total = total + #chunk
    if max and total > max then
      failure = E("TooLarge", string.format("%s holds more than %d bytes", path, max), 413)
      break
    end
    local wok, werr = dst:write(chunk)
    if not wok then failure = E("io", werr); break end
  end
  src:close()
  local cok, cerr = dst:close()
  if not failure and not cok then failure = E("io", cerr) end
  if failure then os.remove(tmp); return nil, failure end
  local etag = s3c.md5_file(tmp)
  local rok, rerr = os.rename(tmp, p)
  if not rok then os.remove(tmp); return nil, E("io", rerr) end
  return { etag = etag }
end

function Store:copy(src, dst)
  local ok, err = check_key(dst, "destination key")
  if not ok then return nil, err end
  local data, info = self:get(src)
  if not data then return nil, info end
  return self:put(dst, data)
end

function Store:delete(key)
  local ok, err = check_key(key)
  if not ok then return nil, err end
  local p, perr = self:path(key)
  if not p then return nil, perr end
  os.remove(p) -- a missing key is not an error, as on S3
  -- remove the directories the key leaves empty (os.remove fails on a non-empty one)
  local d = p:match("^(.*)/[^/]*$")
  while d and #d > #self.dir and os.remove(d) do d = d:match("^(.*)/[^/]*$") end
  if read_file(p) then return nil, E("io", "cannot remove " .. key) end
  return true
end

-- list(prefix, {delimiter=}) -> { objects = {{key, size, etag}...}, prefixes = {...} } | nil, err
function Store:list(prefix, opts)
  prefix = prefix or ""
  local ok, err = check_key(prefix, "prefix", true)
  if not ok then return nil, err end
  local delim = opts and opts.delimiter
  -- walk only the directory of the prefix's complete segments
  local dirpart = prefix:match("^(.*)/[^/]*$") or ""
  local start = dirpart == "" and self.dir or self:path(dirpart)
  local files, werr = s3c.fs_walk(start)
  if not files then return nil, werr end
  local out, seen = { objects = {}, prefixes = {} }, {}
  local keys = {}
  for _, f in ipairs(files) do
    local rel = {}
    for seg in f.path:gmatch("[^/]+") do rel[#rel + 1] = dec(seg) end
    local key = (dirpart == "" and "" or dirpart .. "/") .. table.concat(rel, "/")
    if key:sub(1, #prefix) == prefix then keys[#keys + 1] = { key = key, path = start .. "/" .. f.path, size = f.size } end
  end
  table.sort(keys, function(a, b) return a.key < b.key end)
  for _, k in ipairs(keys) do
    local rest = k.key:sub(#prefix + 1)
    local cut = delim and delim ~= "" and rest:find(delim, 1, true)
    if cut then
      local p = prefix .. rest:sub(1, cut + #delim - 1)
      if not seen[p] then seen[p] = true; out.prefixes[#out.prefixes + 1] = p end
    else
      local data = read_file(k.path) or ""
      out.objects[#out.objects + 1] = { key = k.key, size = k.size, etag = s3c.md5_hex(data) }
    end
  end
  return out
end

function Store:delete_many(keys, opts) return common.delete_many(self, keys, opts) end
function Store:copy_prefix(src, dst, opts) return common.copy_prefix(self, src, dst, opts) end
function Store:delete_prefix(prefix, opts) return common.delete_prefix(self, prefix, opts) end

return M
