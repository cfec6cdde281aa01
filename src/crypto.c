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

/* Whole input units per EVP_*Block call: keeps the int lengths small and the
 * chunk boundaries on 3-byte / 4-char groups. */
#define B64_CHUNK_IN 3072
#define B64_CHUNK_CHARS 4096

static int l_b64url(lua_State *L)
{
    size_t len;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &len);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    while (len > 0) {
        size_t n = len < B64_CHUNK_IN ? len : B64_CHUNK_IN;
        unsigned char *p = (unsigned char *)luaL_prepbuffsize(&b, B64_CHUNK_CHARS + 1);
        int k = EVP_EncodeBlock(p, s, (int)n);
        while (k > 0 && p[k - 1] == '=')
            k--;
        for (int i = 0; i < k; i++) {
            if (p[i] == '+')
                p[i] = '-';
            else if (p[i] == '/')
                p[i] = '_';
        }
        luaL_addsize(&b, (size_t)k);
        s += n;
        len -= n;
    }
    luaL_pushresult(&b);
    return 1;
}

static int l_unb64url(lua_State *L)
{
    size_t len;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &len);
    /* everything is checked before decoding: EVP_DecodeBlock would skip
     * whitespace and accept padding in the middle */
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
    /* the bits of a partial last group beyond the data must be zero, or two
     * strings would decode to the same bytes (token malleability) */
    if (len % 4 == 2 && (devex_b64_value(s[len - 1], 1) & 0x0f) != 0) {
        lua_pushnil(L);
        lua_pushstring(L, "invalid base64url: non-zero padding bits");
        return 2;
    }
    if (len % 4 == 3 && (devex_b64_value(s[len - 1], 1) & 0x03) != 0) {
        lua_pushnil(L);
        lua_pushstring(L, "invalid base64url: non-zero padding bits");
        return 2;
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    unsigned char tmp[B64_CHUNK_CHARS];
    while (len > 0) {
        size_t n = len < B64_CHUNK_CHARS ? len : B64_CHUNK_CHARS;
        size_t pad = 0;
        for (size_t i = 0; i < n; i++)
            tmp[i] = s[i] == '-' ? '+' : s[i] == '_' ? '/' : s[i];
        while ((n + pad) % 4 != 0) /* only the last chunk is short, so this fits */
            tmp[n + pad++] = '=';
        unsigned char *p = (unsigned char *)luaL_prepbuffsize(&b, B64_CHUNK_IN);
        int k = EVP_DecodeBlock(p, tmp, (int)(n + pad));
        if (k < 0) {
            luaL_pushresult(&b);
            lua_pop(L, 1);
            lua_pushnil(L);
            lua_pushstring(L, "invalid base64url");
            return 2;
        }
        /* EVP_DecodeBlock counts the padding as zero bytes */
        luaL_addsize(&b, (size_t)k - pad);
        s += n;
        len -= n;
    }
    luaL_pushresult(&b);
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
