-- runner.dmp: diff-match-patch patches in their text form (what the IDE
-- page's editor sends in updateContent: the npm package's patch_make +
-- patch_toText), parsed and applied.
--
-- The text form: hunks, each a header "@@ -a,b +c,d @@" (b or d left out
-- when it is 1; a is then the 1-based start, otherwise start+1, and a,0 means
-- "after position a") followed by lines whose first character says what the
-- line is: " " context, "-" deleted, "+" inserted; the rest of the line is the
-- text encoded with JavaScript's encodeURI, with "%20" written as a space.
-- Positions and lengths count UTF-16 code units, as JavaScript strings do.
--
-- Applying: the npm package matches each hunk's old text (context plus
-- deletions) fuzzily (Match_Threshold 0.5, Match_Distance 1000) and can apply
-- a hunk to text that only resembles it. Here a hunk applies only where its
-- old text is found exactly: at the expected position (the hunk's start plus
-- the shift of the hunks before it) or, failing that, at the nearest exact
-- occurrence no more than MATCH_DISTANCE code units away. Otherwise the whole
-- patch is refused and nothing is changed: a save made against another
-- version of the file must not land somewhere else.
local M = {}

M.MATCH_DISTANCE = 1000

-- ---- UTF-16 code units, as a UTF-16BE byte string (2 bytes per unit) ----

local function to_units(s)
  local out, n = {}, 0
  for _, cp in utf8.codes(s) do
    n = n + 1
    if cp >= 0x10000 then
      cp = cp - 0x10000
      local hi, lo = 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF)
      out[n] = string.char(hi >> 8, hi & 0xFF, lo >> 8, lo & 0xFF)
    else
      out[n] = string.char(cp >> 8, cp & 0xFF)
    end
  end
  return table.concat(out)
end

local function from_units(u)
  local out, n, i, len = {}, 0, 1, #u
  while i < len do
    local a, b = u:byte(i, i + 1)
    local c = (a << 8) | b
    i = i + 2
    if c >= 0xD800 and c <= 0xDBFF and i < len then
      local a2, b2 = u:byte(i, i + 1)
      local c2 = (a2 << 8) | b2
      if c2 >= 0xDC00 and c2 <= 0xDFFF then
        c = 0x10000 + ((c - 0xD800) << 10) + (c2 - 0xDC00)
        i = i + 2
      end
    end
    if c >= 0xD800 and c <= 0xDFFF then c = 0xFFFD end -- a lone surrogate has no UTF-8 form
    n = n + 1
    out[n] = utf8.char(c)
  end
  return table.concat(out)
end

-- ---- parsing ----

-- decodeURI: %XX escapes of characters encodeURI never escapes (";/?:@&=+$,#")
-- stay as they are; the result must be valid UTF-8.
local RESERVED = {}
for c in (";/?:@&=+$,#"):gmatch(".") do RESERVED[c:byte()] = true end

local function decode_uri(s)
  for pos in s:gmatch("()%%") do
    if not s:sub(pos + 1, pos + 2):match("^%x%x$") then return nil end
  end
  local out = s:gsub("%%(%x%x)", function(h)
    local b = tonumber(h, 16)
    if RESERVED[b] then return nil end
    return string.char(b)
  end)
  if not utf8.len(out) then return nil end
  return out
end

local function header(line)
  local a, b, c, d = line:match("^@@ %-(%d+),?(%d*) %+(%d+),?(%d*) @@$")
  if not a then return nil end
  local function range(start, len)
    start = tonumber(start)
    if len == "" then return start - 1, 1 end
    if len == "0" then return start, 0 end
    return start - 1, tonumber(len)
  end
  local s1, l1 = range(a, b)
  local s2, l2 = range(c, d)
  return { start1 = s1, length1 = l1, start2 = s2, length2 = l2 }
end

-- Parses patch text into hunks { start1, length1, start2, length2, before, after }
-- (before/after as UTF-16BE strings). nil, message when it is not a patch.
function M.parse(text)
  if type(text) ~= "string" then return nil, "patch must be a string" end
  local hunks = {}
  local lines = {}
  for line in (text .. "\n"):gmatch("(.-)\n") do lines[#lines + 1] = line end
  local i = 1
  while i <= #lines do
    local line = lines[i]
    if line == "" then
      i = i + 1
    else
      local h = header(line)
      if not h then return nil, string.format("invalid patch: line %d is not a hunk header: %s", i, line:sub(1, 80)) end
      local before, after = {}, {}
      i = i + 1
      while i <= #lines do
        local l = lines[i]
        local sign = l:sub(1, 1)
        if sign == "@" then break end
        if sign ~= "" then
          local body = decode_uri(l:sub(2))
          if not body then return nil, string.format("invalid patch: bad escape on line %d", i) end
          if sign == " " then
            before[#before + 1] = body; after[#after + 1] = body
          elseif sign == "-" then
            before[#before + 1] = body
          elseif sign == "+" then
            after[#after + 1] = body
          else
            return nil, string.format("invalid patch: line %d starts with '%s'", i, sign)
          end
        end
        i = i + 1
      end
      h.before = to_units(table.concat(before))
      h.after = to_units(table.concat(after))
      hunks[#hunks + 1] = h
    end
  end
  return hunks
end

-- ---- applying ----

-- The 0-based unit position of an exact occurrence of needle in hay nearest
-- to loc (units), within MATCH_DISTANCE, or nil.
local function find_near(hay, needle, loc)
  local nunits = #hay // 2
  if loc < 0 then loc = 0 end
  if loc > nunits then loc = nunits end
  if needle == "" then return loc end
  if hay:sub(loc * 2 + 1, loc * 2 + #needle) == needle then return loc end
  local best, bestd
  local from = math.max(0, loc - M.MATCH_DISTANCE)
  local init = from * 2 + 1
  while true do
    local s = hay:find(needle, init, true)
    if not s then break end
    if (s - 1) % 2 == 0 then
      local pos = (s - 1) // 2
      local d = math.abs(pos - loc)
      if d > M.MATCH_DISTANCE then
        if pos > loc then break end
      elseif not bestd or d < bestd then
        best, bestd = pos, d
      end
      if pos > loc then break end
    end
    init = s + 1
  end
  return best
end

-- Applies patch text to text (UTF-8). Returns the new text, or nil and a
-- message saying which hunk did not apply (text unchanged).
function M.apply(text, patch_text)
  local hunks, err = M.parse(patch_text)
  if not hunks then return nil, err end
  if not utf8.len(text) then return nil, "the file is not valid UTF-8 text" end
  local u = to_units(text)
  local delta = 0
  for n, h in ipairs(hunks) do
    local expected = h.start2 + delta
    local pos = find_near(u, h.before, expected)
    if not pos then
      return nil, string.format("patch does not apply: hunk %d of %d (%s) does not match the file near position %d",
        n, #hunks, string.format("@@ -%d,%d +%d,%d @@", h.start1 + 1, h.length1, h.start2 + 1, h.length2), expected)
    end
    delta = pos - expected
    u = u:sub(1, pos * 2) .. h.after .. u:sub(pos * 2 + #h.before + 1)
  end
  return from_units(u)
end

M._to_units, M._from_units, M._decode_uri = to_units, from_units, decode_uri

return M
