-- storage.s3: the S3 driver of the storage API (see storage/init.lua), on
-- devex.http for I/O and devex.s3 (C) for SigV4, XML and MD5. Works with AWS
-- S3, Cloudflare R2 (region "auto") and MinIO; path-style addressing by
-- default, virtual-hosted with addressing = "virtual" (the default for
-- *.amazonaws.com endpoints).
--
-- Retries: 5xx, SlowDown/RequestTimeout and connection failures are retried
-- (max_attempts, default 4) with exponential backoff and full jitter; other
-- 4xx never are. A server that cannot be reached gives code "unavailable"
-- (or "timeout"); an S3 error gives {status, code = "NoSuchKey" | ...,
-- message, request_id}.
local s3c = require("devex.s3")
local crypto = require("devex.crypto")
local metrics = require("devex.metrics") -- counting hooks in Client:request
local http = require("devex.http")
local timer = require("devex.timer")
local log = require("devex.log")
local tasks = require("devex.tasks")
local common = require("storage.common")

local M = {}
local Client = {}
Client.__index = Client

local check_key, E = common.check_key, common.error

-- new{endpoint, region, bucket, access_key, secret_key, session_token,
--     addressing = "path" | "virtual", max_attempts = 4, backoff = 0.05,
--     timeout = 60, connect_timeout = 5} -> client | nil, err
function M.new(conf)
  if type(conf) ~= "table" then return nil, E("invalid", "s3: configuration table expected") end
  for _, k in ipairs({ "endpoint", "bucket", "access_key", "secret_key" }) do
    if type(conf[k]) ~= "string" or conf[k] == "" then return nil, E("invalid", "s3: " .. k .. " is required") end
  end
  local scheme, hostport, base = conf.endpoint:match("^(https?)://([^/?#]+)(.*)$")
  if not scheme then return nil, E("invalid", "s3: endpoint must be an http(s) URL") end
  base = base:gsub("/+$", "")
  local addressing = conf.addressing
  if addressing == nil then
    addressing = hostport:find("amazonaws%.com$") and "virtual" or "path"
  end
  if addressing ~= "path" and addressing ~= "virtual" then
    return nil, E("invalid", "s3: addressing must be \"path\" or \"virtual\"")
  end
  return setmetatable({
    driver = "s3",
    scheme = scheme, hostport = hostport, base = base,
    bucket = conf.bucket, region = conf.region or "us-east-1",
    access_key = conf.access_key, secret_key = conf.secret_key,
    session_token = conf.session_token,
    virtual = addressing == "virtual",
    max_attempts = conf.max_attempts or 4,
    backoff = conf.backoff or 0.05,
    timeout = conf.timeout or 60,
    connect_timeout = conf.connect_timeout or 5,
  }, Client)
end

local RETRY_CODES = { SlowDown = true, RequestTimeout = true, InternalError = true, ServiceUnavailable = true }
local TRANSPORT_RETRY = { connect = true, timeout = true, protocol = true, resolve = true }

-- An error value from an S3 answer that is not 2xx.
local function answer_error(res, key)
  local x = res.body and res.body ~= "" and s3c.parse_error(res.body)
  local rid = res.headers["x-amz-request-id"]
  if x and x.code then
    return E(x.code, x.message or x.code, res.status, { request_id = x.request_id or rid, key = key })
  end
  local code = ({ [404] = key and "NoSuchKey" or "NoSuchBucket", [403] = "AccessDenied", [400] = "BadRequest",
    [503] = "ServiceUnavailable", [500] = "InternalError" })[res.status] or ("http_" .. res.status)
  return E(code, "S3 answered " .. res.status, res.status, { request_id = rid, key = key })
end

-- One signed request, retried as described above. key == nil: the bucket.
-- o = { params = {{name, value}...}, headers = {}, body = "" } -> res | nil, err
function Client:request(method, key, o)
  o = o or {}
  local host, path = self.hostport, self.base
  if self.virtual then
    host = self.bucket .. "." .. self.hostport
    path = path .. "/" .. (key or "")
  else
    path = path .. "/" .. self.bucket .. (key and ("/" .. key) or "")
  end
  local last
  for attempt = 1, self.max_attempts do
    local headers = {}
    for k, v in pairs(o.headers or {}) do headers[k] = v end
    headers.host = host
    local signed, serr = s3c.sign{
      method = method, host = host, path = path, params = o.params, headers = headers, body = o.body or "",
      payload_hash = o.payload_hash,
      access_key = self.access_key, secret_key = self.secret_key, session_token = self.session_token,
      region = self.region, service = "s3",
    }
    if not signed then return nil, E("invalid", "cannot sign: " .. tostring(serr.message)) end
    local t0 = metrics.now() -- metrics: each attempt
    local res, herr = http.request{
      url = self.scheme .. "://" .. host .. signed.target,
      method = method, headers = signed.headers, body = o.body, body_file = o.body_file,
      timeout = self.timeout, connect_timeout = self.connect_timeout, max_size = o.max_size,
    }
    metrics.counter("devex_s3_requests_total", { method = method, status = res and res.status or "error" })
    metrics.observe("devex_s3_request_duration_seconds", { method = method }, metrics.now() - t0)
    local retry
    if not res then
      retry = TRANSPORT_RETRY[herr.code]
      last = E(herr.code == "timeout" and "timeout" or "unavailable",
        "S3 at " .. self.scheme .. "://" .. self.hostport .. ": " .. tostring(herr), nil, { cause = herr.code })
    elseif res.status >= 200 and res.status < 300 then
      return res
    else
      last = answer_error(res, key)
      retry = res.status >= 500 or RETRY_CODES[last.code]
    end
    if not retry or attempt == self.max_attempts then break end
    log.warn("s3 request retried", { method = method, attempt = attempt, code = last.code, status = last.status })
    -- exponential backoff, full jitter, capped at 2 s
    local cap = math.min(2, self.backoff * 2 ^ (attempt - 1))
    timer.sleep(cap / 2 + math.random() * cap / 2)
  end
  metrics.counter("devex_s3_request_errors_total", { method = method, code = last and last.code or "error" })
  return nil, last
