/*
 * s3_sigv4.c: AWS Signature Version 4 (see s3_sigv4.h for the rules and the
 * ownership of what goes in and out).
 *
 * The steps, as AWS specifies them:
 *   canonical request = method \n canonical URI \n canonical query \n
 *                       canonical headers (name:value\n each) \n
 *                       signed headers \n payload hash
 *   string to sign    = "AWS4-HMAC-SHA256" \n x-amz-date \n scope \n
 *                       hex(SHA-256(canonical request))
 *   scope             = YYYYMMDD/region/service/aws4_request
 *   signature         = hex(HMAC(kSigning, string to sign))
 *
 * Strings built while canonicalizing live in one scratch buffer and are
 * referred to by offset (the buffer moves when it grows).
 */
#include "s3_sigv4.h"
#include "textutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HDR_DATE "x-amz-date"
#define HDR_SHA256 "x-amz-content-sha256"
#define HDR_TOKEN "x-amz-security-token"

/* ---- small character classes ------------------------------------------ */

static int is_unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
           c == '.' || c == '~';
}

/* a NUL-terminated HTTP token (RFC 9110) */
static int is_token(const char *s)
{
    return s != NULL && devex_http_token(s, strlen(s));
}

/* access key, region, service: printable ASCII without space, '/' or ',' */
static int is_scope_part(const char *s)
{
    if (s == NULL || *s == '\0')
        return 0;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c <= 0x20 || c >= 0x7f || c == '/' || c == ',')
            return 0;
    }
    return 1;
}

static int is_bad_ctl(unsigned char c)
{
    return (c < 0x20 && c != '\t' && c != '\r' && c != '\n') || c == 0x7f;
}

static int is_lws(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* 64 lower-case hex digits, or an S3 token like UNSIGNED-PAYLOAD (upper-case
 * letters, digits and at least one '-', so that an upper-case hash is refused) */
static int is_payload_hash(const char *s)
{
    size_t n = strlen(s);
    if (n == 2 * DEVEX_SHA256_LEN && strspn(s, "0123456789abcdef") == n)
        return 1;
    if (n == 0 || n >= sizeof(((devex_sigv4_result_t *)0)->payload_sha256) || !(s[0] >= 'A' && s[0] <= 'Z'))
        return 0;
    return strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-") == n && strchr(s, '-') != NULL;
}

static char lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

static int name_is(const char *name, const char *lname)
{
    for (; *name && *lname; name++, lname++)
        if (lower(*name) != *lname)
            return 0;
    return *name == '\0' && *lname == '\0';
}

/* ---- public helpers ---------------------------------------------------- */

void devex_sigv4_uri_encode(const char *s, size_t n, int encode_slash, devex_buf_t *out)
{
    static const char hex[] = "0123456789ABCDEF";
    devex_buf_reserve(out, n);  /* at least; grows below when bytes expand */
    out->data[out->len] = '\0'; /* a fresh buffer is terminated even if n == 0 */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (is_unreserved(c) || (c == '/' && !encode_slash)) {
            devex_buf_append(out, &s[i], 1);
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            devex_buf_append(out, e, 3);
        }
    }
}

static char *put_digits(char *p, int v, int width)
{
    for (int i = width - 1; i >= 0; i--, v /= 10)
        p[i] = (char)('0' + v % 10);
    return p + width;
}

int devex_sigv4_format_time(time_t now, char amz_date[DEVEX_SIGV4_AMZ_DATE_SIZE], char date[DEVEX_SIGV4_DATE_SIZE])
{
    struct tm tm;
    if (gmtime_r(&now, &tm) == NULL || tm.tm_year < -1900 || tm.tm_year > 9999 - 1900)
        return -1;
    char *p = put_digits(amz_date, tm.tm_year + 1900, 4);
    p = put_digits(p, tm.tm_mon + 1, 2);
    p = put_digits(p, tm.tm_mday, 2);
    *p++ = 'T';
    p = put_digits(p, tm.tm_hour, 2);
    p = put_digits(p, tm.tm_min, 2);
    p = put_digits(p, tm.tm_sec, 2);
    *p++ = 'Z';
    *p = '\0';
    if (date) {
        memcpy(date, amz_date, DEVEX_SIGV4_DATE_SIZE - 1);
        date[DEVEX_SIGV4_DATE_SIZE - 1] = '\0';
    }
    return 0;
}

