/*
 * redis_track.c: devex.redis_track, Redis's invalidation messages for the
 * worker's caches of Redis data (lua/services/tracked.lua: sessions and REPL
 * lists). One connection per worker thread and URL that turns on client-side
 * caching in broadcast mode for a few key prefixes, redirected to itself, and
 * subscribes to __redis__:invalidate (the RESP2 form of CLIENT TRACKING,
 * Redis >= 6; hiredis 0.14 speaks no RESP3). Redis then tells it the name of
 * every key under those prefixes that any client writes, deletes, or that
 * expires or is evicted, and sends a null message on FLUSHDB/FLUSHALL.
 *
 * What Lua sees (t:poll(since)): whether the stream can be trusted now, an
 * epoch that changes whenever everything must be dropped (the connection
 * went down or came up, a flush, a key too long to keep), and a sequence
 * number with a ring of the last TRACK_RING keys, so a cache that last looked
 * at sequence s gets the keys since s, or false when they fell off the ring.
 * Several VMs of one worker (reloads) read the same ring, each at its own s.
 *
 * Why it cannot be trusted sometimes: while down or reconnecting, writes are
 * missed; so poll() says "not ready" unless the subscription is confirmed and
 * Redis answered within TRACK_DEAD_MS (a PING every TRACK_PING_MS: a Redis
 * that hangs or a network that drops packets silently must not keep a cache
 * alive). poll() also reads whatever is already in the socket first, so an
 * invalidation Redis sent before the request arrived is applied before the
 * request is answered (a logout on another replica is refused at once).
 *
 * Why not hiredis's async API: in subscribed mode hiredis 0.14 keeps a
 * callback for each non-(un)subscribe command that it never calls (a PING
 * would leak one per second). The connection here is hiredis's plain context
 * in non-blocking mode (its reader and writer) on a uv_poll: the replies come
 * in order and this file reads them all itself.
 *
 * rediss:// (TLS) is not supported here: open() answers nil, err and the
 * caches stay off (every read goes to Redis, as without this file).
 *
 * redis+sentinel://: this connection goes to the primary that the worker's
 * devex.redis client of the same URL found through the sentinels (and
 * checked with ROLE); while that client has none, or has moved to another
 * (a failover), the stream is not ready and reconnects to the new one.
 */
#include "devex.h"
#include "log.h"
#include "redis.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <uv.h>

#define TRACK_RING 4096      /* keys remembered for readers that are behind */
#define TRACK_KEY_MAX 512    /* a longer key drops everything instead */
#define TRACK_PREFIX_MAX 16  /* key prefixes per connection */
#define TRACK_TICK_MS 100
#define TRACK_PING_MS 1000
#define TRACK_DEAD_MS 3000   /* no answer for this long: not ready, reconnect */
#define TRACK_CONNECT_MS 2000
#define TRACK_BACKOFF_MIN_MS 50
#define TRACK_BACKOFF_MAX_MS 2000
#define TRACK_REFUSED_RETRY_MS 10000
#define TRACK_CHANNEL "__redis__:invalidate"

typedef enum { T_DOWN = 0, T_CONNECTING, T_HANDSHAKE, T_READY } tstate_t;
/* the handshake's replies, in order */
typedef enum { H_AUTH = 0, H_ID, H_TRACKING, H_SUBSCRIBE } hstep_t;

typedef struct tracker {
    char *name; /* url, then the prefixes: what makes two open() calls the same */
    char *url;
    devex_redis_target_t target;
    char *prefixes[TRACK_PREFIX_MAX];
    int nprefixes;
    redisContext *rc;
    uv_poll_t *poll; /* freed by its close callback */
    int poll_events;
    uv_timer_t tick;
    tstate_t state;
    hstep_t step;
    uint64_t started_ns, last_seen_ns, last_ping_ns, next_attempt_ns;
    unsigned backoff_ms;
    uint64_t epoch;
    uint64_t seq;
    char *ring[TRACK_RING]; /* ring[s % TRACK_RING]: the key of invalidation s */
    char last_error[256];
    char logged_error[256]; /* logged once per distinct reason, not at every retry */
    struct tracker *next;
} tracker_t;

static _Thread_local tracker_t *trackers;

static void t_connect(tracker_t *t);

static void on_poll(uv_poll_t *h, int status, int events);

static void on_poll_closed(uv_handle_t *h)
{
    free(h);
}

static void t_set_events(tracker_t *t, int events)
{
    if (t->poll == NULL || events == t->poll_events)
        return;
    t->poll_events = events;
    uv_poll_start(t->poll, events, on_poll);
}

