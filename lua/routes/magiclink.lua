-- routes.magiclink: e-mail magic-link sign-in (README "Sign-in"), the
-- answers of the Go service the frontend was written against:
--   POST /auth/magiclink/login  {"email": "..."}
--     200 {"message":"Magic link sent! Check your email and click the link to sign in.","success":true}
--         (the same for every valid address, known, new or refused by policy.magiclink.allow)
--     400 {"error":"Invalid email address"} (also for a body that is not JSON)
--     429 {"error":"Too many requests. Please try again later."} with Retry-After:
--         policy.limits.magiclink (per client address) and magiclink_address (per address: 3 a minute)
--     500 {"error":"Failed to send magic link"} (delivery or Redis failed)
--     404 {"error":"Magic-link sign-in is not configured"} when it is off
--   GET /auth/magiclink/verify?token=...
--     307 to FRONTEND_URL/dashboard with the session cookie; to FRONTEND_URL?error=missing_token
--     without a token, ?error=invalid_token for an unknown, used, expired or malformed one,
--     ?error=session_error when Redis failed.
-- These literal routes win over GET /auth/:provider/login (devex.router: literal > :param).
local crypto = require("devex.crypto")
local json = require("devex.json")
local log = require("devex.log")
local policy = require("policy")
local ratelimit = require("middleware.ratelimit")
local cookies = require("auth.cookies")
local session = require("auth.session")
local settings = require("auth.settings")
local magiclink = require("auth.magiclink")
local mail = require("auth.mail")

local NO_STORE = { ["Cache-Control"] = "no-store" }
-- pre-encoded: the same bytes for every address on every worker (the key
-- order of an encoded table may differ between workers)
local SENT = '{"message":"Magic link sent! Check your email and click the link to sign in.","success":true}'
local SENT_HEADERS = { ["Content-Type"] = "application/json", ["Cache-Control"] = "no-store" }
local INVALID = { error = "Invalid email address" }
local TOO_MANY = { error = "Too many requests. Please try again later." }
local FAILED = { error = "Failed to send magic link" }

local function limited(rule, client)
  local ok, retry_after, status = ratelimit.hit(rule, client)
  if ok then return nil end
  if status == 429 then
    return 429, TOO_MANY, { ["Retry-After"] = tostring(retry_after), ["Cache-Control"] = "no-store" }
  end
  return status, { error = "rate limiter unavailable" }, { ["Retry-After"] = tostring(retry_after) }
end

local function allowed(address)
  local p = policy.magiclink or {}
  if type(p.allow) ~= "function" then return true end
  local ok, res = pcall(p.allow, address)
  if not ok then
    log.error("policy.magiclink.allow failed", { error = tostring(res) })
    return false
  end
  return res == true
end

local function login(req)
  if not magiclink.enabled then return 404, { error = "Magic-link sign-in is not configured" }, NO_STORE end
  local ok, body = pcall(json.decode, req.body or "")
  local address = ok and type(body) == "table" and mail.normalize(body.email)
  if not address then return 400, INVALID, NO_STORE end
  local b = ratelimit.client_address(req)
  local status, rbody, rh = limited("magiclink", b and ratelimit.address_key(b) or "unknown")
  if status then return status, rbody, rh end
  status, rbody, rh = limited("magiclink_address", crypto.sha256_hex(address))
  if status then return status, rbody, rh end
  if not allowed(address) then
    -- the same answer as for an address that gets a mail (no enumeration)
    log.info("magic link: address refused by policy.magiclink.allow")
    return 200, SENT, SENT_HEADERS
  end
  local token, err = magiclink.issue(address)
  if not token then
    log.error("magic link: token store unavailable", { error = tostring(err) })
    return 500, FAILED, NO_STORE
  end
  local subject, text, html = mail.content(magiclink.conf, magiclink.link(token), magiclink.conf.token_ttl // 60)
  local sent, detail = mail.send(magiclink.conf, address, subject, text, html)
  if not sent then
    magiclink.revoke(token)
    log.error("magic link: sending failed", { detail = detail })
    return 500, FAILED, NO_STORE
  end
  log.info("magic link sent")
  return 200, SENT, SENT_HEADERS
end

local function redirect(reason, set_cookies)
  return 307, nil, { Location = settings.frontend_redirect(reason), ["Cache-Control"] = "no-store",
                     ["Referrer-Policy"] = "no-referrer", ["Set-Cookie"] = set_cookies }
end

local function verify(req)
  if not magiclink.enabled then return 404, { error = "Magic-link sign-in is not configured" }, NO_STORE end
  local token = req.query.token
  if type(token) ~= "string" or token == "" then return redirect("missing_token") end
  local address, err = magiclink.consume(token)
  if address == nil then
    log.error("magic link: token store unavailable", { error = tostring(err) })
    return redirect("session_error")
  end
  if not address then
    log.warn("sign-in failed", { provider = "magiclink", reason = "invalid_token" })
    return redirect("invalid_token")
  end
  local user = magiclink.user(address)
  local old = req.cookies[settings.cookie_name]
  if old then session.destroy(old) end
  local id
  id, err = session.create(user, "magiclink")
  if not id then
    log.error("magic link: session store unavailable", { error = tostring(err) })
    return redirect("session_error")
  end
  log.info("signed in", { provider = "magiclink", user = user.subject })
  return redirect(nil, { cookies.session(id) })
end

return function(app)
  app:post("/auth/magiclink/login", login)
  app:get("/auth/magiclink/verify", verify)
end
