/*
 * proxy.c: the built-in reverse proxy ("single-host mode"). Lua decides, C
 * and H2O move the bytes.
 *
 * How a request reaches the upstream: request_done (server.c) sees the
 * instruction made by devex.proxy.pass{} and calls devex_proxy_start, which
 * calls h2o_reprocess_request with overrides whose hostport is the upstream.
 * With overrides set, libh2o 2.2 does not look for a host or path at all: it
 * goes straight to h2o__proxy_process_request (lib/core/proxy.c), the same
 * path H2O's proxy handler and its mruby http_request take. So there is no
 * internal path that a client could address: the only way to the proxy is a
 * pass() made by Lua, for the upstream Lua named, validated here.
 *
 * WebSocket: H2O's proxy tunnels an HTTP/1.1 upgrade only when the upstream
 * client context has a websocket_timeout. The "anchor" handler registered on
 * our pathconf exists to create such a context per worker (on_context_init,
 * as lib/handler/proxy.c does) and never handles a request itself.
 *
 * Responses: a prefilter adds x-request-id to whatever comes back (which also
 * keeps errjson.c from rewriting the upstream's own 4xx/5xx bodies), and turns
 * H2O's plain-text 502 (upstream down or broken) into devexd's JSON error.
 * The access line is written when H2O frees the request, with the status
 * and byte count the client actually got (101 for a WebSocket).
 *
 * Unix socket upstreams ("unix:/path", a sandboxed runner agent, which has
 * no network devexd can reach): H2O's proxy connects through a socket pool
 * when the overrides name one, and a pool made from a sockaddr_un is
 * supported by libh2o, but its libuv binding connects with uv_tcp_connect,
 * which refuses AF_UNIX. So, as tunnel_watch.c does for the tunnel, devexd
 * defines h2o_socket_connect (H2O's pool calls it through the PLT): AF_UNIX
 * addresses are connected with uv_pipe_connect and wrapped with the public
 * h2o_uv_socket_create; anything else goes to libh2o's own function. Each
 * worker keeps one pool per socket path (keep-alive connections reused);
 * pools with no connection in use are dropped when there are many.
 */
#include "proxy.h"
#include "buf.h"
#include "json.h"
#include "log.h"
#include "server.h"
#include "settings.h"
#include "textutil.h"
#include "errjson.h"
#include "tunnel_watch.h"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <sys/un.h>

#include <stdio.h>
#include <string.h>
#include <strings.h>

#define PASS_MT "devex.proxy.pass"
static const char pass_mt_key = 0; /* the same metatable, by pointer (devex_udata_is) */
#define WS_IDLE_TIMEOUT_MS (600 * 1000) /* a tunnel with no traffic either way for this long is closed */
#define MAX_PATH_LEN 8192
#define H2O_PROXY_MODULE "lib/core/proxy.c" /* the module name H2O's proxy logs its errors under */

/* ---- the anchor handler: per-worker upstream client contexts ---- */

static h2o_handler_t *anchor;

#define UNIX_POOLS_SOFT_MAX 64 /* per worker: above this, idle pools are dropped */

typedef struct unix_pool {
    struct unix_pool *next;
    h2o_socketpool_t pool;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
} unix_pool_t;

/* per worker: the upstream client context, and the Unix socket pools */
typedef struct {
    h2o_http1client_ctx_t client;
    unix_pool_t *pools;
    size_t npools;
} anchor_ctx_t;

#define UNIX_POOL_KEEP_MS 2000 /* an idle kept-alive connection is closed after this (the agent's own limit is 10 s) */

static void unix_pool_free(unix_pool_t *up)
{
    up->pool._interval_cb.loop = NULL; /* no timer was made (see unix_pool) */
    h2o_socketpool_dispose(&up->pool);
    free(up);
}

/* Connections of a pool in use (made and not back in the pool, WebSocket
 * tunnels included): the pool must live while there are any, since a
 * socket's close reports to its pool. */
static size_t unix_pool_busy(unix_pool_t *up)
{
    size_t idle = 0;
    pthread_mutex_lock(&up->pool._shared.mutex);
    for (h2o_linklist_t *l = up->pool._shared.sockets.next; l != &up->pool._shared.sockets; l = l->next)
        idle++;
    size_t count = up->pool._shared.count;
    pthread_mutex_unlock(&up->pool._shared.mutex);
    return count - idle;
}

