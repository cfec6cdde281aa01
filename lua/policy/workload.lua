-- policy.workload: the Kubernetes objects of a REPL session, and the
-- session's identity (what the Kubernetes driver needs to find, reach and
-- remove them).
--
-- The default fits the original service's runner image (templates.lua) and
-- makes:
--   * a Deployment (1 replica) whose init container downloads
--     repl/<user>/<replId>/ into an emptyDir at /workspaces through presigned
--     URLs devexd hands out (GET <callback>/files), and the
--     runner container of the template: image pulled per the template
--     (Always by default), ports http (8081) and grpc (50051), a readiness
--     probe GET <readiness_path> ("/ping") on the http port, the runner
--     environment (REPL_ID, TEMPLATE, PORT, RUNNER_TOKEN, CALLBACK_URL);
--   * with the MCP sidecar on (template `mcp = true`, or `mcp_sidecar`,
--     default from ENABLE_MCP_SIDECAR=true|1): a second container
--     `mcp-server` (mcp_image, port 8080, REPL_ID and TEMPLATE, the same
--     /workspaces volume), reached through the gateway at /mcp/<replId>/;
--   * a Service with the runner's own port numbers: http <port> -> <port>,
--     grpc 50051 -> 50051 (and mcp 8080 -> 8080 with the sidecar), as the
--     original service had them;
--   * only when config runner.exposure is "ingress": the original per-REPL
--     Ingress on https://<host>/<replId>/ (and /mcp/<replId>/ with the
--     sidecar) with a TLS block (secret tls_secret) and the cert-manager
--     annotation (issuer tls_issuer), and a Traefik Middleware stripping the
--     prefix. That URL is NOT authenticated: anyone with it reaches the
--     runner. In "gateway" mode (the default) there is no Ingress and no
--     Middleware: devexd serves the runner domain itself, owner only.
-- When the template's runner is the agent (templates.<t>.agent = true, the
-- default with RUNNER_AGENT_REGISTRY's images): no init container; the
-- runner gets CHECKPOINT_INTERVAL and CHECKPOINT_CONCURRENCY
-- (policy.sync.agent_env) and restores the workspace itself before its
-- /ping answers, then checkpoints it; stop asks it for a final checkpoint
-- (runtime.kubernetes) and adds the uploader only when that fails.
-- What differs from the original on purpose: no S3 credential is in the pod
-- (the init container and the uploader fetch presigned URLs from devexd with
-- the runner token), objects carry the managed-by, repl and
-- user labels, the runtime makes the Deployment the owner of the others, the
-- Ingress class is Traefik (ingress_class) rather than nginx, and the pod is
-- locked down (below: `security`).
--
-- The pod's security (workspaces run untrusted code). Every pod gets
-- automountServiceAccountToken: false (no Kubernetes credential in the pod)
-- and enableServiceLinks: false (no environment listing the namespace's
-- Services); pod level: runAsNonRoot, runAsUser/runAsGroup/fsGroup and
-- seccompProfile from `security`; every container (the init container, the
-- runner, the MCP sidecar, and the uploader policy.sync adds at stop):
-- allowPrivilegeEscalation false and capabilities drop ALL.
--   security   the default for every template; a template's own `security`
--              table (templates.catalogue.<t>.security) merges over it key
--              by key, so a template loosens only what it names, visibly in
--              the policy file. Fields (defaults in brackets):
--     run_as_non_root   [true] pod runAsNonRoot: the kubelet refuses to start
--                       a container that would run as uid 0
--     run_as_user, run_as_group  [1000, 1000] pod runAsUser/runAsGroup;
--                       false: the image's own USER (for the original
--                       runner images that is root, so it needs
--                       run_as_non_root = false too)
--     fs_group          [1000] pod fsGroup (the emptyDir volumes get this
--                       group); false: none
--     seccomp_profile   ["RuntimeDefault"] pod seccompProfile: "RuntimeDefault",
--                       "Unconfined" or "Localhost:<profile path>"
--     allow_privilege_escalation  [false] runner and sidecar containers
--     drop_capabilities ["ALL"], add_capabilities [{}]  runner and sidecar
--                       containers (add e.g. { "NET_BIND_SERVICE" })
--     read_only_root_filesystem  [false] runner and sidecar containers (the
--                       original images write outside /workspaces)
--     home              ["/home/devex"] with a non-root run_as_user: an
--                       emptyDir mounted there in the runner and HOME set to
--                       it (the original images have no home for uid 1000,
--                       so npm, pip and go caches would fail); false: none
--   Why non-root by default: the original runner images declare no USER
--   (root), but their runner binary is executable by any uid, works in
--   /workspaces (an emptyDir, writable by all) and needs no capability; what
--   a user loses as uid 1000 is installing into the image's system
--   directories (apt-get, npm -g, pip without a venv), which dropping every
--   capability already breaks for root. A template whose image really needs
--   root says so:  security = { run_as_non_root = false, run_as_user = 0, run_as_group = 0 }.
--   The init container and the uploader always drop every capability, never
--   escalate and use RuntimeDefault seccomp whatever the template says; they
--   run as the pod's user, the same as the runner, so the runner owns the
--   files it restores and the uploader can read every file it wrote (a
--   different uid could do neither without capabilities).
--
-- Knobs:
--   downloader_image image of the init container: any image with a POSIX sh,
--                    awk and curl 7.66+ (16 downloads at a time with curl
--                    --parallel; default curlimages/curl:8.5.0, small, non-root);
--                    it runs M.download_script with only RUNNER_TOKEN and
--                    CALLBACK_URL in its environment (no storage credential:
--                    see M.download_script and routes.runner_storage)
--   ingress_class    ingressClassName (ingress mode)
--   host             the Ingress host (ingress mode; default: config
--                    runner.domain, i.e. RUNNER_DOMAIN or RUNNER_CLUSTER_IP)
--   tls_secret       secretName of the Ingress TLS block (ingress mode)
--   tls_issuer       cert-manager.io/cluster-issuer annotation (ingress mode)
--   mcp_sidecar      the MCP sidecar for every template (a template's `mcp`
--                    field wins); default: ENABLE_MCP_SIDECAR is "true" or "1"
--   mcp_image, mcp_port  the sidecar's image and HTTP port
--   start_timeout    seconds to wait for the pod to be Ready
--   start_concurrency  if > 0: starts of one worker making their API calls
--                    at once (the others queue; waiting for the pod takes no
--                    turn); 0: no limit
--   labels           function(ctx) -> the labels of every object; with
--   managed_label, repl_label  the keys of the managed-by=devexd and repl labels
--   build            function(ctx) -> { deployment =, service =, ingress =,
--                    middleware =, identity = } (replace it to change the objects)
--
-- ctx (what build receives; build must be a pure function of it: devexd
-- calls it again to render, to check the policy and to find a session's
-- objects when it has nothing stored):
--   repl          the REPL: id, user, template, prefix (repl/<user>/<id>/), name
--   template      the catalogue entry, filled from templates.defaults
--   image         the runner image, registry applied
--   name          the object name (the REPL id, a DNS label)
--   namespace, token, callback_url, s3 (config.s3), policy (this table)
--   exposure      "gateway" or "ingress" (config runner.exposure)
--   host          the Ingress host (ingress mode), else the runner domain or nil
--   url           the default public URL of this REPL's runner:
--                 gateway: <runner.scheme>://<runner.domain>/<replId>/, or,
--                 without a runner domain, <public_url>/repl/<replId>/;
--                 ingress: https://<host>/<replId>/
--   mcp           true when this session gets the MCP sidecar
--
-- The identity build returns (the one contract with the Kubernetes driver,
-- which derives nothing from names or labels on its own):
--   selector         label selector of the session's pods (list/watch for
--                    readiness, the pod the uploader is added to on stop);
--                    must select this REPL's pods only
--   names            { deployment =, service =, ingress =, middleware = }:
--                    object names (stop and remove delete names.deployment;
--                    the others are owned by it and follow)
--   port             the runner's HTTP port on the pod: the session's
--                    endpoint is <podIP>:<port> (the gateway's upstream)
--   mcp_port         the MCP sidecar's port on the pod, or nil (endpoint
--                    <podIP>:<mcp_port>, the gateway's /mcp/<replId>/)
--   url              the public URL handed to the frontend
--   labels           the labels every object carries
--   managed_selector label selector of everything devexd made, for the
--                    sweep's orphan listing (must not depend on the REPL)
--   repl_label       the label whose value is the REPL id (orphans are
--                    matched to REPLs by it; must not depend on the REPL)
-- A build that returns no identity (or leaves fields out) gets them derived
-- from its objects: names from metadata.name, selector from the Deployment's
-- spec.selector.matchLabels, labels from the Deployment's labels, port from
-- the template, url from ctx.url, mcp_port from a container named mcp-server,
-- repl_label from the Deployment label whose value is the REPL id, and
-- managed_selector "app.kubernetes.io/managed-by=devexd" when that label is
-- there. What cannot be derived, or does not hold (the pod template's labels
-- must match selector, the Deployment's must match managed_selector and carry
-- repl_label), is an error at `devexd --check`, at load (SIGHUP keeps the
-- running policy) and in `devexd workload render`.
local json = require("devex.json")

local function env_flag(name)
  local v = os.getenv(name)
  return v ~= nil and (v:lower() == "true" or v == "1")
end

local M = {
  downloader_image = "curlimages/curl:8.5.0",
  ingress_class = "traefik",
  host = nil,
  tls_secret = "tls-secret",
  tls_issuer = "letsencrypt-cluster-issuer",
  mcp_sidecar = env_flag("ENABLE_MCP_SIDECAR"),
  mcp_image = "ghcr.io/parthkapoor-dev/devex/mcp:latest",
  mcp_port = 8080,
  start_timeout = 120,
  start_concurrency = 0,
  security = {
    run_as_non_root = true,
    run_as_user = 1000,
    run_as_group = 1000,
    fs_group = 1000,
    seccomp_profile = "RuntimeDefault",
    allow_privilege_escalation = false,
    drop_capabilities = { "ALL" },
    add_capabilities = {},
    read_only_root_filesystem = false,
    home = "/home/devex",
  },
}

-- label values: at most 63 characters of [A-Za-z0-9._-], starting and ending alphanumeric
local function label_value(s)
  s = tostring(s):gsub("[^%w%._%-]", "_"):sub(1, 63)
  s = s:gsub("^[^%w]+", ""):gsub("[^%w]+$", "")
  return s
end
M.label_value = label_value

M.managed_label = "app.kubernetes.io/managed-by"
M.repl_label = "devex.io/repl"

function M.labels(ctx)
  local p = ctx.policy or M
  return {
    [p.managed_label or M.managed_label] = "devexd",
    ["app.kubernetes.io/name"] = "devex-runner",
    [p.repl_label or M.repl_label] = ctx.repl.id,
    ["devex.io/user"] = label_value(ctx.repl.user),
  }
end

-- The storage helpers (init container, uploader) hold no storage
-- credential: only the session's runner token (the uploader: a save token
-- valid for the stop) and devexd's callback URL. devexd, the storage broker
-- (routes.runner_storage), answers with presigned URLs for exactly one key
-- under this REPL's prefix, valid a few minutes (policy.sync.url_expires),
-- and does the deletions of a save itself. WORKSPACE_DIR (default
-- /workspaces) is for running the scripts outside a pod (the tests).
M.download_script = [=[
set -eu
dir="${WORKSPACE_DIR:-/workspaces}"
base="${CALLBACK_URL%/}"
list=$(curl -fsS --retry 3 -H "Authorization: Bearer $RUNNER_TOKEN" -H "Accept: text/plain" "$base/files")
n=$(printf '%s\n' "$list" | grep -c . || true)
if [ "$n" -gt 0 ]; then
  printf '%s\n' "$list" | awk -F '\t' -v dir="$dir" 'NF >= 2 {
    p = dir "/" $1; gsub(/[\\"]/, "\\\\&", p); u = $2; gsub(/[\\"]/, "\\\\&", u)
    printf "url = \"%s\"\noutput = \"%s\"\n", u, p }' |
    curl -fsS -g --path-as-is --retry 3 --create-dirs --parallel --parallel-max 16 -K -
fi
echo "restored $n files"
]=]

