-- runner.protocol: the IDE page's runner protocol over the WebSocket at
-- /api/v1/repl/ws (README "Runner protocol"). Every message either way is a
-- JSON object {"event": NAME, "data": ...}. A request is answered by
-- "<event>Response" carrying the request's own fields, plus "success": true,
-- or an "error" string. A message that is not such an object, or names no
-- known event, is answered by an "error" event {message}; the connection
-- stays open.
local websocket = require("devex.websocket")
local json = require("devex.json")
local log = require("devex.log")
local settings = require("runner.settings")
local workspace = require("runner.workspace")
local terminals = require("runner.terminals")
local lifecycle = require("runner.lifecycle")

local M = {}

local Session = {}
Session.__index = Session

function Session:emit(event, data)
  local text = json.encode({ event = event, data = data })
  if not text then
    log.warn("runner: cannot encode an event", { event = event })
    return nil
  end
  return self.conn:send(text)
end

-- Answers `event` with <event>Response: fields plus success=true, or
-- fields plus error=message.
function Session:answer(event, fields, ok, err)
  local data = {}
  for k, v in pairs(fields) do data[k] = v end
  if ok then data.success = true else data.error = err end
  return self:emit(event .. "Response", data)
end

local function str(data, field)
  local v = type(data) == "table" and data[field]
  if type(v) ~= "string" then return nil, field .. " must be a string" end
  return v
end

local handlers = {}

handlers.Connection = function(s)
  local entries, err = s.ws:list("")
  if not entries then return s:emit("error", { message = "Failed to load directory: " .. err }) end
  s:emit("Loaded", { rootContents = json.array(entries) })
end

handlers.fetchDir = function(s, data)
  -- the IDE page sends {"Dir": path} (capital D, as the original runner read it)
  local dir = type(data) == "table" and (data.Dir or data.dir) or nil
  if dir ~= nil and type(dir) ~= "string" then return s:emit("fetchDirResponse", { error = "Dir must be a string" }) end
  dir = dir or ""
  local entries, err = s.ws:list(dir)
  if not entries then return s:emit("fetchDirResponse", { path = dir, error = err }) end
  s:emit("fetchDirResponse", { contents = json.array(entries), path = dir })
end

handlers.fetchContent = function(s, data)
  local path, perr = str(data, "path")
  if not path then return s:emit("fetchContentResponse", { error = perr }) end
  local content, err = s.ws:read(path)
  if not content then return s:emit("fetchContentResponse", { path = path, error = err }) end
  s:emit("fetchContentResponse", { content = content, path = path })
end

handlers.updateContent = function(s, data)
  local path, perr = str(data, "path")
  local patch, terr = str(data, "patch")
  if not path or not patch then return s:emit("updateContentResponse", { path = path, error = perr or terr }) end
  local ok, err = s.ws:patch(path, patch)
  s:answer("updateContent", { path = path }, ok, err)
end

local function path_op(event, method)
  handlers[event] = function(s, data)
    local path, perr = str(data, "path")
    if not path then return s:emit(event .. "Response", { error = perr }) end
    local ok, err = s.ws[method](s.ws, path)
    s:answer(event, { path = path }, ok, err)
  end
end
path_op("createFile", "create_file")
path_op("createFolder", "create_folder")
path_op("delete", "delete")

handlers.rename = function(s, data)
  local old, oerr = str(data, "oldPath")
  local new, nerr = str(data, "newPath")
  if not old or not new then return s:emit("renameResponse", { error = oerr or nerr }) end
  local ok, err = s.ws:rename(old, new)
  s:answer("rename", { oldPath = old, newPath = new }, ok, err)
end

