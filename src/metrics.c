/*
 * metrics.c: the process-wide metrics behind GET /metrics (lua/routes/metrics.lua).
 *
 * Registry: the families below are all there is; a name that is not listed is
 * a programming error (devex.metrics raises). Each family has fixed label
 * names and a fixed table of SERIES_MAX slots for label combinations; label
 * values are cut to LV_MAX-1 bytes and bytes outside printable ASCII become
 * '_', so both the number of series and their size are bounded. A combination
 * that does not fit any more is dropped and counted in
 * devex_metrics_dropped_total.
 *
 * Threads: slots are found by hashing the label values and probing; a filled
 * slot is published with a release store and never removed, so lookups take
 * no lock. Only filling a new slot takes the mutex. Values are 64-bit
 * atomics: counters and histogram buckets as integers, gauges and histogram
 * sums as the bits of a double (compare-and-swap to add).
 */
#include "metrics.h"
#include "devex.h"
#include "server.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdarg.h>
#include <string.h>
#include <sys/time.h>

#define MAX_LABELS 3
#define LV_MAX 64
#define SERIES_MAX 256 /* power of two; at most 3/4 are used */
#define BUCKETS_MAX 14

typedef enum { M_COUNTER, M_GAUGE, M_HISTOGRAM } mtype_t;

typedef struct {
    int state; /* 0 empty, 2 ready (published with release) */
    char lv[MAX_LABELS][LV_MAX];
    uint64_t count;   /* counter value; histogram count */
    uint64_t bits;    /* gauge value; histogram sum (double bits) */
    uint64_t buckets[BUCKETS_MAX];
} series_t;

typedef struct {
    const char *name;
    mtype_t type;
    const char *help;
    const char *labels[MAX_LABELS + 1]; /* NULL-terminated */
    const double *buckets;
    int nbuckets;
    int nseries;
    series_t series[SERIES_MAX];
} family_t;

