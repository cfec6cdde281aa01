-- k8s: devexd's Kubernetes client (see k8s/client.lua for the API).
--   local k8s = require("k8s"); local c = assert(k8s.new{ kubeconfig = "..." })
return require("k8s.client")