-- env of the init container and the uploader: nothing else
function M.helper_env(token, callback_url)
  return json.array({
    { name = "RUNNER_TOKEN", value = token or "" },
    { name = "CALLBACK_URL", value = callback_url or "" },
  })
end

local function workspace_mount() return json.array({ { name = "workspaces", mountPath = "/workspaces" } }) end

-- security: the checks of each field (nil: valid; else what was expected)
local function uid_or_false(v)
  if v == false or (math.type(v) == "integer" and v >= 0) then return nil end
  return "an integer >= 0 or false"
end
local function boolean(v) if type(v) == "boolean" then return nil end return "true or false" end
local function caps(v)
  if type(v) ~= "table" then return "a list of capability names" end
  for k, c in pairs(v) do
    if math.type(k) ~= "integer" or type(c) ~= "string" or not c:match("^[A-Z_]+$") then
      return 'a list of capability names (e.g. { "ALL" } or { "NET_BIND_SERVICE" })'
    end
  end
  return nil
end
local SECURITY = {
  run_as_non_root = boolean,
  run_as_user = uid_or_false,
  run_as_group = uid_or_false,
  fs_group = uid_or_false,
  seccomp_profile = function(v)
    if v == "RuntimeDefault" or v == "Unconfined" or (type(v) == "string" and v:match("^Localhost:%S+$")) then
      return nil
    end
    return '"RuntimeDefault", "Unconfined" or "Localhost:<profile>"'
  end,
  allow_privilege_escalation = boolean,
  drop_capabilities = caps,
  add_capabilities = caps,
  read_only_root_filesystem = boolean,
  home = function(v)
    if v == false or (type(v) == "string" and v:match("^/[%w%._/-]*$") and not v:find("..", 1, true)) then
      return nil
    end
    return "an absolute path or false"
  end,
}

