/*
 * http.c: devex.http, an HTTP client on libcurl's multi "socket" API running
 * on the worker's libuv loop, as DESIGN.md asks: every socket of a thread on
 * that thread's loop, and the thread never blocked on the network.
 *
 * Per worker thread there is one CURLM, created on first use: curl tells us
 * which sockets to watch (CURLMOPT_SOCKETFUNCTION -> one uv_poll_t each) and
 * when to call it back (CURLMOPT_TIMERFUNCTION -> one uv_timer_t); loop events
 * go back to curl_multi_socket_action(). The multi keeps the connection cache,
 * so keep-alive connections and HTTP/2 multiplexing are shared by all requests
 * of the thread.
 *
 * One transfer = one http_xfer_t (C heap), embedding the devex_op_t a task
 * parks on. Lua never runs inside a libcurl callback (a Lua call there could
 * re-enter libcurl, or run a __gc that removes the very handle libcurl is
 * working on): callbacks only fill C buffers and queue the transfer on the
 * thread's wake list; the list is run right after curl_multi_socket_action()
 * returns (or from a zero timer when something outside libcurl queued), and
 * only there are tasks resumed. A completion checks op->task first: a task
 * that was abandoned has already removed and freed its transfer in cancel().
 *
 * Ownership: a request's transfer belongs to its parked task and is freed
 * after the resume or in cancel(). A stream's transfer belongs to its waiting
 * task until the headers arrived, then to the Lua userdata; it is freed when
 * the userdata is collected and no reader is parked on it. close() and a
 * cancelled reader only stop the transfer (easy handle removed and cleaned
 * up, buffers freed) and leave the small struct to the userdata.
 */
#include "http.h"
#include "heaps.h"
#include "devex.h"
#include "errors.h"
#include "log.h"
#include "textutil.h"

#include <curl/curl.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#define HTTP_DEFAULT_TIMEOUT 30.0
#define HTTP_DEFAULT_CONNECT_TIMEOUT 10.0
#define HTTP_DEFAULT_MAX_SIZE ((lua_Integer)16 * 1024 * 1024)
#define STREAM_MT "devex.http.stream"

typedef struct http_multi http_multi_t;
typedef struct http_xfer http_xfer_t;

struct http_multi {
    CURLM *multi;
    uv_loop_t *loop;
    uv_timer_t timer;          /* libcurl's timeout (CURLMOPT_TIMERFUNCTION) */
    uv_timer_t wake_timer;     /* runs the wake list when queued from outside libcurl */
    http_xfer_t *wake_head, *wake_tail;
    long host_cap;             /* CURLMOPT_MAX_HOST_CONNECTIONS (0: none) */
    http_multi_t *next_all;
    http_multi_t *next_here;   /* this thread's other multis */
};

typedef struct {
    uv_poll_t poll;
    curl_socket_t fd;
    http_multi_t *m;
} http_sock_t;

/* XFER_EASY: an easy handle another primitive set up (devex_http_perform) */
typedef enum { XFER_REQUEST, XFER_STREAM, XFER_EASY } xfer_kind_t;
typedef enum { WAIT_NONE, WAIT_REQUEST, WAIT_OPEN, WAIT_READ } xfer_wait_t;

struct http_xfer {
    devex_op_t op;             /* first: the op pointer is the transfer pointer */
    http_multi_t *m;
    CURL *easy;
    struct curl_slist *req_headers;
    xfer_kind_t kind;
    xfer_wait_t wait;          /* what the task parked on op waits for */
    bool attached;             /* in the multi handle */
    bool headers_done;         /* the final (non-1xx) response header block arrived */
    bool done;                 /* transfer finished; result is valid */
    bool too_large;            /* the write callback refused data over max_size */
    bool closed;               /* stream: close() was called */
    bool cancelled;            /* stream: stopped because its reader was abandoned */
    bool has_ud;               /* stream: the Lua userdata is alive */
    bool in_wake;
    CURLcode result;
    long status;
    long http_version;         /* CURL_HTTP_VERSION_* */
    size_t max_size;
    devex_buf_t body;          /* request: the body; stream: buffered data, unread from rpos */
    size_t rpos;               /* stream: first unread byte */
    size_t scan;               /* stream: no '\n' in [rpos, scan) */
    devex_buf_t hdrs;          /* response headers: "name\0value\0"... (names lowercase) */
    http_xfer_t *wake_prev, *wake_next;
    FILE *in;                  /* request{body_file=}: the body read from this file */
    FILE *out;                 /* request{output_file=}: a 2xx body written here, not kept */
    bool out_failed;           /* a write to out failed (disk full): the transfer is aborted */
    void (*release)(void *);   /* XFER_EASY: frees the caller's data after the easy handle */
    void *release_arg;
    char errbuf[CURL_ERROR_SIZE];
};

typedef struct {
    http_xfer_t *x;
} stream_ud_t;

/* The parsed arguments of request{}/stream{}. Strings are borrowed from the
 * options table, which stays on the Lua stack for the whole call. */
typedef struct {
    const char *method;
    const char *url;
    const char *body;
    size_t body_len;
    const char *body_file;     /* upload this file as the body (streamed, not loaded) */
    const char *output_file;   /* write a 2xx response body to this file (streamed) */
    const char *unix_socket;   /* connect to this Unix socket, not the URL's host */
    double timeout;
    double connect_timeout;
    size_t max_size;
    const char *ca_file, *client_cert, *client_key;
    const char *ca_pem, *client_cert_pem, *client_key_pem;
    size_t ca_pem_len, client_cert_pem_len, client_key_pem_len;
    bool insecure;
    bool http2;
    bool https;
    long max_host_connections; /* 0: no cap */
    int headers_idx;           /* stack index of the headers table, 0 if none */
    bool has_content_type, has_expect;
} http_opts_t;

/* A worker's multi handles: one for transfers with no cap on their
 * connections to a host, one per cap asked for (max_host_connections): a
 * cap is the multi's, so the capped transfers are kept apart from the rest. */
static _Thread_local http_multi_t *tl_multis;

/* Every multi ever made, so that they stay reachable (for LeakSanitizer) after
 * their thread exits at shutdown; they live as long as the process. */
