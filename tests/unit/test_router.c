/*
 * test_router.c: unit tests for router.c, covering pattern validation, match
 * priority with backtracking, percent-decoding, 405/Allow, HEAD via GET and
 * the devex.router Lua API. Run under ASan+UBSan to catch leaks of params.
 */
#include "router.h"
#include "unit.h"

#include <lauxlib.h>
#include <lualib.h>
#include <stdlib.h>

static devex_router_t *R;
static devex_route_match_t M;

static void add_ok(const char *method, const char *pattern, int id)
{
    char err[256] = "";
    int rc = devex_router_add(R, method, pattern, id, err, sizeof err);
    if (rc != 0)
        fprintf(stderr, "add %s %s: %s\n", method, pattern, err);
    CHECK(rc == 0);
}

/* Returns the error message so tests can look at it; "" when add succeeded. */
static const char *add_err(const char *method, const char *pattern)
{
    static char err[256];
    err[0] = '\0';
    int rc = devex_router_add(R, method, pattern, 999, err, sizeof err);
    CHECK(rc == -1);
    CHECK(err[0] != '\0');
    return err;
}

static int match(const char *method, const char *path)
{
    devex_route_match_clear(&M);
    return devex_router_match(R, method, strlen(method), path, strlen(path), &M);
}

/* The handler id on a match, -1 for 404, -2 for 405. */
static int id_of(const char *method, const char *path)
{
    int rc = match(method, path);
    return rc == DEVEX_ROUTE_FOUND ? M.handler_id : rc == DEVEX_ROUTE_NOT_FOUND ? -1 : -2;
}

static const char *param(const char *name)
{
    for (size_t i = 0; i < M.nparams; i++)
        if (strcmp(M.params[i].name, name) == 0)
            return M.params[i].value;
    return NULL;
}

static void fresh(void)
{
    devex_route_match_clear(&M);
    devex_router_free(R);
    R = devex_router_new();
}

static void test_literals(void)
{
    fresh();
    add_ok("GET", "/", 1);
    add_ok("GET", "/health", 2);
    add_ok("GET", "/api/v1/status", 3);
    add_ok("GET", "/api/v1/stats", 4);
    CHECK(id_of("GET", "/") == 1);
    CHECK(id_of("GET", "/health") == 2);
    CHECK(id_of("GET", "/api/v1/status") == 3);
    CHECK(id_of("GET", "/api/v1/stats") == 4);
    CHECK(M.nparams == 0);
    CHECK(id_of("GET", "/api/v1") == -1);
    CHECK(id_of("GET", "/api/v1/statu") == -1);
    CHECK(id_of("GET", "/api/v1/status/x") == -1);
    CHECK(id_of("GET", "/healthz") == -1);
    CHECK(id_of("GET", "") == -1);
    CHECK(id_of("GET", "health") == -1);
    CHECK(id_of("OPTIONS", "*") == -1);
    /* literals compare raw bytes: an encoded letter is another path */
    CHECK(id_of("GET", "/h%65alth") == -1);
    /* method names are case-sensitive */
    CHECK(id_of("get", "/health") == -2);
}