/* Drops the connection; everything cached must go (epoch), and a reconnect
 * is scheduled with backoff. */
static void t_fail_as(tracker_t *t, const char *why, int refused)
{
    snprintf(t->last_error, sizeof(t->last_error), "%s", why);
    if (t->state == T_READY)
        devex_logf(DEVEX_LOG_WARN, "redis invalidation stream lost (caches dropped): %s", why);
    else if (strcmp(t->logged_error, why) != 0)
        devex_logf(DEVEX_LOG_WARN, "redis invalidation stream unavailable (caches off): %s", why);
    snprintf(t->logged_error, sizeof(t->logged_error), "%s", why);
    if (t->poll) {
        uv_poll_stop(t->poll);
        uv_close((uv_handle_t *)t->poll, on_poll_closed);
        t->poll = NULL;
    }
    if (t->rc) {
        redisFree(t->rc); /* closes the socket, after the poll stopped watching it */
        t->rc = NULL;
    }
    t->state = T_DOWN;
    t->epoch++;
    unsigned ms = t->backoff_ms ? t->backoff_ms : TRACK_BACKOFF_MIN_MS;
    if (refused) /* Redis said no (an ACL without the channel, Redis < 6): not soon again */
        ms = TRACK_REFUSED_RETRY_MS;
    t->backoff_ms = ms * 2 > TRACK_BACKOFF_MAX_MS ? TRACK_BACKOFF_MAX_MS : ms * 2;
    t->next_attempt_ns = devex_now_ns() + (uint64_t)(ms + (unsigned)(rand() % (int)(ms / 2 + 1))) * 1000000ull;
}

static void t_fail(tracker_t *t, const char *why)
{
    t_fail_as(t, why, 0);
}

/* Sends what hiredis has buffered; arms the write watch while some is left. */
static int t_flush(tracker_t *t)
{
    int done = 0;
    if (t->rc == NULL)
        return -1;
    if (redisBufferWrite(t->rc, &done) != REDIS_OK) {
        t_fail(t, t->rc->errstr[0] ? t->rc->errstr : "write failed");
        return -1;
    }
    t_set_events(t, done ? UV_READABLE : UV_READABLE | UV_WRITABLE);
    return 0;
}

static void t_invalidate_all(tracker_t *t)
{
    t->epoch++;
}

static void t_invalidate_key(tracker_t *t, const char *key, size_t len)
{
    if (len > TRACK_KEY_MAX) {
        t_invalidate_all(t);
        return;
    }
    char *copy = malloc(len + 1);
    if (copy == NULL) {
        t_invalidate_all(t);
        return;
    }
    memcpy(copy, key, len);
    copy[len] = '\0';
    t->seq++;
    size_t slot = (size_t)(t->seq % TRACK_RING);
    free(t->ring[slot]);
    t->ring[slot] = copy;
}

static int is_str(const redisReply *r, const char *s)
{
    return r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) && r->len == strlen(s) &&
           strncasecmp(r->str, s, r->len) == 0;
}

/* The handshake's next step, after its reply. */
static void t_handshake_reply(tracker_t *t, redisReply *r)
{
    if (r->type == REDIS_REPLY_ERROR) {
        char why[300];
        snprintf(why, sizeof(why), "%s: %s",
                 t->step == H_AUTH ? "AUTH" : t->step == H_ID ? "CLIENT ID" : t->step == H_TRACKING ? "CLIENT TRACKING" : "SUBSCRIBE",
                 r->str);
        t_fail_as(t, why, 1);
        return;
    }
    switch (t->step) {
    case H_AUTH:
        t->step = H_ID;
        return;
    case H_ID: {
        if (r->type != REDIS_REPLY_INTEGER) {
            t_fail(t, "CLIENT ID: unexpected reply");
            return;
        }
        char id[32];
        snprintf(id, sizeof(id), "%lld", (long long)r->integer);
        const char *argv[6 + 2 * TRACK_PREFIX_MAX];
        size_t lens[6 + 2 * TRACK_PREFIX_MAX];
        int n = 0;
        argv[n++] = "CLIENT";
        argv[n++] = "TRACKING";
        argv[n++] = "ON";
        argv[n++] = "REDIRECT";
        argv[n++] = id;
        argv[n++] = "BCAST";
        for (int i = 0; i < n; i++)
            lens[i] = strlen(argv[i]);
        for (int i = 0; i < t->nprefixes; i++) {
            argv[n] = "PREFIX";
            lens[n++] = 6;
            argv[n] = t->prefixes[i];
            lens[n++] = strlen(t->prefixes[i]);
        }
        redisAppendCommandArgv(t->rc, n, argv, lens);
        const char *sub[2] = {"SUBSCRIBE", TRACK_CHANNEL};
        size_t sublens[2] = {9, strlen(TRACK_CHANNEL)};
        redisAppendCommandArgv(t->rc, 2, sub, sublens);
        t->step = H_TRACKING;
        t_flush(t);
        return;
    }
    case H_TRACKING:
        t->step = H_SUBSCRIBE;
        return;
    case H_SUBSCRIBE:
        if (r->type != REDIS_REPLY_ARRAY || r->elements < 2 || !is_str(r->element[0], "subscribe")) {
            t_fail(t, "SUBSCRIBE: unexpected reply");
            return;
        }
        t->state = T_READY;
        t->backoff_ms = 0;
        t->last_error[0] = '\0';
        if (t->logged_error[0])
            devex_logf(DEVEX_LOG_INFO, "redis invalidation stream ready (caches on)");
        t->logged_error[0] = '\0';
        t->epoch++; /* whatever a reader kept from before is from an unwatched time */
        return;
    }
}

