/*
 * unit.h: a tiny assertion helper for the C unit tests. Each test binary
 * counts checks and failures and exits non-zero when any check failed.
 */
#ifndef DEVEX_UNIT_H
#define DEVEX_UNIT_H

#include <stdio.h>
#include <string.h>
#include <lauxlib.h>
#include <lua.h>

static int unit_checks, unit_failures;

#define CHECK(cond)                                                                 \
    do {                                                                            \
        unit_checks++;                                                              \
        if (!(cond)) {                                                              \
            unit_failures++;                                                        \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                           \
    } while (0)

#define CHECK_STR(a, b)                                                                                 \
    do {                                                                                                \
        const char *a_ = (a), *b_ = (b);                                                                \
        unit_checks++;                                                                                  \
        if (a_ == NULL || b_ == NULL || strcmp(a_, b_) != 0) {                                          \
            unit_failures++;                                                                            \
            fprintf(stderr, "%s:%d: \"%s\" != \"%s\"\n", __FILE__, __LINE__, a_ ? a_ : "(null)", b_ ? b_ : "(null)"); \
        }                                                                                               \
    } while (0)

/* check(cond, [what]) for Lua test code: counts like CHECK, reports file:line. */
static inline int unit_lua_check(lua_State *L)
{
    unit_checks++;
    if (!lua_toboolean(L, 1)) {
        unit_failures++;
        luaL_where(L, 1);
        fprintf(stderr, "%scheck failed: %s\n", lua_tostring(L, -1), luaL_optstring(L, 2, "?"));
    }
    return 0;
}

/* Runs a Lua chunk; a Lua error counts as one failed check. */
static inline void unit_lua_run(lua_State *L, const char *name, const char *code)
{
    int top = lua_gettop(L);
    unit_checks++;
    if (luaL_loadbuffer(L, code, strlen(code), name) != LUA_OK || lua_pcall(L, 0, 0, 0) != LUA_OK) {
        unit_failures++;
        fprintf(stderr, "%s: lua error: %s\n", name, lua_tostring(L, -1));
    }
    lua_settop(L, top);
}

static inline int unit_done(const char *name)
{
    printf("%s: %d checks, %d failed\n", name, unit_checks, unit_failures);
    return unit_failures ? 1 : 0;
}

#endif
