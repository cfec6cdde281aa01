/*
 * wsbench.c: a closed-loop WebSocket echo load generator for
 * tests/bench/bench_gateway.sh (C, libc only, one thread, epoll).
 *
 * It opens N connections to one WebSocket URL (HTTP/1.1 upgrade with the
 * headers given), then each connection sends one binary message of SIZE
 * bytes (masked, as a client must), waits for the whole echo, checks it
 * byte for byte, and sends the next one: one message in flight per
 * connection. Round trips that complete during the WARMUP seconds are not
 * counted; those that complete in the next DURATION seconds are, each with
 * its time from the first byte written to the last byte read. Prints one
 * JSON object on stdout:
 *
 *   {"connections":N,"size":SIZE,"duration_s":..,"round_trips":..,
 *    "rt_per_s":..,"mb_per_s":..,"p50_ms":..,"p90_ms":..,"p99_ms":..,
 *    "max_ms":..,"client_cpu_s":..,"errors":0}
 *
 * mb_per_s is payload echoed per second, one way (round_trips x SIZE /
 * duration, 1 MB = 10^6 bytes); the wire carries it both ways. Percentiles
 * are nearest-rank. Exit status 0 when every connection upgraded and every
 * echo matched, 1 otherwise (the JSON is still printed when the run got as
 * far as measuring).
 *
 *   wsbench -p PORT -u PATH [-a HOST_ADDR] [-H "Name: value"]... [-c N]
 *           [-s SIZE] [-d SECONDS] [-w SECONDS]
 *
 * The payload is the same for every message of a connection and is masked
 * once, when the connection starts, so the client's CPU per round trip is a
 * write, a read and a memcmp: for the sizes of the benchmark it is a small
 * share of a CPU (client_cpu_s tells).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int fd;
    uint8_t *frame; /* the masked frame to send */
    size_t frame_len, sent;
    uint8_t *expect; /* the unmasked frame the server must send back */
    size_t expect_len;
    uint8_t *rbuf;
    size_t got;
    uint64_t t_send;
    int busy; /* a message is in flight */
    int want_out;
} conn_t;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void die(const char *msg)
{
    fprintf(stderr, "wsbench: %s\n", msg);
    exit(1);
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

static size_t frame_head(uint8_t *h, size_t n, int masked)
{
    h[0] = 0x80 | 0x2; /* FIN, binary */
    uint8_t m = masked ? 0x80 : 0;
    if (n < 126) {
        h[1] = m | (uint8_t)n;
        return 2;
    }
    if (n < 65536) {
        h[1] = m | 126;
        h[2] = (uint8_t)(n >> 8);
        h[3] = (uint8_t)n;
        return 4;
    }
    h[1] = m | 127;
    for (int i = 0; i < 8; i++)
        h[2 + i] = (uint8_t)(n >> (56 - 8 * i));
    return 10;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct_ms(const uint64_t *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    size_t k = (size_t)((p / 100.0) * n + 0.999999999);
    if (k < 1)
        k = 1;
    if (k > n)
        k = n;
    return v[k - 1] / 1e6;
}

/* connect and upgrade, blocking; returns the fd (non-blocking from then on) */
static int ws_connect(const char *addr, int port, const char *path, char **headers, int nheaders)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        die("socket failed");
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1)
        die("bad address (want an IPv4 address)");
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        perror("wsbench: connect");
        exit(1);
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char req[8192];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
                     path);
    int has_host = 0;
    for (int i = 0; i < nheaders; i++) {
        if (strncasecmp(headers[i], "host:", 5) == 0)
            has_host = 1;
        n += snprintf(req + n, sizeof req - n, "%s\r\n", headers[i]);
    }
    if (!has_host)
        n += snprintf(req + n, sizeof req - n, "Host: %s:%d\r\n", addr, port);
    n += snprintf(req + n, sizeof req - n, "\r\n");
    if ((size_t)n >= sizeof req)
        die("handshake request too long");
    if (write(fd, req, n) != n)
        die("could not write the handshake");
    char resp[8192];
    size_t got = 0;
    for (;;) {
        ssize_t r = read(fd, resp + got, sizeof resp - 1 - got);
        if (r <= 0)
            die("connection closed during the handshake");
        got += r;
        resp[got] = 0;
        char *end = strstr(resp, "\r\n\r\n");
        if (end) {
            if (strncmp(resp, "HTTP/1.1 101", 12) != 0) {
                char *eol = strstr(resp, "\r\n");
                *eol = 0;
                fprintf(stderr, "wsbench: the upgrade of %s was answered: %s\n", path, resp);
                exit(1);
            }
            if (end + 4 != resp + got)
                die("bytes after the 101 response before any message was sent");
            break;
        }
        if (got >= sizeof resp - 1)
            die("handshake response too long");
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

static void set_out(int ep, conn_t *c, int on)
{
    if (c->want_out == on)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = on;
}

/* write what remains of the frame; -1 on error */
static int pump_out(int ep, conn_t *c)
{
    while (c->sent < c->frame_len) {
        ssize_t w = write(c->fd, c->frame + c->sent, c->frame_len - c->sent);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                set_out(ep, c, 1);
                return 0;
            }
            if (errno == EINTR)
                continue;
            return -1;
        }
        c->sent += w;
    }
    set_out(ep, c, 0);
    return 0;
}