void devex_sigv4_sha256_hex(const void *data, size_t len, char out[DEVEX_SIGV4_HEX_SIZE])
{
    uint8_t md[DEVEX_SHA256_LEN];
    devex_sha256(data, len, md);
    devex_hex_encode(md, sizeof(md), out);
}

int devex_sigv4_derive_key(const char *secret_key, const char *date, const char *region, const char *service,
                           devex_sigv4_key_t *out)
{
    if (secret_key == NULL || date == NULL || region == NULL || service == NULL || out == NULL ||
        strlen(date) != DEVEX_SIGV4_DATE_SIZE - 1 || strspn(date, "0123456789") != DEVEX_SIGV4_DATE_SIZE - 1)
        return -1;
    size_t slen = strlen(secret_key);
    char *k = malloc(slen + 4);
    if (k == NULL)
        abort();
    memcpy(k, "AWS4", 4);
    memcpy(k + 4, secret_key, slen);
    memcpy(out->date, date, DEVEX_SIGV4_DATE_SIZE);
    devex_hmac_sha256(k, slen + 4, date, strlen(date), out->k_date);
    explicit_bzero(k, slen + 4);
    free(k);
    devex_hmac_sha256(out->k_date, DEVEX_SHA256_LEN, region, strlen(region), out->k_region);
    devex_hmac_sha256(out->k_region, DEVEX_SHA256_LEN, service, strlen(service), out->k_service);
    devex_hmac_sha256(out->k_service, DEVEX_SHA256_LEN, "aws4_request", 12, out->k_signing);
    return 0;
}

void devex_sigv4_key_wipe(devex_sigv4_key_t *key)
{
    explicit_bzero(key, sizeof(*key));
}

void devex_sigv4_string_to_sign(const char *amz_date, const char *scope, const char *canonical, size_t canonical_len,
                                devex_buf_t *out)
{
    uint8_t md[DEVEX_SHA256_LEN];
    char hex[DEVEX_SIGV4_HEX_SIZE];
    devex_sha256(canonical, canonical_len, md);
    devex_hex_encode(md, sizeof(md), hex);
    devex_buf_append_str(out, DEVEX_SIGV4_ALGORITHM "\n");
    devex_buf_append_str(out, amz_date);
    devex_buf_append_str(out, "\n");
    devex_buf_append_str(out, scope);
    devex_buf_append_str(out, "\n");
    devex_buf_append_str(out, hex);
}

void devex_sigv4_signature(const devex_sigv4_key_t *key, const char *string_to_sign, size_t len,
                           char sig[DEVEX_SIGV4_HEX_SIZE])
{
    uint8_t mac[DEVEX_SHA256_LEN];
    devex_hmac_sha256(key->k_signing, DEVEX_SHA256_LEN, string_to_sign, len, mac);
    devex_hex_encode(mac, sizeof(mac), sig);
}

/* ---- canonicalization -------------------------------------------------- */

/* a header or query parameter: name and value as offsets into the scratch */
typedef struct {
    size_t name, name_len, value, value_len;
    size_t order; /* position given, to keep repeated headers in order */
    const char *scratch;
} item_t;

static int item_cmp_header(const void *a, const void *b)
{
    const item_t *x = a, *y = b;
    size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
    int c = memcmp(x->scratch + x->name, y->scratch + y->name, n);
    if (c == 0 && x->name_len != y->name_len)
        c = x->name_len < y->name_len ? -1 : 1;
    if (c == 0)
        c = x->order < y->order ? -1 : (x->order > y->order);
    return c;
}

static int bytes_cmp(const char *a, size_t an, const char *b, size_t bn)
{
    int c = memcmp(a, b, an < bn ? an : bn);
    if (c == 0 && an != bn)
        c = an < bn ? -1 : 1;
    return c;
}

