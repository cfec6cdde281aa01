-- storage.common: what both storage drivers share: key validation, error
-- values (the devex.error shape: {code, message, status}, printable with
-- tostring), and the bulk operations written once on top of a driver's
-- list/copy/delete (copy_prefix, delete_prefix, a generic delete_many).
local tasks = require("devex.tasks")

local M = {}

-- error(code, message, status, extra): a devex.error, the shape every
-- primitive returns
M.error = require("devex.error").new

M.MAX_KEY = 1024

-- Keys (and prefixes, with allow_empty) are checked before any use: a UTF-8
-- string of 1..1024 bytes, no control characters (XML 1.0 cannot carry
-- them in DeleteObjects), no leading '/', and no empty, "." or ".." path
-- segment (a filesystem cannot hold them, and an HTTP client may normalize
-- them away, addressing another object than the one signed).
function M.check_key(key, what, allow_empty)
  what = what or "key"
  if type(key) ~= "string" then return nil, M.error("invalid_key", what .. " must be a string") end
  if key == "" then
    if allow_empty then return true end
    return nil, M.error("invalid_key", what .. " is empty")
  end
  if #key > M.MAX_KEY then return nil, M.error("invalid_key", what .. " is longer than 1024 bytes") end
  if key:find("[%z\1-\31\127]") then return nil, M.error("invalid_key", what .. " holds a control character") end
  if not utf8.len(key) then return nil, M.error("invalid_key", what .. " is not valid UTF-8") end
  if key:sub(1, 1) == "/" then return nil, M.error("invalid_key", what .. " starts with '/'") end
  local segs = {}
  for seg in (key .. "/"):gmatch("([^/]*)/") do segs[#segs + 1] = seg end
  for i, seg in ipairs(segs) do
    local trailing_slash = seg == "" and i == #segs and allow_empty -- a prefix "a/"
    if seg == "." or seg == ".." or (seg == "" and not trailing_slash) then
      return nil, M.error("invalid_key", what .. " has an empty, '.' or '..' path segment")
    end
  end
  return true
end

local function failure(key, err) return { key = key, error = err } end

-- A generic delete_many on store:delete (the fs driver; s3 overrides it
-- with DeleteObjects batches). -> { deleted = n, failures = {{key, error}...} }
function M.delete_many(store, keys, opts)
  for _, k in ipairs(keys) do
    local ok, err = M.check_key(k)
    if not ok then return nil, err end
  end
  local results, failures = tasks.map(keys, function(k) return store:delete(k) end,
    { concurrency = (opts and opts.concurrency) or 16 })
  local out = { deleted = 0, failures = {} }
  for _ in pairs(results) do out.deleted = out.deleted + 1 end
  for _, f in ipairs(failures) do out.failures[#out.failures + 1] = failure(f.item, f.error) end
  return out
end

-- copy_prefix(store, src, dst, {concurrency=16}) -> { copied = n, failures = {{key, error}...} } | nil, err
-- Lists every object under src (all pages) and copies each to dst .. rest.
function M.copy_prefix(store, src, dst, opts)
  local ok, err = M.check_key(src, "source prefix", true)
  if not ok then return nil, err end
  ok, err = M.check_key(dst, "destination prefix", true)
  if not ok then return nil, err end
  local listing, lerr = store:list(src)
  if not listing then return nil, lerr end
  local results, failures = tasks.map(listing.objects, function(o)
    return store:copy(o.key, dst .. o.key:sub(#src + 1))
  end, { concurrency = (opts and opts.concurrency) or 16 })
  local out = { copied = 0, failures = {} }
  for _ in pairs(results) do out.copied = out.copied + 1 end
  for _, f in ipairs(failures) do
    out.failures[#out.failures + 1] = failure(f.item and f.item.key, f.error)
  end
  return out
end

-- delete_prefix(store, prefix, {concurrency}) -> { deleted = n, failures } | nil, err
-- The prefix must not be empty (no whole-bucket deletes by accident).
function M.delete_prefix(store, prefix, opts)
  local ok, err = M.check_key(prefix, "prefix", true)
  if not ok then return nil, err end
  if prefix == "" then return nil, M.error("invalid_key", "delete_prefix needs a non-empty prefix") end
  local listing, lerr = store:list(prefix)
  if not listing then return nil, lerr end
  local keys = {}
  for i, o in ipairs(listing.objects) do keys[i] = o.key end
  if #keys == 0 then return { deleted = 0, failures = {} } end
  return store:delete_many(keys, opts)
end

-- Content types by file extension, for uploads that do not say.
local types = {
  js = "text/javascript", json = "application/json", html = "text/html", css = "text/css",
  txt = "text/plain", md = "text/markdown", py = "text/x-python", go = "text/x-go",
  mod = "text/plain", sum = "text/plain", toml = "text/plain", yaml = "text/yaml", yml = "text/yaml",
  png = "image/png", svg = "image/svg+xml", sh = "text/x-shellscript",
}
function M.content_type(key)
  local ext = key:match("%.([%w]+)$")
  return ext and types[ext:lower()] or "application/octet-stream"
end

return M
