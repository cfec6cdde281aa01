/*
 * h2_guard.c: per-connection accounting that bounds what one client
 * connection can make devexd do, where libh2o 2.2.5 (Debian's, older than the
 * CVE-2023-44487 fix) does not:
 *
 * - Rapid Reset. H2O frees a stream's concurrency slot as soon as the client
 *   resets it, while devexd's Lua task for it (a Redis round trip...) goes on:
 *   a client that opens and resets streams without end has the handler run
 *   for each and the abandoned tasks pile up without bound (measured: 600 MB
 *   in 5 s). Here every request of a connection is counted, and a stream
 *   that ends before its response is complete is a reset; past
 *   server.http2_max_resets resets, when they are also more than half of the
 *   connection's requests, the connection is closed. And the Lua tasks of one
 *   connection, those of reset streams included, are bounded by
 *   server.http2_max_inflight: beyond it a request is answered 503 without
 *   running Lua, so resets cannot buy more concurrent work than the limit.
 *   An abandoned task is not cancelled: a handler stopped half way (between
 *   a quota reservation and its write, say) would leave state behind; it runs
 *   to its end and its answer is dropped, and it still counts as in flight.
 *
 * - Slowloris over HTTP/2. H2O's http2 idle timeout restarts on every read,
 *   so a client that trickles a PING or a CONTINUATION frame now and then
 *   keeps a connection (and its buffered header block) forever. Here a
 *   connection must bring a request within server.header_timeout of being
 *   accepted, and an HTTP/2 connection with no request open is closed
 *   server.idle_timeout after its last request ended. (HTTP/1.1 has H2O's own
 *   request timeout, which does not restart on reads: once a connection has
 *   spoken HTTP/1 the timer here stops, so upgraded WebSocket tunnels are
 *   left alone.)
 *
 * Closing is a shutdown(2) of the socket: H2O sees the end of input, closes
 * the connection in its own order and frees its streams (their tasks are
 * detached as for any client that leaves). libh2o 2.2.5 exports no call that
 * sends GOAWAY on one connection, and its HTTP/2 connection struct cannot be
 * used from outside (http2_internal.h needs a khash.h Debian does not ship).
 *
 * The guard is found from a request through conn->callbacks->get_socket():
 * it sits in the socket's on_close slot (chained to any earlier one), which
 * also tells it when the connection is gone. Everything runs on the worker's
 * own loop thread.
 */
#include "server.h"
#include "h2_guard.h"
#include "metrics.h"

#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

struct devex_conn_guard {
    uv_handle_t *handle; /* the connection's libuv stream; NULL once the socket closed */
    uv_timer_t timer;    /* the request/idle deadline (see above) */
    uint64_t last_ns;    /* accepted, or when the last open request ended */
    void (*chained_cb)(void *);
    void *chained_data;
    uint32_t requests, resets, open, inflight;
    int refs;            /* the socket (released once the timer is closed) + running tasks */
    unsigned h2 : 1, h1 : 1, closing : 1;
};

static void guard_unref(devex_conn_guard_t *g)
{
    if (--g->refs == 0)
        free(g);
}

static void close_conn(devex_conn_guard_t *g, const char *why)
{
    if (g->closing || g->handle == NULL)
        return;
    g->closing = 1;
    devex_metrics_http2(why);
    uv_os_fd_t fd;
    if (uv_fileno(g->handle, &fd) == 0)
        shutdown(fd, SHUT_RDWR);
}

static void on_timer(uv_timer_t *t)
{
    devex_conn_guard_t *g = t->data;
    if (g->handle == NULL || g->closing)
        return;
    if (g->h1 && !g->h2)
        return; /* HTTP/1.1: H2O's own request timeout */
    uint64_t limit_ns = (uint64_t)((g->requests == 0 ? devex_settings.header_timeout : devex_settings.idle_timeout) * 1e9);
    uint64_t now = devex_now_ns();
    if (g->open > 0 || now - g->last_ns < limit_ns) {
        uint64_t left_ms = g->open > 0 ? limit_ns / 1000000 : (limit_ns - (now - g->last_ns)) / 1000000;
        uv_timer_start(&g->timer, on_timer, left_ms + 1, 0);
        return;
    }
    close_conn(g, g->requests == 0 ? "header_timeout" : "idle_timeout");
}

