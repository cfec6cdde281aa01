/*
 * k8s.c: devex.k8s (see k8s.h), the C half of devexd's Kubernetes client:
 * connection config as a Lua table (from k8s_config.c), name checks and URL
 * building. The I/O is lua/k8s/client.lua on devex.http, so retries, watch
 * and wait stay in readable Lua, as for S3.
 *
 * Memory: a config struct is copied into a Lua table, then freed (only an
 * out-of-memory error while building that table could skip the free).
 * Misuse is checked before anything is allocated in C.
 */
#include "k8s.h"

#include <lauxlib.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "errors.h"
#include "k8s_config.h"

/* ---- config -------------------------------------------------------------- */

static void set_str(lua_State *L, const char *k, const char *v)
{
    if (v) {
        lua_pushstring(L, v);
        lua_setfield(L, -2, k);
    }
}

static void set_lstr(lua_State *L, const char *k, const char *v, size_t n)
{
    if (v) {
        lua_pushlstring(L, v, n);
        lua_setfield(L, -2, k);
    }
}

static void push_config(lua_State *L, const devex_k8s_config_t *c)
{
    lua_createtable(L, 0, 16);
    set_str(L, "source", c->source);
    set_str(L, "server", c->server);
    set_str(L, "ca_file", c->ca_file);
    set_lstr(L, "ca_pem", c->ca_pem, c->ca_pem_len);
    set_str(L, "token", c->token);
    set_str(L, "token_file", c->token_file);
    set_str(L, "client_cert", c->client_cert);
    set_lstr(L, "client_cert_pem", c->client_cert_pem, c->client_cert_pem_len);
    set_str(L, "client_key", c->client_key);
    set_lstr(L, "client_key_pem", c->client_key_pem, c->client_key_pem_len);
    set_str(L, "namespace", c->namespace);
    set_str(L, "tls_server_name", c->tls_server_name);
    set_str(L, "kubeconfig", c->kubeconfig);
    set_str(L, "context", c->context);
    set_str(L, "cluster", c->cluster);
    set_str(L, "user", c->user);
    lua_pushboolean(L, c->insecure);
    lua_setfield(L, -2, "insecure");
}

static int push_result(lua_State *L, int rc, devex_k8s_config_t *c, devex_k8s_error_t *err)
{
    if (rc != 0) {
        devex_k8s_config_free(c);
        return devex_push_fail(L, err->code ? err->code : "invalid", err->message, 0);
    }
    push_config(L, c);
    devex_k8s_config_free(c);
    return 1;
}

static const char *const settings_keys[] = {
    "server",         "ca_file",    "ca_pem",      "token",   "token_file",      "client_cert",
    "client_cert_pem", "client_key", "client_key_pem", "insecure", "namespace", "kubeconfig",
    "config_path",    "context",    "in_cluster_root", "in_cluster", NULL,
};

static const char *opt_str(lua_State *L, int t, const char *k)
{
    int ty = lua_getfield(L, t, k);
    const char *s = NULL;
    if (ty == LUA_TSTRING) {
        size_t n;
        s = lua_tolstring(L, -1, &n);
        if (strlen(s) != n)
            luaL_error(L, "k8s.load_config: %s holds a NUL byte", k);
        if (n == 0)
            s = NULL; /* "" = not set: the config file maps unset variables to "" or nil */
    } else if (ty != LUA_TNIL) {
        luaL_error(L, "k8s.load_config: %s must be a string, got %s", k, luaL_typename(L, -1));
    }
    lua_pop(L, 1); /* the string stays alive in the table */
    return s;
}

static bool opt_bool(lua_State *L, int t, const char *k, bool def)
{
    int ty = lua_getfield(L, t, k);
    bool v = def;
    if (ty == LUA_TBOOLEAN)
        v = lua_toboolean(L, -1);
    else if (ty != LUA_TNIL)
        luaL_error(L, "k8s.load_config: %s must be a boolean, got %s", k, luaL_typename(L, -1));
    lua_pop(L, 1);
    return v;
}

static int l_load_config(lua_State *L)
{
    devex_k8s_settings_t s = {0};
    if (!lua_isnoneornil(L, 1)) {
        luaL_checktype(L, 1, LUA_TTABLE);
        lua_pushnil(L);
        while (lua_next(L, 1)) {
            bool known = false;
            if (lua_type(L, -2) == LUA_TSTRING)
                for (const char *const *k = settings_keys; *k; k++)
                    if (strcmp(*k, lua_tostring(L, -2)) == 0)
                        known = true;
            if (!known)
                return luaL_error(L, "k8s.load_config: unknown setting '%s'",
                                  lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : luaL_typename(L, -2));
            lua_pop(L, 1);
        }
        s.server = opt_str(L, 1, "server");
        s.ca_file = opt_str(L, 1, "ca_file");
        s.ca_pem = opt_str(L, 1, "ca_pem");
        s.token = opt_str(L, 1, "token");
        s.token_file = opt_str(L, 1, "token_file");
        s.client_cert = opt_str(L, 1, "client_cert");
        s.client_cert_pem = opt_str(L, 1, "client_cert_pem");
        s.client_key = opt_str(L, 1, "client_key");
        s.client_key_pem = opt_str(L, 1, "client_key_pem");
        s.namespace = opt_str(L, 1, "namespace");
        s.insecure = opt_bool(L, 1, "insecure", false);
        s.kubeconfig = opt_str(L, 1, "kubeconfig");
        if (!s.kubeconfig)
            s.kubeconfig = opt_str(L, 1, "config_path");
        s.context = opt_str(L, 1, "context");
        s.in_cluster_root = opt_str(L, 1, "in_cluster_root");
        s.no_in_cluster = !opt_bool(L, 1, "in_cluster", true);
    }
    devex_k8s_config_t c;
    devex_k8s_error_t err = {0};
    int rc = devex_k8s_config_load(&s, &c, &err);
    return push_result(L, rc, &c, &err);
}