static void test_params(void)
{
    fresh();
    add_ok("GET", "/api/repl/session/:id", 1);
    add_ok("GET", "/users/:user/repos/:repo", 2);
    add_ok("POST", "/users/:user/repos/:repo/issues/:n", 3);
    CHECK(id_of("GET", "/api/repl/session/abc123") == 1);
    CHECK(M.nparams == 1);
    CHECK_STR(M.params[0].name, "id");
    CHECK_STR(M.params[0].value, "abc123");
    CHECK(M.params[0].value_len == 6);
    CHECK(id_of("GET", "/api/repl/session/") == -1); /* a param is never empty */
    CHECK(id_of("GET", "/api/repl/session") == -1);
    CHECK(id_of("GET", "/api/repl/session/a/b") == -1);

    CHECK(id_of("GET", "/users/ann/repos/devex") == 2);
    CHECK(M.nparams == 2);
    CHECK_STR(param("user"), "ann");
    CHECK_STR(param("repo"), "devex");
    CHECK(id_of("POST", "/users/ann/repos/devex/issues/42") == 3);
    CHECK(M.nparams == 3);
    CHECK_STR(param("user"), "ann");
    CHECK_STR(param("repo"), "devex");
    CHECK_STR(param("n"), "42");

    /* params may follow each other and hold any segment characters */
    add_ok("GET", "/x/:a/:b", 4);
    CHECK(id_of("GET", "/x/a:b@c/~.-_") == 4);
    CHECK_STR(param("a"), "a:b@c");
    CHECK_STR(param("b"), "~.-_");

    /* param names belong to the route: different spellings may share a node */
    add_ok("GET", "/u/:id", 5);
    add_ok("GET", "/u/:name/posts", 6);
    CHECK(id_of("GET", "/u/7") == 5);
    CHECK_STR(param("id"), "7");
    CHECK(id_of("GET", "/u/bob/posts") == 6);
    CHECK_STR(param("name"), "bob");
    CHECK(param("id") == NULL);
}

static void test_wildcard(void)
{
    fresh();
    add_ok("GET", "/static/*path", 1);
    add_ok("GET", "/static/favicon.ico", 2);
    add_ok("GET", "/static/:file/raw", 3);
    CHECK(id_of("GET", "/static/css/site.css") == 1);
    CHECK_STR(param("path"), "css/site.css");
    CHECK(id_of("GET", "/static/a") == 1);
    CHECK_STR(param("path"), "a");
    CHECK(id_of("GET", "/static/") == 1);
    CHECK_STR(param("path"), "");
    CHECK(M.params[0].value_len == 0);
    CHECK(id_of("GET", "/static") == -1); /* the slash before * is part of the route */
    CHECK(id_of("GET", "/static//x") == 1);
    CHECK_STR(param("path"), "/x");
    CHECK(id_of("GET", "/static/a%20b/c%41") == 1);
    CHECK_STR(param("path"), "a b/cA");
    CHECK(id_of("GET", "/static/a%2Fb") == -1); /* encoded slash would be ambiguous */
    CHECK(id_of("GET", "/static/a%00b") == -1);
    CHECK(id_of("GET", "/static/%zz") == -1);
    /* literal and param beat the wildcard; backtrack into it when they fail */
    CHECK(id_of("GET", "/static/favicon.ico") == 2);
    CHECK(M.nparams == 0);
    CHECK(id_of("GET", "/static/x/raw") == 3);
    CHECK_STR(param("file"), "x");
    CHECK(id_of("GET", "/static/favicon.ico/raw") == 3);
    CHECK(id_of("GET", "/static/x/raw/more") == 1);
    CHECK_STR(param("path"), "x/raw/more");

    /* a wildcard after params; and one at the root catching everything */
    add_ok("GET", "/repo/:owner/:name/blob/*file", 4);
    CHECK(id_of("GET", "/repo/o/n/blob/src/main.c") == 4);
    CHECK(M.nparams == 3);
    CHECK_STR(param("owner"), "o");
    CHECK_STR(param("name"), "n");
    CHECK_STR(param("file"), "src/main.c");
    CHECK(id_of("GET", "/") == -1);
    add_ok("GET", "/*all", 5);
    CHECK(id_of("GET", "/") == 5);
    CHECK_STR(param("all"), "");
    CHECK(id_of("GET", "/nothing/else") == 5);
    CHECK_STR(param("all"), "nothing/else");
    CHECK(id_of("GET", "/static/x") == 1);
}

