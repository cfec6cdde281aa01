/*
 * redis_tls.c: rediss:// for devex.redis. Debian 12's hiredis (0.14) reads
 * and writes its socket itself and has no TLS and no hook for it, so devexd
 * does the TLS and hands hiredis a plain socket:
 *
 *   hiredis <-> local Unix socket <-> bridge (OpenSSL) <-> TCP <-> redis-server
 *
 * The bridge runs on the worker's libuv loop like hiredis itself: the TCP
 * connect, the handshake and the relay are non-blocking (uv_poll on both
 * sockets). Each direction has a bounded buffer; when one is full the bridge
 * stops reading the side that fills it (backpressure), so a large value never
 * costs more than the buffers.
 *
 * The local socket: hiredis 0.14 can only connect by TCP or by Unix socket
 * path (no "use this fd"). For each connection the bridge listens on a fresh
 * path in a 0700 directory of its own, hiredis connects (a Unix connect
 * completes at once), the bridge accepts, removes the path and closes the
 * listener, and checks that the peer is this very process (SO_PEERCRED), so
 * nobody else can take hiredis's place.
 */

#include "redis_tls.h"

#include "log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* Per direction. 256 KB keeps a multi-megabyte value moving in few loop
 * turns while bounding what one connection can hold. */
#define RTLS_BUF (256 * 1024)

typedef enum { ST_RESOLVING, ST_CONNECTING, ST_HANDSHAKE, ST_READY, ST_RELAY } rtls_state_t;

typedef struct {
    char *data;
    size_t start, end;
} rbuf_t;

struct devex_redis_tls {
    uv_loop_t *loop;
    SSL_CTX *ctx;
    SSL *ssl;
    char host[256];
    char port[8];
    rtls_state_t state;
    devex_redis_tls_cb cb;
    void *arg;
    uv_getaddrinfo_t *gai; /* in flight; its data is cleared if we go first */
    uv_timer_t *start_timer; /* an address literal: connect on the next loop turn */
    struct addrinfo *ai, *ai_next;
    int ai_from_uv;
    int tfd, lfd;         /* TCP to the server, the bridge's end of the local socket */
    uv_poll_t *tpoll, *lpoll;
    int tevents, levents; /* what each poll waits for */
    rbuf_t up, down;      /* hiredis -> server, server -> hiredis */
    int write_wants, read_wants; /* UV_READABLE/UV_WRITABLE the last SSL_write/SSL_read needs */
    int local_eof, server_eof;
    char last_connect_error[160];
};

/* ---- helpers ---- */

static void ssl_reason(char *out, size_t outlen)
{
    unsigned long e = ERR_get_error(), last = e;
    while (e != 0) { /* the last queued error is the most specific one */
        last = e;
        e = ERR_get_error();
    }
    if (last == 0)
        snprintf(out, outlen, "TLS error");
    else
        ERR_error_string_n(last, out, outlen);
}

static void on_timer_closed(uv_handle_t *h)
{
    free(h);
}

static void on_poll_closed(uv_handle_t *h)
{
    free(h);
}

static void poll_close(uv_poll_t **p)
{
    if (*p) {
        (*p)->data = NULL;
        uv_close((uv_handle_t *)*p, on_poll_closed);
        *p = NULL;
    }
}

static void free_addrs(devex_redis_tls_t *t)
{
    if (t->ai) {
        if (t->ai_from_uv)
            uv_freeaddrinfo(t->ai);
        else
            freeaddrinfo(t->ai);
    }
    t->ai = t->ai_next = NULL;
}

void devex_redis_tls_close(devex_redis_tls_t *t)
{
    if (t == NULL)
        return;
    if (t->gai)
        t->gai->data = NULL; /* its callback frees it */
    if (t->start_timer) {
        t->start_timer->data = NULL;
        uv_close((uv_handle_t *)t->start_timer, on_timer_closed);
    }
    poll_close(&t->tpoll);
    poll_close(&t->lpoll);
    if (t->ssl) {
        if (t->state == ST_RELAY && !t->server_eof)
            SSL_shutdown(t->ssl); /* best effort close_notify; never waits */
        SSL_free(t->ssl);
    }
    if (t->tfd >= 0)
        close(t->tfd);
    if (t->lfd >= 0)
        close(t->lfd);
    free_addrs(t);
    free(t->up.data);
    free(t->down.data);
    free(t);
}

const char *devex_redis_tls_phase(const devex_redis_tls_t *t)
{
    switch (t->state) {
    case ST_RESOLVING:
        return "name resolution";
    case ST_CONNECTING:
        return "TCP connect";
    default:
        return "TLS handshake";
    }
}

