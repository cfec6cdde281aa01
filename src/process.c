/*
 * process.c: devex.process, child processes on the worker's loop (see
 * process.h for the Lua API). uv_spawn starts the child in its own session
 * (UV_PROCESS_DETACHED: setsid), libuv reaps it and calls proc_exited from the
 * loop; nothing here ever blocks in waitpid.
 *
 * Ownership: a proc_t (with its uv_process_t) is C memory of the worker
 * thread. It is freed once the uv handle is closed (after the exit), the Lua
 * handle is gone and no task waits on it. The VM side is reached through a
 * per-VM sentinel userdata kept in the registry: its __gc runs when the VM is
 * closed (lua_close), detaches every proc of that VM and so guarantees that an
 * exit seen later never touches a closed VM.
 *
 * File descriptors: devexd's own sockets are CLOEXEC, but libraries may open
 * some that are not (and libuv in this version does not close extra fds in
 * the child), so before every spawn every fd above 2 is marked FD_CLOEXEC.
 * That flag only matters at exec, which devexd does nowhere else.
 */
#include "process.h"
#include "errors.h"
#include "log.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define PROC_MT "devex.process"
#define VMSTATE_MT "devex.process.vmstate"
#define VMSTATE_KEY "devex.process.vm"

typedef struct proc proc_t;
typedef struct proc_vm proc_vm_t;
typedef struct waiter waiter_t;

/* what process.c knows of one VM; freed by the sentinel's __gc */
struct proc_vm {
    devex_vm_t *vm;
    proc_t *procs; /* children spawned from this VM that still have C state */
};

typedef struct {
    proc_vm_t *pv;
} vmstate_ud_t;

typedef struct {
    proc_t *p; /* NULL once the VM closed under us */
    int pid;
} proc_ud_t;

struct proc {
    uv_process_t h;
    int pid;
    bool exited;   /* reaped: the pid must not be signalled any more */
    bool closed;   /* uv close callback ran */
    bool stopping; /* stop() asked: clean the group up at exit */
    int code, sig;
    proc_vm_t *pv;   /* NULL when the VM is closed */
    int on_exit_ref; /* in pv->vm->L's registry */
    proc_ud_t *ud;   /* the Lua handle, while it lives */
    waiter_t *waiters;
    char *command;
    proc_t *prev, *next; /* pv->procs */
};

/* a task parked in wait() or stop() */
struct waiter {
    devex_op_t op;
    proc_t *p;
    uv_timer_t timer;
    bool timer_open;
    bool kill_on_timeout; /* stop(): SIGKILL at the deadline and keep waiting */
    waiter_t *next;
};

/* ---- helpers ---- */

static void pv_link(proc_vm_t *pv, proc_t *p)
{
    p->pv = pv;
    p->prev = NULL;
    p->next = pv->procs;
    if (pv->procs)
        pv->procs->prev = p;
    pv->procs = p;
}

static void pv_unlink(proc_t *p)
{
    proc_vm_t *pv = p->pv;
    if (pv == NULL)
        return;
    if (p->prev)
        p->prev->next = p->next;
    else
        pv->procs = p->next;
    if (p->next)
        p->next->prev = p->prev;
    p->prev = p->next = NULL;
    p->pv = NULL;
}

static void proc_maybe_free(proc_t *p)
{
    if (!p->closed || p->ud != NULL || p->waiters != NULL)
        return;
    if (p->pv != NULL && p->on_exit_ref != LUA_NOREF)
        luaL_unref(p->pv->vm->L, LUA_REGISTRYINDEX, p->on_exit_ref);
    pv_unlink(p);
    free(p->command);
    free(p);
}

static void proc_closed(uv_handle_t *h)
{
    proc_t *p = h->data;
    p->closed = true;
    proc_maybe_free(p);
}