/* The worker's pool for a socket path, made on first use. Above
 * UNIX_POOLS_SOFT_MAX pools, those with no connection in use are freed. */
static h2o_socketpool_t *unix_pool(anchor_ctx_t *a, h2o_loop_t *loop, const char *path)
{
    for (unix_pool_t *up = a->pools; up != NULL; up = up->next)
        if (strcmp(up->path, path) == 0)
            return &up->pool;
    if (a->npools >= UNIX_POOLS_SOFT_MAX) {
        for (unix_pool_t **pp = &a->pools; *pp != NULL;) {
            unix_pool_t *up = *pp;
            if (unix_pool_busy(up) == 0) {
                *pp = up->next;
                unix_pool_free(up);
                a->npools--;
            } else {
                pp = &up->next;
            }
        }
    }
    unix_pool_t *up = calloc(1, sizeof(*up));
    if (up == NULL)
        return NULL;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(up->path, sizeof(up->path), "%s", path);
    memcpy(sa.sun_path, up->path, sizeof(sa.sun_path));
    h2o_socketpool_init_by_address(&up->pool, (struct sockaddr *)&sa, sizeof(sa), 0, SIZE_MAX);
    /* libh2o 2.2 reads the pool's loop and keep time on every connect and
     * return (expiring idle connections then); h2o_socketpool_set_timeout
     * would also start a 1 s timer per pool, embedded in it, that could not
     * be closed and freed synchronously. So the two fields are set directly,
     * and unix_pool_free clears the loop again before disposing. */
    up->pool.timeout = UNIX_POOL_KEEP_MS;
    up->pool._interval_cb.loop = loop;
    up->next = a->pools;
    a->pools = up;
    a->npools++;
    return &up->pool;
}

/* ---- connecting to a Unix socket (see the top of the file) ---- */

typedef struct {
    uv_connect_t req; /* first: the callback gets its address */
    h2o_socket_t *sock;
    h2o_socket_cb cb;
} unix_connect_t;

static void on_unix_connect(uv_connect_t *req, int status)
{
    unix_connect_t *uc = (unix_connect_t *)req;
    /* ECANCELED: the socket was closed while connecting (H2O's timeout) and
     * is being freed; nobody waits for the answer */
    if (status != UV_ECANCELED)
        uc->cb(uc->sock, status == 0 ? NULL : h2o_socket_error_conn_fail);
    free(uc);
}

typedef h2o_socket_t *(*connect_fn)(h2o_loop_t *, struct sockaddr *, socklen_t, h2o_socket_cb);

/* Interposes libh2o's own function of this name. */
h2o_socket_t *h2o_socket_connect(h2o_loop_t *loop, struct sockaddr *addr, socklen_t addrlen, h2o_socket_cb cb)
{
    if (addr->sa_family != AF_UNIX) {
        static connect_fn real;
        if (real == NULL) {
            real = (connect_fn)dlsym(RTLD_NEXT, "h2o_socket_connect");
            if (real == NULL)
                abort(); /* libh2o without it cannot have called us */
        }
        return real(loop, addr, addrlen, cb);
    }
    const struct sockaddr_un *su = (const struct sockaddr_un *)addr;
    if (addrlen <= offsetof(struct sockaddr_un, sun_path) || memchr(su->sun_path, '\0', sizeof(su->sun_path)) == NULL)
        return NULL;
    uv_pipe_t *pipe = h2o_mem_alloc(sizeof(*pipe));
    unix_connect_t *uc = malloc(sizeof(*uc));
    if (uc == NULL || uv_pipe_init(loop, pipe, 0) != 0) {
        free(uc);
        free(pipe);
        return NULL;
    }
    uc->sock = h2o_uv_socket_create((uv_stream_t *)pipe, (uv_close_cb)free);
    uc->cb = cb;
    /* libuv reports the result (also a refusal) from the loop, never before returning */
    uv_pipe_connect(&uc->req, pipe, su->sun_path, on_unix_connect);
    return uc->sock;
}

