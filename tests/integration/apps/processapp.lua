-- processapp: the app test_process.py runs against: devex.process (spawn,
-- wait, stop, kill, on_exit, free_port, kill_pid, alive). Handles are kept in
-- a table by pid so later requests can act on them; on_exit records and a
-- global event sequence let the test assert on order, not on time.
local framework = require("devex.app")
local process = require("devex.process")
local json = require("devex.json")
local runtime = require("devex.runtime")

local app = framework.new()
require("routes.health")(app)

local gen = runtime.generation()
local handles = {} -- pid -> handle
local exits = {}   -- on_exit records, in the order they ran
local seq = 0
local function next_seq() seq = seq + 1; return seq end

local function nul(v) if v == nil then return json.null end return v end

local function errtable(err)
  if err == nil then return json.null end
  return { code = err.code, message = err.message }
end

local function handle_of(req)
  local h = handles[tonumber(req.params.pid)]
  if not h then framework.error(404, "no such handle") end
  return h
end

local function spawn_from(body)
  local opts = {
    command = body.command, args = body.args, cwd = body.cwd, env = body.env,
    inherit_env = body.inherit_env, stdout = body.stdout, stderr = body.stderr,
  }
  if body.record then
    opts.on_exit = function(code, signal, pid)
      exits[#exits + 1] = { pid = pid, code = code, signal = nul(signal), seq = next_seq(), generation = gen }
    end
  end
  return process.spawn(opts)
end

-- POST /spawn {command, args, cwd, env, inherit_env, stdout, stderr, record, wait, timeout, hold_file}
app:post("/spawn", function(req)
  local body = req:json()
  -- hold_file: a Lua io.open file (fopen: no O_CLOEXEC) open during the spawn
  local held = body.hold_file and assert(io.open(body.hold_file, "w"))
  local h, err = spawn_from(body)
  if held then held:close() end
  if not h then return 200, { error = errtable(err) } end
  handles[h.pid] = h
  if body.wait then
    local code, signal = h:wait(body.timeout)
    if code == nil then
      return 200, { pid = h.pid, error = errtable(signal), running = h:running() }
    end
    return 200, { pid = h.pid, code = code, signal = nul(signal), running = h:running() }
  end
  return 200, { pid = h.pid, running = h:running() }
end)

app:post("/wait/:pid", function(req)
  local h = handle_of(req)
  local body = req.body ~= "" and req:json() or {}
  local code, signal = h:wait(body.timeout)
  if code == nil then return 200, { error = errtable(signal), running = h:running() } end
  return 200, { code = code, signal = nul(signal), running = h:running(), seq = next_seq() }
end)

-- POST /stop/:pid {grace}: seq numbers around the stop show what happened first
app:post("/stop/:pid", function(req)
  local h = handle_of(req)
  local body = req.body ~= "" and req:json() or {}
  local started = next_seq()
  local code, signal = h:stop(body.grace)
  return 200, { code = code, signal = nul(signal), running = h:running(), started = started, finished = next_seq() }
end)

app:post("/kill/:pid", function(req)
  local h = handle_of(req)
  local body = req.body ~= "" and req:json() or {}
  local ok, err = h:kill(body.signal, body.group)
  return 200, { ok = nul(ok), error = errtable(err) }
end)

app:get("/running/:pid", function(req)
  return 200, { running = handle_of(req):running() }
end)

-- drop the handle: the child keeps running and is reaped without it
app:post("/forget/:pid", function(req)
  handles[tonumber(req.params.pid)] = nil
  collectgarbage()
  collectgarbage()
  return 200, { ok = true }
end)

app:get("/exits", function()
  return 200, { exits = json.array(exits), generation = gen }
end)

app:get("/free_port", function()
  local port, err = process.free_port()
  return 200, { port = nul(port), error = errtable(err) }
end)

app:post("/kill_pid", function(req)
  local body = req:json()
  local ok, err = process.kill_pid(body.pid, body.signal, body.group)
  return 200, { ok = nul(ok), error = errtable(err) }
end)

app:get("/alive/:pid", function(req)
  return 200, { alive = process.alive(tonumber(req.params.pid)) }
end)

-- POST /many {n, command, args, record}: n children at once, all waited for;
-- every third handle is dropped before its child exits.
app:post("/many", function(req)
  local body = req:json()
  local hs, codes = {}, {}
  for i = 1, body.n do
    local h, err = spawn_from(body)
    if not h then return 500, { error = errtable(err) } end
    hs[i] = h
  end
  for i = 1, body.n do
    if i % 3 == 0 then
      hs[i] = nil
    else
      codes[#codes + 1] = (hs[i]:wait())
    end
  end
  collectgarbage()
  collectgarbage()
  return 200, { codes = json.array(codes) }
end)

-- bad arguments raise (a programming error), OS failures return nil, err
app:post("/bad-args", function(req)
  local results = {}
  for _, opts in ipairs({ {}, { command = 42 }, { command = "x", env = { ["A=B"] = "1" } },
                          { command = "x", on_exit = 5 }, { command = "x", stdout = {} } }) do
    local ok, e = pcall(process.spawn, opts)
    results[#results + 1] = { ok = ok, error = tostring(e) }
  end
  local ok, e = pcall(process.kill_pid, 1, "TERM")
  results[#results + 1] = { ok = ok, error = tostring(e) }
  ok, e = pcall(process.kill_pid, 12345, "NOPE")
  results[#results + 1] = { ok = ok, error = tostring(e) }
  return 200, { results = results }
end)

app:get("/generation", function() return 200, { generation = gen } end)

return app