end

local function unquote(etag) return etag and (etag:gsub('"', "")) or nil end

function Client:head_bucket()
  local res, err = self:request("HEAD", nil)
  if not res then return nil, err end
  return true
end

-- head(key) -> { size, etag, content_type, last_modified } | nil, err
function Client:head(key)
  local ok, err = check_key(key)
  if not ok then return nil, err end
  local res
  res, err = self:request("HEAD", key)
  if not res then return nil, err end
  return { size = tonumber(res.headers["content-length"]) or 0, etag = unquote(res.headers["etag"]),
    content_type = res.headers["content-type"], last_modified = res.headers["last-modified"] }
end

-- list(prefix, {delimiter=, page_size=}) -> { objects = {{key, size, etag, last_modified}...},
-- prefixes = {"a/"...} } with every page followed | nil, err
function Client:list(prefix, opts)
  prefix = prefix or ""
  local ok, err = check_key(prefix, "prefix", true)
  if not ok then return nil, err end
  opts = opts or {}
  local out = { objects = {}, prefixes = {} }
  local token
  for _ = 1, 1000000 do
    local params = { { "list-type", "2" }, { "encoding-type", "url" } }
    if prefix ~= "" then params[#params + 1] = { "prefix", prefix } end
    if opts.delimiter then params[#params + 1] = { "delimiter", opts.delimiter } end
    if opts.page_size then params[#params + 1] = { "max-keys", tostring(opts.page_size) } end
    if token then params[#params + 1] = { "continuation-token", token } end
    local res, rerr = self:request("GET", nil, { params = params })
    if not res then return nil, rerr end
    local page, perr = s3c.parse_list(res.body)
    if not page then return nil, perr end
    for _, c in ipairs(page.contents) do
      c.etag = unquote(c.etag)
      out.objects[#out.objects + 1] = c
    end
    for _, p in ipairs(page.common_prefixes) do out.prefixes[#out.prefixes + 1] = p end
    if not page.is_truncated then return out end
    if not page.next_token or page.next_token == token then
      return nil, E("bad_response", "truncated listing without a new continuation token")
    end
    token = page.next_token
  end
  return nil, E("bad_response", "listing does not end")
end

-- get(key) -> body, { size, etag, content_type, last_modified } | nil, err
function Client:get(key, opts)
  local ok, err = check_key(key)
  if not ok then return nil, err end
  local res
  res, err = self:request("GET", key, { max_size = opts and opts.max_size })
  if not res then return nil, err end
  return res.body, { size = #res.body, etag = unquote(res.headers["etag"]),
    content_type = res.headers["content-type"], last_modified = res.headers["last-modified"] }
end

-- put(key, data, {content_type=}) -> { etag } | nil, err. Content-MD5 is sent, so
-- S3 refuses a body damaged on the way.
function Client:put(key, data, opts)
  local ok, err = check_key(key)
  if not ok then return nil, err end
  if type(data) ~= "string" then error("s3 put: data must be a string", 2) end
  local res
  res, err = self:request("PUT", key, { body = data, headers = {
    ["content-type"] = (opts and opts.content_type) or common.content_type(key),
    ["content-md5"] = s3c.md5_base64(data),
  } })
  if not res then return nil, err end
  return { etag = unquote(res.headers["etag"]) or s3c.md5_hex(data) }
end

-- put_file(key, path, {max_bytes=, content_type=}): put with the content
-- of a local file, streamed from the file (never held in memory whole). The
-- payload is UNSIGNED-PAYLOAD in the signature (hashing it would mean a
-- second full read); S3 checks it against Content-MD5 instead. With
-- max_bytes a larger file is refused ("TooLarge") before anything is sent.
function Client:put_file(key, path, opts)
  local ok, err = check_key(key)
  if not ok then return nil, err end
  local md5, size = s3c.md5_file(path)
  if not md5 then return nil, E("io", "cannot read " .. path .. ": " .. tostring(size)) end
  if opts and opts.max_bytes and size > opts.max_bytes then
    return nil, E("TooLarge", string.format("%s holds more than %d bytes", path, opts.max_bytes), 413)
  end
  local b64 = crypto.b64url(crypto.unhex(md5)):gsub("-", "+"):gsub("_", "/") .. "=="
  local res
  res, err = self:request("PUT", key, { body_file = path, payload_hash = "UNSIGNED-PAYLOAD", headers = {
    ["content-type"] = (opts and opts.content_type) or common.content_type(key),
    ["content-md5"] = b64,
  } })
  if not res then return nil, err end
  return { etag = unquote(res.headers["etag"]) or md5 }
end

-- copy(src, dst) -> { etag } | nil, err (CopyObject within the bucket)
function Client:copy(src, dst)
  local ok, err = check_key(src, "source key")
  if not ok then return nil, err end
  ok, err = check_key(dst, "destination key")
  if not ok then return nil, err end
  local res
  res, err = self:request("PUT", dst, { headers = {
    ["x-amz-copy-source"] = s3c.uri_encode("/" .. self.bucket .. "/" .. src, false),
  } })
  if not res then
    if err.code == "NoSuchKey" then err.key = src end
    return nil, err
  end
  -- a 200 may still carry an error (S3 sends headers before the copy ends)
  local x = s3c.parse_error(res.body)
  if x then return nil, E(x.code or "InternalError", x.message, res.status, { request_id = x.request_id, key = src }) end
  local r, perr = s3c.parse_copy_result(res.body)
  if not r then return nil, perr end
  r.etag = unquote(r.etag)
  return r
end

-- delete(key) -> true | nil, err (deleting a missing key succeeds, as on S3)
function Client:delete(key)
  local ok, err = check_key(key)
  if not ok then return nil, err end
  local res
  res, err = self:request("DELETE", key)
  if not res then return nil, err end
  return true
end

-- delete_many(keys, {concurrency=4}) -> { deleted = n, failures = {{key, error}...} } | nil, err
-- DeleteObjects in batches of 1000 keys (quiet mode), with Content-MD5. A
-- batch that fails as a whole fails each of its keys.
function Client:delete_many(keys, opts)
  local batches, cur = {}, nil
  for i, k in ipairs(keys) do
    local ok, err = check_key(k)
    if not ok then return nil, err end
    if (i - 1) % 1000 == 0 then cur = {}; batches[#batches + 1] = cur end
    cur[#cur + 1] = k
  end
  local out = { deleted = 0, failures = {} }
  local results, failures = tasks.map(batches, function(batch)
    local body, md5 = s3c.delete_body(batch, true)
    if not body then return nil, md5 end
    local res, err = self:request("POST", nil, { params = { { "delete", "" } }, body = body, headers = {
      ["content-md5"] = md5, ["content-type"] = "application/xml" } })
    if not res then return nil, err end
    return s3c.parse_delete_result(res.body)
  end, { concurrency = (opts and opts.concurrency) or 4 })
  for i, batch in ipairs(batches) do
    local r = results[i]
    if r then
      for _, e in ipairs(r.errors) do
        out.failures[#out.failures + 1] = { key = e.key, error = E(e.code or "InternalError", e.message, nil, { key = e.key }) }
      end
      out.deleted = out.deleted + #batch - #r.errors
    end
  end
  for _, f in ipairs(failures) do
    for _, k in ipairs(f.item or {}) do out.failures[#out.failures + 1] = { key = k, error = f.error } end
  end
  return out
end

-- presign(method, key, expires) -> url | nil, err: a presigned URL (SigV4
-- query-string authentication, payload UNSIGNED-PAYLOAD) for exactly this
-- method ("GET", "PUT", "HEAD") and key, valid `expires` seconds (1..604800).
-- Whoever holds the URL can do that one request on that one key until then,
-- and nothing else; it carries no credential (the session token, when the
-- client has one, is a signed parameter bound to the same scope).
local PRESIGN_METHODS = { GET = true, PUT = true, HEAD = true }
function Client:presign(method, key, expires, opts)
  if not PRESIGN_METHODS[method] then return nil, E("invalid", "presign: method must be GET, PUT or HEAD") end
  local ok, err = check_key(key)
  if not ok then return nil, err end
  if math.type(expires) ~= "integer" or expires < 1 or expires > 604800 then
    return nil, E("invalid", "presign: expires must be an integer number of seconds in 1..604800")
  end
  local host, path = self.hostport, self.base
  if self.virtual then
    host = self.bucket .. "." .. self.hostport
    path = path .. "/" .. key
  else
    path = path .. "/" .. self.bucket .. "/" .. key
  end
  local signed, serr = s3c.presign{
    method = method, host = host, path = path, expires = expires,
    access_key = self.access_key, secret_key = self.secret_key, session_token = self.session_token,
    region = self.region, service = "s3", time = opts and opts.time,
  }
  if not signed then return nil, E("invalid", "cannot presign: " .. tostring(serr.message)) end
  return self.scheme .. "://" .. host .. signed.target
end

function Client:copy_prefix(src, dst, opts) return common.copy_prefix(self, src, dst, opts) end
function Client:delete_prefix(prefix, opts) return common.delete_prefix(self, prefix, opts) end

return M
