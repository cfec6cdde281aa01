/*
 * redis.h: devex.redis (redis.c): r = redis.connect(url, {timeout=s});
 * r:call(cmd, ...); r:pipeline({{...}, ...}); r:eval(src, {keys}, args...);
 * r:status(). Replies: strings, integers, tables; a nil reply is redis.null.
 */
#ifndef DEVEX_REDIS_H
#define DEVEX_REDIS_H

#include <lua.h>
#include <stddef.h>

/* Where a redis URL points, parsed as redis.connect parses it: for the
 * invalidation connection of redis_track.c, which is not a devex.redis client. */
typedef struct {
    char host[256];
    int port;
    char unix_path[256];
    char user[128];
    char password[256];
    int db;
} devex_redis_target_t;
int devex_redis_url_target(const char *url, devex_redis_target_t *t, char *err, size_t errlen);

/* redis_track.c: closes this worker thread's invalidation connections. */
void devex_redis_track_thread_cleanup(void);
int luaopen_devex_redis_track(lua_State *L);

/* Closes this worker thread's connections (at thread exit). */
void devex_redis_thread_cleanup(void);
int luaopen_devex_redis(lua_State *L);

#endif
