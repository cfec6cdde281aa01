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
local default_resources = {
  requests = { cpu = "100m", memory = "128Mi" },
  limits = { cpu = "500m", memory = "512Mi" },
}

return {
  registry = "ghcr.io/parthkapoor-dev/devex",
  defaults = {
    port = 8081,
    grpc_port = 50051,
    readiness_path = "/ping",
    image_pull_policy = "Always",
    resources = default_resources,
  },
  catalogue = {
    node = { image = "runner-node:latest", local_command = { "node", "index.js" } },
    python = { image = "runner-python:latest", local_command = { "python3", "main.py" } },
    go = { image = "runner-go:latest", local_command = { "go", "run", "." } },
  },
}