static int start_message(int ep, conn_t *c)
{
    c->sent = 0;
    c->got = 0;
    c->busy = 1;
    c->t_send = now_ns();
    return pump_out(ep, c);
}

int main(int argc, char **argv)
{
    const char *addr = "127.0.0.1", *path = NULL;
    int port = 0, nconn = 1, opt;
    size_t size = 64;
    double duration = 10, warmup = 1;
    char *headers[32];
    int nheaders = 0;
    while ((opt = getopt(argc, argv, "a:p:u:H:c:s:d:w:")) != -1) {
        switch (opt) {
        case 'a': addr = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'u': path = optarg; break;
        case 'H':
            if (nheaders == 32)
                die("too many -H");
            headers[nheaders++] = optarg;
            break;
        case 'c': nconn = atoi(optarg); break;
        case 's': size = strtoull(optarg, NULL, 10); break;
        case 'd': duration = atof(optarg); break;
        case 'w': warmup = atof(optarg); break;
        default:
            fprintf(stderr, "usage: wsbench -p PORT -u PATH [-a ADDR] [-H 'Name: value']... [-c CONNECTIONS] "
                            "[-s SIZE] [-d SECONDS] [-w WARMUP_SECONDS]\n");
            return 2;
        }
    }
    if (port <= 0 || !path || nconn <= 0 || size == 0 || duration <= 0 || warmup < 0)
        die("need -p PORT -u PATH, and positive -c, -s, -d");

    conn_t *conns = calloc(nconn, sizeof *conns);
    int ep = epoll_create1(0);
    for (int i = 0; i < nconn; i++) {
        conn_t *c = &conns[i];
        c->fd = ws_connect(addr, port, path, headers, nheaders);
        uint8_t *payload = malloc(size);
        for (size_t j = 0; j < size; j++)
            payload[j] = (uint8_t)rnd();
        uint8_t h[14];
        size_t hl = frame_head(h, size, 1);
        uint8_t key[4];
        uint32_t k = rnd() | 1;
        memcpy(key, &k, 4);
        c->frame_len = hl + 4 + size;
        c->frame = malloc(c->frame_len);
        memcpy(c->frame, h, hl);
        memcpy(c->frame + hl, key, 4);
        for (size_t j = 0; j < size; j++)
            c->frame[hl + 4 + j] = payload[j] ^ key[j & 3];
        hl = frame_head(h, size, 0);
        c->expect_len = hl + size;
        c->expect = malloc(c->expect_len);
        memcpy(c->expect, h, hl);
        memcpy(c->expect + hl, payload, size);
        free(payload);
        c->rbuf = malloc(c->expect_len);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    }

    size_t cap = 1 << 16, nsamples = 0;
    uint64_t *samples = malloc(cap * sizeof *samples);
    uint64_t t0 = now_ns();
    uint64_t t_start = t0 + (uint64_t)(warmup * 1e9);
    uint64_t t_end = t_start + (uint64_t)(duration * 1e9);
    uint64_t t_drain = t_end + 30ull * 1000000000ull; /* in-flight echoes get 30 s to finish */
    double cpu_start = -1, cpu_end = -1;
    int errors = 0, inflight = 0;
    for (int i = 0; i < nconn; i++) {
        if (start_message(ep, &conns[i]) < 0)
            die("write failed");
        inflight++;
    }
    struct epoll_event evs[64];
    while (inflight > 0) {
        uint64_t now = now_ns();
        if (cpu_start < 0 && now >= t_start)
            cpu_start = cpu_s();
        if (cpu_end < 0 && now >= t_end)
            cpu_end = cpu_s();
        if (now >= t_drain) {
            fprintf(stderr, "wsbench: %d echo(es) still missing 30 s after the end\n", inflight);
            errors += inflight;
            break;
        }
        int n = epoll_wait(ep, evs, 64, 100);
        if (n < 0 && errno != EINTR)
            die("epoll_wait failed");
        for (int e = 0; e < n; e++) {
            conn_t *c = evs[e].data.ptr;
            if (!c->busy)
                continue;
            if ((evs[e].events & EPOLLOUT) && pump_out(ep, c) < 0) {
                fprintf(stderr, "wsbench: write: %s\n", strerror(errno));
                errors++, c->busy = 0, inflight--;
                continue;
            }
            if (!(evs[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
                continue;
            for (;;) {
                ssize_t r = read(c->fd, c->rbuf + c->got, c->expect_len - c->got);
                if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                    break;
                if (r < 0 && errno == EINTR)
                    continue;
                if (r <= 0) {
                    fprintf(stderr, "wsbench: connection closed by the server\n");
                    errors++, c->busy = 0, inflight--;
                    break;
                }
                c->got += r;
                if (c->got < c->expect_len)
                    continue;
                uint64_t t = now_ns();
                if (memcmp(c->rbuf, c->expect, c->expect_len) != 0) {
                    fprintf(stderr, "wsbench: the echo differs from the message sent\n");
                    errors++, c->busy = 0, inflight--;
                    break;
                }
                if (t >= t_start && t < t_end) {
                    if (nsamples == cap) {
                        cap *= 2;
                        samples = realloc(samples, cap * sizeof *samples);
                        if (!samples)
                            die("out of memory");
                    }
                    samples[nsamples++] = t - c->t_send;
                }
                if (c->sent < c->frame_len) {
                    fprintf(stderr, "wsbench: an echo arrived before the whole message was written\n");
                    errors++, c->busy = 0, inflight--;
                    break;
                }
                if (t >= t_end) {
                    c->busy = 0, inflight--;
                    break;
                }
                if (start_message(ep, c) < 0) {
                    fprintf(stderr, "wsbench: write: %s\n", strerror(errno));
                    errors++, c->busy = 0, inflight--;
                }
                break;
            }
        }
    }
    if (cpu_start < 0)
        cpu_start = cpu_s();
    if (cpu_end < 0)
        cpu_end = cpu_s();
    /* a close frame (code 1000, masked) on each connection, then close */
    for (int i = 0; i < nconn; i++) {
        static const uint8_t close_frame[] = {0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8};
        int fl = fcntl(conns[i].fd, F_GETFL);
        fcntl(conns[i].fd, F_SETFL, fl & ~O_NONBLOCK);
        if (write(conns[i].fd, close_frame, sizeof close_frame) < 0) {
            /* the server may have gone; nothing to do */
        }
        close(conns[i].fd);
    }
    qsort(samples, nsamples, sizeof *samples, cmp_u64);
    double rt_per_s = nsamples / duration;
    printf("{\"connections\":%d,\"size\":%zu,\"duration_s\":%g,\"round_trips\":%zu,\"rt_per_s\":%.1f,"
           "\"mb_per_s\":%.2f,\"p50_ms\":%.3f,\"p90_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f,"
           "\"client_cpu_s\":%.3f,\"errors\":%d}\n",
           nconn, size, duration, nsamples, rt_per_s, rt_per_s * (double)size / 1e6, pct_ms(samples, nsamples, 50),
           pct_ms(samples, nsamples, 90), pct_ms(samples, nsamples, 99),
           nsamples ? samples[nsamples - 1] / 1e6 : 0.0, cpu_end - cpu_start, errors);
    return errors ? 1 : 0;
}
