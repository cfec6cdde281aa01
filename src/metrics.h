/*
 * metrics.h: process-wide metrics (Prometheus text format 0.0.4), kept in C
 * so that every worker thread adds to the same numbers. A fixed registry of
 * metric families (metrics.c) with HELP and TYPE; each family holds up to a
 * bounded number of label combinations, updated with atomics (no lock on the
 * hot path; a mutex only when a new label combination appears).
 * Lua sees it as devex.metrics (counter, observe, gauge, set_route, now, render).
 */
#ifndef DEVEX_METRICS_H
#define DEVEX_METRICS_H

#include <h2o.h>
#include <stddef.h>
#include <stdint.h>
#include <lua.h>

/* One HTTP response: route is the matched route pattern (NULL: "unmatched"). */
void devex_metrics_http(const char *route, const char *method, size_t mlen, int status, double seconds);
/* One Redis command answered (ok: a reply that is not an error) or failed
 * (code: "reply", "timeout", "unavailable"...). */
void devex_metrics_redis(const char *command, int ok, const char *code, double seconds);
/* A Lua error outside the app's own handling (where: "request", "sweep"...). */
void devex_metrics_lua_error(const char *where);
/* One event of the HTTP/2 connection guard (h2_guard.c): "reset",
 * "refused", "closed_for_resets", "header_timeout", "idle_timeout". */
void devex_metrics_http2(const char *event);
/* One reload of a worker's Lua VM. */
void devex_metrics_reload(int ok);
/* Counts responses that H2O makes by itself (413, 400... before devexd's
 * handler), recognised by the absence of x-request-id. */
void devex_metrics_register_filter(h2o_pathconf_t *pathconf);
/* Appends the whole exposition to a Lua buffer-free C string (malloc'd). */
char *devex_metrics_render(size_t *len);

int luaopen_devex_metrics(lua_State *L);

#endif