static void on_timer_closed(uv_handle_t *h)
{
    guard_unref(h->data);
}

static void on_sock_close(void *data)
{
    devex_conn_guard_t *g = data;
    g->handle = NULL;
    if (g->chained_cb != NULL)
        g->chained_cb(g->chained_data);
    uv_close((uv_handle_t *)&g->timer, on_timer_closed);
}

void devex_conn_guard_attach(h2o_socket_t *sock, uv_handle_t *handle, uv_loop_t *loop)
{
    devex_conn_guard_t *g = calloc(1, sizeof(*g));
    if (g == NULL)
        return; /* the connection goes unguarded rather than refused */
    g->handle = handle;
    g->refs = 1;
    g->last_ns = devex_now_ns();
    g->chained_cb = sock->on_close.cb;
    g->chained_data = sock->on_close.data;
    sock->on_close.cb = on_sock_close;
    sock->on_close.data = g;
    uv_timer_init(loop, &g->timer);
    g->timer.data = g;
    uv_timer_start(&g->timer, on_timer, (uint64_t)(devex_settings.header_timeout * 1000) + 1, 0);
}

static devex_conn_guard_t *guard_of(h2o_conn_t *conn)
{
    if (conn->callbacks->get_socket == NULL)
        return NULL;
    h2o_socket_t *sock = conn->callbacks->get_socket(conn);
    if (sock == NULL || sock->on_close.cb != on_sock_close)
        return NULL; /* not accepted by devexd's listeners, or taken over (a tunnel's watch) */
    return sock->on_close.data;
}

const char *devex_conn_guard_admit(devex_reqctx_t *rc)
{
    h2o_req_t *req = rc->req;
    devex_conn_guard_t *g = guard_of(req->conn);
    if (g == NULL)
        return NULL;
    g->requests++;
    if (req->version < 0x200) {
        g->h1 = 1; /* one request at a time: a reset is a closed connection */
        return NULL;
    }
    g->h2 = 1;
    rc->guard = g;
    g->open++;
    g->refs++; /* released in devex_conn_guard_request_gone */
    if (g->closing) {
        devex_metrics_http2("refused");
        return "connection closing: too many reset streams";
    }
    if (g->inflight >= (uint32_t)devex_settings.http2_max_inflight) {
        devex_metrics_http2("refused");
        return "too many requests in flight on this connection";
    }
    return NULL;
}

void devex_conn_guard_task_start(devex_conn_guard_t *g)
{
    if (g == NULL)
        return;
    g->inflight++;
    g->refs++;
}

void devex_conn_guard_task_end(devex_conn_guard_t *g)
{
    if (g == NULL)
        return;
    g->inflight--;
    guard_unref(g);
}

/* Whether the response had not reached its end when H2O freed the request:
 * nothing sent yet (the task still runs), or a body of known length not all
 * written (H2O drops the queued data of a stream the client reset). */
static int incomplete(devex_reqctx_t *rc)
{
    h2o_req_t *req = rc->req;
    if (rc->task != NULL || req->res.status == 0)
        return 1;
    if (req->res.content_length == SIZE_MAX || h2o_memis(req->method.base, req->method.len, H2O_STRLIT("HEAD")))
        return 0;
    return req->bytes_sent < req->res.content_length;
}

void devex_conn_guard_request_gone(devex_reqctx_t *rc)
{
    devex_conn_guard_t *g = rc->guard;
    if (g == NULL)
        return;
    rc->guard = NULL;
    if (--g->open == 0)
        g->last_ns = devex_now_ns();
    /* once the socket is closed the streams are freed by H2O's connection
     * close, not by client resets */
    if (g->handle != NULL && !g->closing && incomplete(rc)) {
        g->resets++;
        devex_metrics_http2("reset");
        if (g->resets > (uint32_t)devex_settings.http2_max_resets && g->resets * 2 > g->requests)
            close_conn(g, "closed_for_resets");
    }
    guard_unref(g);
}
