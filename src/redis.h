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
    int sentinel; /* redis+sentinel://: host and port are not set; ask devex_redis_current_primary */
} devex_redis_target_t;
int devex_redis_url_target(const char *url, devex_redis_target_t *t, char *err, size_t errlen);

/* For a redis+sentinel:// URL: the primary that this worker's devex.redis
 * client of the same URL found through the sentinels and checked (ROLE), so
 * redis_track.c follows the same server. 0, or -1 while there is none (the
 * client is down, re-resolving, or not made yet). */
int devex_redis_current_primary(const char *url, char *host, size_t hostlen, int *port);

/* redis_track.c: closes this worker thread's invalidation connections. */
void devex_redis_track_thread_cleanup(void);
int luaopen_devex_redis_track(lua_State *L);

/* Closes this worker thread's connections (at thread exit). */
void devex_redis_thread_cleanup(void);
int luaopen_devex_redis(lua_State *L);

#endif
