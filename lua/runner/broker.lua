-- runner.broker: the agent's client of devexd's storage broker
-- (routes.runner_storage): list, upload URLs, sync, restore progress, and the
-- transfers of single files to and from the URLs devexd hands out. The agent
-- holds no storage credential: every call carries only RUNNER_TOKEN, and
-- only to devexd. A URL devexd returns is either presigned (S3: absolute,
-- sent without the token, which must not leak to the store) or, with the fs
-- driver, path-absolute ("/api/runner/<id>/blob/..."): joined to
-- CALLBACK_URL's origin and sent with the token.
local http = require("devex.http")
local json = require("devex.json")
local settings = require("runner.settings")
local timer = require("devex.timer")

local M = {}

-- CALLBACK_SOCKET: devexd reached over a Unix socket (single-host runtime);
-- the URL's host is then only a name
local function socket_opt(req)
  local sock = os.getenv("CALLBACK_SOCKET")
  if sock and sock ~= "" then req.unix_socket = sock end
  return req
end

local function auth()
  return "Bearer " .. settings.get().token
end

-- whether the agent can talk to devexd at all
function M.enabled()
  local s = settings.get()
  return s.callback_url ~= nil and s.token ~= nil
end

-- call(method, path, body_table) -> status, decoded body (or raw text) | nil, err
function M.call(method, path, body, timeout)
  local s = settings.get()
  -- STORAGE_VIA_DEVEXD=1: every transfer through devexd's blob routes (a
  -- sandboxed agent reaches nothing else)
  if s.via_devexd and (path == "/files" or path == "/uploads") then path = path .. "?via=devexd" end
  local headers = { authorization = auth(), accept = "application/json" }
  local text
  if body ~= nil then
    text = json.encode(body)
    headers["content-type"] = "application/json"
  end
  local res, err = http.request(socket_opt{
    method = method, url = s.callback_url .. path, body = text, headers = headers,
    timeout = timeout or 60, max_size = 64 * 1024 * 1024,
  })
  if not res then return nil, err end
  local decoded = res.body ~= "" and json.decode(res.body) or nil
  return res.status, decoded or res.body
end

-- the request for a URL of the broker's answer: origin and token for
-- devexd's own blob route, nothing added for a presigned one
local function target(url, req)
  if url:sub(1, 1) == "/" then
    local origin = settings.get().callback_url:match("^(https?://[^/]+)")
    req.url = origin .. url
    req.headers = req.headers or {}
    req.headers.authorization = auth()
    return socket_opt(req)
  end
  req.url = url
  return req
end

-- seconds a transfer of `size` bytes may take: generous (1 MB/s at worst)
local function budget(size) return 60 + (size or 0) / (1 << 20) end

-- A transfer is one PUT or GET of one key: repeating it is harmless, so a
-- transport error or a 5xx/429 answer is tried again (TRIES in all, 0.2 s
-- then 0.4 s apart) before the checkpoint or the restore fails. 100 final
-- checkpoints at once (bench_storm.py) lost about 3 uploads each time to
-- "select/poll returned error" from the store, and each such stop fell back
-- to the uploader container.
M.TRIES = 3
local function transfer(url, req)
  local res, err
  for i = 1, M.TRIES do
    res, err = http.request(target(url, req))
    if res and res.status < 500 and res.status ~= 429 then return res end
    if i < M.TRIES then timer.sleep(0.2 * 2 ^ (i - 1)) end
  end
  return res, err
end

-- put_file(url, path, size) -> true | nil, err (the file streamed from disk)
function M.put_file(url, path, size)
  local res, err = transfer(url, {
    method = "PUT", body_file = path, timeout = budget(size),
    headers = { ["content-type"] = "application/octet-stream" },
  })
  if not res then return nil, err end
  if res.status < 200 or res.status > 299 then
    return nil, "upload answered " .. res.status .. ": " .. res.body:sub(1, 200)
  end
  return true
end

-- get_file(url, path, size) -> true | nil, err (the body streamed to disk)
function M.get_file(url, path, size)
  local res, err = transfer(url, {
    method = "GET", output_file = path, timeout = budget(size),
    max_size = math.max((size or 0) + 1, 1 << 20),
  })
  if not res then return nil, err end
  if res.status ~= 200 then
    return nil, "download answered " .. res.status .. ": " .. res.body:sub(1, 200)
  end
  return true
end

return M