static int item_cmp_param(const void *a, const void *b)
{
    const item_t *x = a, *y = b;
    int c = bytes_cmp(x->scratch + x->name, x->name_len, y->scratch + y->name, y->name_len);
    if (c == 0)
        c = bytes_cmp(x->scratch + x->value, x->value_len, y->scratch + y->value, y->value_len);
    return c;
}

/* What canonicalization decided beyond the strings it appends. */
typedef struct {
    char payload[sizeof(((devex_sigv4_result_t *)0)->payload_sha256)];
    int add_date, add_sha256, add_token;
    const char *error;
} canon_info_t;

/* Appends the canonical (trimmed, folded, collapsed) form of a header value. */
static void append_header_value(devex_buf_t *b, const char *v)
{
    size_t n = strlen(v), i = 0;
    while (i < n && is_lws((unsigned char)v[i]))
        i++;
    while (n > i && is_lws((unsigned char)v[n - 1]))
        n--;
    while (i < n) {
        if (is_lws((unsigned char)v[i])) {
            while (is_lws((unsigned char)v[i]))
                i++;
            devex_buf_append(b, " ", 1);
        } else {
            size_t j = i;
            while (j < n && !is_lws((unsigned char)v[j]))
                j++;
            devex_buf_append(b, v + i, j - i);
            i = j;
        }
    }
}

/* Appends one parameter, URI-encoded, to items (which has room for it). */
static void add_param(item_t *items, size_t *count, devex_buf_t *scratch, const char *name, size_t nlen,
                      const char *value, size_t vlen)
{
    item_t *it = &items[*count];
    it->order = (*count)++;
    it->name = scratch->len;
    devex_sigv4_uri_encode(name, nlen, 1, scratch);
    it->name_len = scratch->len - it->name;
    it->value = scratch->len;
    devex_sigv4_uri_encode(value, vlen, 1, scratch);
    it->value_len = scratch->len - it->value;
}

/* Makes room for one more item. */
static item_t *grow(item_t *items, size_t n, size_t *cap)
{
    if (n < *cap)
        return items;
    *cap *= 2;
    item_t *p = realloc(items, *cap * sizeof(*items));
    if (p == NULL)
        abort();
    return p;
}

/* Splits the raw query and adds the params; returns the items (malloc'd). */
static item_t *collect_params(const devex_sigv4_request_t *req, devex_buf_t *scratch, size_t *count)
{
    size_t cap = 16, n = 0;
    item_t *items = malloc(cap * sizeof(*items));
    if (items == NULL)
        abort();
    if (req->query) {
        const char *p = req->query;
        while (*p) {
            size_t len = strcspn(p, "&");
            if (len > 0) {
                const char *eq = memchr(p, '=', len);
                size_t nlen = eq ? (size_t)(eq - p) : len;
                const char *v = eq ? eq + 1 : p + len;
                size_t vlen = eq ? len - nlen - 1 : 0;
                items = grow(items, n, &cap);
                add_param(items, &n, scratch, p, nlen, v, vlen);
            }
            p += len;
            if (*p == '&')
                p++;
        }
    }
    for (size_t i = 0; i < req->nparams; i++) {
        const char *name = req->params[i].name ? req->params[i].name : "";
        const char *value = req->params[i].value ? req->params[i].value : "";
        items = grow(items, n, &cap);
        add_param(items, &n, scratch, name, strlen(name), value, strlen(value));
    }
    *count = n;
    return items;
}

