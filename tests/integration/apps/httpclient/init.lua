-- httpclient: the test app of tests/integration/test_http_client.py. Each
-- route runs devex.http against upstream servers the test starts and answers
-- with JSON describing what Lua saw, so the test asserts on results, error
-- codes and the order of events rather than on timing.
local framework = require("devex.app")
local http = require("devex.http")
local json = require("devex.json")
local log = require("devex.log")
local timer = require("devex.timer")

local app = framework.new()

require("routes.health")(app)

local gates = os.getenv("DEVEXD_TEST_GATES")

local function gate_open(name)
  local f = io.open(gates .. "/" .. name, "r")
  if f then f:close(); return true end
  return false
end

local function wait_gate(name)
  for _ = 1, 3000 do
    if gate_open(name) then return true end
    timer.sleep(0.01)
  end
  return false
end

local function describe_error(err)
  return { ok = false, code = err.code, message = err.message, curl_code = err.curl_code, str = tostring(err) }
end

local function describe(res, err)
  if not res then return describe_error(err) end
  return { ok = true, status = res.status, headers = res.headers, body = res.body, http_version = res.http_version }
end

-- The options come as the JSON request body (any http.request option).
local function options(req)
  return req:json()
end

-- GET /fetch?url=...&timeout=...&max_size=...
app:get("/fetch", function(req)
  local q = req.query
  local res, err = http.request{
    url = q.url,
    timeout = tonumber(q.timeout),
    max_size = q.max_size and math.tointeger(tonumber(q.max_size)) or nil,
    ca_file = q.ca_file,
    http2 = q.http2 ~= "0",
  }
  return 200, describe(res, err)
end)

-- POST /fetch {options}: one http.request with exactly these options.
app:post("/fetch", function(req)
  return 200, describe(http.request(options(req)))
end)

-- POST /fetch-after-gate {gate=, options}: waits for the gate, then fetches;
-- logs "fetch waiting" first so the test knows every handler is parked.
app:post("/fetch-after-gate", function(req)
  local b = req:json()
  log.info("fetch waiting", { gate = b.gate })
  if not wait_gate(b.gate) then return 504, { error = "gate never opened" } end
  return 200, describe(http.request(b.options))
end)

-- POST /misuse {options}: the Lua error http.request raises, if any.
app:post("/misuse", function(req)
  local opts = req:json()
  local ok, e = pcall(http.request, opts)
  return 200, { raised = not ok, error = not ok and tostring(e) or nil }
end)

-- POST /misuse-headers-string: a headers value that is not a table.
app:post("/misuse-raw", function(req)
  local which = req.query.which
  local opts
  if which == "headers-not-table" then opts = { url = "http://127.0.0.1:1/", headers = "x" }
  elseif which == "no-opts" then opts = nil
  elseif which == "numeric-timeout-string" then opts = { url = "http://127.0.0.1:1/", timeout = "5" }
  end
  local ok, e = pcall(http.request, opts)
  return 200, { raised = not ok, error = not ok and tostring(e) or nil }
end)

-- A plain coroutine cannot wait: http.request must raise there.
app:get("/in-coroutine", function(req)
  local co = coroutine.wrap(function() return http.request{ url = req.query.url } end)
  local ok, e = pcall(co)
  return 200, { raised = not ok, error = not ok and tostring(e) or nil }
end)

-- POST /stream {options}: reads every line to the end.
app:post("/stream", function(req)
  local s, err = http.stream(options(req))
  if not s then return 200, describe_error(err) end
  local lines = {}
  local last_err
  while true do
    local line, e = s:read_line()
    if not line then last_err = e; break end
    lines[#lines + 1] = line
  end
  s:close()
  return 200, { ok = true, status = s.status, headers = s.headers, http_version = s.http_version, lines = lines,
                err = last_err and describe_error(last_err) or nil }
end)

-- GET /stream-ack?url=&ack=: reads the first line, then calls the upstream's
-- ack URL (the upstream sends line 2 only after that request arrived), then
-- reads the rest. A line delivered late would deadlock: the test times out.
app:get("/stream-ack", function(req)
  local s, err = http.stream{ url = req.query.url, timeout = 20 }
  if not s then return 200, describe_error(err) end
  local events = {}
  local first, e1 = s:read_line()
  events[#events + 1] = { line = first, err = e1 and e1.code }
  local ack, aerr = http.request{ url = req.query.ack, timeout = 10 }
  events[#events + 1] = { ack = ack and ack.status or aerr.code }
  while true do
    local line, e = s:read_line()
    events[#events + 1] = { line = line, err = e and e.code }
    if not line then break end
  end
  return 200, { ok = true, status = s.status, events = events }
end)

-- GET /stream-close?url=&how=close|gc|tbc: reads one line, then drops the
-- stream while the upstream is still sending.
app:get("/stream-close", function(req)
  local how = req.query.how
  local first
  if how == "tbc" then
    local s <close> = assert(http.stream{ url = req.query.url, timeout = 20 })
    first = s:read_line()
  else
    local s = assert(http.stream{ url = req.query.url, timeout = 20 })
    first = s:read_line()
    if how == "close" then
      s:close()
      local ok, e = pcall(s.read_line, s)
      if ok then return 500, { error = "read after close did not raise" } end
      s:close() -- twice is fine
    end
    s = nil
  end
  collectgarbage()
  collectgarbage()
  return 200, { ok = true, first = first }
end)

-- GET /stream-two-readers?url=: the handler reads line one, then a spawned
-- task parks in read_line (the upstream holds line two); a second reader
-- raises, and close() wakes the parked one with code "cancelled".
app:get("/stream-two-readers", function(req)
  local ok_task, task = pcall(require, "devex.task")
  if not ok_task then return 200, { skip = "devex.task is not available" } end
  local s = assert(http.stream{ url = req.query.url, timeout = 20 })
  local first = s:read_line()
  local reader = task.spawn(function() return s:read_line() end)
  local ok, e = pcall(s.read_line, s)
  s:close()
  local rok, line, rerr = reader:wait()
  return 200, { first = first, second_raised = not ok, second_error = tostring(e), reader_ok = rok,
                reader_line = line, reader_err = rerr and rerr.code, reader_str = rerr and tostring(rerr) }
end)

-- GET /hold-fetch?url=: an in-flight request that the test abandons by
-- shutting devexd down; logs "fetch started" first.
app:get("/hold-fetch", function(req)
  log.info("fetch started", { url = req.query.url })
  if req.query.stream then
    local s = http.stream{ url = req.query.url, timeout = 60 }
    if s then s:read_line(); s:read_line() end
    return 200, { ok = true }
  end
  return 200, describe(http.request{ url = req.query.url, timeout = 60 })
end)

return app