/* The bridge ends: tell the owner, then free it. */
static void fail(devex_redis_tls_t *t, const char *err)
{
    devex_redis_tls_cb cb = t->cb;
    void *arg = t->arg;
    t->cb = NULL;
    if (cb)
        cb(arg, t, DEVEX_RTLS_DOWN, err);
    devex_redis_tls_close(t);
}

static int poll_set(uv_poll_t *p, int *cur, int events, uv_poll_cb fn)
{
    if (*cur == events)
        return 0;
    *cur = events;
    return events ? uv_poll_start(p, events, fn) : uv_poll_stop(p);
}

/* ---- SSL_CTX ---- */

SSL_CTX *devex_redis_tls_ctx(const char *ca_file, const char *cert_file, const char *key_file, char *err,
                             size_t errlen)
{
    char why[200];
    if ((cert_file == NULL) != (key_file == NULL)) {
        snprintf(err, errlen, "redis TLS: give both a client certificate and its key, or neither");
        return NULL;
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        snprintf(err, errlen, "redis TLS: cannot create a TLS context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    /* partial writes: the relay writes what TLS takes and keeps the rest;
     * the moving buffer: the rest may be compacted before the retry */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    int ok = ca_file ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL) : SSL_CTX_set_default_verify_paths(ctx);
    if (ok != 1) {
        ssl_reason(why, sizeof(why));
        snprintf(err, errlen, "redis TLS: cannot load the CA file %s: %s", ca_file ? ca_file : "(system)", why);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (cert_file) {
        if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
            ssl_reason(why, sizeof(why));
            snprintf(err, errlen, "redis TLS: cannot load the client certificate %s: %s", cert_file, why);
            SSL_CTX_free(ctx);
            return NULL;
        }
        if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
            ssl_reason(why, sizeof(why));
            snprintf(err, errlen, "redis TLS: cannot use the client key %s: %s", key_file, why);
            SSL_CTX_free(ctx);
            return NULL;
        }
    }
    return ctx;
}

/* ---- relay ---- */

static void relay_pump(devex_redis_tls_t *t);

static void on_relay_poll(uv_poll_t *h, int status, int events)
{
    (void)status; /* an error shows in the next read or write */
    (void)events; /* the pump tries every direction */
    if (h->data)
        relay_pump(h->data);
}

static void buf_compact(rbuf_t *b)
{
    if (b->start == b->end)
        b->start = b->end = 0;
    else if (b->start > RTLS_BUF / 2) {
        memmove(b->data, b->data + b->start, b->end - b->start);
        b->end -= b->start;
        b->start = 0;
    }
}

/* SSL_read/SSL_write said no: what to wait for, or -1 for a real error. */
static int ssl_wants(devex_redis_tls_t *t, int rc, int *eof)
{
    switch (SSL_get_error(t->ssl, rc)) {
    case SSL_ERROR_WANT_READ:
        return UV_READABLE;
    case SSL_ERROR_WANT_WRITE:
        return UV_WRITABLE;
    case SSL_ERROR_ZERO_RETURN:
        *eof = 1;
        return 0;
    case SSL_ERROR_SYSCALL:
        if (ERR_peek_error() == 0) { /* the TCP connection ended (no close_notify) */
            *eof = 1;
            return 0;
        }
        return -1;
    default:
        return -1;
    }
}

/* Moves whatever can move in both directions, then waits for what is needed
 * next. May free t (on the end of either side or an error). */
