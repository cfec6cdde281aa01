/*
 * crypto.c: the small set of primitives devexd needs (session ids, signed
 * cookies, request ids, webhook signatures), on OpenSSL 3, plus the
 * devex.crypto Lua module. Only non-deprecated OpenSSL 3 interfaces are used
 * (EVP_Digest, EVP_Q_mac) because the build treats deprecation warnings as
 * errors. A digest or MAC that fails cannot be reported through the void C
 * API and returning garbage would be worse than stopping, so those abort.
 */
#include "crypto.h"
#include "textutil.h"

#include <lauxlib.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RANDOM_BYTES_MAX 65536

int devex_random_bytes(void *out, size_t n)
{
    unsigned char *p = out;
    while (n > 0) {
        int chunk = n > INT_MAX ? INT_MAX : (int)n;
        if (RAND_bytes(p, chunk) != 1)
            return -1;
        p += chunk;
        n -= (size_t)chunk;
    }
    return 0;
}

void devex_sha256(const void *data, size_t len, uint8_t out[DEVEX_SHA256_LEN])
{
    unsigned int outlen = 0;
    if (EVP_Digest(data, len, out, &outlen, EVP_sha256(), NULL) != 1 || outlen != DEVEX_SHA256_LEN)
        abort();
}

void devex_hmac_sha256(const void *key, size_t keylen, const void *data, size_t len, uint8_t out[DEVEX_SHA256_LEN])
{
    /* HMAC treats a NULL key as "keep the previous one"; an empty key must
     * still be a key */
    static const unsigned char empty[1];
    size_t outlen = 0;
    if (EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, keylen ? key : empty, keylen, data, len, out,
                  DEVEX_SHA256_LEN, &outlen) == NULL ||
        outlen != DEVEX_SHA256_LEN)
        abort();
}