static void t_reply(tracker_t *t, redisReply *r)
{
    t->last_seen_ns = devex_now_ns();
    if (t->state == T_HANDSHAKE) {
        t_handshake_reply(t, r);
        return;
    }
    /* ready: ["message", channel, [keys] | nil] or ["pong", ""] */
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 3 || !is_str(r->element[0], "message"))
        return;
    redisReply *keys = r->element[2];
    if (keys->type == REDIS_REPLY_NIL) { /* FLUSHDB / FLUSHALL */
        t_invalidate_all(t);
    } else if (keys->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i < keys->elements; i++) {
            redisReply *k = keys->element[i];
            if (k->type == REDIS_REPLY_STRING)
                t_invalidate_key(t, k->str, k->len);
            else
                t_invalidate_all(t);
        }
    } else if (keys->type == REDIS_REPLY_STRING) {
        t_invalidate_key(t, keys->str, keys->len);
    } else {
        t_invalidate_all(t);
    }
}

/* Reads what the socket holds and handles every complete reply. */
static void t_read(tracker_t *t)
{
    if (t->rc == NULL)
        return;
    if (redisBufferRead(t->rc) != REDIS_OK) {
        t_fail(t, t->rc->errstr[0] ? t->rc->errstr : "connection lost");
        return;
    }
    for (;;) {
        void *reply = NULL;
        if (t->rc == NULL)
            return;
        if (redisGetReplyFromReader(t->rc, &reply) != REDIS_OK) {
            t_fail(t, t->rc->errstr[0] ? t->rc->errstr : "protocol error");
            return;
        }
        if (reply == NULL)
            return;
        t_reply(t, reply);
        freeReplyObject(reply);
    }
}

/* Whatever is in the socket right now, without waiting: so a request sees
 * every invalidation Redis sent before the request came in. */
static void t_drain(tracker_t *t)
{
    for (int i = 0; i < 64 && t->rc != NULL && t->state != T_CONNECTING; i++) {
        char b;
        ssize_t n = recv(t->rc->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n == 0) {
            t_fail(t, "connection closed by Redis");
            return;
        }
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                return;
            t_fail(t, strerror(errno));
            return;
        }
        t_read(t);
    }
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    tracker_t *t = h->data;
    if (t == NULL || t->poll != h)
        return;
    if (status < 0) {
        t_fail(t, uv_strerror(status));
        return;
    }
    if (t->state == T_CONNECTING && (events & UV_WRITABLE)) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(t->rc->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
            t_fail(t, strerror(err ? err : errno));
            return;
        }
        t->state = T_HANDSHAKE;
    }
    if (events & UV_WRITABLE) {
        if (t_flush(t) != 0)
            return;
    }
    if (events & UV_READABLE)
        t_read(t);
}

/* redis+sentinel://: the tracker follows the primary the worker's client
 * found and checked; 1 while that is the server this connection is to. A
 * different one (a failover) drops the connection, and so the caches: the
 * new primary's tracking state knows nothing of what was cached. */
static int t_primary_same(tracker_t *t)
{
    char host[256];
    int port;
    if (devex_redis_current_primary(t->url, host, sizeof(host), &port) != 0)
        return 0; /* the client is between primaries: nothing can be trusted */
    if (t->state != T_DOWN && (strcmp(host, t->target.host) != 0 || port != t->target.port)) {
        char why[320];
        snprintf(why, sizeof(why), "the primary moved to %s:%d", host, port);
        t_fail(t, why);
        return 0;
    }
    return 1;
}