static int anchor_on_req(h2o_handler_t *self, h2o_req_t *req)
{
    (void)self;
    (void)req;
    return -1; /* never handles anything: the next handler (devexd's) runs */
}

static void anchor_on_context_init(h2o_handler_t *self, h2o_context_t *ctx)
{
    anchor_ctx_t *a = h2o_mem_alloc(sizeof(*a));
    memset(a, 0, sizeof(*a));
    h2o_http1client_ctx_t *c = &a->client;
    c->loop = ctx->loop;
    c->getaddr_receiver = &ctx->receivers.hostinfo_getaddr;
    c->io_timeout = &ctx->proxy.io_timeout;
    c->websocket_timeout = h2o_mem_alloc(sizeof(*c->websocket_timeout));
    h2o_timeout_init(ctx->loop, c->websocket_timeout, WS_IDLE_TIMEOUT_MS);
    c->ssl_ctx = NULL;
    h2o_context_set_handler_context(ctx, self, a);
}

static void anchor_on_context_dispose(h2o_handler_t *self, h2o_context_t *ctx)
{
    anchor_ctx_t *a = h2o_context_get_handler_context(ctx, self);
    if (a == NULL)
        return;
    while (a->pools != NULL) {
        unix_pool_t *up = a->pools;
        a->pools = up->next;
        unix_pool_free(up);
    }
    h2o_timeout_dispose(ctx->loop, a->client.websocket_timeout);
    free(a->client.websocket_timeout);
    free(a);
}

void devex_proxy_register(h2o_pathconf_t *pathconf)
{
    anchor = h2o_create_handler(pathconf, sizeof(*anchor));
    anchor->on_req = anchor_on_req;
    anchor->on_context_init = anchor_on_context_init;
    anchor->on_context_dispose = anchor_on_context_dispose;
    /* H2O would print "[lib/core/proxy.c] in request:..." to stderr; we log
     * the error as a field of the JSON access line instead */
    pathconf->error_log.emit_request_errors = 0;
}

/* ---- the instruction made by pass{} ---- */

typedef struct {
    char unix_path[sizeof(((struct sockaddr_un *)0)->sun_path)]; /* "unix:PATH": this socket ("" otherwise) */
    char host[256];      /* what is connected to: an IP address or a DNS name */
    uint16_t port;
    char authority[264]; /* Host sent upstream and logged: as given, e.g. "localhost:8123" */
    int preserve_host;
} pass_t;
/* user values: 1 = path (string), 2 = headers: { name1, value1 or false, ... },
 * 3 = location_prefix (string) or nil, 4 = activity key (string) or nil */

/* An IPv4 or IPv6 address (inside brackets in the authority), or a DNS name:
 * the runner gateway sends a REPL to its pod's address or its Service's
 * name, which Lua takes from what devexd created, never from the request.
 * "localhost" is pinned to 127.0.0.1 (no DNS: it could resolve elsewhere). */
static int valid_upstream_host(const char *s, size_t n, int bracketed, char *out, size_t outlen)
{
    if (n == 0 || n >= outlen)
        return 0;
    if (n == 9 && strncasecmp(s, "localhost", 9) == 0) {
        snprintf(out, outlen, "127.0.0.1");
        return 1;
    }
    char tmp[256];
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    struct in6_addr a6;
    struct in_addr a4;
    if (bracketed) {
        if (inet_pton(AF_INET6, tmp, &a6) != 1)
            return 0;
    } else if (inet_pton(AF_INET, tmp, &a4) != 1) {
        /* a DNS name: letters, digits, '-' and '.', labels of 1..63 */
        size_t label = 0;
        for (size_t i = 0; i < n; i++) {
            char c = s[i];
            if (c == '.') {
                if (label == 0)
                    return 0;
                label = 0;
            } else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-') {
                if (++label > 63)
                    return 0;
            } else {
                return 0;
            }
        }
    }
    memcpy(out, tmp, n + 1);
    return 1;
}

/* "HOST:P", "[IPv6]:P" with P in 1..65535 (valid_upstream_host says which
 * HOST), or "unix:/ABSOLUTE/PATH" (a Unix socket; Host: localhost). */
