/*
 * stream.c: devex.stream, response bodies sent as they are made (the session
 * event stream, text/event-stream), and stream.cond(), a condition variable
 * a task can wait on with a timeout and another task signals.
 *
 * Why a body object rather than req:stream(): the response headers are
 * final only when the handler has returned through the middleware (the
 * global CORS middleware adds its headers on the way out), so a handler
 * returns `200, stream.new(function(w) ... end), headers` and server.c's
 * request_done, once it has added the headers, calls devex_stream_start:
 * that sends them (h2o_start_response with our generator) and runs the
 * function as a task of its own with a writer.
 *
 * Writer: w:write(chunk) copies the chunk, gives it to h2o_send and parks
 * the task until H2O calls the generator's proceed (the chunk is on the
 * wire, or queued on the HTTP/2 connection), so a slow client slows only its
 * own task and memory per stream is one chunk. When the client goes away
 * H2O disposes the request and calls the generator's stop: the stream is
 * marked closed, a task parked in write is resumed (from a zero timer, not
 * inside H2O's dispose) with nil, "closed", and later writes return the
 * same. w:close() sends the end of the body; so does the end of the task.
 *
 * Memory: the stream is malloc'd (the userdata may outlive the request) and
 * reference counted: the request (until the final send or stop), the
 * writer userdata (until __gc), the task (until it ends), the deferral
 * timer (until closed).
 */
#include "stream.h"
#include "log.h"
#include "park.h"

#include <stdlib.h>
#include <string.h>

static const char body_mt_key = 0;
static const char later_mt_key = 0;
static const char writer_mt_key = 0;
static const char cond_mt_key = 0;

typedef struct stream stream_t;
typedef struct cond_wait cond_wait_t;
static void cw_finish(cond_wait_t *w, int signaled);

typedef struct {
    devex_op_t op;
    stream_t *s;
} write_op_t;

struct stream {
    h2o_generator_t gen;
    h2o_req_t *req;  /* NULL once the final chunk was sent or the client left */
    int refs;
    bool gone;       /* the client left (stop called) */
    bool final_sent;
    bool inflight;   /* h2o_send called, proceed not yet */
    bool close_pending;
    bool timer_on;
    char *buf;       /* the chunk in flight */
    write_op_t wop;  /* the write a task is parked on (wop.op.task != NULL) */
    cond_wait_t *cwait; /* a w:wait(cond) in progress: ended early when the client leaves */
    uv_timer_t timer;
    char request_id[40];
};

typedef struct {
    stream_t *s;
} writer_ud_t;

/* Gives up n references at once (so nothing touches s after the call that
 * may free it). */
static void stream_release(stream_t *s, int n)
{
    s->refs -= n;
    if (s->refs > 0)
        return;
    free(s->buf);
    free(s);
}

static void stream_unref(stream_t *s)
{
    stream_release(s, 1);
}

/* Sends the end of the body. Returns 1: the request's reference, which the
 * caller gives up (no stop is called after the final send). */
static int send_final(stream_t *s)
{
    h2o_req_t *req = s->req;
    s->final_sent = true;
    s->req = NULL;
    h2o_send(req, NULL, 0, H2O_SEND_STATE_FINAL);
    return 1;
}

static void resume_writer(stream_t *s, int ok)
{
    devex_op_t *op = &s->wop.op;
    if (op->task == NULL)
        return;
    lua_State *co = devex_op_thread(op);
    if (ok) {
        lua_pushboolean(co, 1);
        devex_task_resume(op, 1);
    } else {
        lua_pushnil(co);
        lua_pushliteral(co, "closed");
        devex_task_resume(op, 2);
    }
}

static void on_proceed(h2o_generator_t *gen, h2o_req_t *req)
{
    (void)req;
    stream_t *s = DEVEX_CONTAINER_OF(gen, stream_t, gen);
    s->inflight = false;
    free(s->buf);
    s->buf = NULL;
    s->refs++; /* s stays valid across what the resumed task does */
    int drop = 1;
    if (s->close_pending && s->req != NULL) {
        drop += send_final(s);
        resume_writer(s, 0);
    } else {
        resume_writer(s, 1);
    }
    stream_release(s, drop);
}

static void timer_closed(uv_handle_t *h)
{
    stream_unref(h->data);
}

static void deferred_wake(uv_timer_t *h)
{
    stream_t *s = h->data;
    s->refs++;
    resume_writer(s, 0);
    if (s->cwait != NULL)
        cw_finish(s->cwait, 0);
    uv_close((uv_handle_t *)&s->timer, timer_closed);
    stream_unref(s);
}