/* The canonical URI of a raw path (see the flags in s3_sigv4.h). */
static void canonical_uri(const char *path, unsigned flags, devex_buf_t *out, devex_buf_t *tmp)
{
    const char *src = path;
    size_t srclen = strlen(path);
    devex_buf_t norm = DEVEX_BUF_INIT;
    if (flags & DEVEX_SIGV4_NORMALIZE_PATH) {
        /* keep a stack of segment start offsets into norm */
        size_t *starts = malloc((srclen + 1) * sizeof(*starts));
        size_t depth = 0;
        if (starts == NULL)
            abort();
        const char *p = path;
        while (*p) {
            while (*p == '/')
                p++;
            size_t len = strcspn(p, "/");
            if (len == 0)
                break;
            if (len == 1 && p[0] == '.') {
                /* skip */
            } else if (len == 2 && p[0] == '.' && p[1] == '.') {
                if (depth > 0)
                    norm.len = starts[--depth];
            } else {
                starts[depth++] = norm.len;
                devex_buf_append(&norm, "/", 1);
                devex_buf_append(&norm, p, len);
            }
            p += len;
        }
        free(starts);
        if (norm.len == 0)
            devex_buf_append(&norm, "/", 1);
        else if (srclen > 0 && path[srclen - 1] == '/')
            devex_buf_append(&norm, "/", 1);
        if (norm.data)
            norm.data[norm.len] = '\0';
        src = norm.data;
        srclen = norm.len;
    }
    if (flags & DEVEX_SIGV4_DOUBLE_ENCODE_PATH) {
        devex_buf_reset(tmp);
        devex_sigv4_uri_encode(src, srclen, 0, tmp);
        devex_sigv4_uri_encode(tmp->data, tmp->len, 0, out);
    } else {
        devex_sigv4_uri_encode(src, srclen, 0, out);
    }
    devex_buf_free(&norm);
}

static int fail(canon_info_t *info, const char *why)
{
    info->error = why;
    return -1;
}

