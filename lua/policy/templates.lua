-- policy.templates: the catalogue of REPL templates. Each entry may set
-- (a field left out takes the value of `defaults` below):
--   image      the runner image; a relative name (no "/") is prefixed with
--              `registry` + "/", an absolute one (with a "/") is used as is
--   port       the runner's HTTP port inside the pod (HTTP and the WebSocket
--              at /api/v1/repl/ws); the gateway and the readiness probe use it
--   grpc_port  the runner's gRPC port, exposed on the pod and the Service
--              (false: none)
--   readiness_path  the path of the readiness probe (GET, on `port`)
--   image_pull_policy  imagePullPolicy of the runner container
--   mcp        true/false: this template's pods get the MCP sidecar (nil:
--              the global workload.mcp_sidecar decides)
--   command    the runner command in the image (nil: the image's own)
--   local_command  the command the single-host runtime runs in the
--              workspace (a stand-in for the runner image on a bare machine;
--              that runtime picks a free port of its own and ignores `port`)
--   agent      true: the runner is the agent (`devexd runner`), which restores
--              and checkpoints the workspace itself through devexd: on
--              Kubernetes the pod has no init container and stop asks the
--              agent for its final checkpoint (policy.workload, policy.sync);
--              false: the original runner image with the init container and
--              the uploader. Default: true with RUNNER_AGENT_REGISTRY's
--              images, else false. (The single-host runtime reads only an
--              explicit false: it runs the agent otherwise.)
--   resources  Kubernetes requests and limits of the runner container
--   security   the pod's security for this template, merged key by key over
--              workload.security (lua/policy/workload.lua, where the fields
--              are documented): by default the pod runs as uid/gid 1000
--              with runAsNonRoot, RuntimeDefault seccomp, no privilege
--              escalation and every capability dropped. A template loosens
--              only what it names, e.g. an image that must run as root:
--                security = { run_as_non_root = false, run_as_user = 0, run_as_group = 0 }
--              (the init container and the uploader stay locked down)
-- The defaults fit the original service's runner images
-- (ghcr.io/parthkapoor-dev/devex/runner-<t>:latest: HTTP on 8081 answering
-- GET /ping, gRPC on 50051, pulled Always).
-- Files of a template come from templates/<name>/ in storage (`devexd templates sync`).
--
-- RUNNER_AGENT_REGISTRY=<registry> (e.g. registry.example.com/devex) switches
-- the three templates to the agent images instead: `devexd runner` plus the
-- template's toolchain, built from deploy/docker/runner/Dockerfile (target
-- runner-<t>) and pushed as <registry>/devexd-runner-<t>:latest by the
-- operator (README "Runner images"). Same port, readiness path, user and
-- workspace directory; no gRPC port (the agent serves none).
local agent_registry = os.getenv("RUNNER_AGENT_REGISTRY")
if agent_registry == "" then agent_registry = nil end
local function image(t)
  if agent_registry then return "devexd-runner-" .. t .. ":latest" end
  return "runner-" .. t .. ":latest"
end

local default_resources = {
  requests = { cpu = "100m", memory = "128Mi" },
  limits = { cpu = "500m", memory = "512Mi" },
}

return {
  registry = agent_registry or "ghcr.io/parthkapoor-dev/devex",
  defaults = {
    port = 8081,
    grpc_port = not agent_registry and 50051 or false,
    agent = agent_registry ~= nil,
    readiness_path = "/ping",
    image_pull_policy = "Always",
    resources = default_resources,
  },
  catalogue = {
    node = { image = image("node"), local_command = { "node", "index.js" } },
    python = { image = image("python"), local_command = { "python3", "main.py" } },
    go = { image = image("go"), local_command = { "go", "run", "." } },
  },
}