static http_multi_t *all_multis;
static pthread_mutex_t all_multis_lock = PTHREAD_MUTEX_INITIALIZER;

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static atomic_bool insecure_warned;

static void global_init_once(void)
{
    CURLcode rc = devex_heaps_curl_global_init(CURL_GLOBAL_DEFAULT); /* heaps.c: libcurl on a heap of its own */
    if (rc != CURLE_OK)
        devex_log(DEVEX_LOG_ERROR, "curl_global_init failed", curl_easy_strerror(rc));
}

void devex_http_global_init(void)
{
    pthread_once(&global_once, global_init_once);
}

/* ---- the wake list: resumptions deferred until libcurl has returned ---- */

static void multi_dispatch(http_multi_t *m);

static void on_wake_timer(uv_timer_t *t)
{
    multi_dispatch(t->data);
}

static void wake_queue(http_xfer_t *x)
{
    if (x->in_wake)
        return;
    http_multi_t *m = x->m;
    x->in_wake = true;
    x->wake_next = NULL;
    x->wake_prev = m->wake_tail;
    if (m->wake_tail)
        m->wake_tail->wake_next = x;
    else
        m->wake_head = x;
    m->wake_tail = x;
    /* When libcurl is the caller (inside socket_action) the list runs right
     * after socket_action returns and this timer is stopped again there. */
    if (!uv_is_active((uv_handle_t *)&m->wake_timer))
        uv_timer_start(&m->wake_timer, on_wake_timer, 0, 0);
}

static void wake_unlink(http_xfer_t *x)
{
    if (!x->in_wake)
        return;
    http_multi_t *m = x->m;
    if (x->wake_prev)
        x->wake_prev->wake_next = x->wake_next;
    else
        m->wake_head = x->wake_next;
    if (x->wake_next)
        x->wake_next->wake_prev = x->wake_prev;
    else
        m->wake_tail = x->wake_prev;
    x->wake_prev = x->wake_next = NULL;
    x->in_wake = false;
}

/* ---- transfers: lifetime ---- */

/* Stops the transfer: out of the multi handle, easy handle and request
 * headers freed. Never called from inside a libcurl callback. */
static void xfer_stop(http_xfer_t *x)
{
    if (x->attached) {
        /* Removing an unfinished SMTP transfer makes libcurl close its
         * connection politely (QUIT, then a blocking wait for the reply, up to
         * the transfer's timeout): a timeout already passed makes that wait
         * end at once instead of stalling the worker. */
        if (x->kind == XFER_EASY && !x->done)
            curl_easy_setopt(x->easy, CURLOPT_TIMEOUT_MS, 1L);
        curl_multi_remove_handle(x->m->multi, x->easy);
        x->attached = false;
    }
    if (x->easy) {
        curl_easy_cleanup(x->easy);
        x->easy = NULL;
    }
    curl_slist_free_all(x->req_headers);
    x->req_headers = NULL;
}

static void xfer_free(http_xfer_t *x)
{
    wake_unlink(x);
    xfer_stop(x);
    if (x->release)
        x->release(x->release_arg);
    if (x->in)
        fclose(x->in);
    if (x->out)
        fclose(x->out);
    devex_buf_free(&x->body);
    devex_buf_free(&x->hdrs);
    free(x);
}

/* op->cancel: the parked task was abandoned (VM closing). Must not touch Lua. */
static void xfer_cancel(devex_op_t *op)
{
    http_xfer_t *x = (http_xfer_t *)op;
    xfer_wait_t w = x->wait;
    x->wait = WAIT_NONE;
    wake_unlink(x);
    if (w == WAIT_READ) {
        /* the stream's userdata still exists and frees the struct in __gc */
        xfer_stop(x);
        x->cancelled = true;
        devex_buf_free(&x->body);
        x->rpos = x->scan = 0;
        if (x->has_ud)
            return;
    }
    xfer_free(x);
}

/* ---- libcurl callbacks (no Lua in here) ---- */

static void capture_info(http_xfer_t *x)
{
    long v = 0;
    if (curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &v) == CURLE_OK)
        x->status = v;
    v = 0;
    if (curl_easy_getinfo(x->easy, CURLINFO_HTTP_VERSION, &v) == CURLE_OK)
        x->http_version = v;
}

static void headers_ready(http_xfer_t *x)
{
    x->headers_done = true;
    capture_info(x);
    if (x->wait == WAIT_OPEN)
        wake_queue(x);
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t';
}

static size_t on_header(char *data, size_t size, size_t nitems, void *userdata)
{
    http_xfer_t *x = userdata;
    size_t len = size * nitems;
    if (x->headers_done)
        return len; /* trailers: not exposed */
    size_t l = len;
    while (l > 0 && (data[l - 1] == '\r' || data[l - 1] == '\n'))
        l--;
    if (l == 0) {
        /* end of a header block: the final one unless it was 1xx */
        long code = 0;
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &code);
        if (code >= 200 || code == 0)
            headers_ready(x);
        return len;
    }
    if (l >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        devex_buf_reset(&x->hdrs); /* a status line starts a new block (after a 1xx) */
        return len;
    }
    if (is_space(data[0])) {
        /* obsolete line folding: continues the last value */
        size_t i = 0;
        while (i < l && is_space(data[i]))
            i++;
        if (x->hdrs.len > 0 && i < l) {
            x->hdrs.len--; /* over the value's NUL */
            devex_buf_append(&x->hdrs, " ", 1);
            devex_buf_append(&x->hdrs, data + i, l - i);
            devex_buf_append(&x->hdrs, "", 1);
        }
        return len;
    }
    const char *colon = memchr(data, ':', l);
    if (colon == NULL || colon == data)
        return len;
    size_t nlen = (size_t)(colon - data);
    while (nlen > 0 && is_space(data[nlen - 1]))
        nlen--;
    size_t vs = (size_t)(colon - data) + 1, ve = l;
    while (vs < ve && is_space(data[vs]))
        vs++;
    while (ve > vs && is_space(data[ve - 1]))
        ve--;
    devex_buf_reserve(&x->hdrs, nlen + (ve - vs) + 2);
    for (size_t i = 0; i < nlen; i++) {
        char c = data[i];
        x->hdrs.data[x->hdrs.len++] = (char)((c >= 'A' && c <= 'Z') ? c + 32 : c);
    }
    x->hdrs.data[x->hdrs.len++] = '\0';
    devex_buf_append(&x->hdrs, data + vs, ve - vs);
    devex_buf_append(&x->hdrs, "", 1);
    return len;
}

