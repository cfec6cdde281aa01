/*
 * worker.h: a worker, one thread with its own libuv loop, H2O context and
 * Lua VM (worker.c: threads, accept, reload, shutdown; worker_current.c: the
 * calling thread's worker; cli.c: a command run on a worker's loop).
 */
#ifndef DEVEX_WORKER_H
#define DEVEX_WORKER_H

#include <h2o.h>
#include <pthread.h>
#include "buf.h"
#include "devex.h"
#include "settings.h"

enum { DEVEX_CTL_RELOAD = 1, DEVEX_CTL_SHUTDOWN = 2 };

struct devex_worker {
    int id;
    pthread_t thread;
    uv_loop_t loop;
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx[DEVEX_MAX_LISTENERS];
    union {
        uv_handle_t handle;
        uv_tcp_t tcp;
        uv_pipe_t pipe; /* a listener with a socket path (server.listen[i].socket) */
    } listeners[DEVEX_MAX_LISTENERS];
    int listen_fds[DEVEX_MAX_LISTENERS];
    size_t nlisteners;
    uv_async_t control;
    int pending_ctl; /* DEVEX_CTL_* bits, set atomically by the main thread */
    devex_vm_t *vm;
    int inflight;
    bool draining;
    uint64_t drain_deadline_ns;
    uv_timer_t drain_timer;
    uint64_t reqid_prefix;
    uint64_t reqid_counter;
    devex_buf_t scratch; /* response body encoding */
    /* memtrim.c: memory given back in the first quiet second after traffic */
    uv_timer_t idle_timer;
    uint64_t served, served_at_tick;
    bool dirty;
    int lua_kb_after_trim; /* memtrim.c: trim_vm's Lua heap after the last full collection */
    const void *trim_vm;   /* memtrim.c: the VM that baseline is of (a reload makes another) */
};

/* worker_current.c: sets the calling thread's current worker (cli.c runs a worker's
 * loop in the main thread). */
void devex_worker_set_current(devex_worker_t *w);
/* Sets up a worker (loop, H2O context, VM) without starting its thread;
 * with_listeners false for `--check`. */
int devex_worker_init(devex_worker_t *w, int id, bool with_listeners, char *err, size_t errlen);
int devex_workers_start(devex_worker_t *ws, int n);
void devex_workers_control(devex_worker_t *ws, int n, int what);
void devex_workers_join(devex_worker_t *ws, int n);
/* cli.c: runs require("devex.cli").main(args) as a task on w's loop (in the
 * calling thread) until it ends; returns its exit code. */
int devex_worker_run_cli(devex_worker_t *w, int argc, char **argv);

#endif