static void test_priority_backtracking(void)
{
    fresh();
    add_ok("GET", "/a/b/c", 1);
    add_ok("GET", "/a/:x/d", 2);
    add_ok("GET", "/a/:x/:y/e", 3);
    add_ok("GET", "/a/*rest", 4);
    CHECK(id_of("GET", "/a/b/c") == 1);
    CHECK(M.nparams == 0);
    CHECK(id_of("GET", "/a/b/d") == 2); /* literal b dead-ends at d: back to :x */
    CHECK_STR(param("x"), "b");
    CHECK(M.nparams == 1);
    CHECK(id_of("GET", "/a/z/d") == 2);
    CHECK_STR(param("x"), "z");
    CHECK(id_of("GET", "/a/b/c/e") == 3);
    CHECK_STR(param("x"), "b");
    CHECK_STR(param("y"), "c");
    CHECK(id_of("GET", "/a/b/c/f") == 4);
    CHECK(M.nparams == 1);
    CHECK_STR(param("rest"), "b/c/f");

    /* backtracking is method-aware: the literal has no POST, the param has */
    fresh();
    add_ok("GET", "/items/new", 1);
    add_ok("POST", "/items/:id", 2);
    CHECK(id_of("GET", "/items/new") == 1);
    CHECK(id_of("POST", "/items/new") == 2);
    CHECK_STR(param("id"), "new");
    CHECK(id_of("DELETE", "/items/new") == -2);
    CHECK_STR(M.allow, "GET, HEAD, POST");
    CHECK(id_of("DELETE", "/items/7") == -2);
    CHECK_STR(M.allow, "POST");

    /* a param that fails to decode falls through to the wildcard */
    fresh();
    add_ok("GET", "/f/:name", 1);
    add_ok("GET", "/f/*rest", 2);
    CHECK(id_of("GET", "/f/ok") == 1);
    CHECK(id_of("GET", "/f/a%2Fb") == -1);
    CHECK(id_of("GET", "/f/a%zz") == -1);
}

static void test_decoding(void)
{
    fresh();
    add_ok("GET", "/s/:v", 1);
    CHECK(id_of("GET", "/s/hello%20world") == 1);
    CHECK_STR(param("v"), "hello world");
    CHECK(M.params[0].value_len == 11);
    CHECK(id_of("GET", "/s/%e2%82%AC") == 1);
    CHECK_STR(param("v"), "\xe2\x82\xac");
    CHECK(M.params[0].value_len == 3);
    CHECK(id_of("GET", "/s/a+b") == 1); /* '+' is a space only in queries */
    CHECK_STR(param("v"), "a+b");
    CHECK(id_of("GET", "/s/%25") == 1);
    CHECK_STR(param("v"), "%");
    CHECK(id_of("GET", "/s/%2F") == -1);
    CHECK(id_of("GET", "/s/a%2fb") == -1);
    CHECK(id_of("GET", "/s/%zz") == -1);
    CHECK(id_of("GET", "/s/%2") == -1);
    CHECK(id_of("GET", "/s/%") == -1);
    CHECK(id_of("GET", "/s/%g0") == -1);
    CHECK(id_of("GET", "/s/a%00") == -1);
    /* a raw NUL inside the given length */
    devex_route_match_clear(&M);
    CHECK(devex_router_match(R, "GET", 3, "/s/a\0b", 6, &M) == DEVEX_ROUTE_NOT_FOUND);
    /* a length shorter than the string: only that much is the path */
    devex_route_match_clear(&M);
    CHECK(devex_router_match(R, "GET", 3, "/s/abc?q=1", 6, &M) == DEVEX_ROUTE_FOUND);
    CHECK_STR(param("v"), "abc");
}

