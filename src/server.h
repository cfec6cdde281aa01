/*
 * server.h: H2O listeners, worker threads and the bridge from an H2O request
 * to a Lua task (server.c, worker.c), and the request object seen by Lua
 * (request.c).
 */
#ifndef DEVEX_SERVER_H
#define DEVEX_SERVER_H

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
    /* idle.c: memory given back in the first quiet second after traffic */
    uv_timer_t idle_timer;
    uint64_t served, served_at_tick;
    bool dirty;
};

/* One request handed to Lua. Lives in the request's memory pool; when H2O
 * frees the request (response sent or client gone) the task is detached. */
struct devex_reqctx {
    h2o_req_t *req;
    devex_worker_t *w;
    devex_task_t *task;
    void *ud;            /* the Lua request userdata, whose pointer is cleared with us */
    uint64_t start_ns;
    char request_id[40];
    bool client_request_id; /* the id came from the client's X-Request-Id */
    const char *metrics_route; /* metrics.c: the matched route pattern (devex.metrics.set_route), NULL: unmatched */
    struct devex_conn_guard *guard; /* h2_guard.c: its HTTP/2 connection's accounting, or NULL */
};

/* Prepares H2O's global config, TLS contexts and listening sockets (for
 * nworkers workers) from devex_settings. 0, or -1 with err. */
int devex_server_init(int nworkers, char *err, size_t errlen);
/* Sets up a worker (loop, H2O context, VM) without starting its thread;
 * with_listeners false for `--check`. */
int devex_worker_init(devex_worker_t *w, int id, bool with_listeners, char *err, size_t errlen);
int devex_workers_start(devex_worker_t *ws, int n);
void devex_workers_control(devex_worker_t *ws, int n, int what);
void devex_workers_join(devex_worker_t *ws, int n);
/* Runs require("devex.cli").main(args) as a task on w's loop (in the calling
 * thread) until it ends; returns its exit code. */
int devex_worker_run_cli(devex_worker_t *w, int argc, char **argv);
/* Whether req's response comes from devexd: sent by its own code right now
 * (H2O's filters run inside h2o_start_response), or proxied by devex.proxy
 * (which always adds x-request-id). errjson and the metrics filter leave
 * such responses alone; the others are H2O's own (413, 400...). */
int devex_server_made_response(h2o_req_t *req);
/* idle.c: starts the worker's once-a-second check that returns memory after traffic */
void devex_idle_start(devex_worker_t *w);

/* request.c */
void devex_request_push(lua_State *L, devex_reqctx_t *rc);
void devex_request_detach(devex_reqctx_t *rc);
int luaopen_devex_request(lua_State *L);

#endif