static void t_connect(tracker_t *t)
{
    const devex_redis_target_t *g = &t->target;
    if (g->sentinel &&
        devex_redis_current_primary(t->url, t->target.host, sizeof(t->target.host), &t->target.port) != 0) {
        t_fail(t, "waiting for the client to find the primary through the sentinels");
        return;
    }
    t->rc = g->unix_path[0] ? redisConnectUnixNonBlock(g->unix_path) : redisConnectNonBlock(g->host, g->port);
    if (t->rc == NULL || t->rc->err) {
        char why[256];
        snprintf(why, sizeof(why), "%s", t->rc ? t->rc->errstr : "out of memory");
        t_fail(t, why);
        return;
    }
    t->poll = calloc(1, sizeof(*t->poll));
    if (t->poll == NULL || uv_poll_init(devex_worker_loop(devex_worker_current()), t->poll, t->rc->fd) != 0) {
        free(t->poll);
        t->poll = NULL;
        t_fail(t, "cannot watch the socket");
        return;
    }
    t->poll->data = t;
    t->poll_events = 0;
    t->state = T_CONNECTING;
    t->started_ns = devex_now_ns();
    /* queued now, sent once the connect completes */
    if (g->password[0]) {
        const char *argv[3] = {"AUTH", g->user[0] ? g->user : g->password, g->password};
        size_t lens[3] = {4, strlen(argv[1]), strlen(argv[2])};
        redisAppendCommandArgv(t->rc, g->user[0] ? 3 : 2, argv, lens);
        t->step = H_AUTH;
    } else {
        t->step = H_ID;
    }
    const char *argv[2] = {"CLIENT", "ID"};
    size_t lens[2] = {6, 2};
    redisAppendCommandArgv(t->rc, 2, argv, lens);
    t->poll_events = UV_READABLE | UV_WRITABLE;
    uv_poll_start(t->poll, t->poll_events, on_poll);
}

static void on_tick(uv_timer_t *h)
{
    tracker_t *t = h->data;
    uint64_t now = devex_now_ns();
    switch (t->state) {
    case T_DOWN:
        if (now >= t->next_attempt_ns)
            t_connect(t);
        break;
    case T_CONNECTING:
    case T_HANDSHAKE:
        if (t->target.sentinel && !t_primary_same(t))
            break;
        if (now - t->started_ns > TRACK_CONNECT_MS * 1000000ull)
            t_fail(t, "connect timed out");
        break;
    case T_READY:
        if (t->target.sentinel && !t_primary_same(t))
            break;
        if (now - t->last_seen_ns > TRACK_DEAD_MS * 1000000ull) {
            t_fail(t, "no answer to PING");
        } else if (now - t->last_ping_ns >= TRACK_PING_MS * 1000000ull) {
            const char *argv[1] = {"PING"};
            size_t lens[1] = {4};
            t->last_ping_ns = now;
            redisAppendCommandArgv(t->rc, 1, argv, lens);
            t_flush(t);
        }
        break;
    }
}

