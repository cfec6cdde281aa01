-- testlib: helpers shared by the integration tests' apps.
--   testlib.hold(seconds, gate): sleeps, then waits (polling with devex.timer)
--   until the gate file $DEVEXD_TEST_GATES/<gate> exists; returns false if it
--   never opened within 30 s. The harness creates gates with open_gate(name).
local timer = require("devex.timer")

local M = {}

local gates = os.getenv("DEVEXD_TEST_GATES")

function M.gate_open(name)
  if not name or not gates then return true end
  assert(name:match("^[%w_-]+$"), "bad gate name")
  local f = io.open(gates .. "/" .. name, "r")
  if f then f:close(); return true end
  return false
end

function M.hold(seconds, gate)
  timer.sleep(seconds)
  local waited = 0
  while not M.gate_open(gate) do
    timer.sleep(0.02)
    waited = waited + 0.02
    if waited > 30 then return false end
  end
  return true
end

return M
