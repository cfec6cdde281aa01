/*
 * pty.c: devex.pty (see pty.h), programs on a pseudo-terminal for the runner
 * agent's terminals. openpty + fork as forkpty does (a new session, the pty
 * as its controlling terminal), but with everything the child needs (argv,
 * envp, the resolved program path) built before fork, so that the child of
 * this multi-threaded process only makes async-signal-safe calls before
 * execve. The master is non-blocking and watched with uv_poll on the
 * worker's loop; the child is reaped on SIGCHLD with waitpid on its own pid
 * (libuv reaps only the pids it spawned, so the two never take each other's).
 *
 * Ownership: a pty_t is C memory of the worker thread, pointed to by the Lua
 * userdata. It is freed once the userdata is gone (or closed), no task waits
 * on it, its poll handle is closed and its child was reaped (or the agent
 * exits). Tasks are resumed from the poll and signal callbacks, which never
 * run inside Lua.
 */
#include "ptys.h"
#include "buf.h"
#include "errors.h"
#include "fs.h"
#include "process.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pty.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#define PTY_MT "devex.pty"
#define READ_CHUNK 65536
#define MAX_PENDING_INPUT (1u << 20)

extern char **environ;

typedef struct pty pty_t;

typedef struct {
    devex_op_t op;
    pty_t *p;
} pty_waiter_t;

struct pty {
    int fd; /* master, -1 once closed */
    int pid;
    bool exited, reaped_or_gone;
    int code, sig;
    bool has_ud;
    bool poll_open, sig_open;
    int poll_events;
    uv_poll_t poll;
    uv_signal_t sigchld;
    pty_waiter_t *reader, *exit_waiter;
    devex_buf_t out;   /* input not yet written to the master */
    unsigned char tail[4];
    size_t ntail;      /* an incomplete UTF-8 sequence from the last read */
};

typedef struct {
    pty_t *p;
} pty_ud_t;

static void pty_update_poll(pty_t *p);

/* ---- lifetime ---- */

static void pty_maybe_free(pty_t *p)
{
    if (p->has_ud || p->reader || p->exit_waiter || p->poll_open || p->sig_open)
        return;
    devex_buf_free(&p->out);
    free(p);
}

static void poll_closed(uv_handle_t *h)
{
    pty_t *p = h->data;
    p->poll_open = false;
    if (p->fd >= 0) {
        close(p->fd);
        p->fd = -1;
    }
    pty_maybe_free(p);
}

static void sig_closed(uv_handle_t *h)
{
    pty_t *p = h->data;
    p->sig_open = false;
    pty_maybe_free(p);
}

/* SIGKILL to every process of the session the child leads: its own group
 * and the jobs an interactive shell put in groups of their own. */
static void kill_session(int sid)
{
    kill(-sid, SIGKILL);
    DIR *d = opendir("/proc");
    if (d == NULL)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end != '\0' || pid <= 0)
            continue;
        char path[64], buf[512];
        snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
        FILE *f = fopen(path, "re");
        if (f == NULL)
            continue;
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = '\0';
        const char *rp = strrchr(buf, ')'); /* the command name may hold anything */
        int ppid, pgrp, session;
        char state;
        if (rp != NULL && sscanf(rp + 1, " %c %d %d %d", &state, &ppid, &pgrp, &session) == 4 && session == sid)
            kill((pid_t)pid, SIGKILL);
    }
    closedir(d);
}

static void pty_close(pty_t *p)
{
    if (p->pid > 0)
        kill_session(p->pid); /* also when the leader is gone: its jobs may live on */
    if (p->poll_open && !uv_is_closing((uv_handle_t *)&p->poll)) {
        uv_poll_stop(&p->poll);
        uv_close((uv_handle_t *)&p->poll, poll_closed);
    }
}

/* ---- the child's exit ---- */

static void resume_with(pty_waiter_t **slot, int n)
{
    pty_waiter_t *w = *slot;
    *slot = NULL;
    devex_op_t op = w->op;
    free(w);
    devex_task_resume(&op, n);
}

static int read_now(pty_t *p, lua_State *L);

