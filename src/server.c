/*
 * server.c: H2O's global configuration (one host, one handler) and the
 * bridge from an H2O request to a Lua task and back to a response. Every
 * request gets its own task (coroutine); the reqctx that links the two lives
 * in the request's memory pool, and H2O's pool disposal detaches the task, so
 * a task that finishes after its client left drops its result instead of
 * touching a freed request. The listeners and TLS are in listen.c, the
 * worker threads in worker.c, the command-line tasks in cli.c.
 */
#include "server.h"
#include "errjson.h"
#include "h2_guard.h"
#include "json.h"
#include "listen.h"
#include "log.h"
#include "metrics.h"
#include "park.h"
#include "proxy.h"
#include "stream.h"
#include "textutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static h2o_globalconf_t gconf;

h2o_globalconf_t *devex_server_globalconf(void)
{
    return &gconf;
}

/* ---- responses ---- */

static void add_header(h2o_req_t *req, const char *name, size_t nlen, const char *value, size_t vlen)
{
    h2o_iovec_t v = h2o_strdup(&req->pool, value, vlen);
    char small[64];
    char *lname = nlen < sizeof(small) ? small : h2o_mem_alloc_pool(&req->pool, nlen + 1);
    for (size_t i = 0; i < nlen; i++)
        lname[i] = (char)((name[i] >= 'A' && name[i] <= 'Z') ? name[i] + 32 : name[i]);
    lname[nlen] = '\0';
    /* a name H2O knows (content-type, vary, set-cookie...) needs no copy */
    const h2o_token_t *token = h2o_lookup_token(lname, nlen);
    if (token != NULL) {
        h2o_add_header(&req->pool, &req->res.headers, token, NULL, v.base, v.len);
        return;
    }
    if (lname == small)
        lname = h2o_strdup(&req->pool, small, nlen).base;
    h2o_add_header_by_str(&req->pool, &req->res.headers, lname, nlen, 0, NULL, v.base, v.len);
}

static void access_log(devex_reqctx_t *rc, int status, size_t bytes)
{
    if (!devex_settings.access_log || !devex_log_enabled(DEVEX_LOG_INFO))
        return;
    h2o_req_t *req = rc->req;
    devex_buf_t *b = &rc->w->scratch;
    devex_log_begin(b, DEVEX_LOG_INFO, "access", rc->request_id);
    devex_log_strn(b, "method", req->method.base, req->method.len);
    size_t plen = req->query_at != SIZE_MAX ? req->query_at : req->path.len;
    devex_log_strn(b, "path", req->path.base, plen);
    devex_log_int(b, "status", status);
    devex_log_num(b, "duration_ms", (double)(devex_now_ns() - rc->start_ns) / 1e6);
    devex_log_int(b, "bytes", (long long)bytes);
    devex_log_int(b, "http", req->version >= 0x200 ? 2 : 1);
    devex_log_end(b);
    devex_buf_reset(b);
}

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 413: return "Payload Too Large";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return status < 300 ? "OK" : status < 400 ? "Redirect" : status < 500 ? "Client Error" : "Server Error";
    }
}

/* Sends a copy of body (which may be the worker's scratch buffer, which
 * access_log reuses, or a Lua string the collector may free). */
static void send_body(devex_reqctx_t *rc, int status, const char *ctype, const char *body, size_t len)
{
    static h2o_generator_t generator = {NULL, NULL};
    h2o_req_t *req = rc->req;
    h2o_iovec_t buf = h2o_strdup(&req->pool, body, len);
    req->res.status = status;
    req->res.reason = reason_phrase(status);
    if (ctype != NULL)
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, ctype, strlen(ctype));
    /* A new value in every response is costly over HTTP/2: H2O's HPACK
     * encoder adds each one to the connection's header table, evicting the
     * entries that repeat. By default the id goes where it is needed: errors,
     * and clients that sent their own. */
    if (devex_settings.request_id_always || status >= 400 || rc->client_request_id)
        h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-request-id"), 0, NULL, rc->request_id,
                              strlen(rc->request_id));
    req->res.content_length = len;
    int head = h2o_memis(req->input.method.base, req->input.method.len, H2O_STRLIT("HEAD"));
    access_log(rc, status, head ? 0 : len);
    devex_server_set_own_response(req); /* response_origin.c: for the filters that run inside */
    h2o_start_response(req, &generator);
    devex_server_set_own_response(NULL);
    h2o_send(req, head ? NULL : &buf, head ? 0 : 1, H2O_SEND_STATE_FINAL);
}

static void send_error(devex_reqctx_t *rc, int status, const char *msg)
{
    devex_buf_t b = DEVEX_BUF_INIT;
    devex_buf_append_str(&b, "{\"error\":\"");
    devex_json_escape(&b, msg, strlen(msg));
    devex_buf_append_str(&b, "\",\"request_id\":\"");
    devex_buf_append_str(&b, rc->request_id);
    devex_buf_append_str(&b, "\"}");
    send_body(rc, status, "application/json", b.data, b.len);
    devex_buf_free(&b);
}