local function list_copy(t)
  local out = {}
  for i, v in ipairs(t) do out[i] = v end
  return out
end

-- The security of ctx's session: workload.security with the template's own
-- `security` merged over it key by key (a capability list is replaced
-- whole). Raises, naming the field, on an unknown field or a wrong value, so
-- `devexd --check` refuses a typo instead of silently not applying it.
function M.security_of(ctx)
  local p = ctx.policy or M
  if p.security ~= nil and type(p.security) ~= "table" then error("workload.security must be a table", 0) end
  local base = p.security or M.security
  local tsec = ctx.template and ctx.template.security
  local tname = "templates.catalogue." .. tostring(ctx.repl and ctx.repl.template) .. ".security"
  if tsec ~= nil and type(tsec) ~= "table" then error(tname .. " must be a table", 0) end
  local out = {}
  for _, layer in ipairs({ { M.security, "workload.security" }, { base, "workload.security" }, { tsec or {}, tname } }) do
    for k, v in pairs(layer[1]) do
      local check = SECURITY[k]
      if not check then
        error(string.format("%s: unknown field '%s'", layer[2], tostring(k)), 0)
      end
      local expected = check(v)
      if expected then
        error(string.format("%s.%s: expected %s, got %s", layer[2], k, expected, tostring(v)), 0)
      end
      out[k] = type(v) == "table" and list_copy(v) or v
    end
  end
  if out.run_as_non_root and out.run_as_user == 0 then
    error(tname .. ": run_as_non_root with run_as_user 0 never starts (the kubelet refuses it)", 0)
  end
  return out