/* Signals the child's process group, or the child alone if it has none. */
static int signal_pid(int pid, int sig, bool group)
{
    if (group) {
        if (kill(-pid, sig) == 0)
            return 0;
        if (errno != ESRCH)
            return -1;
    }
    return kill(pid, sig);
}

static const struct {
    const char *name;
    int sig;
} signal_names[] = {
    {"HUP", SIGHUP},   {"INT", SIGINT},   {"QUIT", SIGQUIT}, {"KILL", SIGKILL}, {"TERM", SIGTERM},
    {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"STOP", SIGSTOP}, {"CONT", SIGCONT}, {"ALRM", SIGALRM},
};

static int check_signal(lua_State *L, int idx)
{
    if (lua_isnoneornil(L, idx))
        return SIGTERM;
    if (lua_type(L, idx) == LUA_TNUMBER) {
        lua_Integer n = luaL_checkinteger(L, idx);
        luaL_argcheck(L, n >= 0 && n < 65, idx, "invalid signal number");
        return (int)n;
    }
    const char *name = luaL_checkstring(L, idx);
    if (strncmp(name, "SIG", 3) == 0)
        name += 3;
    for (size_t i = 0; i < DEVEX_ARRAY_SIZE(signal_names); i++)
        if (strcmp(name, signal_names[i].name) == 0)
            return signal_names[i].sig;
    return luaL_argerror(L, idx, lua_pushfstring(L, "unknown signal '%s'", name));
}

static int push_os_fail(lua_State *L, const char *code, const char *what, int err)
{
    char msg[512];
    snprintf(msg, sizeof(msg), "%s: %s", what, strerror(err));
    return devex_push_fail(L, code, msg, 0);
}

int devex_push_exit_status(lua_State *L, int code, int sig)
{
    lua_pushinteger(L, code);
    if (sig)
        lua_pushinteger(L, sig);
    else
        lua_pushnil(L);
    return 2;
}

static int push_status(lua_State *L, proc_t *p)
{
    return devex_push_exit_status(L, p->code, p->sig);
}

/* ---- the per-VM sentinel ---- */

static int l_vmstate_gc(lua_State *L)
{
    vmstate_ud_t *s = luaL_checkudata(L, 1, VMSTATE_MT);
    proc_vm_t *pv = s->pv;
    if (pv == NULL)
        return 0;
    s->pv = NULL;
    /* the VM is closing: its tasks are gone, its registry is going */
    while (pv->procs != NULL) {
        proc_t *p = pv->procs;
        pv_unlink(p);
        p->on_exit_ref = LUA_NOREF;
        if (p->ud) {
            p->ud->p = NULL;
            p->ud = NULL;
        }
        proc_maybe_free(p);
    }
    free(pv);
    return 0;
}

static proc_vm_t *vm_state(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, VMSTATE_KEY);
    vmstate_ud_t *s = lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (s != NULL)
        return s->pv;
    devex_vm_t *vm = devex_vm_of(L);
    if (vm == NULL)
        luaL_error(L, "process.spawn: no devexd VM");
    s = lua_newuserdatauv(L, sizeof(*s), 0);
    s->pv = NULL;
    luaL_setmetatable(L, VMSTATE_MT);
    proc_vm_t *pv = calloc(1, sizeof(*pv));
    if (pv == NULL)
        luaL_error(L, "out of memory");
    pv->vm = vm;
    s->pv = pv;
    lua_setfield(L, LUA_REGISTRYINDEX, VMSTATE_KEY);
    return pv;
}

/* ---- waiters ---- */

static void waiter_free_cb(uv_handle_t *h)
{
    free(h->data);
}

static void waiter_free(waiter_t *w)
{
    if (w->timer_open) {
        w->timer_open = false;
        uv_timer_stop(&w->timer);
        uv_close((uv_handle_t *)&w->timer, waiter_free_cb);
    } else {
        free(w);
    }
}

