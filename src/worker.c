/*
 * worker.c: the worker threads. Each worker is one thread with its own libuv
 * loop, H2O context and Lua VM; it accepts connections on its share of the
 * listening sockets (listen.c) and hands them to H2O, whose requests reach
 * Lua through server.c. The main thread controls the workers through an
 * async handle: reload (a new VM; the old one retires when its tasks end) and
 * shutdown (stop accepting, drain in-flight requests until the deadline).
 */
#include "server.h"
#include "crypto.h"
#include "h2_guard.h"
#include "listen.h"
#include "log.h"
#include "memtrim.h"
#include "metrics.h"
#include "redis.h"

#include <stdlib.h>
#include <string.h>

static void on_accept(uv_stream_t *listener, int status)
{
    if (status != 0)
        return;
    devex_worker_t *w = devex_worker_current();
    size_t idx = (size_t)(uintptr_t)listener->data;
    uv_stream_t *conn;
    if (devex_settings.listeners[idx].socket_path != NULL) {
        uv_pipe_t *p = h2o_mem_alloc(sizeof(*p));
        uv_pipe_init(listener->loop, p, 0);
        conn = (uv_stream_t *)p;
    } else {
        uv_tcp_t *t = h2o_mem_alloc(sizeof(*t));
        uv_tcp_init(listener->loop, t);
        conn = (uv_stream_t *)t;
    }
    if (uv_accept(listener, conn) != 0) {
        uv_close((uv_handle_t *)conn, (uv_close_cb)free);
        return;
    }
    if (conn->type == UV_TCP)
        uv_tcp_nodelay((uv_tcp_t *)conn, 1);
    h2o_socket_t *sock = h2o_uv_socket_create(conn, (uv_close_cb)free);
    devex_conn_guard_attach(sock, (uv_handle_t *)conn, listener->loop); /* h2_guard.c */
    h2o_accept(&w->accept_ctx[idx], sock);
}

static void drain_check(uv_timer_t *h)
{
    devex_worker_t *w = h->data;
    if (w->inflight > 0 && devex_now_ns() < w->drain_deadline_ns)
        return;
    if (w->inflight > 0)
        devex_logf(DEVEX_LOG_WARN, "worker %d: shutdown deadline passed with %d requests in flight", w->id,
                   w->inflight);
    uv_timer_stop(h);
    if (w->vm) {
        devex_vm_close(w->vm);
        w->vm = NULL;
    }
    uv_stop(&w->loop);
}

static void reload(devex_worker_t *w)
{
    char err[4096];
    devex_vm_t *vm = devex_vm_new(w, err, sizeof(err));
    if (vm == NULL) {
        devex_buf_t b = DEVEX_BUF_INIT;
        devex_metrics_reload(0); /* metrics */
        devex_log_begin(&b, DEVEX_LOG_ERROR, "reload failed, keeping the running code", NULL);
        devex_log_int(&b, "worker", w->id);
        devex_log_str(&b, "error", err);
        devex_log_end(&b);
        devex_buf_free(&b);
        return;
    }
    devex_vm_t *old = w->vm;
    w->vm = vm;
    if (old)
        devex_vm_retire(old);
    devex_metrics_reload(1); /* metrics */
    devex_buf_t b = DEVEX_BUF_INIT;
    devex_log_begin(&b, DEVEX_LOG_INFO, "reloaded", NULL);
    devex_log_int(&b, "worker", w->id);
    devex_log_end(&b);
    devex_buf_free(&b);
}

static void on_control(uv_async_t *h)
{
    devex_worker_t *w = h->data;
    int what = __atomic_exchange_n(&w->pending_ctl, 0, __ATOMIC_ACQ_REL);
    if ((what & DEVEX_CTL_RELOAD) && !w->draining)
        reload(w);
    if ((what & DEVEX_CTL_SHUTDOWN) && !w->draining) {
        w->draining = true;
        for (size_t i = 0; i < w->nlisteners; i++)
            uv_close((uv_handle_t *)&w->listeners[i], NULL);
        h2o_context_request_shutdown(&w->ctx);
        w->drain_deadline_ns = devex_now_ns() + (uint64_t)(devex_settings.shutdown_timeout * 1e9);
        uv_timer_init(&w->loop, &w->drain_timer);
        w->drain_timer.data = w;
        uv_timer_start(&w->drain_timer, drain_check, 0, 20);
    }
}

int devex_worker_init(devex_worker_t *w, int id, bool with_listeners, char *err, size_t errlen)
{
    memset(w, 0, sizeof(*w));
    w->id = id;
    uv_loop_init(&w->loop);
    h2o_context_init(&w->ctx, &w->loop, devex_server_globalconf());
    uv_async_init(&w->loop, &w->control, on_control);
    w->control.data = w;
    uint64_t r = 0;
    devex_random_bytes(&r, sizeof(r));
    w->reqid_prefix = r;
    if (with_listeners) {
        for (size_t i = 0; i < devex_settings.nlisteners; i++) {
            w->accept_ctx[i].ctx = &w->ctx;
            w->accept_ctx[i].hosts = devex_server_globalconf()->hosts;
            w->accept_ctx[i].ssl_ctx = devex_listen_ssl_ctx(i);
            int r;
            if (devex_settings.listeners[i].socket_path != NULL) {
                uv_pipe_init(&w->loop, &w->listeners[i].pipe, 0);
                r = uv_pipe_open(&w->listeners[i].pipe, devex_listen_fd(i, id));
            } else {
                uv_tcp_init(&w->loop, &w->listeners[i].tcp);
                r = uv_tcp_open(&w->listeners[i].tcp, devex_listen_fd(i, id));
            }
            w->listeners[i].handle.data = (void *)(uintptr_t)i;
            if (r != 0) {
                snprintf(err, errlen, "cannot use listening socket");
                return -1;
            }
            w->nlisteners++;
        }
    }
    devex_worker_set_current(w); /* the VM's load-time code (timers) needs its worker */
    w->vm = devex_vm_new(w, err, errlen);
    devex_worker_set_current(NULL);
    return w->vm ? 0 : -1;
}

static void *worker_main(void *arg)
{
    devex_worker_t *w = arg;
    devex_worker_set_current(w);
    for (size_t i = 0; i < w->nlisteners; i++) {
        int r = uv_listen((uv_stream_t *)&w->listeners[i], 1024, on_accept);
        if (r != 0)
            devex_logf(DEVEX_LOG_ERROR, "worker %d: listen failed: %s", w->id, uv_strerror(r));
    }
    devex_idle_start(w);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    devex_redis_thread_cleanup();
    return NULL;
}

int devex_workers_start(devex_worker_t *ws, int n)
{
    for (int i = 0; i < n; i++)
        if (pthread_create(&ws[i].thread, NULL, worker_main, &ws[i]) != 0)
            return -1;
    return 0;
}

void devex_workers_control(devex_worker_t *ws, int n, int what)
{
    for (int i = 0; i < n; i++) {
        __atomic_fetch_or(&ws[i].pending_ctl, what, __ATOMIC_ACQ_REL);
        uv_async_send(&ws[i].control);
    }
}

void devex_workers_join(devex_worker_t *ws, int n)
{
    for (int i = 0; i < n; i++)
        pthread_join(ws[i].thread, NULL);
}