static size_t on_write(char *data, size_t size, size_t nmemb, void *userdata)
{
    http_xfer_t *x = userdata;
    size_t len = size * nmemb;
    if (!x->headers_done)
        headers_ready(x);
    if (x->kind == XFER_REQUEST && x->out != NULL && x->status >= 200 && x->status < 300) {
        /* output_file: a success body goes to the file as it arrives (the
         * size is bounded by CURLOPT_MAXFILESIZE and the transfer's max_size
         * check below does not apply); an error body is kept for the caller */
        if (fwrite(data, 1, len, x->out) != len) {
            x->out_failed = true;
            return 0;
        }
        return len;
    }
    if (x->kind == XFER_REQUEST) {
        if (len > x->max_size - x->body.len) {
            x->too_large = true;
            return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
        }
        devex_buf_append(&x->body, data, len);
        return len;
    }
    /* stream: max_size bounds what is buffered and not yet read */
    if (x->rpos == x->body.len) {
        devex_buf_reset(&x->body);
        x->rpos = x->scan = 0;
    } else if (x->rpos >= 65536 && x->rpos * 2 >= x->body.len) {
        size_t unread = x->body.len - x->rpos;
        memmove(x->body.data, x->body.data + x->rpos, unread);
        x->body.len = unread;
        x->body.data[unread] = '\0';
        x->scan -= x->rpos;
        x->rpos = 0;
    }
    if (len > x->max_size - (x->body.len - x->rpos)) {
        x->too_large = true;
        return 0;
    }
    devex_buf_append(&x->body, data, len);
    if (x->wait == WAIT_READ && memchr(data, '\n', len) != NULL)
        wake_queue(x);
    return len;
}

/* ---- the multi handle on the loop ---- */

static void sock_closed(uv_handle_t *h)
{
    free(h->data);
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    http_sock_t *hs = p->data;
    http_multi_t *m = hs->m;
    int flags = 0;
    if (status < 0) {
        flags = CURL_CSELECT_ERR;
    } else {
        if (events & UV_READABLE)
            flags |= CURL_CSELECT_IN;
        if (events & UV_WRITABLE)
            flags |= CURL_CSELECT_OUT;
    }
    int running = 0;
    /* hs may be closed (CURL_POLL_REMOVE) during this call: not used after */
    curl_multi_socket_action(m->multi, hs->fd, flags, &running);
    multi_dispatch(m);
}

static int on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    http_multi_t *m = userp;
    http_sock_t *hs = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (hs != NULL) {
            /* stops watching now (libcurl closes the fd after we return) */
            uv_poll_stop(&hs->poll);
            uv_close((uv_handle_t *)&hs->poll, sock_closed);
            curl_multi_assign(m->multi, s, NULL);
        }
        return 0;
    }
    if (hs == NULL) {
        hs = calloc(1, sizeof(*hs));
        if (hs == NULL)
            return -1;
        if (uv_poll_init_socket(m->loop, &hs->poll, s) != 0) {
            free(hs);
            return -1;
        }
        hs->poll.data = hs;
        hs->fd = s;
        hs->m = m;
        curl_multi_assign(m->multi, s, hs);
    }
    int events = 0;
    if (what & CURL_POLL_IN)
        events |= UV_READABLE;
    if (what & CURL_POLL_OUT)
        events |= UV_WRITABLE;
    uv_poll_start(&hs->poll, events, on_poll);
    return 0;
}

