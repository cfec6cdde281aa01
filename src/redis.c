/*
 * redis.c: devex.redis, asynchronous hiredis on the worker's libuv loop
 * (hiredis's own libuv adapter). One multiplexed connection per worker and
 * URL, shared by every task of that worker and by every VM across reloads.
 *
 * Availability rules: a command issued while the connection is down fails at
 * once with code "unavailable" (it never waits for a reconnect); commands
 * issued while a connection attempt is under way are queued by hiredis and
 * fail the same way if the attempt fails. A background timer reconnects with
 * exponential backoff and jitter. hiredis 0.14 has no command timeout, so a
 * per-connection tick resolves overdue commands with "timeout"; their late
 * replies are then dropped (the op is freed only once hiredis is done with it).
 *
 * Sentinel (redis+sentinel://): the address of the primary is not in the
 * URL. Each connection attempt first asks the sentinels for it (one short
 * connection each, in turn), then checks with ROLE that the server named is
 * the primary; a READONLY reply, or +switch-master on the sentinel this
 * connection subscribes to, sends it back to the sentinels.
 */
#include "devex.h"
#include "errors.h"
#include "json.h"
#include "log.h"
#include "redis.h"
#include "metrics.h"
#include "redis_uv.h"
#include "redis_tls.h"
#include "textutil.h"

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REDIS_DEFAULT_TIMEOUT_MS 5000
#define REDIS_CONNECT_TIMEOUT_MS 2000
#define REDIS_BACKOFF_MIN_MS 50
#define REDIS_BACKOFF_MAX_MS 2000
#define REDIS_MAX_SENTINELS 8
#define REDIS_SENTINEL_TIMEOUT_MS 1000 /* per sentinel: a dead one must not hold up the next */

typedef struct rcmd rcmd_t;

typedef enum { CONN_DOWN = 0, CONN_CONNECTING, CONN_READY } conn_state_t;

typedef struct {
    char host[256];
    int port;
} redis_sentinel_t;

typedef struct rconn {
    char *url;
    char host[256];
    int port;
    char unix_path[256];
    char user[128];
    char password[256];
    int db;
    /* rediss://: TLS through a bridge (redis_tls.c); the bridge of the
     * current connection, and why it ended, for the disconnect's message */
    int tls;
    SSL_CTX *ssl_ctx;
    devex_redis_tls_t *tls_conn;
    char tls_error[256];
    /* redis+sentinel://: host and port above are the primary the sentinels
     * named last; each (re)connect asks them again, one after the other
     * from sq_first (sq_idx: how many were asked), each on its own
     * short-lived connection (sac), and the primary's ROLE is checked before
     * the connection counts as ready. sq_first is the sentinel that answered
     * last, or the one after it when its answer was not the primary (a
     * sentinel that has not seen the failover must not be asked first again) */
    int sentinel;
    int nsentinels;
    redis_sentinel_t sentinels[REDIS_MAX_SENTINELS];
    char master_name[128];
    int sq_first, sq_idx, sq_answered;
    /* a subscription to +switch-master on one sentinel (the one that
     * answered last, another after a failure): a failover is followed when
     * announced, not only when the old primary fails a command; without it
     * a primary that was demoted but lives would serve stale reads until a
     * write came back READONLY */
    redisAsyncContext *wac;
    int watch_ok;
    uint64_t watch_started_ns, watch_next_ns;
    redisAsyncContext *sac;
    uint64_t sq_started_ns;
    char sq_error[640];    /* why the last sentinel asked gave no primary */
    char logged_error[320]; /* sentinel failures are logged once per distinct reason */
    int role_unchecked_logged;
    redisAsyncContext *ac;
    conn_state_t state;
    uint64_t connect_started_ns;
    uv_timer_t retry_timer;
    uv_timer_t tick;
    unsigned backoff_ms;
    uint64_t next_attempt_ns;
    rcmd_t *pending; /* commands with a deadline, for timeouts */
    struct rwait *waiters; /* tasks waiting for the connection attempt to end */
    uv_timer_t wake_timer; /* wakes the waiters outside hiredis's callbacks */
    char last_error[320]; /* "redis: " and a tls_error fit */
    struct rconn *next;
} rconn_t;

struct rcmd {
    devex_op_t op;
    rconn_t *conn;
    uint64_t deadline_ns;
    int total;     /* commands in this op (pipeline) */
    int remaining; /* replies still expected from hiredis */
    int failed;    /* a NULL reply (connection lost) was seen */
    int base;      /* stack top of the coroutine before results were pushed */
    int pipeline;  /* results go in a table */
    /* for scripts: EVAL is retried once on NOSCRIPT */
    char *script;
    size_t script_len;
    int script_argc;
    char **script_argv;
    size_t *script_argvlen;
    rcmd_t *prev, *next; /* conn->pending */
    char mcmd[24];       /* metrics: the command's label (EVAL, PIPELINE or the command name) */
    uint64_t mstart_ns;  /* metrics: when it was sent */
    int in_pending;
};

/* A task that issued a command while the connection was being made waits
 * (up to its timeout) for the attempt to end, then its command starts over. */
typedef struct rwait {
    devex_op_t op;
    rconn_t *conn;
    uint64_t deadline_ns;
    struct rwait *prev, *next;
} rwait_t;

static _Thread_local rconn_t *conns;

static void waiter_unlink(rwait_t *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else
        w->conn->waiters = w->next;
    if (w->next)
        w->next->prev = w->prev;
    w->prev = w->next = NULL;
}

static void waiter_cancel(devex_op_t *op)
{
    rwait_t *w = (rwait_t *)op;
    waiter_unlink(w);
    free(w);
}

/* Resumes every waiter (or only the overdue ones); each retries its command. */
static void wake_waiters(rconn_t *c, int only_overdue, uint64_t now)
{
    rwait_t *w = c->waiters;
    while (w) {
        rwait_t *next = w->next;
        if (!only_overdue || now >= w->deadline_ns) {
            waiter_unlink(w);
            devex_task_resume(&w->op, 0);
            free(w);
        }
        w = next;
    }
}

static void on_wake(uv_timer_t *h)
{
    wake_waiters(h->data, 0, 0);
}

/* The connection attempt ended (ready or failed): wake the waiters soon. */
static void attempt_ended(rconn_t *c)
{
    if (c->waiters)
        uv_timer_start(&c->wake_timer, on_wake, 0, 0);
}

/* ---- URL ---- */

static int pct_decode(const char *s, size_t n, char *out, size_t outlen)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%') {
            if (i + 2 >= n)
                return -1;
            int h = devex_hex_value(s[i + 1]), l = devex_hex_value(s[i + 2]);
            if (h < 0 || l < 0)
                return -1;
            c = (char)(h * 16 + l);
            i += 2;
        }
        if (o + 1 >= outlen)
            return -1;
        out[o++] = c;
    }
    out[o] = '\0';
    return 0;
}

/* Reads host[:port] (or [v6]:port) of n bytes at p; port stays as it is
 * when the text names none. */
