/*
 * k8s_config.c: finding the Kubernetes API server and credentials (see
 * k8s_config.h): explicit settings, in-cluster service account, kubeconfig.
 *
 * The kubeconfig is loaded with libyaml's document loader and read along
 * fixed paths only (clusters[].cluster.server...), never walked recursively,
 * so aliases (even one pointing at its own parent) cannot make it loop or
 * expand. Files are read with a size limit (DEVEX_K8S_MAX_FILE).
 *
 * Memory: every string in devex_k8s_config_t is malloc'ed and owned by it;
 * devex_k8s_config_free releases them (and scrubs the token and the key).
 * Out of memory aborts, as buf.c does.
 */
#include "k8s_config.h"
#include "textutil.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <yaml.h>

/* ---- small helpers --------------------------------------------------------- */

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        abort();
    return p;
}

static char *xstrndup(const char *s, size_t n)
{
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

static char *xstrdup(const char *s)
{
    return s ? xstrndup(s, strlen(s)) : NULL;
}

static int fail(devex_k8s_error_t *err, const char *code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(devex_k8s_error_t *err, const char *code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        err->code = code;
        vsnprintf(err->message, sizeof(err->message), fmt, ap);
        va_end(ap);
    }
    return -1;
}

static void scrub_free(char *p, size_t n)
{
    if (!p)
        return;
    volatile char *v = p;
    for (size_t i = 0; i < n; i++)
        v[i] = 0;
    free(p);
}

void devex_k8s_config_free(devex_k8s_config_t *c)
{
    if (!c)
        return;
    free(c->server);
    free(c->ca_file);
    free(c->ca_pem);
    scrub_free(c->token, c->token ? strlen(c->token) : 0);
    free(c->token_file);
    free(c->client_cert);
    free(c->client_cert_pem);
    free(c->client_key);
    scrub_free(c->client_key_pem, c->client_key_pem_len);
    free(c->namespace);
    free(c->tls_server_name);
    free(c->kubeconfig);
    free(c->context);
    free(c->cluster);
    free(c->user);
    memset(c, 0, sizeof(*c));
}

/* Reads a whole file (at most DEVEX_K8S_MAX_FILE bytes), NUL-terminated. */
static char *read_file(const char *path, size_t *len, devex_k8s_error_t *err, const char *what)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fail(err, errno == ENOENT ? "not_found" : "io", "%s %s: %s", what, path, strerror(errno));
        return NULL;
    }
    size_t cap = 4096, n = 0;
    char *buf = xmalloc(cap + 1);
    for (;;) {
        if (n == cap) {
            if (cap >= DEVEX_K8S_MAX_FILE) {
                fclose(f);
                free(buf);
                fail(err, "invalid", "%s %s: larger than %u bytes", what, path, DEVEX_K8S_MAX_FILE);
                return NULL;
            }
            cap *= 2;
            char *nb = realloc(buf, cap + 1);
            if (!nb)
                abort();
            buf = nb;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) {
            if (ferror(f)) {
                int e = errno;
                fclose(f);
                free(buf);
                fail(err, "io", "%s %s: %s", what, path, strerror(e));
                return NULL;
            }
            break;
        }
    }
    fclose(f);
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}

static bool file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static bool valid_server_url(const char *s)
{
    return (strncmp(s, "https://", 8) == 0 && s[8]) || (strncmp(s, "http://", 7) == 0 && s[7]);
}

/* A server URL without trailing '/'. */
static char *server_dup(const char *s)
{
    size_t n = strlen(s);
    while (n > 0 && s[n - 1] == '/')
        n--;
    return xstrndup(s, n);
}

/* path, or dir/path when path is relative and dir is not NULL. */
static char *resolve_path(const char *dir, const char *path)
{
    if (path[0] == '/' || !dir)
        return xstrdup(path);
    size_t dl = strlen(dir), pl = strlen(path);
    char *p = xmalloc(dl + 1 + pl + 1);
    memcpy(p, dir, dl);
    p[dl] = '/';
    memcpy(p + dl + 1, path, pl + 1);
    return p;
}

/* The directory part of path ("." when it has none). */
static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return xstrdup(".");
    if (slash == path)
        return xstrdup("/");
    return xstrndup(path, (size_t)(slash - path));
}

/* ---- base64 ---------------------------------------------------------------- */

