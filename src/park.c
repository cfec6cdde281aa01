/*
 * park.c: stream.park(seconds, arm, expired), for an answer made later
 * (stream.later) that waits a long time for something another task hears
 * of: a session start waiting minutes for its pod. Parking ends the task
 * there and then; what stays is this record (the request, how the task was
 * to end, a deadline timer) and the Lua handle arm was given. Calling the
 * handle with a function f (and arguments for it), from any task of the VM
 * (the pod watch that saw the pod get Ready), starts a new task of the
 * request running f through the later's wrap, and its results are the
 * answer; at the deadline the park resumes itself with `expired`. Each park
 * is resumed exactly once.
 *
 * Why: a coroutine parked in a wait is its Lua state, its stack and call
 * frames, the task and its wait (about 2.5 KB): 10,000 starts parked at
 * once (issue #17's load) is 25 MB of it. Nothing of the frames between
 * the later's function and stream.park survives, so the code above a park
 * must be continuation-passing: what is to happen after the wait is in f.
 *
 * A pending park counts as a task of its VM (vm->ntasks), so a VM retired by
 * a reload lives until its parked requests are answered, and it is pinned
 * in the registry, so it cannot be collected unanswered: the deadline ends
 * every park.
 */
#include "park.h"
#include "server.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char park_mt_key = 0;

struct devex_park {
    uv_timer_t timer;
    devex_vm_t *vm;
    devex_reqctx_t *rc; /* NULL once the client left */
    devex_task_done_cb on_done; /* how the parked task was to end, for the task that resumes it */
    void *data;
    int wrap_ref; /* the later's wrap (0: none), handed on to the resumed task */
    int handle_ref; /* pins the Lua handle while pending */
    struct park_handle *handle;
    char request_id[40];
    devex_park_t *prev, *next; /* the VM's pending parks */
};

typedef struct park_handle {
    devex_park_t *p; /* NULL once resumed (or before the park is made) */
} park_handle_t;

static devex_park_t **vm_parks(devex_vm_t *vm)
{
    return (devex_park_t **)&vm->parks;
}

static void park_free(uv_handle_t *h)
{
    free(h->data);
}

/* Takes p off its VM: unpinned, unlinked, its timer closed (the record is
 * freed with it). The VM's task count is the caller's to settle. */
static void park_end(devex_park_t *p)
{
    devex_vm_t *vm = p->vm;
    if (p->prev)
        p->prev->next = p->next;
    else
        *vm_parks(vm) = p->next;
    if (p->next)
        p->next->prev = p->prev;
    p->handle->p = NULL;
    luaL_unref(vm->L, LUA_REGISTRYINDEX, p->handle_ref);
    if (p->rc != NULL)
        p->rc->park = NULL;
    uv_timer_stop(&p->timer);
    uv_close((uv_handle_t *)&p->timer, park_free);
}

/* Resumes p with the function below the nargs arguments on top of L
 * (popped): a new task of the request runs it with them, through the wrap
 * when there is one (wrap(f, ...)). */
static void park_resume(devex_park_t *p, lua_State *L, int nargs)
{
    devex_vm_t *vm = p->vm;
    devex_reqctx_t *rc = p->rc;
    int wrap_ref = p->wrap_ref;
    p->wrap_ref = 0;
    devex_task_done_cb on_done = p->on_done;
    void *data = p->data;
    char request_id[sizeof(p->request_id)];
    memcpy(request_id, p->request_id, sizeof(request_id));
    park_end(p);
    devex_task_t *t = devex_task_spawn_parkable(vm, L, nargs, on_done, data, request_id, rc, wrap_ref);
    if (t != NULL && rc != NULL)
        rc->task = t;
    vm->ntasks--; /* the park's count; the new task holds the VM now, or is done */
    devex_vm_task_ended(vm);
}

static void park_expired(uv_timer_t *h)
{
    devex_park_t *p = h->data;
    lua_State *L = p->vm->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, p->handle_ref);
    lua_getiuservalue(L, -1, 1); /* expired */
    lua_getiuservalue(L, -2, 2); /* its argument */
    lua_remove(L, -3);
    park_resume(p, L, 1);
}

/* handle(f, ...) -> true, or false when the park was already resumed */
static int l_handle_call(lua_State *L)
{
    park_handle_t *ud = devex_check_udata_up(L, 1, "devex.stream.park");
    luaL_checktype(L, 2, LUA_TFUNCTION);
    devex_park_t *p = ud->p;
    if (p == NULL) {
        lua_pushboolean(L, 0);
        return 1;
    }
    if (devex_vm_of(L) != p->vm)
        return luaL_error(L, "stream.park: resumed from another VM");
    if (!lua_checkstack(L, 3)) /* the wrap, the thread spawn may make */
        return luaL_error(L, "stream.park: stack overflow");
    park_resume(p, L, lua_gettop(L) - 2);
    lua_pushboolean(L, 1);
    return 1;
}

