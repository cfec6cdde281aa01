/*
 * k8s_config.h: where devexd finds its Kubernetes API server and credentials
 * (k8s_config.c), as a plain struct, so the choice is testable from C without
 * a Lua state. Sources, the first one found wins:
 *
 *   1. explicit settings: a server URL, with ca_file/ca_pem, token/token_file,
 *      client_cert(_pem) and client_key(_pem);
 *   2. in-cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT set,
 *      and <root>/token present (root defaults to
 *      /var/run/secrets/kubernetes.io/serviceaccount), with <root>/ca.crt and
 *      <root>/namespace. The token is referenced by file (token_file) since it
 *      rotates: the client re-reads it (lua/k8s/client.lua);
 *   3. kubeconfig: the path given, else $KUBE_CONFIG_PATH, else
 *      $HOME/.kube/config, parsed with libyaml: current-context (or the
 *      context asked for), its cluster's server, certificate-authority(-data),
 *      insecure-skip-tls-verify, tls-server-name, its user's token, tokenFile,
 *      client-certificate(-data), client-key(-data), and the context's
 *      namespace. Relative file paths are resolved against the kubeconfig's
 *      directory; *-data fields are base64-decoded. A user with an `exec`
 *      plugin or an `auth-provider`, or basic auth, is refused with a message
 *      that says so (code "unsupported"): devexd runs no credential plugins.
 *
 * Errors carry a code: "not_found" (no source applies, or the named file is
 * missing), "invalid" (malformed YAML or base64, missing fields, a context or
 * cluster or user that is not there), "unsupported" (exec, auth-provider,
 * basic auth), "io" (a file that exists but cannot be read).
 */
#ifndef DEVEX_K8S_CONFIG_H
#define DEVEX_K8S_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#define DEVEX_K8S_SA_ROOT "/var/run/secrets/kubernetes.io/serviceaccount"
#define DEVEX_K8S_MAX_FILE (4u << 20) /* kubeconfig, CA, cert and key files */

typedef struct devex_k8s_config {
    const char *source; /* "explicit", "in-cluster", "kubeconfig" (static) */
    char *server;       /* https://host:port, no trailing '/' */
    char *ca_file, *ca_pem;
    size_t ca_pem_len;
    char *token, *token_file;
    char *client_cert, *client_cert_pem; /* client_cert: a file path */
    size_t client_cert_pem_len;
    char *client_key, *client_key_pem;
    size_t client_key_pem_len;
    char *namespace;       /* NULL when the source does not say */
    char *tls_server_name; /* kubeconfig tls-server-name */
    bool insecure;         /* kubeconfig insecure-skip-tls-verify / explicit */
    /* kubeconfig only: what was used */
    char *kubeconfig, *context, *cluster, *user;
} devex_k8s_config_t;

/* What the caller (the devexd config's `kube` table) sets; NULL = not set. */
typedef struct devex_k8s_settings {
    const char *server;
    const char *ca_file, *ca_pem;
    const char *token, *token_file;
    const char *client_cert, *client_cert_pem;
    const char *client_key, *client_key_pem;
    const char *namespace;
    bool insecure;
    const char *kubeconfig;     /* path; NULL: $KUBE_CONFIG_PATH, then ~/.kube/config */
    const char *context;        /* NULL: current-context */
    const char *in_cluster_root; /* NULL: DEVEX_K8S_SA_ROOT (tests point it elsewhere) */
    bool no_in_cluster;         /* skip source 2 */
} devex_k8s_settings_t;

typedef struct devex_k8s_error {
    const char *code; /* static */
    char message[512];
} devex_k8s_error_t;

/* Each returns 0, or -1 with err filled (out is then freed and zeroed). */
int devex_k8s_config_load(const devex_k8s_settings_t *s, devex_k8s_config_t *out, devex_k8s_error_t *err);
int devex_k8s_config_explicit(const devex_k8s_settings_t *s, devex_k8s_config_t *out, devex_k8s_error_t *err);
/* Returns 1 (and fills nothing) when not running in a cluster: no env, no token file. */
int devex_k8s_config_in_cluster(const char *root, devex_k8s_config_t *out, devex_k8s_error_t *err);
int devex_k8s_config_kubeconfig(const char *path, const char *context, devex_k8s_config_t *out,
                                devex_k8s_error_t *err);
void devex_k8s_config_free(devex_k8s_config_t *c);

/* Base64 (standard alphabet, padding optional, whitespace ignored). Returns a
 * malloc'ed NUL-terminated buffer and its length in *outlen, or NULL. */
char *devex_k8s_base64_decode(const char *in, size_t len, size_t *outlen);

/* Name checks (Kubernetes apimachinery validation): RFC 1123 label (max 63,
 * [a-z0-9]([-a-z0-9]*[a-z0-9])?), RFC 1123 subdomain (max 253, such labels
 * joined by '.'), RFC 1035 label (a 1123 label starting with a letter). Each
 * returns NULL when valid, else a static message. */
const char *devex_k8s_check_dns1123_label(const char *s, size_t len);
const char *devex_k8s_check_dns1123_subdomain(const char *s, size_t len);
const char *devex_k8s_check_dns1035_label(const char *s, size_t len);

#endif