static void relay_pump(devex_redis_tls_t *t)
{
    char why[200];
    for (int progress = 1; progress;) {
        progress = 0;
        /* hiredis -> up */
        buf_compact(&t->up);
        if (!t->local_eof && t->up.end < RTLS_BUF) {
            ssize_t n = read(t->lfd, t->up.data + t->up.end, RTLS_BUF - t->up.end);
            if (n > 0) {
                t->up.end += (size_t)n;
                progress = 1;
            } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
                t->local_eof = 1; /* hiredis closed its end */
            }
        }
        /* up -> server */
        t->write_wants = 0;
        if (t->up.end > t->up.start) {
            ERR_clear_error();
            int n = SSL_write(t->ssl, t->up.data + t->up.start, (int)(t->up.end - t->up.start));
            if (n > 0) {
                t->up.start += (size_t)n;
                progress = 1;
            } else {
                int eof = 0, w = ssl_wants(t, n, &eof);
                if (w < 0) {
                    ssl_reason(why, sizeof(why));
                    char msg[640];
                    snprintf(msg, sizeof(msg), "TLS write to %s failed: %s", t->host, why);
                    fail(t, msg);
                    return;
                }
                if (eof)
                    t->server_eof = 1;
                t->write_wants = w;
            }
        }
        /* server -> down */
        buf_compact(&t->down);
        t->read_wants = 0;
        if (!t->server_eof && t->down.end < RTLS_BUF) {
            ERR_clear_error();
            int n = SSL_read(t->ssl, t->down.data + t->down.end, (int)(RTLS_BUF - t->down.end));
            if (n > 0) {
                t->down.end += (size_t)n;
                progress = 1;
            } else {
                int eof = 0, w = ssl_wants(t, n, &eof);
                if (w < 0) {
                    /* e.g. the server refusing our client certificate, which
                     * TLS 1.3 reports only after the handshake */
                    ssl_reason(why, sizeof(why));
                    char msg[640];
                    snprintf(msg, sizeof(msg), "TLS connection to %s failed: %s", t->host, why);
                    fail(t, msg);
                    return;
                }
                if (eof)
                    t->server_eof = 1;
                t->read_wants = w;
            }
        }
        /* down -> hiredis */
        if (t->down.end > t->down.start) {
            ssize_t n = send(t->lfd, t->down.data + t->down.start, t->down.end - t->down.start, MSG_NOSIGNAL);
            if (n > 0) {
                t->down.start += (size_t)n;
                progress = 1;
            } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
                t->local_eof = 1;
                t->down.start = t->down.end; /* nobody to give it to */
            }
        }
    }
    if (t->local_eof && (t->up.end == t->up.start || t->server_eof)) {
        fail(t, NULL); /* hiredis is done with this connection */
        return;
    }
    if (t->server_eof && t->down.end == t->down.start) {
        fail(t, "the server closed the TLS connection");
        return;
    }
    int lev = (!t->local_eof && t->up.end < RTLS_BUF ? UV_READABLE : 0) |
              (t->down.end > t->down.start ? UV_WRITABLE : 0);
    int tev = t->write_wants | t->read_wants;
    if (!t->server_eof && t->down.end < RTLS_BUF)
        tev |= UV_READABLE; /* to see replies, and the server closing */
    if (poll_set(t->lpoll, &t->levents, lev, on_relay_poll) != 0 ||
        poll_set(t->tpoll, &t->tevents, tev, on_relay_poll) != 0)
        fail(t, "cannot watch the TLS bridge's sockets");
}

/* ---- the local socket for hiredis ---- */

static pthread_once_t dir_once = PTHREAD_ONCE_INIT;
static char sock_dir[80];
static atomic_uint sock_seq;

static void remove_dir(void)
{
    if (sock_dir[0])
        rmdir(sock_dir);
}

static void make_dir(void)
{
    const char *base = getenv("TMPDIR");
    if (base == NULL || base[0] != '/' || strlen(base) > 40)
        base = "/tmp";
    char tmpl[80];
    snprintf(tmpl, sizeof(tmpl), "%s/devexd-rtls-XXXXXX", base);
    if (mkdtemp(tmpl) != NULL) { /* mode 0700 */
        snprintf(sock_dir, sizeof(sock_dir), "%s", tmpl);
        atexit(remove_dir);
    }
}

redisAsyncContext *devex_redis_tls_hiredis(devex_redis_tls_t *t, char *err, size_t errlen)
{
    pthread_once(&dir_once, make_dir);
    if (t->state != ST_READY || !sock_dir[0]) {
        snprintf(err, errlen, "redis TLS: no private directory for the local socket");
        devex_redis_tls_close(t);
        return NULL;
    }
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/%u.%u.sock", sock_dir, (unsigned)getpid(),
             atomic_fetch_add(&sock_seq, 1));
    int lst = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (lst < 0 || bind(lst, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(lst, 1) != 0) {
        snprintf(err, errlen, "redis TLS: cannot make the local socket: %s", strerror(errno));
        if (lst >= 0)
            close(lst);
        unlink(sa.sun_path);
        devex_redis_tls_close(t);
        return NULL;
    }
    redisAsyncContext *ac = redisAsyncConnectUnix(sa.sun_path);
    unlink(sa.sun_path);
    int fd = -1;
    if (ac != NULL && !ac->err)
        fd = accept4(lst, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    close(lst);
    struct ucred cred;
    socklen_t clen = sizeof(cred);
    if (fd < 0 || getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) != 0 || cred.pid != getpid()) {
        snprintf(err, errlen, "redis TLS: cannot connect hiredis to the bridge%s%s", ac && ac->err ? ": " : "",
                 ac && ac->err ? ac->errstr : "");
        if (ac)
            redisAsyncFree(ac);
        if (fd >= 0)
            close(fd);
        devex_redis_tls_close(t);
        return NULL;
    }
    t->lfd = fd;
    t->lpoll = malloc(sizeof(*t->lpoll));
    t->up.data = malloc(RTLS_BUF);
    t->down.data = malloc(RTLS_BUF);
    if (t->lpoll == NULL || t->up.data == NULL || t->down.data == NULL ||
        uv_poll_init(t->loop, t->lpoll, fd) != 0) {
        free(t->lpoll);
        t->lpoll = NULL;
        snprintf(err, errlen, "redis TLS: out of memory");
        redisAsyncFree(ac);
        devex_redis_tls_close(t);
        return NULL;
    }
    t->lpoll->data = t;
    t->state = ST_RELAY;
    /* the TCP poll had the handshake's callback: the pump sets its own */
    t->tevents = -1;
    t->levents = 0;
    relay_pump(t);
    return ac;
}