static int canon(const devex_sigv4_request_t *req, const char *amz_date, const char *token, devex_buf_t *canonical,
                 devex_buf_t *signed_headers, devex_buf_t *url_path, devex_buf_t *url_query, canon_info_t *info)
{
    memset(info, 0, sizeof(*info));
    if (req == NULL || !is_token(req->method))
        return fail(info, "method is not an HTTP token");
    if (req->path == NULL || req->path[0] != '/')
        return fail(info, "path must start with '/'");
    if (req->nheaders > 0 && req->headers == NULL)
        return fail(info, "headers is NULL");
    if (req->nparams > 0 && req->params == NULL)
        return fail(info, "params is NULL");
    if (req->nheaders > DEVEX_SIGV4_MAX_HEADERS - 3)
        return fail(info, "too many headers");
    if (token && (token[0] == '\0' || strpbrk(token, "\r\n") != NULL))
        return fail(info, "session token is empty or holds a line break");
    for (const char *t = token; t && *t; t++)
        if (is_bad_ctl((unsigned char)*t))
            return fail(info, "session token holds a control character");

    /* check the caller's headers; find the ones the signer owns */
    const char *host = NULL, *hdr_date = NULL, *hdr_sha = NULL, *hdr_token = NULL;
    for (size_t i = 0; i < req->nheaders; i++) {
        const char *name = req->headers[i].name, *value = req->headers[i].value;
        if (!is_token(name))
            return fail(info, "header name is not an HTTP token");
        if (value == NULL)
            return fail(info, "header value is NULL");
        for (const char *v = value; *v; v++)
            if (is_bad_ctl((unsigned char)*v))
                return fail(info, "header value holds a control character");
        const char **slot = NULL;
        if (name_is(name, "authorization"))
            return fail(info, "the authorization header cannot be signed");
        else if (name_is(name, "host"))
            slot = &host;
        else if (name_is(name, HDR_DATE))
            slot = &hdr_date;
        else if (name_is(name, HDR_SHA256))
            slot = &hdr_sha;
        else if (name_is(name, HDR_TOKEN))
            slot = &hdr_token;
        if (slot) {
            if (*slot)
                return fail(info, "host, x-amz-date, x-amz-content-sha256 or x-amz-security-token repeated");
            *slot = value;
        }
    }
    if (host == NULL)
        return fail(info, "no host header");

    devex_buf_t scratch = DEVEX_BUF_INIT, tmp = DEVEX_BUF_INIT;
    /* the canonical value of one header, for comparisons */
#define CANON_VALUE_EQ(v, expect) \
    (devex_buf_reset(&tmp), append_header_value(&tmp, (v)), strcmp(tmp.data ? tmp.data : "", (expect)) == 0)

    if (hdr_date && !CANON_VALUE_EQ(hdr_date, amz_date)) {
        devex_buf_free(&tmp);
        return fail(info, "x-amz-date header differs from the signing time");
    }
    if (hdr_token && token && !CANON_VALUE_EQ(hdr_token, token)) {
        devex_buf_free(&tmp);
        return fail(info, "x-amz-security-token header differs from the session token");
    }
    /* the payload hash */
    const char *payload = req->payload_sha256;
    if (hdr_sha) {
        devex_buf_reset(&tmp);
        append_header_value(&tmp, hdr_sha);
        const char *hv = tmp.data ? tmp.data : "";
        if (payload == NULL) {
            if (!is_payload_hash(hv)) {
                devex_buf_free(&tmp);
                return fail(info, "x-amz-content-sha256 header is not a payload hash");
            }
            snprintf(info->payload, sizeof(info->payload), "%s", hv);
            payload = info->payload;
        } else if (strcmp(hv, payload) != 0) {
            devex_buf_free(&tmp);
            return fail(info, "x-amz-content-sha256 header differs from the payload hash");
        }
    }
    if (payload == NULL)
        payload = DEVEX_SIGV4_EMPTY_SHA256;
    if (!is_payload_hash(payload)) {
        devex_buf_free(&tmp);
        return fail(info, "payload hash is neither 64 lower-case hex digits nor an upper-case token");
    }
    if (payload != info->payload)
        snprintf(info->payload, sizeof(info->payload), "%s", payload);
#undef CANON_VALUE_EQ

    /* query-string authentication: the date, payload and token travel as
     * query parameters (X-Amz-*), never as added headers */
    int query_auth = (req->flags & DEVEX_SIGV4_QUERY_AUTH) != 0;
    info->add_date = hdr_date == NULL && !query_auth;
    info->add_sha256 = hdr_sha == NULL && !(req->flags & DEVEX_SIGV4_NO_CONTENT_SHA256) && !query_auth;
    info->add_token = token != NULL && hdr_token == NULL && !query_auth;

    /* headers: lower-case names and canonical values into the scratch */
    item_t hs[DEVEX_SIGV4_MAX_HEADERS];
    size_t nh = 0;
    for (size_t i = 0; i < req->nheaders + 3; i++) {
        const char *name, *value;
        if (i < req->nheaders) {
            name = req->headers[i].name;
            value = req->headers[i].value;
        } else if (i == req->nheaders && info->add_date) {
            name = HDR_DATE;
            value = amz_date;
        } else if (i == req->nheaders + 1 && info->add_sha256) {
            name = HDR_SHA256;
            value = info->payload;
        } else if (i == req->nheaders + 2 && info->add_token) {
            name = HDR_TOKEN;
            value = token;
        } else {
            continue;
        }
        item_t *it = &hs[nh++];
        it->order = i;
        it->name = scratch.len;
        for (const char *c = name; *c; c++) {
            char l = lower(*c);
            devex_buf_append(&scratch, &l, 1);
        }
        it->name_len = scratch.len - it->name;
        it->value = scratch.len;
        append_header_value(&scratch, value);
        it->value_len = scratch.len - it->value;
    }

    /* query parameters, encoded into the scratch */
    size_t np = 0;
    item_t *ps = collect_params(req, &scratch, &np);

    /* the scratch has stopped moving: sort */
    for (size_t i = 0; i < nh; i++)
        hs[i].scratch = scratch.data;
    for (size_t i = 0; i < np; i++)
        ps[i].scratch = scratch.data;
    qsort(hs, nh, sizeof(hs[0]), item_cmp_header);
    qsort(ps, np, sizeof(ps[0]), item_cmp_param);

    /* the canonical request */
    devex_buf_append_str(canonical, req->method);
    devex_buf_append(canonical, "\n", 1);
    canonical_uri(req->path, req->flags, canonical, &tmp);
    devex_buf_append(canonical, "\n", 1);
    size_t query_start = canonical->len;
    for (size_t i = 0; i < np; i++) {
        if (i)
            devex_buf_append(canonical, "&", 1);
        devex_buf_append(canonical, scratch.data + ps[i].name, ps[i].name_len);
        devex_buf_append(canonical, "=", 1);
        devex_buf_append(canonical, scratch.data + ps[i].value, ps[i].value_len);
    }
    if (url_query)
        devex_buf_append(url_query, canonical->data + query_start, canonical->len - query_start);
    devex_buf_append(canonical, "\n", 1);
    devex_buf_t names = DEVEX_BUF_INIT;
    for (size_t i = 0; i < nh; i++) {
        const char *name = scratch.data + hs[i].name;
        int same = i > 0 && hs[i - 1].name_len == hs[i].name_len &&
                   memcmp(scratch.data + hs[i - 1].name, name, hs[i].name_len) == 0;
        if (same) {
            devex_buf_append(canonical, ",", 1);
        } else {
            if (i > 0) {
                devex_buf_append(canonical, "\n", 1);
                devex_buf_append(&names, ";", 1);
            }
            devex_buf_append(canonical, name, hs[i].name_len);
            devex_buf_append(canonical, ":", 1);
            devex_buf_append(&names, name, hs[i].name_len);
        }
        devex_buf_append(canonical, scratch.data + hs[i].value, hs[i].value_len);
    }
    devex_buf_append(canonical, "\n\n", 2);
    devex_buf_append(canonical, names.data, names.len);
    devex_buf_append(canonical, "\n", 1);
    devex_buf_append_str(canonical, info->payload);
    if (signed_headers)
        devex_buf_append(signed_headers, names.data, names.len);
    if (url_path)
        devex_sigv4_uri_encode(req->path, strlen(req->path), 0, url_path);

    free(ps);
    devex_buf_free(&names);
    devex_buf_free(&scratch);
    devex_buf_free(&tmp);
    return 0;
}