void devex_hex_encode(const uint8_t *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

int devex_ct_equal(const void *a, size_t alen, const void *b, size_t blen)
{
    /* the length is not secret (a MAC or token has a known size) */
    if (alen != blen)
        return 0;
    return alen == 0 || CRYPTO_memcmp(a, b, alen) == 0;
}

int devex_uuid4(char out[37])
{
    uint8_t b[16];
    if (devex_random_bytes(b, sizeof(b)) != 0)
        return -1;
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    char hex[33];
    devex_hex_encode(b, sizeof(b), hex);
    snprintf(out, 37, "%.8s-%.4s-%.4s-%.4s-%.12s", hex, hex + 8, hex + 12, hex + 16, hex + 20);
    return 0;
}

/* ---- hex and base64url for Lua ----------------------------------------- */

static const char b64url_alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t devex_b64url_encode(const uint8_t *in, size_t n, char *out)
{
    size_t i = 0, o = 0;
    for (; n - i >= 3; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64url_alphabet[v >> 18];
        out[o++] = b64url_alphabet[(v >> 12) & 63];
        out[o++] = b64url_alphabet[(v >> 6) & 63];
        out[o++] = b64url_alphabet[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = b64url_alphabet[v >> 18];
        out[o++] = b64url_alphabet[(v >> 12) & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = b64url_alphabet[v >> 18];
        out[o++] = b64url_alphabet[(v >> 12) & 63];
        out[o++] = b64url_alphabet[(v >> 6) & 63];
    }
    out[o] = '\0';
    return o;
}

int devex_b64url_decode(const char *in, size_t len, uint8_t *out, size_t *outlen)
{
    if (len % 4 == 1)
        return -1;
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        int v = devex_b64_value((unsigned char)in[i], 1);
        if (v < 0)
            return -1;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    /* the unused bits of a partial last group must be zero, or two strings
     * would decode to the same bytes (signature malleability) */
    if (acc != 0)
        return -1;
    *outlen = o;
    return 0;
}

static int l_b64url(lua_State *L)
{
    size_t len;
    const uint8_t *s = (const uint8_t *)luaL_checklstring(L, 1, &len);
    luaL_Buffer b;
    char *p = luaL_buffinitsize(L, &b, len / 3 * 4 + 5);
    luaL_pushresultsize(&b, devex_b64url_encode(s, len, p));
    return 1;
}

static int l_unb64url(lua_State *L)
{
    size_t len;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &len);
    /* checked here first for the precise message; the decoder checks the same */
    if (len % 4 == 1) {
        lua_pushnil(L);
        lua_pushstring(L, "invalid base64url: bad length");
        return 2;
    }
    for (size_t i = 0; i < len; i++) {
        if (devex_b64_value(s[i], 1) < 0) {
            lua_pushnil(L);
            lua_pushfstring(L, "invalid base64url: bad character at byte %d", (int)(i + 1));
            return 2;
        }
    }
    luaL_Buffer b;
    uint8_t *p = (uint8_t *)luaL_buffinitsize(L, &b, len / 4 * 3 + 3);
    size_t n = 0;
    if (devex_b64url_decode((const char *)s, len, p, &n) != 0) {
        /* the bits of a partial last group beyond the data must be zero, or
         * two strings would decode to the same bytes (token malleability) */
        lua_pushnil(L);
        lua_pushstring(L, "invalid base64url: non-zero padding bits");
        return 2;
    }
    luaL_pushresultsize(&b, n);
    return 1;
}

static int l_hex(lua_State *L)
{
    size_t len;
    const uint8_t *s = (const uint8_t *)luaL_checklstring(L, 1, &len);
    luaL_Buffer b;
    char *p = luaL_buffinitsize(L, &b, 2 * len + 1);
    devex_hex_encode(s, len, p);
    luaL_pushresultsize(&b, 2 * len);
    return 1;
}

static int l_unhex(lua_State *L)
{
    size_t len;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &len);
    if (len % 2 != 0) {
        lua_pushnil(L);
        lua_pushstring(L, "invalid hex: odd length");
        return 2;
    }
    for (size_t i = 0; i < len; i++) {
        if (devex_hex_value(s[i]) < 0) {
            lua_pushnil(L);
            lua_pushfstring(L, "invalid hex: bad character at byte %d", (int)(i + 1));
            return 2;
        }
    }
    luaL_Buffer b;
    char *p = luaL_buffinitsize(L, &b, len / 2);
    for (size_t i = 0; i < len / 2; i++)
        p[i] = (char)(devex_hex_value(s[2 * i]) << 4 | devex_hex_value(s[2 * i + 1]));
    luaL_pushresultsize(&b, len / 2);
    return 1;
}

/* ---- the rest of the Lua module ---------------------------------------- */

static int l_random_bytes(lua_State *L)
{
    lua_Integer n = luaL_checkinteger(L, 1);
    luaL_argcheck(L, n >= 0 && n <= RANDOM_BYTES_MAX, 1, "must be between 0 and 65536");
    luaL_Buffer b;
    char *p = luaL_buffinitsize(L, &b, (size_t)n);
    if (devex_random_bytes(p, (size_t)n) != 0)
        return luaL_error(L, "random number generator failed");
    luaL_pushresultsize(&b, (size_t)n);
    return 1;
}

static int l_sha256(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    uint8_t md[DEVEX_SHA256_LEN];
    devex_sha256(s, len, md);
    lua_pushlstring(L, (const char *)md, sizeof(md));
    return 1;
}

static int l_sha256_hex(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    uint8_t md[DEVEX_SHA256_LEN];
    char hex[2 * DEVEX_SHA256_LEN + 1];
    devex_sha256(s, len, md);
    devex_hex_encode(md, sizeof(md), hex);
    lua_pushlstring(L, hex, 2 * DEVEX_SHA256_LEN);
    return 1;
}

static int l_hmac_sha256(lua_State *L)
{
    size_t keylen, len;
    const char *key = luaL_checklstring(L, 1, &keylen);
    const char *msg = luaL_checklstring(L, 2, &len);
    uint8_t mac[DEVEX_SHA256_LEN];
    devex_hmac_sha256(key, keylen, msg, len, mac);
    lua_pushlstring(L, (const char *)mac, sizeof(mac));
    return 1;
}

static int l_equal(lua_State *L)
{
    size_t alen, blen;
    const char *a = luaL_checklstring(L, 1, &alen);
    const char *b = luaL_checklstring(L, 2, &blen);
    lua_pushboolean(L, devex_ct_equal(a, alen, b, blen));
    return 1;
}

static int l_uuid4(lua_State *L)
{
    char u[37];
    if (devex_uuid4(u) != 0)
        return luaL_error(L, "random number generator failed");
    lua_pushlstring(L, u, 36);
    return 1;
}

int luaopen_devex_crypto(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"random_bytes", l_random_bytes},
        {"hex", l_hex},
        {"unhex", l_unhex},
        {"b64url", l_b64url},
        {"unb64url", l_unb64url},
        {"sha256", l_sha256},
        {"sha256_hex", l_sha256_hex},
        {"hmac_sha256", l_hmac_sha256},
        {"equal", l_equal},
        {"uuid4", l_uuid4},
        {NULL, NULL},
    };
    luaL_newlib(L, funcs);
    return 1;
}