static void on_stop(h2o_generator_t *gen, h2o_req_t *req)
{
    (void)req;
    stream_t *s = DEVEX_CONTAINER_OF(gen, stream_t, gen);
    s->gone = true;
    s->req = NULL;
    s->inflight = false;
    if ((s->wop.op.task != NULL || s->cwait != NULL) && !s->timer_on) {
        /* resume outside H2O's dispose */
        s->timer_on = true;
        uv_timer_init(devex_worker_loop(devex_worker_current()), &s->timer);
        s->timer.data = s;
        s->refs++;
        uv_timer_start(&s->timer, deferred_wake, 0, 0);
    }
    stream_unref(s); /* the request's reference */
}

static void write_cancel(devex_op_t *op)
{
    (void)op; /* the op lives in the stream; nothing to free */
}

/* ---- Lua: the writer ---- */

static stream_t *check_writer(lua_State *L)
{
    writer_ud_t *u = devex_check_udata_up(L, 1, "devex.stream.writer");
    return u->s;
}

static int closed_result(lua_State *L)
{
    lua_pushnil(L);
    lua_pushliteral(L, "closed");
    return 2;
}

static int write_done(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    /* the results pushed by resume_writer are on top: true, or nil, "closed" */
    return lua_type(L, -1) == LUA_TBOOLEAN ? 1 : 2;
}

static int l_write(lua_State *L)
{
    stream_t *s = check_writer(L);
    size_t len;
    const char *chunk = luaL_checklstring(L, 2, &len);
    if (s->req == NULL || s->gone || s->final_sent || s->close_pending)
        return closed_result(L);
    if (s->inflight)
        return luaL_error(L, "stream:write: another write is in progress");
    devex_task_check(L, "stream:write");
    if (len == 0) {
        lua_pushboolean(L, 1);
        return 1;
    }
    s->buf = malloc(len);
    if (s->buf == NULL)
        return luaL_error(L, "out of memory");
    memcpy(s->buf, chunk, len);
    h2o_iovec_t iov = h2o_iovec_init(s->buf, len);
    s->inflight = true;
    h2o_send(s->req, &iov, 1, H2O_SEND_STATE_IN_PROGRESS);
    if (s->gone)
        return closed_result(L);
    if (!s->inflight) { /* proceed already called */
        lua_pushboolean(L, 1);
        return 1;
    }
    s->wop.s = s;
    s->wop.op.cancel = write_cancel;
    return devex_task_yieldk(L, &s->wop.op, 0, write_done);
}

static int l_close(lua_State *L)
{
    stream_t *s = check_writer(L);
    if (s->req != NULL && !s->final_sent) {
        if (s->inflight)
            s->close_pending = true;
        else
            stream_release(s, send_final(s));
    }
    return 0;
}

static int l_closed(lua_State *L)
{
    stream_t *s = check_writer(L);
    lua_pushboolean(L, s->req == NULL || s->gone || s->final_sent || s->close_pending);
    return 1;
}

static int l_writer_gc(lua_State *L)
{
    writer_ud_t *u = lua_touserdata(L, 1);
    if (u->s != NULL) {
        stream_unref(u->s);
        u->s = NULL;
    }
    return 0;
}

/* ---- the body object and the start ---- */

/* A userdata holding the function argument, with the metatable at key:
 * what the function is for is told by the metatable alone. */
static int push_fn_holder(lua_State *L, const char *key)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_newuserdatauv(L, 1, 1);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1);
    lua_rawgetp(L, LUA_REGISTRYINDEX, key);
    lua_setmetatable(L, -2);
    return 1;
}

static int l_new(lua_State *L)
{
    return push_fn_holder(L, &body_mt_key);
}

int devex_stream_is(lua_State *L, int idx)
{
    return devex_udata_is(L, idx, &body_mt_key);
}

/* stream.later(fn [, wrap]): the whole response made later, by fn run as a
 * task of its own (server.c's request_done), as wrap(fn) when wrap is given:
 * a holder as stream.new makes (wrap its second user value), its own
 * metatable. The task may park (park.c); the task that resumes it runs its
 * function through wrap too. */
static int l_later(lua_State *L)
{
    if (!lua_isnoneornil(L, 2))
        luaL_checktype(L, 2, LUA_TFUNCTION);
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_newuserdatauv(L, 1, 2);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1);
    lua_pushvalue(L, 2);
    lua_setiuservalue(L, -2, 2);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &later_mt_key);
    lua_setmetatable(L, -2);
    return 1;
}