static int parse_upstream(const char *s, size_t n, pass_t *p)
{
    const char *host, *colon;
    size_t hlen;
    int bracketed = 0;
    if (n == 0 || n >= sizeof(p->authority))
        return 0;
    if (n > 5 && memcmp(s, "unix:", 5) == 0) {
        const char *path = s + 5;
        size_t plen = n - 5;
        if (path[0] != '/' || plen >= sizeof(p->unix_path))
            return 0;
        for (size_t i = 0; i < plen; i++)
            if ((unsigned char)path[i] < 0x20 || path[i] == 0x7f)
                return 0;
        memcpy(p->unix_path, path, plen);
        p->unix_path[plen] = '\0';
        memcpy(p->authority, s, n); /* logged as given */
        p->authority[n] = '\0';
        return 1;
    }
    if (s[0] == '[') {
        bracketed = 1;
        const char *rb = memchr(s, ']', n);
        if (rb == NULL || rb + 1 >= s + n || rb[1] != ':')
            return 0;
        host = s + 1;
        hlen = (size_t)(rb - host);
        colon = rb + 1;
    } else {
        colon = memchr(s, ':', n);
        if (colon == NULL)
            return 0;
        host = s;
        hlen = (size_t)(colon - s);
    }
    if (!valid_upstream_host(host, hlen, bracketed, p->host, sizeof(p->host)))
        return 0;
    const char *d = colon + 1, *end = s + n;
    if (d == end || end - d > 5)
        return 0;
    unsigned long port = 0;
    for (; d < end; d++) {
        if (*d < '0' || *d > '9')
            return 0;
        port = port * 10 + (unsigned long)(*d - '0');
    }
    if (port < 1 || port > 65535)
        return 0;
    p->port = (uint16_t)port;
    memcpy(p->authority, s, n);
    p->authority[n] = '\0';
    return 1;
}

static int valid_path(const char *s, size_t n)
{
    if (n == 0 || n > MAX_PATH_LEN || s[0] != '/')
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c == 0x7f || c == '#') /* CR, LF, NUL, spaces would break the request line */
            return 0;
    }
    return 1;
}

/* Headers the proxy itself writes or that would change the framing. */
static int reserved_header(const char *lname, size_t n)
{
    static const char *const names[] = {"host",       "content-length",   "transfer-encoding", "connection",
                                        "upgrade",    "te",               "keep-alive",        "proxy-connection",
                                        "expect",     "http2-settings",   "x-request-id"};
    for (size_t i = 0; i < DEVEX_ARRAY_SIZE(names); i++)
        if (strlen(names[i]) == n && memcmp(names[i], lname, n) == 0)
            return 1;
    return 0;
}

static int valid_activity_key(const char *s, size_t n)
{
    if (n == 0 || n > DEVEX_ACTIVITY_KEY_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'))
            return 0;
    }
    return 1;
}