static void log_lua_error(devex_reqctx_t *rc, const char *what, const char *err)
{
    devex_buf_t b = DEVEX_BUF_INIT;
    devex_log_begin(&b, DEVEX_LOG_ERROR, what, rc->request_id);
    devex_log_str(&b, "error", err ? err : "(no message)");
    devex_log_end(&b);
    devex_buf_free(&b);
}

/* Adds the headers table at idx; returns 0 or -1 with a message. */
static int add_lua_headers(devex_reqctx_t *rc, lua_State *L, int idx, int *has_ctype, const char **err)
{
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        size_t nlen, vlen;
        if (lua_type(L, -2) != LUA_TSTRING) {
            *err = "header names must be strings";
            lua_pop(L, 2);
            return -1;
        }
        const char *name = lua_tolstring(L, -2, &nlen);
        if (!devex_http_token(name, nlen)) {
            *err = "invalid header name";
            lua_pop(L, 2);
            return -1;
        }
        if (nlen == 12 && strncasecmp(name, "content-type", 12) == 0)
            *has_ctype = 1;
        if (lua_istable(L, -1)) {
            lua_Integer n = luaL_len(L, -1);
            for (lua_Integer i = 1; i <= n; i++) {
                lua_rawgeti(L, -1, i);
                const char *v = lua_tolstring(L, -1, &vlen);
                if (v == NULL || !devex_http_value(v, vlen)) {
                    *err = "invalid header value";
                    lua_pop(L, 3);
                    return -1;
                }
                add_header(rc->req, name, nlen, v, vlen);
                lua_pop(L, 1);
            }
        } else if (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER) {
            const char *v = lua_tolstring(L, -1, &vlen);
            if (!devex_http_value(v, vlen)) {
                *err = "invalid header value";
                lua_pop(L, 2);
                return -1;
            }
            add_header(rc->req, name, nlen, v, vlen);
        } else if (lua_toboolean(L, -1)) {
            *err = "header values must be strings, numbers or lists of strings";
            lua_pop(L, 2);
            return -1;
        }
        lua_pop(L, 1);
    }
    return 0;
}

static void request_done(devex_task_t *t, int status, int nres);

/* stream.later(fn) returned by a handler: fn runs as a new task of the
 * request and its results are the answer (request_done again), the
 * middleware's headers already added. The handler's coroutine, its
 * middleware frames and whatever only they reached are freed meanwhile: a
 * start parked for minutes keeps only fn and what fn holds. rc NULL: the
 * client has gone, fn still runs (it may finish what the handler began, a
 * session start whose workload exists) and its answer is dropped. */
static void run_later(devex_reqctx_t *rc, lua_State *co, int idx, const char *request_id)
{
    /* the VM of the handler's coroutine (after a reload, the retired one) */
    devex_vm_t *vm = devex_vm_of(co);
    if (!lua_checkstack(co, 4)) { /* the wrap (to reference it, then below the function), the function, the thread spawn may make */
        if (rc != NULL)
            send_error(rc, 500, "internal error");
        return;
    }
    /* stream.later(fn, wrap): the task runs wrap(fn), and may park (park.c) */
    int wrap_ref = 0;
    if (lua_getiuservalue(co, idx, 2) == LUA_TFUNCTION)
        wrap_ref = luaL_ref(co, LUA_REGISTRYINDEX);
    else
        lua_pop(co, 1);
    lua_getiuservalue(co, idx, 1);
    vm->worker->inflight++; /* request_done counts it down (a park hands that on) */
    devex_conn_guard_t *g = rc != NULL ? rc->guard : NULL;
    devex_conn_guard_task_start(g);
    devex_task_t *t = devex_task_spawn_parkable(vm, co, 0, request_done, g, request_id, rc, wrap_ref);
    if (t != NULL && rc != NULL)
        rc->task = t;
}

