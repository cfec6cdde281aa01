/*
 * k8s.h: devex.k8s, the parts of the Kubernetes client that belong in C
 * (k8s.c): loading the connection config (k8s_config.c: explicit settings,
 * in-cluster service account, kubeconfig with libyaml, base64 *-data), name
 * validation and URL path/query building with escaping. The requests, API
 * discovery, retries, watch and wait are Lua on devex.http (lua/k8s/).
 *
 * Lua (misuse raises; bad data or missing files return nil, err with
 * err.code "not_found" | "invalid" | "unsupported" | "io"):
 *
 *   k8s.load_config{ server=, ca_file=, ca_pem=, token=, token_file=,
 *       client_cert=, client_cert_pem=, client_key=, client_key_pem=, insecure=,
 *       namespace=, kubeconfig= (or config_path=), context=,
 *       in_cluster_root= (tests), in_cluster = false (skip that source) }
 *     -> cfg | nil, err. Sources, the first found wins: explicit (server set),
 *        in-cluster (unless a kubeconfig path is given), kubeconfig.
 *     cfg = { source = "explicit" | "in-cluster" | "kubeconfig", server,
 *             ca_file | ca_pem, token | token_file, client_cert | client_cert_pem,
 *             client_key | client_key_pem, insecure, namespace, tls_server_name,
 *             kubeconfig, context, cluster, user }  (absent fields are nil;
 *             the TLS fields are named as devex.http's options)
 *   k8s.kubeconfig(path|nil, context|nil) -> cfg | nil, err
 *   k8s.in_cluster(root|nil)  -> cfg | false (not in a cluster) | nil, err
 *   k8s.check_name(name, kind) kind = "subdomain" (default) | "label" | "dns1035"
 *     -> true | nil, message
 *   k8s.escape(s)  -> s percent-encoded for a path segment or query value
 *                     (only A-Z a-z 0-9 - . _ ~ kept)
 *   k8s.path{ prefix = "/api/v1" | "/apis/<group>/<version>", resource = "pods",
 *             namespace =, name =, subresource = } -> "/api/v1/namespaces/ns/pods/n/status"
 *     (namespace and name are checked as RFC 1123 subdomain / any non-empty
 *     string without '/' and not "." or ".."; both are escaped; resource and
 *     subresource must be lower-case [a-z0-9.-]; raises on misuse)
 *   k8s.query{ name = value, ... } or { {name, value}, ... } -> "" | "?a=b&c=d"
 *     (map form sorted by name; booleans and numbers become text)
 *   k8s.base64_decode(s) -> bytes | nil
 */
#ifndef DEVEX_K8S_H
#define DEVEX_K8S_H

#include <lua.h>

int luaopen_devex_k8s(lua_State *L);

#endif
