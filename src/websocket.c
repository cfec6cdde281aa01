/*
 * websocket.c: devex.websocket (see websocket.h for the Lua API). The 101 is
 * sent with h2o_http1_upgrade; after it the socket is ours and wslay does the
 * framing (masking, fragments, ping/pong, the close handshake). H2O 2.2.5's
 * own h2o_upgrade_to_websocket gives no signal when the upgrade is complete
 * nor when a write is done, both of which a Lua task needs (to start sending,
 * and to wait while a slow client's queue is long), so the glue between the
 * socket and wslay is here, written after H2O's lib/websocket.c.
 *
 * Tasks are never resumed from inside wslay or socket callbacks: those only
 * record what happened and arm the `wake` timer (0 ms), whose callback
 * resumes the waiting tasks. So Lua never runs inside wslay_event_recv, and
 * a conn is never freed under it.
 *
 * Ownership: a ws_t is C memory of the worker thread, pointed to by the Lua
 * userdata. It is freed (after its timer handle is closed) once the socket is
 * closed, the upgrade callback has come, the userdata is collected and no task
 * waits on it. The userdata's __gc closes the socket.
 */
#include "websocket.h"
#include "errors.h"
#include "server.h"

#include <h2o/http1.h>
#include <h2o/websocket.h> /* h2o_is_websocket_handshake */
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>
#include <wslay/wslay.h>

#define WS_MT "devex.websocket"
#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define SEND_HIGH_WATER (1u << 20)
#define SEND_LOW_WATER (256u << 10)

typedef struct ws ws_t;

typedef struct ws_msg {
    struct ws_msg *next;
    int opcode;
    size_t len;
    char data[];
} ws_msg_t;

enum { WAIT_UPGRADE = 1, WAIT_RECV, WAIT_SEND };

typedef struct ws_waiter {
    devex_op_t op;
    ws_t *ws;
    int kind;
    struct ws_waiter *next;
} ws_waiter_t;

struct ws {
    h2o_socket_t *sock;
    wslay_event_context_ptr ctx;
    void *write_buf;
    bool upgrading;   /* h2o_http1_upgrade's callback still to come */
    bool upgraded;    /* the 101 went out and the socket is ours */
    bool closed;      /* the socket is closed (or never was ours) */
    bool closing;     /* close frame queued by us: end once it is written */
    bool read_paused; /* too much unread input: stopped reading */
    bool has_ud;
    bool timer_closing;
    uint64_t max_message, max_queue;
    ws_msg_t *head, *tail;
    size_t queued_in;
    ws_waiter_t *waiters;
    uv_timer_t wake;
};

typedef struct {
    ws_t *ws;
} ws_ud_t;

static void ws_proceed(ws_t *ws);

/* ---- lifetime ---- */

static void ws_freed(uv_handle_t *h)
{
    free(h->data);
}

static void ws_maybe_free(ws_t *ws)
{
    if (ws->has_ud || ws->upgrading || !ws->closed || ws->waiters != NULL || ws->timer_closing)
        return;
    while (ws->head) {
        ws_msg_t *m = ws->head;
        ws->head = m->next;
        free(m);
    }
    ws->timer_closing = true;
    uv_close((uv_handle_t *)&ws->wake, ws_freed);
}

static void ws_arm(ws_t *ws)
{
    if (!ws->timer_closing && !uv_is_active((uv_handle_t *)&ws->wake))
        uv_timer_start(&ws->wake, ws->wake.timer_cb, 0, 0);
}

/* Closes the socket and the wslay context. Never called from inside wslay. */
static void ws_shutdown(ws_t *ws)
{
    if (ws->closed)
        return;
    ws->closed = true;
    if (ws->sock != NULL) {
        ws->sock->data = NULL;
        h2o_socket_close(ws->sock);
        ws->sock = NULL;
    }
    if (ws->ctx != NULL) {
        wslay_event_context_free(ws->ctx);
        ws->ctx = NULL;
    }
    free(ws->write_buf);
    ws->write_buf = NULL;
    ws_arm(ws); /* waiters learn it */
}

/* ---- the socket and wslay ---- */

static void on_read(h2o_socket_t *sock, const char *err)
{
    ws_t *ws = sock->data;
    if (err != NULL) {
        ws_shutdown(ws);
        return;
    }
    ws_proceed(ws);
}

static void on_write_done(h2o_socket_t *sock, const char *err)
{
    ws_t *ws = sock->data;
    if (ws == NULL)
        return;
    if (err != NULL) {
        ws_shutdown(ws);
        return;
    }
    ws_proceed(ws);
    if (!ws->closed && wslay_event_get_queued_msg_length(ws->ctx) <= SEND_LOW_WATER)
        ws_arm(ws); /* senders waiting for room */
}

