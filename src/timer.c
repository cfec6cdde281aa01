/*
 * timer.c: devex.timer. sleep() is the first user of the yield/resume helper
 * and the model for every primitive: allocate an op, start the I/O on the
 * worker's loop, yield; the callback resumes the task or, if the task was
 * abandoned, only frees the op. at()/every() start background tasks; each
 * repeating timer skips a tick while the previous run is still going, so a
 * slow sweep never piles up behind itself.
 */
#include "timer.h"
#include "log.h"

#include <math.h>
#include <stdlib.h>
#include <time.h>

uint64_t devex_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t seconds_to_ms(lua_State *L, int idx)
{
    double s = luaL_checknumber(L, idx);
    luaL_argcheck(L, isfinite(s) && s >= 0 && s <= 31536000, idx, "seconds must be between 0 and one year");
    return (uint64_t)ceil(s * 1000.0);
}

/* ---- sleep ---- */

typedef struct {
    devex_op_t op;
    uv_timer_t timer;
} sleep_op_t;

static void sleep_free(uv_handle_t *h)
{
    free(h->data);
}

static void sleep_fired(uv_timer_t *h)
{
    sleep_op_t *s = h->data;
    if (s->op.task != NULL) {
        lua_pushboolean(devex_op_thread(&s->op), 1);
        devex_task_resume(&s->op, 1);
    }
    uv_close((uv_handle_t *)&s->timer, sleep_free);
}

static void sleep_cancel(devex_op_t *op)
{
    sleep_op_t *s = (sleep_op_t *)op;
    uv_timer_stop(&s->timer);
    uv_close((uv_handle_t *)&s->timer, sleep_free);
}

static int l_sleep(lua_State *L)
{
    uint64_t ms = seconds_to_ms(L, 1);
    devex_task_check(L, "timer.sleep");
    devex_worker_t *w = devex_worker_current();
    sleep_op_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return luaL_error(L, "out of memory");
    s->op.cancel = sleep_cancel;
    uv_timer_init(devex_worker_loop(w), &s->timer);
    s->timer.data = s;
    uv_timer_start(&s->timer, sleep_fired, ms, 0);
    return devex_task_yield(L, &s->op);
}

/* ---- at / every ---- */

typedef struct devex_timer devex_timer_t;
typedef struct {
    devex_timer_t *t;
} timer_ud_t;

struct devex_timer {
    uv_timer_t h;
    devex_vm_t *vm;
    int fn_ref;
    bool repeat;
    bool stopped;
    bool closed;    /* uv handle closed */
    int running;    /* tick tasks alive */
    timer_ud_t *ud; /* the Lua handle, if still alive */
    devex_timer_t *next;
};

static devex_timer_t **vm_timers(devex_vm_t *vm)
{
    return (devex_timer_t **)&vm->timers;
}

static void timer_maybe_free(devex_timer_t *t)
{
    if (t->closed && t->running == 0)
        free(t);
}

static void timer_closed(uv_handle_t *h)
{
    devex_timer_t *t = h->data;
    t->closed = true;
    timer_maybe_free(t);
}

static void timer_stop(devex_timer_t *t)
{
    if (t->stopped)
        return;
    t->stopped = true;
    devex_timer_t **pp = vm_timers(t->vm);
    while (*pp && *pp != t)
        pp = &(*pp)->next;
    if (*pp)
        *pp = t->next;
    uv_timer_stop(&t->h);
    luaL_unref(t->vm->L, LUA_REGISTRYINDEX, t->fn_ref);
    t->fn_ref = LUA_NOREF;
    if (t->ud)
        t->ud->t = NULL;
    t->ud = NULL;
    uv_close((uv_handle_t *)&t->h, timer_closed);
}

void devex_timer_vm_stop(devex_vm_t *vm)
{
    while (*vm_timers(vm))
        timer_stop(*vm_timers(vm));
}

static void tick_done(devex_task_t *task, int status, int nres)
{
    devex_timer_t *t = task->data;
    if (status != LUA_OK && status != DEVEX_TASK_KILLED) {
        devex_buf_t b = DEVEX_BUF_INIT;
        devex_log_begin(&b, DEVEX_LOG_ERROR, "timer task failed", NULL);
        devex_log_str(&b, "error", luaL_tolstring(task->co, -1, NULL));
        devex_log_end(&b);
        devex_buf_free(&b);
    }
    t->running--;
    timer_maybe_free(t);
}

static void timer_fired(uv_timer_t *h)
{
    devex_timer_t *t = h->data;
    if (t->stopped)
        return;
    if (!t->repeat) {
        /* one-shot: run once, then release everything */
        lua_State *L = t->vm->L;
        lua_rawgeti(L, LUA_REGISTRYINDEX, t->fn_ref);
        t->running++;
        devex_vm_t *vm = t->vm;
        timer_stop(t);
        devex_task_spawn(vm, L, 0, tick_done, t, NULL, NULL);
        return;
    }
    if (t->running > 0)
        return; /* previous run still going: skip this tick */
    lua_State *L = t->vm->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->fn_ref);
    t->running++;
    devex_task_spawn(t->vm, L, 0, tick_done, t, NULL, NULL);
}

static int start_timer(lua_State *L, bool repeat)
{
    uint64_t ms = seconds_to_ms(L, 1);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    if (repeat && ms == 0)
        return luaL_argerror(L, 1, "interval must be positive");
    devex_worker_t *w = devex_worker_current();
    devex_vm_t *vm = devex_vm_of(L);
    if (w == NULL || vm == NULL)
        return luaL_error(L, "timers need a worker thread");
    devex_timer_t *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return luaL_error(L, "out of memory");
    t->vm = vm;
    t->repeat = repeat;
    lua_pushvalue(L, 2);
    t->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    uv_timer_init(devex_worker_loop(w), &t->h);
    t->h.data = t;
    uv_timer_start(&t->h, timer_fired, ms, repeat ? ms : 0);
    t->next = *vm_timers(vm);
    *vm_timers(vm) = t;
    timer_ud_t *ud = lua_newuserdatauv(L, sizeof(*ud), 0);
    ud->t = t;
    t->ud = ud;
    luaL_setmetatable(L, "devex.timer");
    return 1;
}

static int l_at(lua_State *L)
{
    return start_timer(L, false);
}

static int l_every(lua_State *L)
{
    return start_timer(L, true);
}

static int l_cancel(lua_State *L)
{
    timer_ud_t *ud = luaL_checkudata(L, 1, "devex.timer");
    if (ud->t)
        timer_stop(ud->t);
    return 0;
}

static int l_timer_gc(lua_State *L)
{
    timer_ud_t *ud = luaL_checkudata(L, 1, "devex.timer");
    if (ud->t)
        ud->t->ud = NULL; /* the timer keeps running without its handle */
    return 0;
}

static int l_now(lua_State *L)
{
    lua_pushnumber(L, (double)devex_now_ns() / 1e9);
    return 1;
}

int luaopen_devex_timer(lua_State *L)
{
    static const luaL_Reg methods[] = {{"cancel", l_cancel}, {"__gc", l_timer_gc}, {NULL, NULL}};
    if (luaL_newmetatable(L, "devex.timer")) {
        luaL_setfuncs(L, methods, 0);
        lua_pushvalue(L, -1);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    static const luaL_Reg fns[] = {{"sleep", l_sleep}, {"at", l_at}, {"every", l_every}, {"now", l_now}, {NULL, NULL}};
    luaL_newlib(L, fns);
    return 1;
}