static void waiter_unlink(waiter_t *w)
{
    proc_t *p = w->p;
    if (p == NULL)
        return;
    waiter_t **pp = &p->waiters;
    while (*pp && *pp != w)
        pp = &(*pp)->next;
    if (*pp)
        *pp = w->next;
    w->next = NULL;
    w->p = NULL;
}

static void waiter_cancel(devex_op_t *op)
{
    waiter_t *w = (waiter_t *)op;
    proc_t *p = w->p;
    waiter_unlink(w);
    waiter_free(w);
    if (p)
        proc_maybe_free(p);
}

static void waiter_timeout(uv_timer_t *t)
{
    waiter_t *w = t->data;
    proc_t *p = w->p;
    if (w->kill_on_timeout) {
        /* stop(): the grace is over */
        uv_timer_stop(t);
        if (p != NULL && !p->exited)
            signal_pid(p->pid, SIGKILL, true);
        return;
    }
    waiter_unlink(w);
    if (w->op.task != NULL) {
        lua_State *co = devex_op_thread(&w->op);
        devex_push_fail(co, "timeout", "the process did not exit in time", 0);
        devex_task_resume(&w->op, 2);
    }
    waiter_free(w);
    if (p)
        proc_maybe_free(p);
}

static int park(lua_State *L, proc_t *p, double seconds, bool kill_on_timeout)
{
    waiter_t *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return luaL_error(L, "out of memory");
    w->op.cancel = waiter_cancel;
    w->p = p;
    w->kill_on_timeout = kill_on_timeout;
    w->next = p->waiters;
    p->waiters = w;
    if (seconds >= 0) {
        uv_timer_init(p->h.loop, &w->timer);
        w->timer.data = w;
        w->timer_open = true;
        uv_timer_start(&w->timer, waiter_timeout, (uint64_t)ceil(seconds * 1000.0), 0);
    }
    return devex_task_yield(L, &w->op);
}

/* ---- exit ---- */

static void on_exit_done(devex_task_t *t, int status, int nres)
{
    if (status != LUA_OK && status != DEVEX_TASK_KILLED) {
        devex_buf_t b = DEVEX_BUF_INIT;
        devex_log_begin(&b, DEVEX_LOG_ERROR, "process on_exit failed", NULL);
        devex_log_str(&b, "error", luaL_tolstring(t->co, -1, NULL));
        devex_log_end(&b);
        devex_buf_free(&b);
    }
}

static void proc_exited(uv_process_t *h, int64_t exit_status, int term_signal)
{
    proc_t *p = h->data;
    p->exited = true;
    p->sig = term_signal;
    p->code = term_signal ? 128 + term_signal : (int)exit_status;
    if (p->stopping)
        kill(-p->pid, SIGKILL); /* stop(): what is left of the group goes too */
    devex_buf_t b = DEVEX_BUF_INIT;
    devex_log_begin(&b, DEVEX_LOG_INFO, "process exited", NULL);
    devex_log_int(&b, "pid", p->pid);
    devex_log_str(&b, "command", p->command);
    devex_log_int(&b, "code", p->code);
    if (term_signal)
        devex_log_int(&b, "signal", term_signal);
    devex_log_end(&b);
    devex_buf_free(&b);
    /* p lives on until the close callback (a later loop iteration) at least */
    uv_close((uv_handle_t *)&p->h, proc_closed);

    if (p->on_exit_ref != LUA_NOREF && p->pv != NULL) {
        devex_vm_t *vm = p->pv->vm;
        int ref = p->on_exit_ref;
        p->on_exit_ref = LUA_NOREF;
        lua_State *L = vm->L;
        if (!vm->retired) {
            lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
            luaL_unref(L, LUA_REGISTRYINDEX, ref);
            push_status(L, p);
            lua_pushinteger(L, p->pid);
            devex_task_spawn(vm, L, 3, on_exit_done, NULL, NULL, NULL);
        } else {
            /* reloaded: the old code's hook does not run; the new VM's sweep sees the exit */
            luaL_unref(L, LUA_REGISTRYINDEX, ref);
        }
    }
    /* one at a time: a resumed task may cancel another waiter */
    waiter_t *w;
    while ((w = p->waiters) != NULL) {
        p->waiters = w->next;
        w->next = NULL;
        w->p = NULL;
        if (w->op.task != NULL) {
            lua_State *co = devex_op_thread(&w->op);
            push_status(co, p);
            devex_task_resume(&w->op, 2);
        }
        waiter_free(w);
    }
}

