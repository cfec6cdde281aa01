/*
 * h2_guard.h: per-connection limits against HTTP/2 abuse that libh2o 2.2.5
 * does not enforce itself ("Rapid Reset", CVE-2023-44487; slowloris over
 * HTTP/2). See h2_guard.c and README "Connection limits".
 */
#ifndef DEVEX_H2_GUARD_H
#define DEVEX_H2_GUARD_H

#include <h2o.h>
#include <uv.h>

typedef struct devex_conn_guard devex_conn_guard_t;

/* Attaches a guard to a freshly accepted socket (before h2o_accept); handle
 * is the libuv stream under it, loop the worker's loop. Freed with the
 * socket (and the last request task of the connection). */
void devex_conn_guard_attach(h2o_socket_t *sock, uv_handle_t *handle, uv_loop_t *loop);

/* Called for each request that reaches devexd's handler: sets rc->guard and
 * returns NULL when the request may run its Lua handler, or the message of
 * a 503 to answer at once (the connection is being closed for abuse, or it
 * has http2_max_inflight handlers running). */
const char *devex_conn_guard_admit(devex_reqctx_t *rc);
/* A Lua task starts / ends for a request admitted with this guard (may be
 * NULL); the guard outlives its connection while tasks hold it. */
void devex_conn_guard_task_start(devex_conn_guard_t *g);
void devex_conn_guard_task_end(devex_conn_guard_t *g);
/* The request is being freed by H2O: counts a stream that ended before its
 * response was complete and closes the connection past the limit. */
void devex_conn_guard_request_gone(devex_reqctx_t *rc);

#endif
