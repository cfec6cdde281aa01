/*
 * router.c: the request router of router.h, a trie of path segments. Each node
 * has sorted literal edges, at most one `:param` child, at most one `*rest`
 * child, and the routes (one per method) that end there. Matching walks the
 * trie depth-first in priority order (literal, param, wildcard) and backtracks
 * when a branch dead-ends or has no route for the method, so the most specific
 * route that accepts the request wins. A trie node always sits at the same
 * path depth, so a match visits each node at most once: the worst case is
 * linear in the size of the trie, never exponential.
 *
 * Decisions (see also router.h):
 * - Trailing slash is strict: "/a" and "/a/" are different routes. Internally
 *   a trailing slash is a final empty literal segment, and "/" is the empty
 *   segment under the root; empty segments anywhere else are rejected.
 * - `*name` captures everything after the slash before it, possibly nothing:
 *   the route "/f" + "/" + "*p" matches "/f/" (p = "") and "/f/x/y"
 *   (p = "x/y"), but not "/f".
 * - Param names belong to the route, not to the trie, so "/u/:id" and
 *   "/u/:name/posts" may coexist. A duplicate is the same method on the same
 *   shape, whatever the names; GET and "*" on one shape are not duplicates.
 * - Literal segments are compared with the raw, undecoded path, so they may
 *   only hold characters that never need percent-encoding.
 * - Param values are percent-decoded ('+' stays '+': this is a path, not a
 *   query). An invalid escape, a NUL or an encoded '/' makes the branch not
 *   match, for `*` too: the slashes in a wildcard value are always real
 *   separators, never an ambiguous %2F.
 * - At a route end the method resolves to the exact method, then GET for HEAD,
 *   then "*". A 405's Allow is the union over every route the path matches.
 * Allocation failure aborts, as in buf.c.
 */
#include "router.h"
#include "devex.h"
#include "textutil.h"

#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <lauxlib.h>

/* Bounds keep the recursion of match and free shallow on small thread stacks. */
#define PATTERN_MAX_LEN 2048
#define PATTERN_MAX_SEGS 128
#define METHOD_MAX_LEN 31
#define PARAM_NAME_MAX_LEN 31
#define ALLOW_MAX_METHODS 32

typedef struct node node_t;

typedef struct edge {
    char *seg;
    size_t len;
    node_t *child;
} edge_t;

typedef struct endpoint {
    char method[METHOD_MAX_LEN + 1];
    size_t method_len;
    int handler_id;
    size_t nparams;
    char names[DEVEX_ROUTER_MAX_PARAMS][32];
} endpoint_t;

struct node {
    edge_t *lits; /* sorted by seg_cmp for binary search */
    size_t nlits;
    node_t *param;
    node_t *wild;
    endpoint_t *eps;
    size_t neps;
};

struct devex_router {
    node_t root;
};

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n);
    if (p == NULL)
        abort();
    return p;
}

static void *xcalloc(size_t n)
{
    void *p = calloc(1, n);
    if (p == NULL)
        abort();
    return p;
}

/* Long patterns are cut so the reason always fits in the caller's buffer. */
static void pattern_err(char *err, size_t errlen, const char *pattern, const char *detail)
{
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "bad route pattern \"%.80s%s\": %s", pattern, strlen(pattern) > 80 ? "..." : "", detail);
}

/* ---- the trie ---------------------------------------------------------- */

static int seg_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
    size_t n = alen < blen ? alen : blen;
    int c = n ? memcmp(a, b, n) : 0;
    if (c != 0)
        return c;
    return alen < blen ? -1 : alen > blen;
}

/* Index of the edge equal to seg, or of where it would be inserted. */
static size_t edge_search(const node_t *n, const char *seg, size_t len, bool *found)
{
    size_t lo = 0, hi = n->nlits;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = seg_cmp(n->lits[mid].seg, n->lits[mid].len, seg, len);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = false;
    return lo;
}

