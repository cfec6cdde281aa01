-- policy.sync: how a session's files are saved on stop. As in the original
-- service an ephemeral container injected into the runner's pod uploads
-- /workspaces to the REPL's prefix; only when it exits 0 is the workload
-- deleted. It holds no storage credential: a save token (random, valid for
-- this REPL's storage-broker routes only and only `timeout` seconds, its
-- hash stored in the session) and the callback URL. M.upload_script lists
-- /workspaces (FIFOs, sockets, devices, symlinks and names with control
-- characters are reported on stderr and skipped), asks devexd for presigned
-- PUT URLs (POST <callback>/uploads), PUTs every file, then POSTs the
-- complete list to <callback>/sync: devexd deletes what the workspace no
-- longer holds and records lastSavedAt. Any failure exits non-zero, so the
-- stop keeps the workload. An operator can replace container (a
-- function(ctx) returning the ephemeral container) or tune:
--   image       any image with a POSIX sh, find, awk and curl 7.66+ (the
--               transfers run 16 at a time with curl --parallel)
--   timeout     seconds to wait for the upload to finish (and the save
--               token's lifetime)
--   url_expires seconds a presigned URL of the broker is valid [300]
--   max_files, max_path  the most paths one request may list [10000], the
--               longest relative path in bytes [900]
--   max_file_size bytes one file may have through the fs driver's blob route
--               [1 GiB] (server.max_body bounds every request body too)
--   max_attempts failed saves of one stop after which the sweep stops
--               retrying it [3]: the REPL stays "stopping" with save_failed
--               set until an operator runs `devexd repl resolve` (README,
--               "Stuck saves"); an uploader still running is waited for,
--               never doubled
-- When the template's runner is the agent (`devexd runner`,
-- templates.<t>.agent), the agent itself saves and restores through the same
-- routes (lua/runner/checkpoint.lua, restore.lua):
--   checkpoint_interval seconds between the agent's checkpoints [30]: at most
--               that much work is at risk when the pod or process dies; given
--               to the agent as CHECKPOINT_INTERVAL
--   concurrency transfers the agent runs at once [8] (CHECKPOINT_CONCURRENCY)
--   final_timeout seconds a stop waits for the agent's final checkpoint [120]
-- The uploader is locked down like the pod's init container
-- (workload.helper_security_context: no privilege escalation, every
-- capability dropped, RuntimeDefault seccomp), whatever the template's
-- `security` loosens. It runs as the pod's user (pod-level runAsUser, the
-- runner's), so it can read every file the runner wrote. Kubernetes before
-- 1.21 refuses any securityContext on an ephemeral container (422 "cannot
-- be set for an Ephemeral Container"): there it is left out, and only the
-- pod-level securityContext (non-root user, seccomp) applies to the
-- uploader. ctx.server_version ({major_n=, minor_n=}) says which; without
-- it the cluster's /version is asked (the Kubernetes client caches it and
-- needs it anyway to add the container).
local json = require("devex.json")

local M = {
  image = "curlimages/curl:8.5.0",
  timeout = 300,
  url_expires = 300,
  max_files = 10000,
  max_path = 900,
  max_file_size = 1 << 30,
  max_attempts = 3,
  checkpoint_interval = 30,
  concurrency = 8,
  final_timeout = 120,
}

-- The agent's environment for these knobs (both runtimes add it).
function M.agent_env(p)
  p = p or M
  return {
    CHECKPOINT_INTERVAL = tostring(p.checkpoint_interval or M.checkpoint_interval),
    CHECKPOINT_CONCURRENCY = tostring(math.tointeger(p.concurrency or M.concurrency)),
  }
end

M.upload_script = [=[
set -eu
dir="${WORKSPACE_DIR:-/workspaces}"
base="${CALLBACK_URL%/}"
auth="Authorization: Bearer $RUNNER_TOKEN"
cd "$dir"
find . ! -type f ! -type d | while IFS= read -r p; do echo "skipped, not a regular file: $p" >&2; done
find . -type f -path '*[[:cntrl:]]*' | while IFS= read -r p; do echo "skipped, control character in the name: $p" >&2; done
paths=$(find . -type f ! -path '*[[:cntrl:]]*' | sed 's|^\./||')
ups=$(printf '%s\n' "$paths" | curl -fsS -X POST -H "$auth" -H "Accept: text/plain" -H "Content-Type: text/plain" --data-binary @- "$base/uploads")
if [ -n "$ups" ]; then
  printf '%s\n' "$ups" | awk -F '\t' 'NF >= 2 {
    p = "./" $1; gsub(/[\\"]/, "\\\\&", p); u = $2; gsub(/[\\"]/, "\\\\&", u)
    printf "url = \"%s\"\nupload-file = \"%s\"\noutput = \"/dev/null\"\n", u, p }' |
    curl -fsS -g --path-as-is --retry 3 --parallel --parallel-max 16 -H "Content-Type: application/octet-stream" -K -
fi
printf '%s\n' "$paths" | curl -fsS -X POST -H "$auth" -H "Content-Type: text/plain" --data-binary @- "$base/sync"
echo
]=]

-- A save token for this stop: random, its hash and expiry in the session
-- (routes.runner_storage accepts it like the runner token). When it cannot
-- be stored (outside a request: a policy check or a render calling
-- container(); Redis down) it opens nothing: the uploader then fails with
-- 401 and the stop keeps the workload, as for any failed save. -> token
function M.save_token(ctx, lifetime)
  local crypto = require("devex.crypto")
  local token = crypto.b64url(crypto.random_bytes(32))
  if ctx.repl and ctx.repl.id then
    -- (update_session: fields of the live session only; put_session would
    -- also re-enter it in the activity index as a start does)
    local called, ok, err = pcall(require("repl.store").update_session, ctx.repl.id, {
      save_token_hash = crypto.sha256_hex(token), save_token_expires = os.time() + (lifetime or 300) })
    if called and not ok then
      require("devex.log").warn("sync: the save token was not stored", { repl = ctx.repl.id, error = tostring(err) })
    end
  end
  return token
end

local function callback_url(ctx)
  if ctx.callback_url then return ctx.callback_url end
  local public = (require("devex.config").get().public_url or "http://localhost:8080"):gsub("/+$", "")
  return public .. "/api/runner/" .. tostring(ctx.repl and ctx.repl.id)
end

-- whether the API server accepts a securityContext on an ephemeral container (1.21+)
function M.ephemeral_security_supported(ctx)
  local v = ctx and ctx.server_version
  if v == nil then
    local ok, c = pcall(function() return require("services.k8s").client() end)
    if ok and c then v = c:version() end
  end
  if type(v) ~= "table" or not v.major_n or not v.minor_n then return true end -- unknown: assume a current server
  return v.major_n > 1 or v.minor_n >= 21
end

function M.container(ctx)
  local workload = require("policy.workload")
  local p = ctx.policy or M
  local wp = ctx.workload_policy or workload
  return {
    -- unique per attempt: a retried stop adds a second uploader to the same pod
    name = "save-" .. require("devex.crypto").hex(require("devex.crypto").random_bytes(4)),
    image = p.image,
    command = json.array({ "sh", "-c", M.upload_script }),
    env = workload.helper_env(M.save_token(ctx, p.timeout or M.timeout), callback_url(ctx)),
    securityContext = M.ephemeral_security_supported(ctx)
      and (wp.helper_security_context or workload.helper_security_context)() or nil,
    volumeMounts = json.array({ { name = "workspaces", mountPath = "/workspaces" } }),
    targetContainerName = "runner",
  }
end

return M