/* ---- spawn ---- */

/* Keeps s alive in the anchor table at index a; returns its stable pointer. */
static const char *anchor(lua_State *L, int a)
{
    const char *s = lua_tostring(L, -1);
    lua_rawseti(L, a, (lua_Integer)lua_rawlen(L, a) + 1);
    return s;
}

static void mark_fds_cloexec(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return;
    int dfd = dirfd(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        int fd = atoi(e->d_name);
        if (fd <= 2 || fd == dfd)
            continue;
        int fl = fcntl(fd, F_GETFD);
        if (fl >= 0 && !(fl & FD_CLOEXEC))
            fcntl(fd, F_SETFD, fl | FD_CLOEXEC);
    }
    closedir(d);
}

/* spec: NULL/"ignore", "inherit" or a file path (opened for append, relative
 * to cwd). Returns 0, or -errno with a message in err. */
static int stdio_setup(const char *spec, const char *field, int own_fd, const char *cwd, uv_stdio_container_t *c,
                       int *opened, char *err, size_t errlen)
{
    *opened = -1;
    c->flags = UV_IGNORE;
    if (spec == NULL || strcmp(spec, "ignore") == 0)
        return 0;
    if (strcmp(spec, "inherit") == 0) {
        c->flags = UV_INHERIT_FD;
        c->data.fd = own_fd;
        return 0;
    }
    char path[4096];
    if (spec[0] != '/' && cwd != NULL)
        snprintf(path, sizeof(path), "%s/%s", cwd, spec);
    else
        snprintf(path, sizeof(path), "%s", spec);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "cannot open %s file %s: %s", field, path, strerror(e));
        return -e;
    }
    *opened = fd;
    c->flags = UV_INHERIT_FD;
    c->data.fd = fd;
    return 0;
}

/* opts[field] as a string kept alive in the anchor table a, or NULL when absent. */
static const char *opt_string(lua_State *L, int opts, int a, const char *field, bool required)
{
    lua_getfield(L, opts, field);
    if (lua_isnil(L, -1) && !required) {
        lua_pop(L, 1);
        return NULL;
    }
    if (lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "process.spawn: %s must be a string", field);
    return anchor(L, a);
}

