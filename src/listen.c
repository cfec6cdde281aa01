/*
 * listen.c: the listening side of devexd's HTTP server: each listener's TLS
 * context and its sockets (server.listen in the config), made once at start
 * before the workers exist, and which paths a restricted Unix socket listener
 * (server.listen[i].only) may serve. worker.c hands the sockets to each
 * worker's loop; server.c asks devex_listen_refuses for every request.
 */
#include "listen.h"
#include "settings.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <openssl/err.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static SSL_CTX *ssl_ctxs[DEVEX_MAX_LISTENERS];
/* listen_fds[listener][worker]: one SO_REUSEPORT socket per worker, so the
 * kernel spreads connections over the threads without a shared accept lock */
static int *listen_fds[DEVEX_MAX_LISTENERS];

/* Whether any listener restricts its paths (server.listen[i].only): only
 * then is a request's local address looked at. */
static bool any_only;

/* The `only` prefix of the Unix listener this request came in on, or NULL. */
static const char *only_prefix(h2o_req_t *req)
{
    struct sockaddr_storage ss;
    if (req->conn->callbacks->get_sockname == NULL)
        return NULL;
    socklen_t len = req->conn->callbacks->get_sockname(req->conn, (struct sockaddr *)&ss);
    if (len == 0 || ss.ss_family != AF_UNIX)
        return NULL;
    const struct sockaddr_un *su = (const struct sockaddr_un *)&ss;
    for (size_t i = 0; i < devex_settings.nlisteners; i++) {
        const devex_listener_conf_t *lc = &devex_settings.listeners[i];
        if (lc->socket_path != NULL && lc->only != NULL &&
            strncmp(su->sun_path, lc->socket_path, sizeof(su->sun_path)) == 0)
            return lc->only;
    }
    return NULL;
}

/* A request on a restricted listener outside its prefix: both the path as
 * sent (what the router matches) and H2O's normalized one (dot segments
 * resolved, percent-decoded) must be under it. */
static bool outside_only(h2o_req_t *req)
{
    const char *only = only_prefix(req);
    if (only == NULL)
        return false;
    size_t n = strlen(only);
    size_t plen = req->query_at != SIZE_MAX ? req->query_at : req->path.len;
    if (plen < n || memcmp(req->path.base, only, n) != 0)
        return true;
    return req->path_normalized.len < n || memcmp(req->path_normalized.base, only, n) != 0;
}

bool devex_listen_refuses(h2o_req_t *req)
{
    return any_only && outside_only(req);
}

/* ---- listeners and TLS ---- */

static SSL_CTX *make_ssl_ctx(const devex_listener_conf_t *lc, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    if (SSL_CTX_use_certificate_chain_file(ctx, lc->tls_cert) != 1) {
        snprintf(err, errlen, "server.listen: cannot load TLS certificate %s: %s", lc->tls_cert,
                 ERR_reason_error_string(ERR_get_error()));
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, lc->tls_key, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(err, errlen, "server.listen: cannot load TLS key %s: %s", lc->tls_key,
                 ERR_reason_error_string(ERR_get_error()));
        SSL_CTX_free(ctx);
        return NULL;
    }
    h2o_ssl_register_alpn_protocols(ctx, h2o_http2_alpn_protocols);
    return ctx;
}

/* Whether another socket LISTENS on the address already. The workers'
 * sockets share the port through SO_REUSEPORT, which would as well let a
 * second devexd (or another runner on the same address) of the same user
 * join the group and take half of the connections, silently. A socket with
 * SO_REUSEADDR alone binds beside bound sockets but not beside a listening
 * one: EADDRINUSE means someone serves there. -> 0 free, -1 (err set) taken */
static int refuse_if_served(const struct addrinfo *ai, const devex_listener_conf_t *lc, char *err, size_t errlen)
{
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0; /* the real bind reports it */
    int on = 1;
    int rc = 0;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) == 0 &&
        bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno == EADDRINUSE) {
        snprintf(err, errlen, "server.listen: cannot listen on %s:%d: %s (another process serves there)", lc->host,
                 lc->port, strerror(EADDRINUSE));
        rc = -1;
    }
    close(fd);
    return rc;
}