static node_t *edge_get_or_add(node_t *n, const char *seg, size_t len)
{
    bool found;
    size_t i = edge_search(n, seg, len, &found);
    if (found)
        return n->lits[i].child;
    n->lits = xrealloc(n->lits, (n->nlits + 1) * sizeof *n->lits);
    memmove(&n->lits[i + 1], &n->lits[i], (n->nlits - i) * sizeof *n->lits);
    n->nlits++;
    edge_t *e = &n->lits[i];
    e->seg = xrealloc(NULL, len + 1);
    memcpy(e->seg, seg, len);
    e->seg[len] = '\0';
    e->len = len;
    e->child = xcalloc(sizeof *e->child);
    return e->child;
}

static void node_release(node_t *n)
{
    for (size_t i = 0; i < n->nlits; i++) {
        node_release(n->lits[i].child);
        free(n->lits[i].child);
        free(n->lits[i].seg);
    }
    free(n->lits);
    if (n->param != NULL) {
        node_release(n->param);
        free(n->param);
    }
    if (n->wild != NULL) {
        node_release(n->wild);
        free(n->wild);
    }
    free(n->eps);
}

devex_router_t *devex_router_new(void)
{
    return xcalloc(sizeof(devex_router_t));
}

void devex_router_free(devex_router_t *r)
{
    if (r == NULL)
        return;
    node_release(&r->root);
    free(r);
}

/* ---- adding routes ----------------------------------------------------- */

enum seg_kind { SEG_LIT, SEG_PARAM, SEG_WILD };

typedef struct seg {
    enum seg_kind kind;
    const char *p;
    size_t len;
} seg_t;

