/*
 * listen.h: the listening sockets and TLS contexts of devexd's HTTP server
 * (listen.c), from server.listen in the config.
 */
#ifndef DEVEX_LISTEN_H
#define DEVEX_LISTEN_H

#include <h2o.h>
#include <openssl/ssl.h>
#include <stdbool.h>

/* Makes each listener's TLS context and its sockets for nworkers workers
 * (one SO_REUSEPORT socket per worker, or one shared Unix socket; none with
 * 0 workers: a command or --check). 0, or -1 with err. */
int devex_listen_prepare(int nworkers, char *err, size_t errlen);
/* Listener i's TLS context, NULL for plain HTTP. */
SSL_CTX *devex_listen_ssl_ctx(size_t i);
/* The socket of listener i that worker polls. */
int devex_listen_fd(size_t i, int worker);
/* Whether req came in on a Unix listener restricted to a path prefix
 * (server.listen[i].only) and is outside it. */
bool devex_listen_refuses(h2o_req_t *req);

#endif