/* ---- connect and handshake ---- */

static void try_next_address(devex_redis_tls_t *t);

static void handshake(devex_redis_tls_t *t);

static void on_handshake_poll(uv_poll_t *h, int status, int events)
{
    (void)status;
    (void)events;
    if (h->data)
        handshake(h->data);
}

static int is_ip_literal(const char *host)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

static void handshake(devex_redis_tls_t *t)
{
    char why[200], msg[640];
    ERR_clear_error();
    int rc = SSL_connect(t->ssl);
    if (rc == 1) {
        uv_poll_stop(t->tpoll);
        t->state = ST_READY;
        devex_redis_tls_cb cb = t->cb;
        cb(t->arg, t, DEVEX_RTLS_READY, NULL); /* may close t: touch nothing after */
        return;
    }
    int e = SSL_get_error(t->ssl, rc);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        int ev = e == SSL_ERROR_WANT_READ ? UV_READABLE : UV_WRITABLE;
        if (poll_set(t->tpoll, &t->tevents, ev, on_handshake_poll) != 0)
            fail(t, "cannot watch the TLS socket");
        return;
    }
    long v = SSL_get_verify_result(t->ssl);
    if (v != X509_V_OK)
        /* wrong CA, expired, or a certificate for another host */
        snprintf(msg, sizeof(msg), "TLS certificate of %s:%s not accepted: %s", t->host, t->port,
                 X509_verify_cert_error_string(v));
    else if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)
        snprintf(msg, sizeof(msg), "TLS handshake with %s:%s failed: the connection was closed (is it a TLS port?)",
                 t->host, t->port);
    else {
        ssl_reason(why, sizeof(why));
        snprintf(msg, sizeof(msg), "TLS handshake with %s:%s failed: %s", t->host, t->port, why);
    }
    fail(t, msg);
}

static void start_tls(devex_redis_tls_t *t)
{
    t->state = ST_HANDSHAKE;
    t->ssl = SSL_new(t->ctx);
    if (t->ssl == NULL || SSL_set_fd(t->ssl, t->tfd) != 1) {
        fail(t, "cannot start TLS");
        return;
    }
    int ok;
    if (is_ip_literal(t->host)) {
        /* no SNI for an address (RFC 6066); the certificate must list it */
        ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), t->host);
    } else {
        ok = SSL_set_tlsext_host_name(t->ssl, t->host) == 1 && SSL_set1_host(t->ssl, t->host) == 1;
        X509_VERIFY_PARAM_set_hostflags(SSL_get0_param(t->ssl), X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    }
    if (!ok) {
        fail(t, "cannot set the host name to verify");
        return;
    }
    handshake(t);
}

