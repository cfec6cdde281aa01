-- devex.cli: one-shot commands of the devexd binary (`devexd templates sync`,
-- `devexd workload render`).
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

-- JSON with two-space indentation and sorted keys, for reading and diffing
-- (devex.json writes one line): the value is encoded once, so what is shown
-- is exactly what devex.json would send, then decoded and laid out.
local function pretty(v)
  local json = require("devex.json")
  local text = assert(json.encode(v))
  local out = {}
  local function emit(x, indent)
    if type(x) ~= "table" then out[#out + 1] = json.encode(x); return end
    local inner = indent .. "  "
    if json.is_array(x) then
      if #x == 0 then out[#out + 1] = "[]"; return end
      out[#out + 1] = "[\n"
      for i, e in ipairs(x) do
        out[#out + 1] = inner
        emit(e, inner)
        out[#out + 1] = i < #x and ",\n" or "\n"
      end
      out[#out + 1] = indent .. "]"
    else
      local keys = {}
      for k in pairs(x) do keys[#keys + 1] = k end
      if #keys == 0 then out[#out + 1] = "{}"; return end
      table.sort(keys)
      out[#out + 1] = "{\n"
      for i, k in ipairs(keys) do
        out[#out + 1] = inner .. json.encode(k) .. ": "
        emit(x[k], inner)
        out[#out + 1] = i < #keys and ",\n" or "\n"
      end
      out[#out + 1] = indent .. "}"
    end
  end
  emit(json.decode(text), "")
  return table.concat(out)
end
M.pretty = pretty

-- devexd workload render --template T [--repl ID] [--user U]: the objects
-- and the identity the current config and policy would apply for a session,
-- as JSON, without contacting a cluster, Redis or storage.
commands["workload render"] = function(args)
  local function bad(msg)
    io.stderr:write("devexd: workload render: ", msg, "\n",
      "usage: devexd workload render --template T [--repl ID] [--user U]\n")
    return 2
  end
  local opt = {}
  local i = 3
  while args[i] do
    local a = args[i]
    local k, v = a:match("^%-%-(%w+)=(.*)$")
    if not k then
      k = a:match("^%-%-(%w+)$")
      if k then v = args[i + 1]; i = i + 1 end
    end
    if k ~= "template" and k ~= "repl" and k ~= "user" then return bad("unknown argument '" .. a:gsub("%c", "?") .. "'") end
    if v == nil or v == "" then return bad("--" .. k .. " needs a value") end
    opt[k] = v
    i = i + 1
  end
  local policy = require("policy")
  local kube = require("runtime.kubernetes")
  local names = {}
  for name in pairs(policy.templates.catalogue) do names[#names + 1] = name end
  table.sort(names)
  if not opt.template then return bad("--template is required (one of: " .. table.concat(names, ", ") .. ")") end
  if not policy.templates.catalogue[opt.template] then
    return bad(string.format("unknown template '%s' (one of: %s)", opt.template:gsub("%c", "?"), table.concat(names, ", ")))
  end
  local n = policy.naming
  if opt.repl and (#opt.repl > (n.id_max or 63) or not opt.repl:match(n.id_pattern)) then
    return bad(string.format("--repl '%s' is not a valid REPL id (naming.id_pattern %s)", opt.repl:gsub("%c", "?"), n.id_pattern))
  end
  local meta = kube.probe(policy, opt.template, 1, opt.user or "user")
  if opt.repl then
    meta.id = opt.repl
    meta.prefix = "repl/" .. meta.user .. "/" .. meta.id .. "/"
  end
  meta.name = "render"
  local namespace = (require("devex.config").get().kube or {}).namespace or "default"
  local ok, out = pcall(kube.render, policy, meta, { token = "<RUNNER_TOKEN: made at each start>", namespace = namespace })
  if not ok then
    io.stderr:write("devexd: workload render: ", tostring(out), "\n")
    return 1
  end
  io.stdout:write(pretty(out), "\n")
  return 0
end

-- devexd owners migrate [--map FILE] [--apply] | owners suggest: REPLs keyed on
-- a login moved to their owner's key (lua/repl/migrate.lua)
commands["owners migrate"] = function(args) return require("repl.migrate").cli({ table.unpack(args, 3) }) end
commands["owners suggest"] = function() return require("repl.migrate").suggest() end

-- devexd migrate from-go --map FILE [--apply] ...: the Go service's REPLs
-- taken over (lua/repl/adopt_go.lua)
commands["migrate from-go"] = function(args) return require("repl.adopt_go").cli({ table.unpack(args, 3) }) end

-- devexd repl stuck | repl resolve ID --retry | --discard --yes: REPLs stuck
-- in a transition and stops that cannot save (lua/repl/stuck.lua)
commands["repl stuck"] = function(args) return require("repl.stuck").cli(args) end
commands["repl resolve"] = function(args) return require("repl.stuck").cli(args) end

local function usage(args)
  io.stderr:write(string.format("devexd: unknown command '%s'; available: templates sync [DIR], workload render --template T, owners migrate [--map FILE] [--apply], owners suggest, migrate from-go --map FILE [--apply], repl stuck, repl resolve ID --retry|--discard --yes\n",
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
