-- policy.sync: how a session's files are saved on stop. The default
-- reproduces the original service: an ephemeral container injected into the
-- runner's pod uploads /workspaces to the REPL's prefix; only when it exits 0
-- is the workload deleted. An operator can replace container (a
-- function(ctx) returning the ephemeral container) or tune:
--   image     an image with the aws CLI
--   timeout   seconds to wait for the upload to finish
local json = require("devex.json")

local M = {
  image = "amazon/aws-cli:2.15.0",
  timeout = 300,
}

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
    volumeMounts = json.array({ { name = "workspaces", mountPath = "/workspaces" } }),
    targetContainerName = "runner",
  }
end

return M