int devex_park_l_parkable(lua_State *L)
{
    devex_task_t *t = devex_task_of(L);
    lua_pushboolean(L, t != NULL && t->co == L && t->parkable && lua_isyieldable(L));
    return 1;
}

/* stream.park(seconds, arm, expired [, arg]): arm(handle, arg) is called
 * first (it must not wait: it hands the handle to whatever will call it),
 * then the task ends; never returns. At the deadline: expired(arg). (arg
 * spares a parked caller a closure per park.) */
int devex_park_l_park(lua_State *L)
{
    double secs = luaL_checknumber(L, 1);
    luaL_argcheck(L, isfinite(secs) && secs >= 0 && secs <= 86400, 1, "seconds must be between 0 and one day");
    luaL_checktype(L, 2, LUA_TFUNCTION);
    luaL_checktype(L, 3, LUA_TFUNCTION);
    devex_task_t *t = devex_task_check(L, "stream.park");
    if (!t->parkable)
        return luaL_error(L, "stream.park: only the task of an answer made later (stream.later) can park");
    lua_settop(L, 4);
    park_handle_t *ud = lua_newuserdatauv(L, sizeof(*ud), 2);
    ud->p = NULL;
    lua_rawgetp(L, LUA_REGISTRYINDEX, &park_mt_key);
    lua_setmetatable(L, -2);
    lua_pushvalue(L, 3);
    lua_setiuservalue(L, -2, 1);
    lua_pushvalue(L, 4);
    lua_setiuservalue(L, -2, 2);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, 5);
    lua_pushvalue(L, 4);
    lua_call(L, 2, 0); /* an error here is the task's, raised before anything is parked */
    devex_park_t *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return luaL_error(L, "out of memory");
    devex_vm_t *vm = t->vm;
    p->vm = vm;
    p->rc = t->rc;
    p->on_done = t->on_done;
    p->data = t->data;
    p->wrap_ref = t->wrap_ref;
    memcpy(p->request_id, t->request_id, sizeof(p->request_id));
    p->handle = ud;
    ud->p = p;
    lua_pushvalue(L, 5);
    p->handle_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    p->next = *vm_parks(vm);
    if (p->next)
        p->next->prev = p;
    *vm_parks(vm) = p;
    vm->ntasks++;
    uv_timer_init(devex_worker_loop(vm->worker), &p->timer);
    p->timer.data = p;
    uv_timer_start(&p->timer, park_expired, (uint64_t)ceil(secs * 1000.0), 0);
    if (p->rc != NULL) {
        p->rc->task = NULL;
        p->rc->park = p;
    }
    /* the task ends without its on_done, which the park's resumer will call */
    t->rc = NULL;
    t->on_done = NULL;
    t->wrap_ref = 0;
    t->parked = true;
    return lua_yield(L, 0);
}

/* stream.parked() -> the VM's pending parks (diagnostics, tests) */
int devex_park_l_parked(lua_State *L)
{
    devex_vm_t *vm = devex_vm_of(L);
    lua_Integer n = 0;
    for (devex_park_t *p = vm != NULL ? *vm_parks(vm) : NULL; p != NULL; p = p->next)
        n++;
    lua_pushinteger(L, n);
    return 1;
}

void devex_park_client_gone(devex_park_t *p)
{
    p->rc = NULL;
}

void devex_park_kill_all(devex_vm_t *vm)
{
    while (*vm_parks(vm) != NULL) {
        devex_park_t *p = *vm_parks(vm);
        /* the task the park stands for, as on_done knows one */
        devex_task_t stand = {.vm = vm, .co = vm->L, .rc = p->rc, .data = p->data};
        memcpy(stand.request_id, p->request_id, sizeof(stand.request_id));
        devex_task_done_cb on_done = p->on_done;
        if (p->wrap_ref != 0)
            luaL_unref(vm->L, LUA_REGISTRYINDEX, p->wrap_ref);
        park_end(p);
        vm->ntasks--;
        if (on_done)
            on_done(&stand, DEVEX_TASK_KILLED, 0);
    }
}

void devex_park_open(lua_State *L)
{
    static const luaL_Reg methods[] = {{"__call", l_handle_call}, {NULL, NULL}};
    lua_newtable(L);
    lua_pushvalue(L, -1);
    luaL_setfuncs(L, methods, 1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &park_mt_key);
}