static void test_methods(void)
{
    fresh();
    add_ok("GET", "/r", 1);
    add_ok("POST", "/r", 2);
    add_ok("DELETE", "/r", 3);
    add_ok("PUT", "/w", 4);
    add_ok("PATCH", "/w", 5);
    add_ok("GET", "/h", 6);
    add_ok("HEAD", "/h", 7);
    add_ok("*", "/any", 8);
    add_ok("GET", "/mixed", 9);
    add_ok("*", "/mixed", 10);

    CHECK(id_of("GET", "/r") == 1);
    CHECK(id_of("POST", "/r") == 2);
    CHECK(id_of("DELETE", "/r") == 3);
    CHECK(id_of("HEAD", "/r") == 1);
    CHECK(id_of("PUT", "/r") == -2);
    CHECK_STR(M.allow, "DELETE, GET, HEAD, POST");
    CHECK(M.nparams == 0);
    CHECK(id_of("GET", "/w") == -2);
    CHECK_STR(M.allow, "PATCH, PUT"); /* no HEAD without GET */
    CHECK(id_of("HEAD", "/w") == -2);
    CHECK(id_of("HEAD", "/h") == 7); /* an explicit HEAD wins over GET */
    CHECK(id_of("POST", "/h") == -2);
    CHECK_STR(M.allow, "GET, HEAD");
    CHECK(id_of("GET", "/any") == 8);
    CHECK(id_of("PROPFIND", "/any") == 8);
    CHECK(id_of("HEAD", "/any") == 8);
    CHECK(id_of("GET", "/mixed") == 9);
    CHECK(id_of("HEAD", "/mixed") == 9);
    CHECK(id_of("POST", "/mixed") == 10);
    CHECK(id_of("GET", "/nope") == -1);
    CHECK_STR(M.allow, "");

    /* the Allow list is the union of every route the path reaches */
    add_ok("PUT", "/r/:id", 11);
    add_ok("OPTIONS", "/r/*rest", 12);
    add_ok("GET", "/r/special", 13);
    CHECK(id_of("POST", "/r/special") == -2);
    CHECK_STR(M.allow, "GET, HEAD, OPTIONS, PUT");
    CHECK(id_of("POST", "/r/5") == -2);
    CHECK_STR(M.allow, "OPTIONS, PUT");

    /* Allow never overflows: methods that would not fit are left out whole */
    fresh();
    char name[32];
    for (int i = 0; i < 20; i++) {
        snprintf(name, sizeof name, "METHOD%02d", i);
        add_ok(name, "/many", i);
    }
    CHECK(id_of("GET", "/many") == -2);
    CHECK(strlen(M.allow) < sizeof M.allow);
    CHECK(strncmp(M.allow, "METHOD00, METHOD01, ", 20) == 0);
    size_t n = strlen(M.allow);
    CHECK(n >= 8 && strncmp(M.allow + n - 8, "METHOD", 6) == 0);
}

