-- runner.workspace: the workspace directory and the file operations of the
-- runner protocol, every path confined to the workspace.
--
-- A path from a message is relative to the workspace. One leading "/" is
-- accepted and means the workspace root (the IDE page sends "/name" for what
-- is created at the top level), so "/etc/passwd" names <workspace>/etc/passwd,
-- never the machine's. ".." is refused outright, and so is a path whose
-- directories, or whose last component when it is followed, resolve (through
-- symbolic links) outside the workspace. Operations that act on a link itself
-- (delete, rename) do not follow it.
--
-- Errors are messages naming the path as the client gave it, never the
-- workspace's absolute location.
local fs = require("devex.fs")
local dmp = require("runner.dmp")

local M = {}
local W = {}
W.__index = W

-- M.open(dir, {max_file=}) -> workspace | nil, err
function M.open(dir, opts)
  local root, err = fs.realpath(dir)
  if not root then return nil, err end
  return setmetatable({ root = root, max_file = (opts and opts.max_file) or 8 * 1024 * 1024 }, W)
end

local PHRASES = {
  not_found = "no such file or folder",
  exists = "already exists",
  not_dir = "a part of the path is not a folder",
  is_dir = "is a folder",
  not_empty = "folder is not empty",
  permission = "permission denied",
  loop = "is a symbolic link",
  too_large = "is too large",
}

local function say(rel, err)
  local phrase = type(err) == "table" and PHRASES[err.code]
  if phrase then return string.format("%s: %s", rel, phrase) end
  return string.format("%s: %s", rel, type(err) == "table" and (err.code or "error") or tostring(err))
end

local function shown(rel)
  if type(rel) ~= "string" then return "(path)" end
  return (rel:gsub("[%c]", "?"):sub(1, 300))
end

