-- devex.tasks: structured concurrency helpers on top of devex.task.
--   tasks.all{f1, f2, f3}            -> { {ok, ...}, {ok, ...}, ... } in order
--   tasks.map(items, fn, {concurrency=16}) -> results, failures
-- map runs fn(item, i) for every item with at most `concurrency` running at
-- once; results[i] is fn's first result, failures lists {index=, item=, error=}
-- for every call that raised or returned nil, err. Nothing is skipped silently.
local task = require("devex.task")

local M = {}

function M.all(fns)
  local handles = {}
  for i, f in ipairs(fns) do handles[i] = task.spawn(f) end
  local out = {}
  for i, h in ipairs(handles) do out[i] = table.pack(h:wait()) end
  return out
end

function M.map(items, fn, opts)
  local n = #items
  local limit = math.max(1, math.min((opts and opts.concurrency) or 16, n))
  local results, failures = {}, {}
  local next_index = 0
  local function worker()
    while true do
      next_index = next_index + 1
      local i = next_index
      if i > n then return end
      local ok, r, err = pcall(fn, items[i], i)
      if not ok then
        failures[#failures + 1] = { index = i, item = items[i], error = r }
      elseif r == nil then
        failures[#failures + 1] = { index = i, item = items[i], error = err }
      else
        results[i] = r
      end
    end
  end
  if n == 0 then return results, failures end
  local handles = {}
  for k = 1, limit do handles[k] = task.spawn(worker) end
  for k = 1, limit do
    local ok, err = handles[k]:wait()
    if not ok then failures[#failures + 1] = { error = err } end
  end
  table.sort(failures, function(a, b) return (a.index or 0) < (b.index or 0) end)
  return results, failures
end

return M
