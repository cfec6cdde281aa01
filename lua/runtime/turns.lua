-- runtime.turns: a first-come-first-served limit on how many coroutines of
-- one worker (one Lua VM) do something at once. The Kubernetes driver
-- uses one for the API calls of starts (policy.workload.start_concurrency)
-- and one for adding stops' uploaders: a burst otherwise has every call in
-- flight together. A coroutine that cannot get a turn waits on a condition
-- (devex.stream) until a turn is handed to it or its deadline passes.
local timer = require("devex.timer")
local dstream = require("devex.stream")

local M = {}
M.__index = M

function M.new()
  return setmetatable({ busy = 0, queue = {} }, M)
end

-- enter(limit, deadline) -> true with a turn, false when none came before
-- deadline (timer.now() seconds)
function M:enter(limit, deadline)
  if self.busy < limit and #self.queue == 0 then
    self.busy = self.busy + 1
    return true
  end
  local me = { cond = dstream.cond(), granted = false }
  self.queue[#self.queue + 1] = me
  while not me.granted do
    local left = deadline - timer.now()
    if left <= 0 then
      for i, q in ipairs(self.queue) do
        if q == me then table.remove(self.queue, i); break end
      end
      return false
    end
    me.cond:wait(math.min(left, 3600))
  end
  return true -- the turn was handed over by leave()
end

-- leave(): the turn passes to the first waiting coroutine, if any
function M:leave()
  local nxt = table.remove(self.queue, 1)
  if nxt then
    nxt.granted = true -- marked before the signal, so no wake-up is lost
    nxt.cond:signal()
  else
    self.busy = self.busy - 1
  end
end

-- run(limit, deadline, fn, ...) -> true, fn(...) run holding a turn, or
-- false when no turn came before deadline; an error in fn gives the turn
-- back and is raised again
function M:run(limit, deadline, fn, ...)
  if not self:enter(limit, deadline) then return false end
  local r = table.pack(pcall(fn, ...))
  self:leave()
  if not r[1] then error(r[2], 0) end
  return true, table.unpack(r, 2, r.n)
end

return M