int devex_sigv4_canonical_request(const devex_sigv4_request_t *req, const char *amz_date, const char *session_token,
                                  devex_buf_t *canonical, devex_buf_t *signed_headers, devex_buf_t *url_path,
                                  devex_buf_t *url_query, const char **error)
{
    canon_info_t info;
    int rc;
    if (amz_date == NULL || strlen(amz_date) != DEVEX_SIGV4_AMZ_DATE_SIZE - 1) {
        info.error = "amz_date is not YYYYMMDDTHHMMSSZ";
        rc = -1;
    } else {
        rc = canon(req, amz_date, session_token, canonical, signed_headers, url_path, url_query, &info);
    }
    if (error)
        *error = rc ? info.error : NULL;
    return rc;
}

/* ---- signing ----------------------------------------------------------- */

static void result_reset(devex_sigv4_result_t *r)
{
    devex_buf_reset(&r->authorization);
    devex_buf_reset(&r->url_path);
    devex_buf_reset(&r->url_query);
    devex_buf_reset(&r->canonical_request);
    devex_buf_reset(&r->string_to_sign);
    devex_buf_reset(&r->signed_headers);
    devex_buf_reset(&r->credential_scope);
    devex_buf_reset(&r->session_token);
    memset(r->added, 0, sizeof(r->added));
    r->nadded = 0;
    r->amz_date[0] = r->signature[0] = r->payload_sha256[0] = '\0';
    r->error = NULL;
}

