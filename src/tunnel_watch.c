/*
 * tunnel_watch.c: how devexd sees traffic inside WebSocket tunnels.
 *
 * libh2o 2.2 moves a proxied WebSocket's bytes in its own tunnel
 * (lib/tunnel.c) once the upstream answered 101; nothing of devexd runs
 * after that, so a user typing in a terminal for hours would look idle. The
 * tunnel is made by one exported function, h2o_tunnel_establish, which
 * H2O's proxy calls through the PLT; devexd defines a function of that name,
 * so the dynamic linker binds H2O's call to it, and ours calls H2O's own
 * (found with dlsym RTLD_NEXT) and then watches the two sockets:
 * h2o_socket_t.bytes_written counts every byte written to a socket, so the
 * sum over both sockets grows exactly when bytes move either way. Nothing
 * runs per frame: the Lua side asks every activity interval which tunnels
 * moved (devex_tunnel_activity) and writes one Redis update per session.
 *
 * Which tunnel belongs to which session: devex.proxy.pass{activity = key}
 * on a WebSocket handshake records the key under the client's address and
 * port (devex_tunnel_expect); the tunnel's client socket has the same peer.
 * A watch ends when either socket closes (on_close, chained to whatever
 * was there before). The lists are shared by the workers under one mutex:
 * they change once per WebSocket, and each worker reads only its own
 * tunnels' counters (a socket is written by its owner thread only).
 *
 * The same place tunes every tunnel for throughput (tests/bench/bench_gateway.sh
 * measured 0.11 of direct bulk throughput without it): TCP_NODELAY on both
 * sockets (H2O sets it only on sockets it accepts, so a message written to
 * the runner in two segments waited for the runner's delayed ACK, ~40 ms),
 * and reads of up to 1 MB instead of the ~8 KB of H2O's socket buffers
 * (its tunnel stops reading a side until the write to the other finishes, so
 * the read size sets how many round steps a large message takes: 256 KB
 * gave 0.76-0.87 of direct bulk throughput, 1 MB 0.93-1.0). The big buffers
 * come from a prototype without recycling: allocated per read burst and
 * freed when the tunnel has written them, from any thread; only the pages a
 * read fills are touched, so a keystroke costs an allocation, not 1 MB of
 * memory.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "tunnel_watch.h"
#include "log.h"

#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/socket.h>
#include <stdlib.h>
#include <string.h>
#include <h2o/tunnel.h>

#define PENDING_TTL_NS (30ull * 1000 * 1000 * 1000) /* a handshake's upstream answers within this or never */

typedef struct pending {
    struct pending *next;
    struct sockaddr_storage peer;
    socklen_t peerlen;
    uint64_t expires_ns;
    char key[DEVEX_ACTIVITY_KEY_MAX + 1];
} pending_t;

typedef struct watch {
    struct watch *next, *prev;
    h2o_socket_t *sock[2];
    struct {
        void (*cb)(void *);
        void *data;
    } chained[2]; /* the sockets' on_close before ours */
    int closes;   /* on_close calls still to come: freed at 0 */
    int dead;     /* a socket closed: its counters are no longer read */
    pthread_t owner;
    size_t last_total;
    char key[DEVEX_ACTIVITY_KEY_MAX + 1];
} watch_t;

typedef struct {
    watch_t *w;
    int index;
} close_ref_t;

#define TUNNEL_READ_SIZE (1024 * 1024)

/* allocator.max 0: every buffer is malloc'd and freed, nothing is kept, so
 * one prototype serves every thread */
static h2o_buffer_prototype_t tunnel_buffer_prototype = {.allocator = {.max = 0}, ._initial_buf = {.capacity = TUNNEL_READ_SIZE}};

static void tune_socket(h2o_socket_t *sock)
{
    int fd = h2o_socket_get_fd(sock);
    int one = 1;
    if (fd >= 0)
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)); /* not TCP (a unix socket): no matter */
    h2o_buffer_set_prototype(&sock->input, &tunnel_buffer_prototype);
}

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pending_t *pendings;
static watch_t *watches;
static size_t nwatches;

static void prune_pending(uint64_t now)
{
    for (pending_t **pp = &pendings; *pp != NULL;) {
        if ((*pp)->expires_ns <= now) {
            pending_t *dead = *pp;
            *pp = dead->next;
            free(dead);
        } else {
            pp = &(*pp)->next;
        }
    }
}

void devex_tunnel_expect(h2o_req_t *req, const char *key, size_t keylen)
{
    if (keylen == 0 || keylen > DEVEX_ACTIVITY_KEY_MAX || req->conn->callbacks->get_peername == NULL)
        return;
    pending_t *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return;
    p->peerlen = req->conn->callbacks->get_peername(req->conn, (struct sockaddr *)&p->peer);
    if (p->peerlen == 0 || p->peerlen > sizeof(p->peer)) {
        free(p);
        return;
    }
    memcpy(p->key, key, keylen);
    uint64_t now = devex_now_ns();
    p->expires_ns = now + PENDING_TTL_NS;
    pthread_mutex_lock(&lock);
    prune_pending(now);
    p->next = pendings;
    pendings = p;
    pthread_mutex_unlock(&lock);
}

