/*
 * redis_uv.c: attaches a hiredis async context to a libuv loop. hiredis ships
 * such an adapter (adapters/libuv.h), but the one in Debian's hiredis 0.14
 * drops poll errors (`if (status != 0) return;`), so a refused or reset
 * connection is never noticed and its commands hang. This adapter hands a poll
 * error to hiredis as readiness, and hiredis's own read/write then sees the
 * socket error and fails the connection and its callbacks.
 */
#include "redis_uv.h"

#include <hiredis/async.h>
#include <stdlib.h>

typedef struct {
    redisAsyncContext *ac;
    uv_poll_t poll;
    int events;
} redis_uv_t;

static void on_poll(uv_poll_t *h, int status, int events)
{
    redis_uv_t *p = h->data;
    if (status != 0)
        events = p->events; /* error: let hiredis discover it */
    if (p->ac != NULL && (events & UV_READABLE))
        redisAsyncHandleRead(p->ac);
    if (p->ac != NULL && (events & UV_WRITABLE))
        redisAsyncHandleWrite(p->ac);
}

static void update(redis_uv_t *p, int events)
{
    p->events = events;
    if (events)
        uv_poll_start(&p->poll, events, on_poll);
    else
        uv_poll_stop(&p->poll);
}

static void add_read(void *d) { redis_uv_t *p = d; update(p, p->events | UV_READABLE); }
static void del_read(void *d) { redis_uv_t *p = d; update(p, p->events & ~UV_READABLE); }
static void add_write(void *d) { redis_uv_t *p = d; update(p, p->events | UV_WRITABLE); }
static void del_write(void *d) { redis_uv_t *p = d; update(p, p->events & ~UV_WRITABLE); }

static void on_closed(uv_handle_t *h)
{
    free(h->data);
}

static void cleanup(void *d)
{
    redis_uv_t *p = d;
    p->ac = NULL;
    uv_close((uv_handle_t *)&p->poll, on_closed);
}

int devex_redis_uv_attach(redisAsyncContext *ac, uv_loop_t *loop)
{
    if (ac->ev.data != NULL)
        return -1;
    redis_uv_t *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return -1;
    if (uv_poll_init(loop, &p->poll, ac->c.fd) != 0) {
        free(p);
        return -1;
    }
    p->ac = ac;
    p->poll.data = p;
    ac->ev.addRead = add_read;
    ac->ev.delRead = del_read;
    ac->ev.addWrite = add_write;
    ac->ev.delWrite = del_write;
    ac->ev.cleanup = cleanup;
    ac->ev.data = p;
    return 0;
}
