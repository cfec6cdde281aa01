/*
 * redis_tls.h: TLS to Redis for hiredis 0.14, which has none (redis_tls.c).
 * A bridge per connection: it connects to the server over TCP, does the TLS
 * handshake with OpenSSL (certificate and host verified), then gives hiredis
 * a private local socket whose bytes it relays over TLS, on the same libuv
 * loop, without blocking it.
 */
#ifndef DEVEX_REDIS_TLS_H
#define DEVEX_REDIS_TLS_H

#include <hiredis/async.h>
#include <openssl/ssl.h>
#include <stddef.h>
#include <uv.h>

typedef struct devex_redis_tls devex_redis_tls_t;

typedef enum {
    DEVEX_RTLS_READY, /* handshake done: call devex_redis_tls_hiredis() */
    DEVEX_RTLS_DOWN,  /* the bridge is gone (err says why, NULL when hiredis closed
                         its end); t is freed when the callback returns */
} devex_redis_tls_event_t;

typedef void (*devex_redis_tls_cb)(void *arg, devex_redis_tls_t *t, devex_redis_tls_event_t ev, const char *err);

/* A client SSL_CTX: TLS 1.2+, peer verification on, CAs from ca_file (NULL:
 * the system's), a client certificate and key when both are given. NULL and
 * err on failure. */
SSL_CTX *devex_redis_tls_ctx(const char *ca_file, const char *cert_file, const char *key_file, char *err,
                             size_t errlen);

/* Starts a connection to host:port (name or address; the certificate must
 * name it). The callback gets READY or DOWN later, never from this call.
 * NULL and err when it cannot even start. */
devex_redis_tls_t *devex_redis_tls_start(uv_loop_t *loop, SSL_CTX *ctx, const char *host, int port,
                                         devex_redis_tls_cb cb, void *arg, char *err, size_t errlen);

/* After READY: a hiredis context connected to the bridge's local end; the
 * relay runs from now on. NULL and err on failure (the bridge is then closed,
 * without a callback). */
redisAsyncContext *devex_redis_tls_hiredis(devex_redis_tls_t *t, char *err, size_t errlen);

/* What a bridge not yet READY is doing, for a timeout's message:
 * "name resolution", "TCP connect" or "TLS handshake". */
const char *devex_redis_tls_phase(const devex_redis_tls_t *t);

/* Closes the bridge at once, without a callback. */
void devex_redis_tls_close(devex_redis_tls_t *t);

#endif