/* The expectation recorded for this peer, removed from the list (caller frees), or NULL. */
static pending_t *take_pending(const struct sockaddr *sa, socklen_t len)
{
    pending_t *found = NULL;
    pthread_mutex_lock(&lock);
    prune_pending(devex_now_ns());
    for (pending_t **pp = &pendings; *pp != NULL; pp = &(*pp)->next) {
        if ((*pp)->peerlen == len && memcmp(&(*pp)->peer, sa, len) == 0) {
            found = *pp;
            *pp = found->next;
            break;
        }
    }
    pthread_mutex_unlock(&lock);
    return found;
}

static void unlink_watch(watch_t *w)
{
    if (w->prev != NULL)
        w->prev->next = w->next;
    else
        watches = w->next;
    if (w->next != NULL)
        w->next->prev = w->prev;
    w->next = w->prev = NULL;
    nwatches--;
}

static void on_sock_close(void *data)
{
    close_ref_t *ref = data;
    watch_t *w = ref->w;
    void (*cb)(void *) = w->chained[ref->index].cb;
    void *cbdata = w->chained[ref->index].data;
    pthread_mutex_lock(&lock);
    if (!w->dead) {
        w->dead = 1;
        unlink_watch(w);
    }
    int last = --w->closes == 0;
    pthread_mutex_unlock(&lock);
    if (last)
        free(w); /* the two close_ref_t live inside the same allocation */
    if (cb != NULL)
        cb(cbdata);
}

typedef h2o_tunnel_t *(*establish_fn)(h2o_context_t *, h2o_socket_t *, h2o_socket_t *, h2o_timeout_t *);

/* Interposes libh2o's own function of this name (see the comment at the top). */
h2o_tunnel_t *h2o_tunnel_establish(h2o_context_t *ctx, h2o_socket_t *sock1, h2o_socket_t *sock2, h2o_timeout_t *timeout)
{
    static establish_fn real;
    if (real == NULL) {
        real = (establish_fn)dlsym(RTLD_NEXT, "h2o_tunnel_establish");
        if (real == NULL)
            abort(); /* libh2o without it cannot have called us */
    }
    tune_socket(sock1);
    tune_socket(sock2);
    struct sockaddr_storage ss;
    socklen_t len = h2o_socket_getpeername(sock1, (struct sockaddr *)&ss);
    pending_t *p = len != 0 ? take_pending((struct sockaddr *)&ss, len) : NULL;
    if (p != NULL) {
        /* one allocation: the watch, then the two references on_close gets */
        watch_t *w = calloc(1, sizeof(watch_t) + 2 * sizeof(close_ref_t));
        if (w != NULL) {
            close_ref_t *refs = (close_ref_t *)(w + 1);
            memcpy(w->key, p->key, sizeof(w->key));
            w->owner = pthread_self();
            w->closes = 2;
            h2o_socket_t *socks[2] = {sock1, sock2};
            for (int i = 0; i < 2; i++) {
                w->sock[i] = socks[i];
                w->chained[i].cb = socks[i]->on_close.cb;
                w->chained[i].data = socks[i]->on_close.data;
                refs[i] = (close_ref_t){w, i};
                socks[i]->on_close.cb = on_sock_close;
                socks[i]->on_close.data = &refs[i];
            }
            w->last_total = sock1->bytes_written + sock2->bytes_written;
            pthread_mutex_lock(&lock);
            w->next = watches;
            if (watches != NULL)
                watches->prev = w;
            watches = w;
            nwatches++;
            pthread_mutex_unlock(&lock);
        }
        free(p);
    }
    /* the sockets may carry bytes already read (the first frames): H2O's
     * tunnel writes them at once, which the next drain sees as traffic */
    return real(ctx, sock1, sock2, timeout);
}

int devex_tunnel_activity(lua_State *L)
{
    lua_newtable(L);
    int n = 0;
    pthread_t self = pthread_self();
    pthread_mutex_lock(&lock);
    for (watch_t *w = watches; w != NULL; w = w->next) {
        if (!pthread_equal(w->owner, self))
            continue;
        size_t total = w->sock[0]->bytes_written + w->sock[1]->bytes_written;
        if (total != w->last_total) {
            w->last_total = total;
            lua_pushstring(L, w->key);
            lua_rawseti(L, -2, ++n);
        }
    }
    pthread_mutex_unlock(&lock);
    return 1;
}

int devex_tunnel_count(lua_State *L)
{
    lua_Integer n = 0;
    pthread_t self = pthread_self();
    pthread_mutex_lock(&lock);
    for (watch_t *w = watches; w != NULL; w = w->next)
        if (pthread_equal(w->owner, self))
            n++;
    pthread_mutex_unlock(&lock);
    lua_pushinteger(L, n);
    return 1;
}