-- copy {sourcePath, targetPath}: copies at once (the original's meaning);
-- copy {sourcePath} alone puts the path on this connection's clipboard for
-- paste, as cut does for a move.
handlers.copy = function(s, data)
  local src, serr = str(data, "sourcePath")
  if not src then return s:emit("copyResponse", { error = serr }) end
  local target = type(data) == "table" and data.targetPath or nil
  if target == nil then
    local r, err = s.ws:resolve(src, "follow")
    if r and not r.st then r, err = nil, src .. ": no such file or folder" end
    if r then s.clipboard = { path = src, move = false } end
    return s:answer("copy", { sourcePath = src }, r ~= nil, err)
  end
  if type(target) ~= "string" then return s:emit("copyResponse", { sourcePath = src, error = "targetPath must be a string" }) end
  local ok, err = s.ws:transfer(src, target, false)
  s:answer("copy", { sourcePath = src, targetPath = target }, ok, err)
end

handlers.cut = function(s, data)
  local src, serr = str(data, "sourcePath")
  if not src then return s:emit("cutResponse", { error = serr }) end
  local r, err = s.ws:resolve(src, "nofollow")
  if r and not r.st then r, err = nil, src .. ": no such file or folder" end
  if r and r.root then r, err = nil, "the workspace itself cannot be cut" end
  if r then s.clipboard = { path = src, move = true } end
  s:answer("cut", { sourcePath = src }, r ~= nil, err)
end

-- paste {targetPath}: what cut (or copy without a target) took, into the
-- folder targetPath (or as targetPath when that is not an existing folder).
handlers.paste = function(s, data)
  local target, terr = str(data, "targetPath")
  if not target then return s:emit("pasteResponse", { error = terr }) end
  local clip = s.clipboard
  if not clip then return s:answer("paste", { targetPath = target }, false, "nothing to paste") end
  local ok, err = s.ws:transfer(clip.path, target, clip.move)
  if ok and clip.move then s.clipboard = nil end
  s:answer("paste", { targetPath = target }, ok, err)
end

handlers.requestTerminal = function(s, data)
  local cols = type(data) == "table" and math.tointeger(data.cols) or nil
  local rows = type(data) == "table" and math.tointeger(data.rows) or nil
  if cols and (cols < 1 or cols > 10000) then cols = nil end
  if rows and (rows < 1 or rows > 10000) then rows = nil end
  local id, err = terminals.open(s, { cols = cols, rows = rows })
  if not id then return s:emit("terminalError", { error = err }) end
  s:emit("terminalConnected", { sessionId = id })
end

local function terminal_of(s, data, event)
  local id = type(data) == "table" and data.sessionId or nil
  local t = terminals.get(s, id)
  if not t then
    s:emit("terminalError", { sessionId = type(id) == "string" and id or nil, error = event .. ": no such terminal" })
  end
  return t
end

handlers.terminalInput = function(s, data)
  local t = terminal_of(s, data, "terminalInput")
  if not t then return end
  if type(data.data) ~= "string" then return s:emit("terminalError", { sessionId = t.id, error = "data must be a string" }) end
  local ok, err = t.pty:write(data.data)
  if not ok then s:emit("terminalError", { sessionId = t.id, error = tostring(err.message) }) end
end

handlers.terminalResize = function(s, data)
  local t = terminal_of(s, data, "terminalResize")
  if not t then return end
  local cols, rows = math.tointeger(data.cols), math.tointeger(data.rows)
  if not cols or not rows or cols < 1 or rows < 1 or cols > 10000 or rows > 10000 then
    return s:emit("terminalError", { sessionId = t.id, error = "cols and rows must be integers from 1 to 10000" })
  end
  t.pty:resize(cols, rows)
end

handlers.closeTerminal = function(s, data)
  local t = terminal_of(s, data, "closeTerminal")
  if t then terminals.close(t) end
end

local function dispatch(s, text)
  local msg, err = json.decode(text)
  if type(msg) ~= "table" or json.is_array(msg) then
    return s:emit("error", { message = "message is not a JSON object" .. (err and (": " .. tostring(err)) or "") })
  end
  local event = msg.event
  if type(event) ~= "string" then return s:emit("error", { message = "message has no event name" }) end
  local h = handlers[event]
  if not h then return s:emit("error", { message = "unknown event: " .. event:gsub("%c", "?"):sub(1, 100) }) end
  local data = msg.data
  if data == json.null then data = nil end
  local ok, herr = pcall(h, s, data)
  if not ok then
    log.error("runner: event handler failed", { event = event, error = tostring(herr) })
    s:emit("error", { message = event .. ": internal error" })
  end
end

-- The route handler of GET /api/v1/repl/ws: one session per connection.
function M.serve(req)
  local conf = settings.get()
  local conn, err = websocket.upgrade{ max_message = conf.max_file * 2 + 65536 }
  if not conn then return err.status or 400, { error = err.message } end
  local ws = assert(workspace.open(conf.dir, { max_file = conf.max_file }))
  local s = setmetatable({ conn = conn, ws = ws, terminals = {}, clipboard = nil }, Session)
  lifecycle.client_opened()
  while true do
    local text = conn:receive()
    if not text then break end
    lifecycle.touch()
    dispatch(s, text)
  end
  terminals.close_all(s)
  lifecycle.client_closed()
  conn:close()
end

return M