static void child_gone(pty_t *p, int status)
{
    p->exited = true;
    if (WIFSIGNALED(status)) {
        p->sig = WTERMSIG(status);
        p->code = 128 + p->sig;
    } else {
        p->code = WEXITSTATUS(status);
    }
    if (p->sig_open) {
        uv_signal_stop(&p->sigchld);
        uv_close((uv_handle_t *)&p->sigchld, sig_closed);
    }
    if (p->exit_waiter)
        resume_with(&p->exit_waiter, devex_push_exit_status(devex_op_thread(&p->exit_waiter->op), p->code, p->sig));
    /* a reader parked on the master learns of the end even if a job keeps the pty open */
    if (p->reader) {
        lua_State *L = devex_op_thread(&p->reader->op);
        int n = read_now(p, L);
        if (n > 0)
            resume_with(&p->reader, n);
    }
    pty_update_poll(p);
    pty_maybe_free(p);
}

static void on_sigchld(uv_signal_t *h, int signum)
{
    pty_t *p = h->data;
    int status;
    pid_t r = waitpid(p->pid, &status, WNOHANG);
    if (r == p->pid)
        child_gone(p, status);
    else if (r < 0 && errno == ECHILD)
        child_gone(p, 0);
}

/* ---- reading and writing ---- */

/* Reads what the master has. Pushes (data) or (nil, eof) and returns the
 * count, or returns 0 when there is nothing yet and the program still runs. */
static int read_now(pty_t *p, lua_State *L)
{
    unsigned char buf[READ_CHUNK];
    memcpy(buf, p->tail, p->ntail);
    ssize_t n = p->fd >= 0 ? read(p->fd, buf + p->ntail, sizeof(buf) - p->ntail) : 0;
    if (n > 0) {
        devex_buf_t b = DEVEX_BUF_INIT;
        size_t total = p->ntail + (size_t)n;
        p->ntail = devex_utf8_clean(&b, buf, total, 1);
        memcpy(p->tail, buf + total - p->ntail, p->ntail);
        if (b.len == 0) {
            devex_buf_free(&b);
            return 0; /* only part of a character so far */
        }
        lua_pushlstring(L, b.data, b.len);
        devex_buf_free(&b);
        return 1;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR) && !p->exited)
        return 0;
    /* EIO: every slave descriptor is closed; EAGAIN after the exit: a job
     * holds the pty but the program is gone; 0: closed by us */
    return devex_push_fail(L, "eof", "the terminal's program has ended", 0);
}

static void flush_input(pty_t *p)
{
    while (p->out.len > 0 && p->fd >= 0) {
        ssize_t n = write(p->fd, p->out.data, p->out.len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n < 0 && errno != EAGAIN)
                p->out.len = 0; /* the terminal is gone: drop it */
            break;
        }
        memmove(p->out.data, p->out.data + n, p->out.len - (size_t)n);
        p->out.len -= (size_t)n;
    }
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    pty_t *p = h->data;
    if (events & UV_WRITABLE)
        flush_input(p);
    if (p->reader != NULL && (status < 0 || (events & (UV_READABLE | UV_DISCONNECT)))) {
        lua_State *L = devex_op_thread(&p->reader->op);
        int n = read_now(p, L);
        if (n == 0 && status < 0)
            n = devex_push_fail(L, "eof", "the terminal's program has ended", 0);
        if (n > 0)
            resume_with(&p->reader, n);
    }
    pty_update_poll(p);
}

static void pty_update_poll(pty_t *p)
{
    if (!p->poll_open || uv_is_closing((uv_handle_t *)&p->poll))
        return;
    int ev = (p->reader ? UV_READABLE : 0) | (p->out.len > 0 ? UV_WRITABLE : 0);
    if (ev == p->poll_events)
        return;
    p->poll_events = ev;
    if (ev == 0)
        uv_poll_stop(&p->poll);
    else
        uv_poll_start(&p->poll, ev, on_poll);
}

/* ---- Lua ---- */

static pty_t *check_pty(lua_State *L)
{
    pty_ud_t *ud = luaL_checkudata(L, 1, PTY_MT);
    return ud->p;
}

