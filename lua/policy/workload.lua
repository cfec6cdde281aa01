-- policy.workload: the Kubernetes objects of a REPL session, and the
-- session's identity (what the Kubernetes driver needs to find, reach and
-- remove them).
--
-- The default fits the original service's runner image (templates.lua) and
-- makes:
--   * a Deployment (1 replica) whose init container downloads
--     repl/<user>/<replId>/ from S3 into an emptyDir at /workspaces, and the
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
-- What differs from the original on purpose: S3 credentials come from a
-- Secret by reference (never inlined), objects carry the managed-by, repl and
-- user labels, the runtime makes the Deployment the owner of the others, and
-- the Ingress class is Traefik (ingress_class) rather than nginx.
--
-- Knobs:
--   s3_secret        Secret with keys access_key and secret_key
--   downloader_image image of the init container (must have the aws CLI)
--   ingress_class    ingressClassName (ingress mode)
--   host             the Ingress host (ingress mode; default: config
--                    runner.domain, i.e. RUNNER_DOMAIN or RUNNER_CLUSTER_IP)
--   tls_secret       secretName of the Ingress TLS block (ingress mode)
--   tls_issuer       cert-manager.io/cluster-issuer annotation (ingress mode)
--   mcp_sidecar      the MCP sidecar for every template (a template's `mcp`
--                    field wins); default: ENABLE_MCP_SIDECAR is "true" or "1"
--   mcp_image, mcp_port  the sidecar's image and HTTP port
--   start_timeout    seconds to wait for the pod to be Ready
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
  s3_secret = "devexd-s3",
  downloader_image = "amazon/aws-cli:2.15.0",
  ingress_class = "traefik",
  host = nil,
  tls_secret = "tls-secret",
  tls_issuer = "letsencrypt-cluster-issuer",
  mcp_sidecar = env_flag("ENABLE_MCP_SIDECAR"),
  mcp_image = "ghcr.io/parthkapoor-dev/devex/mcp:latest",
  mcp_port = 8080,
  start_timeout = 120,
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

local function s3_env(ctx, secret)
  local s3 = ctx.s3 or {}
  return json.array({
    { name = "AWS_ACCESS_KEY_ID", valueFrom = { secretKeyRef = { name = secret, key = "access_key" } } },
    { name = "AWS_SECRET_ACCESS_KEY", valueFrom = { secretKeyRef = { name = secret, key = "secret_key" } } },
    { name = "AWS_DEFAULT_REGION", value = s3.region or "auto" },
    { name = "S3_ENDPOINT", value = s3.endpoint or "" },
    { name = "S3_BUCKET", value = s3.bucket or "" },
    { name = "REPL_PREFIX", value = ctx.repl.prefix },
  })
end
M.s3_env = s3_env

local function workspace_mount() return json.array({ { name = "workspaces", mountPath = "/workspaces" } }) end

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
    env = json.array({
      { name = "REPL_ID", value = id },
      { name = "TEMPLATE", value = ctx.repl.template },
      { name = "PORT", value = tostring(port) },
      { name = "RUNNER_TOKEN", value = ctx.token },
      { name = "CALLBACK_URL", value = ctx.callback_url },
    }),
    readinessProbe = { httpGet = { path = t.readiness_path or "/ping", port = port },
                       periodSeconds = 2, failureThreshold = 3 },
    resources = t.resources,
    volumeMounts = workspace_mount(),
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
          volumes = json.array({ { name = "workspaces", emptyDir = json.object({}) } }),
          initContainers = json.array({ {
            name = "download",
            image = p.downloader_image,
            command = json.array({ "sh", "-c",
              'aws s3 cp --recursive --endpoint-url "$S3_ENDPOINT" "s3://$S3_BUCKET/$REPL_PREFIX" /workspaces/' }),
            env = s3_env(ctx, p.s3_secret),
            volumeMounts = workspace_mount(),
          } }),
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