static ssize_t recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags, void *data)
{
    ws_t *ws = data;
    h2o_buffer_t *in = ws->sock->input;
    if (in->size == 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    if (len > in->size)
        len = in->size;
    memcpy(buf, in->bytes, len);
    h2o_buffer_consume(&ws->sock->input, len);
    return (ssize_t)len;
}

/* wslay hands one chunk at a time; the next goes out when this one is written */
static ssize_t send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags, void *user)
{
    ws_t *ws = user;
    if (h2o_socket_is_writing(ws->sock)) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    void *p = realloc(ws->write_buf, len > 0 ? len : 1);
    if (p == NULL) {
        wslay_event_set_error(ctx, WSLAY_ERR_NOMEM);
        return -1;
    }
    ws->write_buf = p;
    memcpy(p, data, len);
    h2o_iovec_t buf = h2o_iovec_init(p, len);
    h2o_socket_write(ws->sock, &buf, 1, on_write_done);
    return (ssize_t)len;
}

static void on_msg_cb(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg, void *user)
{
    ws_t *ws = user;
    if (arg->opcode != WSLAY_TEXT_FRAME && arg->opcode != WSLAY_BINARY_FRAME)
        return; /* ping, pong and close are wslay's */
    ws_msg_t *m = malloc(sizeof(*m) + arg->msg_length);
    if (m == NULL)
        return;
    m->next = NULL;
    m->opcode = arg->opcode;
    m->len = arg->msg_length;
    memcpy(m->data, arg->msg, arg->msg_length);
    if (ws->tail)
        ws->tail->next = m;
    else
        ws->head = m;
    ws->tail = m;
    ws->queued_in += m->len;
    ws_arm(ws);
}

/* Moves bytes both ways until nothing more can be done now; then waits for
 * the socket, or closes it when wslay has nothing left to read or write. */
static void ws_proceed(ws_t *ws)
{
    if (ws->closed)
        return;
    int handled;
    do {
        handled = 0;
        if (!h2o_socket_is_writing(ws->sock) && wslay_event_want_write(ws->ctx)) {
            if (wslay_event_send(ws->ctx) != 0)
                goto Close;
            handled = 1;
        }
        if (!ws->read_paused && ws->sock->input->size != 0 && wslay_event_want_read(ws->ctx)) {
            if (wslay_event_recv(ws->ctx) != 0)
                goto Close;
            handled = 1;
            if (ws->queued_in > ws->max_queue)
                ws->read_paused = true; /* the task reads on: receive() starts reading again */
        }
    } while (handled);
    int writing = h2o_socket_is_writing(ws->sock) || wslay_event_want_write(ws->ctx);
    if (ws->closing && !writing)
        goto Close; /* our close frame is out: no need to wait for the peer's */
    if (wslay_event_want_read(ws->ctx) && !ws->read_paused)
        h2o_socket_read_start(ws->sock, on_read);
    else if (writing || ws->read_paused)
        h2o_socket_read_stop(ws->sock);
    else
        goto Close;
    return;
Close:
    ws_shutdown(ws);
}

static void on_upgraded(void *data, h2o_socket_t *sock, size_t reqsize)
{
    ws_t *ws = data;
    ws->upgrading = false;
    if (sock == NULL) {
        ws->closed = true;
        ws_arm(ws);
        ws_maybe_free(ws);
        return;
    }
    ws->sock = sock;
    sock->data = ws;
    h2o_buffer_consume(&sock->input, reqsize);
    static const struct wslay_event_callbacks callbacks = {recv_cb, send_cb, NULL, NULL, NULL, NULL, on_msg_cb};
    if (wslay_event_context_server_init(&ws->ctx, &callbacks, ws) != 0) {
        ws->ctx = NULL;
        ws_shutdown(ws);
        ws_maybe_free(ws);
        return;
    }
    wslay_event_config_set_max_recv_msg_length(ws->ctx, ws->max_message);
    ws->upgraded = true;
    if (!ws->has_ud) {
        ws_shutdown(ws); /* nobody is left to talk to */
        ws_maybe_free(ws);
        return;
    }
    ws_proceed(ws);
    ws_arm(ws);
}

/* ---- resuming tasks ---- */

static void waiter_unlink(ws_waiter_t *w)
{
    ws_waiter_t **pp = &w->ws->waiters;
    while (*pp && *pp != w)
        pp = &(*pp)->next;
    if (*pp)
        *pp = w->next;
}

static void waiter_cancel(devex_op_t *op)
{
    ws_waiter_t *w = (ws_waiter_t *)op;
    ws_t *ws = w->ws;
    waiter_unlink(w);
    free(w);
    ws_maybe_free(ws);
}

static int push_closed(lua_State *L)
{
    return devex_push_fail(L, "closed", "the WebSocket connection is closed", 0);
}

