/*
 * fuzz_lua.h: the Lua side of the fuzz harnesses. One lua_State per process
 * (made on the first input), with the standard libraries, devexd's C modules
 * in package.preload (as a worker's VM has them) and package.path pointing
 * at the source tree's lua/ ($DEVEXD_SOURCE_DIR, else the tree the target
 * was built from). A Lua error raised by the code under test is an answer,
 * not a finding: inputs run under pcall; only crashes and sanitizer reports
 * count.
 */
#ifndef DEVEX_FUZZ_LUA_H
#define DEVEX_FUZZ_LUA_H
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "devex.h"

#ifndef DEVEX_FUZZ_SOURCE_DIR
#define DEVEX_FUZZ_SOURCE_DIR "."
#endif

/* Runs a chunk of setup code; a failure there is a broken harness: abort. */
static inline void fuzz_lua_setup(lua_State *L, const char *chunk)
{
    if (luaL_dostring(L, chunk) != LUA_OK) {
        fprintf(stderr, "fuzz harness setup failed: %s\n", lua_tostring(L, -1));
        abort();
    }
    lua_settop(L, 0);
}

/* Lua code is not compiled with coverage instrumentation, so libFuzzer would
 * see only the C it calls: a line hook feeds (previous line, line) pairs of
 * the Lua code into libFuzzer's extra counters, which it treats as coverage. */
#define FUZZ_LUA_COUNTERS (1u << 16)
__attribute__((section("__libfuzzer_extra_counters"))) static uint8_t fuzz_lua_counters[FUZZ_LUA_COUNTERS];

static void fuzz_lua_line_hook(lua_State *L, lua_Debug *ar)
{
    static uintptr_t prev;
    if (lua_getinfo(L, "S", ar) == 0)
        return;
    uintptr_t here = ((uintptr_t)ar->source * 2654435761u) ^ ((uintptr_t)ar->currentline * 40503u);
    uint8_t *c = &fuzz_lua_counters[(here ^ prev) & (FUZZ_LUA_COUNTERS - 1)];
    if (*c < 255)
        (*c)++;
    prev = here >> 1;
}

/* check(cond, msg) in the harness's Lua: a broken invariant is a finding
 * (abort), unlike an error raised by the code under test. */
static int fuzz_lua_check(lua_State *L)
{
    if (!lua_toboolean(L, 1)) {
        fprintf(stderr, "fuzz check failed: %s\n", luaL_optstring(L, 2, "(no message)"));
        abort();
    }
    return 0;
}

static inline lua_State *fuzz_lua_new(void)
{
    lua_State *L = luaL_newstate();
    if (L == NULL)
        abort();
    *(void **)lua_getextraspace(L) = NULL; /* no task runs here (vm.c does the same) */
    luaL_openlibs(L);
    devex_modules_preload(L);
    lua_register(L, "check", fuzz_lua_check);
    lua_sethook(L, fuzz_lua_line_hook, LUA_MASKLINE, 0);
    const char *dir = getenv("DEVEXD_SOURCE_DIR");
    if (dir == NULL || *dir == '\0')
        dir = DEVEX_FUZZ_SOURCE_DIR;
    lua_getglobal(L, "package");
    lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua", dir, dir);
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);
    return L;
}

/* Calls the global function `name` with the input as its one argument, under
 * pcall; errors are dropped (printed when FUZZ_LUA_ERRORS is set: to check
 * that the seeds get past the harness). */
static inline void fuzz_lua_call(lua_State *L, const char *name, const uint8_t *data, size_t size)
{
    lua_getglobal(L, name);
    lua_pushlstring(L, (const char *)data, size);
    static int show = -1;
    if (show < 0)
        show = getenv("FUZZ_LUA_ERRORS") != NULL;
    if (lua_pcall(L, 1, 0, 0) != LUA_OK && show)
        fprintf(stderr, "lua error: %s\n", lua_tostring(L, -1));
    lua_settop(L, 0);
    /* free this input's garbage now: libFuzzer's leak check runs (slowly) after
     * every input that mallocs more than it frees */
    lua_gc(L, LUA_GCCOLLECT);
}

/* The whole of a harness whose fuzz_one is Lua: on the first input its
 * state, then prepare(L) (unless NULL: what the setup needs besides, such as
 * C functions or globals) and the `setup` chunk; then fuzz_one(input) on each.
 * A target is
 *   int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
 *   { return fuzz_lua_run(setup, NULL, d, n); } */
static inline int fuzz_lua_run(const char *setup, void (*prepare)(lua_State *L), const uint8_t *data, size_t size)
{
    static lua_State *L;
    if (L == NULL) {
        L = fuzz_lua_new();
        if (prepare != NULL)
            prepare(L);
        fuzz_lua_setup(L, setup);
    }
    fuzz_lua_call(L, "fuzz_one", data, size);
    return 0;
}
#endif
