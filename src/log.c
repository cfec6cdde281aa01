/*
 * log.c: JSON-lines logging on stderr. Each line is built in a buffer and
 * written with a single write(2) so lines from different worker threads never
 * interleave. Values are escaped here rather than through yajl because log
 * lines must never fail: invalid UTF-8 is replaced, not rejected. Field names
 * that look like secrets are redacted, so a careless log call in Lua cannot
 * leak a cookie or a token.
 */
#include "log.h"
#include "devex.h"
#include "textutil.h"

#include <lauxlib.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static devex_log_level_t min_level = DEVEX_LOG_INFO;
static const char *level_names[] = {"debug", "info", "warn", "error"};

void devex_log_set_level(devex_log_level_t level)
{
    min_level = level;
}

int devex_log_enabled(devex_log_level_t level)
{
    return level >= min_level;
}

int devex_log_parse_level(const char *name, devex_log_level_t *out)
{
    for (size_t i = 0; i < DEVEX_ARRAY_SIZE(level_names); i++) {
        if (strcasecmp(name, level_names[i]) == 0) {
            *out = (devex_log_level_t)i;
            return 0;
        }
    }
    return -1;
}

void devex_json_escape(devex_buf_t *b, const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    devex_buf_reserve(b, len + 2);
    size_t i = 0;
    while (i < len) {
        unsigned char c = s[i];
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            devex_buf_append(b, esc, 2);
            i++;
        } else if (c < 0x20) {
            devex_buf_appendf(b, "\\u%04x", c);
            i++;
        } else if (c < 0x80) {
            devex_buf_append(b, &s[i], 1);
            i++;
        } else {
            size_t n = devex_utf8_seq(s + i, len - i);
            if (n == 0) {
                devex_buf_append_str(b, "\xef\xbf\xbd");
                i++;
            } else {
                devex_buf_append(b, s + i, n);
                i += n;
            }
        }
    }
}

static void append_key(devex_buf_t *b, const char *key)
{
    devex_buf_append(b, ",\"", 2);
    devex_json_escape(b, key, strlen(key));
    devex_buf_append(b, "\":", 2);
}

void devex_log_begin(devex_buf_t *b, devex_log_level_t level, const char *msg, const char *request_id)
{
    struct timeval tv;
    struct tm tm;
    char ts[64];
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    size_t n = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof(ts) - n, ".%03dZ", (int)(tv.tv_usec / 1000));
    devex_buf_reset(b);
    devex_buf_appendf(b, "{\"time\":\"%s\",\"level\":\"%s\",\"msg\":\"", ts, level_names[level]);
    devex_json_escape(b, msg, strlen(msg));
    devex_buf_append(b, "\"", 1);
    if (request_id != NULL && request_id[0] != '\0')
        devex_log_str(b, "request_id", request_id);
}

void devex_log_strn(devex_buf_t *b, const char *key, const char *value, size_t len)
{
    append_key(b, key);
    devex_buf_append(b, "\"", 1);
    devex_json_escape(b, value, len);
    devex_buf_append(b, "\"", 1);
}

void devex_log_str(devex_buf_t *b, const char *key, const char *value)
{
    devex_log_strn(b, key, value, strlen(value));
}

void devex_log_int(devex_buf_t *b, const char *key, long long value)
{
    append_key(b, key);
    devex_buf_appendf(b, "%lld", value);
}

void devex_log_num(devex_buf_t *b, const char *key, double value)
{
    append_key(b, key);
    if (value != value || value > 1e308 || value < -1e308)
        devex_buf_append_str(b, "null");
    else
        devex_buf_appendf(b, "%.6g", value);
}

void devex_log_end(devex_buf_t *b)
{
    devex_buf_append(b, "}\n", 2);
    size_t off = 0;
    while (off < b->len) {
        ssize_t w = write(STDERR_FILENO, b->data + off, b->len - off);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
}

void devex_log(devex_log_level_t level, const char *msg, const char *error)
{
    if (!devex_log_enabled(level))
        return;
    devex_buf_t b = DEVEX_BUF_INIT;
    devex_log_begin(&b, level, msg, NULL);
    if (error != NULL)
        devex_log_str(&b, "error", error);
    devex_log_end(&b);
    devex_buf_free(&b);
}

void devex_logf(devex_log_level_t level, const char *fmt, ...)
{
    if (!devex_log_enabled(level))
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    devex_log(level, msg, NULL);
}

/* Field names whose values never reach a log line. */
static int is_secret_key(const char *k)
{
    static const char *words[] = {"cookie", "authorization", "password", "secret", "token", "credential"};
    char lower[64];
    size_t n = strlen(k);
    if (n >= sizeof(lower))
        n = sizeof(lower) - 1;
    for (size_t i = 0; i < n; i++)
        lower[i] = (char)((k[i] >= 'A' && k[i] <= 'Z') ? k[i] + 32 : k[i]);
    lower[n] = '\0';
    for (size_t i = 0; i < DEVEX_ARRAY_SIZE(words); i++)
        if (strstr(lower, words[i]) != NULL)
            return 1;
    return 0;
}

static int l_log_at(lua_State *L, devex_log_level_t level)
{
    size_t mlen;
    const char *msg = luaL_checklstring(L, 1, &mlen);
    if (!lua_isnoneornil(L, 2))
        luaL_checktype(L, 2, LUA_TTABLE);
    if (!devex_log_enabled(level))
        return 0;
    devex_task_t *t = devex_task_of(L);
    devex_buf_t b = DEVEX_BUF_INIT;
    devex_log_begin(&b, level, msg, t ? t->request_id : NULL);
    if (lua_istable(L, 2)) {
        lua_pushnil(L);
        while (lua_next(L, 2) != 0) {
            if (lua_type(L, -2) == LUA_TSTRING) {
                const char *k = lua_tostring(L, -2);
                if (strcmp(k, "time") == 0 || strcmp(k, "level") == 0 || strcmp(k, "msg") == 0) {
                    lua_pop(L, 1);
                    continue;
                }
                if (is_secret_key(k)) {
                    devex_log_str(&b, k, "[redacted]");
                } else if (lua_type(L, -1) == LUA_TNUMBER) {
                    if (lua_isinteger(L, -1))
                        devex_log_int(&b, k, (long long)lua_tointeger(L, -1));
                    else
                        devex_log_num(&b, k, lua_tonumber(L, -1));
                } else if (lua_type(L, -1) == LUA_TBOOLEAN) {
                    append_key(&b, k);
                    devex_buf_append_str(&b, lua_toboolean(L, -1) ? "true" : "false");
                } else {
                    size_t vlen;
                    const char *v = luaL_tolstring(L, -1, &vlen);
                    devex_log_strn(&b, k, v, vlen);
                    lua_pop(L, 1);
                }
            }
            lua_pop(L, 1);
        }
    }
    devex_log_end(&b);
    devex_buf_free(&b);
    return 0;
}

static int l_debug(lua_State *L) { return l_log_at(L, DEVEX_LOG_DEBUG); }
static int l_info(lua_State *L) { return l_log_at(L, DEVEX_LOG_INFO); }
static int l_warn(lua_State *L) { return l_log_at(L, DEVEX_LOG_WARN); }
static int l_error(lua_State *L) { return l_log_at(L, DEVEX_LOG_ERROR); }

int luaopen_devex_log(lua_State *L)
{
    static const luaL_Reg fns[] = {{"debug", l_debug}, {"info", l_info}, {"warn", l_warn}, {"error", l_error}, {NULL, NULL}};
    luaL_newlib(L, fns);
    return 1;
}
