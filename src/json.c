/*
 * json.c: JSON both ways between Lua values and text on yajl, for the
 * devex.json module and for C callers (request bodies, logs).
 *
 * Lua has one table type for both JSON shapes, so the shape travels in a
 * metatable: decoded arrays and objects get a marker metatable and json.array
 * / json.object set one, which is what lets an empty decoded array re-encode
 * as [] rather than {}. The metatables live in the registry under fixed keys
 * and are created on first use, so the C functions work on any lua_State
 * whether or not the module was ever loaded.
 *
 * yajl's own UTF-8 check is structural only (it lets overlong forms,
 * surrogates and code points above U+10FFFF through), so strings are checked
 * again here against RFC 3629 in both directions.
 */
#include "json.h"
#include "devex.h"
#include "textutil.h"

#include <lauxlib.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_gen.h>
#include <yajl/yajl_parse.h>

/* Only the addresses matter. A lightuserdata compares by pointer, so json.null
 * is the same value in every Lua state and needs no registry entry. */
static const char null_sentinel;
static const char array_mt_key;
static const char object_mt_key;

void devex_json_push_null(lua_State *L)
{
    lua_pushlightuserdata(L, (void *)&null_sentinel);
}

static int is_null(lua_State *L, int idx)
{
    return lua_type(L, idx) == LUA_TLIGHTUSERDATA && lua_touserdata(L, idx) == &null_sentinel;
}

/* Pushes the marker metatable stored under key, creating it on first use. */
static void push_mt(lua_State *L, const char *key, const char *name)
{
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, key) == LUA_TTABLE)
        return;
    lua_pop(L, 1);
    lua_createtable(L, 0, 1);
    lua_pushstring(L, name); /* so tostring(t) says what the table is */
    lua_setfield(L, -2, "__name");
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, key);
}

static void push_array_mt(lua_State *L)
{
    push_mt(L, &array_mt_key, "devex.json.array");
}

static void push_object_mt(lua_State *L)
{
    push_mt(L, &object_mt_key, "devex.json.object");
}

void devex_json_mark_array(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    push_array_mt(L);
    lua_setmetatable(L, idx);
}

/* RFC 3629 UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF. */
static int utf8_valid(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        /* most JSON text is ASCII: skip it eight bytes at a time */
        while (len - i >= 8) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & UINT64_C(0x8080808080808080))
                break;
            i += 8;
        }
        if (i >= len)
            break;
        if (s[i] < 0x80) { /* the ASCII tail of a short string */
            i++;
            continue;
        }
        size_t n = devex_utf8_seq(s + i, len - i);
        if (n == 0)
            return 0;
        i += n;
    }
    return 1;
}

/*
 * Whether the table at idx encodes as an array; *n gets its length. A marker
 * metatable decides; otherwise only a non-empty proper sequence is an array,
 * so an unmarked empty table is an object. Uses 3 stack slots.
 */
static int table_is_array(lua_State *L, int idx, lua_Integer *n)
{
    *n = (lua_Integer)lua_rawlen(L, idx);
    if (lua_getmetatable(L, idx)) {
        lua_rawgetp(L, LUA_REGISTRYINDEX, &array_mt_key);
        lua_rawgetp(L, LUA_REGISTRYINDEX, &object_mt_key);
        int mark = lua_rawequal(L, -3, -2) ? 1 : lua_rawequal(L, -3, -1) ? -1 : 0;
        lua_pop(L, 3);
        if (mark)
            return mark > 0;
    }
    if (*n == 0)
        return 0;
    /* rawlen is only some border: the keys must be exactly 1..n */
    lua_Integer count = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        lua_Integer k;
        if (!lua_isinteger(L, -1) || (k = lua_tointeger(L, -1)) < 1 || k > *n) {
            lua_pop(L, 1);
            return 0;
        }
        count++;
    }
    return count == *n;
}

/* ---- encode ------------------------------------------------------------ */

enum { SEG_INDEX, SEG_KEY, SEG_INTKEY };