static int parse_hostport(const char *p, size_t n, char *host, size_t hostsz, int *port, char *err, size_t errlen)
{
    const char *colon = NULL;
    if (n > 0 && p[0] == '[') {
        const char *close = memchr(p, ']', n);
        if (!close) {
            snprintf(err, errlen, "invalid IPv6 host in redis URL");
            return -1;
        }
        size_t hn = (size_t)(close - p - 1);
        if (hn == 0 || hn >= hostsz) {
            snprintf(err, errlen, "invalid IPv6 host in redis URL");
            return -1;
        }
        memcpy(host, p + 1, hn);
        host[hn] = '\0';
        if (close + 1 < p + n) {
            if (close[1] != ':') {
                snprintf(err, errlen, "invalid IPv6 host in redis URL");
                return -1;
            }
            colon = close + 1;
        }
    } else {
        colon = memchr(p, ':', n);
        size_t hn = colon ? (size_t)(colon - p) : n;
        if (hn == 0 || hn >= hostsz) {
            snprintf(err, errlen, "missing host in redis URL");
            return -1;
        }
        memcpy(host, p, hn);
        host[hn] = '\0';
    }
    if (colon) {
        char *end;
        long v = strtol(colon + 1, &end, 10);
        if (end == colon + 1 || end != p + n || v < 1 || v > 65535) {
            snprintf(err, errlen, "invalid port in redis URL");
            return -1;
        }
        *port = (int)v;
    }
    return 0;
}

/* The sentinel form's path: /master_name[/db]. A Sentinel master name is a
 * plain word; anything else is more likely a mistake than a name. */
static int parse_sentinel_path(rconn_t *c, const char *slash, char *err, size_t errlen)
{
    if (!slash || slash[1] == '\0' || slash[1] == '/') {
        snprintf(err, errlen, "redis+sentinel URL needs the master name: redis+sentinel://host:port,.../mymaster[/db]");
        return -1;
    }
    const char *name = slash + 1;
    const char *end = strchr(name, '/');
    size_t n = end ? (size_t)(end - name) : strlen(name);
    if (n >= sizeof(c->master_name) || strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") < n) {
        snprintf(err, errlen, "invalid master name in redis+sentinel URL (letters, digits, '.', '_', '-')");
        return -1;
    }
    memcpy(c->master_name, name, n);
    c->master_name[n] = '\0';
    if (end && end[1] != '\0') {
        char *e;
        long db = strtol(end + 1, &e, 10);
        if (*e != '\0' || e == end + 1 || db < 0 || db > 1000000) {
            snprintf(err, errlen, "invalid database number in redis URL");
            return -1;
        }
        c->db = (int)db;
    }
    return 0;
}

/* Parses redis://[user:password@]host[:port][/db] (rediss:// the same, over
 * TLS), unix:///path[?db=N], a bare /path to a socket, or
 * redis+sentinel://[user:password@]host[:port][,host[:port]...]/master[/db]:
 * the sentinels to ask for the primary named master (port 26379 by
 * default); the credentials and db are the primary's. Returns 0 or -1 with
 * err. */
static int parse_url(rconn_t *c, const char *url, char *err, size_t errlen)
{
    snprintf(err, errlen, "invalid redis URL"); /* for any path below that sets no message */
    c->port = 6379;
    c->db = 0;
    if (url[0] == '/' || strncmp(url, "unix://", 7) == 0) {
        const char *p = url[0] == '/' ? url : url + 7;
        const char *q = strchr(p, '?');
        size_t n = q ? (size_t)(q - p) : strlen(p);
        if (n == 0 || n >= sizeof(c->unix_path) || p[0] != '/') {
            snprintf(err, errlen, "invalid redis unix socket path");
            return -1;
        }
        memcpy(c->unix_path, p, n);
        c->unix_path[n] = '\0';
        if (q && strncmp(q, "?db=", 4) == 0)
            c->db = atoi(q + 4);
        return 0;
    }
    size_t skip;
    if (strncmp(url, "rediss://", 9) == 0) {
        c->tls = 1;
        skip = 9;
    } else if (strncmp(url, "redis://", 8) == 0) {
        skip = 8;
    } else if (strncmp(url, "redis+sentinel://", 17) == 0) {
        c->sentinel = 1;
        skip = 17;
    } else if (strncmp(url, "rediss+sentinel://", 18) == 0) {
        /* the sentinels' answers and the primary would each need TLS and
         * names to verify against; not built */
        snprintf(err, errlen, "redis: Sentinel over TLS (rediss+sentinel://) is not supported");
        return -1;
    } else {
        snprintf(err, errlen, "redis URL must start with redis://, rediss://, redis+sentinel:// or unix://");
        return -1;
    }
    const char *p = url + skip;
    const char *at = strrchr(p, '@');
    const char *slash = strchr(at ? at : p, '/');
    if (at && (!slash || at < slash)) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (colon) {
            if (pct_decode(p, (size_t)(colon - p), c->user, sizeof(c->user)) != 0 ||
                pct_decode(colon + 1, (size_t)(at - colon - 1), c->password, sizeof(c->password)) != 0) {
                snprintf(err, errlen, "invalid credentials in redis URL");
                return -1;
            }
        } else if (pct_decode(p, (size_t)(at - p), c->password, sizeof(c->password)) != 0) {
            snprintf(err, errlen, "invalid credentials in redis URL");
            return -1;
        }
        p = at + 1;
    }
    size_t hostlen = slash ? (size_t)(slash - p) : strlen(p);
    if (c->sentinel) {
        const char *end = p + hostlen;
        while (p < end) {
            const char *comma = memchr(p, ',', (size_t)(end - p));
            size_t n = comma ? (size_t)(comma - p) : (size_t)(end - p);
            if (c->nsentinels == REDIS_MAX_SENTINELS) {
                snprintf(err, errlen, "redis+sentinel URL: at most %d sentinels", REDIS_MAX_SENTINELS);
                return -1;
            }
            redis_sentinel_t *s = &c->sentinels[c->nsentinels];
            s->port = 26379;
            if (parse_hostport(p, n, s->host, sizeof(s->host), &s->port, err, errlen) != 0)
                return -1;
            c->nsentinels++;
            p = comma ? comma + 1 : end;
            if (comma && p == end) {
                snprintf(err, errlen, "missing host in redis URL");
                return -1;
            }
        }
        if (c->nsentinels == 0) {
            snprintf(err, errlen, "missing host in redis URL");
            return -1;
        }
        return parse_sentinel_path(c, slash, err, errlen);
    }
    if (parse_hostport(p, hostlen, c->host, sizeof(c->host), &c->port, err, errlen) != 0)
        return -1;
    if (slash && slash[1] != '\0') {
        char *end;
        long db = strtol(slash + 1, &end, 10);
        if (*end != '\0' || db < 0 || db > 1000000) {
            snprintf(err, errlen, "invalid database number in redis URL");
            return -1;
        }
        c->db = (int)db;
    }
    return 0;
}

/* ---- pending list ---- */

static void pending_add(rconn_t *c, rcmd_t *cmd)
{
    cmd->prev = NULL;
    cmd->next = c->pending;
    if (c->pending)
        c->pending->prev = cmd;
    c->pending = cmd;
    cmd->in_pending = 1;
}

static void pending_remove(rcmd_t *cmd)
{
    if (!cmd->in_pending)
        return;
    if (cmd->prev)
        cmd->prev->next = cmd->next;
    else
        cmd->conn->pending = cmd->next;
    if (cmd->next)
        cmd->next->prev = cmd->prev;
    cmd->in_pending = 0;
}

static void cmd_free(rcmd_t *cmd)
{
    if (cmd->script_argv) {
        for (int i = 0; i < cmd->script_argc; i++)
            free(cmd->script_argv[i]);
        free(cmd->script_argv);
        free(cmd->script_argvlen);
    }
    free(cmd->script);
    free(cmd);
}

/* ---- replies ---- */

static void push_reply(lua_State *L, const redisReply *r, int depth)
{
    luaL_checkstack(L, 4, "redis reply too deep");
    switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
        lua_pushlstring(L, r->str, r->len);
        break;
    case REDIS_REPLY_INTEGER:
        lua_pushinteger(L, (lua_Integer)r->integer);
        break;
    case REDIS_REPLY_NIL:
        devex_json_push_null(L);
        break;
    case REDIS_REPLY_ERROR:
        devex_push_error(L, "redis", r->str, 0);
        break;
    case REDIS_REPLY_ARRAY:
        lua_createtable(L, (int)r->elements, 0);
        devex_json_mark_array(L, -1);
        for (size_t i = 0; i < r->elements; i++) {
            if (depth > 32)
                lua_pushnil(L);
            else
                push_reply(L, r->element[i], depth + 1);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        break;
    default:
        lua_pushnil(L);
    }
}

