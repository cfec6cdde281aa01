/*
 * settings.c: turns the validated config table into devex_settings. The
 * validation itself (types, unknown keys, malformed environment values) is Lua,
 * lua/devex/config.lua, so the same code checks the config at start, in
 * `--check` and in every worker VM.
 */
#include "settings.h"
#include "devex.h"

#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <ctype.h>
#include <string.h>

devex_settings_t devex_settings;

char *devex_settings_lua_path(const char *dirs)
{
    devex_buf_t b = DEVEX_BUF_INIT;
    const char *p = dirs;
    while (*p) {
        const char *e = strchr(p, ':');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n > 0) {
            devex_buf_appendf(&b, "%.*s/?.lua;%.*s/?/init.lua;", (int)n, p, (int)n, p);
        }
        p += n;
        if (*p == ':')
            p++;
    }
    devex_buf_append(&b, "", 0);
    return b.data;
}

void devex_settings_apply_path(lua_State *L)
{
    lua_getglobal(L, "package");
    lua_pushstring(L, devex_settings.lua_path);
    lua_setfield(L, -2, "path");
    lua_pushliteral(L, "");
    lua_setfield(L, -2, "cpath"); /* no native modules from the file system */
    lua_pop(L, 1);
}

static char *dup_field(lua_State *L, int idx, const char *name)
{
    lua_getfield(L, idx, name);
    char *v = lua_isstring(L, -1) ? strdup(lua_tostring(L, -1)) : NULL;
    lua_pop(L, 1);
    return v;
}

static double num_field(lua_State *L, int idx, const char *name, double dflt)
{
    lua_getfield(L, idx, name);
    double v = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : dflt;
    lua_pop(L, 1);
    return v;
}

static void read_server(lua_State *L, int conf)
{
    devex_settings_t *s = &devex_settings;
    lua_getfield(L, conf, "server");
    int srv = lua_gettop(L);
    s->threads = (int)num_field(L, srv, "threads", 0);
    s->max_body = (size_t)num_field(L, srv, "max_body", 1048576);
    s->header_timeout = num_field(L, srv, "header_timeout", 10);
    s->idle_timeout = num_field(L, srv, "idle_timeout", 60);
    s->shutdown_timeout = num_field(L, srv, "shutdown_timeout", 15);
    s->http2_max_resets = (int)num_field(L, srv, "http2_max_resets", 100);
    s->http2_max_inflight = (int)num_field(L, srv, "http2_max_inflight", 128);
    lua_getfield(L, srv, "access_log");
    s->access_log = lua_isnil(L, -1) ? true : lua_toboolean(L, -1);
    lua_pop(L, 1);
    char *reqid = dup_field(L, srv, "request_id_header");
    s->request_id_always = reqid != NULL && strcmp(reqid, "always") == 0;
    free(reqid);
    char *level = dup_field(L, srv, "log_level");
    s->log_level = DEVEX_LOG_INFO;
    if (level)
        devex_log_parse_level(level, &s->log_level);
    free(level);

    lua_getfield(L, srv, "listen");
    int listen = lua_gettop(L);
    s->nlisteners = 0;
    lua_Integer n = luaL_len(L, listen);
    for (lua_Integer i = 1; i <= n && s->nlisteners < DEVEX_MAX_LISTENERS; i++) {
        lua_rawgeti(L, listen, i);
        int l = lua_gettop(L);
        devex_listener_conf_t *lc = &s->listeners[s->nlisteners++];
        char *host = dup_field(L, l, "host");
        snprintf(lc->host, sizeof(lc->host), "%s", host ? host : "127.0.0.1");
        free(host);
        lc->port = (int)num_field(L, l, "port", 8080);
        free(lc->socket_path);
        free(lc->only);
        lc->socket_path = dup_field(L, l, "socket");
        lc->only = dup_field(L, l, "only");
        lua_getfield(L, l, "tls");
        if (lua_istable(L, -1)) {
            lc->tls_cert = dup_field(L, lua_gettop(L), "cert");
            lc->tls_key = dup_field(L, lua_gettop(L), "key");
        }
        lua_pop(L, 2);
    }
    lua_pop(L, 2);
}

static void read_runner(lua_State *L, int conf)
{
    devex_settings_t *s = &devex_settings;
    free(s->runner_domain);
    s->runner_domain = NULL;
    lua_getfield(L, conf, "runner");
    if (lua_istable(L, -1)) {
        int r = lua_gettop(L);
        char *exposure = dup_field(L, r, "exposure");
        char *domain = dup_field(L, r, "domain");
        if (domain != NULL && domain[0] != '\0' && (exposure == NULL || strcmp(exposure, "gateway") == 0)) {
            domain[strcspn(domain, ":")] = '\0'; /* config.lua checked it is host[:port] */
            for (char *c = domain; *c; c++)
                *c = (char)tolower((unsigned char)*c);
            s->runner_domain = domain;
            domain = NULL;
        }
        free(domain);
        free(exposure);
    }
    lua_pop(L, 1);
}

int devex_settings_load(const char *conf_path, const char *lua_dirs, char *err, size_t errlen)
{
    devex_settings_t *s = &devex_settings;
    s->conf_path = strdup(conf_path);
    s->lua_dirs = strdup(lua_dirs);
    char *base_path = devex_settings_lua_path(lua_dirs);
    s->lua_path = base_path;

    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    *(void **)lua_getextraspace(L) = NULL;
    devex_modules_preload(L);
    devex_settings_apply_path(L);

    int rc = -1;
    lua_getglobal(L, "require");
    lua_pushliteral(L, "devex.config");
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        snprintf(err, errlen, "%s", lua_tostring(L, -1));
        goto out;
    }
    lua_getfield(L, -1, "load");
    lua_pushstring(L, conf_path);
    if (lua_pcall(L, 1, 2, 0) != LUA_OK) {
        snprintf(err, errlen, "%s", lua_tostring(L, -1));
        goto out;
    }
    if (lua_isnil(L, -2)) {
        /* a list of messages */
        devex_buf_t b = DEVEX_BUF_INIT;
        lua_Integer n = luaL_len(L, -1);
        for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, i);
            devex_buf_appendf(&b, "%s%s", i > 1 ? "\n" : "", lua_tostring(L, -1));
            lua_pop(L, 1);
        }
        snprintf(err, errlen, "%s", b.data ? b.data : "invalid configuration");
        devex_buf_free(&b);
        goto out;
    }
    lua_pop(L, 1);
    int conf = lua_gettop(L);
    read_server(L, conf);
    read_runner(L, conf);

    /* extra Lua directories from the config go in front of the built-in ones */
    lua_getfield(L, conf, "lua");
    if (lua_istable(L, -1)) {
        int lt = lua_gettop(L);
        s->app_module = dup_field(L, lt, "app");
        lua_getfield(L, lt, "path");
        if (lua_istable(L, -1)) {
            devex_buf_t dirs = DEVEX_BUF_INIT;
            lua_Integer n = luaL_len(L, -1);
            for (lua_Integer i = 1; i <= n; i++) {
                lua_rawgeti(L, -1, i);
                devex_buf_appendf(&dirs, "%s:", lua_tostring(L, -1));
                lua_pop(L, 1);
            }
            devex_buf_append_str(&dirs, lua_dirs);
            s->lua_path = devex_settings_lua_path(dirs.data);
            free(base_path);
            devex_buf_free(&dirs);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    if (s->app_module == NULL)
        s->app_module = strdup("app");
    rc = 0;
out:
    lua_close(L);
    return rc;
}