typedef struct {
    lua_State *L;
    yajl_gen g;
    int depth;
    char *err;
    size_t errlen;
    /* where the encoder is, for error messages; the key strings stay alive on
     * the Lua stack while lua_next walks their table */
    struct {
        int kind;
        const char *key;
        size_t keylen;
        lua_Integer num;
    } path[DEVEX_JSON_MAX_DEPTH];
} encoder_t;

/* One generator per thread, kept between calls: allocating one per encode
 * cost more than encoding a small response. It writes into its own buffer,
 * copied out once at the end. The pthread key frees it when a thread ends. */
static pthread_key_t gen_key;
#define GEN_KEEP_MAX (64 * 1024)
static pthread_once_t gen_once = PTHREAD_ONCE_INIT;

static void gen_free(void *g)
{
    yajl_gen_free(g);
}

static void gen_key_make(void)
{
    if (pthread_key_create(&gen_key, gen_free) != 0)
        abort();
}

static yajl_gen thread_gen(void)
{
    pthread_once(&gen_once, gen_key_make);
    yajl_gen g = pthread_getspecific(gen_key);
    if (g == NULL) {
        g = yajl_gen_alloc(NULL);
        if (g == NULL || pthread_setspecific(gen_key, g) != 0) {
            if (g != NULL)
                yajl_gen_free(g);
            return NULL;
        }
    }
    /* a previous encode may have stopped halfway (an error) */
    yajl_gen_reset(g, NULL);
    yajl_gen_clear(g);
    return g;
}

