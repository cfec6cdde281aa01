/*
 * devex.h: the types every part of devexd shares: the worker (one thread, one
 * event loop), the Lua VM it runs, tasks (one coroutine each) and the single
 * yield/resume helper that every I/O primitive goes through.
 *
 * Loop choice: devexd runs libh2o on libuv, not on H2O's own evloop. All I/O of
 * a thread must share one loop, and libuv gives us uv_poll for libcurl's multi
 * socket API and hiredis's ready-made async adapter, where evloop would need
 * hand-written adapters for both. The cost (H2O is tuned on evloop) is
 * measured in tests/bench.
 */
#ifndef DEVEX_H
#define DEVEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include <lua.h>
#include <lauxlib.h>

#define DEVEX_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define DEVEX_CONTAINER_OF(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* Whether the value at idx is a full userdata whose metatable is the one
 * stored in the registry under the light userdata key: a pointer lookup,
 * cheaper than luaL_testudata's by name on paths every response takes. */
static inline int devex_udata_is(lua_State *L, int idx, const void *key)
{
    if (lua_type(L, idx) != LUA_TUSERDATA || !lua_getmetatable(L, idx))
        return 0;
    lua_rawgetp(L, LUA_REGISTRYINDEX, key);
    int is = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return is;
}

/* The userdata at idx when its metatable is the running C function's first
 * upvalue (methods registered with luaL_setfuncs and their metatable as the
 * upvalue), else raises a type error naming tname: cheaper than
 * luaL_checkudata's lookup of the name in the registry. */
static inline void *devex_check_udata_up(lua_State *L, int idx, const char *tname)
{
    void *u = lua_touserdata(L, idx);
    if (u == NULL || !lua_getmetatable(L, idx) || !lua_rawequal(L, -1, lua_upvalueindex(1)))
        luaL_typeerror(L, idx, tname);
    lua_pop(L, 1);
    return u;
}

/* The HTTP methods devexd names (vm.c): a VM keeps their Lua strings at
 * hand, and they are the method labels of the metrics (any other: OTHER). */
#define DEVEX_NMETHODS 9
extern const char *const devex_methods[DEVEX_NMETHODS];
/* The index of method m (n bytes) in devex_methods, or -1. */
int devex_method_index(const char *m, size_t n);

typedef struct devex_worker devex_worker_t;
typedef struct devex_vm devex_vm_t;
typedef struct devex_task devex_task_t;
typedef struct devex_op devex_op_t;
typedef struct devex_reqctx devex_reqctx_t;

/* ---- pending operations and the yield/resume helper ------------------- */

/*
 * A pending I/O operation a task is parked on. A primitive embeds this at the
 * start of its own struct, starts the I/O, then `return devex_task_yield(L, op)`.
 * On completion it checks op->task: when NULL the task was abandoned (VM
 * closed, shutdown) and the primitive only frees its own memory. Otherwise it
 * pushes its results on devex_op_thread(op) and calls devex_task_resume().
 * The primitive owns the op memory in every case.
 */
struct devex_op {
    devex_task_t *task;
    /* called when the waiting task is abandoned; must stop the I/O and arrange
     * for the op to be freed (possibly later, from the I/O callback). */
    void (*cancel)(devex_op_t *op);
};

/* Returns the task running on L, or raises a Lua error naming `what` when L is
 * not a devexd task coroutine (for example inside a user's coroutine.wrap). */
devex_task_t *devex_task_check(lua_State *L, const char *what);
/* Returns the task running on L or NULL. */
devex_task_t *devex_task_of(lua_State *L);
/* Parks the current task on op. Use as `return devex_task_yield(L, op);`. */
int devex_task_yield(lua_State *L, devex_op_t *op);
/* As devex_task_yield, but on resume Lua calls k(L, status, ctx) with the
 * stack as it was (the arguments still there) plus the pushed results: for a
 * primitive that must wait for something and then start over. */
int devex_task_yieldk(lua_State *L, devex_op_t *op, lua_KContext ctx, lua_KFunction k);
/* The coroutine the results of op are to be pushed on. */
lua_State *devex_op_thread(devex_op_t *op);
/* Resumes the task parked on op with nresults values already pushed on
 * devex_op_thread(op). Clears op->task. The op is not touched afterwards. */