static void test_bad_patterns(void)
{
    fresh();
    add_ok("GET", "/a/:id", 1);
    CHECK(strstr(add_err("GET", "/a/:id"), "duplicate") != NULL);
    CHECK(strstr(add_err("GET", "/a/:other"), "duplicate") != NULL); /* same shape */
    add_ok("POST", "/a/:id", 2);
    add_ok("*", "/a/:id", 3);
    CHECK(strstr(add_err("*", "/a/:x"), "duplicate") != NULL);
    add_ok("GET", "/a/:id/", 4); /* trailing slash is another route */

    CHECK(strstr(add_err("GET", "a/b"), "start with '/'") != NULL);
    CHECK(strstr(add_err("GET", ""), "start with '/'") != NULL);
    CHECK(strstr(add_err("GET", "/a/:"), "empty parameter name") != NULL);
    CHECK(strstr(add_err("GET", "/a/*"), "empty parameter name") != NULL);
    CHECK(strstr(add_err("GET", "//"), "empty segment") != NULL);
    CHECK(strstr(add_err("GET", "/a//b"), "empty segment") != NULL);
    CHECK(strstr(add_err("GET", "/a/b//"), "empty segment") != NULL);
    CHECK(strstr(add_err("GET", "/a/*rest/b"), "last") != NULL);
    CHECK(strstr(add_err("GET", "/a/*rest/"), "last") != NULL);
    add_err("GET", "/a/:1x");
    add_err("GET", "/a/:x-y");
    add_err("GET", "/a/:x.json");
    add_err("GET", "/a/b%20c");
    add_err("GET", "/a/b c");
    add_err("GET", "/a?b");
    add_err("GET", "/a#b");
    add_err("GET", "/a/:abcdefghijklmnopqrstuvwxyz012345"); /* 32 chars */
    add_ok("GET", "/n/:abcdefghijklmnopqrstuvwxyz01234", 5); /* 31 chars */
    CHECK(id_of("GET", "/n/v") == 5);
    CHECK_STR(param("abcdefghijklmnopqrstuvwxyz01234"), "v");
    CHECK(strstr(add_err("GET", "/d/:x/:x"), "duplicate parameter") != NULL);
    CHECK(strstr(add_err("GET", "/d/:x/*x"), "duplicate parameter") != NULL);

    CHECK(strstr(add_err("get", "/m"), "method") != NULL);
    add_err("", "/m");
    add_err("G T", "/m");
    add_err("**", "/m");
    add_err("ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEF", "/m"); /* 32 chars */
    add_ok("M-SEARCH", "/m", 6);

    add_ok("GET", "/p/:a/:b/:c/:d/:e/:f/:g/:h", 7);
    CHECK(strstr(add_err("GET", "/q/:a/:b/:c/:d/:e/:f/:g/:h/:i"), "too many parameters") != NULL);
    CHECK(strstr(add_err("GET", "/q/:a/:b/:c/:d/:e/:f/:g/:h/*i"), "too many parameters") != NULL);
    add_ok("GET", "/q/:a/:b/:c/:d/:e/:f/:g/*h", 8);
    CHECK(id_of("GET", "/p/1/2/3/4/5/6/7/8") == 7);
    CHECK(M.nparams == DEVEX_ROUTER_MAX_PARAMS);
    CHECK_STR(param("a"), "1");
    CHECK_STR(param("h"), "8");
    CHECK(id_of("GET", "/q/1/2/3/4/5/6/7/8/9/10") == 8);
    CHECK_STR(param("h"), "8/9/10");

    /* a failed add leaves the router as it was */
    CHECK(id_of("GET", "/a/1") == 1);
    CHECK(id_of("GET", "/d/1/2") == -1);

    /* err may be NULL */
    CHECK(devex_router_add(R, "GET", "bad", 1, NULL, 0) == -1);
    /* a tiny err buffer is truncated, not overrun */
    char small[8];
    CHECK(devex_router_add(R, "GET", "bad", 1, small, sizeof small) == -1);
    CHECK(strlen(small) == sizeof small - 1);
}

static void test_root_and_trailing_slash(void)
{
    fresh();
    CHECK(id_of("GET", "/") == -1);
    add_ok("GET", "/", 1);
    add_ok("GET", "/a", 2);
    add_ok("GET", "/b/", 3);
    add_ok("GET", "/c/:id", 4);
    CHECK(strstr(add_err("GET", "/"), "duplicate") != NULL);
    CHECK(id_of("GET", "/") == 1);
    CHECK(id_of("GET", "//") == -1);
    CHECK(id_of("GET", "/a") == 2);
    CHECK(id_of("GET", "/a/") == -1);
    CHECK(id_of("GET", "/b/") == 3);
    CHECK(id_of("GET", "/b") == -1);
    CHECK(id_of("GET", "/c/1") == 4);
    CHECK(id_of("GET", "/c/1/") == -1);
    add_ok("GET", "/a/", 5);
    CHECK(id_of("GET", "/a/") == 5);
    CHECK(id_of("GET", "/a") == 2);
}