/* Records the error message followed by the first nseg path segments. */
__attribute__((format(printf, 3, 4))) static int enc_fail(encoder_t *e, int nseg, const char *fmt, ...)
{
    if (e->err == NULL || e->errlen == 0)
        return -1;
    devex_buf_t b = DEVEX_BUF_INIT;
    char msg[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    devex_buf_append_str(&b, msg);
    if (nseg > 0)
        devex_buf_append_str(&b, " at $");
    for (int i = 0; i < nseg && b.len < e->errlen; i++) {
        if (e->path[i].kind == SEG_INDEX) {
            devex_buf_appendf(&b, "[%lld]", (long long)e->path[i].num);
        } else if (e->path[i].kind == SEG_INTKEY) {
            devex_buf_appendf(&b, "[\"%lld\"]", (long long)e->path[i].num);
        } else {
            /* keys come from the caller's data: keep the message printable */
            char k[40];
            size_t n = e->path[i].keylen < sizeof(k) - 1 ? e->path[i].keylen : sizeof(k) - 1;
            for (size_t j = 0; j < n; j++) {
                char c = e->path[i].key[j];
                k[j] = (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') ? c : '?';
            }
            k[n] = '\0';
            devex_buf_appendf(&b, "[\"%s%s\"]", k, n < e->path[i].keylen ? "..." : "");
        }
    }
    snprintf(e->err, e->errlen, "%s", b.data);
    devex_buf_free(&b);
    return -1;
}

static int gen_check(encoder_t *e, yajl_gen_status st)
{
    /* the encoder drives yajl_gen in a valid order, so this is a bug guard */
    return st == yajl_gen_status_ok ? 0 : enc_fail(e, e->depth, "JSON generator error %d", (int)st);
}

/* Shortest of %.15g..%.17g that reads back as the same double, always with a
 * '.' or exponent so the value decodes as a float again. */
static int format_double(double d, char *buf, size_t size)
{
    int n = 0;
    for (int prec = 15; prec <= 17; prec++) {
        n = snprintf(buf, size, "%.*g", prec, d);
        if (strtod(buf, NULL) == d)
            break;
    }
    int floaty = 0;
    for (int i = 0; i < n; i++) {
        char c = buf[i];
        if ((c >= '0' && c <= '9') || c == '-' || c == '+')
            continue;
        if (c != 'e')
            buf[i] = '.'; /* the locale's decimal point, if someone set a locale */
        floaty = 1;
    }
    if (!floaty && (size_t)n + 3 <= size) {
        memcpy(buf + n, ".0", 3);
        n += 2;
    }
    return n;
}

static int encode_value(encoder_t *e, int idx);

static int encode_table(encoder_t *e, int idx)
{
    lua_State *L = e->L;
    if (e->depth >= DEVEX_JSON_MAX_DEPTH)
        return enc_fail(e, e->depth, "too deeply nested (more than %d levels, or a cycle)", DEVEX_JSON_MAX_DEPTH);
    if (!lua_checkstack(L, 4))
        return enc_fail(e, e->depth, "out of Lua stack");
    int d = e->depth++;
    lua_Integer n;
    if (table_is_array(L, idx, &n)) {
        /* a marked array is encoded 1..#t, holes as null */
        if (gen_check(e, yajl_gen_array_open(e->g)))
            return -1;
        for (lua_Integer i = 1; i <= n; i++) {
            e->path[d].kind = SEG_INDEX;
            e->path[d].num = i;
            lua_rawgeti(L, idx, i);
            int rc = encode_value(e, lua_gettop(L));
            lua_pop(L, 1);
            if (rc)
                return -1;
        }
        if (gen_check(e, yajl_gen_array_close(e->g)))
            return -1;
    } else {
        if (gen_check(e, yajl_gen_map_open(e->g)))
            return -1;
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            int kt = lua_type(L, -2);
            if (kt == LUA_TSTRING) {
                size_t klen;
                const char *k = lua_tolstring(L, -2, &klen);
                e->path[d].kind = SEG_KEY;
                e->path[d].key = k;
                e->path[d].keylen = klen;
                if (!utf8_valid((const unsigned char *)k, klen))
                    return enc_fail(e, d + 1, "object key is not valid UTF-8");
                if (gen_check(e, yajl_gen_string(e->g, (const unsigned char *)k, klen)))
                    return -1;
            } else if (lua_isinteger(L, -2)) {
                /* formatted here: lua_tolstring would turn the key into a
                 * string in place and confuse lua_next */
                char k[32];
                lua_Integer ik = lua_tointeger(L, -2);
                int klen = snprintf(k, sizeof(k), "%lld", (long long)ik);
                e->path[d].kind = SEG_INTKEY;
                e->path[d].num = ik;
                if (gen_check(e, yajl_gen_string(e->g, (const unsigned char *)k, (size_t)klen)))
                    return -1;
            } else {
                return enc_fail(e, d, "object key must be a string or an integer, not %s",
                                kt == LUA_TNUMBER ? "a float" : lua_typename(L, kt));
            }
            int rc = encode_value(e, lua_gettop(L));
            lua_pop(L, 1);
            if (rc)
                return -1;
        }
        if (gen_check(e, yajl_gen_map_close(e->g)))
            return -1;
    }
    e->depth--;
    return 0;
}

static int encode_value(encoder_t *e, int idx)
{
    lua_State *L = e->L;
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        return gen_check(e, yajl_gen_null(e->g));
    case LUA_TBOOLEAN:
        return gen_check(e, yajl_gen_bool(e->g, lua_toboolean(L, idx)));
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            return gen_check(e, yajl_gen_integer(e->g, (long long)lua_tointeger(L, idx)));
        else {
            double d = (double)lua_tonumber(L, idx);
            if (!isfinite(d))
                return enc_fail(e, e->depth, "cannot encode %s", isnan(d) ? "NaN" : "infinity");
            char buf[40];
            int n = format_double(d, buf, sizeof(buf));
            return gen_check(e, yajl_gen_number(e->g, buf, (size_t)n));
        }
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        if (!utf8_valid((const unsigned char *)s, len))
            return enc_fail(e, e->depth, "string is not valid UTF-8");
        return gen_check(e, yajl_gen_string(e->g, (const unsigned char *)s, len));
    }
    case LUA_TTABLE:
        return encode_table(e, idx);
    case LUA_TLIGHTUSERDATA:
        if (is_null(L, idx))
            return gen_check(e, yajl_gen_null(e->g));
        return enc_fail(e, e->depth, "cannot encode %s", luaL_typename(L, idx));
    case LUA_TUSERDATA: {
        size_t len;
        const char *text = devex_json_frozen(L, idx, &len);
        if (text == NULL)
            return enc_fail(e, e->depth, "cannot encode %s", luaL_typename(L, idx));
        /* yajl has no call for a pre-encoded value; its number call writes
         * the given text as one value, which keeps its state machine right */
        return gen_check(e, yajl_gen_number(e->g, text, len));
    }
    default:
        return enc_fail(e, e->depth, "cannot encode %s", luaL_typename(L, idx));
    }
}