char *devex_k8s_base64_decode(const char *in, size_t len, size_t *outlen)
{
    char *out = xmalloc(len / 4 * 3 + 4);
    size_t n = 0;
    unsigned acc = 0;
    int bits = 0, pad = 0, count = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c == ' ' || c == '\n' || c == '\r' || c == '\t')
            continue;
        if (c == '=') {
            pad++;
            continue;
        }
        int v = devex_b64_value(c, 0);
        if (v < 0 || pad > 0) { /* a bad character, or data after padding */
            free(out);
            return NULL;
        }
        count++;
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (char)((acc >> bits) & 0xff);
        }
    }
    /* 1 leftover character cannot encode a byte; padding must complete a quantum */
    if (count % 4 == 1 || pad > 2 || (pad > 0 && (count + pad) % 4 != 0)) {
        free(out);
        return NULL;
    }
    out[n] = '\0';
    if (outlen)
        *outlen = n;
    return out;
}

/* ---- names ----------------------------------------------------------------- */

static bool is_alnum_lower(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

const char *devex_k8s_check_dns1123_label(const char *s, size_t len)
{
    if (len == 0)
        return "must not be empty";
    if (len > 63)
        return "must be no more than 63 characters";
    for (size_t i = 0; i < len; i++)
        if (!is_alnum_lower(s[i]) && s[i] != '-')
            return "must consist of lower case alphanumeric characters or '-' (RFC 1123 label)";
    if (!is_alnum_lower(s[0]) || !is_alnum_lower(s[len - 1]))
        return "must start and end with an alphanumeric character (RFC 1123 label)";
    return NULL;
}

const char *devex_k8s_check_dns1123_subdomain(const char *s, size_t len)
{
    if (len == 0)
        return "must not be empty";
    if (len > 253)
        return "must be no more than 253 characters";
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || s[i] == '.') {
            size_t n = i - start;
            if (n == 0 || !is_alnum_lower(s[start]) || !is_alnum_lower(s[i - 1]))
                return "must consist of lower case alphanumeric characters, '-' or '.', and must start and end "
                       "with an alphanumeric character (RFC 1123 subdomain)";
            start = i + 1;
        } else if (!is_alnum_lower(s[i]) && s[i] != '-') {
            return "must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an "
                   "alphanumeric character (RFC 1123 subdomain)";
        }
    }
    return NULL;
}

const char *devex_k8s_check_dns1035_label(const char *s, size_t len)
{
    const char *e = devex_k8s_check_dns1123_label(s, len);
    if (e)
        return e;
    if (!(s[0] >= 'a' && s[0] <= 'z'))
        return "must start with a lower case letter (RFC 1035 label)";
    return NULL;
}

/* ---- explicit ---------------------------------------------------------------- */

static char *dup_pem(const char *s, size_t *len)
{
    if (!s)
        return NULL;
    *len = strlen(s);
    return xstrndup(s, *len);
}

int devex_k8s_config_explicit(const devex_k8s_settings_t *s, devex_k8s_config_t *out, devex_k8s_error_t *err)
{
    memset(out, 0, sizeof(*out));
    if (!s->server)
        return fail(err, "invalid", "kube: server is required");
    if (!valid_server_url(s->server))
        return fail(err, "invalid", "kube: server must be an http:// or https:// URL");
    if (s->token && s->token_file)
        return fail(err, "invalid", "kube: give token or token_file, not both");
    if (s->ca_file && s->ca_pem)
        return fail(err, "invalid", "kube: give ca_file or ca_pem, not both");
    if (s->client_cert && s->client_cert_pem)
        return fail(err, "invalid", "kube: give client_cert or client_cert_pem, not both");
    if (s->client_key && s->client_key_pem)
        return fail(err, "invalid", "kube: give client_key or client_key_pem, not both");
    bool has_cert = s->client_cert || s->client_cert_pem, has_key = s->client_key || s->client_key_pem;
    if (has_cert != has_key)
        return fail(err, "invalid", "kube: a client certificate needs its key, and a key its certificate");
    out->source = "explicit";
    out->server = server_dup(s->server);
    out->ca_file = xstrdup(s->ca_file);
    out->ca_pem = dup_pem(s->ca_pem, &out->ca_pem_len);
    out->token = xstrdup(s->token);
    out->token_file = xstrdup(s->token_file);
    out->client_cert = xstrdup(s->client_cert);
    out->client_cert_pem = dup_pem(s->client_cert_pem, &out->client_cert_pem_len);
    out->client_key = xstrdup(s->client_key);
    out->client_key_pem = dup_pem(s->client_key_pem, &out->client_key_pem_len);
    out->namespace = xstrdup(s->namespace);
    out->insecure = s->insecure;
    return 0;
}

/* ---- in-cluster ---------------------------------------------------------------- */

