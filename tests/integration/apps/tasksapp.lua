-- tasksapp: the app test_tasks.py runs against: devex.task (spawn / wait /
-- done) and devex.tasks (all / map) inside request handlers. Every route
-- reports what Lua observed (orders, counters, messages) so the test asserts
-- on those rather than on time.
local framework = require("devex.app")
local task = require("devex.task")
local tasks = require("devex.tasks")
local timer = require("devex.timer")
local log = require("devex.log")
local json = require("devex.json")

local app = framework.new()

require("routes.health")(app)

-- table.pack(...) as JSON: {n=, values=[...]} with nil as null.
local function packed(t)
  local values = {}
  for i = 1, t.n do
    local v = t[i]
    if v == nil then v = json.null end
    values[i] = v
  end
  return { n = t.n, values = json.array(values) }
end

local function first_line(s)
  if type(s) ~= "string" then return s end
  return (s:match("^[^\n]*"))
end

-- GET /spawn-order: five children with different sleeps; wait() in spawn
-- order returns each child's results (or false, msg) regardless of the order
-- they finished in.
app:get("/spawn-order", function()
  local sleeps = { 0.05, 0.01, 0.03, 0, 0.02 }
  local finished = {}
  local handles = {}
  for i, s in ipairs(sleeps) do
    handles[i] = task.spawn(function(idx, secs, tag)
      timer.sleep(secs)
      finished[#finished + 1] = idx
      if idx == 3 then error("child 3 failed") end
      if idx == 5 then return nil, "nil first", tag end
      return idx, idx * 10, tag
    end, i, s, "tag" .. i)
  end
  local results = {}
  for i, h in ipairs(handles) do
    local r = table.pack(h:wait())
    local p = packed(r)
    if r[1] == false then p.values[2] = first_line(r[2]); p.traceback = r[2]:find("stack traceback", 1, true) ~= nil end
    results[i] = p
  end
  return 200, { results = results, finished = finished }
end)

-- GET /spawn-sync: a child that never yields is done when spawn returns;
-- wait() on it returns at once, and again on a second call.
app:get("/spawn-sync", function()
  local h = task.spawn(function(a, b) return a + b, "sum" end, 2, 3)
  local done_before = h:done()
  local r1 = table.pack(h:wait())
  local r2 = table.pack(h:wait())
  local slow = task.spawn(function() timer.sleep(0.01); return "slow" end)
  local slow_done_before = slow:done()
  local r3 = table.pack(slow:wait())
  return 200, { done_before = done_before, first = packed(r1), second = packed(r2),
                slow_done_before = slow_done_before, slow = packed(r3), slow_done_after = slow:done() }
end)

-- GET /all: tasks.all with a multi-value result, a failure, a sleeper and a
-- nested tasks.all.
app:get("/all", function()
  local out = tasks.all({
    function() return 1, 2 end,
    function() timer.sleep(0.01); error("all: second failed") end,
    function() timer.sleep(0.02); return "c" end,
    function()
      local inner = tasks.all({ function() timer.sleep(0.01); return "x" end, function() return "y" end })
      return inner[1][2] .. inner[2][2]
    end,
  })
  local res = {}
  for i, r in ipairs(out) do
    local p = packed(r)
    if r[1] == false then p.values[2] = first_line(r[2]) end
    res[i] = p
  end
  return 200, { results = res, count = #out, empty = #tasks.all({}) }
end)

-- GET /map?n=&c=&sleep= : tasks.map counting how many items run at once.
app:get("/map", function(req)
  local n = tonumber(req.query.n)
  local c = tonumber(req.query.c) -- nil: the default concurrency
  local secs = tonumber(req.query.sleep or "0.05")
  local items = {}
  for i = 1, n do items[i] = i * 3 end
  local running, max_running, calls = 0, 0, 0
  local seen_index_ok = true
  local results, failures = tasks.map(items, function(item, i)
    if items[i] ~= item then seen_index_ok = false end
    calls = calls + 1
    running = running + 1
    if running > max_running then max_running = running end
    timer.sleep(secs)
    running = running - 1
    return item * 2
  end, c and { concurrency = c } or nil)
  local present, correct = 0, true
  for i = 1, n do
    if results[i] ~= nil then present = present + 1 end
    if results[i] ~= items[i] * 2 then correct = false end
  end
  return 200, { max_running = max_running, present = present, correct = correct, calls = calls,
                failures = #failures, running_after = running, index_ok = seen_index_ok }
end)

-- GET /map-fail: item 3 raises, item 7 returns nil, err, item 9 raises a table.
app:get("/map-fail", function()
  local items = {}
  for i = 1, 10 do items[i] = "item" .. i end
  local results, failures = tasks.map(items, function(item, i)
    timer.sleep(0.001 * (10 - i))
    if i == 3 then error("bad " .. item) end
    if i == 7 then return nil, "soft failure of " .. item end
    if i == 9 then error({ reason = "table error" }) end
    return item:upper()
  end, { concurrency = 4 })
  local res = {}
  for i = 1, 10 do res[i] = results[i] == nil and json.null or results[i] end
  local fails = {}
  for k, f in ipairs(failures) do
    fails[k] = { index = f.index, item = f.item, error = type(f.error) == "table" and f.error.reason or f.error }
  end
  return 200, { results = res, failures = fails }
end)

-- GET /child-raises: children raise (before and after yielding); the parent
-- carries on, and learns of it only through wait().
app:get("/child-raises", function()
  local early = task.spawn(function() error("early child boom") end)
  local late = task.spawn(function() timer.sleep(0.01); error("late child boom") end)
  local ignored = task.spawn(function() timer.sleep(0.005); error("ignored child boom") end)
  local ok_child = task.spawn(function() timer.sleep(0.02); return "fine" end)
  timer.sleep(0.03) -- every child has ended by now
  local e_ok, e_msg = early:wait()
  local l_ok, l_msg = late:wait()
  local ok1, v1 = ok_child:wait()
  local parent_ok, perr = pcall(function() local h = task.spawn(error, "raised through pcall"); return h:wait() end)
  return 200, {
    early = { ok = e_ok, msg = first_line(e_msg) },
    late = { ok = l_ok, msg = first_line(l_msg) },
    fine = { ok = ok1, value = v1 },
    ignored_done = ignored:done(),
    parent_still_running = true,
    pcall_ok = parent_ok, pcall_value = perr,
  }
end)

-- GET /double-wait: two tasks waiting on one child is an error for the second.
app:get("/double-wait", function()
  local child = task.spawn(function() timer.sleep(0.02); return "child result" end)
  local waiter = task.spawn(function() return child:wait() end)
  local ok, err = pcall(child.wait, child)
  local w_ok, w_ok2, w_val = waiter:wait()
  return 200, { second_wait_ok = ok, second_wait_error = tostring(err), waiter = { w_ok, w_ok2, w_val } }
end)

-- GET /fire-and-forget?tag= : the child outlives the request that spawned it.
app:get("/fire-and-forget", function(req)
  local tag = req.query.tag
  task.spawn(function()
    timer.sleep(0.05)
    log.info("child finished", { tag = tag })
  end)
  return 200, { spawned = true }
end)

-- GET /plain-coroutine/:what : a yielding primitive inside coroutine.wrap.
app:get("/plain-coroutine/:what", function(req)
  local what = req.params.what
  if what == "sleep" then
    coroutine.wrap(function() timer.sleep(0.01) end)()
  elseif what == "wait" then
    local h = task.spawn(function() timer.sleep(0.01) end)
    coroutine.wrap(function() h:wait() end)()
  elseif what == "map" then
    coroutine.wrap(function() tasks.map({ 1, 2 }, function() timer.sleep(0.01); return 1 end) end)()
  elseif what == "yield" then
    coroutine.yield() -- a bare yield at task level
  elseif what == "generator" then
    -- plain coroutines without devexd primitives are fine
    local gen = coroutine.wrap(function() for i = 1, 3 do coroutine.yield(i) end end)
    return 200, { values = { gen(), gen(), gen() } }
  end
  return 200, { unexpected = "no error" }
end)

return app
