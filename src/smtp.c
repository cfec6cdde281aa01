/*
 * smtp.c: devex.smtp, sending one e-mail over SMTP with libcurl, on the
 * worker's curl multi handle (devex_http_perform in http.c: the task parks,
 * the thread never blocks). The message is built by the caller (Lua: the
 * magic-link mail, lua/auth/mail.lua); this only submits it.
 *
 *   local ok, err = smtp.send{
 *     url = "smtps://smtp.example.com:465",  -- or smtp://host:587 (STARTTLS required,
 *                                            -- except to a loopback host: localhost, 127/8, ::1)
 *     username = "...", password = "...",    -- AUTH (optional)
 *     from = "sender@example.com",           -- MAIL FROM (the bare address)
 *     to = "user@example.com",               -- RCPT TO: one address or a list
 *     message = "...",                       -- the RFC 5322 message, CRLF line ends
 *     timeout = 30, connect_timeout = 10,    -- seconds
 *     ca_file = nil,                         -- PEM file of the CAs to trust
 *   }
 *   ok: true, the server's last reply code; or nil, err (err.code as devex.http's:
 *   "auth" when the server refused the login, "tls" when it has no STARTTLS,
 *   "connect", "timeout", "protocol" for a refused sender/recipient/message;
 *   err.reply is the server's last reply code).
 * Addresses must hold no CR, LF, NUL, '<', '>' or space (they are placed in
 * SMTP commands); the caller validates them further.
 */
#include "smtp.h"

#include <curl/curl.h>
#include <lauxlib.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "devex.h"
#include "http.h"

#define SMTP_MAX_RCPT 50
#define SMTP_MAX_MESSAGE (10 * 1024 * 1024)

typedef struct {
    char *msg;
    size_t len, pos;
    struct curl_slist *rcpt;
} smtp_job_t;

static void job_release(void *arg)
{
    smtp_job_t *j = arg;
    if (j == NULL)
        return;
    curl_slist_free_all(j->rcpt);
    free(j->msg);
    free(j);
}

static size_t on_read(char *buf, size_t size, size_t nitems, void *userdata)
{
    smtp_job_t *j = userdata;
    size_t room = size * nitems, left = j->len - j->pos;
    size_t n = left < room ? left : room;
    memcpy(buf, j->msg + j->pos, n);
    j->pos += n;
    return n;
}

static size_t on_write(char *data, size_t size, size_t nmemb, void *userdata)
{
    (void)data;
    (void)userdata;
    return size * nmemb; /* SMTP sends nothing worth keeping */
}

static const char *field_string(lua_State *L, const char *key, bool required, size_t *len)
{
    lua_getfield(L, 1, key); /* left on the stack: keeps the string alive */
    if (lua_isnil(L, -1)) {
        if (required)
            luaL_error(L, "smtp.send: %s is required", key);
        return NULL;
    }
    if (lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "smtp.send: %s must be a string", key);
    return lua_tolstring(L, -1, len);
}

static double field_seconds(lua_State *L, const char *key, double def)
{
    lua_getfield(L, 1, key);
    double v = def;
    if (!lua_isnil(L, -1)) {
        if (!lua_isnumber(L, -1))
            luaL_error(L, "smtp.send: %s must be a number", key);
        v = lua_tonumber(L, -1);
        if (!(v > 0) || v > 3600)
            luaL_error(L, "smtp.send: %s must be > 0 and <= 3600 seconds", key);
    }
    lua_pop(L, 1);
    return v;
}

static void check_address(lua_State *L, const char *what, const char *s, size_t len)
{
    if (len == 0 || len > 320)
        luaL_error(L, "smtp.send: %s must be an address of 1 to 320 bytes", what);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= ' ' || c == 0x7f || c == '<' || c == '>' || c == ',')
            luaL_error(L, "smtp.send: %s holds a character not allowed in an address", what);
    }
}

/* Whether the URL's host is a loopback address (where plain SMTP is allowed). */
static bool loopback_host(const char *url)
{
    CURLU *u = curl_url();
    if (u == NULL)
        return false;
    bool yes = false;
    char *host = NULL;
    if (curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK && curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK) {
        yes = strcasecmp(host, "localhost") == 0 || strcmp(host, "[::1]") == 0 || strncmp(host, "127.", 4) == 0;
        if (yes && host[0] == '1') { /* 127.a.b.c: digits and dots only */
            for (const char *p = host; *p; p++)
                if (!(*p == '.' || (*p >= '0' && *p <= '9')))
                    yes = false;
        }
    }
    curl_free(host);
    curl_url_cleanup(u);
    return yes;
}