static void request_done(devex_task_t *t, int status, int nres)
{
    devex_reqctx_t *rc = t->rc;
    devex_worker_t *w = t->vm->worker;
    w->inflight--;
    devex_conn_guard_task_end(t->data); /* h2_guard.c: the connection's tasks in flight */
    if (rc == NULL) { /* the client went away; the result is dropped */
        int b = lua_gettop(t->co) - nres + 1;
        if (status == LUA_OK && nres >= 2 && devex_stream_later_is(t->co, b + 1))
            run_later(NULL, t->co, b + 1, t->request_id); /* but what it was to do later is done */
        return;
    }
    if (status == DEVEX_TASK_KILLED) {
        rc->task = NULL; /* shutting down: H2O drops the connection */
        devex_request_detach(rc);
        return;
    }
    rc->task = NULL;
    devex_request_detach(rc);
    lua_State *co = t->co;
    if (status != LUA_OK) {
        devex_metrics_lua_error("request"); /* metrics: an error the app's dispatcher did not catch */
        log_lua_error(rc, "lua error", luaL_tolstring(co, -1, NULL));
        send_error(rc, 500, "internal error");
        return;
    }
    int base = lua_gettop(co) - nres + 1;
    int btype = nres >= 2 ? lua_type(co, base + 1) : LUA_TNIL;
    size_t flen;
    const char *frozen = btype == LUA_TUSERDATA ? devex_json_frozen(co, base + 1, &flen) : NULL;
    /* proxy.c: a handler that returned require("devex.proxy").pass{...} has
     * its request handed to H2O's reverse proxy instead of a response */
    int pidx = frozen == NULL ? devex_proxy_find(co, base, nres) : 0;
    if (pidx != 0) {
        devex_proxy_start(rc, co, pidx);
        return;
    }
    int code = nres >= 1 && lua_isinteger(co, base) ? (int)lua_tointeger(co, base) : 0;
    if (code < 100 || code > 599) {
        log_lua_error(rc, "handler returned an invalid status", luaL_tolstring(co, base, NULL));
        send_error(rc, 500, "internal error");
        return;
    }
    const char *hdr_err = NULL;
    int has_ctype = 0;
    if (nres >= 3 && lua_istable(co, base + 2) && add_lua_headers(rc, co, base + 2, &has_ctype, &hdr_err) != 0) {
        rc->req->res.headers = (h2o_headers_t){NULL, 0, 0};
        log_lua_error(rc, "handler returned invalid headers", hdr_err);
        send_error(rc, 500, "internal error");
        return;
    }
    if (btype == LUA_TUSERDATA && frozen == NULL && devex_stream_later_is(co, base + 1)) {
        run_later(rc, co, base + 1, rc->request_id); /* the answer is made by a task of its own */
        return;
    }
    if (btype == LUA_TUSERDATA && frozen == NULL && devex_stream_is(co, base + 1)) {
        devex_stream_start(rc, co, base + 1, code); /* stream.c: a body sent as it is made */
        return;
    }
    if (frozen != NULL) {
        send_body(rc, code, has_ctype ? NULL : "application/json", frozen, flen);
    } else if (btype == LUA_TTABLE || (btype == LUA_TLIGHTUSERDATA)) {
        devex_buf_t *b = &w->scratch;
        char err[256];
        devex_buf_reset(b);
        if (devex_json_encode(co, base + 1, b, err, sizeof(err)) != 0) {
            rc->req->res.headers = (h2o_headers_t){NULL, 0, 0};
            log_lua_error(rc, "response body is not JSON-encodable", err);
            send_error(rc, 500, "internal error");
            return;
        }
        send_body(rc, code, has_ctype ? NULL : "application/json", b->data, b->len);
        devex_buf_reset(b);
    } else if (btype == LUA_TSTRING) {
        size_t len;
        const char *s = lua_tolstring(co, base + 1, &len);
        send_body(rc, code, has_ctype ? NULL : "text/plain; charset=utf-8", s, len);
    } else if (btype == LUA_TNIL) {
        send_body(rc, code, NULL, "", 0);
    } else {
        rc->req->res.headers = (h2o_headers_t){NULL, 0, 0};
        log_lua_error(rc, "handler returned a body that is not a string or a table", lua_typename(co, btype));
        send_error(rc, 500, "internal error");
    }
}

static void reqctx_dispose(void *p)
{
    devex_reqctx_t *rc = p;
    /* metrics: every request that reached on_req is counted here, when H2O
     * frees it, with the status the client got (Lua's answer, an error, or
     * the proxied upstream's); 0 means the client left before any response */
    if (rc->req->res.status != 0)
        devex_metrics_http(rc->metrics_route, rc->req->method.base, rc->req->method.len, rc->req->res.status,
                           (double)(devex_now_ns() - rc->start_ns) / 1e9);
    devex_conn_guard_request_gone(rc); /* h2_guard.c: a reset stream is counted (needs rc->task) */
    if (rc->task != NULL)
        rc->task->rc = NULL;
    if (rc->park != NULL)
        devex_park_client_gone(rc->park);
    devex_request_detach(rc);
}

static int valid_request_id(const char *s, size_t n)
{
    if (n == 0 || n > 36)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' || c == '_' || c == '.'))
            return 0;
    }
    return 1;
}

static void push_method(lua_State *L, devex_vm_t *vm, h2o_iovec_t m)
{
    int i = devex_method_index(m.base, m.len);
    if (i >= 0)
        lua_rawgeti(L, LUA_REGISTRYINDEX, vm->method_refs[i]);
    else
        lua_pushlstring(L, m.base, m.len);
}

