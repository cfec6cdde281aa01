-- timerapp: background timers for test_timers.py. An every() job that yields
-- (timer.sleep) inside its tick, a one-shot at(), and a cancellable job; every
-- tick logs its VM generation so the test can see old timers stop on reload.
local framework = require("devex.app")
local timer = require("devex.timer")
local log = require("devex.log")
local runtime = require("devex.runtime")

local app = framework.new()
require("routes.health")(app)

local gen = runtime.generation()
local ticks, slow_runs, slow_overlap, once = 0, 0, 0, 0
local running = false

timer.every(0.05, function()
  ticks = ticks + 1
  log.info("tick", { generation = gen, n = ticks })
end)

-- a tick that takes longer than its interval: runs must never overlap
timer.every(0.02, function()
  if running then slow_overlap = slow_overlap + 1 end
  running = true
  timer.sleep(0.1)
  slow_runs = slow_runs + 1
  running = false
end)

timer.at(0.1, function()
  timer.sleep(0.05)
  once = once + 1
end)

local cancelled_ticks = 0
local h = timer.every(0.05, function() cancelled_ticks = cancelled_ticks + 1 end)

app:get("/state", function()
  return 200, { generation = gen, ticks = ticks, slow_runs = slow_runs, slow_overlap = slow_overlap,
                once = once, cancelled_ticks = cancelled_ticks }
end)

app:post("/cancel", function() h:cancel(); return 200, { cancelled_ticks = cancelled_ticks } end)

app:get("/fail-later", function()
  timer.at(0, function() error("timer boom") end)
  return 200, { ok = true }
end)

return app
