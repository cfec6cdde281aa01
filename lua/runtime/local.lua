-- runtime.local: single-host sessions. A session is the runner agent,
-- `devexd runner` (this same binary, lua/runner/*), over a workspace
-- directory materialised from storage, as the Kubernetes init container
-- does; the agent serves the IDE page's protocol, terminals and /user-app/,
-- and the template's local_command is the user's program: RUN_COMMAND in the
-- agent's environment (so in its terminals), listening on PORT = APP_PORT,
-- which /user-app/ reaches. A template with agent = false runs its
-- local_command itself as the runner instead (a stand-in for a runner image).
-- Either way the child gets REPL_ID, TEMPLATE, RUNNER_TOKEN and CALLBACK_URL,
-- and a free loopback port. With a devexd listener on a Unix socket limited
-- to /api/runner/ (server.listen { socket = ..., only = "/api/runner/" }),
-- the runner calls back over it (CALLBACK_SOCKET). Stop saves the
-- workspace back to storage first, and only then ends the process (SIGTERM,
-- SIGKILL after a grace period) and removes the directory. A child that dies
-- on its own is noticed: the driver calls opts.on_exit, and repl.sessions
-- (which alone writes the REPL's state) has Driver:salvage save its files
-- before it marks the session stopped.
-- With runtime.isolation the runner runs under a uid of its own in a
-- bubblewrap sandbox and is reached through a Unix socket (runtime.sandbox);
-- stop then kills everything of that uid and removes its cgroups. A save
-- reads each file in pieces (put_file) and skips files beyond
-- policy.sandbox.save_file_max / save_total_max with a recorded error.
--
--   runtime = { driver = "local", dir = "/var/lib/devexd/workspaces", stop_grace = 5,
--               isolation = false, sandbox = { uids = { first = 200000, count = 1000 } },
--               agent_env = { NAME = "value" } }  -- extra agent settings (lua/runner/settings.lua)
local process = require("devex.process")
local s3 = require("devex.s3")
local http = require("devex.http")
local timer = require("devex.timer")
local log = require("devex.log")
local events = require("repl.events") -- the session event stream (issue #18)
local policy = require("policy")
local sandbox = require("runtime.sandbox")

local Driver = {}
Driver.__index = Driver

local M = {}

function M.new(config)
  local rt = config.runtime or {}
  local dir = rt.dir or ((config.storage or {}).dir and (config.storage.dir .. "/../workspaces")) or "/tmp/devexd-workspaces"
  local public = (config.public_url or "http://localhost:8080"):gsub("/+$", "")
  -- devexd's callback socket: a Unix listener that serves only the runner routes
  local callback_socket
  for _, l in ipairs(((config.server or {}).listen) or {}) do
    if l.socket and l.only == "/api/runner/" then callback_socket = l.socket end
  end
  return setmetatable({ name = "local", dir = dir, public_url = public, grace = rt.stop_grace or 5,
                        ready_timeout = rt.ready_timeout or 60, sandbox = sandbox.settings(config, dir),
                        callback_socket = callback_socket, agent_env = rt.agent_env or {} }, Driver)
end

-- a failure of the driver: a devex.error with the HTTP status a start or
-- stop that fails this way is answered with (repl.sessions)
local derror = require("devex.error")
local function err(status, message) return nil, derror.http(status, message) end

function Driver:workspace(id) return self.dir .. "/" .. id end

local function storage()
  return require("storage").open()
end

-- Copies repl/<user>/<id>/** into the workspace.
local function materialise(store, prefix, ws)
  local listing, e = store:list(prefix)
  if not listing then return nil, e end
  for _, o in ipairs(listing.objects) do
    local rel = o.key:sub(#prefix + 1)
    local path = ws .. "/" .. rel
    local parent = path:match("^(.*)/[^/]*$")
    local ok, e2 = s3.fs_mkdir_p(parent)
    if not ok then return nil, e2 end
    local body, e3 = store:get(o.key)
    if not body then return nil, e3 end
    local f, e4 = io.open(path, "wb")
    if not f then return nil, e4 end
    f:write(body)
    f:close()
  end
  return #listing.objects
end

-- Saves the workspace to repl/<user>/<id>/: every file uploaded, and remote
-- files that no longer exist locally removed (after the uploads succeeded).
-- Files are streamed in pieces (put_file); one larger than
-- policy.sandbox.save_file_max (by its size: a sparse file counts at its
-- apparent size), or past save_total_max, is skipped: its stored copy (if
-- any) is kept, the rest is saved, and it is returned in the second result
-- ({path, size, error}...) for the caller to record.
function M.save(store, prefix, ws)
  local files, e = s3.fs_walk(ws, true)
  if not files then return nil, e end
  local lim = policy.sandbox
  local seen, skipped, total = {}, {}, 0
  for _, f in ipairs(files) do
    local key = prefix .. f.path
    local why
    if f.size > lim.save_file_max then
      why = string.format("larger than policy.sandbox.save_file_max (%d bytes)", lim.save_file_max)
    elseif total + f.size > lim.save_total_max then
      why = string.format("the workspace is past policy.sandbox.save_total_max (%d bytes)", lim.save_total_max)
    else
      local ok, e2 = store:put_file(key, ws .. "/" .. f.path, { max_bytes = lim.save_file_max })
      if ok then
        total = total + f.size
      elseif e2 and e2.code == "TooLarge" then
        why = "grew past policy.sandbox.save_file_max while it was read"
      else
        return nil, e2
      end
    end
    if why then skipped[#skipped + 1] = { path = f.path, size = f.size, error = why } end
    seen[key] = true -- a skipped file's stored copy stays
  end
  local listing, e3 = store:list(prefix)
  if not listing then return nil, e3 end
  local gone = {}
  for _, o in ipairs(listing.objects) do if not seen[o.key] then gone[#gone + 1] = o.key end end
  if #gone > 0 then
    local res = store:delete_many(gone)
    if res and #res.failures > 0 then return nil, res.failures[1].error end
  end
  return #files, skipped
end

-- Records the files a save skipped: an error in the log, a warning in the
-- session's events and lastSaveError on the REPL.
local function record_skipped(id, skipped)
  if not skipped or #skipped == 0 then return end
  local parts = {}
  for i, sk in ipairs(skipped) do
    if i <= 5 then parts[#parts + 1] = string.format("%s (%d bytes): %s", sk.path, sk.size, sk.error) end
  end
  local msg = string.format("%d file(s) not saved: %s%s", #skipped, table.concat(parts, "; "), #skipped > 5 and "; ..." or "")
  log.error("save skipped files", { repl = id, files = #skipped, message = msg })
  events.emit(id, "warning", { reason = "save_skipped", message = msg })
  require("repl.store").set_fields(id, { lastSaveError = msg })
end
M.record_skipped = record_skipped

local function wait_gone(pid, grace)
  local deadline = timer.now() + grace
  while process.alive(pid) and timer.now() < deadline do timer.sleep(0.05) end
  return not process.alive(pid)
end

local function remove_log(dir, id) os.remove(dir .. "/" .. id .. ".log") end

-- Removes a workspace directory: rm run directly (no shell, so no quoting
-- of the path), waited for on the loop without blocking the worker.
local function rm_rf(path)
  -- only ever a workspace directory of ours
  assert(path:match("/repl%-[0-9a-f%-]+$"), "refusing to remove " .. path)
  local child, e = process.spawn{ command = "rm", args = { "-rf", "--", path } }
  if not child then
    log.error("could not remove a workspace", { path = path, error = tostring(e) })
    return
  end
  child:wait()
end

-- The template's run command as one shell line (RUN_COMMAND), each word quoted.
local function shell_line(words)
  local out = {}
  for i, w in ipairs(words) do
    out[i] = w:match("^[%w%._/=:,+-]+$") and w or ("'" .. w:gsub("'", "'\\''") .. "'")
  end
  return table.concat(out, " ")
end

-- What the child is: the agent (default) or, with agent = false, the
-- template's own command. Returns command, args, env, and the path readiness
-- is asked on (the agent: /ping, 200 once its workspace is ready).
function Driver:child_command(meta, tpl, ws, port, token)
  local env = { REPL_ID = meta.id, TEMPLATE = meta.template, RUNNER_TOKEN = token,
                CALLBACK_URL = self.public_url .. "/api/runner/" .. meta.id }
  if self.callback_socket then
    -- the URL's host is then only a name; the path is what devexd routes
    env.CALLBACK_URL = "http://localhost/api/runner/" .. meta.id
    env.CALLBACK_SOCKET = self.callback_socket
  end
  if tpl.agent == false then
    env.PORT, env.HOST = tostring(port), "127.0.0.1"
    local args = {}
    for i = 2, #tpl.local_command do args[#args + 1] = tpl.local_command[i] end
    return tpl.local_command[1], args, env, "/"
  end
  local rt = require("devex.runtime")
  if rt.exe == "" then return nil, "the devexd binary's path is unknown (/proc is not mounted)" end
  -- the user's program (RUN_COMMAND, typed in a terminal) listens on PORT,
  -- which the agent's /user-app/ reaches (APP_PORT)
  local app_port = tostring(process.free_port())
  env.PORT, env.APP_PORT, env.HOST = app_port, app_port, "127.0.0.1"
  env.RUN_COMMAND = shell_line(tpl.local_command)
  env.DEVEXD_LUA_DIR = rt.lua_dir
  -- the agent checkpoints the workspace (lua/runner/checkpoint.lua) and,
  -- over devexd's callback socket, restores it (restore.lua) through
  -- devexd's own routes: a sandboxed agent reaches nothing but devexd, so not
  -- S3's presigned URLs. Without the socket, public_url may not be devexd's
  -- own listener: devexd materialises the workspace itself (Driver:start)
  env.STORAGE_VIA_DEVEXD = "1"
  if not self.callback_socket then env.RESTORE = "0" end
  for k, v in pairs(require("policy.sync").agent_env(policy.sync)) do env[k] = v end
  local idle = policy.cleanup and policy.cleanup.idle_limit
  if type(idle) == "number" then env.RUNNER_IDLE_LIMIT = tostring(idle) end
  for k, v in pairs(self.agent_env) do env[k] = tostring(v) end
  return rt.exe, { "runner", "--dir", ws, "--port", tostring(port), "--host", "127.0.0.1" }, env, "/ping"
end

function Driver:start(meta, opts)
  local tpl = policy.templates.catalogue[meta.template]
  if not tpl or not tpl.local_command then return err(500, "template has no local_command") end
  local store, e = storage()
  if not store then return err(502, "storage: " .. tostring(e)) end
  local ws = self:workspace(meta.id)
  rm_rf(ws)
  local ok
  ok, e = s3.fs_mkdir_p(ws)
  if not ok then return err(500, tostring(e)) end
  events.emit(meta.id, "restoring")
  if tpl.agent == false or not self.callback_socket then -- else the agent restores it
    local n
    n, e = materialise(store, meta.prefix, ws)
    if not n then return err(502, "could not fetch the files: " .. tostring(e)) end
  end
  local port = process.free_port()
  events.emit(meta.id, "starting")
  local cmd, args, env, ready_path = self:child_command(meta, tpl, ws, port, opts.token)
  if not cmd then return err(500, args) end
  local spawn_opts = {
    command = cmd, args = args, cwd = ws, env = env,
    -- the runner's output goes beside the workspace, not into the user's files
    stdout = self.dir .. "/" .. meta.id .. ".log", stderr = self.dir .. "/" .. meta.id .. ".log",
  }
  -- isolated: the same command under the runner's own uid in its sandbox,
  -- answering on a Unix socket only devexd and it can reach
  local sb, uid, sock, cgroups = self.sandbox, nil, nil, nil
  if sb then
    uid, e = sandbox.lease(sb, meta.id)
    if not uid then return err(503, "no runner uid free: " .. tostring(e)) end
    -- the agent listens on the socket devexd reaches it by (no TCP: its network is its own)
    if ready_path == "/ping" then args = { "runner", "--dir", ws, "--socket", sandbox.runner_dir(sb, uid) .. "/runner.sock" } end
    spawn_opts, sock, cgroups = sandbox.wrap(sb, uid, ws, spawn_opts.command, args, env, spawn_opts.stdout)
    if not spawn_opts then
      sandbox.release(sb, uid, meta.id, nil)
      return err(500, "could not prepare the sandbox: " .. tostring(sock))
    end
  end
  -- the session's owner (repl.sessions) learns of an exit it did not ask for
  local on_exit = opts.on_exit
  if on_exit then spawn_opts.on_exit = function(code, signal) on_exit(code, signal) end end
  local child
  child, e = process.spawn(spawn_opts)
  if not child then
    if sb then sandbox.release(sb, uid, meta.id, cgroups) end
    return err(502, "could not start the runner: " .. tostring(e))
  end
  local function give_up()
    child:stop(1)
    if sb then sandbox.release(sb, uid, meta.id, cgroups) end
  end
  -- ready when the runner answers HTTP on its port (its socket, isolated)
  local deadline = timer.now() + math.min(opts.deadline or 60, self.ready_timeout)
  local claimed -- isolated: the runner's socket once moved where only devexd reaches it
  while true do
    local res
    if sb and not claimed then
      local why
      claimed, why = sandbox.claim_socket(sb, uid)
      if why then
        give_up()
        return err(502, "the runner's socket: " .. why)
      end
    end
    if claimed then
      res = http.request{ url = "http://runner" .. ready_path, unix_socket = claimed, timeout = 1, connect_timeout = 1 }
    elseif not sb then
      res = http.request{ url = "http://127.0.0.1:" .. port .. ready_path, timeout = 1, connect_timeout = 1 }
    end
    if res and (ready_path == "/" or res.status == 200) then break end
    if not child:running() then
      give_up()
      return err(502, "the runner exited before answering")
    end
    if timer.now() > deadline then
      give_up()
      return err(504, "the runner did not answer on its port in time")
    end
    timer.sleep(0.1)
  end
  return {
    url = require("runtime").gateway_url(meta.id) or (self.public_url .. "/repl/" .. meta.id .. "/"),
    endpoint = claimed and ("unix:" .. claimed) or ("127.0.0.1:" .. port),
    session = { pid = child.pid, port = port, workspace = ws, uid = uid, cgroups = cgroups, app_port = env.APP_PORT },
  }
end

-- Ends a session's processes: with isolation everything of its uid (and its
-- cgroups, directory and uid lease go too); otherwise the runner's process
-- group, SIGTERM then SIGKILL after the grace period.
function Driver:end_processes(meta, sess)
  local uid = sess and tonumber(sess.uid)
  if uid and self.sandbox then
    sandbox.release(self.sandbox, uid, meta.id, sess.cgroups)
    return
  end
  local pid = sess and tonumber(sess.pid)
  if pid and process.alive(pid) then
    process.kill_pid(pid, "TERM") -- the whole process group
    if not wait_gone(pid, self.grace) then
      process.kill_pid(pid, "KILL")
      wait_gone(pid, 2)
    end
  end
end


function Driver:stop(meta, sess)
  local ws = self:workspace(meta.id)
  local store, e = storage()
  if not store then return err(502, "storage: " .. tostring(e)) end
  local tpl = policy.templates.catalogue[meta.template]
  if tpl and tpl.agent ~= false and sess and sess.endpoint then
    -- the agent's final checkpoint; devexd's own save below stays the
    -- fallback for an agent that is dead or failing
    events.emit(meta.id, "saving")
    local ok, why = require("runtime.agent").final_checkpoint(sess, policy.sync)
    if ok then
      self:end_processes(meta, sess)
      rm_rf(ws)
      return true
    end
    log.warn("repl stop: the agent's final checkpoint failed, devexd saves the workspace", { repl = meta.id, error = why })
  end
  -- isolated, the runner ends before its files are read: a live runner could
  -- swap a file for a symlink to devexd's own files between the walk and the
  -- read, or keep growing one. (Without isolation it runs as devexd anyway,
  -- and it ends after the save, so that a failed save leaves it running.)
  if self.sandbox then self:end_processes(meta, sess) end
  local f = io.open(ws, "r")
  if f then
    f:close()
    local saved
    events.emit(meta.id, "saving")
    saved, e = M.save(store, meta.prefix, ws)
    if not saved then return err(502, "could not save the files: " .. tostring(e)) end
    record_skipped(meta.id, e)
  end
  if not self.sandbox then self:end_processes(meta, sess) end
  rm_rf(ws)
  return true
end

-- /ping's check of this runtime: the workspace directory can be made and
-- written (a probe file created and removed), which every start needs.
function Driver:ping()
  local ok, e = s3.fs_mkdir_p(self.dir)
  if not ok then return nil, "workspace directory " .. self.dir .. ": " .. tostring(e) end
  local probe = self.dir .. "/.devexd-ping-" .. require("devex.crypto").hex(require("devex.crypto").random_bytes(8))
  local f, e2 = io.open(probe, "wb")
  if not f then return nil, "workspace directory not writable: " .. tostring(e2) end
  f:close()
  os.remove(probe)
  return true
end

-- After a restart of devexd its children are gone: the sweep asks whether a
-- running session's process still lives, and recovers the ones that do not.
function Driver:alive(meta, sess)
  local pid = tonumber(sess and sess.pid)
  return pid ~= nil and process.alive(pid)
end

-- salvage(meta, sess) -> true | nil, err: a session whose runner is gone
-- (it exited on its own, or devexd restarted without it): whatever it left
-- running ends (isolated: before its files are read), then what the
-- workspace holds is saved and the directory removed. The REPL's state is
-- repl.sessions' (runner_gone), which calls this while the REPL is
-- "stopping"; a failed save leaves the workspace for the sweep's retry.
function Driver:salvage(meta, sess)
  if self.sandbox then self:end_processes(meta, sess) end
  local ws = self:workspace(meta.id)
  local f = io.open(ws, "r")
  if not f then return true end -- nothing left to save
  f:close()
  local store, e = storage()
  if not store then return err(502, "storage: " .. tostring(e)) end
  local saved
  saved, e = M.save(store, meta.prefix, ws)
  if not saved then return err(502, "could not save the files: " .. tostring(e)) end
  record_skipped(meta.id, e)
  rm_rf(ws)
  return true
end

function Driver:remove(meta)
  local sess = require("repl.store").get_session(meta.id)
  local pid = sess and tonumber(sess.pid)
  if sess and tonumber(sess.uid) and self.sandbox then
    sandbox.release(self.sandbox, tonumber(sess.uid), meta.id, sess.cgroups)
  elseif pid and process.alive(pid) then
    process.kill_pid(pid, "KILL")
  end
  rm_rf(self:workspace(meta.id))
  return true
end

return M