static void on_connect_poll(uv_poll_t *h, int status, int events)
{
    (void)events;
    devex_redis_tls_t *t = h->data;
    if (t == NULL)
        return;
    int soerr = 0;
    socklen_t len = sizeof(soerr);
    if (getsockopt(t->tfd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0)
        soerr = errno;
    if (soerr == 0 && status < 0)
        soerr = ECONNREFUSED;
    if (soerr != 0) {
        snprintf(t->last_connect_error, sizeof(t->last_connect_error), "%s", strerror(soerr));
        try_next_address(t);
        return;
    }
    start_tls(t);
}

/* Connects to the next resolved address (non-blocking), or fails with the
 * last address's error. */
static void try_next_address(devex_redis_tls_t *t)
{
    poll_close(&t->tpoll);
    if (t->tfd >= 0) {
        close(t->tfd);
        t->tfd = -1;
    }
    t->tevents = 0;
    while (t->ai_next) {
        struct addrinfo *a = t->ai_next;
        t->ai_next = a->ai_next;
        int fd = socket(a->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            snprintf(t->last_connect_error, sizeof(t->last_connect_error), "%s", strerror(errno));
            continue;
        }
        int one = 1; /* request/reply traffic: no Nagle delay */
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (connect(fd, a->ai_addr, a->ai_addrlen) != 0 && errno != EINPROGRESS) {
            snprintf(t->last_connect_error, sizeof(t->last_connect_error), "%s", strerror(errno));
            close(fd);
            continue;
        }
        t->tfd = fd;
        t->tpoll = malloc(sizeof(*t->tpoll));
        if (t->tpoll == NULL || uv_poll_init(t->loop, t->tpoll, fd) != 0) {
            free(t->tpoll);
            t->tpoll = NULL;
            fail(t, "cannot watch the TCP socket");
            return;
        }
        t->tpoll->data = t;
        t->state = ST_CONNECTING;
        if (poll_set(t->tpoll, &t->tevents, UV_WRITABLE, on_connect_poll) != 0)
            fail(t, "cannot watch the TCP socket");
        return;
    }
    char msg[640];
    snprintf(msg, sizeof(msg), "cannot connect to %s:%s: %s", t->host, t->port,
             t->last_connect_error[0] ? t->last_connect_error : "no address");
    fail(t, msg);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    devex_redis_tls_t *t = req->data;
    free(req);
    if (t == NULL) { /* closed while resolving */
        uv_freeaddrinfo(res);
        return;
    }
    t->gai = NULL;
    if (status != 0) {
        char msg[640];
        snprintf(msg, sizeof(msg), "cannot resolve %s: %s", t->host, uv_strerror(status));
        fail(t, msg);
        return;
    }
    t->ai = t->ai_next = res;
    t->ai_from_uv = 1;
    try_next_address(t);
}

static void on_start(uv_timer_t *h)
{
    devex_redis_tls_t *t = h->data;
    if (t == NULL)
        return;
    t->start_timer = NULL;
    h->data = NULL;
    uv_close((uv_handle_t *)h, on_timer_closed);
    try_next_address(t);
}

/* An address literal is connected to on the next loop turn (so the owner
 * hears nothing from this call); a name is resolved first on the libuv
 * thread pool (getaddrinfo blocks). */
devex_redis_tls_t *devex_redis_tls_start(uv_loop_t *loop, SSL_CTX *ctx, const char *host, int port,
                                         devex_redis_tls_cb cb, void *arg, char *err, size_t errlen)
{
    devex_redis_tls_t *t = calloc(1, sizeof(*t));
    if (t == NULL || host[0] == '\0' || strlen(host) >= sizeof(t->host)) {
        free(t);
        snprintf(err, errlen, "redis TLS: invalid host");
        return NULL;
    }
    t->loop = loop;
    t->ctx = ctx;
    t->cb = cb;
    t->arg = arg;
    t->tfd = t->lfd = -1;
    snprintf(t->host, sizeof(t->host), "%s", host);
    snprintf(t->port, sizeof(t->port), "%d", port);
    t->state = ST_RESOLVING;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV};
    if (getaddrinfo(t->host, t->port, &hints, &t->ai) == 0) {
        t->ai_next = t->ai;
        t->start_timer = malloc(sizeof(*t->start_timer));
        if (t->start_timer == NULL || uv_timer_init(loop, t->start_timer) != 0) {
            free(t->start_timer);
            t->start_timer = NULL;
            devex_redis_tls_close(t);
            snprintf(err, errlen, "redis TLS: out of memory");
            return NULL;
        }
        t->start_timer->data = t;
        uv_timer_start(t->start_timer, on_start, 0, 0);
        return t;
    }
    t->ai = NULL;
    uv_getaddrinfo_t *req = calloc(1, sizeof(*req));
    if (req == NULL) {
        free(t);
        snprintf(err, errlen, "redis TLS: out of memory");
        return NULL;
    }
    req->data = t;
    struct addrinfo hints2 = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    int rc = uv_getaddrinfo(loop, req, on_resolved, t->host, t->port, &hints2);
    if (rc != 0) {
        free(req);
        free(t);
        snprintf(err, errlen, "redis TLS: cannot resolve %s: %s", host, uv_strerror(rc));
        return NULL;
    }
    t->gai = req;
    return t;
}