static void on_timeout(uv_timer_t *t)
{
    http_multi_t *m = t->data;
    int running = 0;
    curl_multi_socket_action(m->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    multi_dispatch(m);
}

static int on_timer(CURLM *multi, long timeout_ms, void *userp)
{
    http_multi_t *m = userp;
    if (timeout_ms < 0)
        uv_timer_stop(&m->timer);
    else
        uv_timer_start(&m->timer, on_timeout, (uint64_t)timeout_ms, 0);
    return 0;
}

static http_multi_t *multi_get(long host_cap)
{
    for (http_multi_t *m = tl_multis; m != NULL; m = m->next_here)
        if (m->host_cap == host_cap)
            return m;
    devex_worker_t *w = devex_worker_current();
    if (w == NULL)
        return NULL;
    devex_http_global_init();
    http_multi_t *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return NULL;
    m->multi = curl_multi_init();
    if (m->multi == NULL) {
        free(m);
        return NULL;
    }
    m->loop = devex_worker_loop(w);
    uv_timer_init(m->loop, &m->timer);
    m->timer.data = m;
    uv_timer_init(m->loop, &m->wake_timer);
    m->wake_timer.data = m;
    curl_multi_setopt(m->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(m->multi, CURLMOPT_SOCKETDATA, m);
    curl_multi_setopt(m->multi, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(m->multi, CURLMOPT_TIMERDATA, m);
    curl_multi_setopt(m->multi, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
    m->host_cap = host_cap;
    if (host_cap > 0) /* past it transfers wait for a connection (or a stream on one) */
        curl_multi_setopt(m->multi, CURLMOPT_MAX_HOST_CONNECTIONS, host_cap);
    pthread_mutex_lock(&all_multis_lock);
    m->next_all = all_multis;
    all_multis = m;
    pthread_mutex_unlock(&all_multis_lock);
    m->next_here = tl_multis;
    tl_multis = m;
    return m;
}

/* ---- results ---- */

static const char *error_code(const http_xfer_t *x)
{
    if (x->cancelled || x->closed)
        return "cancelled";
    if (x->too_large)
        return "too_large";
    switch (x->result) {
    case CURLE_OPERATION_TIMEDOUT:
        return "timeout";
    case CURLE_COULDNT_CONNECT:
        return "connect";
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return "resolve";
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_SSL_CLIENTCERT:
    case CURLE_USE_SSL_FAILED:
        return "tls";
    case CURLE_FILESIZE_EXCEEDED:
        return "too_large";
    case CURLE_URL_MALFORMAT:
        return "invalid"; /* http(s):// was checked; the rest of the URL did not parse */
    case CURLE_ABORTED_BY_CALLBACK:
        return "cancelled";
    case CURLE_LOGIN_DENIED:
        return "auth";
    default:
        return "protocol";
    }
}

/* Pushes nil and the error of x; returns 2. */
static int push_fail(lua_State *L, const http_xfer_t *x)
{
    const char *code = error_code(x);
    char msg[CURL_ERROR_SIZE + 64];
    if (x->closed || x->cancelled)
        snprintf(msg, sizeof(msg), "the stream was closed");
    else if (x->too_large || x->result == CURLE_FILESIZE_EXCEEDED)
        snprintf(msg, sizeof(msg), "response body exceeds max_size (%zu bytes)%s", x->max_size,
                 x->kind == XFER_STREAM ? " of unread data" : "");
    else
        snprintf(msg, sizeof(msg), "%s", x->errbuf[0] ? x->errbuf : curl_easy_strerror(x->result));
    lua_pushnil(L);
    devex_push_error(L, code, msg, 0);
    lua_pushinteger(L, (lua_Integer)x->result);
    lua_setfield(L, -2, "curl_code");
    if (x->kind == XFER_EASY && x->status > 0) {
        lua_pushinteger(L, (lua_Integer)x->status); /* the server's last reply code (SMTP) */
        lua_setfield(L, -2, "reply");
    }
    return 2;
}

static void push_http_version(lua_State *L, long v)
{
    switch (v) {
    case CURL_HTTP_VERSION_1_0:
        lua_pushnumber(L, 1.0);
        break;
    case CURL_HTTP_VERSION_2_0:
        lua_pushinteger(L, 2);
        break;
#ifdef CURL_HTTP_VERSION_3
    case CURL_HTTP_VERSION_3:
        lua_pushinteger(L, 3);
        break;
#endif
    default:
        lua_pushnumber(L, 1.1);
        break;
    }
}

/* Pushes a table of the response headers; repeated names joined with ", ". */
static void push_headers(lua_State *L, const http_xfer_t *x)
{
    lua_newtable(L);
    const char *p = x->hdrs.data, *end = x->hdrs.data + x->hdrs.len;
    while (p != NULL && p < end) {
        const char *name = p;
        const char *value = name + strlen(name) + 1;
        size_t vlen = strlen(value);
        p = value + vlen + 1;
        if (lua_getfield(L, -1, name) == LUA_TSTRING) {
            lua_pushliteral(L, ", ");
            lua_pushlstring(L, value, vlen);
            lua_concat(L, 3);
        } else {
            lua_pop(L, 1);
            lua_pushlstring(L, value, vlen);
        }
        lua_setfield(L, -2, name);
    }
}

/* A finished request: pushes res, or nil and err. */
static int push_response(lua_State *L, http_xfer_t *x)
{
    if (x->out != NULL) {
        /* the caller reads the file next: it must be complete on disk */
        if (fclose(x->out) != 0)
            x->out_failed = true;
        x->out = NULL;
    }
    if (x->out_failed) {
        lua_pushnil(L);
        devex_push_error(L, "io", "cannot write the output_file", 0);
        return 2;
    }
    if (x->result != CURLE_OK || x->too_large)
        return push_fail(L, x);
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, x->status);
    lua_setfield(L, -2, "status");
    push_headers(L, x);
    lua_setfield(L, -2, "headers");
    lua_pushlstring(L, x->body.data ? x->body.data : "", x->body.len);
    lua_setfield(L, -2, "body");
    push_http_version(L, x->http_version);
    lua_setfield(L, -2, "http_version");
    return 1;
}

static void push_stream(lua_State *L, http_xfer_t *x)
{
    stream_ud_t *ud = lua_newuserdatauv(L, sizeof(*ud), 1);
    ud->x = x;
    x->has_ud = true;
    luaL_setmetatable(L, STREAM_MT);
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, x->status);
    lua_setfield(L, -2, "status");
    push_headers(L, x);
    lua_setfield(L, -2, "headers");
    push_http_version(L, x->http_version);
    lua_setfield(L, -2, "http_version");
    lua_setiuservalue(L, -2, 1);
    devex_buf_free(&x->hdrs); /* now in Lua */
}

/* What read_line returns now: pushes and returns the count, or returns 0 when
 * the caller must wait for more data. */
static int stream_take(lua_State *L, http_xfer_t *x)
{
    if (x->closed || x->cancelled)
        return push_fail(L, x);
    size_t unread = x->body.len - x->rpos;
    if (unread > 0) {
        const char *base = x->body.data;
        const char *nl = memchr(base + x->scan, '\n', x->body.len - x->scan);
        if (nl != NULL) {
            lua_pushlstring(L, base + x->rpos, (size_t)(nl - (base + x->rpos)));
            x->rpos = x->scan = (size_t)(nl - base) + 1;
            return 1;
        }
        x->scan = x->body.len;
    }
    if (!x->done)
        return 0;
    if (x->result != CURLE_OK || x->too_large)
        return push_fail(L, x);
    if (unread > 0) {
        /* a last line without a newline */
        lua_pushlstring(L, x->body.data + x->rpos, unread);
        x->rpos = x->scan = x->body.len;
        return 1;
    }
    lua_pushnil(L);
    return 1;
}

/* Resumes the task parked on x if what it waits for is there. Does not touch
 * x after a resume: the resumed Lua code may free it. */
static void xfer_wake(http_xfer_t *x)
{
    devex_op_t *op = &x->op;
    if (x->wait == WAIT_NONE || op->task == NULL)
        return;
    lua_State *co = devex_op_thread(op);
    int n;
    switch (x->wait) {
    case WAIT_REQUEST:
        if (!x->done)
            return;
        if (x->kind == XFER_EASY && x->result == CURLE_OK) {
            lua_pushboolean(co, 1);
            lua_pushinteger(co, (lua_Integer)x->status);
            n = 2;
        } else {
            n = x->kind == XFER_EASY ? push_fail(co, x) : push_response(co, x);
        }
        x->wait = WAIT_NONE;
        devex_task_resume(op, n);
        xfer_free(x); /* nothing else knows this transfer */
        return;
    case WAIT_OPEN:
        if (!x->headers_done && !x->done)
            return;
        x->wait = WAIT_NONE;
        if (x->headers_done) {
            push_stream(co, x);
            devex_task_resume(op, 1);
        } else {
            n = push_fail(co, x);
            devex_task_resume(op, n);
            xfer_free(x);
        }
        return;
    case WAIT_READ: {
        n = stream_take(co, x);
        if (n == 0)
            return;
        x->wait = WAIT_NONE;
        bool orphan = !x->has_ud; /* see l_gc: then nothing in Lua can reach x */
        devex_task_resume(op, n);
        if (orphan)
            xfer_free(x);
        return;
    }
    case WAIT_NONE:
        return;
    }
}

/* Runs after every socket_action: collects finished transfers, then resumes
 * the tasks whose transfers have news. */
static void multi_dispatch(http_multi_t *m)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(m->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        CURL *easy = msg->easy_handle;
        CURLcode result = msg->data.result; /* msg is invalid once the handle is removed */
        http_xfer_t *x = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&x);
        if (x == NULL)
            continue;
        x->result = result;
        x->done = true;
        if (x->kind == XFER_REQUEST || !x->headers_done)
            capture_info(x);
        if (result == CURLE_OK && !x->headers_done)
            x->headers_done = true;
        xfer_stop(x);
        wake_queue(x);
    }
    http_xfer_t *x;
    while ((x = m->wake_head) != NULL) {
        wake_unlink(x);
        xfer_wake(x);
    }
    uv_timer_stop(&m->wake_timer);
}

