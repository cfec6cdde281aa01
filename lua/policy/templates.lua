-- policy.templates: the catalogue of REPL templates. Each entry:
--   image      the runner image (prefixed with `registry` when relative)
--   port       the runner's HTTP port inside the pod
--   command    the runner command in the image (nil: the image's own)
--   local_command  the command the single-host runtime runs in the
--              workspace (a stand-in for the runner image on a bare machine)
--   resources  Kubernetes requests and limits of the runner container
-- Files of a template come from templates/<name>/ in storage (`devexd templates sync`).
local default_resources = {
  requests = { cpu = "100m", memory = "128Mi" },
  limits = { cpu = "500m", memory = "512Mi" },
}

return {
  registry = "devex",
  catalogue = {
    node = { image = "runner-node", port = 8080, local_command = { "node", "index.js" }, resources = default_resources },
    python = { image = "runner-python", port = 8080, local_command = { "python3", "main.py" }, resources = default_resources },
    go = { image = "runner-go", port = 8080, local_command = { "go", "run", "." }, resources = default_resources },
  },
}
