-- redisapp: the app test_redis.py runs against a private redis-server.
-- The Redis URL comes from $DEVEX_TEST_REDIS_URL (set by the test); a request
-- body may name another URL ("url") and a command timeout in seconds
-- ("timeout"). Failures map to statuses by err.code, with a JSON body
-- {error=, code=}: unavailable 503, timeout 504, redis (an error reply) 502,
-- invalid 400.
local framework = require("devex.app")
local redis = require("devex.redis")
local task = require("devex.task")
local json = require("devex.json")

local app = framework.new()

require("routes.health")(app)

local DEFAULT_URL = os.getenv("DEVEX_TEST_REDIS_URL")

local STATUS = { unavailable = 503, timeout = 504, redis = 502, invalid = 400 }

local function fail(err)
  return STATUS[err.code] or 500, { error = tostring(err), code = err.code, message = err.message }
end

-- $DEVEX_TEST_REDIS_CA: the CA file for a rediss:// URL (bench_redis_tls.sh)
local CA = os.getenv("DEVEX_TEST_REDIS_CA")

local function client(opts)
  local url = (opts and opts.url) or DEFAULT_URL
  local r, err = redis.connect(url, { timeout = opts and opts.timeout,
    ca_file = CA and type(url) == "string" and url:sub(1, 9) == "rediss://" and CA or nil })
  if not r then framework.error(fail(err)) end
  return r
end

-- What Lua saw, for assertions JSON alone cannot make.
local function describe(v)
  local d = { lua_type = type(v), is_null = v == redis.null }
  if type(v) == "string" then d.len = #v end
  if type(v) == "number" then d.math_type = math.type(v) end
  if type(v) == "table" then
    d.len = #v
    d.is_error = getmetatable(v) ~= nil and v.code ~= nil
  end
  return d
end

-- POST /call {args=[cmd, ...], url=?, timeout=?} -> {reply=, seen=} | failure
app:post("/call", function(req)
  local b = req:json()
  local r = client(b)
  local reply, err = r:call(table.unpack(b.args))
  if reply == nil then return fail(err) end
  return 200, { reply = reply, seen = describe(reply) }
end)

-- POST /pipeline {commands=[[...], ...], url=?, timeout=?} -> {replies=, n=, errors=}
-- An error reply stays in its slot (as {code=, message=}); errors lists their indexes.
app:post("/pipeline", function(req)
  local b = req:json()
  local r = client(b)
  local replies, err = r:pipeline(b.commands)
  if replies == nil then return fail(err) end
  local out, errors = {}, {}
  for i = 1, #b.commands do
    local v = replies[i]
    if type(v) == "table" and getmetatable(v) ~= nil and v.code then
      errors[#errors + 1] = i
      v = { code = v.code, message = v.message }
    end
    out[i] = v == nil and json.null or v
  end
  return 200, { replies = json.array(out), n = #replies, errors = json.array(errors) }
end)

-- POST /pipeline-generated {n=} : n commands built here (SET/GET/INCR/a
-- failing INCR), so a large pipeline needs no large request body.
app:post("/pipeline-generated", function(req)
  local b = req:json()
  local r = client(b)
  local prefix = b.prefix or "pg"
  local cmds = {}
  for i = 1, b.n do
    local k = i % 4
    if k == 1 then cmds[i] = { "SET", prefix .. ":" .. i, tostring(i) }
    elseif k == 2 then cmds[i] = { "GET", prefix .. ":" .. (i - 1) }
    elseif k == 3 then cmds[i] = { "INCR", prefix .. ":" .. (i - 2) }
    else cmds[i] = { "INCR", "notanumber:" .. prefix } end -- an error reply (set by the test)
  end
  local replies, err = r:pipeline(cmds)
  if replies == nil then return fail(err) end
  local out = {}
  for i = 1, b.n do
    local v = replies[i]
    if type(v) == "table" and v.code then v = { code = v.code, message = v.message } end
    out[i] = v
  end
  return 200, { replies = out, n = #replies }
end)

-- POST /eval {script=, keys=[], args=[]} -> {reply=} | failure
app:post("/eval", function(req)
  local b = req:json()
  local r = client(b)
  local reply, err = r:eval(b.script, b.keys or {}, table.unpack(b.args or {}))
  if reply == nil then return fail(err) end
  return 200, { reply = reply, seen = describe(reply) }
end)

-- GET /connect?url= : redis.connect only (the connection is made in the background)
app:get("/connect", function(req)
  local r, err = redis.connect(req.query.url)
  if not r then return fail(err) end
  return 200, { status = r:status() }
end)

-- POST /status {url=} -> {status=, last_error=}
app:post("/status", function(req)
  local b = req:json()
  local r = client(b)
  local st, last = r:status()
  return 200, { status = st, last_error = last }
end)

-- GET /kv/:key : one SET and one GET of a value unique to this request.
local counter = 0
app:get("/kv/:key", function(req)
  counter = counter + 1
  local r = client({ timeout = tonumber(req.query.timeout) })
  local value = req.id .. ":" .. counter
  local ok, err = r:call("SET", req.params.key, value)
  if ok == nil then return fail(err) end
  local got, err2 = r:call("GET", req.params.key)
  if got == nil then return fail(err2) end
  if got ~= value then return 500, { error = "read back another value", want = value, got = got } end
  return 200, { value = got }
end)

-- GET /get/:key : one GET.
app:get("/get/:key", function(req)
  local r = client({ timeout = tonumber(req.query.timeout) })
  local v, err = r:call("GET", req.params.key)
  if v == nil then return fail(err) end
  return 200, { value = v }
end)

-- POST /queued-timeout {sleep=, timeout=} : on ONE connection, a DEBUG SLEEP
-- (long client timeout) is sent first from a child task, then GET a with a
-- short timeout. Redis answers in order, so the GET is late: "timeout". Then
-- GET b on the same connection must return b's value (no reply mix-up).
app:post("/queued-timeout", function(req)
  local b = req:json()
  local slow = client({ url = b.url, timeout = 30 })
  local fast = client({ url = b.url, timeout = b.timeout })
  local id1 = slow:call("CLIENT", "ID")
  local sleeper = task.spawn(function() return slow:call("DEBUG", "SLEEP", tostring(b.sleep)) end)
  local v, err = fast:call("GET", "a")
  local ok, slept = sleeper:wait()
  local after, err2 = fast:call("GET", "b")
  local id2 = fast:call("CLIENT", "ID")
  return 200, {
    first = v ~= nil and v or json.null,
    first_error = err and { code = err.code, message = err.message } or json.null,
    sleeper_ok = ok, slept = slept,
    after = after ~= nil and after or json.null,
    after_error = err2 and { code = err2.code, message = err2.message } or json.null,
    same_connection = id1 == id2, id1 = id1, id2 = id2,
  }
end)

-- POST /call-then-pipeline {url=, timeout=, args=, commands=} : r:call(args)
-- then at once r:pipeline(commands), from the call's reply callback.
app:post("/call-then-pipeline", function(req)
  local b = req:json()
  local r = client(b)
  local v, err = r:call(table.unpack(b.args))
  local replies, err2 = r:pipeline(b.commands)
  local function e(x) return x and { code = x.code, message = x.message } or json.null end
  return 200, { call = v == nil and json.null or v, call_error = e(err),
                pipeline = replies or json.null, pipeline_error = e(err2) }
end)

-- GET /plain-coroutine : a yielding primitive inside coroutine.wrap must raise.
app:get("/plain-coroutine", function()
  local r = client()
  coroutine.wrap(function() r:call("PING") end)()
  return 200, { unexpected = "no error" }
end)

return app
