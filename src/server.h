/*
 * server.h: the bridge from an H2O request to a Lua task (server.c) and the
 * request object seen by Lua (request.c). The worker is in worker.h, the
 * listening sockets and TLS in listen.h.
 */
#ifndef DEVEX_SERVER_H
#define DEVEX_SERVER_H

#include <h2o.h>
#include "buf.h"
#include "devex.h"
#include "response_origin.h"
#include "settings.h"
#include "worker.h"

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
    struct devex_park *park; /* park.c: while its answer waits in a park (task NULL meanwhile) */
};

/* Prepares H2O's global config, TLS contexts and listening sockets (for
 * nworkers workers) from devex_settings. 0, or -1 with err. (server.c) */
int devex_server_init(int nworkers, char *err, size_t errlen);
/* The H2O global config devex_server_init made (worker.c's contexts use it). */
h2o_globalconf_t *devex_server_globalconf(void);

/* request.c */
void devex_request_push(lua_State *L, devex_reqctx_t *rc);
void devex_request_detach(devex_reqctx_t *rc);
int luaopen_devex_request(lua_State *L);

#endif