static int sign(const devex_sigv4_creds_t *c, const devex_sigv4_key_t *key, const devex_sigv4_request_t *req,
                time_t now, devex_sigv4_result_t *out)
{
    result_reset(out);
    if (c == NULL || !is_scope_part(c->access_key) || !is_scope_part(c->region) || !is_scope_part(c->service) ||
        c->secret_key == NULL) {
        out->error = "access key, secret key, region or service missing or not plain ASCII";
        return -1;
    }
    char date[DEVEX_SIGV4_DATE_SIZE];
    if (devex_sigv4_format_time(now, out->amz_date, date) != 0) {
        out->error = "time out of range";
        return -1;
    }
    canon_info_t info;
    if (canon(req, out->amz_date, c->session_token, &out->canonical_request, &out->signed_headers, &out->url_path,
              &out->url_query, &info) != 0) {
        result_reset(out);
        out->error = info.error;
        return -1;
    }
    devex_buf_append(&out->url_query, "", 0); /* a string even when empty */
    memcpy(out->payload_sha256, info.payload, sizeof(out->payload_sha256));
    if (info.add_date)
        out->added[out->nadded++] = (devex_sigv4_header_t){HDR_DATE, out->amz_date};
    if (info.add_sha256)
        out->added[out->nadded++] = (devex_sigv4_header_t){HDR_SHA256, out->payload_sha256};
    if (info.add_token) {
        devex_buf_append_str(&out->session_token, c->session_token);
        out->added[out->nadded++] = (devex_sigv4_header_t){HDR_TOKEN, out->session_token.data};
    }

    devex_buf_appendf(&out->credential_scope, "%s/%s/%s/aws4_request", date, c->region, c->service);
    devex_sigv4_string_to_sign(out->amz_date, out->credential_scope.data, out->canonical_request.data,
                               out->canonical_request.len, &out->string_to_sign);

    devex_sigv4_key_t derived;
    if (key == NULL) {
        devex_sigv4_derive_key(c->secret_key, date, c->region, c->service, &derived);
        key = &derived;
    } else if (strcmp(key->date, date) != 0) {
        result_reset(out);
        out->error = "the signing key was derived for another date";
        return -1;
    }
    devex_sigv4_signature(key, out->string_to_sign.data, out->string_to_sign.len, out->signature);
    if (key == &derived)
        devex_sigv4_key_wipe(&derived);

    devex_buf_append_str(&out->authorization, DEVEX_SIGV4_ALGORITHM " Credential=");
    devex_buf_append_str(&out->authorization, c->access_key);
    devex_buf_append(&out->authorization, "/", 1);
    devex_buf_append(&out->authorization, out->credential_scope.data, out->credential_scope.len);
    devex_buf_append_str(&out->authorization, ", SignedHeaders=");
    devex_buf_append(&out->authorization, out->signed_headers.data, out->signed_headers.len);
    devex_buf_append_str(&out->authorization, ", Signature=");
    devex_buf_append_str(&out->authorization, out->signature);
    return 0;
}

int devex_sigv4_sign(const devex_sigv4_creds_t *creds, const devex_sigv4_request_t *req, time_t now,
                     devex_sigv4_result_t *out)
{
    return sign(creds, NULL, req, now, out);
}

int devex_sigv4_sign_with_key(const devex_sigv4_creds_t *creds, const devex_sigv4_key_t *key,
                              const devex_sigv4_request_t *req, time_t now, devex_sigv4_result_t *out)
{
    if (key == NULL) {
        result_reset(out);
        out->error = "no signing key";
        return -1;
    }
    return sign(creds, key, req, now, out);
}

/* ---- presigning (query-string authentication) --------------------------- */

