-- services.k8s: the app's Kubernetes client, from the config's kube table:
--   kube = { config_path = KUBE_CONFIG_PATH, namespace = KUBE_NAMESPACE,
--            server =, ca_file =, token_file =, client_cert =, client_key =, context =,
--            max_connections = 4 (per worker, for requests; see k8s.client) }
-- (explicit settings, else in-cluster, else the kubeconfig; see lua/k8s/client.lua).
local k8s = require("k8s")
local config = require("devex.config").get()

local M = {}

local KEYS = { "server", "ca_file", "token_file", "client_cert", "client_key", "namespace", "context", "insecure",
               "max_connections" }

local client
function M.client()
  if client then return client end
  local kube = config.kube or {}
  local settings = {}
  for _, k in ipairs(KEYS) do settings[k] = kube[k] end
  if kube.config_path and kube.config_path ~= "" then settings.kubeconfig = kube.config_path end
  local c, err = k8s.new(settings)
  if not c then return nil, err end
  client = c
  return c
end

return M
