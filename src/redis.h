/*
 * redis.h: devex.redis (redis.c): r = redis.connect(url, {timeout=s});
 * r:call(cmd, ...); r:pipeline({{...}, ...}); r:eval(src, {keys}, args...);
 * r:status(). Replies: strings, integers, tables; a nil reply is redis.null.
 */
#ifndef DEVEX_REDIS_H
#define DEVEX_REDIS_H

#include <lua.h>

/* Closes this worker thread's connections (at thread exit). */
void devex_redis_thread_cleanup(void);
int luaopen_devex_redis(lua_State *L);

#endif