static char *trim_dup(const char *s, size_t n)
{
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    while (n > 0 && (*s == ' ' || *s == '\t')) {
        s++;
        n--;
    }
    return xstrndup(s, n);
}

int devex_k8s_config_in_cluster(const char *root, devex_k8s_config_t *out, devex_k8s_error_t *err)
{
    memset(out, 0, sizeof(*out));
    if (!root)
        root = DEVEX_K8S_SA_ROOT;
    const char *host = getenv("KUBERNETES_SERVICE_HOST");
    const char *port = getenv("KUBERNETES_SERVICE_PORT");
    if (!host || !*host || !port || !*port)
        return 1;
    char *token_file = resolve_path(root, "token");
    if (!file_exists(token_file)) {
        free(token_file);
        return 1;
    }
    for (const char *p = port; *p; p++)
        if (*p < '0' || *p > '9' || p - port > 5) {
            free(token_file);
            return fail(err, "invalid", "in-cluster: KUBERNETES_SERVICE_PORT is not a port number");
        }
    for (const char *p = host; *p; p++)
        if (*p == '/' || *p == '@' || *p == '[' || *p == ']' || (unsigned char)*p <= ' ') {
            free(token_file);
            return fail(err, "invalid", "in-cluster: KUBERNETES_SERVICE_HOST is not a host name or address");
        }
    size_t n = strlen(host) + strlen(port) + 16;
    out->server = xmalloc(n);
    if (strchr(host, ':'))
        snprintf(out->server, n, "https://[%s]:%s", host, port);
    else
        snprintf(out->server, n, "https://%s:%s", host, port);
    out->source = "in-cluster";
    out->token_file = token_file;
    char *ca = resolve_path(root, "ca.crt");
    if (file_exists(ca))
        out->ca_file = ca;
    else
        free(ca);
    char *nsf = resolve_path(root, "namespace");
    size_t len;
    char *ns = read_file(nsf, &len, NULL, "namespace");
    free(nsf);
    if (ns) {
        out->namespace = trim_dup(ns, len);
        free(ns);
        if (!*out->namespace) {
            free(out->namespace);
            out->namespace = NULL;
        }
    }
    return 0;
}

/* ---- kubeconfig ------------------------------------------------------------------ */

typedef struct {
    yaml_document_t *doc;
    const char *path;
    devex_k8s_error_t *err;
} kc_t;

static bool is_scalar(yaml_node_t *n)
{
    return n && n->type == YAML_SCALAR_NODE;
}

static bool scalar_is(yaml_node_t *n, const char *s)
{
    return is_scalar(n) && n->data.scalar.length == strlen(s) && memcmp(n->data.scalar.value, s, n->data.scalar.length) == 0;
}

/* A YAML null: absent, "~", "null", or an empty plain scalar. */
static bool is_null(yaml_node_t *n)
{
    if (!n)
        return true;
    if (!is_scalar(n) || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    return n->data.scalar.length == 0 || scalar_is(n, "~") || scalar_is(n, "null") || scalar_is(n, "Null") ||
           scalar_is(n, "NULL");
}

static yaml_node_t *map_get(kc_t *k, yaml_node_t *map, const char *key)
{
    if (!map || map->type != YAML_MAPPING_NODE)
        return NULL;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *kn = yaml_document_get_node(k->doc, p->key);
        if (scalar_is(kn, key))
            return yaml_document_get_node(k->doc, p->value);
    }
    return NULL;
}

/* A string field: 0 and *out = NULL when absent/null, 0 and a copy when a
 * scalar, -1 (error set) when something else. */
static int map_str(kc_t *k, yaml_node_t *map, const char *key, const char *where, char **out)
{
    *out = NULL;
    yaml_node_t *v = map_get(k, map, key);
    if (is_null(v))
        return 0;
    if (!is_scalar(v))
        return fail(k->err, "invalid", "kubeconfig %s: %s.%s must be a string", k->path, where, key);
    if (memchr(v->data.scalar.value, '\0', v->data.scalar.length))
        return fail(k->err, "invalid", "kubeconfig %s: %s.%s holds a NUL byte", k->path, where, key);
    *out = xstrndup((const char *)v->data.scalar.value, v->data.scalar.length);
    return 0;
}

/* The `field` mapping of the entry named `name` in the list at root[list]. */
static yaml_node_t *named_entry(kc_t *k, yaml_node_t *root, const char *list, const char *field, const char *name)
{
    yaml_node_t *seq = map_get(k, root, list);
    if (!seq || seq->type != YAML_SEQUENCE_NODE)
        return NULL;
    for (yaml_node_item_t *it = seq->data.sequence.items.start; it < seq->data.sequence.items.top; it++) {
        yaml_node_t *e = yaml_document_get_node(k->doc, *it);
        if (scalar_is(map_get(k, e, "name"), name)) {
            yaml_node_t *f = map_get(k, e, field);
            return f ? f : e; /* an entry without the field: an empty mapping-like node */
        }
    }
    return NULL;
}