static bool is_alpha_(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* RFC 3986 pchar minus pct-encoded: what may appear raw in a path segment. */
static bool is_literal_char(char c)
{
    return is_alpha_(c) || is_digit(c) || (c != '\0' && strchr("-.~!$&'()*+,;=:@", c) != NULL);
}

static bool is_method(const char *m)
{
    if (strcmp(m, "*") == 0)
        return true;
    size_t len = strlen(m);
    if (len == 0 || len > METHOD_MAX_LEN || !(m[0] >= 'A' && m[0] <= 'Z'))
        return false;
    for (size_t i = 1; i < len; i++)
        if (!((m[i] >= 'A' && m[i] <= 'Z') || is_digit(m[i]) || m[i] == '-' || m[i] == '_'))
            return false;
    return true;
}

/* Splits and validates the whole pattern before the trie is touched, so a
 * rejected pattern leaves no stray nodes behind. */
static int parse_pattern(const char *pat, seg_t *segs, size_t *nsegs, char names[][32], size_t *nparams, char *err,
                         size_t errlen)
{
    size_t len = strlen(pat);
    *nsegs = *nparams = 0;
    if (pat[0] != '/') {
        pattern_err(err, errlen, pat, "must start with '/'");
        return -1;
    }
    if (len > PATTERN_MAX_LEN) {
        pattern_err(err, errlen, pat, "too long");
        return -1;
    }
    size_t i = 1;
    for (;;) {
        const char *s = pat + i;
        const char *slash = strchr(s, '/');
        size_t slen = slash ? (size_t)(slash - s) : len - i;
        bool last = slash == NULL;
        if (*nsegs == PATTERN_MAX_SEGS) {
            pattern_err(err, errlen, pat, "too many segments");
            return -1;
        }
        seg_t *sg = &segs[(*nsegs)++];
        sg->p = s;
        sg->len = slen;
        if (slen == 0) {
            if (!last) {
                pattern_err(err, errlen, pat, "empty segment");
                return -1;
            }
            sg->kind = SEG_LIT; /* root or trailing slash */
        } else if (s[0] == ':' || s[0] == '*') {
            sg->kind = s[0] == ':' ? SEG_PARAM : SEG_WILD;
            sg->p++;
            sg->len--;
            if (sg->kind == SEG_WILD && !last) {
                pattern_err(err, errlen, pat, "wildcard must be the last segment");
                return -1;
            }
            if (sg->len == 0) {
                pattern_err(err, errlen, pat, "empty parameter name");
                return -1;
            }
            if (sg->len > PARAM_NAME_MAX_LEN) {
                pattern_err(err, errlen, pat, "parameter name longer than 31 characters");
                return -1;
            }
            bool ok = is_alpha_(sg->p[0]);
            for (size_t k = 1; ok && k < sg->len; k++)
                ok = is_alpha_(sg->p[k]) || is_digit(sg->p[k]);
            if (!ok) {
                pattern_err(err, errlen, pat, "parameter names are [A-Za-z_][A-Za-z0-9_]*");
                return -1;
            }
            if (*nparams == DEVEX_ROUTER_MAX_PARAMS) {
                pattern_err(err, errlen, pat, "too many parameters");
                return -1;
            }
            for (size_t k = 0; k < *nparams; k++) {
                if (strlen(names[k]) == sg->len && memcmp(names[k], sg->p, sg->len) == 0) {
                    pattern_err(err, errlen, pat, "duplicate parameter name");
                    return -1;
                }
            }
            memcpy(names[*nparams], sg->p, sg->len);
            names[*nparams][sg->len] = '\0';
            (*nparams)++;
        } else {
            sg->kind = SEG_LIT;
            for (size_t k = 0; k < slen; k++) {
                if (!is_literal_char(s[k])) {
                    pattern_err(err, errlen, pat,
                                "literal segments may only hold unreserved characters, sub-delims, ':' and '@'");
                    return -1;
                }
            }
        }
        if (last)
            return 0;
        i += slen + 1;
    }
}

int devex_router_add(devex_router_t *r, const char *method, const char *pattern, int handler_id, char *err,
                     size_t errlen)
{
    if (method == NULL || !is_method(method)) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "bad route method \"%.32s\": expected an uppercase token or \"*\"",
                     method ? method : "(null)");
        return -1;
    }
    if (pattern == NULL) {
        pattern_err(err, errlen, "(null)", "missing");
        return -1;
    }
    seg_t segs[PATTERN_MAX_SEGS];
    size_t nsegs, nparams;
    char names[DEVEX_ROUTER_MAX_PARAMS][32];
    memset(names, 0, sizeof names);
    if (parse_pattern(pattern, segs, &nsegs, names, &nparams, err, errlen) != 0)
        return -1;

    node_t *n = &r->root;
    for (size_t i = 0; i < nsegs; i++) {
        node_t **slot;
        switch (segs[i].kind) {
        case SEG_LIT:
            n = edge_get_or_add(n, segs[i].p, segs[i].len);
            continue;
        case SEG_PARAM:
            slot = &n->param;
            break;
        default:
            slot = &n->wild;
            break;
        }
        if (*slot == NULL)
            *slot = xcalloc(sizeof **slot);
        n = *slot;
    }

    size_t mlen = strlen(method);
    for (size_t i = 0; i < n->neps; i++) {
        if (n->eps[i].method_len == mlen && memcmp(n->eps[i].method, method, mlen) == 0) {
            /* the existing route may spell its params differently */
            if (err != NULL && errlen > 0)
                snprintf(err, errlen, "duplicate route: %s %.80s%s", method, pattern,
                         strlen(pattern) > 80 ? "..." : "");
            return -1;
        }
    }
    n->eps = xrealloc(n->eps, (n->neps + 1) * sizeof *n->eps);
    endpoint_t *ep = &n->eps[n->neps++];
    memset(ep, 0, sizeof *ep);
    memcpy(ep->method, method, mlen + 1);
    ep->method_len = mlen;
    ep->handler_id = handler_id;
    ep->nparams = nparams;
    memcpy(ep->names, names, sizeof names);
    return 0;
}

/* ---- matching ---------------------------------------------------------- */

