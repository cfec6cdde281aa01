-- policy.sync: how a session's files are saved on stop. The default
-- reproduces the original service: an ephemeral container injected into the
-- runner's pod uploads /workspaces to the REPL's prefix; only when it exits 0
-- is the workload deleted. An operator can replace container (a
-- function(ctx) returning the ephemeral container) or tune:
--   image     an image with the aws CLI
--   timeout   seconds to wait for the upload to finish
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
  image = "amazon/aws-cli:2.15.0",
  timeout = 300,
}

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
    command = json.array({ "sh", "-c",
      'aws s3 sync --delete --endpoint-url "$S3_ENDPOINT" /workspaces/ "s3://$S3_BUCKET/$REPL_PREFIX"' }),
    env = workload.s3_env(ctx, wp.s3_secret),
    securityContext = M.ephemeral_security_supported(ctx)
      and (wp.helper_security_context or workload.helper_security_context)() or nil,
    volumeMounts = json.array({ { name = "workspaces", mountPath = "/workspaces" } }),
    targetContainerName = "runner",
  }
end

return M