/* Sets *pem from key-data (base64) or *file from key (a path relative to dir). */
static int file_or_data(kc_t *k, yaml_node_t *map, const char *key, const char *where, const char *dir,
                        char **file, char **pem, size_t *pem_len)
{
    char datakey[64];
    snprintf(datakey, sizeof(datakey), "%s-data", key);
    char *data, *path;
    if (map_str(k, map, datakey, where, &data) != 0)
        return -1;
    if (data) {
        *pem = devex_k8s_base64_decode(data, strlen(data), pem_len);
        free(data);
        if (!*pem)
            return fail(k->err, "invalid", "kubeconfig %s: %s.%s is not valid base64", k->path, where, datakey);
        if (*pem_len == 0) {
            free(*pem);
            *pem = NULL;
        } else {
            return 0; /* -data wins over the file, as in client-go */
        }
    }
    if (map_str(k, map, key, where, &path) != 0)
        return -1;
    if (path) {
        if (*path)
            *file = resolve_path(dir, path);
        free(path);
    }
    return 0;
}

static bool yaml_true(yaml_node_t *n)
{
    return scalar_is(n, "true") || scalar_is(n, "True") || scalar_is(n, "TRUE");
}

static int kubeconfig_parse(kc_t *k, yaml_node_t *root, const char *context, const char *dir, devex_k8s_config_t *out)
{
    char *ctxname = NULL;
    if (context) {
        ctxname = xstrdup(context);
    } else {
        if (map_str(k, root, "current-context", "config", &ctxname) != 0)
            return -1;
        if (!ctxname || !*ctxname) {
            free(ctxname);
            return fail(k->err, "invalid", "kubeconfig %s: no current-context is set (and no context was given)",
                        k->path);
        }
    }
    out->context = ctxname;
    yaml_node_t *ctx = named_entry(k, root, "contexts", "context", ctxname);
    if (!ctx)
        return fail(k->err, "invalid", "kubeconfig %s: context \"%s\" is not defined", k->path, ctxname);
    if (map_str(k, ctx, "cluster", "context", &out->cluster) != 0 || map_str(k, ctx, "user", "context", &out->user) != 0 ||
        map_str(k, ctx, "namespace", "context", &out->namespace) != 0)
        return -1;
    if (!out->cluster || !*out->cluster)
        return fail(k->err, "invalid", "kubeconfig %s: context \"%s\" names no cluster", k->path, ctxname);
    yaml_node_t *cl = named_entry(k, root, "clusters", "cluster", out->cluster);
    if (!cl)
        return fail(k->err, "invalid", "kubeconfig %s: cluster \"%s\" (of context \"%s\") is not defined", k->path,
                    out->cluster, ctxname);
    char *server;
    if (map_str(k, cl, "server", "cluster", &server) != 0)
        return -1;
    if (!server || !*server) {
        free(server);
        return fail(k->err, "invalid", "kubeconfig %s: cluster \"%s\" has no server", k->path, out->cluster);
    }
    if (!valid_server_url(server)) {
        free(server);
        return fail(k->err, "invalid", "kubeconfig %s: cluster \"%s\": server must be an http:// or https:// URL",
                    k->path, out->cluster);
    }
    out->server = server_dup(server);
    free(server);
    if (file_or_data(k, cl, "certificate-authority", "cluster", dir, &out->ca_file, &out->ca_pem, &out->ca_pem_len) != 0)
        return -1;
    out->insecure = yaml_true(map_get(k, cl, "insecure-skip-tls-verify"));
    if (map_str(k, cl, "tls-server-name", "cluster", &out->tls_server_name) != 0)
        return -1;
    if (map_get(k, cl, "proxy-url") && !is_null(map_get(k, cl, "proxy-url")))
        return fail(k->err, "unsupported", "kubeconfig %s: cluster \"%s\" uses proxy-url, which devexd does not support",
                    k->path, out->cluster);

    if (!out->user || !*out->user)
        return 0; /* no credentials: anonymous */
    yaml_node_t *u = named_entry(k, root, "users", "user", out->user);
    if (!u)
        return fail(k->err, "invalid", "kubeconfig %s: user \"%s\" (of context \"%s\") is not defined", k->path,
                    out->user, ctxname);
    if (!is_null(map_get(k, u, "exec")))
        return fail(k->err, "unsupported",
                    "kubeconfig %s: user \"%s\" gets its credentials from an exec plugin, which devexd does not run; "
                    "give the user a token, tokenFile or client certificate and key instead",
                    k->path, out->user);
    if (!is_null(map_get(k, u, "auth-provider")))
        return fail(k->err, "unsupported",
                    "kubeconfig %s: user \"%s\" uses an auth-provider, which devexd does not support; "
                    "give the user a token, tokenFile or client certificate and key instead",
                    k->path, out->user);
    if (!is_null(map_get(k, u, "username")) || !is_null(map_get(k, u, "password")))
        return fail(k->err, "unsupported", "kubeconfig %s: user \"%s\" uses basic auth, which devexd does not support",
                    k->path, out->user);
    if (map_str(k, u, "token", "user", &out->token) != 0)
        return -1;
    if (out->token && !*out->token) {
        free(out->token);
        out->token = NULL;
    }
    char *tf;
    if (map_str(k, u, "tokenFile", "user", &tf) != 0)
        return -1;
    if (tf && *tf && !out->token)
        out->token_file = resolve_path(dir, tf);
    free(tf);
    if (file_or_data(k, u, "client-certificate", "user", dir, &out->client_cert, &out->client_cert_pem,
                     &out->client_cert_pem_len) != 0 ||
        file_or_data(k, u, "client-key", "user", dir, &out->client_key, &out->client_key_pem,
                     &out->client_key_pem_len) != 0)
        return -1;
    bool has_cert = out->client_cert || out->client_cert_pem, has_key = out->client_key || out->client_key_pem;
    if (has_cert != has_key)
        return fail(k->err, "invalid", "kubeconfig %s: user \"%s\" has a client %s without its %s", k->path, out->user,
                    has_cert ? "certificate" : "key", has_cert ? "key" : "certificate");
    return 0;
}

