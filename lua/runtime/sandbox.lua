-- runtime.sandbox: the local runtime's isolation (config runtime.isolation,
-- env RUNTIME_ISOLATION; issue 14 item 3). With it on, each runner runs
--   * under a uid of its own, from runtime.sandbox.uids (default 200000, 1000
--     of them; gid = uid), leased in Redis (sandbox:uid:<uid> = repl id);
--   * inside bubblewrap with every namespace unshared (user, pid, net, ipc,
--     uts, cgroup): its own /proc, only a loopback interface (no Redis, no
--     other runner, no devexd port), and a root made of /usr (read-only), a
--     few /etc files, a fresh /dev and /tmp, its workspace and its runner
--     directory. devexd's files, the storage directory, other workspaces
--     and the environment of devexd are not there;
--   * in cgroups where devexd can make them (v1 pids/memory/cpu under its own
--     cgroup; v2 under runtime.sandbox.cgroup, a delegated directory), and
--     with rlimits always: RLIMIT_NPROC (per uid, so per runner), RLIMIT_FSIZE
--     (no file beyond policy.sandbox.file_size), RLIMIT_NOFILE, and
--     RLIMIT_AS only when no memory cgroup could be made;
--   * reached only through a Unix socket: the runner binds
--     <runner dir>/runner.sock (a directory owned by devexd with group = the
--     runner's gid, mode 0770), and devexd moves it, once it is there, into
--     <run_dir>/.sockets/<uid>.sock (devexd's alone, 0700) and checks that
--     what it moved is a socket. The runner can write its own directory, so
--     a path in it could be swapped for a symlink to another runner's socket
--     or Redis's; a rename moves the link itself, never follows it, and what
--     lands in the private directory no runner can change any more.
-- Every path is bound at its host path, so paths computed outside (the
-- workspace, the socket, the devexd binary for `devexd runner`) hold inside.
-- The privileged steps (cgroup join, setuid, dropping capabilities) are done
-- by `devexd sandbox-exec`, the kill of a whole uid by `devexd sandbox-kill`
-- (src/sandbox.c). Limits are policy (policy.sandbox).
local process = require("devex.process")
local s3 = require("devex.s3")
local log = require("devex.log")
local devexrt = require("devex.runtime")
local policy = require("policy")

local M = {}

local function exists(path)
  local f = io.open(path, "r")
  if f then f:close() return true end
  return false
end

-- Settings from config.runtime (dir: the local runtime's workspace
-- directory); nil when isolation is off.
function M.settings(config, dir)
  local rt = config.runtime or {}
  if rt.isolation ~= true then return nil end
  local sb = rt.sandbox or {}
  local uids = sb.uids or {}
  dir = dir or rt.dir or "/tmp/devexd-workspaces"
  return {
    first_uid = math.tointeger(uids.first or 200000),
    uid_count = math.tointeger(uids.count or 1000),
    run_dir = sb.run_dir or (dir .. "/.run"),
    bwrap = sb.bwrap or "bwrap",
    binds = sb.binds or {}, -- extra read-only paths a template's command needs
    cgroup = sb.cgroup,     -- cgroup v2: a delegated directory; v1: found from /proc/self/cgroup
    exe = devexrt.exe,
  }
end

-- Checks made when devexd loads (so `devexd --check` sees them too).
function M.check(config, real_signin)
  local rt = config.runtime or {}
  if (rt.driver or "kubernetes") ~= "local" then return end
  if rt.isolation ~= nil and type(rt.isolation) ~= "boolean" then
    error("runtime.isolation must be true or false", 0)
  end
  if rt.unsafe_no_isolation ~= nil and type(rt.unsafe_no_isolation) ~= "boolean" then
    error("runtime.unsafe_no_isolation must be true or false", 0)
  end
  if real_signin and rt.isolation ~= true and rt.unsafe_no_isolation == true then
    log.warn("runtime.unsafe_no_isolation: every signed-in user's code runs as devexd and can read its secrets")
  elseif real_signin and rt.isolation ~= true then
    error("the local runtime runs every user's code under devexd's own uid: with a sign-in provider other than "
      .. "dev_login it needs runtime.isolation = true (env RUNTIME_ISOLATION=1; see README \"Single-host isolation\"): "
      .. "refusing to start", 0)
  end
  if rt.isolation then
    local s = M.settings(config)
    if not s.first_uid or s.first_uid < 1000 or not s.uid_count or s.uid_count < 1 or s.first_uid + s.uid_count > 0x7fffffff then
      error("runtime.sandbox.uids: first must be an integer >= 1000 and count >= 1", 0)
    end
    if s.exe == "" then error("runtime.isolation: cannot find the devexd binary (/proc/self/exe)", 0) end
    if type(s.binds) ~= "table" then error("runtime.sandbox.binds must be a list of paths", 0) end
    for _, b in ipairs(s.binds) do
      if type(b) ~= "string" or b:sub(1, 1) ~= "/" then error("runtime.sandbox.binds: absolute paths only", 0) end
    end
    -- what every start needs, refused now rather than at the first start
    local found = s.bwrap:find("/", 1, true) and exists(s.bwrap)
    if not found then
      for d in (os.getenv("PATH") or "/usr/bin:/bin"):gmatch("[^:]+") do
        if exists(d .. "/" .. s.bwrap) then found = true break end
      end
    end
    if not found then
      error("runtime.isolation: bubblewrap (" .. s.bwrap .. ") is not installed: apt-get install bubblewrap, "
        .. "or set runtime.sandbox.bwrap", 0)
    end
    local caps
    for line in io.lines("/proc/self/status") do caps = caps or line:match("^CapEff:%s*(%x+)") end
    caps = caps and tonumber(caps:sub(-8), 16) or 0
    if (caps >> 6) & 3 ~= 3 then -- CAP_SETGID (6) and CAP_SETUID (7)
      error("runtime.isolation: devexd needs CAP_SETUID and CAP_SETGID (root, or the systemd drop-in "
        .. "packaging/devexd-isolation.conf) to run each runner under its own uid", 0)
    end
  end
end

-- Runs a command (no shell) and waits; true or nil, message.
local function run(command, args)
  local child, e = process.spawn{ command = command, args = args, stderr = "ignore" }
  if not child then return nil, tostring(e) end
  local code = child:wait()
  if code ~= 0 then return nil, command .. " " .. table.concat(args, " ") .. " exited with " .. tostring(code) end
  return true
end

local function write(path, text)
  local f, e = io.open(path, "w")
  if not f then return nil, e end
  local ok, e2 = f:write(text)
  local ok2, e3 = f:close()
  if not ok or not ok2 then return nil, e2 or e3 end
  return true
end

---- uid leases ----

local function lease_key(uid) return require("services.redis").key("sandbox", "uid", tostring(uid)) end

-- A uid no live session holds: SET NX sandbox:uid:<uid> <repl id>; a lease
-- whose REPL is no longer starting/running/stopping is taken over (after its
-- processes are killed, in case any are left).
function M.lease(s, id)
  local r, e = require("services.redis").client()
  if not r then return nil, e end
  local store = require("repl.store")
  for i = 0, s.uid_count - 1 do
    local uid = s.first_uid + i -- the lowest free one
    local ok, err = r:call("SET", lease_key(uid), id, "NX")
    if ok == nil then return nil, err end
    if ok == "OK" then return uid end -- (a nil reply, key taken, is a null sentinel, not nil)
    local holder = r:call("GET", lease_key(uid))
    if holder == id then return uid end
    if type(holder) ~= "string" then holder = nil end -- released meanwhile: the next one
    local m, gerr
    if holder then m, gerr = store.get(holder) end
    if m == nil and gerr then return nil, gerr end -- unknown: never take a lease on a guess
    local st = m and m.state
    if holder and st ~= "starting" and st ~= "running" and st ~= "stopping" then
      M.kill(s, uid)
      -- compare-and-set: only if the stale holder still has it
      local took = r:call("EVAL", "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) return 1 end return 0",
        1, lease_key(uid), holder or "", id)
      if took == 1 then return uid end
    end
  end
  return nil, "no free runner uid in runtime.sandbox.uids"
end

function M.unlease(uid, id)
  local r = require("services.redis").client()
  if not r then return end
  r:call("EVAL", "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
    1, lease_key(uid), id)
end

---- cgroups ----

local function own_cgroups()
  local t = {}
  for line in io.lines("/proc/self/cgroup") do
    local _, ctrls, path = line:match("^(%d+):([^:]*):(.*)$")
    if ctrls then for c in ctrls:gmatch("[^,]+") do t[c] = path end end
    if ctrls == "" then t[""] = path end
  end
  return t
end

-- Makes the runner's cgroups with the policy's limits; returns the list of
-- directories made (possibly empty: then only rlimits hold) and whether
-- memory is limited by one of them.
function M.cgroups(s, uid, lim)
  local made, mem = {}, false
  local function mk(dir, files)
    if not s3.fs_mkdir_p(dir) then return false end
    for _, kv in ipairs(files) do
      local ok, e = write(dir .. "/" .. kv[1], kv[2])
      if not ok then
        log.warn("sandbox: cannot set a cgroup limit", { file = dir .. "/" .. kv[1], error = tostring(e) })
        os.remove(dir)
        return false
      end
    end
    made[#made + 1] = dir
    return true
  end
  local cpu = lim.cpu and { { "cpu.cfs_period_us", "100000" }, { "cpu.cfs_quota_us", tostring(math.floor(lim.cpu * 100000)) } }
  if exists("/sys/fs/cgroup/cgroup.controllers") then
    -- cgroup v2: only under a delegated directory the operator named (the
    -- no-internal-processes rule keeps devexd from making one beside itself)
    if s.cgroup then
      local files = { { "pids.max", tostring(lim.processes) }, { "memory.max", tostring(lim.memory) } }
      if lim.memory_swap then files[#files + 1] = { "memory.swap.max", tostring(lim.memory_swap) } end
      if lim.cpu then files[#files + 1] = { "cpu.max", math.floor(lim.cpu * 100000) .. " 100000" } end
      mem = mk(s.cgroup .. "/runner-" .. uid, files)
    end
    return made, mem
  end
  local own = own_cgroups()
  local base = function(ctrl) return "/sys/fs/cgroup/" .. ctrl .. (own[ctrl] or "/"):gsub("/$", "") .. "/devexd-runners/" .. uid end
  if own.pids then mk(base("pids"), { { "pids.max", tostring(lim.processes) } }) end
  if own.memory then
    mem = mk(base("memory"), { { "memory.limit_in_bytes", tostring(lim.memory) } })
  end
  if own.cpu and cpu then mk(base("cpu"), cpu) end
  return made, mem
end

function M.remove_cgroups(list)
  for dir in (list or ""):gmatch("[^\n]+") do
    if dir:match("^/sys/fs/cgroup/") then os.remove(dir) end
  end
end

---- start / stop ----

-- The runner's directory (socket, nothing else): devexd's, group = the
-- runner's gid, 0770.
function M.runner_dir(s, uid) return s.run_dir .. "/" .. uid end

-- Prepares uid's directory and the workspace (chowned to the runner) and
-- returns process.spawn options running cmd in the sandbox, the socket path
-- and the cgroups made (a "\n"-joined string for the session record).
function M.wrap(s, uid, ws, cmd, args, env, log_path)
  local lim = policy.sandbox
  local rdir = M.runner_dir(s, uid)
  run("rm", { "-rf", "--", rdir })
  local ok, e = s3.fs_mkdir_p(rdir)
  if not ok then return nil, tostring(e and e.message or e) end
  ok, e = run("chown", { "-R", uid .. ":" .. uid, "--", ws })
  if ok then ok, e = run("chown", { ":" .. uid, "--", rdir }) end
  if ok then ok, e = run("chmod", { "0770", "--", rdir }) end
  if ok then ok, e = run("chmod", { "0700", "--", ws }) end
  -- bwrap runs as the runner: it must pass through the directories above
  -- its binds (search only, no listing)
  if ok then ok, e = run("chmod", { "0711", "--", s.run_dir, (ws:match("^(.*)/[^/]+$")) }) end
  if not ok then return nil, e end
  local sock = rdir .. "/runner.sock"
  local cgroups, mem = M.cgroups(s, uid, lim)

  local a = { "sandbox-exec", "--uid", tostring(uid), "--gid", tostring(uid) }
  for _, d in ipairs(cgroups) do a[#a + 1] = "--cgroup"; a[#a + 1] = d end
  local function rl(name, v) if v then a[#a + 1] = "--rlimit"; a[#a + 1] = name .. "=" .. math.floor(v) end end
  rl("nproc", lim.processes)
  rl("fsize", lim.file_size)
  rl("nofile", lim.open_files)
  rl("core", 0)
  if not mem then rl("as", lim.memory) end
  a[#a + 1] = "--"
  a[#a + 1] = s.bwrap
  local function add(...) for _, v in ipairs({ ... }) do a[#a + 1] = v end end
  -- no --die-with-parent: runners outlive a restart of devexd, as without
  -- isolation (the session sweep takes them over)
  -- no user namespaces inside (less kernel surface to attack from there)
  add("--unshare-all", "--unshare-user", "--disable-userns", "--new-session", "--hostname", "runner")
  add("--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
      "--symlink", "usr/lib", "/lib")
  if exists("/lib64") then add("--symlink", "usr/lib64", "/lib64") end
  -- /etc: only what programs need to run (libraries, certificates, time
  -- zone); not passwd, not devexd's config
  for _, p in ipairs({ "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives", "/etc/ssl",
                       "/etc/ca-certificates", "/etc/localtime", "/etc/mime.types", "/etc/nsswitch.conf" }) do
    add("--ro-bind-try", p, p)
  end
  add("--proc", "/proc", "--dev", "/dev")
  add("--size", tostring(math.floor(lim.tmp_size)), "--tmpfs", "/tmp")
  if s.exe:sub(1, 5) ~= "/usr/" then add("--ro-bind", s.exe, s.exe) end
  -- the Lua directories (for `devexd runner`): code, no secrets
  for d in package.path:gmatch("([^;]+)/%?%.lua") do
    if d:sub(1, 1) == "/" and d:sub(1, 5) ~= "/usr/" and exists(d) then add("--ro-bind-try", d, d) end
  end
  for _, b in ipairs(s.binds) do add("--ro-bind-try", b, b) end
  add("--bind", ws, ws, "--bind", rdir, rdir)
  local inner_env = {}
  for k, v in pairs(env) do inner_env[k] = tostring(v) end
  if env.CALLBACK_SOCKET and env.CALLBACK_SOCKET:sub(1, 1) == "/" then
    add("--bind", env.CALLBACK_SOCKET, env.CALLBACK_SOCKET)
  end
  inner_env.SOCKET = sock
  inner_env.HOME = ws
  inner_env.PATH = "/usr/local/bin:/usr/bin:/bin"
  inner_env.LANG = inner_env.LANG or "C.UTF-8"
  add("--chdir", ws, "--clearenv")
  local names = {}
  for k in pairs(inner_env) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do add("--setenv", k, inner_env[k]) end
  add("--", cmd)
  for _, v in ipairs(args) do a[#a + 1] = v end
  return {
    command = s.exe, args = a, inherit_env = false, env = {},
    stdout = log_path, stderr = log_path,
  }, sock, table.concat(cgroups, "\n")
end

local function private_socket(s, uid) return s.run_dir .. "/.sockets/" .. uid .. ".sock" end

-- Once the runner has bound <runner dir>/runner.sock: moves it where only
-- devexd reaches and returns that path; nil while it is not there yet, nil,
-- message when what is there is not a socket.
function M.claim_socket(s, uid)
  local fs = require("devex.fs")
  local src = M.runner_dir(s, uid) .. "/runner.sock"
  if not fs.lstat(src) then return nil end
  local ok, e = s3.fs_mkdir_p(s.run_dir .. "/.sockets")
  if ok then ok, e = run("chmod", { "0700", "--", s.run_dir .. "/.sockets" }) end
  if not ok then return nil, "cannot make the sockets directory: " .. tostring(e and e.message or e) end
  local dst = private_socket(s, uid)
  os.remove(dst)
  ok, e = fs.rename(src, dst)
  if not ok then return nil, "cannot claim the runner's socket: " .. tostring(e) end
  local st = fs.lstat(dst)
  if not st or st.type ~= "other" then
    os.remove(dst)
    return nil, "the runner's runner.sock is not a socket"
  end
  return dst
end

-- Kills every process of the runner's uid (devexd sandbox-kill).
function M.kill(s, uid)
  local ok, e = run(s.exe, { "sandbox-kill", "--uid", tostring(uid) })
  if not ok then log.error("sandbox: could not kill a runner's processes", { uid = uid, error = tostring(e) }) end
  return ok
end

-- After a stop: processes killed, cgroups and the runner directory removed, uid released.
function M.release(s, uid, id, cgroups)
  M.kill(s, uid)
  M.remove_cgroups(cgroups)
  run("rm", { "-rf", "--", M.runner_dir(s, uid) })
  os.remove(private_socket(s, uid))
  M.unlease(uid, id)
end

return M
