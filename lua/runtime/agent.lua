-- runtime.agent: what devexd asks of a runner agent (`devexd runner`,
-- lua/runner/app.lua) at stop, for both runtimes: its final checkpoint.
local http = require("devex.http")

local M = {}

-- POST <endpoint>/api/v1/checkpoint: the agent uploads what changed and
-- confirms the complete list with devexd's sync before it answers 200, so
-- after a 200 the stored files are the workspace's. devexd keeps only the
-- hash of the session's runner token, and the agent takes that hash as
-- devexd's credential for this one route (whoever can read the session in
-- Redis can at most make the agent save the files to the REPL's own
-- storage). endpoint: "host:port" or "unix:/path". -> true | nil, reason
function M.final_checkpoint(sess, sp)
  local endpoint = sess and sess.endpoint
  if type(endpoint) ~= "string" or endpoint == "" or not sess.token_hash then return nil, "no endpoint" end
  local req = { method = "POST", body = "", timeout = (sp and sp.final_timeout) or 120,
                headers = { authorization = "Bearer " .. sess.token_hash } }
  local sock = endpoint:match("^unix:(/.+)$")
  if sock then
    req.unix_socket, req.url = sock, "http://runner/api/v1/checkpoint"
  else
    req.url = "http://" .. endpoint .. "/api/v1/checkpoint"
  end
  local res, e = http.request(req)
  if not res then return nil, tostring(e) end
  if res.status ~= 200 then return nil, "the agent answered " .. res.status .. ": " .. res.body:sub(1, 300) end
  return true
end

return M