/* Whether s decodes cleanly into a param value; runs before any allocation so
 * a rejected branch costs nothing. */
static bool value_ok(const char *s, size_t len, bool raw_slash_ok)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '%') {
            if (len - i < 3)
                return false;
            int hi = devex_hex_value((unsigned char)s[i + 1]), lo = devex_hex_value((unsigned char)s[i + 2]);
            if (hi < 0 || lo < 0)
                return false;
            int d = hi * 16 + lo;
            if (d == 0 || d == '/')
                return false;
            i += 2;
        } else if (c == '\0' || (c == '/' && !raw_slash_ok)) {
            return false;
        }
    }
    return true;
}

/* Decodes a value already accepted by value_ok; returns the decoded length. */
static size_t decode(const char *s, size_t len, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '%') {
            out[o++] = (char)(devex_hex_value((unsigned char)s[i + 1]) * 16 + devex_hex_value((unsigned char)s[i + 2]));
            i += 2;
        } else {
            out[o++] = s[i];
        }
    }
    out[o] = '\0';
    return o;
}

typedef struct allow_set {
    const char *methods[ALLOW_MAX_METHODS];
    size_t n;
} allow_set_t;

typedef struct walk {
    const char *path;
    size_t path_len;
    const char *method;
    size_t method_len;
    allow_set_t *collect; /* set only on the 405 pass: gather, never stop */
    bool path_matched;
    const endpoint_t *ep;
    const char *cap[DEVEX_ROUTER_MAX_PARAMS];
    size_t cap_len[DEVEX_ROUTER_MAX_PARAMS];
} walk_t;

static bool method_is(const endpoint_t *ep, const char *m, size_t len)
{
    return ep->method_len == len && memcmp(ep->method, m, len) == 0;
}

static const endpoint_t *resolve_method(const node_t *n, const char *m, size_t len)
{
    const endpoint_t *get = NULL, *any = NULL;
    for (size_t i = 0; i < n->neps; i++) {
        const endpoint_t *ep = &n->eps[i];
        if (method_is(ep, m, len))
            return ep;
        if (method_is(ep, "*", 1))
            any = ep;
        else if (method_is(ep, "GET", 3))
            get = ep;
    }
    if (get != NULL && len == 4 && memcmp(m, "HEAD", 4) == 0)
        return get;
    return any;
}

static void allow_add(allow_set_t *a, const char *m)
{
    for (size_t i = 0; i < a->n; i++)
        if (strcmp(a->methods[i], m) == 0)
            return;
    if (a->n < ALLOW_MAX_METHODS)
        a->methods[a->n++] = m;
}

/* The path is used up at n: does a route end here that takes the method? */
static bool arrive(walk_t *w, const node_t *n)
{
    if (n->neps == 0)
        return false;
    w->path_matched = true;
    if (w->collect != NULL) {
        for (size_t i = 0; i < n->neps; i++)
            allow_add(w->collect, n->eps[i].method);
        return false;
    }
    w->ep = resolve_method(n, w->method, w->method_len);
    return w->ep != NULL;
}