/* Whether the request's Host (HTTP/1) or :authority (HTTP/2), without its
 * port, is the runner gateway's domain. */
static int is_runner_domain(h2o_iovec_t authority)
{
    const char *d = devex_settings.runner_domain;
    size_t n = authority.len;
    const char *colon = memrchr(authority.base, ':', n);
    if (colon != NULL && memchr(authority.base, ']', n) == NULL)
        n = (size_t)(colon - authority.base);
    return strlen(d) == n && strncasecmp(authority.base, d, n) == 0;
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    devex_worker_t *w = DEVEX_CONTAINER_OF(req->conn->ctx, devex_worker_t, ctx);
    w->served++;
    devex_reqctx_t *rc = h2o_mem_alloc_shared(&req->pool, sizeof(*rc), reqctx_dispose);
    memset(rc, 0, sizeof(*rc));
    rc->req = req;
    rc->w = w;
    rc->start_ns = devex_now_ns();
    ssize_t hi = h2o_find_header_by_str(&req->headers, H2O_STRLIT("x-request-id"), -1);
    /* a client that sends an id gets back the one used (its own, or a new
     * one in place of a malformed one) */
    rc->client_request_id = hi != -1;
    if (hi != -1 && valid_request_id(req->headers.entries[hi].value.base, req->headers.entries[hi].value.len)) {
        h2o_iovec_t v = req->headers.entries[hi].value;
        memcpy(rc->request_id, v.base, v.len);
        rc->request_id[v.len] = '\0';
    } else {
        /* 32 hex digits: the worker's random prefix, then a counter (no printf on the hot path) */
        static const char hex[] = "0123456789abcdef";
        uint64_t a = w->reqid_prefix, b = ++w->reqid_counter;
        for (int i = 15; i >= 0; i--, a >>= 4, b >>= 4) {
            rc->request_id[i] = hex[a & 15];
            rc->request_id[16 + i] = hex[b & 15];
        }
        rc->request_id[32] = '\0';
    }
    if (devex_listen_refuses(req)) { /* listen.c: a restricted Unix listener */
        send_error(rc, 404, "not found");
        return 0;
    }
    const char *refused = devex_conn_guard_admit(rc); /* h2_guard.c: per-connection limits */
    if (refused != NULL) {
        send_error(rc, 503, refused);
        return 0;
    }
    devex_vm_t *vm = w->vm;
    if (vm == NULL) {
        send_error(rc, 503, "no application loaded");
        return 0;
    }
    lua_State *L = vm->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->dispatch_ref);
    devex_request_push(L, rc);
    push_method(L, vm, req->method);
    lua_pushlstring(L, req->path.base, req->query_at != SIZE_MAX ? req->query_at : req->path.len);
    int nargs = 3;
    if (devex_settings.runner_domain != NULL && is_runner_domain(req->authority)) {
        lua_pushboolean(L, 1); /* the dispatcher's `gateway` argument */
        nargs = 4;
    }
    w->inflight++;
    devex_conn_guard_task_start(rc->guard);
    /* rc->task is set before the first run: a handler that never yields
     * finishes inside spawn and clears it again in request_done */
    devex_task_t *t = devex_task_spawn(vm, L, nargs, request_done, rc->guard, rc->request_id, rc);
    if (t != NULL)
        rc->task = t;
    return 0;
}

int devex_server_init(int nworkers, char *err, size_t errlen)
{
    const devex_settings_t *s = &devex_settings;
    h2o_config_init(&gconf);
    gconf.server_name = h2o_iovec_init(H2O_STRLIT("devexd"));
    gconf.max_request_entity_size = s->max_body;
    gconf.http1.req_timeout = (uint64_t)(s->header_timeout * 1000);
    gconf.http2.idle_timeout = (uint64_t)(s->idle_timeout * 1000);
    gconf.http2.graceful_shutdown_timeout = (uint64_t)(s->shutdown_timeout * 1000);
    gconf.handshake_timeout = (uint64_t)(s->header_timeout * 1000);
    h2o_hostconf_t *host = h2o_config_register_host(&gconf, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_pathconf_t *path = h2o_config_register_path(host, "/", 0);
    h2o_handler_t *handler = h2o_create_handler(path, sizeof(*handler));
    handler->on_req = on_req;
    devex_proxy_register(path); /* proxy.c: per-worker upstream client contexts for devex.proxy.pass */
    devex_errjson_register(path);
    devex_errjson_register(&host->fallback_path); /* errors raised before routing, like 413 */
    devex_metrics_register_filter(path); /* metrics: responses H2O makes itself (no x-request-id) */
    devex_metrics_register_filter(&host->fallback_path);    return devex_listen_prepare(nworkers, err, errlen); /* listen.c: TLS and sockets */
}