static int l_spawn(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    devex_worker_t *wk = devex_worker_current();
    if (wk == NULL)
        return luaL_error(L, "process.spawn: needs a worker thread");
    proc_vm_t *pv = vm_state(L);
    lua_newtable(L); /* 2: anchor for the strings used below */
    const int a = 2;
    const char *command = opt_string(L, 1, a, "command", true);
    if (command[0] == '\0')
        return luaL_error(L, "process.spawn: command is empty");
    const char *cwd = opt_string(L, 1, a, "cwd", false);
    const char *outspec = opt_string(L, 1, a, "stdout", false);
    const char *errspec = opt_string(L, 1, a, "stderr", false);
    lua_getfield(L, 1, "inherit_env");
    bool inherit_env = lua_isnil(L, -1) || lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, 1, "on_exit");
    if (!lua_isnil(L, -1) && !lua_isfunction(L, -1))
        return luaL_error(L, "process.spawn: on_exit must be a function");
    lua_pop(L, 1);

    /* argv */
    lua_getfield(L, 1, "args"); /* 3 */
    if (!lua_isnil(L, 3) && !lua_istable(L, 3))
        return luaL_error(L, "process.spawn: args must be a list of strings");
    size_t nargs = lua_istable(L, 3) ? lua_rawlen(L, 3) : 0;
    if (nargs > 100000)
        return luaL_error(L, "process.spawn: too many args");
    char **argv = lua_newuserdatauv(L, (nargs + 2) * sizeof(char *), 0); /* 4 */
    argv[0] = (char *)command;
    for (size_t i = 1; i <= nargs; i++) {
        int t = lua_rawgeti(L, 3, (lua_Integer)i);
        if (t != LUA_TSTRING && t != LUA_TNUMBER)
            return luaL_error(L, "process.spawn: args[%d] must be a string", (int)i);
        lua_pushstring(L, lua_tostring(L, -1));
        lua_remove(L, -2);
        argv[i] = (char *)anchor(L, a);
    }
    argv[nargs + 1] = NULL;

    /* env: exactly the given table, plus PATH/HOME/LANG of devexd unless inherit_env=false */
    lua_getfield(L, 1, "env"); /* 5 */
    if (!lua_isnil(L, 5) && !lua_istable(L, 5))
        return luaL_error(L, "process.spawn: env must be a table of strings");
    size_t nenv = 0;
    if (lua_istable(L, 5)) {
        lua_pushnil(L);
        while (lua_next(L, 5) != 0) {
            nenv++;
            lua_pop(L, 1);
        }
    }
    static const char *const inherited[] = {"PATH", "HOME", "LANG"};
    char **envp = lua_newuserdatauv(L, (nenv + DEVEX_ARRAY_SIZE(inherited) + 1) * sizeof(char *), 0); /* 6 */
    size_t ne = 0;
    if (lua_istable(L, 5)) {
        lua_pushnil(L);
        while (lua_next(L, 5) != 0) {
            if (lua_type(L, -2) != LUA_TSTRING)
                return luaL_error(L, "process.spawn: env keys must be strings");
            size_t klen;
            const char *k = lua_tolstring(L, -2, &klen);
            if (klen == 0 || strchr(k, '=') != NULL || strlen(k) != klen)
                return luaL_error(L, "process.spawn: invalid env name '%s'", k);
            int vt = lua_type(L, -1);
            if (vt != LUA_TSTRING && vt != LUA_TNUMBER)
                return luaL_error(L, "process.spawn: env.%s must be a string", k);
            lua_pushfstring(L, "%s=%s", k, lua_tostring(L, -1));
            envp[ne++] = (char *)anchor(L, a);
            lua_pop(L, 1);
        }
    }
    if (inherit_env) {
        for (size_t i = 0; i < DEVEX_ARRAY_SIZE(inherited); i++) {
            const char *v = getenv(inherited[i]);
            bool given = false;
            if (lua_istable(L, 5)) {
                given = lua_getfield(L, 5, inherited[i]) != LUA_TNIL;
                lua_pop(L, 1);
            }
            if (v != NULL && !given) {
                lua_pushfstring(L, "%s=%s", inherited[i], v);
                envp[ne++] = (char *)anchor(L, a);
            }
        }
    }
    envp[ne] = NULL;

    /* stdio: stdin is /dev/null */
    uv_stdio_container_t stdio[3];
    stdio[0].flags = UV_IGNORE;
    int outfd = -1, errfd = -1;
    char err[4600];
    if (stdio_setup(outspec, "stdout", STDOUT_FILENO, cwd, &stdio[1], &outfd, err, sizeof(err)) != 0)
        return devex_push_fail(L, "spawn", err, 0);
    if (stdio_setup(errspec, "stderr", STDERR_FILENO, cwd, &stdio[2], &errfd, err, sizeof(err)) != 0) {
        close(outfd);
        return devex_push_fail(L, "spawn", err, 0);
    }

    proc_t *p = calloc(1, sizeof(*p));
    char *cmdcopy = strdup(command);
    if (p == NULL || cmdcopy == NULL) {
        free(p);
        free(cmdcopy);
        if (outfd >= 0)
            close(outfd);
        if (errfd >= 0)
            close(errfd);
        return luaL_error(L, "out of memory");
    }
    p->command = cmdcopy;
    p->on_exit_ref = LUA_NOREF;
    p->h.data = p;

    uv_process_options_t o;
    memset(&o, 0, sizeof(o));
    o.exit_cb = proc_exited;
    o.file = command;
    o.args = argv;
    o.env = envp;
    o.cwd = cwd;
    o.flags = UV_PROCESS_DETACHED;
    o.stdio_count = 3;
    o.stdio = stdio;
    mark_fds_cloexec();
    int r = uv_spawn(devex_worker_loop(wk), &p->h, &o);
    if (outfd >= 0)
        close(outfd);
    if (errfd >= 0)
        close(errfd);
    if (r != 0) {
        /* the handle was initialised: it must still be closed */
        p->exited = true;
        uv_close((uv_handle_t *)&p->h, proc_closed);
        snprintf(err, sizeof(err), "cannot run %s%s%s: %s", command, cwd ? " in " : "", cwd ? cwd : "", uv_strerror(r));
        return devex_push_fail(L, "spawn", err, 0);
    }
    p->pid = p->h.pid;
    pv_link(pv, p);
    lua_getfield(L, 1, "on_exit");
    if (lua_isfunction(L, -1))
        p->on_exit_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    else
        lua_pop(L, 1);

    devex_buf_t b = DEVEX_BUF_INIT;
    devex_log_begin(&b, DEVEX_LOG_INFO, "process started", NULL);
    devex_log_int(&b, "pid", p->pid);
    devex_log_str(&b, "command", command);
    if (cwd)
        devex_log_str(&b, "cwd", cwd);
    devex_log_end(&b);
    devex_buf_free(&b);

    proc_ud_t *ud = lua_newuserdatauv(L, sizeof(*ud), 0);
    ud->p = p;
    ud->pid = p->pid;
    p->ud = ud;
    luaL_setmetatable(L, PROC_MT);
    return 1;
}