-- The components of a relative path, or nil, message.
local function components(rel)
  if type(rel) ~= "string" then return nil, "path must be a string" end
  if rel:find("%z") then return nil, "path contains a NUL byte" end
  if #rel > 4096 then return nil, "path is too long" end
  local s = rel:gsub("^/", "", 1)
  if s:sub(1, 1) == "/" then return nil, shown(rel) .. ": absolute paths are refused (paths are relative to the workspace)" end
  local parts = {}
  for part in s:gmatch("[^/]+") do
    if part == ".." then return nil, shown(rel) .. ": '..' is refused (the path must stay inside the workspace)" end
    if part ~= "." then parts[#parts + 1] = part end
  end
  return parts
end

function W:inside(real)
  local root = self.root
  if root == "/" then return true end
  return real == root or real:sub(1, #root + 1) == root .. "/"
end

local ESCAPE = ": refused, it leads outside the workspace (symbolic link)"

-- Resolves rel. how: "follow" (a symbolic link in the last place is followed
-- and must stay inside), "nofollow" (the last component itself). Returns
-- { path = absolute path whose last component is no link unless nofollow,
--   st = lstat of it or nil, root = true for the workspace itself, name = }
-- or nil, message.
function W:resolve(rel, how)
  local parts, err = components(rel)
  if not parts then return nil, err end
  local root = self.root
  if #parts == 0 then return { path = root, st = fs.lstat(root), root = true, name = "" } end
  local parent = root
  if #parts > 1 then
    local real, perr = fs.realpath(root .. "/" .. table.concat(parts, "/", 1, #parts - 1))
    if not real then return nil, say(shown(rel), perr) end
    if not self:inside(real) then return nil, shown(rel) .. ESCAPE end
    parent = real
  end
  local name = parts[#parts]
  local path = (parent == "/" and "" or parent) .. "/" .. name
  local st = fs.lstat(path)
  if how == "nofollow" or not st or st.type ~= "link" then return { path = path, st = st, name = name } end
  local real = fs.realpath(path)
  if not real then return nil, shown(rel) .. ": broken symbolic link" end
  if not self:inside(real) then return nil, shown(rel) .. ESCAPE end
  return { path = real, st = fs.lstat(real), name = name, root = real == root }
end

-- Creates the missing folders of rel's parents (and rel itself with
-- include_last), each checked to stay inside. Returns the resolved rel.
function W:make_parents(rel, include_last)
  local parts, err = components(rel)
  if not parts then return nil, err end
  local upto = include_last and #parts or #parts - 1
  local cur = ""
  for i = 1, upto do
    cur = cur .. "/" .. parts[i]
    local r, rerr = self:resolve(cur, "follow")
    if not r then return nil, rerr end
    if not r.st then
      local ok, merr = fs.mkdir(r.path)
      if not ok and merr.code ~= "exists" then return nil, say(shown(rel), merr) end
    elseif r.st.type ~= "dir" then
      return nil, shown(rel) .. ": " .. shown(cur:sub(2)) .. " is not a folder"
    end
  end
  return self:resolve(rel, "follow")
end

-- ---- operations of the protocol: each returns a result or nil, message ----

-- The entries of a folder as the IDE page shows them: { {name=, isDir=}, ... }.
function W:list(rel)
  local r, err = self:resolve(rel or "", "follow")
  if not r then return nil, err end
  if not r.st then return nil, say(shown(rel), { code = "not_found" }) end
  if r.st.type ~= "dir" then return nil, shown(rel) .. ": is not a folder" end
  local entries, lerr = fs.readdir(r.path)
  if not entries then return nil, say(shown(rel), lerr) end
  local out = {}
  for _, e in ipairs(entries) do
    local is_dir = e.type == "dir"
    if e.type == "link" then
      local real = fs.realpath(r.path .. "/" .. e.name)
      local st = real and self:inside(real) and fs.stat(real)
      is_dir = st and st.type == "dir" or false
    end
    out[#out + 1] = { name = e.name, isDir = is_dir }
  end
  return out
end

local function read_text(self, rel, r)
  if not r.st then return nil, say(shown(rel), { code = "not_found" }) end
  if r.st.type == "dir" then return nil, shown(rel) .. ": is a folder" end
  if r.st.type ~= "file" then return nil, shown(rel) .. ": is not a regular file" end
  local data, err = fs.read_file(r.path, self.max_file)
  if not data then return nil, say(shown(rel), err) end
  return data
end

-- The file's text (invalid UTF-8 shown as U+FFFD, as the original runner's JSON did).
function W:read(rel)
  local r, err = self:resolve(rel, "follow")
  if not r then return nil, err end
  local data, rerr = read_text(self, rel, r)
  if not data then return nil, rerr end
  return fs.utf8_clean(data)
end

-- Applies a diff-match-patch patch (text form) to the file; the file is
-- unchanged when the patch does not apply.
function W:patch(rel, patch)
  if type(patch) ~= "string" then return nil, "patch must be a string" end
  local r, err = self:resolve(rel, "follow")
  if not r then return nil, err end
  local data, rerr = read_text(self, rel, r)
  if not data then return nil, rerr end
  local new, perr = dmp.apply(data, patch)
  if not new then return nil, shown(rel) .. ": " .. perr end
  if #new > self.max_file then return nil, say(shown(rel), { code = "too_large" }) end
  local ok, werr = fs.write_file(r.path, new)
  if not ok then return nil, say(shown(rel), werr) end
  return true
end

-- An empty file (its missing parent folders made, as the original did).
function W:create_file(rel)
  local parts, err = components(rel)
  if not parts then return nil, err end
  if #parts == 0 then return nil, "a file needs a name" end
  local _, perr = self:make_parents(rel, false)
  if perr then return nil, perr end
  local r, rerr = self:resolve(rel, "nofollow")
  if not r then return nil, rerr end
  if r.st then return nil, say(shown(rel), { code = "exists" }) end
  local ok, werr = fs.write_file(r.path, "", true)
  if not ok then return nil, say(shown(rel), werr) end
  return true
end

-- A folder and its missing parents; an existing folder is fine (mkdir -p).
function W:create_folder(rel)
  local parts, err = components(rel)
  if not parts then return nil, err end
  if #parts == 0 then return true end
  local r, merr = self:make_parents(rel, true)
  if not r then return nil, merr end
  return true
end

function W:delete(rel)
  local r, err = self:resolve(rel, "nofollow")
  if not r then return nil, err end
  if r.root then return nil, "the workspace itself cannot be deleted" end
  if not r.st then return nil, say(shown(rel), { code = "not_found" }) end
  local ok, derr = fs.remove_tree(r.path)
  if not ok then return nil, say(shown(rel), derr) end
  return true
end

-- Where a copy or move of src to target goes: into target when it is an
-- existing folder (as the IDE page's paste on a folder means), else target.
function W:destination(src, target)
  local t, err = self:resolve(target, "follow")
  if not t then return nil, err end
  if t.st and t.st.type == "dir" then
    return self:resolve((target:gsub("/+$", "")) .. "/" .. src.name, "nofollow")
  end
  return self:resolve(target, "nofollow")
end

function W:rename(old, new)
  local a, err = self:resolve(old, "nofollow")
  if not a then return nil, err end
  if a.root then return nil, "the workspace itself cannot be renamed" end
  if not a.st then return nil, say(shown(old), { code = "not_found" }) end
  local b, berr = self:resolve(new, "nofollow")
  if not b then return nil, berr end
  if b.root then return nil, say(shown(new), { code = "exists" }) end
  if b.st then return nil, say(shown(new), { code = "exists" }) end
  if a.st.type == "dir" and (b.path:sub(1, #a.path + 1) == a.path .. "/") then
    return nil, shown(new) .. ": a folder cannot move into itself"
  end
  local ok, rerr = fs.rename(a.path, b.path, true)
  if not ok then return nil, say(shown(new), rerr) end
  return true
end

-- Copies a file, a link (as a link) or a folder tree.
local function copy_tree(src, dst)
  local st = fs.lstat(src)
  if not st then return nil, { code = "not_found" } end
  if st.type == "link" then
    local target, err = fs.readlink(src)
    if not target then return nil, err end
    return fs.symlink(target, dst)
  end
  if st.type == "dir" then
    local ok, err = fs.mkdir(dst, st.mode)
    if not ok then return nil, err end
    local entries, lerr = fs.readdir(src)
    if not entries then return nil, lerr end
    for _, e in ipairs(entries) do
      local cok, cerr = copy_tree(src .. "/" .. e.name, dst .. "/" .. e.name)
      if not cok then return nil, cerr end
    end
    return true
  end
  if st.type == "file" then return fs.copy_file(src, dst) end
  return nil, { code = "invalid" }
end

-- copy (move = false) or move (move = true) of source to target.
function W:transfer(source, target, move)
  local a, err = self:resolve(source, move and "nofollow" or "follow")
  if not a then return nil, err end
  if a.root then return nil, "the workspace itself cannot be " .. (move and "moved" or "copied") end
  if not a.st then return nil, say(shown(source), { code = "not_found" }) end
  if type(target) ~= "string" then return nil, "targetPath must be a string" end
  local b, berr = self:destination(a, target)
  if not b then return nil, berr end
  if b.st or b.root then return nil, say(shown(target), { code = "exists" }) end
  if a.st.type == "dir" and (b.path == a.path or b.path:sub(1, #a.path + 1) == a.path .. "/") then
    return nil, shown(target) .. ": a folder cannot go into itself"
  end
  if move then
    local ok, merr = fs.rename(a.path, b.path, true)
    if ok then return true end
    if merr.code ~= "invalid" then return nil, say(shown(target), merr) end -- EXDEV: copy, then delete
  end
  local ok, cerr = copy_tree(a.path, b.path)
  if not ok then
    fs.remove_tree(b.path)
    return nil, say(shown(target), cerr)
  end
  if move then fs.remove_tree(a.path) end
  return true
end

return M