int devex_json_encode(lua_State *L, int idx, devex_buf_t *out, char *err, size_t errlen)
{
    idx = lua_absindex(L, idx);
    int top = lua_gettop(L);
    encoder_t e; /* path[] is written before it is read: not cleared */
    e.L = L;
    e.depth = 0;
    e.err = err;
    e.errlen = errlen;
    /* yajl's validate_utf8 is off: utf8_valid() is stricter and runs first */
    e.g = thread_gen();
    if (e.g == NULL) {
        if (err && errlen)
            snprintf(err, errlen, "out of memory");
        return -1;
    }
    int rc = encode_value(&e, idx);
    lua_settop(L, top); /* error paths return with the walk's keys still pushed */
    const unsigned char *text;
    size_t len;
    yajl_gen_get_buf(e.g, &text, &len);
    if (rc == 0)
        devex_buf_append(out, (const char *)text, len);
    if (len > GEN_KEEP_MAX) {
        /* yajl's buffer never shrinks: do not keep a large one per thread */
        pthread_setspecific(gen_key, NULL);
        yajl_gen_free(e.g);
    } else {
        yajl_gen_clear(e.g);
    }
    return rc;
}

/* ---- decode ------------------------------------------------------------ */

/*
 * Values are built on the Lua stack: an open container sits below its
 * pending key (objects) and the value being completed. Everything runs under
 * lua_pcall so an allocation error in Lua unwinds to devex_json_decode, which
 * still owns (and frees) the yajl handle and leaves the stack as it was.
 */
enum { DEC_SYNTAX, DEC_TOO_DEEP, DEC_BAD_UTF8, DEC_BAD_NUMBER, DEC_NO_STACK };

typedef struct {
    lua_State *L;
    yajl_handle h;
    const unsigned char *text;
    size_t len;
    yajl_status status;
    size_t error_at;
    int why;
    int depth;
    int array_mt, object_mt; /* stack indexes of the marker metatables */
    char is_map[DEVEX_JSON_MAX_DEPTH + 1];
    lua_Integer count[DEVEX_JSON_MAX_DEPTH + 1]; /* elements so far, per open array */
    /* what to keep (json.decode(text, keep)): keeps[d] at stack index
     * `keeps` is the projection of the container open at depth d, or false
     * where everything is kept; filtered[d] says which. skip > 0 while a
     * value left out is being read (its nesting depth); skip_next: the next
     * value is one. */
    int keeps;
    char filtered[DEVEX_JSON_MAX_DEPTH + 2];
    int skip;
    int skip_next;
} decoder_t;

/* Whether the value starting now is left out (and counts its containers). */
static int skipping_scalar(decoder_t *d)
{
    if (d->skip > 0)
        return 1;
    if (d->skip_next) {
        d->skip_next = 0;
        return 1;
    }
    return 0;
}

/* Stores the value on top into the open container (the top-level value just stays). */
static int add_value(decoder_t *d)
{
    if (d->depth == 0)
        return 1;
    if (d->is_map[d->depth])
        lua_rawset(d->L, -3);
    else
        lua_rawseti(d->L, -2, ++d->count[d->depth]);
    return 1;
}

static int on_null(void *ctx)
{
    decoder_t *d = ctx;
    if (skipping_scalar(d))
        return 1;
    devex_json_push_null(d->L);
    return add_value(d);
}

static int on_boolean(void *ctx, int b)
{
    decoder_t *d = ctx;
    if (skipping_scalar(d))
        return 1;
    lua_pushboolean(d->L, b);
    return add_value(d);
}