/* n is the node reached so far; the next segment starts at path[pos]. */
static bool walk(walk_t *w, const node_t *n, size_t pos, size_t ncaps)
{
    const char *seg = w->path + pos;
    size_t rest = w->path_len - pos;
    const char *slash = rest ? memchr(seg, '/', rest) : NULL;
    size_t slen = slash ? (size_t)(slash - seg) : rest;
    bool last = slash == NULL;

    if (n->nlits != 0) {
        bool found;
        size_t i = edge_search(n, seg, slen, &found);
        if (found) {
            const node_t *c = n->lits[i].child;
            if (last ? arrive(w, c) : walk(w, c, pos + slen + 1, ncaps))
                return true;
        }
    }
    if (n->param != NULL && slen != 0 && ncaps < DEVEX_ROUTER_MAX_PARAMS && value_ok(seg, slen, false)) {
        w->cap[ncaps] = seg;
        w->cap_len[ncaps] = slen;
        if (last ? arrive(w, n->param) : walk(w, n->param, pos + slen + 1, ncaps + 1))
            return true;
    }
    if (n->wild != NULL && ncaps < DEVEX_ROUTER_MAX_PARAMS && value_ok(seg, rest, true)) {
        w->cap[ncaps] = seg;
        w->cap_len[ncaps] = rest;
        if (arrive(w, n->wild))
            return true;
    }
    return false;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Methods that would not fit are left out rather than cut in half. */
static void build_allow(allow_set_t *a, char *out, size_t outlen)
{
    bool get = false;
    for (size_t i = 0; i < a->n; i++)
        get = get || strcmp(a->methods[i], "GET") == 0;
    if (get)
        allow_add(a, "HEAD");
    qsort(a->methods, a->n, sizeof a->methods[0], cmp_str);
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; i < a->n; i++) {
        size_t mlen = strlen(a->methods[i]);
        size_t sep = o ? 2 : 0;
        if (o + sep + mlen + 1 > outlen)
            break;
        memcpy(out + o, ", ", sep);
        memcpy(out + o + sep, a->methods[i], mlen + 1);
        o += sep + mlen;
    }
}

int devex_router_match(const devex_router_t *r, const char *method, size_t method_len, const char *path,
                       size_t path_len, devex_route_match_t *m)
{
    m->handler_id = -1;
    m->nparams = 0;
    m->allow[0] = '\0';
    if (r == NULL || path_len == 0 || path[0] != '/')
        return DEVEX_ROUTE_NOT_FOUND;

    walk_t w;
    w.path = path;
    w.path_len = path_len;
    w.method = method;
    w.method_len = method_len;
    w.collect = NULL;
    w.path_matched = false;
    w.ep = NULL;
    if (walk(&w, &r->root, 1, 0)) {
        const endpoint_t *ep = w.ep;
        m->handler_id = ep->handler_id;
        for (size_t i = 0; i < ep->nparams; i++) {
            devex_route_param_t *p = &m->params[i];
            memcpy(p->name, ep->names[i], sizeof p->name);
            p->value = xrealloc(NULL, w.cap_len[i] + 1);
            p->value_len = decode(w.cap[i], w.cap_len[i], p->value);
            m->nparams = i + 1; /* grows as values are owned, for clear */
        }
        return DEVEX_ROUTE_FOUND;
    }
    if (!w.path_matched)
        return DEVEX_ROUTE_NOT_FOUND;

    /* Rare path: walk again, visiting every route end the path reaches. */
    allow_set_t allow;
    allow.n = 0;
    w.collect = &allow;
    walk(&w, &r->root, 1, 0);
    build_allow(&allow, m->allow, sizeof m->allow);
    return DEVEX_ROUTE_METHOD_NOT_ALLOWED;
}

void devex_route_match_clear(devex_route_match_t *m)
{
    for (size_t i = 0; i < m->nparams; i++) {
        free(m->params[i].value);
        m->params[i].value = NULL;
        m->params[i].value_len = 0;
    }
    m->nparams = 0;
}

/* ---- Lua module devex.router ------------------------------------------- */

#define ROUTER_MT "devex.router"
/* A match lives in a userdata while its values are copied into Lua, so a
 * memory error raised halfway leaves the GC to free the C strings. */
#define MATCH_MT "devex.router.match"

typedef struct lrouter {
    devex_router_t *r; /* NULL once closed */
} lrouter_t;

/* add and match carry the metatable as their upvalue (match runs for every
 * request) */
static devex_router_t *check_router(lua_State *L)
{
    lrouter_t *u = devex_check_udata_up(L, 1, ROUTER_MT);
    if (u->r == NULL)
        luaL_error(L, "router is closed");
    return u->r;
}

