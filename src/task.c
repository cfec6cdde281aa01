/*
 * task.c: tasks, the coroutines that run request handlers and background
 * jobs, and the one yield/resume helper every I/O primitive uses (the
 * OpenResty cosocket model). A primitive parks the task on a devex_op_t and
 * yields; the event loop later resumes it with the results. The task pointer
 * lives in the coroutine's LUA_EXTRASPACE, so a primitive can tell a devexd
 * task from a user's own coroutine (whose extra space is copied from the main
 * thread, where it is NULL) and refuse to yield across it.
 */
#include "devex.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

devex_task_t *devex_task_of(lua_State *L)
{
    return *(devex_task_t **)lua_getextraspace(L);
}

devex_task_t *devex_task_check(lua_State *L, const char *what)
{
    devex_task_t *t = devex_task_of(L);
    if (t == NULL || t->co != L)
        luaL_error(L, "%s: must be called from a request handler or a devex task, not from a plain coroutine or at load time",
                   what);
    if (!lua_isyieldable(L))
        luaL_error(L, "%s: cannot wait here (inside a metamethod or a C function that cannot yield)", what);
    if (t->op != NULL)
        luaL_error(L, "%s: task is already waiting", what);
    return t;
}

int devex_task_yield(lua_State *L, devex_op_t *op)
{
    devex_task_t *t = devex_task_of(L);
    op->task = t;
    t->op = op;
    return lua_yield(L, 0);
}

int devex_task_yieldk(lua_State *L, devex_op_t *op, lua_KContext ctx, lua_KFunction k)
{
    devex_task_t *t = devex_task_of(L);
    op->task = t;
    t->op = op;
    return lua_yieldk(L, 0, ctx, k);
}

lua_State *devex_op_thread(devex_op_t *op)
{
    return op->task->co;
}

static void task_link(devex_task_t *t)
{
    devex_vm_t *vm = t->vm;
    t->prev = NULL;
    t->next = vm->tasks;
    if (vm->tasks)
        vm->tasks->prev = t;
    vm->tasks = t;
    vm->ntasks++;
}

static void task_unlink(devex_task_t *t)
{
    devex_vm_t *vm = t->vm;
    if (t->prev)
        t->prev->next = t->next;
    else
        vm->tasks = t->next;
    if (t->next)
        t->next->prev = t->prev;
    vm->ntasks--;
}

static void task_release(devex_task_t *t, int reusable)
{
    devex_vm_t *vm = t->vm;
    task_unlink(t);
    if (t->wrap_ref != 0)
        luaL_unref(vm->L, LUA_REGISTRYINDEX, t->wrap_ref);
    *(devex_task_t **)lua_getextraspace(t->co) = NULL;
    if (reusable && !vm->retired && lua_status(t->co) == LUA_OK &&
        vm->npool < (int)DEVEX_ARRAY_SIZE(vm->pool)) {
        /* returned normally: nothing pending, the thread can run the next task */
        lua_settop(t->co, 0);
        vm->pool[vm->npool].co = t->co;
        vm->pool[vm->npool].ref = t->co_ref;
        vm->npool++;
    } else {
        lua_resetthread(t->co); /* closes pending to-be-closed variables */
        luaL_unref(vm->L, LUA_REGISTRYINDEX, t->co_ref);
    }
    free(t);
    devex_vm_task_ended(vm);
}

/* Resumes t's coroutine; returns 1 while the task is parked on I/O, 0 once it
 * ended (on_done called, task freed). */
static int task_run(devex_task_t *t, lua_State *from, int nargs)
{
    lua_State *co = t->co;
    int nres = 0;
    int status = lua_resume(co, from, nargs, &nres);
    if (status == LUA_YIELD) {
        if (t->op != NULL)
            return 1;
        if (t->parked) { /* park.c took over its answer: the coroutine is dropped */
            task_release(t, 0);
            return 0;
        }
        /* a bare coroutine.yield at task level: nothing would ever resume it */
        lua_settop(co, 0);
        lua_pushliteral(co, "coroutine.yield called outside a coroutine of the handler's own");
        status = LUA_ERRRUN;
        nres = 1;
    } else if (status != LUA_OK) {
        /* a string error gets the traceback; an error object (a table raised
         * on purpose) is passed on as it is */
        if (lua_type(co, -1) == LUA_TSTRING)
            luaL_traceback(co, co, lua_tostring(co, -1), 0);
        nres = 1;
    }
    if (t->on_done)
        t->on_done(t, status, nres);
    task_release(t, status == LUA_OK);
    return 0;
}

void devex_task_resume(devex_op_t *op, int nresults)
{
    devex_task_t *t = op->task;
    op->task = NULL;
    t->op = NULL;
    task_run(t, NULL, nresults);
}

static devex_task_t *task_spawn(devex_vm_t *vm, lua_State *L, int nargs, devex_task_done_cb on_done, void *data,
                                const char *request_id, devex_reqctx_t *rc, bool parkable, int wrap_ref)
{
    devex_task_t *t = calloc(1, sizeof(*t));
    if (t == NULL)
        abort();
    lua_State *co;
    if (vm->npool > 0) {
        vm->npool--;
        co = vm->pool[vm->npool].co;
        t->co_ref = vm->pool[vm->npool].ref;
    } else {
        co = lua_newthread(L);
        t->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    lua_xmove(L, co, nargs + 1);
    t->vm = vm;
    t->co = co;
    t->on_done = on_done;
    t->data = data;
    t->rc = rc;
    t->parkable = parkable;
    t->wrap_ref = wrap_ref;
    if (request_id != NULL) {
        size_t n = strnlen(request_id, sizeof(t->request_id) - 1);
        memcpy(t->request_id, request_id, n);
        t->request_id[n] = '\0';
    }
    *(devex_task_t **)lua_getextraspace(co) = t;
    task_link(t);
    return task_run(t, L, nargs) ? t : NULL;
}

devex_task_t *devex_task_spawn(devex_vm_t *vm, lua_State *L, int nargs, devex_task_done_cb on_done, void *data,
                               const char *request_id, devex_reqctx_t *rc)
{
    return task_spawn(vm, L, nargs, on_done, data, request_id, rc, false, 0);
}

devex_task_t *devex_task_spawn_parkable(devex_vm_t *vm, lua_State *L, int nargs, devex_task_done_cb on_done,
                                        void *data, const char *request_id, devex_reqctx_t *rc, int wrap_ref)
{
    if (wrap_ref != 0) { /* wrap(f, ...): the wrap below the function */
        lua_rawgeti(L, LUA_REGISTRYINDEX, wrap_ref);
        lua_insert(L, -(nargs + 2));
        nargs++;
    }
    return task_spawn(vm, L, nargs, on_done, data, request_id, rc, true, wrap_ref);
}

void devex_task_kill(devex_task_t *t)
{
    if (t->op != NULL) {
        devex_op_t *op = t->op;
        op->task = NULL;
        t->op = NULL;
        if (op->cancel)
            op->cancel(op);
    }
    if (t->on_done)
        t->on_done(t, DEVEX_TASK_KILLED, 0);
    task_release(t, 0);
}