int devex_k8s_config_kubeconfig(const char *path, const char *context, devex_k8s_config_t *out, devex_k8s_error_t *err)
{
    memset(out, 0, sizeof(*out));
    char *defpath = NULL;
    if (!path) {
        const char *env = getenv("KUBE_CONFIG_PATH");
        if (env && *env) {
            path = env;
        } else {
            const char *home = getenv("HOME");
            if (!home || !*home)
                return fail(err, "not_found", "no kubeconfig: KUBE_CONFIG_PATH and HOME are not set");
            defpath = resolve_path(home, ".kube/config");
            path = defpath;
        }
    }
    size_t len;
    char *text = read_file(path, &len, err, "kubeconfig");
    if (!text) {
        free(defpath);
        return -1;
    }
    yaml_parser_t parser;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&parser))
        abort();
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    int rc = 0;
    if (!yaml_parser_load(&parser, &doc)) {
        rc = fail(err, "invalid", "kubeconfig %s: YAML error at line %zu: %s", path, parser.problem_mark.line + 1,
                  parser.problem ? parser.problem : "?");
        yaml_parser_delete(&parser);
        free(text);
        free(defpath);
        return rc;
    }
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    kc_t k = {&doc, path, err};
    if (!root || root->type != YAML_MAPPING_NODE) {
        rc = fail(err, "invalid", "kubeconfig %s: not a YAML mapping", path);
    } else {
        char *dir = dir_of(path);
        rc = kubeconfig_parse(&k, root, context, dir, out);
        free(dir);
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    free(text);
    if (rc != 0) {
        devex_k8s_config_free(out);
    } else {
        out->source = "kubeconfig";
        out->kubeconfig = xstrdup(path);
    }
    free(defpath);
    return rc;
}

/* ---- all sources ------------------------------------------------------------------ */

int devex_k8s_config_load(const devex_k8s_settings_t *s, devex_k8s_config_t *out, devex_k8s_error_t *err)
{
    int rc;
    if (s->server) {
        rc = devex_k8s_config_explicit(s, out, err);
    } else {
        rc = 1;
        if (!s->no_in_cluster && !s->kubeconfig)
            rc = devex_k8s_config_in_cluster(s->in_cluster_root, out, err);
        if (rc == 1)
            rc = devex_k8s_config_kubeconfig(s->kubeconfig, s->context, out, err);
    }
    if (rc != 0) {
        devex_k8s_config_free(out);
        return -1;
    }
    /* an explicit namespace overrides the source's */
    if (s->namespace && out->source != NULL && strcmp(out->source, "explicit") != 0) {
        free(out->namespace);
        out->namespace = xstrdup(s->namespace);
    }
    return 0;
}