/* metrics: one command answered or failed */
static void cmd_metric(const rcmd_t *cmd, int ok, const char *code)
{
    devex_metrics_redis(cmd->mcmd, ok, code, (double)(devex_now_ns() - cmd->mstart_ns) / 1e9);
}

static void cmd_fail(rcmd_t *cmd, const char *code, const char *msg)
{
    cmd_metric(cmd, 0, code);
    lua_State *co = devex_op_thread(&cmd->op);
    lua_settop(co, cmd->base);
    pending_remove(cmd);
    devex_push_fail(co, code, msg, 0);
    devex_task_resume(&cmd->op, 2);
}

static void send_script_fallback(rcmd_t *cmd);
static void set_error(struct rconn *c, const char *msg);

/* A write refused because the server is a replica (Redis answers READONLY,
 * from a script too). */
static int is_readonly(const redisReply *r)
{
    return r->type == REDIS_REPLY_ERROR && r->len >= 8 && strncmp(r->str, "READONLY", 8) == 0;
}

/* The primary of a sentinel connection answered READONLY: drop the
 * connection; the reconnect asks the sentinels for the new primary. */
static void primary_demoted(rconn_t *c, redisAsyncContext *ac)
{
    if (c->ac != ac || (ac->c.flags & REDIS_DISCONNECTING))
        return;
    char msg[400];
    snprintf(msg, sizeof(msg), "%s:%d is no longer the primary (READONLY); asking the sentinels again", c->host,
             c->port);
    set_error(c, msg);
    devex_logf(DEVEX_LOG_WARN, "redis: %s", msg);
    /* the sentinel that named it is asked last next time (as role_ok does): a
     * stale one asked first again would name the same replica in a loop when
     * ROLE cannot be checked */
    if (c->nsentinels > 0)
        c->sq_first = (c->sq_first + 1) % c->nsentinels;
    redisAsyncDisconnect(ac);
}

static void on_reply(redisAsyncContext *ac, void *r_, void *privdata)
{
    rcmd_t *cmd = privdata;
    redisReply *r = r_;
    cmd->remaining--;
    if (r != NULL && is_readonly(r) && cmd->conn->sentinel) {
        /* the primary was made a replica (a failover it survived): the
         * command fails as "unavailable", like one cut off by a disconnect */
        primary_demoted(cmd->conn, ac);
        if (cmd->pipeline)
            cmd->failed = 1;
        else
            r = NULL;
    }
    if (cmd->op.task != NULL) {
        if (r == NULL) {
            cmd_fail(cmd, "unavailable", cmd->conn->last_error[0] ? cmd->conn->last_error : "redis connection lost");
        } else if (cmd->script && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0 &&
                   cmd->remaining == 0) {
            free(cmd->script_argv[0]);
            cmd->script_argv[0] = strdup("EVAL");
            cmd->script_argvlen[0] = 4;
            free(cmd->script_argv[1]);
            cmd->script_argv[1] = cmd->script;
            cmd->script_argvlen[1] = cmd->script_len;
            cmd->script = NULL; /* now owned by argv; retried once only */
            send_script_fallback(cmd);
            return;
        } else {
            lua_State *co = devex_op_thread(&cmd->op);
            if (cmd->pipeline) {
                push_reply(co, r, 0);
                lua_rawseti(co, cmd->base + 1, cmd->total - cmd->remaining);
                if (cmd->remaining == 0 && cmd->failed) {
                    cmd_fail(cmd, "unavailable", "redis: connection lost during the pipeline");
                } else if (cmd->remaining == 0) {
                    cmd_metric(cmd, 1, NULL);
                    pending_remove(cmd);
                    devex_task_resume(&cmd->op, 1);
                }
            } else if (r->type == REDIS_REPLY_ERROR) {
                cmd_metric(cmd, 0, "reply");
                pending_remove(cmd);
                lua_pushnil(co);
                push_reply(co, r, 0);
                devex_task_resume(&cmd->op, 2);
            } else {
                cmd_metric(cmd, 1, NULL);
                pending_remove(cmd);
                push_reply(co, r, 0);
                devex_task_resume(&cmd->op, 1);
            }
        }
    }
    if (cmd->remaining == 0) {
        pending_remove(cmd);
        cmd_free(cmd);
    }
}

/* ---- connection ---- */

static void conn_connect(rconn_t *c);

static void on_retry(uv_timer_t *h)
{
    conn_connect(h->data);
}

static void schedule_retry(rconn_t *c)
{
    unsigned ms = c->backoff_ms ? c->backoff_ms : REDIS_BACKOFF_MIN_MS;
    unsigned jitter = (unsigned)(rand() % (int)(ms / 2 + 1));
    c->backoff_ms = ms * 2 > REDIS_BACKOFF_MAX_MS ? REDIS_BACKOFF_MAX_MS : ms * 2;
    uv_timer_start(&c->retry_timer, on_retry, ms + jitter, 0);
}

static void set_error(rconn_t *c, const char *msg)
{
    /* the precision says how a long message is cut (GCC warns otherwise) */
    snprintf(c->last_error, sizeof(c->last_error), "redis: %.*s", (int)sizeof(c->last_error) - 8, msg);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    rconn_t *c = ac->data;
    if (c == NULL)
        return;
    if (c->tls_error[0]) /* the TLS bridge ended it: its reason is the real one */
        set_error(c, c->tls_error);
    else if (status != REDIS_OK)
        set_error(c, ac->errstr[0] ? ac->errstr : "connection lost");
    else if (!c->last_error[0])
        set_error(c, "disconnected");
    int was_ready = c->state == CONN_READY;
    c->ac = NULL;
    c->state = CONN_DOWN;
    attempt_ended(c);
    if (was_ready)
        devex_logf(DEVEX_LOG_WARN, "redis connection lost, reconnecting: %s", c->last_error);
    schedule_retry(c);
}

/* privdata of the handshake's commands: NULL, or the last one (LAST, or
 * ROLE, which a sentinel connection sends last) */
#define HS_LAST ((void *)1)
#define HS_ROLE ((void *)2)

/* The ROLE reply of the server a sentinel named: 1 when it is the primary.
 * Else the connection is dropped and the reconnect asks the sentinels again
 * (an answer from a sentinel that has not seen the failover yet must not
 * send writes to a replica). An ACL user without ROLE (it is in @dangerous)
 * cannot check: the connection is used, and a write to a replica still
 * comes back as READONLY, which makes devexd ask again. */
static int role_ok(rconn_t *c, redisAsyncContext *ac, const redisReply *r)
{
    if (r->type == REDIS_REPLY_ERROR) {
        if (!c->role_unchecked_logged)
            devex_logf(DEVEX_LOG_WARN,
                       "redis: cannot check that %s:%d is the primary (ROLE: %s); allow +role to the ACL user",
                       c->host, c->port, r->str);
        c->role_unchecked_logged = 1;
        return 1;
    }
    if (r->type == REDIS_REPLY_ARRAY && r->elements >= 1 && r->element[0]->type == REDIS_REPLY_STRING &&
        strcmp(r->element[0]->str, "master") == 0)
        return 1;
    char msg[1024];
    snprintf(msg, sizeof(msg), "%s:%d, named by the sentinels as the primary of '%s', is a %s; asking again",
             c->host, c->port, c->master_name,
             r->type == REDIS_REPLY_ARRAY && r->elements >= 1 && r->element[0]->type == REDIS_REPLY_STRING
                 ? r->element[0]->str
                 : "server of unknown role");
    set_error(c, msg);
    devex_logf(DEVEX_LOG_WARN, "redis: %s", msg);
    c->sq_first = (c->sq_first + 1) % c->nsentinels; /* the sentinel that named it: last next time */
    redisAsyncDisconnect(ac);
    return 0;
}