/* proxy.pass{upstream=, path=, headers=, preserve_host=, location_prefix=, activity=} -> 0, instruction */
static int l_pass(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    pass_t *p = lua_newuserdatauv(L, sizeof(*p), 4); /* index 2 */
    memset(p, 0, sizeof(*p));

    size_t n;
    lua_getfield(L, 1, "upstream");
    const char *up = lua_tolstring(L, -1, &n);
    if (lua_type(L, -1) != LUA_TSTRING || !parse_upstream(up, n, p))
        return luaL_error(L, "proxy.pass: upstream must be \"HOST:PORT\" (an IPv4 address, a DNS name or localhost), \"[IPv6]:PORT\" or \"unix:/PATH\" (got %s)",
                          lua_type(L, -1) == LUA_TSTRING ? up : luaL_typename(L, -1));
    lua_pop(L, 1);

    lua_getfield(L, 1, "path");
    const char *path = lua_tolstring(L, -1, &n);
    if (lua_type(L, -1) != LUA_TSTRING || !valid_path(path, n))
        return luaL_error(L, "proxy.pass: path must start with '/' and contain no spaces, control characters or '#'");
    lua_setiuservalue(L, 2, 1);

    lua_getfield(L, 1, "location_prefix");
    if (!lua_isnil(L, -1)) {
        const char *lp = lua_tolstring(L, -1, &n);
        if (lua_type(L, -1) != LUA_TSTRING || !valid_path(lp, n) || lp[n - 1] != '/' || memchr(lp, '?', n) != NULL)
            return luaL_error(L, "proxy.pass: location_prefix must be a path that starts and ends with '/'");
    }
    lua_setiuservalue(L, 2, 3);

    lua_getfield(L, 1, "activity");
    if (!lua_isnil(L, -1)) {
        const char *ak = lua_tolstring(L, -1, &n);
        if (lua_type(L, -1) != LUA_TSTRING || !valid_activity_key(ak, n))
            return luaL_error(L, "proxy.pass: activity must be 1..%d characters of [A-Za-z0-9._-]", DEVEX_ACTIVITY_KEY_MAX);
    }
    lua_setiuservalue(L, 2, 4);

    lua_getfield(L, 1, "preserve_host");
    p->preserve_host = lua_toboolean(L, -1);
    lua_pop(L, 1);

    lua_newtable(L); /* normalized headers */
    int out = lua_gettop(L), k = 0;
    lua_getfield(L, 1, "headers");
    if (!lua_isnil(L, -1)) {
        if (!lua_istable(L, -1))
            return luaL_error(L, "proxy.pass: headers must be a table");
        int in = lua_gettop(L);
        lua_pushnil(L);
        while (lua_next(L, in) != 0) {
            if (lua_type(L, -2) != LUA_TSTRING)
                return luaL_error(L, "proxy.pass: header names must be strings");
            const char *name = lua_tolstring(L, -2, &n);
            char lname[257];
            if (n > 256 || !devex_http_token(name, n)) /* 256: the size of lname */
                return luaL_error(L, "proxy.pass: invalid header name");
            for (size_t i = 0; i < n; i++)
                lname[i] = (char)((name[i] >= 'A' && name[i] <= 'Z') ? name[i] + 32 : name[i]);
            if (reserved_header(lname, n))
                return luaL_error(L, "proxy.pass: header %s cannot be set", name);
            int vt = lua_type(L, -1);
            if (vt == LUA_TSTRING || vt == LUA_TNUMBER) {
                size_t vlen;
                const char *v = lua_tolstring(L, -1, &vlen);
                if (!devex_http_value(v, vlen))
                    return luaL_error(L, "proxy.pass: invalid value for header %s", name);
            } else if (!(vt == LUA_TBOOLEAN && !lua_toboolean(L, -1))) {
                return luaL_error(L, "proxy.pass: header values must be strings, numbers or false (delete)");
            }
            lua_pushlstring(L, lname, n);
            lua_rawseti(L, out, ++k);
            lua_pushvalue(L, -1);
            lua_rawseti(L, out, ++k);
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    lua_setiuservalue(L, 2, 2);

    luaL_setmetatable(L, PASS_MT);
    lua_pushinteger(L, 0);
    lua_insert(L, 2);
    lua_settop(L, 3);
    return 2;
}

int devex_proxy_find(lua_State *L, int base, int nres)
{
    if (nres >= 2 && lua_isinteger(L, base) && lua_tointeger(L, base) == 0 && devex_udata_is(L, base + 1, &pass_mt_key))
        return base + 1;
    return 0;
}

/* ---- handing over ---- */

typedef struct {
    h2o_req_t *req;
    devex_worker_t *w;
    h2o_iovec_t method, path, upstream;
    uint64_t start_ns;
    char request_id[40];
} proxied_t;

typedef struct {
    h2o_req_prefilter_t super;
    proxied_t *px;
} prefilter_t;

static const h2o_req_error_log_t *proxy_error(h2o_req_t *req)
{
    for (size_t i = req->error_logs.size; i-- > 0;)
        if (strcmp(req->error_logs.entries[i].module, H2O_PROXY_MODULE) == 0)
            return &req->error_logs.entries[i];
    return NULL;
}

static void on_prefilter_setup(h2o_req_prefilter_t *_self, h2o_req_t *req, h2o_ostream_t **slot)
{
    prefilter_t *self = (prefilter_t *)_self;
    if (req->res.status == 502 && proxy_error(req) != NULL) {
        /* H2O's own "Gateway Error" (upstream down, timed out, broken
         * response): answer with devexd's JSON error shape instead */
        devex_buf_t b = DEVEX_BUF_INIT;
        devex_buf_append_str(&b, "{\"error\":\"bad gateway\",\"request_id\":\"");
        devex_buf_append_str(&b, self->px->request_id);
        devex_buf_append_str(&b, "\"}");
        h2o_iovec_t body = h2o_strdup(&req->pool, b.data, b.len);
        devex_buf_free(&b);
        req->res.reason = "Bad Gateway";
        req->res.headers = (h2o_headers_t){NULL, 0, 0};
        slot = devex_errjson_set_body(req, slot, body);
    }
    /* also tells errjson.c to leave the upstream's own error bodies alone */
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-request-id"), 0, NULL, self->px->request_id,
                          strlen(self->px->request_id));
    h2o_setup_next_prefilter(&self->super, req, slot);
}

/* Runs when H2O frees the request (pool memory is still valid then). */
static void on_proxied_dispose(void *_px)
{
    proxied_t *px = _px;
    h2o_req_t *req = px->req;
    px->w->inflight--;
    const h2o_req_error_log_t *err = proxy_error(req);
    if (!(devex_settings.access_log && devex_log_enabled(DEVEX_LOG_INFO)) && !(err && devex_log_enabled(DEVEX_LOG_WARN)))
        return;
    devex_buf_t b = DEVEX_BUF_INIT;
    devex_log_begin(&b, err && !devex_settings.access_log ? DEVEX_LOG_WARN : DEVEX_LOG_INFO,
                    err && !devex_settings.access_log ? "proxy error" : "access", px->request_id);
    devex_log_strn(&b, "method", px->method.base, px->method.len);
    devex_log_strn(&b, "path", px->path.base, px->path.len);
    devex_log_int(&b, "status", req->res.status);
    devex_log_num(&b, "duration_ms", (double)(devex_now_ns() - px->start_ns) / 1e6);
    devex_log_int(&b, "bytes", (long long)req->bytes_sent);
    devex_log_int(&b, "http", req->version >= 0x200 ? 2 : 1);
    devex_log_strn(&b, "upstream", px->upstream.base, px->upstream.len);
    if (err != NULL)
        devex_log_strn(&b, "proxy_error", err->msg.base, err->msg.len);
    devex_log_end(&b);
    devex_buf_free(&b);
}

static void set_req_header(h2o_req_t *req, const char *lname, size_t nlen, const char *value, size_t vlen, int del_only)
{
    ssize_t i;
    while ((i = h2o_find_header_by_str(&req->headers, lname, nlen, -1)) != -1)
        h2o_delete_header(&req->headers, i);
    if (del_only)
        return;
    h2o_iovec_t n = h2o_strdup(&req->pool, lname, nlen);
    h2o_iovec_t v = h2o_strdup(&req->pool, value, vlen);
    h2o_add_header_by_str(&req->pool, &req->headers, n.base, n.len, 1, NULL, v.base, v.len);
}

void devex_proxy_start(devex_reqctx_t *rc, lua_State *L, int idx)
{
    h2o_req_t *req = rc->req;
    h2o_mem_pool_t *pool = &req->pool;
    const pass_t *p = lua_touserdata(L, idx);

    /* what the access line needs, copied: the request line's buffers may be
     * gone by the time H2O frees the request */
    proxied_t *px = h2o_mem_alloc_shared(pool, sizeof(*px), on_proxied_dispose);
    px->req = req;
    /* counted until H2O frees the request, so a graceful shutdown lets a
     * proxied response finish (a WebSocket tunnel is not counted: its
     * request ends with the 101) */
    px->w = rc->w;
    px->w->inflight++;
    px->start_ns = rc->start_ns;
    memcpy(px->request_id, rc->request_id, sizeof(px->request_id));
    px->method = h2o_strdup(pool, req->method.base, req->method.len);
    px->path = h2o_strdup(pool, req->path.base, req->query_at != SIZE_MAX ? req->query_at : req->path.len);
    px->upstream = h2o_strdup(pool, p->authority, strlen(p->authority));

    /* request headers: our request id for the upstream's logs, then Lua's */
    set_req_header(req, H2O_STRLIT("x-request-id"), px->request_id, strlen(px->request_id), 0);
    lua_getiuservalue(L, idx, 2);
    lua_Integer nh = luaL_len(L, -1);
    for (lua_Integer i = 1; i + 1 <= nh; i += 2) {
        size_t nlen, vlen = 0;
        lua_rawgeti(L, -1, i);
        lua_rawgeti(L, -2, i + 1);
        const char *name = lua_tolstring(L, -2, &nlen);
        int del = lua_type(L, -1) == LUA_TBOOLEAN;
        const char *value = del ? "" : lua_tolstring(L, -1, &vlen);
        set_req_header(req, name, nlen, value, vlen, del);
        lua_pop(L, 2);
    }
    lua_pop(L, 1);

    size_t plen;
    lua_getiuservalue(L, idx, 1);
    const char *path = lua_tolstring(L, -1, &plen);
    h2o_iovec_t upath = h2o_strdup(pool, path, plen);
    lua_pop(L, 1);

    prefilter_t *pf = (prefilter_t *)h2o_add_prefilter(req, sizeof(*pf));
    pf->super.on_setup_ostream = on_prefilter_setup;
    pf->px = px;

    h2o_req_overrides_t *ov = h2o_mem_alloc_pool(pool, sizeof(*ov));
    *ov = (h2o_req_overrides_t){NULL};
    anchor_ctx_t *actx = anchor != NULL ? h2o_context_get_handler_context(req->conn->ctx, anchor) : NULL;
    ov->client_ctx = actx != NULL ? &actx->client : NULL;
    h2o_iovec_t authority = p->preserve_host ? req->authority : px->upstream;
    if (p->unix_path[0] != '\0') {
        ov->socketpool = actx != NULL ? unix_pool(actx, req->conn->ctx->loop, p->unix_path) : NULL;
        if (ov->socketpool == NULL) {
            /* out of memory: never let H2O fall back to the request's own authority */
            h2o_send_error_502(req, "Bad Gateway", "bad gateway", 0);
            return;
        }
        if (!p->preserve_host)
            authority = h2o_iovec_init(H2O_STRLIT("localhost"));
    } else {
        ov->hostport.host = h2o_strdup(pool, p->host, strlen(p->host));
        ov->hostport.port = p->port;
    }
    if (lua_getiuservalue(L, idx, 3) == LUA_TSTRING) {
        /* Location: http://<upstream authority>/x -> <scheme>://<our authority><prefix>x */
        size_t lplen;
        const char *lp = lua_tolstring(L, -1, &lplen);
        h2o_iovec_t base = h2o_concat(pool, h2o_iovec_init(H2O_STRLIT("http://")), authority, h2o_iovec_init(H2O_STRLIT("/")));
        h2o_url_t *match = h2o_mem_alloc_pool(pool, sizeof(*match));
        if (h2o_url_parse(base.base, base.len, match) == 0) {
            ov->location_rewrite.match = match;
            ov->location_rewrite.path_prefix = h2o_strdup(pool, lp, lplen);
        }
    }
    lua_pop(L, 1);

    /* a WebSocket handshake: the tunnel H2O makes if the upstream accepts
     * is watched for traffic under this key (tunnel_watch.c) */
    if (req->upgrade.base != NULL && lua_getiuservalue(L, idx, 4) == LUA_TSTRING) {
        size_t klen;
        const char *key = lua_tolstring(L, -1, &klen);
        devex_tunnel_expect(req, key, klen);
    }
    lua_pop(L, 1);

    /* with overrides set this goes straight to H2O's proxy (no host/path
     * lookup); it may answer (502) before returning: req is not ours anymore */
    h2o_reprocess_request(req, req->method, &H2O_URL_SCHEME_HTTP, authority, upath, ov, 0);
}

int luaopen_devex_proxy(lua_State *L)
{
    if (luaL_newmetatable(L, PASS_MT)) {
        lua_pushliteral(L, "devex.proxy.pass");
        lua_setfield(L, -2, "__name");
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "__metatable"); /* getmetatable() cannot reach it */
        lua_pushvalue(L, -1);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &pass_mt_key);
    }
    lua_pop(L, 1);
    static const luaL_Reg fns[] = {{"pass", l_pass},
                                   {"tunnel_activity", devex_tunnel_activity},
                                   {"tunnels", devex_tunnel_count},
                                   {NULL, NULL}};
    luaL_newlib(L, fns);
    return 1;
}