static int on_number(void *ctx, const char *s, size_t len)
{
    decoder_t *d = ctx;
    lua_State *L = d->L;
    if (skipping_scalar(d))
        return 1;
    /* lua_stringtonumber gives exactly the wanted split: an integer literal
     * that fits int64 stays an integer, anything else becomes a float */
    char buf[64];
    if (len < sizeof(buf)) {
        memcpy(buf, s, len);
        buf[len] = '\0';
        if (lua_stringtonumber(L, buf) == 0) {
            d->why = DEC_BAD_NUMBER;
            return 0;
        }
    } else {
        lua_pushlstring(L, s, len);
        if (lua_stringtonumber(L, lua_tostring(L, -1)) == 0) {
            d->why = DEC_BAD_NUMBER;
            return 0;
        }
        lua_remove(L, -2);
    }
    return add_value(d);
}

static int on_string(void *ctx, const unsigned char *s, size_t len)
{
    decoder_t *d = ctx;
    if (!utf8_valid(s, len)) {
        d->why = DEC_BAD_UTF8;
        return 0;
    }
    if (skipping_scalar(d))
        return 1;
    lua_pushlstring(d->L, (const char *)s, len);
    return add_value(d);
}

static int on_map_key(void *ctx, const unsigned char *s, size_t len)
{
    decoder_t *d = ctx;
    if (!utf8_valid(s, len)) {
        d->why = DEC_BAD_UTF8;
        return 0;
    }
    if (d->skip > 0)
        return 1;
    lua_State *L = d->L;
    lua_pushlstring(L, (const char *)s, len);
    if (d->filtered[d->depth]) {
        /* the member's projection: absent (left out), true (kept whole) or a table */
        lua_rawgeti(L, d->keeps, d->depth);
        lua_pushvalue(L, -2);
        int t = lua_rawget(L, -2);
        if (t == LUA_TNIL || (t == LUA_TBOOLEAN && !lua_toboolean(L, -1))) {
            lua_pop(L, 3);
            d->skip_next = 1;
            return 1;
        }
        if (t != LUA_TTABLE) {
            lua_pop(L, 1);
            lua_pushboolean(L, 0);
        }
        lua_rawseti(L, d->keeps, d->depth + 1);
        lua_pop(L, 1);
    }
    return 1;
}

static int open_container(decoder_t *d, int is_map)
{
    lua_State *L = d->L;
    if (d->skip > 0 || d->skip_next) {
        d->skip_next = 0;
        d->skip++;
        return 1;
    }
    if (d->depth >= DEVEX_JSON_MAX_DEPTH) {
        d->why = DEC_TOO_DEEP;
        return 0;
    }
    /* the table, its pending key and value, and a number's temporary string;
     * or a key's projection lookup (the keeps table, the key, the result) */
    if (!lua_checkstack(L, 6)) {
        d->why = DEC_NO_STACK;
        return 0;
    }
    lua_createtable(L, 0, 0);
    lua_pushvalue(L, is_map ? d->object_mt : d->array_mt);
    lua_setmetatable(L, -2);
    d->depth++;
    d->is_map[d->depth] = (char)is_map;
    d->count[d->depth] = 0;
    if (d->keeps != 0) {
        /* a member's projection was set by its key (on_map_key); an array's
         * elements get the array's; the top level has the caller's */
        int k = d->depth;
        if (k == 1) {
            d->filtered[k] = 1;
        } else if (!d->filtered[k - 1]) {
            d->filtered[k] = 0;
        } else if (!d->is_map[k - 1]) {
            lua_rawgeti(L, d->keeps, k - 1);
            lua_rawseti(L, d->keeps, k);
            d->filtered[k] = 1;
        } else {
            d->filtered[k] = lua_rawgeti(L, d->keeps, k) == LUA_TTABLE;
            lua_pop(L, 1);
        }
    }
    return 1;
}

static int on_start_map(void *ctx)
{
    return open_container(ctx, 1);
}

static int on_start_array(void *ctx)
{
    return open_container(ctx, 0);
}

static int on_end_container(void *ctx)
{
    decoder_t *d = ctx;
    if (d->skip > 0) {
        d->skip--;
        return 1;
    }
    d->depth--;
    return add_value(d);
}

static const yajl_callbacks decode_callbacks = {
    .yajl_null = on_null,
    .yajl_boolean = on_boolean,
    .yajl_number = on_number,
    .yajl_string = on_string,
    .yajl_start_map = on_start_map,
    .yajl_map_key = on_map_key,
    .yajl_end_map = on_end_container,
    .yajl_start_array = on_start_array,
    .yajl_end_array = on_end_container,
};