static const double B_HTTP[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
static const double B_START[] = {0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300};
static const double B_CALL[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};

#define HIST(b) b, (int)DEVEX_ARRAY_SIZE(b)

/* The registry. Keep in step with README "Metrics". */
static family_t families[] = {
    {"devex_http_requests_total", M_COUNTER, "HTTP responses by matched route pattern, method and status.",
     {"route", "method", "status", NULL}, NULL, 0, 0, {{0}}},
    {"devex_http_request_duration_seconds", M_HISTOGRAM,
     "Time from the request's arrival to its complete response, by route pattern and method.",
     {"route", "method", NULL}, HIST(B_HTTP), 0, {{0}}},
    {"devex_repl_sessions", M_GAUGE, "REPLs by lifecycle state, read from Redis at scrape time.", {"state", NULL}, NULL, 0,
     0, {{0}}},
    {"devex_repl_session_start_duration_seconds", M_HISTOGRAM,
     "Time to start a REPL session (workload made and runner ready), by result.", {"result", NULL}, HIST(B_START), 0,
     {{0}}},
    {"devex_k8s_requests_total", M_COUNTER, "Kubernetes API requests (each attempt) by method and HTTP status (or error).",
     {"method", "status", NULL}, NULL, 0, 0, {{0}}},
    {"devex_k8s_request_errors_total", M_COUNTER, "Kubernetes API calls that failed after retries, by method and error code.",
     {"method", "code", NULL}, NULL, 0, 0, {{0}}},
    {"devex_k8s_request_duration_seconds", M_HISTOGRAM, "Kubernetes API request latency (each attempt) by method.",
     {"method", NULL}, HIST(B_CALL), 0, {{0}}},
    {"devex_s3_requests_total", M_COUNTER, "S3 requests (each attempt) by method and HTTP status (or error).",
     {"method", "status", NULL}, NULL, 0, 0, {{0}}},
    {"devex_s3_request_errors_total", M_COUNTER, "S3 calls that failed after retries, by method and error code.",
     {"method", "code", NULL}, NULL, 0, 0, {{0}}},
    {"devex_s3_request_duration_seconds", M_HISTOGRAM, "S3 request latency (each attempt) by method.", {"method", NULL},
     HIST(B_CALL), 0, {{0}}},
    {"devex_redis_commands_total", M_COUNTER, "Redis commands by command name (EVAL for scripts, PIPELINE for pipelines).",
     {"command", NULL}, NULL, 0, 0, {{0}}},
    {"devex_redis_command_errors_total", M_COUNTER,
     "Redis commands that failed, by command and code (reply, timeout, unavailable).", {"command", "code", NULL}, NULL, 0,
     0, {{0}}},
    {"devex_redis_command_duration_seconds", M_HISTOGRAM, "Redis command latency by command.", {"command", NULL},
     HIST(B_CALL), 0, {{0}}},
    {"devex_sweep_runs_total", M_COUNTER, "Sweep runs made by this process as the sweep leader, by result.",
     {"result", NULL}, NULL, 0, 0, {{0}}},
    {"devex_sweep_actions_total", M_COUNTER, "Sweep actions by kind (idle, expired, retried, recovered, orphans, errors).",
     {"action", NULL}, NULL, 0, 0, {{0}}},
    {"devex_lua_errors_total", M_COUNTER, "Lua errors (answered as 500 or ending a background job), by where.",
     {"where", NULL}, NULL, 0, 0, {{0}}},
    {"devex_reloads_total", M_COUNTER, "Reloads of the Lua app (one per worker thread per SIGHUP), by result.",
     {"result", NULL}, NULL, 0, 0, {{0}}},
    {"devex_http2_guard_total", M_COUNTER,
     "HTTP/2 connection guard (h2_guard.c) events: reset (a stream ended before its response was complete), "
     "refused (503 without running Lua), closed_for_resets, header_timeout, idle_timeout (connections closed).",
     {"event", NULL}, NULL, 0, 0, {{0}}},
    {"devex_metrics_dropped_total", M_COUNTER,
     "Metric updates dropped because their family has no room for another label combination.", {NULL}, NULL, 0, 0,
     {{0}}},
    /* after F_DROPPED: Lua-only (devex.metrics.observe), no enum name */
    {"devex_repl_start_phase_duration_seconds", M_HISTOGRAM,
     "How long each phase of a REPL start lasted (repl.events), by template and phase.", {"template", "phase", NULL},
     HIST(B_START), 0, {{0}}},
    {"devex_repl_save_failures_total", M_COUNTER,
     "Stops whose save of the files failed (repl.sweep.save_failed; the workload was kept).", {NULL}, NULL, 0, 0,
     {{0}}},
    {"devex_repl_save_failed", M_GAUGE,
     "REPLs left stopping because their files could not be saved after policy.sync.max_attempts tries, as the "
     "sweeping replica last counted them (devexd repl stuck / resolve).",
     {NULL}, NULL, 0, 0, {{0}}},
};

enum { F_HTTP_REQ, F_HTTP_DUR, F_SESSIONS, F_START, F_K8S_REQ, F_K8S_ERR, F_K8S_DUR, F_S3_REQ, F_S3_ERR, F_S3_DUR,
       F_REDIS_CMD, F_REDIS_ERR, F_REDIS_DUR, F_SWEEP_RUNS, F_SWEEP_ACT, F_LUA_ERR, F_RELOADS, F_HTTP2, F_DROPPED };

static pthread_mutex_t insert_lock = PTHREAD_MUTEX_INITIALIZER;

static int nlabels(const family_t *f)
{
    int n = 0;
    while (n < MAX_LABELS && f->labels[n] != NULL)
        n++;
    return n;
}

/* Bounded, printable label value. */
static void clean_value(char *out, const char *v, size_t len)
{
    if (v == NULL)
        v = "", len = 0;
    if (len > LV_MAX - 1)
        len = LV_MAX - 1;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)v[i];
        out[i] = (char)((c < 0x20 || c >= 0x7f) ? '_' : c);
    }
    out[len] = '\0';
}

