/*
 * heaps.h: the allocators of Lua and libcurl (heaps.c): with mimalloc, each
 * thread's Lua objects and libcurl's buffers come from heaps of their own.
 */
#ifndef DEVEX_HEAPS_H
#define DEVEX_HEAPS_H

#include <curl/curl.h>
#include <lua.h>

/* A new Lua state on the Lua allocator (luaL_newstate's panic and warnings). */
lua_State *devex_lua_newstate(void);
/* curl_global_init with libcurl's allocations on their own heap. */
CURLcode devex_heaps_curl_global_init(long flags);
/* Gives the calling thread's free pages back to the system (memtrim.c). */
void devex_heaps_collect(void);

#endif