static int is_x_amz_auth_param(const char *name)
{
    static const char *const names[] = {"x-amz-algorithm", "x-amz-credential", "x-amz-date",
                                        "x-amz-expires",   "x-amz-signedheaders", "x-amz-signature",
                                        "x-amz-security-token"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (name_is(name, names[i]))
            return 1;
    return 0;
}

int devex_sigv4_presign(const devex_sigv4_creds_t *c, const devex_sigv4_request_t *req, time_t now, long expires,
                        devex_sigv4_result_t *out)
{
    result_reset(out);
    if (c == NULL || !is_scope_part(c->access_key) || !is_scope_part(c->region) || !is_scope_part(c->service) ||
        c->secret_key == NULL) {
        out->error = "access key, secret key, region or service missing or not plain ASCII";
        return -1;
    }
    if (req == NULL) {
        out->error = "no request";
        return -1;
    }
    if (expires < 1 || expires > DEVEX_SIGV4_MAX_EXPIRES) {
        out->error = "expires must be 1..604800 seconds";
        return -1;
    }
    if (req->nparams > 0 && req->params == NULL) {
        out->error = "params is NULL";
        return -1;
    }
    if (req->nparams > DEVEX_SIGV4_MAX_HEADERS) {
        out->error = "too many params";
        return -1;
    }
    for (size_t i = 0; i < req->nparams; i++)
        if (req->params[i].name == NULL || is_x_amz_auth_param(req->params[i].name)) {
            out->error = "a query parameter is NULL or an X-Amz-* authentication parameter";
            return -1;
        }
    const char *token = c->session_token;
    if (token && (token[0] == '\0' || strpbrk(token, "\r\n") != NULL)) {
        out->error = "session token is empty or holds a line break";
        return -1;
    }
    char date[DEVEX_SIGV4_DATE_SIZE];
    if (devex_sigv4_format_time(now, out->amz_date, date) != 0) {
        out->error = "time out of range";
        return -1;
    }

    devex_sigv4_request_t r = *req;
    r.flags |= DEVEX_SIGV4_QUERY_AUTH;
    if (r.payload_sha256 == NULL)
        r.payload_sha256 = DEVEX_SIGV4_UNSIGNED_PAYLOAD;

    /* pass 1: the signed header list, which is itself a signed parameter */
    canon_info_t info;
    devex_buf_t scratch = DEVEX_BUF_INIT, names = DEVEX_BUF_INIT;
    if (canon(&r, out->amz_date, NULL, &scratch, &names, NULL, NULL, &info) != 0) {
        devex_buf_free(&scratch);
        devex_buf_free(&names);
        result_reset(out);
        out->error = info.error;
        return -1;
    }
    devex_buf_append(&names, "", 0);
    devex_buf_appendf(&out->credential_scope, "%s/%s/%s/aws4_request", date, c->region, c->service);
    devex_buf_t cred = DEVEX_BUF_INIT;
    devex_buf_appendf(&cred, "%s/%s", c->access_key, out->credential_scope.data);
    char exp[24];
    snprintf(exp, sizeof(exp), "%ld", expires);

    devex_sigv4_param_t ps[DEVEX_SIGV4_MAX_HEADERS + 6];
    size_t np = 0;
    for (size_t i = 0; i < req->nparams; i++)
        ps[np++] = req->params[i];
    ps[np++] = (devex_sigv4_param_t){"X-Amz-Algorithm", DEVEX_SIGV4_ALGORITHM};
    ps[np++] = (devex_sigv4_param_t){"X-Amz-Credential", cred.data};
    ps[np++] = (devex_sigv4_param_t){"X-Amz-Date", out->amz_date};
    ps[np++] = (devex_sigv4_param_t){"X-Amz-Expires", exp};
    if (token)
        ps[np++] = (devex_sigv4_param_t){"X-Amz-Security-Token", token};
    ps[np++] = (devex_sigv4_param_t){"X-Amz-SignedHeaders", names.data};
    r.params = ps;
    r.nparams = np;

    /* pass 2: the canonical request with every X-Amz-* parameter but the
     * signature */
    int rc = canon(&r, out->amz_date, NULL, &out->canonical_request, &out->signed_headers, &out->url_path,
                   &out->url_query, &info);
    devex_buf_free(&scratch);
    devex_buf_free(&names);
    devex_buf_free(&cred);
    if (rc != 0) {
        result_reset(out);
        out->error = info.error;
        return -1;
    }
    memcpy(out->payload_sha256, info.payload, sizeof(out->payload_sha256));
    devex_sigv4_string_to_sign(out->amz_date, out->credential_scope.data, out->canonical_request.data,
                               out->canonical_request.len, &out->string_to_sign);
    devex_sigv4_key_t key;
    devex_sigv4_derive_key(c->secret_key, date, c->region, c->service, &key);
    devex_sigv4_signature(&key, out->string_to_sign.data, out->string_to_sign.len, out->signature);
    devex_sigv4_key_wipe(&key);
    devex_buf_append_str(&out->url_query, "&X-Amz-Signature=");
    devex_buf_append_str(&out->url_query, out->signature);
    devex_buf_append(&out->authorization, "", 0); /* no Authorization header: "" */
    return 0;
}

void devex_sigv4_result_free(devex_sigv4_result_t *r)
{
    devex_buf_free(&r->authorization);
    devex_buf_free(&r->url_path);
    devex_buf_free(&r->url_query);
    devex_buf_free(&r->canonical_request);
    devex_buf_free(&r->string_to_sign);
    devex_buf_free(&r->signed_headers);
    devex_buf_free(&r->credential_scope);
    devex_buf_free(&r->session_token);
    memset(r, 0, sizeof(*r));
}