static uint64_t hash_values(char vals[][LV_MAX], int n)
{
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < n; i++) {
        for (const char *p = vals[i]; *p; p++)
            h = (h ^ (unsigned char)*p) * 1099511628211ull;
        h = (h ^ 0xff) * 1099511628211ull;
    }
    return h;
}

static int same(const series_t *s, char vals[][LV_MAX], int n)
{
    for (int i = 0; i < n; i++)
        if (strcmp(s->lv[i], vals[i]) != 0)
            return 0;
    return 1;
}

static void add_u64(uint64_t *p, uint64_t n)
{
    __atomic_fetch_add(p, n, __ATOMIC_RELAXED);
}

static series_t *get_series(family_t *f, char vals[][LV_MAX]);

static void dropped(void)
{
    char none[1][LV_MAX];
    series_t *s = get_series(&families[F_DROPPED], none);
    if (s != NULL)
        __atomic_fetch_add(&s->count, 1, __ATOMIC_RELAXED);
}

/* The series for these (cleaned) values, made if new; NULL when the family is full. */
static series_t *get_series(family_t *f, char vals[][LV_MAX])
{
    int n = nlabels(f);
    uint64_t h = hash_values(vals, n);
    for (unsigned i = 0; i < SERIES_MAX; i++) {
        series_t *s = &f->series[(h + i) & (SERIES_MAX - 1)];
        int st = __atomic_load_n(&s->state, __ATOMIC_ACQUIRE);
        if (st != 2)
            break;
        if (same(s, vals, n))
            return s;
    }
    pthread_mutex_lock(&insert_lock);
    series_t *s = NULL;
    for (unsigned i = 0; i < SERIES_MAX; i++) {
        series_t *c = &f->series[(h + i) & (SERIES_MAX - 1)];
        if (c->state == 2) {
            if (same(c, vals, n)) {
                s = c;
                break;
            }
            continue;
        }
        if (f->nseries < SERIES_MAX * 3 / 4) {
            for (int k = 0; k < n; k++)
                memcpy(c->lv[k], vals[k], LV_MAX);
            f->nseries++;
            __atomic_store_n(&c->state, 2, __ATOMIC_RELEASE);
            s = c;
        }
        break;
    }
    pthread_mutex_unlock(&insert_lock);
    if (s == NULL && f != &families[F_DROPPED])
        dropped();
    return s;
}