/* Whether w can be resumed now; if so pushes its results and returns their count. */
static int waiter_ready(ws_t *ws, ws_waiter_t *w, lua_State *L)
{
    switch (w->kind) {
    case WAIT_UPGRADE:
        if (ws->upgrading)
            return -1;
        lua_pushboolean(L, ws->upgraded && !ws->closed);
        return 1;
    case WAIT_RECV:
        if (ws->head != NULL) {
            ws_msg_t *m = ws->head;
            ws->head = m->next;
            if (ws->head == NULL)
                ws->tail = NULL;
            ws->queued_in -= m->len;
            lua_pushlstring(L, m->data, m->len);
            lua_pushstring(L, m->opcode == WSLAY_BINARY_FRAME ? "binary" : "text");
            free(m);
            return 2;
        }
        if (ws->closed)
            return push_closed(L);
        return -1;
    case WAIT_SEND:
        if (ws->closed)
            return push_closed(L);
        if (wslay_event_get_queued_msg_length(ws->ctx) > SEND_LOW_WATER)
            return -1;
        lua_pushboolean(L, 1);
        return 1;
    }
    return -1;
}

static void on_wake(uv_timer_t *t)
{
    ws_t *ws = t->data;
    /* a resumed task may add or cancel waiters: restart the scan after each */
    for (;;) {
        ws_waiter_t *w = ws->waiters;
        int n = -1;
        for (; w != NULL; w = w->next) {
            n = waiter_ready(ws, w, devex_op_thread(&w->op));
            if (n >= 0)
                break;
        }
        if (w == NULL)
            break;
        waiter_unlink(w);
        /* the waiter is freed first: resume does not touch the op afterwards */
        ws_waiter_t copy = *w;
        free(w);
        devex_task_resume(&copy.op, n);
    }
    if (ws->read_paused && ws->queued_in <= ws->max_queue / 2 && !ws->closed) {
        ws->read_paused = false;
        ws_proceed(ws);
    }
    ws_maybe_free(ws);
}

static int ws_wait(lua_State *L, ws_t *ws, int kind, lua_KFunction k, lua_KContext kctx)
{
    ws_waiter_t *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return luaL_error(L, "out of memory");
    w->op.cancel = waiter_cancel;
    w->ws = ws;
    w->kind = kind;
    w->next = ws->waiters;
    ws->waiters = w;
    if (k != NULL)
        return devex_task_yieldk(L, &w->op, kctx, k);
    return devex_task_yield(L, &w->op);
}

/* ---- Lua ---- */

static ws_t *check_ws(lua_State *L)
{
    ws_ud_t *ud = luaL_checkudata(L, 1, WS_MT);
    return ud->ws;
}

static int upgrade_k(lua_State *L, int status, lua_KContext ctx)
{
    if (!lua_toboolean(L, -1))
        return devex_push_fail(L, "closed", "the client left during the WebSocket handshake", 0);
    lua_pushvalue(L, (int)ctx);
    return 1;
}

static int l_upgrade(lua_State *L)
{
    devex_task_t *t = devex_task_check(L, "websocket.upgrade");
    uint64_t max_message = 16u << 20;
    if (lua_istable(L, 1)) {
        lua_getfield(L, 1, "max_message");
        if (!lua_isnil(L, -1)) {
            lua_Integer n = luaL_checkinteger(L, -1);
            luaL_argcheck(L, n >= 1 && n <= (1 << 30), 1, "max_message must be from 1 byte to 1 GiB");
            max_message = (uint64_t)n;
        }
        lua_pop(L, 1);
    } else {
        luaL_argcheck(L, lua_isnoneornil(L, 1), 1, "options table expected");
    }
    if (t->rc == NULL)
        return devex_push_fail(L, "closed", "the client is gone", 0);
    h2o_req_t *req = t->rc->req;
    const char *key = NULL;
    if (req->version >= 0x200 || h2o_is_websocket_handshake(req, &key) != 0 || key == NULL)
        return devex_push_fail(L, "bad_request", "not a WebSocket handshake (HTTP/1.1 GET with Upgrade: websocket)", 400);

    /* Sec-WebSocket-Accept: base64(SHA-1(key + GUID)), RFC 6455 4.2.2 */
    unsigned char src[24 + sizeof(WS_GUID) - 1], digest[SHA_DIGEST_LENGTH];
    memcpy(src, key, 24);
    memcpy(src + 24, WS_GUID, sizeof(WS_GUID) - 1);
    SHA1(src, sizeof(src), digest);
    char accept[32];
    size_t alen = h2o_base64_encode(accept, digest, sizeof(digest), 0);

    ws_t *ws = calloc(1, sizeof(*ws));
    if (ws == NULL)
        return luaL_error(L, "out of memory");
    ws->max_message = max_message;
    ws->max_queue = max_message * 4;
    uv_timer_init(devex_worker_loop(devex_worker_current()), &ws->wake);
    ws->wake.data = ws;
    ws->wake.timer_cb = on_wake; /* ws_arm restarts it with this callback */
    ws_ud_t *ud = lua_newuserdatauv(L, sizeof(*ud), 0);
    ud->ws = ws;
    ws->has_ud = true;
    luaL_setmetatable(L, WS_MT);
    int ud_idx = lua_gettop(L);

    req->res.status = 101;
    req->res.reason = "Switching Protocols";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_UPGRADE, NULL, H2O_STRLIT("websocket"));
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("sec-websocket-accept"), 0, NULL,
                          h2o_strdup(&req->pool, accept, alen).base, alen);
    ws->upgrading = true;
    h2o_http1_upgrade(req, NULL, 0, on_upgraded, ws);
    return ws_wait(L, ws, WAIT_UPGRADE, upgrade_k, ud_idx);
}