/* ---- arguments ---- */

static const char *const known_options[] = {
    "method",  "url",         "headers",    "body",         "timeout",         "connect_timeout", "max_size",
    "ca_file", "client_cert", "client_key", "ca_pem",       "client_cert_pem", "client_key_pem",  "insecure",
    "http2",   "body_file",   "output_file", "unix_socket", "max_host_connections", NULL,
};

static const char *opt_string(lua_State *L, const char *fn, const char *key, size_t *len)
{
    int t = lua_getfield(L, 1, key);
    const char *s = NULL;
    if (t == LUA_TSTRING)
        s = lua_tolstring(L, -1, len);
    else if (t != LUA_TNIL)
        luaL_error(L, "%s: option '%s' must be a string, got %s", fn, key, luaL_typename(L, -1));
    lua_pop(L, 1); /* the string stays alive in the options table */
    return s;
}

static double opt_seconds(lua_State *L, const char *fn, const char *key, double def, bool zero_ok)
{
    int t = lua_getfield(L, 1, key);
    double v = def;
    if (t == LUA_TNUMBER) {
        v = lua_tonumber(L, -1);
        if (!isfinite(v) || v < 0 || v > 31536000 || (!zero_ok && v == 0))
            luaL_error(L, "%s: option '%s' must be %s seconds up to one year", fn, key, zero_ok ? "0 (none) or" : "positive");
    } else if (t != LUA_TNIL) {
        luaL_error(L, "%s: option '%s' must be a number of seconds, got %s", fn, key, luaL_typename(L, -1));
    }
    lua_pop(L, 1);
    return v;
}

static bool opt_bool(lua_State *L, const char *fn, const char *key, bool def)
{
    int t = lua_getfield(L, 1, key);
    bool v = def;
    if (t == LUA_TBOOLEAN)
        v = lua_toboolean(L, -1);
    else if (t != LUA_TNIL)
        luaL_error(L, "%s: option '%s' must be a boolean, got %s", fn, key, luaL_typename(L, -1));
    lua_pop(L, 1);
    return v;
}

static bool ieq(const char *a, size_t alen, const char *b)
{
    return alen == strlen(b) && strncasecmp(a, b, alen) == 0;
}

/* Validates the headers table at idx (raises on misuse) and notes which
 * defaults the caller overrides. Allocates nothing. */
static void check_headers(lua_State *L, const char *fn, int idx, http_opts_t *o)
{
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        if (lua_type(L, -2) != LUA_TSTRING)
            luaL_error(L, "%s: header names must be strings", fn);
        size_t nlen, vlen;
        const char *name = lua_tolstring(L, -2, &nlen);
        if (!devex_http_token(name, nlen))
            luaL_error(L, "%s: invalid header name '%s'", fn, name);
        int vt = lua_type(L, -1);
        if (vt != LUA_TSTRING && vt != LUA_TNUMBER)
            luaL_error(L, "%s: header '%s' must be a string, got %s", fn, name, luaL_typename(L, -1));
        lua_pushvalue(L, -1);
        const char *value = lua_tolstring(L, -1, &vlen); /* converts the copy, not the table's value */
        for (size_t i = 0; i < vlen; i++)
            if (value[i] == '\r' || value[i] == '\n' || value[i] == '\0')
                luaL_error(L, "%s: header '%s' contains CR, LF or NUL", fn, name);
        lua_pop(L, 1);
        if (ieq(name, nlen, "content-length") || ieq(name, nlen, "transfer-encoding"))
            luaL_error(L, "%s: header '%s' is set by devex.http from the body", fn, name);
        if (ieq(name, nlen, "content-type"))
            o->has_content_type = true;
        if (ieq(name, nlen, "expect"))
            o->has_expect = true;
        lua_pop(L, 1);
    }
}

/* Reads request{}/stream{} options from the table at index 1 into o.
 * Raises a Lua error on misuse. Allocates nothing. */