static void add_double(uint64_t *p, double v)
{
    uint64_t old = __atomic_load_n(p, __ATOMIC_RELAXED), nw;
    do {
        double d;
        memcpy(&d, &old, sizeof(d));
        d += v;
        memcpy(&nw, &d, sizeof(nw));
    } while (!__atomic_compare_exchange_n(p, &old, nw, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
}

static void do_count(family_t *f, char vals[][LV_MAX], uint64_t n)
{
    series_t *s = get_series(f, vals);
    if (s != NULL)
        add_u64(&s->count, n);
}

static void observe_series(family_t *f, series_t *s, double v)
{
    if (!isfinite(v))
        return;
    int i = 0;
    while (i < f->nbuckets && v > f->buckets[i])
        i++;
    if (i < f->nbuckets)
        add_u64(&s->buckets[i], 1); /* cumulated at render */
    add_double(&s->bits, v);
    add_u64(&s->count, 1);
}

static void do_observe(family_t *f, char vals[][LV_MAX], double v)
{
    series_t *s = get_series(f, vals);
    if (s != NULL)
        observe_series(f, s, v);
}

static void do_set(family_t *f, char vals[][LV_MAX], double v)
{
    series_t *s = get_series(f, vals);
    if (s == NULL)
        return;
    uint64_t b;
    memcpy(&b, &v, sizeof(b));
    __atomic_store_n(&s->bits, b, __ATOMIC_RELAXED);
}

/* ---- C hooks ---- */

static const char *method_label(const char *m, size_t n)
{
    int i = devex_method_index(m, n);
    return i >= 0 ? devex_methods[i] : "OTHER"; /* a client chooses the method: keep the label bounded */
}

/* Per-thread cache of the two series of an HTTP (route, method, status):
 * series never move or go away, so pointers found once stay right, and the
 * common case costs no hashing of label strings. Keys are pointers: route is
 * an interned pattern (or NULL), method one of method_label's constants. */
#define HTTP_CACHE_SIZE 64 /* power of two */
typedef struct {
    const char *route, *method;
    int status;
    series_t *req, *dur;
} http_cache_t;
static _Thread_local http_cache_t http_cache[HTTP_CACHE_SIZE];

void devex_metrics_http(const char *route, const char *method, size_t mlen, int status, double seconds)
{
    const char *m = method_label(method, mlen);
    if (status < 100 || status > 999)
        status = 0;
    uintptr_t h = ((uintptr_t)route >> 3) ^ ((uintptr_t)m >> 3) ^ (uintptr_t)status * 31u;
    http_cache_t *c = &http_cache[(h ^ (h >> 7)) & (HTTP_CACHE_SIZE - 1)];
    series_t *req = c->req, *dur = c->dur;
    if (req == NULL || c->route != route || c->method != m || c->status != status) {
        char v[3][LV_MAX];
        clean_value(v[0], route ? route : "unmatched", strlen(route ? route : "unmatched"));
        clean_value(v[1], m, strlen(m));
        char st[4] = {(char)('0' + status / 100), (char)('0' + status / 10 % 10), (char)('0' + status % 10), '\0'};
        clean_value(v[2], status ? st : "0", status ? 3 : 1);
        req = get_series(&families[F_HTTP_REQ], v);
        dur = get_series(&families[F_HTTP_DUR], v);
        if (req != NULL && dur != NULL) /* a full family drops (and counts) the update: not cached */
            *c = (http_cache_t){route, m, status, req, dur};
    }
    if (req != NULL)
        add_u64(&req->count, 1);
    if (dur != NULL)
        observe_series(&families[F_HTTP_DUR], dur, seconds);
}

void devex_metrics_redis(const char *command, int ok, const char *code, double seconds)
{
    char v[2][LV_MAX];
    char up[LV_MAX];
    size_t n = 0;
    for (; command[n] && n < 24; n++) {
        char c = command[n];
        up[n] = (char)((c >= 'a' && c <= 'z') ? c - 32 : ((c >= 'A' && c <= 'Z') || c == '_' || c == '.') ? c : '_');
    }
    clean_value(v[0], up, n);
    do_count(&families[F_REDIS_CMD], v, 1);
    do_observe(&families[F_REDIS_DUR], v, seconds);
    if (!ok) {
        clean_value(v[1], code, strlen(code));
        do_count(&families[F_REDIS_ERR], v, 1);
    }
}

void devex_metrics_lua_error(const char *where)
{
    char v[1][LV_MAX];
    clean_value(v[0], where, strlen(where));
    do_count(&families[F_LUA_ERR], v, 1);
}

void devex_metrics_reload(int ok)
{
    char v[1][LV_MAX];
    clean_value(v[0], ok ? "ok" : "error", ok ? 2 : 5);
    do_count(&families[F_RELOADS], v, 1);
}

void devex_metrics_http2(const char *event)
{
    char v[1][LV_MAX];
    clean_value(v[0], event, strlen(event));
    do_count(&families[F_HTTP2], v, 1);
}

/* ---- responses made by H2O itself ---- */

static void on_setup_ostream(h2o_filter_t *self, h2o_req_t *req, h2o_ostream_t **slot)
{
    /* devexd's own and proxied responses are counted when their request ends
     * (server.c reqctx_dispose) */
    if (!devex_server_made_response(req)) {
        struct timeval now;
        gettimeofday(&now, NULL);
        double secs = 0;
        if (req->timestamps.request_begin_at.tv_sec != 0)
            secs = (double)(now.tv_sec - req->timestamps.request_begin_at.tv_sec) +
                   (double)(now.tv_usec - req->timestamps.request_begin_at.tv_usec) / 1e6;
        devex_metrics_http(NULL, req->input.method.base, req->input.method.len, req->res.status, secs < 0 ? 0 : secs);
    }
    h2o_setup_next_ostream(req, slot);
}

void devex_metrics_register_filter(h2o_pathconf_t *pathconf)
{
    h2o_filter_t *f = h2o_create_filter(pathconf, sizeof(*f));
    f->on_setup_ostream = on_setup_ostream;
}

/* ---- rendering ---- */

typedef struct {
    char *data;
    size_t len, cap;
} sbuf_t;

static void sb_put(sbuf_t *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        b->data = realloc(b->data, cap);
        if (b->data == NULL)
            abort();
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void sb_str(sbuf_t *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

static void sb_fmt(sbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_fmt(sbuf_t *b, const char *fmt, ...)
{
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n > 0)
        sb_put(b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

static void sb_double(sbuf_t *b, double d)
{
    if (isnan(d))
        sb_str(b, "NaN");
    else if (isinf(d))
        sb_str(b, d > 0 ? "+Inf" : "-Inf");
    else
        sb_fmt(b, "%.17g", d);
}

/* Label set: {a="x",b="y"[,le="..."]}, values escaped as the format says. */
static void sb_labels(sbuf_t *b, const family_t *f, const series_t *s, const char *le)
{
    int n = nlabels(f);
    if (n == 0 && le == NULL)
        return;
    sb_str(b, "{");
    for (int i = 0; i < n; i++) {
        if (i)
            sb_str(b, ",");
        sb_str(b, f->labels[i]);
        sb_str(b, "=\"");
        for (const char *p = s->lv[i]; *p; p++) {
            if (*p == '\\')
                sb_str(b, "\\\\");
            else if (*p == '"')
                sb_str(b, "\\\"");
            else if (*p == '\n')
                sb_str(b, "\\n");
            else
                sb_put(b, p, 1);
        }
        sb_str(b, "\"");
    }
    if (le != NULL) {
        if (n)
            sb_str(b, ",");
        sb_str(b, "le=\"");
        sb_str(b, le);
        sb_str(b, "\"");
    }
    sb_str(b, "}");
}

static double bits_double(const uint64_t *p)
{
    uint64_t v = __atomic_load_n(p, __ATOMIC_RELAXED);
    double d;
    memcpy(&d, &v, sizeof(d));
    return d;
}

char *devex_metrics_render(size_t *len)
{
    sbuf_t b = {0};
    for (size_t fi = 0; fi < DEVEX_ARRAY_SIZE(families); fi++) {
        family_t *f = &families[fi];
        sb_fmt(&b, "# HELP %s ", f->name);
        sb_str(&b, f->help);
        sb_fmt(&b, "\n# TYPE %s %s\n", f->name,
               f->type == M_COUNTER ? "counter" : f->type == M_GAUGE ? "gauge" : "histogram");
        for (unsigned i = 0; i < SERIES_MAX; i++) {
            series_t *s = &f->series[i];
            if (__atomic_load_n(&s->state, __ATOMIC_ACQUIRE) != 2)
                continue;
            if (f->type == M_COUNTER) {
                sb_str(&b, f->name);
                sb_labels(&b, f, s, NULL);
                sb_fmt(&b, " %llu\n", (unsigned long long)__atomic_load_n(&s->count, __ATOMIC_RELAXED));
            } else if (f->type == M_GAUGE) {
                sb_str(&b, f->name);
                sb_labels(&b, f, s, NULL);
                sb_str(&b, " ");
                sb_double(&b, bits_double(&s->bits));
                sb_str(&b, "\n");
            } else {
                /* read the count first: buckets read afterwards are never
                 * fewer, and the +Inf bucket is the count by definition */
                uint64_t count = __atomic_load_n(&s->count, __ATOMIC_ACQUIRE);
                double sum = bits_double(&s->bits);
                uint64_t cum = 0;
                for (int k = 0; k < f->nbuckets; k++) {
                    cum += __atomic_load_n(&s->buckets[k], __ATOMIC_RELAXED);
                    if (cum > count)
                        cum = count;
                    char le[32];
                    snprintf(le, sizeof(le), "%g", f->buckets[k]);
                    sb_fmt(&b, "%s_bucket", f->name);
                    sb_labels(&b, f, s, le);
                    sb_fmt(&b, " %llu\n", (unsigned long long)cum);
                }
                sb_fmt(&b, "%s_bucket", f->name);
                sb_labels(&b, f, s, "+Inf");
                sb_fmt(&b, " %llu\n", (unsigned long long)count);
                sb_fmt(&b, "%s_sum", f->name);
                sb_labels(&b, f, s, NULL);
                sb_str(&b, " ");
                sb_double(&b, sum);
                sb_fmt(&b, "\n%s_count", f->name);
                sb_labels(&b, f, s, NULL);
                sb_fmt(&b, " %llu\n", (unsigned long long)count);
            }
        }
    }
    *len = b.len;
    return b.data;
}

/* ---- Lua: devex.metrics ---- */

static family_t *check_family(lua_State *L, int idx, mtype_t want)
{
    const char *name = luaL_checkstring(L, idx);
    for (size_t i = 0; i < DEVEX_ARRAY_SIZE(families); i++) {
        if (strcmp(families[i].name, name) == 0) {
            if (families[i].type != want)
                luaL_error(L, "metric %s is not a %s", name,
                           want == M_COUNTER ? "counter" : want == M_GAUGE ? "gauge" : "histogram");
            return &families[i];
        }
    }
    luaL_error(L, "unknown metric %s (the registry is in src/metrics.c)", name);
    return NULL;
}

/* Reads the labels table at idx into vals; raises on an unknown label name. */
static void check_labels(lua_State *L, int idx, family_t *f, char vals[][LV_MAX])
{
    int n = nlabels(f);
    int found = 0;
    if (lua_isnoneornil(L, idx)) {
        for (int i = 0; i < n; i++)
            vals[i][0] = '\0';
        return;
    }
    luaL_checktype(L, idx, LUA_TTABLE);
    for (int i = 0; i < n; i++) {
        lua_getfield(L, idx, f->labels[i]);
        size_t len = 0;
        const char *v = NULL;
        if (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER) {
            v = lua_tolstring(L, -1, &len);
            found++;
        } else if (!lua_isnil(L, -1)) {
            luaL_error(L, "metric %s: label %s must be a string or a number", f->name, f->labels[i]);
        }
        clean_value(vals[i], v, len);
        lua_pop(L, 1);
    }
    int total = 0;
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        total++;
        lua_pop(L, 1);
    }
    if (total != found)
        luaL_error(L, "metric %s: unknown label (its labels are fixed in src/metrics.c)", f->name);
}

/* metrics.counter(name, labels[, n=1]) */
static int l_counter(lua_State *L)
{
    family_t *f = check_family(L, 1, M_COUNTER);
    char vals[MAX_LABELS][LV_MAX];
    check_labels(L, 2, f, vals);
    lua_Integer n = luaL_optinteger(L, 3, 1);
    luaL_argcheck(L, n >= 0, 3, "a counter only goes up");
    do_count(f, vals, (uint64_t)n);
    return 0;
}

/* metrics.observe(name, labels, value) */
static int l_observe(lua_State *L)
{
    family_t *f = check_family(L, 1, M_HISTOGRAM);
    char vals[MAX_LABELS][LV_MAX];
    check_labels(L, 2, f, vals);
    do_observe(f, vals, luaL_checknumber(L, 3));
    return 0;
}

/* metrics.gauge(name, labels, value): sets the gauge */
static int l_gauge(lua_State *L)
{
    family_t *f = check_family(L, 1, M_GAUGE);
    char vals[MAX_LABELS][LV_MAX];
    check_labels(L, 2, f, vals);
    do_set(f, vals, luaL_checknumber(L, 3));
    return 0;
}

/* Route patterns, interned for the life of the process (they come from the
 * app's code, not from requests; at most MAX_ROUTES, then "other"). */
#define MAX_ROUTES 256
static char routes[MAX_ROUTES][LV_MAX];
static int nroutes;
static const char other_route[] = "other";

static const char *intern_route(const char *p, size_t len)
{
    char v[LV_MAX];
    clean_value(v, p, len);
    int n = __atomic_load_n(&nroutes, __ATOMIC_ACQUIRE);
    for (int i = 0; i < n; i++)
        if (strcmp(routes[i], v) == 0)
            return routes[i];
    const char *r = other_route;
    pthread_mutex_lock(&insert_lock);
    n = nroutes;
    int i;
    for (i = 0; i < n; i++)
        if (strcmp(routes[i], v) == 0)
            break;
    if (i < n) {
        r = routes[i];
    } else if (n < MAX_ROUTES) {
        memcpy(routes[n], v, LV_MAX);
        r = routes[n];
        __atomic_store_n(&nroutes, n + 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&insert_lock);
    return r;
}

/* metrics.route_label(pattern): the interned route label as a light
 * userdata, made once per route when the app builds its dispatcher, so that
 * set_route costs a pointer store per request instead of a lookup */
static int l_route_label(lua_State *L)
{
    size_t len;
    const char *p = luaL_checklstring(L, 1, &len);
    lua_pushlightuserdata(L, (void *)intern_route(p, len));
    return 1;
}

/* metrics.set_route(label | pattern | nil): the route label of the current
 * request (a label from route_label, or a pattern interned here) */
static int l_set_route(lua_State *L)
{
    devex_task_t *t = devex_task_of(L);
    if (t == NULL || t->rc == NULL)
        return 0;
    const char *r = NULL;
    if (lua_type(L, 1) == LUA_TLIGHTUSERDATA) {
        r = lua_touserdata(L, 1);
        int n = __atomic_load_n(&nroutes, __ATOMIC_ACQUIRE);
        /* only a pointer route_label gave out is trusted */
        uintptr_t off = (uintptr_t)r - (uintptr_t)routes[0];
        if (r != other_route && (off >= (uintptr_t)n * LV_MAX || off % LV_MAX != 0))
            return luaL_argerror(L, 1, "not a route label from metrics.route_label");
    } else if (!lua_isnoneornil(L, 1)) {
        size_t len;
        const char *p = luaL_checklstring(L, 1, &len);
        r = intern_route(p, len);
    }
    t->rc->metrics_route = r;
    return 0;
}

/* metrics.now(): monotonic seconds, for durations */
static int l_now(lua_State *L)
{
    lua_pushnumber(L, (double)devex_now_ns() / 1e9);
    return 1;
}

/* metrics.render(): the exposition text */
static int l_render(lua_State *L)
{
    size_t len;
    char *s = devex_metrics_render(&len);
    lua_pushlstring(L, s ? s : "", s ? len : 0);
    free(s);
    return 1;
}

int luaopen_devex_metrics(lua_State *L)
{
    static const luaL_Reg fns[] = {{"counter", l_counter}, {"observe", l_observe}, {"gauge", l_gauge},
                                   {"set_route", l_set_route}, {"route_label", l_route_label}, {"now", l_now}, {"render", l_render},
                                   {NULL, NULL}};
    luaL_newlib(L, fns);
    lua_pushliteral(L, "text/plain; version=0.0.4; charset=utf-8");
    lua_setfield(L, -2, "content_type");
    return 1;
}