/* Runs under lua_pcall; returns the value or nothing when the text is bad. */
static int decode_run(lua_State *L)
{
    decoder_t *d = lua_touserdata(L, 1);
    d->L = L;
    push_array_mt(L);
    d->array_mt = lua_gettop(L);
    push_object_mt(L);
    d->object_mt = lua_gettop(L);
    if (d->keeps != 0) {
        lua_createtable(L, 8, 0); /* keeps[depth]: the projections of the open containers */
        lua_pushvalue(L, 2);
        lua_rawseti(L, -2, 1);
        d->keeps = lua_gettop(L);
    }
    d->status = yajl_parse(d->h, d->text, d->len);
    if (d->status == yajl_status_ok) {
        /* what is still missing at the end of the text is missing at its end */
        d->error_at = d->len;
        d->status = yajl_complete_parse(d->h);
    } else {
        d->error_at = yajl_get_bytes_consumed(d->h);
    }
    return d->status == yajl_status_ok ? 1 : 0;
}

/* yajl's short message minus its "parse error: " prefix and newline. */
static void yajl_reason(yajl_handle h, char *out, size_t outlen)
{
    unsigned char *raw = yajl_get_error(h, 0, NULL, 0);
    const char *m = raw ? (const char *)raw : "syntax error";
    const char *colon = strstr(m, "error: ");
    if (colon)
        m = colon + 7;
    size_t n = strlen(m);
    while (n > 0 && (m[n - 1] == '\n' || m[n - 1] == ' ' || m[n - 1] == '.'))
        n--;
    snprintf(out, outlen, "%.*s", (int)n, m);
    if (raw)
        yajl_free_error(h, raw);
}

int devex_json_decode(lua_State *L, const char *text, size_t len, char *err, size_t errlen)
{
    return devex_json_decode_keep(L, text, len, 0, err, errlen);
}

int devex_json_decode_keep(lua_State *L, const char *text, size_t len, int keep, char *err, size_t errlen)
{
    char dummy[1];
    if (err == NULL || errlen == 0)
        err = dummy, errlen = sizeof(dummy);
    if (!lua_checkstack(L, 4)) {
        snprintf(err, errlen, "out of Lua stack");
        return -1;
    }
    if (keep != 0)
        keep = lua_absindex(L, keep);
    decoder_t d = {.text = (const unsigned char *)text, .len = len, .why = DEC_SYNTAX, .keeps = keep != 0};
    d.h = yajl_alloc(&decode_callbacks, NULL, &d);
    if (d.h == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int top = lua_gettop(L);
    lua_pushcfunction(L, decode_run);
    lua_pushlightuserdata(L, &d);
    if (keep != 0)
        lua_pushvalue(L, keep);
    int rc = lua_pcall(L, keep != 0 ? 2 : 1, LUA_MULTRET, 0);
    if (rc != LUA_OK) {
        const char *m = lua_tostring(L, -1);
        snprintf(err, errlen, "cannot decode JSON: %s", m ? m : "error");
    } else if (d.status != yajl_status_ok) {
        char reason[128];
        switch (d.status == yajl_status_client_canceled ? d.why : DEC_SYNTAX) {
        case DEC_TOO_DEEP:
            snprintf(reason, sizeof(reason), "too deeply nested (more than %d levels)", DEVEX_JSON_MAX_DEPTH);
            break;
        case DEC_BAD_UTF8:
            snprintf(reason, sizeof(reason), "string is not valid UTF-8");
            break;
        case DEC_BAD_NUMBER:
            snprintf(reason, sizeof(reason), "unreadable number");
            break;
        case DEC_NO_STACK:
            snprintf(reason, sizeof(reason), "out of Lua stack");
            break;
        default:
            yajl_reason(d.h, reason, sizeof(reason));
        }
        snprintf(err, errlen, "invalid JSON at byte %zu: %s", d.error_at, reason);
    }
    yajl_free(d.h);
    if (rc != LUA_OK || d.status != yajl_status_ok) {
        lua_settop(L, top);
        return -1;
    }
    return 0;
}

/* ---- frozen values ---------------------------------------------------- */

/* json.frozen(v): v encoded once, kept as an immutable userdata. A handler
 * can return it as a response body (sent as it is, no encoding per request)
 * or put it inside a table given to json.encode. */
static const char frozen_mt_key = 0;

typedef struct {
    size_t len;
    char text[];
} frozen_t;

const char *devex_json_frozen(lua_State *L, int idx, size_t *len)
{
    if (!devex_udata_is(L, idx, &frozen_mt_key))
        return NULL;
    frozen_t *f = lua_touserdata(L, idx);
    *len = f->len;
    return f->text;
}

static int l_frozen(lua_State *L)
{
    luaL_checkany(L, 1);
    devex_buf_t b = DEVEX_BUF_INIT;
    char err[256];
    if (devex_json_encode(L, 1, &b, err, sizeof(err)) != 0) {
        devex_buf_free(&b);
        return luaL_error(L, "json.frozen: %s", err);
    }
    frozen_t *f = lua_newuserdatauv(L, sizeof(frozen_t) + b.len + 1, 0);
    f->len = b.len;
    memcpy(f->text, b.data ? b.data : "", b.len);
    f->text[b.len] = '\0';
    devex_buf_free(&b);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &frozen_mt_key);
    lua_setmetatable(L, -2);
    return 1;
}