static void on_handshake(redisAsyncContext *ac, void *r_, void *privdata)
{
    rconn_t *c = ac->data;
    redisReply *r = r_;
    if (c == NULL || r == NULL || (ac->c.flags & REDIS_DISCONNECTING)) /* keep the first handshake error */
        return;
    if (r->type == REDIS_REPLY_ERROR && privdata != HS_ROLE) {
        set_error(c, r->str);
        devex_logf(DEVEX_LOG_ERROR, "redis handshake failed: %s", r->str);
        redisAsyncDisconnect(ac);
        return;
    }
    if (privdata == HS_ROLE && !role_ok(c, ac, r))
        return;
    if (privdata != NULL) { /* the last handshake command */
        if (c->sentinel && c->last_error[0])
            devex_logf(DEVEX_LOG_INFO, "redis: connected to the primary %s:%d of '%s'", c->host, c->port,
                       c->master_name);
        c->state = CONN_READY;
        c->backoff_ms = 0;
        c->last_error[0] = '\0';
        attempt_ended(c);
    }
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    rconn_t *c = ac->data;
    if (c == NULL)
        return;
    if (status != REDIS_OK) {
        set_error(c, c->tls_error[0] ? c->tls_error : ac->errstr[0] ? ac->errstr : "connect failed");
        c->ac = NULL; /* hiredis frees the context after this callback */
        c->state = CONN_DOWN;
        schedule_retry(c);
        attempt_ended(c);
        return;
    }
    /* AUTH and SELECT were queued first, so they run before any command */
    if (c->state == CONN_CONNECTING && !c->password[0] && c->db == 0 && !c->sentinel) {
        c->state = CONN_READY;
        c->backoff_ms = 0;
        c->last_error[0] = '\0';
        attempt_ended(c);
    }
}

static void conn_start(rconn_t *c, redisAsyncContext *ac);

/* A TLS connection attempt failed before hiredis had it. */
static void tls_attempt_failed(rconn_t *c, const char *msg)
{
    set_error(c, msg);
    /* once per distinct reason, not at every retry */
    if (strcmp(c->tls_error, msg) != 0)
        devex_logf(DEVEX_LOG_ERROR, "redis TLS connection failed: %s", msg);
    snprintf(c->tls_error, sizeof(c->tls_error), "%s", msg);
    c->state = CONN_DOWN;
    schedule_retry(c);
    attempt_ended(c);
}

static void on_tls_event(void *arg, devex_redis_tls_t *t, devex_redis_tls_event_t ev, const char *err)
{
    rconn_t *c = arg;
    if (c->tls_conn != t)
        return;
    if (ev == DEVEX_RTLS_READY) {
        char msg[256];
        redisAsyncContext *ac = devex_redis_tls_hiredis(t, msg, sizeof(msg));
        if (ac == NULL) {
            c->tls_conn = NULL;
            tls_attempt_failed(c, msg);
            return;
        }
        c->tls_error[0] = '\0';
        conn_start(c, ac);
        return;
    }
    c->tls_conn = NULL; /* the bridge is gone */
    if (c->ac == NULL && c->state == CONN_CONNECTING)
        tls_attempt_failed(c, err ? err : "TLS connection closed");
    else if (c->ac != NULL && err != NULL) {
        /* hiredis sees only the end of its socket: keep the reason for on_disconnect */
        snprintf(c->tls_error, sizeof(c->tls_error), "%s", err);
        devex_logf(DEVEX_LOG_WARN, "redis TLS connection ended: %s", err);
    }
}

/* ---- Sentinel ---- */

static void sentinel_ask(rconn_t *c);

/* The sentinel being asked gave no primary (why): ask the next one. */
static void sentinel_next(rconn_t *c, const char *why)
{
    const redis_sentinel_t *s = &c->sentinels[(c->sq_first + c->sq_idx) % c->nsentinels];
    snprintf(c->sq_error, sizeof(c->sq_error), "sentinel %s:%d: %s", s->host, s->port, why);
    c->sq_idx++;
    sentinel_ask(c);
}

/* Ends the query connection without calling back into the query. */
static void sentinel_drop(rconn_t *c, int free_now)
{
    redisAsyncContext *ac = c->sac;
    if (ac == NULL)
        return;
    c->sac = NULL;
    ac->data = NULL;
    if (free_now)
        redisAsyncFree(ac); /* calls the pending reply callback with NULL, which ignores it */
    else
        redisAsyncDisconnect(ac); /* from one of its callbacks: hiredis frees it after */
}

static void on_sentinel_connect(const redisAsyncContext *ac, int status)
{
    rconn_t *c = ac->data;
    if (c == NULL || c->sac != ac || status == REDIS_OK)
        return;
    c->sac = NULL; /* hiredis frees the context after this callback */
    sentinel_next(c, ac->errstr[0] ? ac->errstr : "connect failed");
}

static void on_sentinel_disconnect(const redisAsyncContext *ac, int status)
{
    (void)status;
    rconn_t *c = ac->data;
    if (c == NULL || c->sac != ac)
        return;
    c->sac = NULL;
    sentinel_next(c, ac->errstr[0] ? ac->errstr : "connection closed");
}

static void on_sentinel_reply(redisAsyncContext *ac, void *r_, void *privdata)
{
    (void)privdata;
    rconn_t *c = ac->data;
    redisReply *r = r_;
    if (c == NULL || c->sac != ac || r == NULL) /* NULL: the disconnect callback follows */
        return;
    char why[300];
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[0]->type == REDIS_REPLY_STRING &&
        r->element[1]->type == REDIS_REPLY_STRING && r->element[0]->len > 0 &&
        r->element[0]->len < sizeof(c->host)) {
        char *end;
        long port = strtol(r->element[1]->str, &end, 10);
        if (*end == '\0' && port >= 1 && port <= 65535) {
            if (strcmp(c->host, r->element[0]->str) != 0 || c->port != (int)port)
                devex_logf(DEVEX_LOG_INFO, "redis: sentinel %s:%d names %s:%ld as the primary of '%s'",
                           c->sentinels[c->sq_answered].host, c->sentinels[c->sq_answered].port,
                           r->element[0]->str, port, c->master_name);
            c->sq_first = c->sq_answered;
            memcpy(c->host, r->element[0]->str, r->element[0]->len + 1);
            c->port = (int)port;
            c->logged_error[0] = '\0';
            sentinel_drop(c, 0);
            conn_start(c, redisAsyncConnect(c->host, c->port));
            return;
        }
    }
    if (r->type == REDIS_REPLY_NIL)
        snprintf(why, sizeof(why), "does not know a primary named '%s'", c->master_name);
    else if (r->type == REDIS_REPLY_ERROR)
        snprintf(why, sizeof(why), "%s", r->str);
    else
        snprintf(why, sizeof(why), "unexpected answer to SENTINEL get-master-addr-by-name");
    sentinel_drop(c, 0);
    sentinel_next(c, why);
}

/* ---- +switch-master ---- */

#define REDIS_WATCH_RETRY_MS 1000