static int l_send(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    static const char *const known[] = {"url",     "username", "password",        "from",    "to",
                                        "message", "timeout",  "connect_timeout", "ca_file", NULL};
    lua_pushnil(L);
    while (lua_next(L, 1) != 0) {
        lua_pop(L, 1);
        bool ok = false;
        if (lua_type(L, -1) == LUA_TSTRING)
            for (int i = 0; known[i] && !ok; i++)
                ok = strcmp(known[i], lua_tostring(L, -1)) == 0;
        if (!ok)
            return luaL_error(L, "smtp.send: unknown option %s", luaL_tolstring(L, -1, NULL));
    }
    size_t url_len, from_len, msg_len;
    const char *url = field_string(L, "url", true, &url_len);
    bool smtps = strncasecmp(url, "smtps://", 8) == 0;
    if (!smtps && strncasecmp(url, "smtp://", 7) != 0)
        return luaL_error(L, "smtp.send: url must be smtp:// or smtps://");
    if (strlen(url) != url_len)
        return luaL_error(L, "smtp.send: url holds a NUL byte");
    const char *username = field_string(L, "username", false, NULL);
    const char *password = field_string(L, "password", false, NULL);
    const char *from = field_string(L, "from", true, &from_len);
    check_address(L, "from", from, from_len);
    const char *message = field_string(L, "message", true, &msg_len);
    if (msg_len == 0 || msg_len > SMTP_MAX_MESSAGE)
        return luaL_error(L, "smtp.send: message must be 1 byte to 10 MiB");
    const char *ca_file = field_string(L, "ca_file", false, NULL);
    double timeout = field_seconds(L, "timeout", 30);
    double connect_timeout = field_seconds(L, "connect_timeout", 10);
    /* the recipients, checked before anything is allocated */
    lua_getfield(L, 1, "to");
    int to_idx = lua_gettop(L);
    int nrcpt = 0;
    if (lua_type(L, to_idx) == LUA_TSTRING) {
        size_t l;
        const char *s = lua_tolstring(L, to_idx, &l);
        check_address(L, "to", s, l);
        nrcpt = 1;
    } else if (lua_type(L, to_idx) == LUA_TTABLE) {
        nrcpt = (int)luaL_len(L, to_idx);
        if (nrcpt < 1 || nrcpt > SMTP_MAX_RCPT)
            return luaL_error(L, "smtp.send: to must hold 1 to %d addresses", SMTP_MAX_RCPT);
        for (int i = 1; i <= nrcpt; i++) {
            if (lua_geti(L, to_idx, i) != LUA_TSTRING)
                return luaL_error(L, "smtp.send: to[%d] must be a string", i);
            size_t l;
            const char *s = lua_tolstring(L, -1, &l);
            check_address(L, "to", s, l);
            lua_pop(L, 1);
        }
    } else {
        return luaL_error(L, "smtp.send: to is required (an address or a list)");
    }
    devex_task_check(L, "smtp.send");

    smtp_job_t *j = calloc(1, sizeof(*j));
    CURL *e = j ? curl_easy_init() : NULL;
    if (j != NULL)
        j->msg = malloc(msg_len);
    if (e == NULL || j->msg == NULL) {
        if (e)
            curl_easy_cleanup(e);
        job_release(j);
        return luaL_error(L, "smtp.send: out of memory");
    }
    memcpy(j->msg, message, msg_len);
    j->len = msg_len;
    bool ok = true;
    for (int i = 1; i <= nrcpt && ok; i++) {
        char buf[340];
        const char *addr;
        if (lua_type(L, to_idx) == LUA_TSTRING) {
            addr = lua_tostring(L, to_idx);
        } else {
            lua_geti(L, to_idx, i);
            addr = lua_tostring(L, -1);
        }
        snprintf(buf, sizeof(buf), "<%s>", addr);
        if (lua_type(L, to_idx) != LUA_TSTRING)
            lua_pop(L, 1);
        struct curl_slist *n = curl_slist_append(j->rcpt, buf);
        if (n == NULL)
            ok = false;
        else
            j->rcpt = n;
    }
    char from_buf[340];
    snprintf(from_buf, sizeof(from_buf), "<%s>", from);

    CURLcode rc = ok ? CURLE_OK : CURLE_OUT_OF_MEMORY;
#define SET(opt, val)                                                                                                  \
    do {                                                                                                               \
        if (rc == CURLE_OK)                                                                                            \
            rc = curl_easy_setopt(e, opt, val);                                                                        \
    } while (0)
    SET(CURLOPT_URL, url);
    SET(CURLOPT_PROTOCOLS_STR, "smtp,smtps");
    SET(CURLOPT_PROXY, ""); /* no proxy from the environment */
    /* one mail per connection: a cached connection would skip AUTH (a changed
     * password or a server that now refuses would go unnoticed) and idle
     * submission connections are dropped by servers anyway */
    SET(CURLOPT_FRESH_CONNECT, 1L);
    SET(CURLOPT_FORBID_REUSE, 1L);
    /* smtps:// is TLS from the start; smtp:// must upgrade with STARTTLS
     * (refused if the server does not offer it); to a loopback host
     * STARTTLS is used when offered and plain SMTP allowed otherwise */
    SET(CURLOPT_USE_SSL, (long)((smtps || !loopback_host(url)) ? CURLUSESSL_ALL : CURLUSESSL_TRY));
    SET(CURLOPT_SSL_VERIFYPEER, 1L);
    SET(CURLOPT_SSL_VERIFYHOST, 2L);
    if (ca_file)
        SET(CURLOPT_CAINFO, ca_file);
    if (username)
        SET(CURLOPT_USERNAME, username);
    if (password)
        SET(CURLOPT_PASSWORD, password);
    SET(CURLOPT_MAIL_FROM, from_buf);
    SET(CURLOPT_MAIL_RCPT, j->rcpt);
    SET(CURLOPT_UPLOAD, 1L);
    SET(CURLOPT_INFILESIZE_LARGE, (curl_off_t)msg_len);
    SET(CURLOPT_READFUNCTION, on_read);
    SET(CURLOPT_READDATA, (void *)j);
    SET(CURLOPT_WRITEFUNCTION, on_write);
    SET(CURLOPT_TIMEOUT_MS, (long)ceil(timeout * 1000.0));
    SET(CURLOPT_CONNECTTIMEOUT_MS, (long)ceil(connect_timeout * 1000.0));
#undef SET
    if (rc != CURLE_OK) {
        curl_easy_cleanup(e);
        job_release(j);
        return luaL_error(L, "smtp.send: %s", curl_easy_strerror(rc));
    }
    return devex_http_perform(L, "smtp.send", e, job_release, j);
}

int luaopen_devex_smtp(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"send", l_send},
        {NULL, NULL},
    };
    luaL_newlib(L, fns);
    return 1;
}
