/*
 * fuzz_router: the router's path matching (src/router.c). Every request path
 * reaches devex_router_match. The input is matched against devexd's own
 * route table; an input of three lines "METHOD\nPATTERN\nPATH" also adds
 * PATTERN (for METHOD) to a fresh router first, so pattern parsing and
 * matching against arbitrary patterns are covered too.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "router.h"

static const char *routes[][2] = {
    {"GET", "/ping"},
    {"GET", "/healthz"},
    {"GET", "/api/v1/repl/ws"},
    {"*", "/user-app/*rest"},
    {"*", "/repl/:id/*rest"},
    {"*", "/repl/:id"},
    {"GET", "/api/runner/:id/files"},
    {"POST", "/api/runner/:id/uploads"},
    {"POST", "/api/runner/:id/sync"},
    {"GET", "/api/repl"},
    {"POST", "/api/repl/new"},
    {"GET", "/api/repl/session/:id"},
    {"DELETE", "/api/repl/session/:id"},
    {"DELETE", "/api/repl/:id"},
    {"DELETE", "/api/runner/:id"},
    {"POST", "/api/runner/:id/heartbeat"},
    {"GET", "/auth/:provider/login"},
    {"GET", "/auth/:provider/callback"},
    {"POST", "/auth/logout"},
    {"GET", "/auth/me"},
    {"GET", "/auth/status"},
    {"GET", "/"},
    {"GET", "/a/:b/:c/:d/:e/:f/:g/:h/*i"},
};

static devex_router_t *fixed;

static void match(const devex_router_t *r, const char *method, size_t mlen, const char *path, size_t plen)
{
    devex_route_match_t m;
    int rc = devex_router_match(r, method, mlen, path, plen, &m);
    if (rc == DEVEX_ROUTE_FOUND) {
        if (m.nparams > DEVEX_ROUTER_MAX_PARAMS)
            abort();
        for (size_t i = 0; i < m.nparams; i++)
            if (m.params[i].value == NULL || strlen(m.params[i].value) != m.params[i].value_len)
                abort(); /* values are NUL-free and NUL-terminated */
    }
    devex_route_match_clear(&m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    if (fixed == NULL) {
        fixed = devex_router_new();
        for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
            if (devex_router_add(fixed, routes[i][0], routes[i][1], (int)i, err, sizeof err) != 0) {
                fprintf(stderr, "fuzz_router: %s %s: %s\n", routes[i][0], routes[i][1], err);
                abort();
            }
    }
    const char *s = (const char *)data;
    const char *nl1 = memchr(s, '\n', size);
    const char *nl2 = nl1 ? memchr(nl1 + 1, '\n', size - (size_t)(nl1 + 1 - s)) : NULL;
    static const char *methods[] = {"GET", "HEAD", "POST", "DELETE", "OPTIONS"};
    if (nl2 == NULL) {
        for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
            match(fixed, methods[i], strlen(methods[i]), s, size);
        return 0;
    }
    char *method = strndup(s, (size_t)(nl1 - s));
    char *pattern = strndup(nl1 + 1, (size_t)(nl2 - nl1 - 1));
    const char *path = nl2 + 1;
    size_t plen = size - (size_t)(path - s);
    devex_router_t *r = devex_router_new();
    (void)devex_router_add(r, method, pattern, 1, err, sizeof err);
    (void)devex_router_add(r, "GET", "/x/:a/*b", 2, err, sizeof err);
    match(r, method, strlen(method), path, plen);
    match(r, "HEAD", 4, path, plen);
    match(fixed, method, strlen(method), path, plen);
    devex_router_free(r);
    free(method);
    free(pattern);
    return 0;
}