int devex_stream_later_is(lua_State *L, int idx)
{
    return devex_udata_is(L, idx, &later_mt_key);
}

static void producer_done(devex_task_t *t, int status, int nres)
{
    (void)nres;
    stream_t *s = t->data;
    if (status != LUA_OK && status != DEVEX_TASK_KILLED) {
        devex_buf_t b = DEVEX_BUF_INIT;
        devex_log_begin(&b, DEVEX_LOG_ERROR, "stream body failed", s->request_id);
        devex_log_str(&b, "error", luaL_tolstring(t->co, -1, NULL));
        devex_log_end(&b);
        devex_buf_free(&b);
    }
    int drop = 1; /* the task's reference */
    if (s->req != NULL && !s->final_sent && status != DEVEX_TASK_KILLED) {
        if (s->inflight)
            s->close_pending = true;
        else
            drop += send_final(s);
    }
    stream_release(s, drop);
}

void devex_stream_start(devex_reqctx_t *rc, lua_State *co, int idx, int status)
{
    h2o_req_t *req = rc->req;
    req->res.status = status;
    req->res.reason = status == 200 ? "OK" : status < 400 ? "Other" : "Error";
    if (h2o_find_header(&req->res.headers, H2O_TOKEN_CONTENT_TYPE, -1) == -1)
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("text/event-stream"));
    /* x-request-id marks the response as devexd's own (errjson, metrics) */
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-request-id"), 0, NULL, rc->request_id,
                          strlen(rc->request_id));
    stream_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        abort();
    s->gen.proceed = on_proceed;
    s->gen.stop = on_stop;
    s->req = req;
    s->refs = 1; /* the request */
    memcpy(s->request_id, rc->request_id, sizeof(s->request_id));
    h2o_start_response(req, &s->gen);
    if (h2o_memis(req->input.method.base, req->input.method.len, H2O_STRLIT("HEAD"))) {
        stream_release(s, send_final(s));
        return;
    }
    /* the VM of the handler's coroutine: after a reload it is the retired
     * one, not the worker's current VM, and the body's function lives there */
    devex_vm_t *vm = devex_vm_of(co);
    lua_getiuservalue(co, idx, 1); /* the function */
    writer_ud_t *u = lua_newuserdatauv(co, sizeof(*u), 0);
    u->s = s;
    s->refs++; /* the writer */
    lua_rawgetp(co, LUA_REGISTRYINDEX, &writer_mt_key);
    lua_setmetatable(co, -2);
    s->refs++; /* the task */
    devex_task_spawn(vm, co, 1, producer_done, s, rc->request_id, NULL);
}

/* ---- cond: wait(timeout) / signal() ---- */

typedef struct cond cond_t;
struct cond_wait {
    devex_op_t op;
    uv_timer_t timer;
    cond_t *c;
    stream_t *s; /* w:wait: the stream whose end also ends the wait */
    struct cond_wait *prev, *next;
};

struct cond {
    cond_wait_t *head;
};

static void cw_unlink(cond_wait_t *w)
{
    if (w->c == NULL)
        return;
    if (w->prev)
        w->prev->next = w->next;
    else
        w->c->head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    w->c = NULL;
    w->prev = w->next = NULL;
}

static void cw_free(uv_handle_t *h)
{
    free(h->data);
}

static void cw_unstream(cond_wait_t *w)
{
    if (w->s != NULL) {
        w->s->cwait = NULL;
        stream_unref(w->s);
        w->s = NULL;
    }
}

static void cw_finish(cond_wait_t *w, int signaled)
{
    cw_unlink(w);
    cw_unstream(w);
    uv_timer_stop(&w->timer);
    if (w->op.task != NULL) {
        lua_pushboolean(devex_op_thread(&w->op), signaled);
        devex_task_resume(&w->op, 1);
    }
    uv_close((uv_handle_t *)&w->timer, cw_free);
}

static void cw_fired(uv_timer_t *h)
{
    cw_finish(h->data, 0);
}

static void cw_cancel(devex_op_t *op)
{
    cond_wait_t *w = (cond_wait_t *)op;
    cw_unlink(w);
    cw_unstream(w);
    uv_timer_stop(&w->timer);
    uv_close((uv_handle_t *)&w->timer, cw_free);
}