static int l_frozen_tostring(lua_State *L)
{
    size_t len;
    const char *s = devex_json_frozen(L, 1, &len);
    if (s == NULL)
        return luaL_typeerror(L, 1, "devex.json.frozen");
    lua_pushlstring(L, s, len);
    return 1;
}

/* ---- Lua module -------------------------------------------------------- */

static int l_encode(lua_State *L)
{
    luaL_checkany(L, 1);
    devex_buf_t b = DEVEX_BUF_INIT;
    char err[256];
    if (devex_json_encode(L, 1, &b, err, sizeof(err)) != 0) {
        devex_buf_free(&b);
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushlstring(L, b.data ? b.data : "", b.len);
    devex_buf_free(&b);
    return 1;
}

static int l_decode(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    int keep = lua_isnoneornil(L, 2) ? 0 : 2;
    if (keep != 0)
        luaL_checktype(L, 2, LUA_TTABLE);
    char err[256];
    if (devex_json_decode_keep(L, s, len, keep, err, sizeof(err)) != 0) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    return 1;
}

static int mark(lua_State *L, void (*push)(lua_State *))
{
    if (lua_isnoneornil(L, 1)) {
        lua_settop(L, 0);
        lua_newtable(L);
    } else {
        luaL_checktype(L, 1, LUA_TTABLE);
        lua_settop(L, 1);
    }
    push(L);
    lua_setmetatable(L, 1);
    return 1;
}

static int l_array(lua_State *L)
{
    return mark(L, push_array_mt);
}

static int l_object(lua_State *L)
{
    return mark(L, push_object_mt);
}

static int l_is_array(lua_State *L)
{
    lua_Integer n;
    luaL_checkstack(L, 4, NULL);
    lua_pushboolean(L, lua_type(L, 1) == LUA_TTABLE && table_is_array(L, 1, &n));
    return 1;
}

int luaopen_devex_json(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"encode", l_encode}, {"decode", l_decode}, {"array", l_array},
        {"object", l_object}, {"is_array", l_is_array}, {"frozen", l_frozen}, {NULL, NULL},
    };
    if (luaL_newmetatable(L, "devex.json.frozen")) {
        lua_pushcfunction(L, l_frozen_tostring);
        lua_setfield(L, -2, "__tostring");
        lua_pushliteral(L, "frozen JSON value");
        lua_setfield(L, -2, "__metatable"); /* getmetatable cannot reach it */
        lua_pushvalue(L, -1);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &frozen_mt_key);
    }
    lua_pop(L, 1);
    luaL_newlib(L, funcs);
    devex_json_push_null(L);
    lua_setfield(L, -2, "null");
    return 1;
}