static void watch_drop(rconn_t *c, int free_now)
{
    redisAsyncContext *ac = c->wac;
    if (ac == NULL)
        return;
    c->wac = NULL;
    c->watch_ok = 0;
    ac->data = NULL;
    if (free_now)
        redisAsyncFree(ac);
    else
        redisAsyncDisconnect(ac);
    /* the next attempt on another sentinel, a moment later */
    c->sq_first = (c->sq_first + 1) % c->nsentinels;
    c->watch_next_ns = devex_now_ns() + REDIS_WATCH_RETRY_MS * 1000000ull;
}

static void on_watch_connect(const redisAsyncContext *ac, int status)
{
    rconn_t *c = ac->data;
    if (c == NULL || c->wac != ac || status == REDIS_OK)
        return;
    c->wac = NULL; /* hiredis frees it after this callback */
    c->watch_ok = 0;
    c->sq_first = (c->sq_first + 1) % c->nsentinels;
    c->watch_next_ns = devex_now_ns() + REDIS_WATCH_RETRY_MS * 1000000ull;
}

static void on_watch_disconnect(const redisAsyncContext *ac, int status)
{
    on_watch_connect(ac, status == REDIS_OK ? REDIS_ERR : status);
}

/* A message on +switch-master: "<name> <old ip> <old port> <new ip> <new port>". */
static void on_watch_message(redisAsyncContext *ac, void *r_, void *privdata)
{
    (void)privdata;
    rconn_t *c = ac->data;
    redisReply *r = r_;
    if (c == NULL || c->wac != ac || r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 3 ||
        r->element[0]->type != REDIS_REPLY_STRING)
        return;
    if (strcmp(r->element[0]->str, "subscribe") == 0) {
        c->watch_ok = 1;
        return;
    }
    if (strcmp(r->element[0]->str, "message") != 0 || r->element[2]->type != REDIS_REPLY_STRING)
        return;
    char name[128], oldip[64], newip[64];
    int oldport, newport;
    if (sscanf(r->element[2]->str, "%127s %63s %d %63s %d", name, oldip, &oldport, newip, &newport) != 5 ||
        strcmp(name, c->master_name) != 0)
        return;
    devex_logf(DEVEX_LOG_INFO, "redis: the sentinels moved the primary of '%s' to %s:%d", name, newip, newport);
    if (c->state == CONN_READY && c->ac && (strcmp(c->host, newip) != 0 || c->port != newport)) {
        /* closed at once, not after its replies (a hung old primary may
         * never send them): its commands fail as unavailable, and the
         * reconnect asks the sentinels */
        char msg[300];
        snprintf(msg, sizeof(msg), "the sentinels moved the primary to %s:%d; reconnecting", newip, newport);
        set_error(c, msg);
        devex_logf(DEVEX_LOG_WARN, "redis: %s", msg);
        redisAsyncContext *old = c->ac;
        old->data = NULL;
        c->ac = NULL;
        c->state = CONN_DOWN;
        redisAsyncFree(old);
        c->backoff_ms = 0;
        schedule_retry(c);
    } else if (c->state == CONN_DOWN) {
        /* waiting out a backoff against the dead primary: ask now */
        uv_timer_stop(&c->retry_timer);
        c->backoff_ms = 0;
        conn_connect(c);
    }
}

/* From the tick: keeps the subscription up (one attempt a second at most). */
static void watch_tick(rconn_t *c, uint64_t now)
{
    if (c->wac) {
        if (!c->watch_ok && now - c->watch_started_ns > REDIS_SENTINEL_TIMEOUT_MS * 1000000ull)
            watch_drop(c, 1);
        return;
    }
    if (now < c->watch_next_ns)
        return;
    const redis_sentinel_t *s = &c->sentinels[c->sq_first];
    redisAsyncContext *ac = redisAsyncConnect(s->host, s->port);
    if (ac == NULL || ac->err || devex_redis_uv_attach(ac, devex_worker_loop(devex_worker_current())) != 0) {
        if (ac)
            redisAsyncFree(ac);
        c->sq_first = (c->sq_first + 1) % c->nsentinels;
        c->watch_next_ns = now + REDIS_WATCH_RETRY_MS * 1000000ull;
        return;
    }
    ac->data = c;
    c->wac = ac;
    c->watch_ok = 0;
    c->watch_started_ns = now;
    redisAsyncSetConnectCallback(ac, on_watch_connect);
    redisAsyncSetDisconnectCallback(ac, on_watch_disconnect);
    if (ac->ev.addWrite)
        ac->ev.addWrite(ac->ev.data);
    const char *argv[2] = {"SUBSCRIBE", "+switch-master"};
    size_t lens[2] = {9, 14};
    redisAsyncCommandArgv(ac, on_watch_message, NULL, 2, argv, lens);
}

/* Asks sentinel sq_idx (then the next ones) for the primary; when none
 * names one, the connection is down until the next retry. */
static void sentinel_ask(rconn_t *c)
{
    while (c->sq_idx < c->nsentinels) {
        c->sq_answered = (c->sq_first + c->sq_idx) % c->nsentinels;
        const redis_sentinel_t *s = &c->sentinels[c->sq_answered];
        redisAsyncContext *ac = redisAsyncConnect(s->host, s->port);
        if (ac == NULL || ac->err) {
            snprintf(c->sq_error, sizeof(c->sq_error), "sentinel %s:%d: %s", s->host, s->port,
                     ac ? ac->errstr : "out of memory");
            if (ac)
                redisAsyncFree(ac);
            c->sq_idx++;
            continue;
        }
        if (devex_redis_uv_attach(ac, devex_worker_loop(devex_worker_current())) != 0) {
            snprintf(c->sq_error, sizeof(c->sq_error), "cannot attach to the event loop");
            redisAsyncFree(ac);
            c->sq_idx++;
            continue;
        }
        ac->data = c;
        c->sac = ac;
        c->sq_started_ns = devex_now_ns();
        redisAsyncSetConnectCallback(ac, on_sentinel_connect);
        redisAsyncSetDisconnectCallback(ac, on_sentinel_disconnect);
        if (ac->ev.addWrite) /* as in conn_start: see the connect end */
            ac->ev.addWrite(ac->ev.data);
        const char *argv[3] = {"SENTINEL", "get-master-addr-by-name", c->master_name};
        size_t lens[3] = {8, 23, strlen(c->master_name)};
        redisAsyncCommandArgv(ac, on_sentinel_reply, NULL, 3, argv, lens);
        return;
    }
    char msg[1024];
    snprintf(msg, sizeof(msg), "no sentinel named the primary of '%s' (%s)", c->master_name, c->sq_error);
    set_error(c, msg);
    if (strcmp(c->logged_error, c->last_error) != 0)
        devex_logf(DEVEX_LOG_ERROR, "%s", c->last_error);
    snprintf(c->logged_error, sizeof(c->logged_error), "%s", c->last_error);
    c->state = CONN_DOWN;
    schedule_retry(c);
    attempt_ended(c);
}

static void conn_connect(rconn_t *c)
{
    if (c->sentinel) {
        c->state = CONN_CONNECTING;
        c->connect_started_ns = devex_now_ns();
        c->sq_idx = 0;
        c->sq_error[0] = '\0';
        sentinel_ask(c);
        return;
    }
    if (c->tls) {
        char err[256];
        c->state = CONN_CONNECTING;
        c->connect_started_ns = devex_now_ns();
        c->tls_conn = devex_redis_tls_start(devex_worker_loop(devex_worker_current()), c->ssl_ctx, c->host, c->port,
                                            on_tls_event, c, err, sizeof(err));
        if (c->tls_conn == NULL)
            tls_attempt_failed(c, err);
        return;
    }
    redisAsyncContext *ac = c->unix_path[0] ? redisAsyncConnectUnix(c->unix_path) : redisAsyncConnect(c->host, c->port);
    conn_start(c, ac);
}