static tracker_t *t_get(const char *url, const char **prefixes, int n, char *err, size_t errlen)
{
    size_t namelen = strlen(url) + 1;
    for (int i = 0; i < n; i++)
        namelen += strlen(prefixes[i]) + 1;
    char *name = malloc(namelen + 1);
    if (name == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    strcpy(name, url);
    for (int i = 0; i < n; i++) {
        strcat(name, "\n");
        strcat(name, prefixes[i]);
    }
    for (tracker_t *t = trackers; t; t = t->next)
        if (strcmp(t->name, name) == 0) {
            free(name);
            return t;
        }
    devex_worker_t *w = devex_worker_current();
    tracker_t *t = calloc(1, sizeof(*t));
    if (w == NULL || t == NULL) {
        snprintf(err, errlen, w == NULL ? "redis_track: needs a worker thread" : "out of memory");
        free(name);
        free(t);
        return NULL;
    }
    if (devex_redis_url_target(url, &t->target, err, errlen) != 0) {
        free(name);
        free(t);
        return NULL;
    }
    t->name = name;
    t->url = strdup(url);
    for (int i = 0; i < n; i++)
        t->prefixes[i] = strdup(prefixes[i]);
    t->nprefixes = n;
    uv_timer_init(devex_worker_loop(w), &t->tick);
    t->tick.data = t;
    uv_timer_start(&t->tick, on_tick, TRACK_TICK_MS, TRACK_TICK_MS);
    uv_unref((uv_handle_t *)&t->tick);
    t->next = trackers;
    trackers = t;
    t_connect(t);
    return t;
}

void devex_redis_track_thread_cleanup(void)
{
    while (trackers) {
        tracker_t *t = trackers;
        trackers = t->next;
        uv_timer_stop(&t->tick);
        uv_close((uv_handle_t *)&t->tick, NULL);
        if (t->poll) {
            uv_poll_stop(t->poll);
            t->poll->data = NULL;
            uv_close((uv_handle_t *)t->poll, on_poll_closed);
            t->poll = NULL;
        }
        if (t->rc)
            redisFree(t->rc);
        /* the handles are closed on the next loop turn */
        uv_run(devex_worker_loop(devex_worker_current()), UV_RUN_NOWAIT);
        for (int i = 0; i < TRACK_RING; i++)
            free(t->ring[i]);
        for (int i = 0; i < t->nprefixes; i++)
            free(t->prefixes[i]);
        free(t->name);
        free(t->url);
        free(t);
    }
}

/* ---- Lua ---- */

#define TRACK_MT "devex.redis_track"

static tracker_t *check_tracker(lua_State *L)
{
    tracker_t **p = luaL_checkudata(L, 1, TRACK_MT);
    return *p;
}

/* redis_track.open(url, {prefix, ...}) -> tracker | nil, err. One connection
 * per worker, URL and prefix list, made in the background; never blocks. */
static int l_open(lua_State *L)
{
    const char *url = luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    if (strncmp(url, "rediss://", 9) == 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "redis_track: rediss:// is not supported (the caches stay off)");
        return 2;
    }
    int n = (int)luaL_len(L, 2);
    if (n < 1 || n > TRACK_PREFIX_MAX)
        return luaL_argerror(L, 2, "1 to 16 key prefixes");
    const char *prefixes[TRACK_PREFIX_MAX];
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, 2, i + 1);
        size_t len;
        prefixes[i] = lua_tolstring(L, -1, &len);
        if (prefixes[i] == NULL || len == 0 || len > TRACK_KEY_MAX || memchr(prefixes[i], '\n', len) != NULL)
            return luaL_argerror(L, 2, "prefixes must be non-empty strings without newlines");
        lua_pop(L, 1); /* the string stays alive in the table */
    }
    char err[256];
    tracker_t *t = t_get(url, prefixes, n, err, sizeof(err));
    if (t == NULL) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    tracker_t **p = lua_newuserdatauv(L, sizeof(*p), 0);
    *p = t;
    luaL_setmetatable(L, TRACK_MT);
    return 1;
}

/* t:poll([since]) -> ready, epoch, seq[, keys]. Reads the socket first.
 * ready: the stream is confirmed and alive (else use no cache). keys (only
 * with since, when ready and since < seq): the keys invalidated after since,
 * oldest first, or false when some fell off the ring (drop everything). */
static int l_poll(lua_State *L)
{
    tracker_t *t = check_tracker(L);
    t_drain(t);
    int ready = t->state == T_READY && devex_now_ns() - t->last_seen_ns <= TRACK_DEAD_MS * 1000000ull &&
                (!t->target.sentinel || t_primary_same(t));
    lua_pushboolean(L, ready);
    lua_pushinteger(L, (lua_Integer)t->epoch);
    lua_pushinteger(L, (lua_Integer)t->seq);
    if (!ready || lua_isnoneornil(L, 2))
        return 3;
    lua_Integer since = luaL_checkinteger(L, 2);
    if (since == (lua_Integer)t->seq)
        return 3;
    if (since < 0 || (uint64_t)since > t->seq || t->seq - (uint64_t)since > TRACK_RING) {
        lua_pushboolean(L, 0);
        return 4;
    }
    lua_createtable(L, (int)(t->seq - (uint64_t)since), 0);
    int i = 1;
    for (uint64_t s = (uint64_t)since + 1; s <= t->seq; s++) {
        lua_pushstring(L, t->ring[s % TRACK_RING]);
        lua_rawseti(L, -2, i++);
    }
    return 4;
}

/* t:status() -> "down" | "connecting" | "ready", last_error */
static int l_status(lua_State *L)
{
    tracker_t *t = check_tracker(L);
    lua_pushstring(L, t->state == T_READY ? "ready" : t->state == T_DOWN ? "down" : "connecting");
    if (t->last_error[0]) {
        lua_pushstring(L, t->last_error);
        return 2;
    }
    return 1;
}

int luaopen_devex_redis_track(lua_State *L)
{
    static const luaL_Reg methods[] = {{"poll", l_poll}, {"status", l_status}, {NULL, NULL}};
    if (luaL_newmetatable(L, TRACK_MT)) {
        luaL_setfuncs(L, methods, 0);
        lua_pushvalue(L, -1);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    static const luaL_Reg fns[] = {{"open", l_open}, {NULL, NULL}};
    luaL_newlib(L, fns);
    return 1;
}
