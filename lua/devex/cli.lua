-- devex.cli: one-shot commands of the devexd binary (`devexd templates sync`).
-- main(args) runs inside a task, so commands may use every primitive; it
-- prints to stdout/stderr and returns the process exit code.
local M = {}

local commands = {}

commands["templates sync"] = function(args)
  local ok, sync = pcall(require, "storage.sync")
  if not ok then
    io.stderr:write("devexd: templates sync: storage is not available: ", tostring(sync), "\n")
    return 1
  end
  return sync.cli({ table.unpack(args, 3) })
end

local function usage(args)
  io.stderr:write(string.format("devexd: unknown command '%s'; available: templates sync [DIR]\n",
    table.concat(args, " "):gsub("[%c]", "?")))
  return 2
end

function M.main(args)
  local name = table.concat({ args[1] or "", args[2] or "" }, " ")
  local cmd = commands[name]
  if not cmd then return usage(args) end
  return cmd(args)
end

return M
