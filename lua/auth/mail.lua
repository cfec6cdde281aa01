-- auth.mail: the magic-link e-mail: the address check, the RFC 5322 message
-- (multipart/alternative: text/plain and text/html, both UTF-8 in
-- quoted-printable; Subject and the From display name RFC 2047-encoded when
-- not ASCII) and its delivery, over SMTP (devex.smtp: smtps://, or smtp://
-- with STARTTLS required except to loopback) or Resend's HTTP API (POST
-- <resend_url>/emails with a Bearer key and {from, to, subject, html, text}).
--
-- The recipient address goes into the To header and RCPT TO only after
-- normalize() accepted it: one '@', no CR, LF, space, comma, quote, angle
-- bracket, parenthesis, semicolon, backslash or control character, at most
-- 254 bytes (64 before the '@'), a dotted domain: nothing in it can end a
-- header line or add a recipient.
local crypto = require("devex.crypto")
local json = require("devex.json")

local M = {}

-- normalize(s) -> the trimmed, lower-cased address | nil
function M.normalize(s)
  if type(s) ~= "string" then return nil end
  s = s:match("^%s*(.-)%s*$"):lower()
  if #s < 3 or #s > 254 then return nil end
  local loc, dom = s:match("^([^@]+)@([^@]+)$")
  if not loc or #loc > 64 then return nil end
  -- the local part: RFC 5321 dot-atom characters only (no quoted strings)
  if not loc:match("^[a-z0-9!#$%%&'*+/=?^_`{|}~.-]+$") or loc:find("..", 1, true)
     or loc:sub(1, 1) == "." or loc:sub(-1) == "." then
    return nil
  end
  -- the domain: LDH labels, at least two, no empty label, no leading/trailing '-'
  if #dom > 253 or not dom:find(".", 1, true) then return nil end
  for label in (dom .. "."):gmatch("([^.]*)%.") do
    if label == "" or #label > 63 or not label:match("^[a-z0-9-]+$") or label:sub(1, 1) == "-"
       or label:sub(-1) == "-" then
      return nil
    end
  end
  return s
end

-- ---- encodings ----------------------------------------------------------------

local function is_ascii(s) return not s:find("[\128-\255]") end