/* ---- handle methods ---- */

static proc_ud_t *check_ud(lua_State *L)
{
    return luaL_checkudata(L, 1, PROC_MT);
}

static proc_t *check_proc(lua_State *L)
{
    proc_ud_t *ud = check_ud(L);
    if (ud->p == NULL)
        luaL_error(L, "process handle of a closed VM");
    return ud->p;
}

static double opt_seconds(lua_State *L, int idx, double def)
{
    if (lua_isnoneornil(L, idx))
        return def;
    double s = luaL_checknumber(L, idx);
    luaL_argcheck(L, isfinite(s) && s >= 0 && s <= 31536000, idx, "seconds must be between 0 and one year");
    return s;
}

static int l_wait(lua_State *L)
{
    proc_t *p = check_proc(L);
    double timeout = opt_seconds(L, 2, -1);
    if (p->exited)
        return push_status(L, p);
    devex_task_check(L, "process wait");
    return park(L, p, timeout, false);
}

static int l_stop(lua_State *L)
{
    proc_t *p = check_proc(L);
    double grace = opt_seconds(L, 2, 5);
    if (p->exited)
        return push_status(L, p);
    devex_task_check(L, "process stop");
    p->stopping = true;
    if (grace == 0) {
        signal_pid(p->pid, SIGKILL, true);
        return park(L, p, -1, false);
    }
    signal_pid(p->pid, SIGTERM, true);
    return park(L, p, grace, true);
}