static void parse_opts(lua_State *L, const char *fn, http_opts_t *o)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    memset(o, 0, sizeof(*o));
    lua_pushnil(L);
    while (lua_next(L, 1) != 0) {
        bool known = false;
        if (lua_type(L, -2) == LUA_TSTRING) {
            const char *k = lua_tostring(L, -2);
            for (const char *const *p = known_options; *p && !known; p++)
                known = strcmp(*p, k) == 0;
        }
        if (!known) {
            lua_pushvalue(L, -2);
            luaL_error(L, "%s: unknown option '%s'", fn, luaL_tolstring(L, -1, NULL));
        }
        lua_pop(L, 1);
    }
    size_t len;
    o->url = opt_string(L, fn, "url", &len);
    if (o->url == NULL)
        luaL_error(L, "%s: option 'url' is required", fn);
    if (strlen(o->url) != len)
        luaL_error(L, "%s: url contains a NUL byte", fn);
    if (strncasecmp(o->url, "https://", 8) == 0)
        o->https = true;
    else if (strncasecmp(o->url, "http://", 7) != 0)
        luaL_error(L, "%s: url must start with http:// or https://", fn);
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)o->url[i] <= 0x20 || o->url[i] == 0x7f)
            luaL_error(L, "%s: url contains a space or control character", fn);
    o->method = opt_string(L, fn, "method", &len);
    if (o->method == NULL)
        o->method = "GET";
    else if (!devex_http_token(o->method, len))
        luaL_error(L, "%s: invalid method '%s'", fn, o->method);
    o->body = opt_string(L, fn, "body", &o->body_len);
    o->body_file = opt_string(L, fn, "body_file", &len);
    if (o->body_file && o->body)
        luaL_error(L, "%s: give body or body_file, not both", fn);
    o->output_file = opt_string(L, fn, "output_file", &len);
    /* unix_socket=PATH: connect to this Unix socket instead of the URL's
     * host (which still goes in Host): a sandboxed runner reaches devexd so */
    o->unix_socket = opt_string(L, fn, "unix_socket", &len);
    if (o->unix_socket && (o->unix_socket[0] != '/' || strlen(o->unix_socket) != len || len > 107))
        luaL_error(L, "%s: option 'unix_socket' must be an absolute path of at most 107 bytes", fn);
    o->timeout = opt_seconds(L, fn, "timeout", HTTP_DEFAULT_TIMEOUT, true);
    o->connect_timeout = opt_seconds(L, fn, "connect_timeout", HTTP_DEFAULT_CONNECT_TIMEOUT, false);
    int t = lua_getfield(L, 1, "max_size");
    lua_Integer max = HTTP_DEFAULT_MAX_SIZE;
    if (t != LUA_TNIL) {
        if (!lua_isinteger(L, -1) || (max = lua_tointeger(L, -1)) <= 0)
            luaL_error(L, "%s: option 'max_size' must be a positive integer (bytes)", fn);
    }
    lua_pop(L, 1);
    o->max_size = (size_t)max;
    o->ca_file = opt_string(L, fn, "ca_file", &len);
    o->client_cert = opt_string(L, fn, "client_cert", &len);
    o->client_key = opt_string(L, fn, "client_key", &len);
    o->ca_pem = opt_string(L, fn, "ca_pem", &o->ca_pem_len);
    o->client_cert_pem = opt_string(L, fn, "client_cert_pem", &o->client_cert_pem_len);
    o->client_key_pem = opt_string(L, fn, "client_key_pem", &o->client_key_pem_len);
    if (o->ca_file && o->ca_pem)
        luaL_error(L, "%s: give ca_file or ca_pem, not both", fn);
    if (o->client_cert && o->client_cert_pem)
        luaL_error(L, "%s: give client_cert or client_cert_pem, not both", fn);
    if (o->client_key && o->client_key_pem)
        luaL_error(L, "%s: give client_key or client_key_pem, not both", fn);
    o->insecure = opt_bool(L, fn, "insecure", false);
    o->http2 = opt_bool(L, fn, "http2", true);
    t = lua_getfield(L, 1, "max_host_connections");
    if (t != LUA_TNIL) {
        lua_Integer n = lua_isinteger(L, -1) ? lua_tointeger(L, -1) : 0;
        if (n < 1 || n > 1024)
            luaL_error(L, "%s: option 'max_host_connections' must be an integer from 1 to 1024", fn);
        o->max_host_connections = (long)n;
    }
    lua_pop(L, 1);
    t = lua_getfield(L, 1, "headers");
    if (t == LUA_TTABLE) {
        o->headers_idx = lua_gettop(L); /* left on the stack for the call */
        check_headers(L, fn, o->headers_idx, o);
    } else if (t != LUA_TNIL) {
        luaL_error(L, "%s: option 'headers' must be a table, got %s", fn, luaL_typename(L, -1));
    } else {
        lua_pop(L, 1);
    }
}

/* ---- starting a transfer ---- */

static struct curl_slist *slist_add(struct curl_slist *l, const char *line, bool *ok)
{
    struct curl_slist *n = curl_slist_append(l, line);
    if (n == NULL)
        *ok = false;
    return n ? n : l;
}

/* Builds the request header list from the (validated) headers table. */
static struct curl_slist *build_headers(lua_State *L, const http_opts_t *o, bool *ok)
{
    struct curl_slist *l = NULL;
    devex_buf_t line = DEVEX_BUF_INIT;
    if (o->headers_idx) {
        lua_pushnil(L);
        while (lua_next(L, o->headers_idx) != 0) {
            size_t nlen, vlen;
            const char *name = lua_tolstring(L, -2, &nlen);
            lua_pushvalue(L, -1);
            const char *value = lua_tolstring(L, -1, &vlen);
            devex_buf_reset(&line);
            devex_buf_append(&line, name, nlen);
            if (vlen == 0) {
                devex_buf_append(&line, ";", 1); /* curl's way to send an empty header */
            } else {
                devex_buf_append(&line, ": ", 2);
                devex_buf_append(&line, value, vlen);
            }
            l = slist_add(l, line.data, ok);
            lua_pop(L, 2);
        }
    }
    devex_buf_free(&line);
    /* libcurl's defaults we do not want: a form content type on any body, and
     * "Expect: 100-continue" (a round trip) on large bodies */
    if ((o->body || o->body_file) && !o->has_content_type)
        l = slist_add(l, "Content-Type:", ok);
    if (!o->has_expect)
        l = slist_add(l, "Expect:", ok);
    return l;
}

static void warn_insecure(void)
{
    if (!atomic_exchange(&insecure_warned, true))
        devex_log(DEVEX_LOG_WARN, "devex.http: insecure=true used: TLS certificate verification is off for those requests",
                  NULL);
}

static void set_blob(CURL *e, CURLoption opt, const char *p, size_t len)
{
    struct curl_blob b = {.data = (void *)p, .len = len, .flags = CURL_BLOB_COPY};
    curl_easy_setopt(e, opt, &b);
}

/* Makes a transfer and adds it to the thread's multi handle. Returns NULL on
 * failure (out of memory, libcurl refused an option) with a message in err. */
