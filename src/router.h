/*
 * router.h: the HTTP router (router.c). Patterns are absolute paths whose
 * segments are literal, `:name` (one segment, percent-decoded into a param)
 * or a final `*name` (the rest of the path). Literal segments win over
 * params, params over `*`. HEAD is served by GET routes. Lua module devex.router.
 */
#ifndef DEVEX_ROUTER_H
#define DEVEX_ROUTER_H

#include <stddef.h>
#include <lua.h>

#define DEVEX_ROUTER_MAX_PARAMS 8

typedef struct devex_router devex_router_t;

typedef struct devex_route_param {
    char name[32];
    char *value;      /* percent-decoded, NUL-terminated; owned by the match */
    size_t value_len;
} devex_route_param_t;

typedef struct devex_route_match {
    int handler_id;
    size_t nparams;
    devex_route_param_t params[DEVEX_ROUTER_MAX_PARAMS];
    char allow[128];  /* for DEVEX_ROUTE_METHOD_NOT_ALLOWED: "GET, HEAD, POST" */
} devex_route_match_t;

enum { DEVEX_ROUTE_FOUND = 0, DEVEX_ROUTE_NOT_FOUND = 1, DEVEX_ROUTE_METHOD_NOT_ALLOWED = 2 };

/*
 * Rules in detail (router.c explains why):
 * - Trailing slash is strict: "/a" and "/a/" are different routes.
 * - A final `*name` captures what follows the slash before it, possibly
 *   nothing: it matches "/f/" and "/f/x/y" under "/f", but not "/f" itself.
 * - Param values are percent-decoded; an invalid escape, a NUL or an encoded
 *   '/' makes that branch not match. Literal segments compare raw bytes.
 * - The most specific route whose method fits wins (literal > :param > *,
 *   backtracking). Per route end: exact method, then GET for HEAD, then "*".
 * - A duplicate is the same method on the same shape, whatever the param
 *   names; differently named params at one position are allowed.
 * - m need not be initialised before devex_router_match; always pair it with
 *   devex_route_match_clear (harmless when nothing matched).
 */

devex_router_t *devex_router_new(void);
void devex_router_free(devex_router_t *r);
/* Adds a route; method is an uppercase token or "*" for any. Returns 0, or -1
 * with a message in err (bad pattern, duplicate route, too many params). */
int devex_router_add(devex_router_t *r, const char *method, const char *pattern, int handler_id, char *err, size_t errlen);
/* Matches path (no query string). Fills m; release it with devex_route_match_clear. */
int devex_router_match(const devex_router_t *r, const char *method, size_t method_len, const char *path, size_t path_len,
                       devex_route_match_t *m);
void devex_route_match_clear(devex_route_match_t *m);

int luaopen_devex_router(lua_State *L);

#endif