static const char *check_cstring(lua_State *L, int arg)
{
    size_t len;
    const char *s = luaL_checklstring(L, arg, &len);
    if (strlen(s) != len)
        luaL_argerror(L, arg, "contains a NUL byte");
    return s;
}

static int l_new(lua_State *L)
{
    lrouter_t *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->r = NULL;
    luaL_setmetatable(L, ROUTER_MT);
    u->r = devex_router_new();
    return 1;
}

static int l_add(lua_State *L)
{
    devex_router_t *r = check_router(L);
    const char *method = check_cstring(L, 2);
    const char *pattern = check_cstring(L, 3);
    lua_Integer id = luaL_checkinteger(L, 4);
    luaL_argcheck(L, id >= INT_MIN && id <= INT_MAX, 4, "handler id out of range");
    char err[256];
    if (devex_router_add(r, method, pattern, (int)id, err, sizeof err) != 0)
        return luaL_error(L, "%s", err);
    return 0;
}

static int l_match(lua_State *L)
{
    devex_router_t *r = check_router(L);
    size_t mlen, plen;
    const char *method = luaL_checklstring(L, 2, &mlen);
    const char *path = luaL_checklstring(L, 3, &plen);

    /* Matched on the C stack: most requests have no params and then nothing
     * is allocated (the params table is left out: the caller supplies its own
     * empty one). Params move into a userdata before any Lua call that
     * could raise, so a memory error cannot leak the decoded values. */
    devex_route_match_t sm;
    sm.nparams = 0;
    switch (devex_router_match(r, method, mlen, path, plen, &sm)) {
    case DEVEX_ROUTE_FOUND: {
        if (sm.nparams == 0) {
            lua_pushinteger(L, sm.handler_id);
            return 1;
        }
        devex_route_match_t *m = lua_newuserdatauv(L, sizeof *m, 0); /* may raise: sm leaks only then */
        *m = sm;
        luaL_setmetatable(L, MATCH_MT);
        lua_pushinteger(L, m->handler_id);
        lua_createtable(L, 0, (int)m->nparams);
        for (size_t i = 0; i < m->nparams; i++) {
            lua_pushlstring(L, m->params[i].value, m->params[i].value_len);
            lua_setfield(L, -2, m->params[i].name);
        }
        devex_route_match_clear(m);
        return 2;
    }
    case DEVEX_ROUTE_METHOD_NOT_ALLOWED:
        lua_pushnil(L);
        lua_pushliteral(L, "method_not_allowed");
        lua_pushstring(L, sm.allow);
        return 3;
    default:
        devex_route_match_clear(&sm);
        lua_pushnil(L);
        lua_pushliteral(L, "not_found");
        return 2;
    }
}

static int l_close(lua_State *L)
{
    lrouter_t *u = luaL_checkudata(L, 1, ROUTER_MT);
    devex_router_free(u->r);
    u->r = NULL;
    return 0;
}

static int l_clear_match(lua_State *L)
{
    devex_route_match_clear(luaL_checkudata(L, 1, MATCH_MT));
    return 0;
}

static const luaL_Reg router_methods[] = {
    {"add", l_add},
    {"match", l_match},
    {NULL, NULL},
};

static const luaL_Reg router_meta[] = {
    {"__gc", l_close},
    {"__close", l_close},
    {NULL, NULL},
};

static const luaL_Reg module_funcs[] = {
    {"new", l_new},
    {NULL, NULL},
};

int luaopen_devex_router(lua_State *L)
{
    if (luaL_newmetatable(L, ROUTER_MT)) {
        luaL_setfuncs(L, router_meta, 0);
        luaL_newlibtable(L, router_methods);
        lua_pushvalue(L, -2);
        luaL_setfuncs(L, router_methods, 1); /* upvalue: the metatable, for check_router */
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    if (luaL_newmetatable(L, MATCH_MT)) {
        lua_pushcfunction(L, l_clear_match);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    luaL_newlib(L, module_funcs);
    return 1;
}