static void cancel_reader(devex_op_t *op)
{
    pty_waiter_t *w = (pty_waiter_t *)op;
    pty_t *p = w->p;
    if (p->reader == w)
        p->reader = NULL;
    if (p->exit_waiter == w)
        p->exit_waiter = NULL;
    free(w);
    pty_update_poll(p);
    pty_maybe_free(p);
}

static int park(lua_State *L, pty_t *p, pty_waiter_t **slot)
{
    pty_waiter_t *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return luaL_error(L, "out of memory");
    w->op.cancel = cancel_reader;
    w->p = p;
    *slot = w;
    pty_update_poll(p);
    return devex_task_yield(L, &w->op);
}

static int l_read(lua_State *L)
{
    pty_t *p = check_pty(L);
    if (p == NULL || p->fd < 0)
        return devex_push_fail(L, "eof", "the terminal is closed", 0);
    devex_task_check(L, "pty read");
    if (p->reader != NULL)
        return luaL_error(L, "pty read: another task is reading this terminal");
    int n = read_now(p, L);
    if (n > 0)
        return n;
    return park(L, p, &p->reader);
}

static int l_write(lua_State *L)
{
    pty_t *p = check_pty(L);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    if (p == NULL || p->fd < 0 || p->exited)
        return devex_push_fail(L, "closed", "the terminal is closed", 0);
    if (p->out.len + len > MAX_PENDING_INPUT)
        return devex_push_fail(L, "full", "the terminal does not read its input", 0);
    devex_buf_append(&p->out, data, len);
    flush_input(p);
    pty_update_poll(p);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_resize(lua_State *L)
{
    pty_t *p = check_pty(L);
    lua_Integer cols = luaL_checkinteger(L, 2), rows = luaL_checkinteger(L, 3);
    luaL_argcheck(L, cols >= 1 && cols <= 10000, 2, "cols must be from 1 to 10000");
    luaL_argcheck(L, rows >= 1 && rows <= 10000, 3, "rows must be from 1 to 10000");
    if (p == NULL || p->fd < 0)
        return devex_push_fail(L, "closed", "the terminal is closed", 0);
    struct winsize ws = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
    if (ioctl(p->fd, TIOCSWINSZ, &ws) != 0)
        return devex_push_fail(L, "io", strerror(errno), 0);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_busy(lua_State *L)
{
    pty_t *p = check_pty(L);
    if (p == NULL || p->fd < 0 || p->exited) {
        lua_pushboolean(L, 0);
        return 1;
    }
    pid_t fg = tcgetpgrp(p->fd);
    lua_pushboolean(L, fg > 0 && fg != p->pid);
    return 1;
}

static int l_wait(lua_State *L)
{
    pty_t *p = check_pty(L);
    luaL_argcheck(L, p != NULL, 1, "closed terminal");
    if (p->exited)
        return devex_push_exit_status(L, p->code, p->sig);
    devex_task_check(L, "pty wait");
    if (p->exit_waiter != NULL)
        return luaL_error(L, "pty wait: another task is waiting for this terminal");
    return park(L, p, &p->exit_waiter);
}

static int l_running(lua_State *L)
{
    pty_t *p = check_pty(L);
    lua_pushboolean(L, p != NULL && !p->exited);
    return 1;
}

static int l_pid(lua_State *L)
{
    pty_t *p = check_pty(L);
    if (p == NULL)
        return 0;
    lua_pushinteger(L, p->pid);
    return 1;
}

static int l_close(lua_State *L)
{
    pty_ud_t *ud = luaL_checkudata(L, 1, PTY_MT);
    pty_t *p = ud->p;
    if (p != NULL) {
        pty_close(p);
        /* the handle stays usable (wait(), pid) until collected */
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int l_gc(lua_State *L)
{
    pty_ud_t *ud = luaL_checkudata(L, 1, PTY_MT);
    pty_t *p = ud->p;
    if (p == NULL)
        return 0;
    ud->p = NULL;
    p->has_ud = false;
    pty_close(p);
    pty_maybe_free(p);
    return 0;
}

static int l_index(lua_State *L)
{
    const char *k = luaL_checkstring(L, 2);
    if (strcmp(k, "pid") == 0) {
        lua_settop(L, 1);
        return l_pid(L);
    }
    lua_getmetatable(L, 1);
    lua_getfield(L, -1, "methods");
    lua_getfield(L, -1, k);
    return 1;
}

/* The program's path: as given when it has a slash, else found in PATH. */
static char *find_program(const char *cmd, const char *path_env)
{
    if (strchr(cmd, '/') != NULL)
        return access(cmd, X_OK) == 0 ? strdup(cmd) : NULL;
    const char *p = path_env ? path_env : "/usr/local/bin:/usr/bin:/bin";
    while (*p) {
        const char *e = strchr(p, ':');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        char buf[4096];
        if (n > 0 && n + strlen(cmd) + 2 < sizeof(buf)) {
            snprintf(buf, sizeof(buf), "%.*s/%s", (int)n, p, cmd);
            if (access(buf, X_OK) == 0)
                return strdup(buf);
        }
        p += n;
        if (*p == ':')
            p++;
    }
    return NULL;
}

static void free_vec(char **v)
{
    if (v == NULL)
        return;
    for (char **x = v; *x; x++)
        free(*x);
    free(v);
}

/* Whether NAME=... in entry is one of the names in the Lua list at idx (or key of the table at idx). */
static int env_listed(lua_State *L, int list, int tbl, const char *entry)
{
    size_t n = strcspn(entry, "=");
    if (list) {
        lua_Integer len = luaL_len(L, list);
        for (lua_Integer i = 1; i <= len; i++) {
            lua_rawgeti(L, list, i);
            size_t sl;
            const char *s = lua_tolstring(L, -1, &sl);
            lua_pop(L, 1);
            if (s && sl == n && memcmp(s, entry, n) == 0)
                return 1;
        }
    }
    if (tbl) {
        lua_pushlstring(L, entry, n);
        int found = lua_rawget(L, tbl) != LUA_TNIL;
        lua_pop(L, 1);
        if (found)
            return 1;
    }
    return 0;
}

static int l_spawn(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "command");
    const char *command = luaL_checkstring(L, -1);
    lua_getfield(L, 1, "args");
    int args = lua_istable(L, -1) ? lua_gettop(L) : 0;
    lua_getfield(L, 1, "cwd");
    const char *cwd = luaL_optstring(L, -1, NULL);
    lua_getfield(L, 1, "env");
    int env = lua_istable(L, -1) ? lua_gettop(L) : 0;
    lua_getfield(L, 1, "unset");
    int unset = lua_istable(L, -1) ? lua_gettop(L) : 0;
    lua_getfield(L, 1, "cols");
    lua_Integer cols = luaL_optinteger(L, -1, 80);
    lua_getfield(L, 1, "rows");
    lua_Integer rows = luaL_optinteger(L, -1, 24);
    luaL_argcheck(L, cols >= 1 && cols <= 10000 && rows >= 1 && rows <= 10000, 1, "cols and rows must be from 1 to 10000");

    /* everything the child needs, made before fork */
    size_t nargs = args ? (size_t)luaL_len(L, args) : 0;
    char **argv = calloc(nargs + 2, sizeof(char *));
    size_t nenv = 0;
    for (char **e = environ; *e; e++)
        nenv++;
    size_t nextra = 0;
    if (env) {
        lua_pushnil(L);
        while (lua_next(L, env)) {
            nextra++;
            lua_pop(L, 1);
        }
    }
    char **envp = calloc(nenv + nextra + 1, sizeof(char *));
    if (argv == NULL || envp == NULL) {
        free(argv);
        free(envp);
        return luaL_error(L, "out of memory");
    }
    argv[0] = strdup(command);
    for (size_t i = 0; i < nargs; i++) {
        lua_rawgeti(L, args, (lua_Integer)i + 1);
        const char *a = lua_tostring(L, -1);
        argv[i + 1] = strdup(a ? a : "");
        lua_pop(L, 1);
    }
    size_t k = 0;
    for (char **e = environ; *e; e++)
        if (!env_listed(L, unset, env, *e))
            envp[k++] = strdup(*e);
    const char *path_env = getenv("PATH");
    if (env) {
        lua_pushnil(L);
        while (lua_next(L, env)) {
            const char *name = lua_tostring(L, -2), *val = lua_tostring(L, -1);
            if (name && val && *name && strchr(name, '=') == NULL) {
                size_t n = strlen(name) + strlen(val) + 2;
                envp[k] = malloc(n);
                snprintf(envp[k], n, "%s=%s", name, val);
                if (strcmp(name, "PATH") == 0)
                    path_env = envp[k] + 5;
                k++;
            }
            lua_pop(L, 1);
        }
    }
    char *prog = find_program(command, path_env);
    if (prog == NULL) {
        free_vec(argv);
        free_vec(envp);
        char msg[512];
        snprintf(msg, sizeof(msg), "program not found: %s", command);
        return devex_push_fail(L, "not_found", msg, 0);
    }

    int master = -1, slave = -1;
    struct winsize ws = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
    if (openpty(&master, &slave, NULL, NULL, &ws) != 0) {
        int e = errno;
        free(prog);
        free_vec(argv);
        free_vec(envp);
        return devex_push_fail(L, "io", strerror(e), 0);
    }
    fcntl(master, F_SETFD, FD_CLOEXEC);
    fcntl(slave, F_SETFD, FD_CLOEXEC);
    fcntl(master, F_SETFL, fcntl(master, F_GETFL) | O_NONBLOCK);

    pid_t pid = fork();
    if (pid == 0) {
        /* the child: async-signal-safe calls only */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        struct sigaction dfl;
        memset(&dfl, 0, sizeof(dfl));
        dfl.sa_handler = SIG_DFL;
        for (int s = 1; s < NSIG; s++)
            sigaction(s, &dfl, NULL);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        setsid();
        ioctl(slave, TIOCSCTTY, 0);
        dup2(slave, 0);
        dup2(slave, 1);
        dup2(slave, 2);
        close_range(3, ~0U, 0);
        if (cwd != NULL && chdir(cwd) != 0) {
            static const char m[] = "devexd: cannot enter the workspace directory\r\n";
            (void)!write(2, m, sizeof(m) - 1);
            _exit(127);
        }
        execve(prog, argv, envp);
        static const char m[] = "devexd: cannot start the terminal's program\r\n";
        (void)!write(2, m, sizeof(m) - 1);
        _exit(127);
    }
    int fork_errno = errno;
    close(slave);
    free(prog);
    free_vec(argv);
    free_vec(envp);
    if (pid < 0) {
        close(master);
        return devex_push_fail(L, "io", strerror(fork_errno), 0);
    }

    pty_t *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        kill(pid, SIGKILL);
        close(master);
        return luaL_error(L, "out of memory");
    }
    p->fd = master;
    p->pid = pid;
    uv_loop_t *loop = devex_worker_loop(devex_worker_current());
    uv_poll_init(loop, &p->poll, master);
    p->poll.data = p;
    p->poll_open = true;
    uv_signal_init(loop, &p->sigchld);
    p->sigchld.data = p;
    p->sig_open = true;
    uv_signal_start(&p->sigchld, on_sigchld, SIGCHLD);
    pty_ud_t *ud = lua_newuserdatauv(L, sizeof(*ud), 0);
    ud->p = p;
    p->has_ud = true;
    luaL_setmetatable(L, PTY_MT);
    int status;
    if (waitpid(pid, &status, WNOHANG) == pid) /* it may be gone before the watcher started */
        child_gone(p, status);
    return 1;
}

int luaopen_devex_pty(lua_State *L)
{
    static const luaL_Reg methods[] = {{"read", l_read},   {"write", l_write},     {"resize", l_resize},
                                       {"busy", l_busy},   {"wait", l_wait},       {"running", l_running},
                                       {"close", l_close}, {NULL, NULL}};
    if (luaL_newmetatable(L, PTY_MT)) {
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "methods");
        lua_pushcfunction(L, l_index);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, l_gc);
        lua_setfield(L, -2, "__close");
    }
    lua_pop(L, 1);
    static const luaL_Reg funcs[] = {{"spawn", l_spawn}, {NULL, NULL}};
    luaL_newlib(L, funcs);
    return 1;
}