end

local function seccomp(profile)
  local localhost = profile:match("^Localhost:(.+)$")
  if localhost then return { type = "Localhost", localhostProfile = localhost } end
  return { type = profile }
end

-- pod-level securityContext of a session's pod
function M.pod_security_context(sec)
  local sc = { runAsNonRoot = sec.run_as_non_root, seccompProfile = seccomp(sec.seccomp_profile) }
  if sec.run_as_user then sc.runAsUser = sec.run_as_user end
  if sec.run_as_group then sc.runAsGroup = sec.run_as_group end
  if sec.fs_group then sc.fsGroup = sec.fs_group end
  return sc
end

-- securityContext of the runner and the MCP sidecar: the template's
function M.container_security_context(sec)
  local c = { drop = json.array(list_copy(sec.drop_capabilities)) }
  if sec.add_capabilities[1] then c.add = json.array(list_copy(sec.add_capabilities)) end
  return {
    allowPrivilegeEscalation = sec.allow_privilege_escalation,
    capabilities = c,
    readOnlyRootFilesystem = sec.read_only_root_filesystem,
  }
end

-- securityContext of the init container and the uploader: never loosened.
-- They run as the pod's user (the runner's), see the header.
function M.helper_security_context()
  return {
    allowPrivilegeEscalation = false,
    capabilities = { drop = json.array({ "ALL" }) },
    seccompProfile = { type = "RuntimeDefault" },
  }
