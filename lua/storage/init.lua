-- storage: one API over two drivers, "s3" (storage.s3: any S3-compatible
-- store) and "fs" (storage.fs: a local directory as the bucket, for
-- development).
--
--   local storage = require("storage")
--   local store, err = storage.open()          -- from devex.config, or storage.open(conf)
--
-- Driver choice: conf.storage.driver ("s3" | "fs"); when absent, "s3" if
-- conf.s3.endpoint is set, else "fs" with conf.storage.dir.
--   storage = { driver = "fs", dir = "/var/lib/devexd/storage" }
--   s3 = { endpoint, region, bucket, access_key, secret_key, session_token,
--          addressing = "path" | "virtual", max_attempts, timeout }
--     (storage.s3 = {...} overrides single s3 fields)
--
-- Every store has these methods; failures return nil, err with err.code
-- ("NoSuchKey" (status 404), "AccessDenied", "SignatureDoesNotMatch", ...,
-- "unavailable", "timeout", "invalid_key", "io", "bad_response"):
--   store:head_bucket() -> true
--   store:head(key) -> { size, etag, content_type, last_modified }
--   store:get(key) -> body, info
--   store:put(key, data, {content_type}) -> { etag };  store:put_file(key, path, opts)
--   store:copy(src_key, dst_key) -> { etag }
--   store:delete(key) -> true                (a missing key is not an error)
--   store:list(prefix, {delimiter}) -> { objects = {{key, size, etag, last_modified}...}, prefixes = {...} }
--                                              (all pages, in key order)
--   store:delete_many(keys) -> { deleted = n, failures = {{key, error}...} }
--   store:copy_prefix(src, dst, {concurrency = 16}) -> { copied = n, failures = {{key, error}...} }
--   store:delete_prefix(prefix, {concurrency}) -> { deleted = n, failures = {...} }
--   store:presign(method, key, expires) -> url   (s3 only: a presigned URL for
--                                              that one method and key, valid
--                                              `expires` s; the fs driver has no
--                                              presign: its store.driver is "fs"
--                                              and the runner storage broker
--                                              serves the bytes itself)
-- ETags are hex MD5 strings without quotes (single-part objects).
-- Keys: UTF-8, 1..1024 bytes, no control characters, no leading '/', no
-- empty, "." or ".." segment (storage.common.check_key).
local M = {}

function M.open(conf)
  if conf == nil then conf = require("devex.config").get() end
  local sconf = conf.storage or {}
  local s3conf = conf.s3 or {}
  local driver = sconf.driver or ((s3conf.endpoint and s3conf.endpoint ~= "") and "s3" or "fs")
  if driver == "s3" then
    local merged = {}
    for k, v in pairs(s3conf) do merged[k] = v end
    for k, v in pairs(sconf.s3 or {}) do merged[k] = v end
    return require("storage.s3").new(merged)
  elseif driver == "fs" then
    return require("storage.fs").new({ dir = sconf.dir })
  end
  return nil, require("storage.common").error("invalid", "storage.driver must be \"s3\" or \"fs\"")
end

return M