/* Hands a new hiredis context (TCP, Unix socket, or the TLS bridge's local
 * end) its callbacks and the handshake commands. */
static void conn_start(rconn_t *c, redisAsyncContext *ac)
{
    if (ac == NULL || ac->err) {
        set_error(c, ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        c->state = CONN_DOWN;
        schedule_retry(c);
        attempt_ended(c);
        return;
    }
    c->state = CONN_CONNECTING;
    c->connect_started_ns = devex_now_ns();
    if (devex_redis_uv_attach(ac, devex_worker_loop(devex_worker_current())) != 0) {
        set_error(c, "cannot attach to the event loop");
        redisAsyncFree(ac);
        schedule_retry(c);
        return;
    }
    ac->data = c;
    c->ac = ac;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    /* hiredis 0.14 notices the end of a non-blocking connect only in its
     * write handler, which it arms when a command is queued; arm it now so a
     * refused or completed connect is seen even with nothing queued */
    if (ac->ev.addWrite)
        ac->ev.addWrite(ac->ev.data);
    int nhs = (c->password[0] ? 1 : 0) + (c->db ? 1 : 0) + (c->sentinel ? 1 : 0);
    if (c->password[0]) {
        const char *argv[3] = {"AUTH", c->user[0] ? c->user : c->password, c->password};
        size_t lens[3] = {4, strlen(argv[1]), strlen(argv[2])};
        redisAsyncCommandArgv(ac, on_handshake, nhs == 1 ? HS_LAST : NULL, c->user[0] ? 3 : 2, argv, lens);
    }
    if (c->db) {
        char db[16];
        snprintf(db, sizeof(db), "%d", c->db);
        const char *argv[2] = {"SELECT", db};
        size_t lens[2] = {6, strlen(db)};
        redisAsyncCommandArgv(ac, on_handshake, c->sentinel ? NULL : HS_LAST, 2, argv, lens);
    }
    if (c->sentinel) {
        const char *argv[1] = {"ROLE"};
        size_t lens[1] = {4};
        redisAsyncCommandArgv(ac, on_handshake, HS_ROLE, 1, argv, lens);
    }
}

static void on_tick(uv_timer_t *h)
{
    rconn_t *c = h->data;
    uint64_t now = devex_now_ns();
    rcmd_t *cmd = c->pending;
    while (cmd) {
        rcmd_t *next = cmd->next;
        if (cmd->op.task != NULL && now >= cmd->deadline_ns)
            cmd_fail(cmd, "timeout", "redis command timed out");
        cmd = next;
    }
    if (c->state == CONN_CONNECTING && c->tls_conn && !c->ac &&
        now - c->connect_started_ns > REDIS_CONNECT_TIMEOUT_MS * 1000000ull) {
        devex_redis_tls_t *t = c->tls_conn; /* still connecting or in the TLS handshake */
        char msg[400];
        /* a handshake that never ends is typically a plain port (Redis waits
         * for the rest of a "command") */
        snprintf(msg, sizeof(msg), "%s with %s:%d timed out%s", devex_redis_tls_phase(t), c->host, c->port,
                 strcmp(devex_redis_tls_phase(t), "TLS handshake") == 0 ? " (is it Redis's TLS port?)" : "");
        c->tls_conn = NULL;
        devex_redis_tls_close(t);
        tls_attempt_failed(c, msg);
    }
    if (c->state == CONN_CONNECTING && c->ac && now - c->connect_started_ns > REDIS_CONNECT_TIMEOUT_MS * 1000000ull) {
        /* redisAsyncDisconnect would wait for replies that never come */
        redisAsyncContext *ac = c->ac;
        set_error(c, "connect timed out");
        ac->data = NULL;
        c->ac = NULL;
        c->state = CONN_DOWN;
        redisAsyncFree(ac);
        schedule_retry(c);
        attempt_ended(c);
    }
    if (c->sac && now - c->sq_started_ns > REDIS_SENTINEL_TIMEOUT_MS * 1000000ull) {
        sentinel_drop(c, 1);
        sentinel_next(c, "no answer in time");
    }
    if (c->sentinel)
        watch_tick(c, now);
    if (c->waiters)
        wake_waiters(c, 1, now);
}

/* TLS options of redis.connect (all NULL for none). */
typedef struct {
    const char *ca_file, *cert_file, *key_file;
} tls_opts_t;

/* The connection of this worker for url and TLS options (one per distinct
 * pair: the key is the URL followed by the options). */
static rconn_t *conn_get(const char *url, const tls_opts_t *o, char *err, size_t errlen)
{
    char *key = NULL;
    size_t keylen = 0;
    FILE *kf = open_memstream(&key, &keylen);
    if (kf == NULL) {
        snprintf(err, errlen, "redis: out of memory");
        return NULL;
    }
    fprintf(kf, "%s\n%s\n%s\n%s", url, o->ca_file ? o->ca_file : "", o->cert_file ? o->cert_file : "",
            o->key_file ? o->key_file : "");
    fclose(kf);
    for (rconn_t *c = conns; c; c = c->next)
        if (strcmp(c->url, key) == 0) {
            free(key);
            return c;
        }
    devex_worker_t *w = devex_worker_current();
    if (w == NULL) {
        snprintf(err, errlen, "redis: needs a worker thread");
        free(key);
        return NULL;
    }
    rconn_t *c = calloc(1, sizeof(*c));
    if (c == NULL || parse_url(c, url, err, errlen) != 0) {
        free(c);
        free(key);
        return NULL;
    }
    if (!c->tls && (o->ca_file || o->cert_file || o->key_file)) {
        /* a CA given with a plain URL would look like TLS and not be */
        snprintf(err, errlen, "redis: ca_file, cert_file and key_file need a rediss:// URL");
        free(c);
        free(key);
        return NULL;
    }
    if (c->tls && (c->ssl_ctx = devex_redis_tls_ctx(o->ca_file, o->cert_file, o->key_file, err, errlen)) == NULL) {
        free(c);
        free(key);
        return NULL;
    }
    c->url = key;
    uv_timer_init(devex_worker_loop(w), &c->retry_timer);
    c->retry_timer.data = c;
    uv_timer_init(devex_worker_loop(w), &c->tick);
    c->tick.data = c;
    uv_timer_init(devex_worker_loop(w), &c->wake_timer);
    c->wake_timer.data = c;
    uv_unref((uv_handle_t *)&c->wake_timer);
    uv_timer_start(&c->tick, on_tick, 50, 50);
    uv_unref((uv_handle_t *)&c->tick);
    uv_unref((uv_handle_t *)&c->retry_timer);
    c->next = conns;
    conns = c;
    conn_connect(c);
    return c;
}

void devex_redis_thread_cleanup(void)
{
    devex_redis_track_thread_cleanup();
    while (conns) {
        rconn_t *c = conns;
        conns = c->next;
        uv_timer_stop(&c->retry_timer);
        uv_timer_stop(&c->tick);
        if (c->ac) {
            c->ac->data = NULL;
            redisAsyncFree(c->ac); /* calls every pending callback with a NULL reply */
        }
        if (c->tls_conn) {
            devex_redis_tls_close(c->tls_conn);
            c->tls_conn = NULL;
        }
        sentinel_drop(c, 1);
        if (c->wac) {
            redisAsyncContext *wac = c->wac;
            c->wac = NULL;
            wac->data = NULL;
            redisAsyncFree(wac);
        }
        uv_close((uv_handle_t *)&c->retry_timer, NULL);
        uv_close((uv_handle_t *)&c->tick, NULL);
        uv_timer_stop(&c->wake_timer);
        uv_close((uv_handle_t *)&c->wake_timer, NULL);
        /* the handles are closed on the next loop turn; the caller runs it */
        c->ac = NULL;
        free(c->url);
        c->url = NULL;
        c->next = NULL;
        if (c->ssl_ctx)
            SSL_CTX_free(c->ssl_ctx);
        c->ssl_ctx = NULL;
        /* freed after the loop processed the close callbacks */
        uv_run(devex_worker_loop(devex_worker_current()), UV_RUN_NOWAIT);
        free(c);
    }
}

/* ---- Lua ---- */

typedef struct {
    rconn_t *c;
    uint64_t timeout_ms;
} client_ud_t;

static client_ud_t *check_client(lua_State *L)
{
    return luaL_checkudata(L, 1, "devex.redis");
}

/* redis.connect(url, {timeout=seconds, ca_file=, cert_file=, key_file=})
 * -> client | nil, err. Never blocks: the connection is made in the
 * background. The files are for rediss:// (PEM: the CAs to trust, default
 * the system's; a client certificate and its key for mutual TLS). */
static int l_connect(lua_State *L)
{
    const char *url = luaL_checkstring(L, 1);
    double timeout = 5;
    tls_opts_t o = {0};
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lua_getfield(L, 2, "timeout");
        if (!lua_isnil(L, -1))
            timeout = luaL_checknumber(L, -1);
        lua_pop(L, 1);
        static const char *const files[] = {"ca_file", "cert_file", "key_file"};
        const char **dst[] = {&o.ca_file, &o.cert_file, &o.key_file};
        for (int i = 0; i < 3; i++) {
            lua_getfield(L, 2, files[i]);
            if (!lua_isnil(L, -1)) {
                size_t n;
                const char *v = luaL_checklstring(L, -1, &n);
                luaL_argcheck(L, n > 0 && strlen(v) == n, 2, "a TLS file option must be a non-empty path");
                *dst[i] = v; /* the table keeps it alive during this call */
            }
            lua_pop(L, 1);
        }
    }
    luaL_argcheck(L, timeout > 0 && timeout <= 3600, 2, "timeout must be between 0 and 3600 seconds");
    char err[300];
    rconn_t *c = conn_get(url, &o, err, sizeof(err));
    if (c == NULL)
        return devex_push_fail(L, "invalid", err, 0);
    client_ud_t *ud = lua_newuserdatauv(L, sizeof(*ud), 0);
    ud->c = c;
    ud->timeout_ms = (uint64_t)(timeout * 1000);
    luaL_setmetatable(L, "devex.redis");
    return 1;
}