static int l_cond(lua_State *L)
{
    cond_t *c = lua_newuserdatauv(L, sizeof(*c), 0);
    c->head = NULL;
    lua_rawgetp(L, LUA_REGISTRYINDEX, &cond_mt_key);
    lua_setmetatable(L, -2);
    return 1;
}

static int cond_wait(lua_State *L, cond_t *c, int tidx, stream_t *s)
{
    double secs = luaL_checknumber(L, tidx);
    luaL_argcheck(L, secs >= 0 && secs <= 86400, tidx, "seconds must be between 0 and one day");
    devex_task_check(L, "cond:wait");
    cond_wait_t *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return luaL_error(L, "out of memory");
    w->op.cancel = cw_cancel;
    if (s != NULL) {
        w->s = s;
        s->refs++;
        s->cwait = w;
    }
    w->c = c;
    w->next = c->head;
    if (c->head)
        c->head->prev = w;
    c->head = w;
    uv_timer_init(devex_worker_loop(devex_worker_current()), &w->timer);
    w->timer.data = w;
    uv_timer_start(&w->timer, cw_fired, (uint64_t)(secs * 1000.0 + 0.5), 0);
    return devex_task_yield(L, &w->op);
}

static int l_cond_wait(lua_State *L)
{
    cond_t *c = devex_check_udata_up(L, 1, "devex.stream.cond");
    return cond_wait(L, c, 2, NULL);
}

/* w:wait(cond, seconds): cond:wait(seconds) that also ends (false) as soon
 * as the client goes away, so a watcher frees its stream at once. */
static int l_writer_wait(lua_State *L)
{
    stream_t *s = check_writer(L);
    cond_t *c = lua_touserdata(L, 2);
    if (c == NULL || !devex_udata_is(L, 2, &cond_mt_key))
        return luaL_typeerror(L, 2, "devex.stream.cond");
    if (s->req == NULL || s->gone || s->final_sent) {
        lua_pushboolean(L, 0);
        return 1;
    }
    if (s->cwait != NULL)
        return luaL_error(L, "stream:wait: already waiting");
    return cond_wait(L, c, 3, s);
}

static int l_cond_signal(lua_State *L)
{
    cond_t *c = devex_check_udata_up(L, 1, "devex.stream.cond");
    /* detach the waiters first: a resumed task may wait on c again */
    cond_wait_t *list = c->head;
    c->head = NULL;
    int n = 0;
    for (cond_wait_t *w = list; w != NULL; w = w->next)
        w->c = NULL;
    while (list != NULL) {
        cond_wait_t *w = list;
        list = w->next;
        w->prev = w->next = NULL;
        cw_finish(w, 1);
        n++;
    }
    lua_pushinteger(L, n);
    return 1;
}

static int l_cond_gc(lua_State *L)
{
    cond_t *c = lua_touserdata(L, 1);
    for (cond_wait_t *w = c->head; w != NULL; w = w->next)
        w->c = NULL;
    c->head = NULL;
    return 0;
}

static void new_mt(lua_State *L, const void *key, const luaL_Reg *methods)
{
    lua_newtable(L);
    lua_pushvalue(L, -1);
    luaL_setfuncs(L, methods, 1);
    lua_pushvalue(L, -1);
    lua_setfield(L, -2, "__index");
    lua_rawsetp(L, LUA_REGISTRYINDEX, key);
}

int luaopen_devex_stream(lua_State *L)
{
    static const luaL_Reg writer_methods[] = {
        {"write", l_write}, {"wait", l_writer_wait}, {"close", l_close}, {"closed", l_closed}, {"__gc", l_writer_gc}, {NULL, NULL}};
    static const luaL_Reg cond_methods[] = {{"wait", l_cond_wait}, {"signal", l_cond_signal}, {"__gc", l_cond_gc}, {NULL, NULL}};
    static const luaL_Reg body_methods[] = {{NULL, NULL}};
    new_mt(L, &writer_mt_key, writer_methods);
    new_mt(L, &cond_mt_key, cond_methods);
    new_mt(L, &body_mt_key, body_methods);
    new_mt(L, &later_mt_key, body_methods);
    devex_park_open(L);
    static const luaL_Reg fns[] = {{"new", l_new},
                                   {"later", l_later},
                                   {"cond", l_cond},
                                   {"park", devex_park_l_park},
                                   {"parkable", devex_park_l_parkable},
                                   {"parked", devex_park_l_parked},
                                   {NULL, NULL}};
    luaL_newlib(L, fns);
    return 1;
}
