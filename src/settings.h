/*
 * settings.h: the part of the configuration the C core needs before any Lua
 * app runs (listeners, threads, limits, paths). The config file is Lua
 * (etc/devexd.conf.lua); lua/devex/config.lua loads and validates it, and
 * settings.c turns the validated table into this plain struct, in one place.
 */
#ifndef DEVEX_SETTINGS_H
#define DEVEX_SETTINGS_H

#include <stddef.h>
#include <stdbool.h>
#include "log.h"

#define DEVEX_MAX_LISTENERS 8

typedef struct devex_listener_conf {
    char host[256];
    int port;
    char *tls_cert; /* NULL for cleartext */
    char *tls_key;
    char *socket_path; /* a Unix socket instead of host:port, or NULL */
    char *only;        /* requests on it reach only paths with this prefix, or NULL */
} devex_listener_conf_t;

typedef struct devex_settings {
    char *conf_path;
    char *lua_dirs;      /* the Lua directories as given (':'-separated): a runner agent started by the local runtime gets them */
    char *lua_path;      /* package.path prefix: the app's directories, ';'-separated templates */
    char *app_module;    /* the module returning the app, "app" by default */
    int threads;
    devex_listener_conf_t listeners[DEVEX_MAX_LISTENERS];
    size_t nlisteners;
    size_t max_body;
    double header_timeout;
    double idle_timeout;
    double shutdown_timeout;
    /* h2_guard.c: resets one HTTP/2 connection may make before it is closed
     * (when they are also more than half its requests), and the Lua tasks it
     * may have running at once, those of reset streams included */
    int http2_max_resets;
    int http2_max_inflight;
    devex_log_level_t log_level;
    bool access_log;
    /* X-Request-Id on every response (true) or only on errors and when the
     * client sent one (false, the default): see README "Request ids" */
    bool request_id_always;
    /* the runner gateway's domain (config runner.domain, lower case, no
     * port) when runner.exposure is "gateway", else NULL: requests whose
     * Host names it go to the app's gateway (README "Runner gateway") */
    char *runner_domain;
} devex_settings_t;

/* The process-wide settings (read-only once workers run). */
extern devex_settings_t devex_settings;

/* Builds package.path for a list of directories separated by ':' (each gives
 * dir/?.lua and dir/?/init.lua). Caller frees. */
char *devex_settings_lua_path(const char *dirs);
/* Loads and validates conf_path with the Lua in lua_dirs into devex_settings.
 * Returns 0, or -1 with every problem found, one per line, in err. */
int devex_settings_load(const char *conf_path, const char *lua_dirs, char *err, size_t errlen);
/* Sets package.path on L from devex_settings.lua_path. */
void devex_settings_apply_path(lua_State *L);

#endif