-- RFC 2047 encoded-words (UTF-8, base64), split so that each word stays
-- under 75 characters and no UTF-8 sequence is cut; folded with CRLF SP.
function M.encode_word(s)
  if is_ascii(s) and not s:find("[%c]") and not s:find("=?", 1, true) then return s end
  local words, chunk = {}, ""
  for ch in s:gmatch("[%z\1-\127\194-\244][\128-\191]*") do
    if #chunk + #ch > 45 then
      words[#words + 1] = chunk
      chunk = ""
    end
    chunk = chunk .. ch
  end
  if chunk ~= "" then words[#words + 1] = chunk end
  for i, w in ipairs(words) do
    local b = crypto.b64url(w):gsub("-", "+"):gsub("_", "/")
    words[i] = "=?UTF-8?B?" .. b .. string.rep("=", (4 - #b % 4) % 4) .. "?="
  end
  return table.concat(words, "\r\n ")
end

-- A display name as a phrase: an encoded-word when not plain ASCII, else a
-- quoted string.
local function phrase(name)
  if not is_ascii(name) or name:find("[%c]") then return M.encode_word(name) end
  return '"' .. name:gsub('[\\"]', "\\%0") .. '"'
end

-- Quoted-printable (RFC 2045) of UTF-8 text with CRLF line ends.
function M.quoted_printable(text)
  local out = {}
  text = text:gsub("\r\n", "\n"):gsub("\r", "\n")
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    local enc = line:gsub("[^\t !-<>-~]", function(c) return string.format("=%02X", c:byte()) end)
    enc = enc:gsub("([ \t])$", function(c) return string.format("=%02X", c:byte()) end)
    -- soft line breaks at 76 characters, never inside an =XX
    while #enc > 76 do
      local cut = 75
      if enc:sub(cut - 1, cut - 1) == "=" then cut = cut - 2
      elseif enc:sub(cut, cut) == "=" then cut = cut - 1 end
      out[#out + 1] = enc:sub(1, cut) .. "="
      enc = enc:sub(cut + 1)
    end
    out[#out + 1] = enc
  end
  if out[#out] == "" then out[#out] = nil end
  return table.concat(out, "\r\n")
end

local function html_escape(s)
  return (s:gsub("[&<>\"']", { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;", ["'"] = "&#39;" }))
end

-- ---- the message -------------------------------------------------------------

-- content(link, minutes) -> subject, text, html
function M.content(conf, link, minutes)
  local subject = conf.subject or "Sign in to DevEx"
  local text = table.concat({
    "Hello,",
    "",
    "Click the link below to sign in. It works once and expires in " .. minutes .. " minutes.",
    "",
    link,
    "",
    "If you did not ask for this, ignore this e-mail.",
  }, "\n")
  local l = html_escape(link)
  local html = table.concat({
    '<!doctype html><html><head><meta charset="utf-8"></head><body>',
    "<p>Hello,</p>",
    "<p>Click the link below to sign in. It works once and expires in " .. minutes .. " minutes.</p>",
    '<p><a href="' .. l .. '">Sign in</a></p>',
    "<p>Or copy this address into your browser:<br>" .. l .. "</p>",
    "<p>If you did not ask for this, ignore this e-mail.</p>",
    "</body></html>",
  }, "\n")
  return subject, text, html
end

local function from_header(conf)
  if conf.from_name and conf.from_name ~= "" then return phrase(conf.from_name) .. " <" .. conf.from .. ">" end
  return conf.from
end

-- message(conf, to, subject, text, html) -> the RFC 5322 message (CRLF)
function M.message(conf, to, subject, text, html, now)
  local boundary = "=_devexd_" .. crypto.b64url(crypto.random_bytes(18)):gsub("[-_]", "x")
  local domain = conf.from:match("@(.+)$") or "devexd.invalid"
  local lines = {
    "From: " .. from_header(conf),
    "To: <" .. to .. ">",
    "Subject: " .. M.encode_word(subject),
    "Date: " .. os.date("!%a, %d %b %Y %H:%M:%S +0000", now or os.time()),
    "Message-ID: <" .. crypto.b64url(crypto.random_bytes(18)) .. "@" .. domain .. ">",
    "MIME-Version: 1.0",
    'Content-Type: multipart/alternative; boundary="' .. boundary .. '"',
    "Auto-Submitted: auto-generated",
    "",
    "This is a message in MIME format.",
    "",
    "--" .. boundary,
    "Content-Type: text/plain; charset=UTF-8",
    "Content-Transfer-Encoding: quoted-printable",
    "",
    M.quoted_printable(text),
    "--" .. boundary,
    "Content-Type: text/html; charset=UTF-8",
    "Content-Transfer-Encoding: quoted-printable",
    "",
    M.quoted_printable(html),
    "--" .. boundary .. "--",
    "",
  }
  return table.concat(lines, "\r\n")
end

-- ---- delivery -----------------------------------------------------------------

local function redact(url) return (tostring(url):gsub("//[^/@]*@", "//")) end

-- send(conf, to, subject, text, html) -> true | nil, detail (for the log; no secret)
function M.send(conf, to, subject, text, html)
  if conf.resend_api_key then
    local http = require("devex.http")
    local res, err = http.request{
      method = "POST", url = conf.resend_url .. "/emails", timeout = conf.timeout, ca_file = conf.ca_file,
      headers = { ["Authorization"] = "Bearer " .. conf.resend_api_key, ["Content-Type"] = "application/json",
                  ["User-Agent"] = "devexd" },
      body = json.encode({ from = from_header(conf):gsub("\r\n ", " "), to = { to }, subject = subject,
                           html = html, text = text }),
    }
    if not res then return nil, "resend: " .. tostring(err) end
    if res.status ~= 200 and res.status ~= 201 then
      local body = json.decode(res.body or "")
      local msg = type(body) == "table" and type(body.message) == "string" and body.message:sub(1, 200) or ""
      return nil, string.format("resend answered %d %s", res.status, msg)
    end
    return true
  end
  local smtp = require("devex.smtp")
  local ok, err = smtp.send{
    url = conf.smtp_url, username = conf.username, password = conf.password,
    from = conf.from, to = to, message = M.message(conf, to, subject, text, html),
    timeout = conf.timeout, ca_file = conf.ca_file,
  }
  if not ok then return nil, "smtp " .. redact(conf.smtp_url) .. ": " .. tostring(err) end
  return true
end

return M