static int l_kubeconfig(lua_State *L)
{
    const char *path = luaL_optstring(L, 1, NULL);
    const char *context = luaL_optstring(L, 2, NULL);
    devex_k8s_config_t c;
    devex_k8s_error_t err = {0};
    int rc = devex_k8s_config_kubeconfig(path, context, &c, &err);
    return push_result(L, rc, &c, &err);
}

static int l_in_cluster(lua_State *L)
{
    const char *root = luaL_optstring(L, 1, NULL);
    devex_k8s_config_t c;
    devex_k8s_error_t err = {0};
    int rc = devex_k8s_config_in_cluster(root, &c, &err);
    if (rc == 1) {
        lua_pushboolean(L, 0);
        return 1;
    }
    return push_result(L, rc, &c, &err);
}

/* ---- names and URLs ------------------------------------------------------ */

static int l_check_name(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    const char *kind = luaL_optstring(L, 2, "subdomain");
    const char *e;
    if (strcmp(kind, "subdomain") == 0)
        e = devex_k8s_check_dns1123_subdomain(s, n);
    else if (strcmp(kind, "label") == 0)
        e = devex_k8s_check_dns1123_label(s, n);
    else if (strcmp(kind, "dns1035") == 0)
        e = devex_k8s_check_dns1035_label(s, n);
    else
        return luaL_argerror(L, 2, "\"subdomain\", \"label\" or \"dns1035\" expected");
    if (e) {
        lua_pushnil(L);
        lua_pushstring(L, e);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static void escape_into(devex_buf_t *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
            c == '_' || c == '~') {
            devex_buf_append(b, &s[i], 1);
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            devex_buf_append(b, e, 3);
        }
    }
}

static void push_buf(lua_State *L, devex_buf_t *b)
{
    lua_pushlstring(L, b->data ? b->data : "", b->len);
    devex_buf_free(b);
}

static int l_escape(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    devex_buf_t b = DEVEX_BUF_INIT;
    escape_into(&b, s, n);
    push_buf(L, &b);
    return 1;
}

static bool is_resource_token(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '-' || *s == '.'))
            return false;
    return true;
}

/* A prefix is "/api/v1" or "/apis/<group>/<version>", group and version tokens. */
static bool is_api_prefix(const char *p)
{
    if (strncmp(p, "/api/", 5) == 0)
        return is_resource_token(p + 5);
    if (strncmp(p, "/apis/", 6) != 0)
        return false;
    const char *g = p + 6, *slash = strchr(g, '/');
    if (!slash || slash == g)
        return false;
    for (const char *q = g; q < slash; q++)
        if (!((*q >= 'a' && *q <= 'z') || (*q >= '0' && *q <= '9') || *q == '-' || *q == '.'))
            return false;
    return is_resource_token(slash + 1);
}

static const char *path_field(lua_State *L, const char *k, bool required)
{
    int t = lua_getfield(L, 1, k);
    const char *s = NULL;
    if (t == LUA_TSTRING) {
        size_t n;
        s = lua_tolstring(L, -1, &n);
        if (n == 0 || strlen(s) != n)
            luaL_error(L, "k8s.path: %s must be a non-empty string without NUL", k);
    } else if (t != LUA_TNIL || required) {
        luaL_error(L, "k8s.path: %s must be a string", k);
    }
    lua_pop(L, 1);
    return s;
}

/* apimachinery's ValidatePathSegmentName: not "." or "..", no '/' or '%'. */
static void check_segment(lua_State *L, const char *what, const char *s)
{
    if (strcmp(s, ".") == 0 || strcmp(s, "..") == 0 || strchr(s, '/') || strchr(s, '%'))
        luaL_error(L, "k8s.path: %s \"%s\" may not be '.' or '..' or contain '/' or '%%'", what, s);
}

