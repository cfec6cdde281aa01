-- policy.workload: the Kubernetes objects of a REPL session. The default
-- reproduces the original service: a Deployment (1 replica) whose init
-- container downloads repl/<user>/<replId>/ from S3 into an emptyDir at
-- /workspaces, the runner container of the template with a readiness probe on
-- its port, a Service, an Ingress routing https://<RUNNER_CLUSTER_IP host>/<replId>/
-- to it, and a Traefik Middleware that strips that prefix. S3 credentials come
-- from a Secret by reference, never inlined. Every object carries the
-- managed-by, repl and user labels; the runtime makes the Deployment the
-- owner of the others.
--
-- An operator can replace build (a function(ctx) returning
-- { deployment =, service =, ingress =, middleware = }) or tune the fields:
--   s3_secret        Secret with keys access_key and secret_key
--   downloader_image image of the init container (must have the aws CLI)
--   ingress_class    ingressClassName
--   host             the runners' host (default: config runner.cluster_ip)
--   start_timeout    seconds to wait for the pod to be Ready
local json = require("devex.json")

local M = {
  s3_secret = "devexd-s3",
  downloader_image = "amazon/aws-cli:2.15.0",
  ingress_class = "traefik",
  host = nil,
  start_timeout = 120,
}

-- label values: at most 63 characters of [A-Za-z0-9._-], starting and ending alphanumeric
local function label_value(s)
  s = tostring(s):gsub("[^%w%._%-]", "_"):sub(1, 63)
  s = s:gsub("^[^%w]+", ""):gsub("[^%w]+$", "")
  return s
end
M.label_value = label_value

function M.labels(ctx)
  return {
    ["app.kubernetes.io/managed-by"] = "devexd",
    ["app.kubernetes.io/name"] = "devex-runner",
    ["devex.io/repl"] = ctx.repl.id,
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

-- ctx: { repl = meta, template = catalogue entry, name = object name, token =,
--        callback_url =, image =, namespace =, s3 = config.s3, host = }
function M.build(ctx)
  local p = ctx.policy or M
  local labels = M.labels(ctx)
  local t = ctx.template
  local port = t.port or 8080
  local deployment = {
    apiVersion = "apps/v1", kind = "Deployment",
    metadata = { name = ctx.name, namespace = ctx.namespace, labels = labels },
    spec = {
      replicas = 1,
      selector = { matchLabels = { ["devex.io/repl"] = ctx.repl.id } },
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
            volumeMounts = json.array({ { name = "workspaces", mountPath = "/workspaces" } }),
          } }),
          containers = json.array({ {
            name = "runner",
            image = ctx.image,
            command = t.command and json.array(t.command) or nil,
            workingDir = "/workspaces",
            ports = json.array({ { name = "http", containerPort = port, protocol = "TCP" } }),
            env = json.array({
              { name = "REPL_ID", value = ctx.repl.id },
              { name = "TEMPLATE", value = ctx.repl.template },
              { name = "PORT", value = tostring(port) },
              { name = "RUNNER_TOKEN", value = ctx.token },
              { name = "CALLBACK_URL", value = ctx.callback_url },
            }),
            readinessProbe = { httpGet = { path = "/", port = port }, periodSeconds = 2, failureThreshold = 3 },
            resources = t.resources,
            volumeMounts = json.array({ { name = "workspaces", mountPath = "/workspaces" } }),
          } }),
        },
      },
    },
  }
  local service = {
    apiVersion = "v1", kind = "Service",
    metadata = { name = ctx.name, namespace = ctx.namespace, labels = labels },
    spec = {
      selector = { ["devex.io/repl"] = ctx.repl.id },
      ports = json.array({ { name = "http", port = 80, targetPort = port, protocol = "TCP" } }),
    },
  }
  local middleware = {
    apiVersion = "traefik.io/v1alpha1", kind = "Middleware",
    metadata = { name = ctx.name .. "-strip", namespace = ctx.namespace, labels = labels },
    spec = { stripPrefix = { prefixes = json.array({ "/" .. ctx.repl.id }) } },
  }
  local ingress = {
    apiVersion = "networking.k8s.io/v1", kind = "Ingress",
    metadata = {
      name = ctx.name, namespace = ctx.namespace, labels = labels,
      annotations = { ["traefik.ingress.kubernetes.io/router.middlewares"] =
        ctx.namespace .. "-" .. ctx.name .. "-strip@kubernetescrd" },
    },
    spec = {
      ingressClassName = p.ingress_class,
      rules = json.array({ {
        host = ctx.host,
        http = { paths = json.array({ {
          path = "/" .. ctx.repl.id, pathType = "Prefix",
          backend = { service = { name = ctx.name, port = { number = 80 } } },
        } }) },
      } }),
    },
  }
  return { deployment = deployment, service = service, ingress = ingress, middleware = middleware }
end

return M