static int l_kill(lua_State *L)
{
    proc_t *p = check_proc(L);
    int sig = check_signal(L, 2);
    bool group = lua_isnoneornil(L, 3) || lua_toboolean(L, 3);
    if (p->exited)
        return devex_push_fail(L, "exited", "the process has exited", 0);
    if (signal_pid(p->pid, sig, group) != 0)
        return push_os_fail(L, "kill", "kill", errno);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_running(lua_State *L)
{
    proc_t *p = check_proc(L);
    lua_pushboolean(L, !p->exited);
    return 1;
}

static int l_proc_index(lua_State *L)
{
    proc_ud_t *ud = check_ud(L);
    const char *k = lua_tostring(L, 2);
    if (k != NULL && strcmp(k, "pid") == 0) {
        lua_pushinteger(L, ud->pid);
        return 1;
    }
    lua_settop(L, 2);
    lua_rawget(L, lua_upvalueindex(1));
    return 1;
}

static int l_proc_tostring(lua_State *L)
{
    proc_ud_t *ud = check_ud(L);
    lua_pushfstring(L, "process %d", ud->pid);
    return 1;
}

static int l_proc_gc(lua_State *L)
{
    proc_ud_t *ud = check_ud(L);
    proc_t *p = ud->p;
    ud->p = NULL;
    if (p != NULL) {
        p->ud = NULL;
        proc_maybe_free(p); /* a running child keeps going without its handle */
    }
    return 0;
}

/* ---- module functions ---- */

static int l_free_port(lua_State *L)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return push_os_fail(L, "free_port", "socket", errno);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = 0;
    socklen_t len = sizeof(sa);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || getsockname(fd, (struct sockaddr *)&sa, &len) != 0) {
        int e = errno;
        close(fd);
        return push_os_fail(L, "free_port", "bind 127.0.0.1:0", e);
    }
    close(fd);
    lua_pushinteger(L, ntohs(sa.sin_port));
    return 1;
}

static int check_pid(lua_State *L, int idx)
{
    lua_Integer pid = luaL_checkinteger(L, idx);
    luaL_argcheck(L, pid > 1 && pid <= 0x3fffffff, idx, "pid must be a process id above 1");
    return (int)pid;
}

static int l_kill_pid(lua_State *L)
{
    int pid = check_pid(L, 1);
    int sig = check_signal(L, 2);
    bool group = lua_isnoneornil(L, 3) || lua_toboolean(L, 3);
    if (signal_pid(pid, sig, group) != 0) {
        int e = errno;
        return push_os_fail(L, e == ESRCH ? "not_found" : e == EPERM ? "permission" : "kill", "kill", e);
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int l_alive(lua_State *L)
{
    int pid = check_pid(L, 1);
    bool alive = kill(pid, 0) == 0 || errno == EPERM;
    if (alive) {
        /* a zombie (exited, not reaped yet) is not alive */
        char path[64], buf[256];
        snprintf(path, sizeof(path), "/proc/%d/stat", pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            ssize_t n = read(fd, buf, sizeof(buf) - 1);
            close(fd);
            if (n > 0) {
                buf[n] = '\0';
                const char *rp = strrchr(buf, ')');
                if (rp != NULL && rp[1] == ' ' && rp[2] == 'Z')
                    alive = false;
            }
        }
    }
    lua_pushboolean(L, alive);
    return 1;
}

int luaopen_devex_process(lua_State *L)
{
    if (luaL_newmetatable(L, VMSTATE_MT)) {
        lua_pushcfunction(L, l_vmstate_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    if (luaL_newmetatable(L, PROC_MT)) {
        static const luaL_Reg methods[] = {
            {"wait", l_wait}, {"stop", l_stop}, {"kill", l_kill}, {"running", l_running}, {NULL, NULL},
        };
        luaL_newlib(L, methods);
        lua_pushcclosure(L, l_proc_index, 1);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_proc_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, l_proc_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);
    static const luaL_Reg fns[] = {
        {"spawn", l_spawn},     {"free_port", l_free_port}, {"kill_pid", l_kill_pid},
        {"alive", l_alive},     {NULL, NULL},
    };
    luaL_newlib(L, fns);
    return 1;
}