static int l_path(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    const char *prefix = path_field(L, "prefix", true);
    const char *resource = path_field(L, "resource", false);
    const char *ns = path_field(L, "namespace", false);
    const char *name = path_field(L, "name", false);
    const char *sub = path_field(L, "subresource", false);
    if (!is_api_prefix(prefix))
        return luaL_error(L, "k8s.path: prefix must be /api/<version> or /apis/<group>/<version>");
    if (resource && !is_resource_token(resource))
        return luaL_error(L, "k8s.path: resource must be lower-case [a-z0-9.-]");
    if (sub && !is_resource_token(sub))
        return luaL_error(L, "k8s.path: subresource must be lower-case [a-z0-9.-]");
    if ((name || sub || ns) && !resource)
        return luaL_error(L, "k8s.path: a namespace, name or subresource needs a resource");
    if (sub && !name)
        return luaL_error(L, "k8s.path: a subresource needs a name");
    if (ns) {
        const char *e = devex_k8s_check_dns1123_label(ns, strlen(ns));
        if (e)
            return luaL_error(L, "k8s.path: namespace \"%s\" %s", ns, e);
    }
    if (name)
        check_segment(L, "name", name);
    devex_buf_t b = DEVEX_BUF_INIT;
    devex_buf_append_str(&b, prefix);
    if (ns) {
        devex_buf_append_str(&b, "/namespaces/");
        escape_into(&b, ns, strlen(ns));
    }
    if (resource) {
        devex_buf_append_str(&b, "/");
        devex_buf_append_str(&b, resource);
    }
    if (name) {
        devex_buf_append_str(&b, "/");
        escape_into(&b, name, strlen(name));
    }
    if (sub) {
        devex_buf_append_str(&b, "/");
        devex_buf_append_str(&b, sub);
    }
    push_buf(L, &b);
    return 1;
}

static const char *query_value(lua_State *L, int idx)
{
    switch (lua_type(L, idx)) {
    case LUA_TSTRING:
    case LUA_TNUMBER:
        return lua_tostring(L, idx); /* a number converts in place: idx is a copy */
    case LUA_TBOOLEAN:
        return lua_toboolean(L, idx) ? "true" : "false";
    default:
        luaL_error(L, "k8s.query: values must be strings, numbers or booleans, got %s", luaL_typename(L, idx));
        return NULL;
    }
}

static int l_query(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    /* collect {name, value} pairs into a list at index 2 */
    lua_settop(L, 1);
    lua_newtable(L);
    int n = 0;
    lua_pushnil(L);
    while (lua_next(L, 1)) {
        if (lua_type(L, -2) == LUA_TSTRING) {
            lua_createtable(L, 2, 0);
            lua_pushvalue(L, -3);
            lua_rawseti(L, -2, 1);
            lua_pushvalue(L, -2);
            lua_pushstring(L, query_value(L, -1));
            lua_rawseti(L, -3, 2);
            lua_pop(L, 1);
            lua_rawseti(L, 2, ++n);
        } else if (lua_type(L, -2) != LUA_TNUMBER || !lua_istable(L, -1)) {
            return luaL_error(L, "k8s.query: entries must be name = value or {name, value}");
        }
        lua_pop(L, 1);
    }
    /* sort the map part by name with table.sort */
    if (n > 1) {
        luaL_dostring(L, "return function(t) table.sort(t, function(a, b) return a[1] < b[1] end) end");
        lua_pushvalue(L, 2);
        lua_call(L, 1, 0);
    }
    /* then the {name, value} list part, in its order */
    lua_Integer len = luaL_len(L, 1);
    for (lua_Integer i = 1; i <= len; i++) {
        lua_rawgeti(L, 1, i);
        if (!lua_istable(L, -1))
            return luaL_error(L, "k8s.query: entries must be name = value or {name, value}");
        lua_createtable(L, 2, 0);
        lua_rawgeti(L, -2, 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            return luaL_error(L, "k8s.query: a pair must be {name, value}");
        lua_rawseti(L, -2, 1);
        lua_rawgeti(L, -2, 2);
        lua_pushstring(L, query_value(L, -1));
        lua_rawseti(L, -3, 2);
        lua_pop(L, 1);
        lua_rawseti(L, 2, ++n);
        lua_pop(L, 1);
    }
    devex_buf_t b = DEVEX_BUF_INIT;
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, 2, i);
        lua_rawgeti(L, -1, 1);
        lua_rawgeti(L, -2, 2);
        size_t kn, vn;
        const char *k = lua_tolstring(L, -2, &kn);
        const char *v = lua_tolstring(L, -1, &vn);
        devex_buf_append(&b, i == 1 ? "?" : "&", 1);
        escape_into(&b, k, kn);
        devex_buf_append(&b, "=", 1);
        escape_into(&b, v, vn);
        lua_pop(L, 3);
    }
    push_buf(L, &b);
    return 1;
}

static int l_base64_decode(lua_State *L)
{
    size_t n, outn;
    const char *s = luaL_checklstring(L, 1, &n);
    char *out = devex_k8s_base64_decode(s, n, &outn);
    if (!out) {
        lua_pushnil(L);
        return 1;
    }
    lua_pushlstring(L, out, outn);
    free(out);
    return 1;
}

int luaopen_devex_k8s(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"load_config", l_load_config}, {"kubeconfig", l_kubeconfig}, {"in_cluster", l_in_cluster},
        {"check_name", l_check_name},   {"escape", l_escape},         {"path", l_path},
        {"query", l_query},             {"base64_decode", l_base64_decode}, {NULL, NULL},
    };
    luaL_newlib(L, fns);
    return 1;
}