static int open_listener(const devex_listener_conf_t *lc, bool first, char *err, size_t errlen)
{
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    char port[16];
    snprintf(port, sizeof(port), "%d", lc->port);
    int gai = getaddrinfo(lc->host, port, &hints, &res);
    if (gai != 0) {
        snprintf(err, errlen, "server.listen: cannot resolve %s: %s", lc->host, gai_strerror(gai));
        return -1;
    }
    if (first && lc->port != 0 && refuse_if_served(res, lc, err, errlen) != 0) {
        freeaddrinfo(res);
        return -1;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int on = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on)) != 0 ||
        bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 1024) != 0) {
        snprintf(err, errlen, "server.listen: cannot listen on %s:%d: %s", lc->host, lc->port, strerror(errno));
        if (fd >= 0)
            close(fd);
        freeaddrinfo(res);
        return -1;
    }
    freeaddrinfo(res);
    return fd;
}

/* A Unix socket listener, its directory made if missing: a socket file left
 * by an earlier run is replaced (anything else at the path is not ours and is
 * an error). Mode 0666: a runner under a uid of its own must be able to
 * connect; who reaches the path at all is up to its directory (and to what
 * a sandbox binds in). */
static int open_unix_listener(const devex_listener_conf_t *lc, char *err, size_t errlen)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(lc->socket_path) >= sizeof(sa.sun_path)) {
        snprintf(err, errlen, "server.listen: socket path too long: %s", lc->socket_path);
        return -1;
    }
    memcpy(sa.sun_path, lc->socket_path, strlen(lc->socket_path) + 1);
    /* its directory is made if missing (a data directory on first start) */
    char dir[sizeof(sa.sun_path)];
    memcpy(dir, sa.sun_path, sizeof(dir));
    for (char *slash = strchr(dir + 1, '/'); slash != NULL; slash = strchr(slash + 1, '/')) {
        *slash = '\0';
        if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
            snprintf(err, errlen, "server.listen: cannot make the directory %s: %s", dir, strerror(errno));
            return -1;
        }
        *slash = '/';
    }
    struct stat st;
    if (lstat(sa.sun_path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            snprintf(err, errlen, "server.listen: %s exists and is not a socket", sa.sun_path);
            return -1;
        }
        unlink(sa.sun_path);
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || chmod(sa.sun_path, 0666) != 0 ||
        listen(fd, 1024) != 0) {
        snprintf(err, errlen, "server.listen: cannot listen on %s: %s", sa.sun_path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

int devex_listen_prepare(int nworkers, char *err, size_t errlen)
{
    const devex_settings_t *s = &devex_settings;

    for (size_t i = 0; i < s->nlisteners; i++) {
        const devex_listener_conf_t *lc = &s->listeners[i];
        if (lc->tls_cert != NULL) {
            ssl_ctxs[i] = make_ssl_ctx(lc, err, errlen);
            if (ssl_ctxs[i] == NULL)
                return -1;
        }
        listen_fds[i] = calloc((size_t)nworkers, sizeof(int));
        if (lc->socket_path != NULL) {
            /* one socket (a path binds once), polled by every worker; none
             * for a command or --check (nworkers 0): binding would replace
             * the socket file of a devexd that serves */
            if (nworkers == 0)
                continue;
            if (lc->only != NULL)
                any_only = true;
            int fd = open_unix_listener(lc, err, errlen);
            if (fd < 0)
                return -1;
            for (int k = 0; k < nworkers; k++)
                listen_fds[i][k] = k == 0 ? fd : fcntl(fd, F_DUPFD_CLOEXEC, 0);
            continue;
        }
        for (int k = 0; k < nworkers; k++) {
            listen_fds[i][k] = open_listener(lc, k == 0, err, errlen);
            if (listen_fds[i][k] < 0)
                return -1;
        }
    }
    return 0;
}

SSL_CTX *devex_listen_ssl_ctx(size_t i)
{
    return ssl_ctxs[i];
}

int devex_listen_fd(size_t i, int worker)
{
    return listen_fds[i][worker];
}
