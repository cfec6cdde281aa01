/*
 * redis_uv.h: hiredis async context on a libuv loop (redis_uv.c).
 */
#ifndef DEVEX_REDIS_UV_H
#define DEVEX_REDIS_UV_H

#include <hiredis/async.h>
#include <uv.h>

/* Returns 0, or -1 when the context is already attached or out of memory. */
int devex_redis_uv_attach(redisAsyncContext *ac, uv_loop_t *loop);

#endif
