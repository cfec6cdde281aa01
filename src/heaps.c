/*
 * heaps.c: where Lua's objects and libcurl's buffers are allocated. With
 * mimalloc (the default build) each comes from a heap of its own per thread,
 * apart from everything else (H2O's connections, OpenSSL, yajl): a heap's
 * pages hold only its own objects, so the pages a burst of transfers or of
 * Lua garbage filled are wholly free once the burst is over and go back to
 * the system, instead of staying resident because some long-lived object of
 * another kind (a parked request's connection, its Lua record) was placed
 * among them. Measured with 10,000 parked session starts in waves of 1,000
 * (tests/bench/bench_parked_starts.py): 195.6 MB resident before,
 * 189.3 and 190.9 MB with these heaps. Without mimalloc
 * (sanitizer and fuzz builds) these are plain realloc/free.
 *
 * mimalloc heaps allocate only on the thread that made them, hence one per
 * thread (thread-local); a block is freed from any thread with mi_free.
 */
#include "heaps.h"
#include "log.h"

#include <curl/curl.h>
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#ifdef DEVEX_MIMALLOC
#include <mimalloc.h>

static _Thread_local mi_heap_t *lua_heap, *curl_heap;

static mi_heap_t *heap_of(mi_heap_t **h)
{
    if (*h == NULL)
        *h = mi_heap_new();
    return *h != NULL ? *h : mi_heap_get_default(); /* (no heap of its own: the thread's) */
}

#define LUA_REALLOC(p, n) mi_heap_realloc(heap_of(&lua_heap), (p), (n))
#define LUA_FREE(p) mi_free(p)

static void *c_malloc(size_t n)
{
    return mi_heap_malloc(heap_of(&curl_heap), n);
}
static void *c_realloc(void *p, size_t n)
{
    return mi_heap_realloc(heap_of(&curl_heap), p, n);
}
static void *c_calloc(size_t a, size_t b)
{
    return mi_heap_calloc(heap_of(&curl_heap), a, b);
}
static char *c_strdup(const char *s)
{
    return mi_heap_strdup(heap_of(&curl_heap), s);
}

CURLcode devex_heaps_curl_global_init(long flags)
{
    return curl_global_init_mem(flags, c_malloc, mi_free, c_realloc, c_strdup, c_calloc);
}

void devex_heaps_collect(void)
{
    if (lua_heap != NULL)
        mi_heap_collect(lua_heap, true);
    if (curl_heap != NULL)
        mi_heap_collect(curl_heap, true);
    mi_collect(true);
}

#else
#include <malloc.h>

#define LUA_REALLOC(p, n) realloc((p), (n))
#define LUA_FREE(p) free(p)

CURLcode devex_heaps_curl_global_init(long flags)
{
    return curl_global_init(flags);
}

void devex_heaps_collect(void)
{
    malloc_trim(0);
}
#endif

static void *lua_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    (void)ud;
    (void)osize;
    if (nsize == 0) {
        LUA_FREE(ptr);
        return NULL;
    }
    return LUA_REALLOC(ptr, nsize);
}

static int panic(lua_State *L)
{
    const char *msg = lua_tostring(L, -1);
    devex_log(DEVEX_LOG_ERROR, "lua panic (unprotected error)", msg != NULL ? msg : "(not a string)");
    return 0; /* Lua aborts */
}

/* warn(): off until "@on", as luaL_newstate has it; a warning is logged */
static void warn_on(void *ud, const char *msg, int tocont);

static void warn_off(void *ud, const char *msg, int tocont)
{
    if (!tocont && strcmp(msg, "@on") == 0)
        lua_setwarnf((lua_State *)ud, warn_on, ud);
}

static void warn_on(void *ud, const char *msg, int tocont)
{
    if (!tocont && msg[0] == '@') {
        if (strcmp(msg, "@off") == 0)
            lua_setwarnf((lua_State *)ud, warn_off, ud);
        return;
    }
    devex_log(DEVEX_LOG_WARN, "lua warning", msg);
}

lua_State *devex_lua_newstate(void)
{
    lua_State *L = lua_newstate(lua_alloc, NULL);
    if (L != NULL) {
        lua_atpanic(L, panic);
        lua_setwarnf(L, warn_off, L);
    }
    return L;
}