static void test_long_paths(void)
{
    fresh();
    add_ok("GET", "/deep/*rest", 1);
    add_ok("GET", "/one/:v", 2);
    add_ok("GET", "/one/:v/x", 3);

    size_t n = 100000;
    char *p = malloc(n + 1);
    /* many short segments: the walk goes no deeper than the trie */
    memcpy(p, "/deep", 5);
    for (size_t i = 5; i + 1 < n; i += 2) {
        p[i] = '/';
        p[i + 1] = 'x';
    }
    p[n - 1] = 'x';
    p[n] = '\0';
    CHECK(id_of("GET", p) == 1);
    CHECK(M.params[0].value_len == n - 6);
    memcpy(p, "/deed", 5);
    CHECK(id_of("GET", p) == -1);

    /* one huge segment */
    memcpy(p, "/one/", 5);
    memset(p + 5, 'v', n - 5);
    CHECK(id_of("GET", p) == 2);
    CHECK(M.params[0].value_len == n - 5);
    memcpy(p + n - 2, "%2", 2);
    CHECK(id_of("GET", p) == -1);
    memcpy(p + n - 3, "%41", 3);
    CHECK(id_of("GET", p) == 2);
    CHECK(M.params[0].value_len == n - 7);
    CHECK(M.params[0].value[n - 8] == 'A');
    memcpy(p + n - 3, "v/x", 3);
    CHECK(id_of("GET", p) == 3);
    CHECK(M.params[0].value_len == n - 7);

    /* patterns: long but bounded */
    char pat[4096];
    size_t o = 0;
    for (int i = 0; i < 128; i++)
        o += (size_t)snprintf(pat + o, sizeof pat - o, "/s");
    add_ok("GET", pat, 4);
    CHECK(id_of("GET", pat) == 4);
    snprintf(pat + o, sizeof pat - o, "/s");
    CHECK(strstr(add_err("GET", pat), "too many segments") != NULL);
    memset(pat, 'a', 3000);
    pat[0] = '/';
    pat[3000] = '\0';
    CHECK(strstr(add_err("GET", pat), "too long") != NULL);
    free(p);
}

static void test_many_routes(void)
{
    /* enough literal siblings to exercise the sorted-edge binary search */
    fresh();
    char pat[64];
    for (int i = 0; i < 500; i++) {
        snprintf(pat, sizeof pat, "/r%d/item", (i * 7919) % 500);
        add_ok("GET", pat, (i * 7919) % 500);
    }
    add_ok("GET", "/:other/item", 1000);
    int ok = 1;
    for (int i = 0; i < 500; i++) {
        snprintf(pat, sizeof pat, "/r%d/item", i);
        ok = ok && id_of("GET", pat) == i;
    }
    CHECK(ok);
    CHECK(id_of("GET", "/r500/item") == 1000);
    CHECK(id_of("GET", "/r") == -1);
}

/* ---- Lua API ----------------------------------------------------------- */

static void lua_check(lua_State *L, const char *code, int line)
{
    unit_checks++;
    if (luaL_dostring(L, code) != LUA_OK) {
        unit_failures++;
        fprintf(stderr, "%s:%d: lua: %s\n", __FILE__, line, lua_tostring(L, -1));
    }
    lua_settop(L, 0);
}
#define LUA_CHECK(L, code) lua_check(L, code, __LINE__)