void devex_task_resume(devex_op_t *op, int nresults);

/* How a task ends: called once with the coroutine holding the results
 * (status LUA_OK), an error message with traceback (a LUA_ERR* status), or
 * nothing usable (DEVEX_TASK_KILLED: abandoned at VM close; release only). */
#define DEVEX_TASK_KILLED (-1)
typedef void (*devex_task_done_cb)(devex_task_t *t, int status, int nresults);

struct devex_task {
    devex_vm_t *vm;
    lua_State *co;
    int co_ref;            /* registry reference that keeps the coroutine alive */
    devex_op_t *op;        /* what it waits on, or NULL while running/ready */
    devex_reqctx_t *rc;    /* the HTTP request, NULL for background tasks or once the client left */
    devex_task_done_cb on_done;
    void *data;            /* owner's data for on_done */
    char request_id[40];   /* for log lines; empty for background tasks */
    struct devex_task *prev, *next; /* vm's list of live tasks */
    /* park.c: a later answer's task may end while it waits (stream.park),
     * its answer then made by a task resumed from the park; wrap_ref is the
     * function such a task runs its function through (0: none) */
    int wrap_ref;
    bool parkable;
    bool parked;           /* ended by stream.park: released without on_done */
};

/* Creates a task of vm running the function below the nargs arguments on top
 * of L (vm->L or one of its coroutines); pops them. The task runs at once
 * until its first yield. Returns it, or NULL if it already finished during
 * that first run (on_done was called). */
devex_task_t *devex_task_spawn(devex_vm_t *vm, lua_State *L, int nargs, devex_task_done_cb on_done, void *data,
                               const char *request_id, devex_reqctx_t *rc);
/* As devex_task_spawn, for a task that may end with stream.park (park.c):
 * wrap_ref (a registry reference the task takes over, or 0) is the function
 * its function runs through (wrap(f, ...): pushed below f here; L needs a
 * free slot for it), and that a task resumed from its park runs its
 * function through too. */
devex_task_t *devex_task_spawn_parkable(devex_vm_t *vm, lua_State *L, int nargs, devex_task_done_cb on_done,
                                        void *data, const char *request_id, devex_reqctx_t *rc, int wrap_ref);
/* Abandons a parked task: cancels its op, calls on_done with DEVEX_TASK_KILLED, frees it. */
void devex_task_kill(devex_task_t *t);

/* ---- the Lua VM of a worker ------------------------------------------- */

struct devex_vm {
    lua_State *L;
    devex_worker_t *worker;
    int dispatch_ref;     /* registry ref of the app's request dispatcher */
    int method_refs[DEVEX_NMETHODS]; /* registry refs of devex_methods' strings, pushed per request */
    int ntasks;
    devex_task_t *tasks;  /* live tasks, for cancellation at close */
    bool retired;         /* replaced by a reload: closes when ntasks drops to 0 */
    uint64_t generation;
    void *timers;         /* timer.c's list of repeating timers of this VM */
    void *parks;          /* park.c's pending parks: each counts in ntasks */
    /* finished coroutines kept for reuse: a request costs no new thread */
    struct {
        lua_State *co;
        int ref;
    } pool[128];
    int npool;
};

/* Loads the config, every primitive and the app into a new VM. On failure
 * returns NULL and writes a message with file:line into err. */
devex_vm_t *devex_vm_new(devex_worker_t *w, char *err, size_t errlen);
/* Marks vm retired; it is closed once its last task ends. */
void devex_vm_retire(devex_vm_t *vm);
/* Closes now, abandoning every live task (used at exit). */
void devex_vm_close(devex_vm_t *vm);
/* The VM that owns L (any of its coroutines). */
devex_vm_t *devex_vm_of(lua_State *L);
/* Called by task.c when a task of vm ends. */
void devex_vm_task_ended(devex_vm_t *vm);

/* The worker whose thread is running (thread-local), NULL on other threads
 * (worker_current.c). */
devex_worker_t *devex_worker_current(void);
uv_loop_t *devex_worker_loop(devex_worker_t *w);
int devex_worker_id(devex_worker_t *w);

/* Registers every devex.* module in package.preload (modules.c). */
void devex_modules_preload(lua_State *L);

/* Monotonic time in nanoseconds. */
uint64_t devex_now_ns(void);

#endif