static http_xfer_t *xfer_start(lua_State *L, http_multi_t *m, const http_opts_t *o, xfer_kind_t kind, char *err,
                               size_t errlen)
{
    http_xfer_t *x = calloc(1, sizeof(*x));
    if (x == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    x->m = m;
    x->kind = kind;
    x->max_size = o->max_size;
    x->op.cancel = xfer_cancel;
    if ((o->body_file || o->output_file) && kind != XFER_REQUEST) {
        snprintf(err, errlen, "body_file and output_file are for request{} only");
        free(x);
        return NULL;
    }
    curl_off_t in_size = 0;
    if (o->body_file) {
        struct stat st;
        x->in = fopen(o->body_file, "rb");
        if (x->in == NULL || fstat(fileno(x->in), &st) != 0 || !S_ISREG(st.st_mode)) {
            snprintf(err, errlen, "cannot read body_file %s: %s", o->body_file,
                     x->in ? "not a regular file" : strerror(errno));
            xfer_free(x);
            return NULL;
        }
        in_size = (curl_off_t)st.st_size;
    }
    if (o->output_file) {
        x->out = fopen(o->output_file, "wb");
        if (x->out == NULL) {
            snprintf(err, errlen, "cannot write output_file %s: %s", o->output_file, strerror(errno));
            xfer_free(x);
            return NULL;
        }
    }
    bool ok = true;
    x->req_headers = build_headers(L, o, &ok);
    CURL *e = x->easy = curl_easy_init();
    if (e == NULL || !ok) {
        snprintf(err, errlen, "out of memory");
        xfer_free(x);
        return NULL;
    }
    CURLcode rc = CURLE_OK;
#define SET(opt, val)                                                                                                  \
    do {                                                                                                               \
        if (rc == CURLE_OK)                                                                                            \
            rc = curl_easy_setopt(e, opt, val);                                                                        \
    } while (0)
    SET(CURLOPT_URL, o->url);
    if (o->unix_socket != NULL)
        SET(CURLOPT_UNIX_SOCKET_PATH, o->unix_socket);
    /* send the path as given: a signed S3 path with "." or ".." segments must
     * reach the server unchanged, not be normalised by libcurl */
    SET(CURLOPT_PATH_AS_IS, 1L);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_PRIVATE, (void *)x);
    SET(CURLOPT_ERRORBUFFER, x->errbuf);
    SET(CURLOPT_NOSIGNAL, 1L);
    /* Ignore http_proxy/https_proxy/no_proxy from the environment: an empty
     * proxy string turns proxy use off entirely, so requests go where the URL
     * says whatever environment devexd was started in. */
    SET(CURLOPT_PROXY, "");
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    SET(CURLOPT_ACCEPT_ENCODING, "");
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    SET(CURLOPT_USERAGENT, "devexd/" DEVEX_VERSION);
    /* A transfer cancelled while its name is being resolved must not make the
     * worker wait for getaddrinfo() in libcurl's resolver thread. */
    SET(CURLOPT_QUICK_EXIT, 1L);
    SET(CURLOPT_HTTP_VERSION, o->http2 ? (long)CURL_HTTP_VERSION_2TLS : (long)CURL_HTTP_VERSION_1_1);
    /* Wait for an HTTPS connection being set up to the same host to tell
     * whether it multiplexes (HTTP/2 by ALPN) instead of opening one more.
     * Not for cleartext: there the answer only comes with the first response
     * and every other request would wait for it. */
    SET(CURLOPT_PIPEWAIT, (o->https && o->http2) ? 1L : 0L);
    SET(CURLOPT_TIMEOUT_MS, (long)ceil(o->timeout * 1000.0));
    SET(CURLOPT_CONNECTTIMEOUT_MS, (long)ceil(o->connect_timeout * 1000.0));
    SET(CURLOPT_HEADERFUNCTION, on_header);
    SET(CURLOPT_HEADERDATA, (void *)x);
    SET(CURLOPT_WRITEFUNCTION, on_write);
    SET(CURLOPT_WRITEDATA, (void *)x);
    SET(CURLOPT_HTTPHEADER, x->req_headers);
    if (kind == XFER_REQUEST)
        SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)o->max_size);
    SET(CURLOPT_SSL_VERIFYPEER, o->insecure ? 0L : 1L);
    SET(CURLOPT_SSL_VERIFYHOST, o->insecure ? 0L : 2L);
    if (o->ca_file)
        SET(CURLOPT_CAINFO, o->ca_file);
    if (o->client_cert)
        SET(CURLOPT_SSLCERT, o->client_cert);
    if (o->client_key)
        SET(CURLOPT_SSLKEY, o->client_key);
#undef SET
    if (rc == CURLE_OK && o->ca_pem)
        set_blob(e, CURLOPT_CAINFO_BLOB, o->ca_pem, o->ca_pem_len);
    if (rc == CURLE_OK && o->client_cert_pem) {
        set_blob(e, CURLOPT_SSLCERT_BLOB, o->client_cert_pem, o->client_cert_pem_len);
        rc = curl_easy_setopt(e, CURLOPT_SSLCERTTYPE, "PEM");
    }
    if (rc == CURLE_OK && o->client_key_pem) {
        set_blob(e, CURLOPT_SSLKEY_BLOB, o->client_key_pem, o->client_key_pem_len);
        rc = curl_easy_setopt(e, CURLOPT_SSLKEYTYPE, "PEM");
    }
    /* method and body */
    const char *method = o->method;
    bool body_method = strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 || strcmp(method, "PATCH") == 0;
    if (rc == CURLE_OK && strcmp(method, "HEAD") == 0) {
        rc = curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    } else if (rc == CURLE_OK && x->in != NULL) {
        /* body_file: libcurl reads the file as it sends (the default read
         * callback is fread on READDATA), with its size as Content-Length */
        rc = curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
        if (rc == CURLE_OK)
            rc = curl_easy_setopt(e, CURLOPT_READDATA, (void *)x->in);
        if (rc == CURLE_OK)
            rc = curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, in_size);
        if (rc == CURLE_OK)
            rc = curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    } else if (rc == CURLE_OK && (o->body != NULL || body_method)) {
        /* POST, PUT and PATCH always send a body (Content-Length: 0 when none) */
        rc = curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(o->body ? o->body_len : 0));
        if (rc == CURLE_OK)
            rc = curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, o->body ? o->body : "");
        if (rc == CURLE_OK && strcmp(method, "POST") != 0)
            rc = curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    } else if (rc == CURLE_OK && strcmp(method, "GET") != 0) {
        rc = curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    }
    if (rc != CURLE_OK) {
        snprintf(err, errlen, "%s", curl_easy_strerror(rc));
        xfer_free(x);
        return NULL;
    }
    if (o->insecure)
        warn_insecure();
    CURLMcode mc = curl_multi_add_handle(m->multi, e);
    if (mc != CURLM_OK) {
        snprintf(err, errlen, "%s", curl_multi_strerror(mc));
        xfer_free(x);
        return NULL;
    }
    x->attached = true;
    return x;
}