/* Collects argument i (a string or number) into argv. */
static const char *arg_string(lua_State *L, int idx, size_t *len)
{
    int t = lua_type(L, idx);
    if (t != LUA_TSTRING && t != LUA_TNUMBER)
        luaL_error(L, "redis: command arguments must be strings or numbers, got %s", luaL_typename(L, idx));
    return lua_tolstring(L, idx, len);
}

static void cmd_cancel(devex_op_t *op)
{
    /* hiredis still owns the callback: the op is freed when its replies arrive */
    pending_remove((rcmd_t *)op);
}

static rcmd_t *cmd_new(lua_State *L, client_ud_t *ud)
{
    rcmd_t *cmd = calloc(1, sizeof(*cmd));
    if (cmd == NULL)
        luaL_error(L, "out of memory");
    cmd->conn = ud->c;
    cmd->op.cancel = cmd_cancel;
    cmd->deadline_ns = devex_now_ns() + ud->timeout_ms * 1000000ull;
    cmd->mstart_ns = devex_now_ns();
    return cmd;
}

/* Commands go out only on a ready connection (handshake done): one queued
 * behind a failing AUTH or SELECT could otherwise run unauthenticated or in
 * the wrong database. */
static int ready(rconn_t *c)
{
    return c->ac != NULL && c->state == CONN_READY;
}

/* Parks the task until the connection attempt under way ends, then calls k. */
static int wait_ready(lua_State *L, client_ud_t *ud, lua_KFunction k)
{
    rwait_t *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return luaL_error(L, "out of memory");
    w->op.cancel = waiter_cancel;
    w->conn = ud->c;
    w->deadline_ns = devex_now_ns() + ud->timeout_ms * 1000000ull;
    w->next = ud->c->waiters;
    if (w->next)
        w->next->prev = w;
    ud->c->waiters = w;
    return devex_task_yieldk(L, &w->op, 1, k);
}

static int unavailable(lua_State *L, rconn_t *c, const char *mcmd)
{
    devex_metrics_redis(mcmd, 0, "unavailable", 0); /* metrics: failed without being sent */
    const char *msg = c->last_error[0] ? c->last_error
                      : c->state == CONN_CONNECTING ? "redis: connecting"
                                                    : "redis is not connected";
    return devex_push_fail(L, "unavailable", msg, 0);
}

static int call_k(lua_State *L, int status, lua_KContext waited);

/* r:call(cmd, ...) -> reply | nil, err */
static int l_call(lua_State *L)
{
    return call_k(L, LUA_OK, 0);
}

static int call_k(lua_State *L, int status, lua_KContext waited)
{
    client_ud_t *ud = check_client(L);
    int argc = lua_gettop(L) - 1;
    luaL_argcheck(L, argc >= 1, 2, "command expected");
    devex_task_check(L, "redis:call");
    const char *argv_s[32];
    size_t lens_s[32];
    const char **argv = argc <= 32 ? argv_s : lua_newuserdatauv(L, sizeof(char *) * (size_t)argc, 0);
    size_t *lens = argc <= 32 ? lens_s : lua_newuserdatauv(L, sizeof(size_t) * (size_t)argc, 0);
    for (int i = 0; i < argc; i++)
        argv[i] = arg_string(L, i + 2, &lens[i]);
    if (!ready(ud->c)) {
        if (!waited && ud->c->state == CONN_CONNECTING) {
            lua_settop(L, argc + 1); /* the continuation starts over from the arguments */
            return wait_ready(L, ud, call_k);
        }
        return unavailable(L, ud->c, argv[0]);
    }
    rcmd_t *cmd = cmd_new(L, ud);
    snprintf(cmd->mcmd, sizeof(cmd->mcmd), "%s", argv[0]);
    cmd->total = cmd->remaining = 1;
    if (redisAsyncCommandArgv(ud->c->ac, on_reply, cmd, argc, argv, lens) != REDIS_OK) {
        free(cmd);
        return unavailable(L, ud->c, argv[0]);
    }
    pending_add(ud->c, cmd);
    lua_settop(L, 0);
    cmd->base = 0;
    return devex_task_yield(L, &cmd->op);
}

/* r:pipeline({ {cmd, ...}, {cmd, ...} }) -> {reply1, reply2, ...} | nil, err.
 * An error reply of one command appears in its slot as an error table. */
static int pipeline_k(lua_State *L, int status, lua_KContext waited);

static int l_pipeline(lua_State *L)
{
    return pipeline_k(L, LUA_OK, 0);
}