static int l_receive(lua_State *L)
{
    ws_t *ws = check_ws(L);
    if (ws == NULL)
        return push_closed(L);
    devex_task_check(L, "websocket receive");
    ws_waiter_t probe = {.kind = WAIT_RECV};
    int n = waiter_ready(ws, &probe, L);
    if (n >= 0) {
        if (ws->read_paused)
            ws_arm(ws);
        return n;
    }
    return ws_wait(L, ws, WAIT_RECV, NULL, 0);
}

static int l_send(lua_State *L)
{
    ws_t *ws = check_ws(L);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    const char *kind = luaL_optstring(L, 3, "text");
    int binary = strcmp(kind, "binary") == 0;
    luaL_argcheck(L, binary || strcmp(kind, "text") == 0, 3, "\"text\" or \"binary\" expected");
    if (ws == NULL || ws->closed || ws->closing || !ws->upgraded)
        return push_closed(L);
    struct wslay_event_msg msg = {binary ? WSLAY_BINARY_FRAME : WSLAY_TEXT_FRAME, (const uint8_t *)data, len};
    if (wslay_event_queue_msg(ws->ctx, &msg) != 0)
        return push_closed(L);
    ws_proceed(ws);
    if (ws->closed)
        return push_closed(L);
    devex_task_t *t = devex_task_of(L);
    if (wslay_event_get_queued_msg_length(ws->ctx) > SEND_HIGH_WATER && t != NULL && t->co == L &&
        lua_isyieldable(L) && t->op == NULL)
        return ws_wait(L, ws, WAIT_SEND, NULL, 0);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_close(lua_State *L)
{
    ws_t *ws = check_ws(L);
    lua_Integer code = luaL_optinteger(L, 2, 1000);
    size_t rlen = 0;
    const char *reason = luaL_optlstring(L, 3, "", &rlen);
    luaL_argcheck(L, code >= 1000 && code <= 4999, 2, "close code must be from 1000 to 4999");
    luaL_argcheck(L, rlen <= 123, 3, "close reason is at most 123 bytes");
    if (ws == NULL || ws->closed || ws->closing || !ws->upgraded) {
        lua_pushboolean(L, 1);
        return 1;
    }
    ws->closing = true;
    if (wslay_event_queue_close(ws->ctx, (uint16_t)code, (const uint8_t *)reason, rlen) != 0)
        ws_shutdown(ws);
    else
        ws_proceed(ws);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_is_open(lua_State *L)
{
    ws_t *ws = check_ws(L);
    lua_pushboolean(L, ws != NULL && ws->upgraded && !ws->closed && !ws->closing);
    return 1;
}

static int l_gc(lua_State *L)
{
    ws_ud_t *ud = luaL_checkudata(L, 1, WS_MT);
    ws_t *ws = ud->ws;
    if (ws == NULL)
        return 0;
    ud->ws = NULL;
    ws->has_ud = false;
    if (!ws->upgrading)
        ws_shutdown(ws);
    ws_maybe_free(ws);
    return 0;
}

static int l_tostring(lua_State *L)
{
    ws_t *ws = check_ws(L);
    lua_pushfstring(L, "devex.websocket (%s)", ws != NULL && !ws->closed ? "open" : "closed");
    return 1;
}

int luaopen_devex_websocket(lua_State *L)
{
    static const luaL_Reg methods[] = {{"receive", l_receive}, {"send", l_send}, {"close", l_close},
                                       {"is_open", l_is_open}, {NULL, NULL}};
    if (luaL_newmetatable(L, WS_MT)) {
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, l_gc);
        lua_setfield(L, -2, "__close");
        lua_pushcfunction(L, l_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);
    static const luaL_Reg funcs[] = {{"upgrade", l_upgrade}, {NULL, NULL}};
    luaL_newlib(L, funcs);
    return 1;
}