static void test_lua(void)
{
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    luaL_requiref(L, "devex.router", luaopen_devex_router, 0);
    lua_pop(L, 1);

    LUA_CHECK(L, "router = require('devex.router')\n"
                 "r = router.new()\n"
                 "r:add('GET', '/api/repl/session/:id', 1)\n"
                 "r:add('POST', '/api/repl/session/:id', 2)\n"
                 "r:add('GET', '/', 3)\n"
                 "r:add('*', '/files/*path', 4)\n"
                 "r:add('GET', '/u/:a/:b', 5)\n");
    LUA_CHECK(L, "local id, p = r:match('GET', '/api/repl/session/x%20y')\n"
                 "assert(id == 1, tostring(id))\n"
                 "assert(p.id == 'x y')\n"
                 "assert(next(p, next(p)) == nil)\n");
    LUA_CHECK(L, "local id, p = r:match('HEAD', '/api/repl/session/s1')\n"
                 "assert(id == 1 and p.id == 's1')\n"
                 "id, p = r:match('POST', '/api/repl/session/s1')\n"
                 "assert(id == 2 and p.id == 's1')\n");
    LUA_CHECK(L, "local id, p = r:match('GET', '/')\n"
                 "assert(id == 3 and p == nil)\n"
                 "assert(select('#', r:match('GET', '/')) == 1)\n");
    LUA_CHECK(L, "local id, p = r:match('DELETE', '/files/a/b.txt')\n"
                 "assert(id == 4 and p.path == 'a/b.txt')\n"
                 "id, p = r:match('GET', '/u/1/2')\n"
                 "assert(id == 5 and p.a == '1' and p.b == '2')\n");
    LUA_CHECK(L, "local id, why, allow = r:match('PUT', '/api/repl/session/s1')\n"
                 "assert(id == nil and why == 'method_not_allowed')\n"
                 "assert(allow == 'GET, HEAD, POST', allow)\n");
    LUA_CHECK(L, "local id, why, extra = r:match('GET', '/nope')\n"
                 "assert(id == nil and why == 'not_found' and extra == nil)\n"
                 "assert(select('#', r:match('GET', '/nope')) == 2)\n"
                 "assert(r:match('GET', '/api/repl/session/%zz') == nil)\n");
    LUA_CHECK(L, "local ok, err = pcall(r.add, r, 'GET', '/api/repl/session/:id', 9)\n"
                 "assert(not ok and err:find('duplicate route'), err)\n"
                 "ok, err = pcall(r.add, r, 'GET', 'nope', 9)\n"
                 "assert(not ok and err:find('must start with'), err)\n"
                 "ok, err = pcall(r.add, r, 'GET', '/a//b', 9)\n"
                 "assert(not ok and err:find('empty segment'), err)\n"
                 "ok, err = pcall(r.add, r, 'get', '/x', 9)\n"
                 "assert(not ok and err:find('method'), err)\n"
                 "ok, err = pcall(r.add, r, 'GET', '/x\\0y', 9)\n"
                 "assert(not ok and err:find('NUL'), err)\n"
                 "ok, err = pcall(r.add, r, 'GET', '/x', 2^40)\n"
                 "assert(not ok and err:find('out of range'), err)\n"
                 "ok, err = pcall(r.add, r, 'GET', '/x', 'one')\n"
                 "assert(not ok)\n"
                 "ok, err = pcall(r.match, {}, 'GET', '/')\n"
                 "assert(not ok)\n");
    /* __close frees at once; later use raises instead of touching freed memory */
    LUA_CHECK(L, "local keep\n"
                 "do\n"
                 "  local r2 <close> = router.new()\n"
                 "  r2:add('GET', '/k/:v', 7)\n"
                 "  assert(r2:match('GET', '/k/1') == 7)\n"
                 "  keep = r2\n"
                 "end\n"
                 "local ok, err = pcall(keep.match, keep, 'GET', '/k/1')\n"
                 "assert(not ok and err:find('closed'), err)\n"
                 "ok, err = pcall(keep.add, keep, 'GET', '/z', 1)\n"
                 "assert(not ok and err:find('closed'), err)\n");
    /* routers left to the GC, and match guards under memory churn */
    LUA_CHECK(L, "for i = 1, 200 do\n"
                 "  local t = router.new()\n"
                 "  t:add('GET', '/x/:a/:b/*c', i)\n"
                 "  local id, p = t:match('GET', '/x/1/2/3/4')\n"
                 "  assert(id == i and p.a == '1' and p.b == '2' and p.c == '3/4')\n"
                 "end\n"
                 "collectgarbage()\n");
    lua_close(L);
}

int main(void)
{
    test_literals();
    test_params();
    test_wildcard();
    test_priority_backtracking();
    test_decoding();
    test_methods();
    test_bad_patterns();
    test_root_and_trailing_slash();
    test_long_paths();
    test_many_routes();
    test_lua();
    devex_route_match_clear(&M);
    devex_router_free(R);
    return unit_done("router");
}