static int pipeline_k(lua_State *L, int status, lua_KContext waited)
{
    client_ud_t *ud = check_client(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    devex_task_check(L, "redis:pipeline");
    lua_Integer n = luaL_len(L, 2);
    luaL_argcheck(L, n >= 1 && n <= 100000, 2, "between 1 and 100000 commands");
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, 2, i);
        luaL_argcheck(L, lua_istable(L, -1) && luaL_len(L, -1) >= 1, 2, "each command must be a non-empty list");
        lua_Integer argc = luaL_len(L, -1);
        for (lua_Integer k = 1; k <= argc; k++) {
            lua_rawgeti(L, -1, k);
            size_t len;
            arg_string(L, -1, &len); /* raises before anything is sent */
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    if (!ready(ud->c)) {
        if (!waited && ud->c->state == CONN_CONNECTING)
            return wait_ready(L, ud, pipeline_k);
        return unavailable(L, ud->c, "PIPELINE");
    }
    rcmd_t *cmd = cmd_new(L, ud);
    strcpy(cmd->mcmd, "PIPELINE");
    cmd->pipeline = 1;
    cmd->total = (int)n;
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, 2, i);
        int t = lua_gettop(L);
        int argc = (int)luaL_len(L, t);
        const char **argv = lua_newuserdatauv(L, sizeof(char *) * (size_t)argc, 0);
        size_t *lens = lua_newuserdatauv(L, sizeof(size_t) * (size_t)argc, 0);
        for (int k = 0; k < argc; k++) {
            lua_rawgeti(L, t, k + 1);
            argv[k] = arg_string(L, -1, &lens[k]);
            lua_pop(L, 1); /* the string stays alive in the table */
        }
        if (redisAsyncCommandArgv(ud->c->ac, on_reply, cmd, argc, argv, lens) == REDIS_OK)
            cmd->remaining++;
        else
            cmd->failed = 1;
        lua_settop(L, t - 1);
    }
    if (cmd->failed && cmd->remaining == 0) {
        cmd_free(cmd);
        return unavailable(L, ud->c, "PIPELINE");
    }
    pending_add(ud->c, cmd);
    lua_settop(L, 0);
    lua_createtable(L, (int)n, 0); /* filled by on_reply */
    cmd->base = 0;
    return devex_task_yield(L, &cmd->op);
}

static void send_script_fallback(rcmd_t *cmd)
{
    cmd->remaining++;
    if (cmd->conn->ac == NULL ||
        redisAsyncCommandArgv(cmd->conn->ac, on_reply, cmd, cmd->script_argc, (const char **)cmd->script_argv,
                              cmd->script_argvlen) != REDIS_OK) {
        cmd->remaining--;
        cmd_fail(cmd, "unavailable", "redis is not connected");
        if (cmd->remaining == 0)
            cmd_free(cmd);
    }
}

/* r:eval(script, {keys...}, arg...) runs by EVALSHA, falling back to EVAL
 * (which also loads the script) when Redis answers NOSCRIPT. */
static int eval_k(lua_State *L, int status, lua_KContext waited);

static int l_eval(lua_State *L)
{
    return eval_k(L, LUA_OK, 0);
}

static int eval_k(lua_State *L, int status, lua_KContext waited)
{
    client_ud_t *ud = check_client(L);
    size_t slen;
    const char *src = luaL_checklstring(L, 2, &slen);
    luaL_checktype(L, 3, LUA_TTABLE);
    devex_task_check(L, "redis:eval");
    int nkeys = (int)luaL_len(L, 3);
    int nargs = lua_gettop(L) - 3;
    int argc = 3 + nkeys + nargs;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_Digest(src, slen, md, &mdlen, EVP_sha1(), NULL);
    char sha[41];
    for (unsigned i = 0; i < 20; i++)
        snprintf(sha + 2 * i, 3, "%02x", md[i]);
    if (!ready(ud->c)) {
        if (!waited && ud->c->state == CONN_CONNECTING)
            return wait_ready(L, ud, eval_k);
        return unavailable(L, ud->c, "EVAL");
    }
    rcmd_t *cmd = cmd_new(L, ud);
    strcpy(cmd->mcmd, "EVAL");
    cmd->script_argc = argc;
    cmd->script_argv = calloc((size_t)argc, sizeof(char *));
    cmd->script_argvlen = calloc((size_t)argc, sizeof(size_t));
    char nk[16];
    snprintf(nk, sizeof(nk), "%d", nkeys);
    cmd->script_argv[0] = strdup("EVALSHA");
    cmd->script_argvlen[0] = 7;
    cmd->script_argv[1] = strdup(sha);
    cmd->script_argvlen[1] = 40;
    cmd->script_argv[2] = strdup(nk);
    cmd->script_argvlen[2] = strlen(nk);
    for (int i = 0; i < nkeys + nargs; i++) {
        size_t len;
        const char *s;
        if (i < nkeys) {
            lua_rawgeti(L, 3, i + 1);
            s = arg_string(L, -1, &len);
        } else {
            s = arg_string(L, 4 + (i - nkeys), &len);
            lua_pushnil(L);
        }
        cmd->script_argv[3 + i] = malloc(len + 1);
        memcpy(cmd->script_argv[3 + i], s, len);
        cmd->script_argv[3 + i][len] = '\0';
        cmd->script_argvlen[3 + i] = len;
        lua_pop(L, 1);
    }
    cmd->script = malloc(slen + 1);
    memcpy(cmd->script, src, slen);
    cmd->script[slen] = '\0';
    cmd->script_len = slen;
    cmd->total = cmd->remaining = 1;
    if (redisAsyncCommandArgv(ud->c->ac, on_reply, cmd, argc, (const char **)cmd->script_argv, cmd->script_argvlen) !=
        REDIS_OK) {
        cmd_free(cmd);
        return unavailable(L, ud->c, "EVAL");
    }
    pending_add(ud->c, cmd);
    lua_settop(L, 0);
    cmd->base = 0;
    return devex_task_yield(L, &cmd->op);
}

/* r:status() -> "ready" | "connecting" | "down", last_error */
static int l_status(lua_State *L)
{
    client_ud_t *ud = check_client(L);
    static const char *names[] = {"down", "connecting", "ready"};
    lua_pushstring(L, names[ud->c->state]);
    if (ud->c->last_error[0]) {
        lua_pushstring(L, ud->c->last_error);
        return 2;
    }
    return 1;
}

int luaopen_devex_redis(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"call", l_call}, {"pipeline", l_pipeline}, {"eval", l_eval}, {"status", l_status}, {NULL, NULL}};
    if (luaL_newmetatable(L, "devex.redis")) {
        luaL_setfuncs(L, methods, 0);
        lua_pushvalue(L, -1);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    static const luaL_Reg fns[] = {{"connect", l_connect}, {NULL, NULL}};
    luaL_newlib(L, fns);
    devex_json_push_null(L);
    lua_setfield(L, -2, "null");
    return 1;
}

/* Where url points (redis.h), for redis_track.c: the same parser as
 * redis.connect, so both connections read a URL alike. */
int devex_redis_url_target(const char *url, devex_redis_target_t *t, char *err, size_t errlen)
{
    rconn_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int rc = parse_url(c, url, err, errlen);
    if (rc == 0) {
        memset(t, 0, sizeof(*t));
        memcpy(t->host, c->host, sizeof(t->host));
        t->port = c->port;
        memcpy(t->unix_path, c->unix_path, sizeof(t->unix_path));
        memcpy(t->user, c->user, sizeof(t->user));
        memcpy(t->password, c->password, sizeof(t->password));
        t->db = c->db;
        t->sentinel = c->sentinel;
    }
    free(c);
    return rc;
}

/* The primary this worker's client of a redis+sentinel:// url is connected
 * to, once its ROLE was checked (redis.h). The key of a client made without
 * TLS options is the URL and three empty lines (conn_get). */
int devex_redis_current_primary(const char *url, char *host, size_t hostlen, int *port)
{
    size_t n = strlen(url);
    for (rconn_t *c = conns; c; c = c->next)
        if (c->sentinel && strncmp(c->url, url, n) == 0 && strcmp(c->url + n, "\n\n\n") == 0) {
            if (c->state != CONN_READY || strlen(c->host) >= hostlen)
                return -1;
            memcpy(host, c->host, strlen(c->host) + 1);
            *port = c->port;
            return 0;
        }
    return -1;
}