end

function M.build(ctx)
  local p = ctx.policy or M
  local labels = (p.labels or M.labels)(ctx)
  local repl_label = p.repl_label or M.repl_label
  local t = ctx.template
  local id = ctx.repl.id
  local port = t.port or 8081
  local grpc = t.grpc_port
  if grpc == nil then grpc = 50051 end
  local mcp_port = ctx.mcp and (p.mcp_port or 8080) or nil
  local pod_match = { [repl_label] = id }
  local sec = M.security_of(ctx)
  -- a home for a uid the image does not know (see `security.home`)
  local home = sec.home and math.type(sec.run_as_user) == "integer" and sec.run_as_user > 0 and sec.home or nil
  local runner_env = {
    { name = "REPL_ID", value = id },
    { name = "TEMPLATE", value = ctx.repl.template },
    { name = "PORT", value = tostring(port) },
    { name = "RUNNER_TOKEN", value = ctx.token },
    { name = "CALLBACK_URL", value = ctx.callback_url },
  }
  -- the runner is the agent (`devexd runner`, templates.<t>.agent): it
  -- restores and checkpoints the workspace itself through devexd (policy.sync
  -- checkpoint_interval, concurrency), so the pod has no init container, and
  -- stop asks it for a final checkpoint instead of adding the uploader
  local agent = t.agent == true
  if agent then
    local env = require("policy.sync").agent_env(ctx.sync)
    local names = {}
    for k in pairs(env) do names[#names + 1] = k end
    table.sort(names) -- a stable render
    for _, k in ipairs(names) do runner_env[#runner_env + 1] = { name = k, value = env[k] } end
  end
  local runner_mounts = { { name = "workspaces", mountPath = "/workspaces" } }
  local volumes = { { name = "workspaces", emptyDir = json.object({}) } }
  if home then
    runner_env[#runner_env + 1] = { name = "HOME", value = home }
    runner_mounts[#runner_mounts + 1] = { name = "home", mountPath = home }
    volumes[#volumes + 1] = { name = "home", emptyDir = json.object({}) }
  end

  local ports = { { name = "http", containerPort = port, protocol = "TCP" } }
  local svc_ports = { { name = "http", port = port, targetPort = port, protocol = "TCP" } }
  if grpc then
    ports[#ports + 1] = { name = "grpc", containerPort = grpc, protocol = "TCP" }
    svc_ports[#svc_ports + 1] = { name = "grpc", port = grpc, targetPort = grpc, protocol = "TCP" }
  end
  local containers = { {
    name = "runner",
    image = ctx.image,
    imagePullPolicy = t.image_pull_policy,
    command = t.command and json.array(t.command) or nil,
    workingDir = "/workspaces",
    ports = json.array(ports),
    env = json.array(runner_env),
    readinessProbe = { httpGet = { path = t.readiness_path or "/ping", port = port },
                       periodSeconds = 2, failureThreshold = 3 },
    resources = t.resources,
    securityContext = M.container_security_context(sec),
    volumeMounts = json.array(runner_mounts),
  } }
  if mcp_port then
    containers[#containers + 1] = {
      name = "mcp-server",
      image = p.mcp_image,
      imagePullPolicy = "Always",
      ports = json.array({ { name = "mcp", containerPort = mcp_port, protocol = "TCP" } }),
      env = json.array({
        { name = "REPL_ID", value = id },
        { name = "TEMPLATE", value = ctx.repl.template },
      }),
      securityContext = M.container_security_context(sec),
      volumeMounts = workspace_mount(),
    }
    svc_ports[#svc_ports + 1] = { name = "mcp", port = mcp_port, targetPort = mcp_port, protocol = "TCP" }
  end

  local deployment = {
    apiVersion = "apps/v1", kind = "Deployment",
    metadata = { name = ctx.name, namespace = ctx.namespace, labels = labels },
    spec = {
      replicas = 1,
      selector = { matchLabels = pod_match },
      template = {
        metadata = { labels = labels },
        spec = {
          automountServiceAccountToken = false,
          enableServiceLinks = false,
          securityContext = M.pod_security_context(sec),
          volumes = json.array(volumes),
          initContainers = (not agent) and json.array({ {
            name = "download",
            image = p.downloader_image,
            command = json.array({ "sh", "-c", M.download_script }),
            env = M.helper_env(ctx.token, ctx.callback_url),
            securityContext = M.helper_security_context(),
            volumeMounts = workspace_mount(),
          } }) or nil,
          containers = json.array(containers),
        },
      },
    },
  }
  local service = {
    apiVersion = "v1", kind = "Service",
    metadata = { name = ctx.name, namespace = ctx.namespace, labels = labels },
    spec = { selector = pod_match, ports = json.array(svc_ports) },
  }
  local objs = { deployment = deployment, service = service }
  local names = { deployment = ctx.name, service = ctx.name }

  if ctx.exposure == "ingress" then
    local strip = ctx.name .. "-strip"
    local prefixes = { "/" .. id }
    local paths = { {
      path = "/" .. id, pathType = "Prefix",
      backend = { service = { name = ctx.name, port = { number = port } } },
    } }
    if mcp_port then
      prefixes[#prefixes + 1] = "/mcp/" .. id
      paths[#paths + 1] = { path = "/mcp/" .. id, pathType = "Prefix",
                            backend = { service = { name = ctx.name, port = { number = mcp_port } } } }
    end
    objs.middleware = {
      apiVersion = "traefik.io/v1alpha1", kind = "Middleware",
      metadata = { name = strip, namespace = ctx.namespace, labels = labels },
      spec = { stripPrefix = { prefixes = json.array(prefixes) } },
    }
    objs.ingress = {
      apiVersion = "networking.k8s.io/v1", kind = "Ingress",
      metadata = {
        name = ctx.name, namespace = ctx.namespace, labels = labels,
        annotations = {
          ["traefik.ingress.kubernetes.io/router.middlewares"] = ctx.namespace .. "-" .. strip .. "@kubernetescrd",
          ["cert-manager.io/cluster-issuer"] = p.tls_issuer,
        },
      },
      spec = {
        ingressClassName = p.ingress_class,
        tls = json.array({ { hosts = json.array({ ctx.host }), secretName = p.tls_secret } }),
        rules = json.array({ { host = ctx.host, http = { paths = json.array(paths) } } }),
      },
    }
    names.ingress, names.middleware = ctx.name, strip
  end

  objs.identity = {
    selector = repl_label .. "=" .. id,
    names = names,
    port = port,
    mcp_port = mcp_port,
    url = ctx.url,
    labels = labels,
    managed_selector = (p.managed_label or M.managed_label) .. "=devexd",
    repl_label = repl_label,
  }
  return objs
end

return M