/* ---- Lua API ---- */

static http_xfer_t *start_from_lua(lua_State *L, const char *fn, xfer_kind_t kind)
{
    http_opts_t o;
    parse_opts(L, fn, &o);
    devex_task_check(L, fn);
    http_multi_t *m = multi_get(o.max_host_connections);
    if (m == NULL)
        luaL_error(L, "%s: cannot set up libcurl on this thread", fn);
    char err[256];
    http_xfer_t *x = xfer_start(L, m, &o, kind, err, sizeof(err));
    if (x == NULL)
        luaL_error(L, "%s: %s", fn, err);
    return x;
}

/* See http.h. Owns easy and arg from the call on, errors included. */
int devex_http_perform(lua_State *L, const char *fn, CURL *easy, void (*release)(void *), void *arg)
{
    http_multi_t *m = multi_get(0);
    http_xfer_t *x = m ? calloc(1, sizeof(*x)) : NULL;
    if (x == NULL) {
        curl_easy_cleanup(easy);
        if (release)
            release(arg);
        return luaL_error(L, "%s: %s", fn, m ? "out of memory" : "cannot set up libcurl on this thread");
    }
    x->m = m;
    x->kind = XFER_EASY;
    x->easy = easy;
    x->release = release;
    x->release_arg = arg;
    x->op.cancel = xfer_cancel;
    CURLcode rc = curl_easy_setopt(easy, CURLOPT_PRIVATE, (void *)x);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, x->errbuf);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(easy, CURLOPT_QUICK_EXIT, 1L);
    if (rc != CURLE_OK) {
        xfer_free(x);
        return luaL_error(L, "%s: %s", fn, curl_easy_strerror(rc));
    }
    CURLMcode mc = curl_multi_add_handle(m->multi, easy);
    if (mc != CURLM_OK) {
        xfer_free(x);
        return luaL_error(L, "%s: %s", fn, curl_multi_strerror(mc));
    }
    x->attached = true;
    x->wait = WAIT_REQUEST;
    return devex_task_yield(L, &x->op);
}

static int l_request(lua_State *L)
{
    http_xfer_t *x = start_from_lua(L, "http.request", XFER_REQUEST);
    x->wait = WAIT_REQUEST;
    return devex_task_yield(L, &x->op);
}

static int l_stream(lua_State *L)
{
    http_xfer_t *x = start_from_lua(L, "http.stream", XFER_STREAM);
    x->wait = WAIT_OPEN;
    return devex_task_yield(L, &x->op);
}

static stream_ud_t *check_stream(lua_State *L)
{
    return luaL_checkudata(L, 1, STREAM_MT);
}

static int l_read_line(lua_State *L)
{
    stream_ud_t *ud = check_stream(L);
    http_xfer_t *x = ud->x;
    if (x == NULL || x->closed)
        return luaL_error(L, "stream:read_line: the stream is closed");
    if (x->wait != WAIT_NONE)
        return luaL_error(L, "stream:read_line: another task is already reading this stream");
    int n = stream_take(L, x);
    if (n > 0)
        return n;
    devex_task_check(L, "stream:read_line");
    x->wait = WAIT_READ;
    return devex_task_yield(L, &x->op);
}

static int l_close(lua_State *L)
{
    stream_ud_t *ud = check_stream(L);
    http_xfer_t *x = ud->x;
    if (x == NULL || x->closed)
        return 0;
    x->closed = true;
    xfer_stop(x);
    devex_buf_free(&x->body);
    x->rpos = x->scan = 0;
    if (x->wait == WAIT_READ)
        wake_queue(x); /* another task parked in read_line gets nil, cancelled */
    return 0;
}

static int l_gc(lua_State *L)
{
    stream_ud_t *ud = check_stream(L);
    http_xfer_t *x = ud->x;
    if (x == NULL)
        return 0;
    ud->x = NULL;
    x->has_ud = false;
    if (x->wait == WAIT_NONE) {
        xfer_free(x);
    } else {
        /* cannot happen while a reader holds the stream on its stack; stop
         * the transfer and let the wake or cancel free it */
        x->closed = true;
        xfer_stop(x);
    }
    return 0;
}

static int l_stream_index(lua_State *L)
{
    check_stream(L);
    lua_pushvalue(L, 2);
    if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL)
        return 1;
    lua_pop(L, 1);
    if (lua_getiuservalue(L, 1, 1) != LUA_TTABLE)
        return 0;
    lua_pushvalue(L, 2);
    lua_rawget(L, -2);
    return 1;
}

static int l_stream_tostring(lua_State *L)
{
    stream_ud_t *ud = check_stream(L);
    lua_pushfstring(L, "devex.http.stream (%s)", ud->x == NULL || ud->x->closed ? "closed" : "open");
    return 1;
}

int luaopen_devex_http(lua_State *L)
{
    if (luaL_newmetatable(L, STREAM_MT)) {
        static const luaL_Reg methods[] = {{"read_line", l_read_line}, {"close", l_close}, {NULL, NULL}};
        luaL_newlib(L, methods);
        lua_pushcclosure(L, l_stream_index, 1);
        lua_setfield(L, -2, "__index");
        static const luaL_Reg meta[] = {
            {"__gc", l_gc}, {"__close", l_close}, {"__tostring", l_stream_tostring}, {NULL, NULL}};
        luaL_setfuncs(L, meta, 0);
    }
    lua_pop(L, 1);
    static const luaL_Reg fns[] = {{"request", l_request}, {"stream", l_stream}, {NULL, NULL}};
    luaL_newlib(L, fns);
    return 1;
}
