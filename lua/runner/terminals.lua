-- runner.terminals: the workspace's terminals, real PTYs (devex.pty), each
-- owned by the WebSocket session that asked for it and closed with it; at
-- most settings.max_terminals open at once in the whole workspace.
local pty = require("devex.pty")
local task = require("devex.task")
local crypto = require("devex.crypto")
local timer = require("devex.timer")
local log = require("devex.log")
local settings = require("runner.settings")

local M = {}

local open = {}     -- sessionId -> terminal
local count = 0
local last_output = 0 -- devex.timer.now() of the last output of any terminal

function M.count() return count end

-- Whether any terminal runs a job in the foreground or printed lately.
function M.busy(within)
  if count == 0 then return false end
  if timer.now() - last_output < within then return true end
  for _, t in pairs(open) do
    if t.pty:busy() then return true end
  end
  return false
end

-- Opens a terminal for owner (a table with emit(event, data)); returns its
-- sessionId or nil, message.
function M.open(owner, opts)
  local s = settings.get()
  if count >= s.max_terminals then
    return nil, string.format("terminal limit reached: %d open in this workspace", s.max_terminals)
  end
  local h, err = pty.spawn{
    command = s.shell, cwd = s.dir,
    env = { TERM = "xterm-256color", PWD = s.dir, COLORTERM = "truecolor" },
    unset = { "RUNNER_TOKEN", "DEVEXD_RUNNER_DIR", "DEVEXD_RUNNER_PORT", "DEVEXD_RUNNER_HOST" },
    cols = opts and opts.cols or 80, rows = opts and opts.rows or 24,
  }
  if not h then return nil, "cannot start a terminal: " .. tostring(err and err.message or err) end
  local id = crypto.hex(crypto.random_bytes(16))
  local t = { id = id, pty = h, owner = owner }
  open[id] = t
  count = count + 1
  owner.terminals[id] = t
  task.spawn(function()
    while true do
      local data = h:read()
      if not data then break end
      last_output = timer.now()
      owner:emit("terminalResponse", data)
    end
    h:wait()
    h:close() -- jobs the shell left behind
    if open[id] then
      open[id] = nil
      count = count - 1
    end
    owner.terminals[id] = nil
    owner:emit("terminalClosed", { sessionId = id })
  end)
  log.info("terminal opened", { session = id, pid = h.pid })
  return id
end

function M.get(owner, id)
  if type(id) ~= "string" then return nil end
  return owner.terminals[id]
end

-- Kills the terminal's processes; its reader then reports terminalClosed.
function M.close(t)
  t.pty:close()
end

-- Every terminal of owner (its socket closed).
function M.close_all(owner)
  for _, t in pairs(owner.terminals) do t.pty:close() end
end

return M
