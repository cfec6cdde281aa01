/*
 * task_lib.c: devex.task, concurrency inside one request. task.spawn(fn, ...)
 * starts fn as a sibling task on the same worker and returns a handle;
 * handle:wait() parks the caller until fn ends and returns `true, results...`
 * or `false, err` (like pcall). Lua helpers all() and map() live in
 * lua/devex/tasks.lua. A child outlives its handle: a handle that is garbage
 * collected before the child ends just drops the results.
 */
#include "task_lib.h"

#include "log.h"

#include <stdlib.h>

typedef struct child {
    int refs;            /* the handle and the running task */
    bool done;
    bool ok;
    int results_ref;     /* table {n=, ...} in the registry */
    devex_vm_t *vm;
    devex_op_t *waiter;  /* the join op of a task waiting on us */
} child_t;

typedef struct {
    child_t *c;
} handle_t;

typedef struct {
    devex_op_t op;
    child_t *c;
} join_op_t;

/* Gives up n references to c at once; frees it when none are left. Callers
 * holding several references drop them in one call, so that nothing touches c
 * after the call that may have freed it. */
static void child_release(child_t *c, int n)
{
    c->refs -= n;
    if (c->refs > 0)
        return;
    if (c->results_ref != LUA_NOREF && !c->vm->retired)
        luaL_unref(c->vm->L, LUA_REGISTRYINDEX, c->results_ref);
    free(c);
}

static void child_unref(child_t *c)
{
    child_release(c, 1);
}

/* Pushes `ok, results...` of a finished child onto L. */
static int push_results(lua_State *L, child_t *c)
{
    lua_pushboolean(L, c->ok);
    if (c->results_ref == LUA_NOREF) {
        lua_pushliteral(L, "task was cancelled");
        return 2;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->results_ref);
    int t = lua_gettop(L);
    lua_getfield(L, t, "n");
    int n = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    luaL_checkstack(L, n, "too many results");
    for (int i = 1; i <= n; i++)
        lua_rawgeti(L, t, i);
    lua_remove(L, t);
    return n + 1;
}

static void child_done(devex_task_t *t, int status, int nres)
{
    child_t *c = t->data;
    if (status != DEVEX_TASK_KILLED) {
        lua_State *co = t->co;
        int base = lua_gettop(co) - nres + 1;
        lua_createtable(co, nres, 1);
        for (int i = 0; i < nres; i++) {
            lua_pushvalue(co, base + i);
            lua_rawseti(co, -2, i + 1);
        }
        lua_pushinteger(co, nres);
        lua_setfield(co, -2, "n");
        c->results_ref = luaL_ref(co, LUA_REGISTRYINDEX);
    }
    c->ok = status == LUA_OK;
    c->done = true;
    if (status != LUA_OK && status != DEVEX_TASK_KILLED) {
        /* logged here: nobody may ever wait on this child */
        devex_buf_t b = DEVEX_BUF_INIT;
        devex_log_begin(&b, DEVEX_LOG_WARN, "spawned task failed", t->request_id);
        devex_log_str(&b, "error", luaL_tolstring(t->co, -1, NULL));
        devex_log_end(&b);
        devex_buf_free(&b);
        lua_pop(t->co, 1);
    }
    /* The references this call gives up, all at the end: the task's own, and
     * the join op's when a waiter parked on us is dealt with here. Until then
     * c stays valid whatever the resumed waiter does with its handle. */
    int refs = 1;
    devex_op_t *w = c->waiter;
    c->waiter = NULL;
    if (w != NULL && status == DEVEX_TASK_KILLED) {
        /* the VM is closing: the waiter is killed next, never resumed */
        join_op_t *j = (join_op_t *)w;
        j->c = NULL;
        refs++;
    } else if (w != NULL && w->task != NULL) {
        join_op_t *j = (join_op_t *)w;
        int n = push_results(devex_op_thread(w), c);
        j->c = NULL;
        refs++;
        devex_task_resume(w, n);
        free(j);
    }
    child_release(c, refs);
}

static int l_spawn(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    devex_task_t *parent = devex_task_of(L);
    devex_vm_t *vm = devex_vm_of(L);
    if (vm == NULL || devex_worker_current() == NULL)
        return luaL_error(L, "task.spawn: needs a worker thread");
    int nargs = lua_gettop(L) - 1;
    child_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return luaL_error(L, "out of memory");
    c->refs = 2;
    c->vm = vm;
    c->results_ref = LUA_NOREF;
    handle_t *h = lua_newuserdatauv(L, sizeof(*h), 0);
    h->c = c;
    luaL_setmetatable(L, "devex.task");
    lua_insert(L, 1); /* handle below fn and args */
    devex_task_spawn(vm, L, nargs, child_done, c, parent ? parent->request_id : NULL, NULL);
    return 1;
}

static void join_cancel(devex_op_t *op)
{
    join_op_t *j = (join_op_t *)op;
    if (j->c) {
        j->c->waiter = NULL;
        child_unref(j->c);
    }
    free(j);
}

static int l_wait(lua_State *L)
{
    handle_t *h = luaL_checkudata(L, 1, "devex.task");
    child_t *c = h->c;
    if (c->done)
        return push_results(L, c);
    devex_task_check(L, "task:wait");
    if (c->waiter != NULL)
        return luaL_error(L, "task:wait: another task is already waiting on this one");
    join_op_t *j = calloc(1, sizeof(*j));
    if (j == NULL)
        return luaL_error(L, "out of memory");
    j->op.cancel = join_cancel;
    j->c = c;
    c->refs++;
    c->waiter = &j->op;
    return devex_task_yield(L, &j->op);
}

static int l_done(lua_State *L)
{
    handle_t *h = luaL_checkudata(L, 1, "devex.task");
    lua_pushboolean(L, h->c->done);
    return 1;
}

static int l_gc(lua_State *L)
{
    handle_t *h = luaL_checkudata(L, 1, "devex.task");
    if (h->c) {
        child_unref(h->c);
        h->c = NULL;
    }
    return 0;
}

int luaopen_devex_task(lua_State *L)
{
    static const luaL_Reg methods[] = {{"wait", l_wait}, {"done", l_done}, {"__gc", l_gc}, {NULL, NULL}};
    if (luaL_newmetatable(L, "devex.task")) {
        luaL_setfuncs(L, methods, 0);
        lua_pushvalue(L, -1);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    static const luaL_Reg fns[] = {{"spawn", l_spawn}, {NULL, NULL}};
    luaL_newlib(L, fns);
    return 1;
}
